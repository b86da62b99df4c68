/* generate.c - sampling loop with a KV cache and incremental text (generate.h). */
#define _GNU_SOURCE /* memmem */
#include "eval/generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"
#include "core/rng.h"
#include "model/infer.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------------------ text stream */

size_t utf8_stable_prefix(const char *s_, size_t n)
{
    const unsigned char *s = (const unsigned char *)s_;
    if (!n) return 0;
    /* start of the last sequence: step back over at most 3 continuation bytes */
    size_t i = n - 1;
    while (i > 0 && n - i < 4 && (s[i] & 0xC0) == 0x80) i--;
    unsigned char c = s[i];
    size_t want = c >= 0xF0 && c < 0xF5 ? 4 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 1;
    return n - i < want ? i : n;
}

void text_stream_init(TextStream *ts, const Tokenizer *tok, const char *const *stops, int n_stops)
{
    memset(ts, 0, sizeof(*ts));
    ts->tok = tok;
    ts->stops = stops;
    ts->n_stops = n_stops;
}

void text_stream_free(TextStream *ts)
{
    free(ts->ids);
    free(ts->text);
    memset(ts, 0, sizeof(*ts));
}

/* Record an id without decoding it (an EOS that ends the sample adds no text). */
static void text_stream_add_id(TextStream *ts, int32_t id)
{
    if (ts->n == ts->cap) {
        ts->cap = ts->cap ? 2 * ts->cap : 64;
        ts->ids = xrealloc(ts->ids, (size_t)ts->cap * sizeof(int32_t));
    }
    ts->ids[ts->n++] = id;
}

int text_stream_push(TextStream *ts, int32_t id, const char **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    text_stream_add_id(ts, id);
    if (!ts->tok || ts->stopped) return ts->stopped;
    /* decode everything: exact for any decoder (byte-level pieces, sentencepiece's first-token
     * rules), and cheap next to a forward pass */
    free(ts->text);
    ts->text = tokenizer_decode(ts->tok, ts->ids, (size_t)ts->n, &ts->len);
    size_t from = ts->emitted, end = ts->len;
    if (end < from) return 0; /* the decode shrank (a decoder that strips); wait until it grows */
    /* the first stop string anywhere after what was given out (a stop cannot start earlier:
     * any text that could begin one was held back) */
    size_t cut = end;
    for (int k = 0; k < ts->n_stops; k++) {
        size_t sl = strlen(ts->stops[k]);
        if (!sl) continue;
        size_t lo = from >= sl ? from - sl + 1 : 0;
        char *p = memmem(ts->text + lo, end - lo, ts->stops[k], sl);
        if (p && (size_t)(p - ts->text) < cut) cut = (size_t)(p - ts->text);
    }
    if (cut < end) {
        ts->stopped = 1;
        ts->len = cut;
        ts->text[cut] = 0;
        if (cut > from) {
            *out = ts->text + from;
            *n = cut - from;
            ts->emitted = cut;
        }
        return 1;
    }
    /* hold back the longest tail that is the beginning of a stop string */
    size_t hold = 0;
    for (int k = 0; k < ts->n_stops; k++) {
        size_t sl = strlen(ts->stops[k]);
        for (size_t h = MIN(sl ? sl - 1 : 0, end - from); h > hold; h--)
            if (!memcmp(ts->text + end - h, ts->stops[k], h)) {
                hold = h;
                break;
            }
    }
    size_t stable = from + utf8_stable_prefix(ts->text + from, end - hold - from);
    if (stable > from) {
        *out = ts->text + from;
        *n = stable - from;
        ts->emitted = stable;
    }
    return 0;
}

void text_stream_finish(TextStream *ts, const char **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (ts->text && ts->len > ts->emitted) {
        *out = ts->text + ts->emitted;
        *n = ts->len - ts->emitted;
        ts->emitted = ts->len;
    }
}

/* ------------------------------------------------------------- generation */

void gen_result_free(GenResult *r)
{
    for (int b = 0; b < r->batch; b++) {
        if (r->ids) free(r->ids[b]);
        if (r->text) free(r->text[b]);
    }
    free(r->ids);
    free(r->n_ids);
    free(r->text);
    free(r->text_len);
    free(r->stop);
    memset(r, 0, sizeof(*r));
}

int generate_run(Model *m, const int32_t *prompt, int n_prompt, const GenOptions *o, GenResult *r)
{
    int V = m->cfg.vocab_size, W = m->cfg.max_seq_len, B = o->batch;
    memset(r, 0, sizeof(*r));
    if (B < 1) return err_set("--samples: expected a number >= 1, got %d", B);
    if (o->max_tokens < 0) return err_set("--max-tokens: expected a number >= 0, got %d", o->max_tokens);
    if (n_prompt < 1) return err_set("the prompt is empty (and the model has no BOS token to start from)");
    if (n_prompt > W) return err_set("the prompt has %d tokens; the model's window is %d", n_prompt, W);
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= V)
            return err_set("prompt token %d (position %d) is outside the vocabulary of %d", prompt[i], i, V);
    if (sampler_check(&o->sampler)) return -1;
    r->batch = B;
    r->prompt_tokens = n_prompt;
    r->ids = xcalloc((size_t)B, sizeof(int32_t *));
    r->n_ids = xcalloc((size_t)B, sizeof(int));
    r->text = xcalloc((size_t)B, sizeof(char *));
    r->text_len = xcalloc((size_t)B, sizeof(size_t));
    r->stop = xcalloc((size_t)B, sizeof(int));
    if (o->max_tokens == 0) return 0;

    /* positions used: the prompt, then every sampled token but the last is fed back */
    int cap = MAX(n_prompt, MIN(W, n_prompt + o->max_tokens - 1));
    KVCache *kv = kv_cache_create(m, B, cap, 0);
    if (!kv) return -1;
    int32_t *in = xmalloc((size_t)B * n_prompt * sizeof(int32_t));
    for (int b = 0; b < B; b++) memcpy(in + (size_t)b * n_prompt, prompt, (size_t)n_prompt * sizeof(int32_t));
    Rng *rng = xmalloc((size_t)B * sizeof(Rng));
    TextStream *ts = xmalloc((size_t)B * sizeof(TextStream));
    int *done = xcalloc((size_t)B, sizeof(int));
    for (int b = 0; b < B; b++) {
        rng_seed(&rng[b], o->seed, (uint64_t)b);
        text_stream_init(&ts[b], o->tok, o->stops, o->n_stops);
    }
    /* the rows stay V apart; the sampler sees their first Vs logits */
    int Vs = o->sample_vocab > 0 && o->sample_vocab < V ? o->sample_vocab : V;
    Sampler smp;
    sampler_init(&smp, &o->sampler, Vs);
    int rc = -1, live = B;
    const char *out;
    size_t nout;

    double t0 = now_s();
    const float *logits = model_forward_cached(m, kv, in, n_prompt); /* downloads: the device is idle after */
    double t1 = now_s();
    r->prefill_s = t1 - t0;
    if (!logits) goto done;
    for (int step = 0; step < o->max_tokens; step++) {
        for (int b = 0; b < B; b++) {
            if (done[b]) continue; /* a finished sample keeps feeding its last token (ignored) */
            const float *row = logits + (size_t)b * V;
            for (int j = 0; j < Vs; j++)
                if (!isfinite(row[j])) {
                    err_set("the model's logits are not finite (%g for id %d at new token %d of sample %d): "
                            "its weights or activations overflowed",
                            (double)row[j], j, step, b);
                    goto done;
                }
            int32_t id = sampler_next(&smp, row, &rng[b]);
            in[b] = id;
            r->generated++;
            if (o->on_token) o->on_token(o->ctx, b, id);
            if (!o->ignore_eos && o->eos_id >= 0 && id == o->eos_id) {
                text_stream_add_id(&ts[b], id);
                done[b] = 1;
                r->stop[b] = GEN_STOP_EOS;
                live--;
                continue;
            }
            int stopped = text_stream_push(&ts[b], id, &out, &nout);
            if (nout && B == 1 && o->on_text) o->on_text(o->ctx, out, nout);
            if (stopped) {
                done[b] = 1;
                r->stop[b] = GEN_STOP_STRING;
                live--;
            }
        }
        if (!live || step + 1 == o->max_tokens) break;
        if (kv->len == kv->cap) { /* the model's window is full */
            for (int b = 0; b < B; b++)
                if (!done[b]) r->stop[b] = GEN_STOP_WINDOW;
            break;
        }
        logits = model_forward_cached(m, kv, in, 1);
        if (!logits) goto done;
        r->steps++;
    }
    r->decode_s = now_s() - t1;
    for (int b = 0; b < B; b++) {
        r->ids[b] = ts[b].ids;
        r->n_ids[b] = ts[b].n;
        ts[b].ids = NULL;
        if (o->tok) {
            /* the text ends before a stop string; an ending EOS adds none */
            const char *held;
            size_t nheld;
            text_stream_finish(&ts[b], &held, &nheld);
            if (nheld && B == 1 && o->on_text) o->on_text(o->ctx, held, nheld);
            r->text_len[b] = ts[b].len;
            r->text[b] = xmalloc(ts[b].len + 1);
            memcpy(r->text[b], ts[b].text ? ts[b].text : "", ts[b].len);
            r->text[b][ts[b].len] = 0;
        }
    }
    rc = 0;
done:
    sampler_free(&smp);
    for (int b = 0; b < B; b++) text_stream_free(&ts[b]);
    free(ts);
    free(rng);
    free(done);
    free(in);
    kv_cache_free(m, kv);
    if (rc) gen_result_free(r);
    return rc;
}
