/* mlm.c - masked-LM rows (mlm.h). */
#include "data/mlm.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"
#include "data/tokenizer.h"

/* The stream of a row's draws: its key mixed with this constant ("MLM" in ASCII), so that the
 * masking streams differ from every other use of the run's seed. */
#define MLM_STREAM 0x4d4c4dULL

/* The mask token by the names BERT and RoBERTa tokenizers give it. */
static int find_mask(const Tokenizer *tok)
{
    static const char *const names[] = {"[MASK]", "<mask>"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        int32_t id = tokenizer_token_to_id(tok, names[i], strlen(names[i]));
        if (id >= 0) return id;
    }
    return -1;
}

int mlm_options_init(MlmOptions *o, const Tokenizer *tok, float prob, int whole_word)
{
    memset(o, 0, sizeof(*o));
    if (!(prob > 0 && prob < 1))
        return err_set("data.mlm.prob: must be between 0 and 1 (exclusive), got %g", prob);
    o->prob = prob;
    o->whole_word = whole_word;
    o->vocab = tokenizer_vocab_size(tok);
    o->mask_id = find_mask(tok);
    if (o->mask_id < 0)
        return err_set("data.tokenizer: %s has no mask token ([MASK] or <mask>) for masked-LM data",
                       tokenizer_identity(tok));
    /* the template around one sequence: apply it to a single id and see where that id lands */
    int32_t probe = o->mask_id, *ids = NULL;
    long n = tokenizer_apply_template(tok, &probe, 1, NULL, 0, &ids, NULL);
    if (n < 1) return -1;
    int at = -1;
    for (long i = 0; i < n; i++)
        if (ids[i] == probe && at < 0) at = (int)i;
    if (at < 0 || at > 4 || n - at - 1 > 4) {
        free(ids);
        return err_set("data.tokenizer: %s: unexpected post-processor template for masked-LM rows",
                       tokenizer_identity(tok));
    }
    o->n_pre = at;
    o->n_post = (int)(n - at - 1);
    memcpy(o->pre, ids, (size_t)at * sizeof(int32_t));
    memcpy(o->post, ids + at + 1, (size_t)o->n_post * sizeof(int32_t));
    free(ids);
    o->special = xcalloc((size_t)o->vocab, 1);
    o->cont = xcalloc((size_t)o->vocab, 1);
    o->random_ids = xmalloc((size_t)o->vocab * sizeof(int32_t));
    int n_cont = 0;
    for (int id = 0; id < o->vocab; id++) {
        o->special[id] = tokenizer_is_special(tok, id) || id == o->mask_id;
        o->cont[id] = (uint8_t)tokenizer_is_continuation(tok, id);
        n_cont += o->cont[id];
        if (!o->special[id]) o->random_ids[o->n_random++] = id;
    }
    for (int i = 0; i < o->n_pre; i++) o->special[o->pre[i]] = 1;
    for (int i = 0; i < o->n_post; i++) o->special[o->post[i]] = 1;
    if (whole_word && !n_cont) {
        mlm_options_free(o);
        return err_set(
            "data.mlm.whole_word: %s has no \"##\" continuation pieces (whole words need a WordPiece "
            "vocabulary)",
            tokenizer_identity(tok));
    }
    if (!o->n_random) {
        mlm_options_free(o);
        return err_set("data.tokenizer: %s has only special tokens", tokenizer_identity(tok));
    }
    return 0;
}

void mlm_options_free(MlmOptions *o)
{
    free(o->special);
    free(o->cont);
    free(o->random_ids);
    memset(o, 0, sizeof(*o));
}

static int is_special(const MlmOptions *o, int32_t id)
{
    return id < 0 || id >= o->vocab || o->special[id];
}

/* 80% [MASK], 10% a random non-special token, 10% unchanged. */
static int32_t replacement(const MlmOptions *o, int32_t id, Rng *r)
{
    double u = rng_double(r);
    if (u < MLM_MASK_FRAC) return o->mask_id;
    if (u < MLM_MASK_FRAC + MLM_RANDOM_FRAC) return o->random_ids[rng_below(r, (uint64_t)o->n_random)];
    return id;
}

int mlm_mask_row(const MlmOptions *o, int32_t *inputs, int32_t *targets, int T, int len, uint64_t seed,
                 uint64_t key)
{
    Rng r;
    rng_seed(&r, seed, rng_mix(key ^ (MLM_STREAM << 40)));
    int scored = 0, chosen = 0, after_special = 1;
    for (int t = 0; t < T; t++) {
        int32_t id = inputs[t];
        targets[t] = -1;
        if (t >= len || is_special(o, id)) {
            after_special = 1;
            continue;
        }
        /* a word's first piece draws for the whole word; its "##" pieces follow that draw (a piece
         * that opens the row or follows a special token is a word of its own) */
        int starts_word = !o->whole_word || !o->cont[id] || after_special;
        after_special = 0;
        if (starts_word) chosen = rng_double(&r) < o->prob;
        if (!chosen) continue;
        targets[t] = id;
        inputs[t] = replacement(o, id, &r);
        scored++;
    }
    return scored;
}

int mlm_make_row(const MlmOptions *o, const int32_t *window, int T, uint64_t seed, uint64_t key,
                 int32_t *inputs, int32_t *targets)
{
    int W = mlm_window_tokens(o, T);
    memcpy(inputs, o->pre, (size_t)o->n_pre * sizeof(int32_t));
    memcpy(inputs + o->n_pre, window, (size_t)W * sizeof(int32_t));
    memcpy(inputs + o->n_pre + W, o->post, (size_t)o->n_post * sizeof(int32_t));
    return mlm_mask_row(o, inputs, targets, T, T, seed, key);
}
