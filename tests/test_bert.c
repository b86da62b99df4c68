/* test_bert.c - the bert family on the CPU backend against transformers (tools/make_bert_fixtures.py).
 *
 * For BertForMaskedLM and RobertaForMaskedLM with a padded batch (sequences of different lengths,
 * padding never attended to): logits at every unpadded position, the MLM loss (mean over scored
 * labels), every parameter gradient (by HF name), at recompute levels none and block; a BertModel
 * (no MLM head, a pooler we ignore) gives transformers' last hidden states. Then the HF directory
 * anvil writes reads back into the same tensors (ANVIL_BERT_KEEP=1 keeps it, for
 * `tools/make_bert_fixtures.py --check DIR bert|roberta`: transformers loads it with the same logits),
 * and a config mismatch or a missing tensor is a one-line error. Tolerance: max|ours - ref| / max|ref| <=
 * 1e-4 per tensor. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "core/error.h"
#include "data/mlm.h"
#include "data/tokenizer.h"
#include "eval/embed.h"
#include "eval/mlm_eval.h"
#include <jansson.h>
#include "io/fsutil.h"
#include "io/hf.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "test.h"
#include "ref_tensor.h"

#define PARITY_TOL 1e-4

typedef struct {
    StFile ref;
    Model *m;
    const char *name;
    int B, T;
    const int32_t *ids, *lengths, *labels;
} Fx;

static float *ref_f32(Fx *fx, const char *name, size_t *numel)
{
    return ref_tensor_f32(&fx->ref, fx->name, name, numel);
}

static const int32_t *ref_i32(Fx *fx, const char *name)
{
    const StTensor *t = st_find(&fx->ref, name);
    CHECKF(t && t->dtype == ST_I32, "%s: %s missing or not I32", fx->name, name);
    return t ? t->data : NULL;
}

static int fx_open(Fx *fx, const char *name, const char *model_dir)
{
    memset(fx, 0, sizeof(*fx));
    fx->name = name;
    char dir[512], ref[512];
    snprintf(dir, sizeof(dir), "%s/bert/%s/model", test_fixtures(), name);
    snprintf(ref, sizeof(ref), "%s/bert/%s/reference.safetensors", test_fixtures(), name);
    CHECKF(st_open(&fx->ref, ref) == 0, "%s", err_get());
    fx->m = hf_load_model(model_dir ? model_dir : dir, backend_cpu(), 1);
    CHECKF(fx->m != NULL, "hf_load_model: %s", err_get());
    const StTensor *t = st_find(&fx->ref, "input_ids");
    fx->ids = ref_i32(fx, "input_ids");
    fx->lengths = ref_i32(fx, "lengths");
    fx->labels = st_find(&fx->ref, "labels") ? ref_i32(fx, "labels") : NULL;
    if (!fx->m || !t || !fx->ids || !fx->lengths) return -1;
    fx->B = (int)t->shape[0];
    fx->T = (int)t->shape[1];
    return 0;
}

static void fx_close(Fx *fx)
{
    model_free(fx->m);
    st_close(&fx->ref);
}

/* ours vs ref over the rows of valid positions of (B,T,W) tensors */
static double err_valid(const Fx *fx, const float *ours, const float *ref, int W)
{
    double dmax = 0, rmax = 0;
    for (int b = 0; b < fx->B; b++)
        for (int t = 0; t < fx->lengths[b]; t++)
            for (int k = 0; k < W; k++) {
                size_t i = ((size_t)b * fx->T + t) * W + k;
                double d = fabs((double)ours[i] - ref[i]);
                if (!(d <= dmax)) dmax = d; /* NaN propagates */
                if (fabs(ref[i]) > rmax) rmax = fabs(ref[i]);
            }
    return dmax / (rmax > 0 ? rmax : 1);
}

/* Every "grad.<hf name>" of the reference against ours, by HF name. */
static void compare_grads(Fx *fx, const float *grads)
{
    HfTensor *t;
    int n;
    CHECK(hf_export(&fx->m->cfg, &fx->m->pt, grads, &t, &n) == 0);
    int matched = 0;
    double worst = 0, scale = 0;
    char worst_name[200] = "";
    for (size_t k = 0; k < fx->m->pt.total; k++) scale = fmax(scale, fabs(grads[k]));
    for (int i = 0; i < n; i++) {
        char key[200];
        snprintf(key, sizeof(key), "grad.%s", t[i].name);
        size_t numel = 0;
        float *ref = ref_f32(fx, key, &numel);
        if (!ref) continue;
        size_t ours = (size_t)t[i].shape[0] * (size_t)(t[i].ndim == 2 ? t[i].shape[1] : 1);
        CHECKF(ours == numel, "%s: %s: %zu elements, reference %zu", fx->name, key, ours, numel);
        if (ours == numel && strstr(key, "attention.self.key.bias")) {
            /* zero in exact arithmetic (a key bias adds the same q.b to every score of a row, which the
             * softmax ignores): both sides must be roundoff next to the gradients that are not */
            double mo = 0, mr = 0;
            for (size_t k = 0; k < numel; k++) mo = fmax(mo, fabs(t[i].data[k])), mr = fmax(mr, fabs(ref[k]));
            CHECKF(mo <= 1e-5 * scale && mr <= 1e-5 * scale,
                   "%s: %s: max %.3g (reference %.3g), not ~0 next to %.3g", fx->name, key, mo, mr, scale);
        } else if (ours == numel) {
            double e = rel_err_max(t[i].data, ref, numel);
            CHECKF(e <= PARITY_TOL, "%s: %s: relative error %.3g", fx->name, key, e);
            if (!(e <= worst)) worst = e, snprintf(worst_name, sizeof(worst_name), "%s", key);
        }
        matched++;
        free(ref);
    }
    int expected = 0;
    for (int i = 0; i < fx->ref.n; i++) expected += !strncmp(fx->ref.t[i].name, "grad.", 5);
    CHECKF(matched == expected, "%s: matched %d of %d gradients", fx->name, matched, expected);
    fprintf(stderr, "  %s: %d gradients, worst %.3g (%s)\n", fx->name, matched, worst, worst_name);
    hf_tensors_free(t, n);
}

static void check_mlm(const char *name, int recompute)
{
    Fx fx;
    if (fx_open(&fx, name, NULL) != 0 || !fx.labels) {
        fx_close(&fx);
        return;
    }
    Model *m = fx.m;
    int B = fx.B, T = fx.T, V = m->cfg.vocab_size;
    CHECK(m->cfg.family == FAMILY_BERT && m->cfg.mlm_head && m->cfg.bidirectional);
    CHECK(model_reserve(m, B, T, recompute) == 0);
    /* logits at the valid positions */
    model_forward_len(m, fx.ids, NULL, fx.lengths, B, T, 0.0f, NULL);
    float *logits = xmalloc((size_t)B * T * V * sizeof(float));
    m->be->download_act(logits, m->logits, (size_t)B * T * V);
    float *ref = ref_f32(&fx, "logits", NULL);
    double e = ref ? err_valid(&fx, logits, ref, V) : 1;
    CHECKF(e <= PARITY_TOL, "%s: logits: relative error %.3g", name, e);
    fprintf(stderr, "  %s (recompute %d): logits %.3g", name, recompute, e);
    free(ref);
    free(logits);
    /* the loss over the scored labels, and every gradient */
    int valid = 0;
    for (int i = 0; i < B * T; i++) valid += fx.labels[i] >= 0;
    model_zero_grad(m);
    int n_valid = 0;
    float loss = model_forward_len(m, fx.ids, fx.labels, fx.lengths, B, T, 1.0f / (float)valid, &n_valid);
    CHECK(n_valid == valid);
    ref = ref_f32(&fx, "loss", NULL);
    if (ref) {
        CHECKF(fabs(loss - ref[0]) <= PARITY_TOL * fabs(ref[0]), "%s: loss %.7g, reference %.7g", name, loss,
               ref[0]);
        fprintf(stderr, ", loss %.7g (reference %.7g)\n", loss, ref[0]);
    }
    free(ref);
    model_backward(m);
    float *grads = xmalloc(m->pt.total * sizeof(float));
    model_get_grads(m, grads);
    compare_grads(&fx, grads);
    free(grads);
    fx_close(&fx);
}

static void test_bert_mlm(void)
{
    check_mlm("bert", RECOMPUTE_NONE);
    check_mlm("bert", RECOMPUTE_CHEAP);
    check_mlm("bert", RECOMPUTE_BLOCK);
}

static void test_roberta_mlm(void)
{
    check_mlm("roberta", RECOMPUTE_NONE);
    check_mlm("roberta", RECOMPUTE_BLOCK);
}

/* A BertModel (no MLM head; its pooler is not read): the final hidden states. */
static void check_hidden(const char *model_dir)
{
    Fx fx;
    if (fx_open(&fx, "bertmodel", model_dir) != 0) {
        fx_close(&fx);
        return;
    }
    Model *m = fx.m;
    int B = fx.B, T = fx.T, C = m->cfg.d_model;
    CHECK(!m->cfg.mlm_head && m->mlm.w < 0);
    CHECK(model_reserve(m, B, T, RECOMPUTE_NONE) == 0);
    model_forward_len(m, fx.ids, NULL, fx.lengths, B, T, 0.0f, NULL);
    float *h = xmalloc((size_t)B * T * C * sizeof(float));
    m->be->download_act(h, m->lnf, (size_t)B * T * C);
    float *ref = ref_f32(&fx, "hidden", NULL);
    double e = ref ? err_valid(&fx, h, ref, C) : 1;
    CHECKF(e <= PARITY_TOL, "bertmodel: hidden states: relative error %.3g", e);
    fprintf(stderr, "  bertmodel%s: hidden states %.3g\n", model_dir ? " (written by anvil)" : "", e);
    free(ref);
    free(h);
    fx_close(&fx);
}

static void test_bertmodel(void)
{
    check_hidden(NULL);
}

/* hf_save of a loaded model, read back: the same config and tensors; a BertModel written back still
 * gives the hidden states. */
static void test_bert_roundtrip(void)
{
    const char *names[] = {"bert", "roberta", "bertmodel"};
    for (int k = 0; k < 3; k++) {
        char src[512], out[512];
        snprintf(src, sizeof(src), "%s/bert/%s/model", test_fixtures(), names[k]);
        snprintf(out, sizeof(out), "/tmp/anvil_test_bert_%s_%d", names[k], (int)getpid());
        Model *m = hf_load_model(src, backend_cpu(), 0);
        CHECKF(m != NULL, "%s", err_get());
        if (!m) continue;
        float *a = xmalloc(m->pt.total * sizeof(float));
        model_get_params(m, a);
        fs_mkdir_p(out);
        CHECKF(hf_save(out, &m->cfg, &m->pt, a, DTYPE_F32) == 0, "%s", err_get());
        ModelConfig back;
        CHECKF(hf_read_config(out, &back) == 0, "%s", err_get());
        CHECKF(model_config_diff(&m->cfg, &back) == NULL, "%s: written config differs in %s", names[k],
               model_config_diff(&m->cfg, &back));
        CHECK(!strcmp(back.hf_arch, m->cfg.hf_arch));
        Model *m2 = hf_load_model(out, backend_cpu(), 0);
        CHECKF(m2 != NULL, "%s", err_get());
        if (m2) {
            float *b = xmalloc(m2->pt.total * sizeof(float));
            model_get_params(m2, b);
            CHECK(m2->pt.total == m->pt.total && !memcmp(a, b, m->pt.total * sizeof(float)));
            free(b);
            model_free(m2);
        }
        if (k == 2) check_hidden(out);
        fprintf(stderr, "  %s: written to %s as %s\n", names[k], out, m->cfg.hf_arch);
        free(a);
        model_free(m);
        /* ANVIL_BERT_KEEP=1 keeps them for tools/make_bert_fixtures.py --check (transformers loads them) */
        if (!getenv("ANVIL_BERT_KEEP")) fs_rm_rf(out);
    }
}

/* Bad directories: one-line errors naming the file and the key or tensor. */
static void test_bert_errors(void)
{
    char src[512], out[512];
    snprintf(src, sizeof(src), "%s/bert/bert/model", test_fixtures());
    snprintf(out, sizeof(out), "/tmp/anvil_test_bert_bad_%d", (int)getpid());
    Model *m = hf_load_model(src, backend_cpu(), 0);
    if (!m) {
        CHECK(0);
        return;
    }
    float *a = xmalloc(m->pt.total * sizeof(float));
    model_get_params(m, a);
    ModelConfig c = m->cfg;
    /* a config with one layer more than the weights have */
    fs_mkdir_p(out);
    CHECK(hf_save(out, &c, &m->pt, a, DTYPE_F32) == 0);
    ModelConfig c3 = c;
    c3.n_layer = 3;
    CHECK(hf_write_config(out, &c3, DTYPE_F32) == 0);
    ModelConfig r;
    CHECK(hf_read_config(out, &r) != 0);
    CHECKF(strstr(err_get(), "encoder.layer.2") && strstr(err_get(), "missing"), "%s", err_get());
    /* an activation we do not compute */
    char *cfgp = fs_join(out, "config.json");
    char *text;
    size_t n;
    CHECK(hf_write_config(out, &c, DTYPE_F32) == 0);
    CHECK(fs_read_file(cfgp, &text, &n) == 0);
    char *g = strstr(text, "\"gelu\"");
    CHECK(g != NULL);
    if (g) {
        size_t off = (size_t)(g - text);
        char *t2 = xmalloc(n + 16);
        memcpy(t2, text, off);
        strcpy(t2 + off, "\"relu\"");
        strcat(t2, g + 6);
        CHECK(fs_write_atomic(cfgp, t2, strlen(t2)) == 0);
        CHECK(hf_read_config(out, &r) != 0);
        CHECKF(strstr(err_get(), "config.json: hidden_act") != NULL, "%s", err_get());
        free(t2);
    }
    free(text);
    free(cfgp);
    fs_rm_rf(out);
    free(a);
    model_free(m);
}

/* Masked-LM rows: the template around the window, specials never chosen, the chosen share near
 * prob, the 80/10/10 split near its fractions (binomial bounds of 5 standard deviations), the same
 * key gives the same row, and whole-word masking chooses a word's pieces together. */
static void test_mlm_masking(void)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/tokenizers/wp_uncased/tokenizer.json", test_fixtures());
    Tokenizer *tok = tokenizer_load(path);
    CHECKF(tok != NULL, "%s", err_get());
    if (!tok) return;
    const char *text =
        "The unbelievable quartermaster rearranged extraordinarily complicated paperwork yesterday, "
        "and nobody understood the consequences of his rearrangements.";
    int32_t *ids = NULL;
    long n = tokenizer_encode(tok, text, strlen(text), &ids);
    CHECK(n > 10);
    MlmOptions o;
    CHECKF(mlm_options_init(&o, tok, 0.15f, 0) == 0, "%s", err_get());
    int32_t cls = tokenizer_token_to_id(tok, "[CLS]", 5), sep = tokenizer_token_to_id(tok, "[SEP]", 5);
    int32_t mask = tokenizer_token_to_id(tok, "[MASK]", 6);
    CHECK(o.n_pre == 1 && o.n_post == 1 && o.pre[0] == cls && o.post[0] == sep && o.mask_id == mask);
    int T = 24, W = mlm_window_tokens(&o, T);
    CHECK(W == 22 && n >= W);
    int32_t in[24], tg[24], in2[24], tg2[24];
    long chosen = 0, masked = 0, same = 0, positions = 0, special_hit = 0, wrong = 0;
    int rows = 4000;
    for (int r = 0; r < rows; r++) {
        int sc = mlm_make_row(&o, ids, T, 7, (uint64_t)r, in, tg);
        int k = 0;
        for (int t = 0; t < T; t++) k += tg[t] >= 0;
        wrong += sc != k;
        special_hit += tg[0] >= 0 || tg[T - 1] >= 0 || in[0] != cls || in[T - 1] != sep;
        for (int t = 1; t < T - 1; t++) {
            positions++;
            if (tg[t] < 0) { /* not chosen: the input is the text's token */
                wrong += in[t] != ids[t - 1];
                continue;
            }
            wrong += tg[t] != ids[t - 1]; /* chosen: the target is the text's token */
            chosen++;
            masked += in[t] == mask;
            same += in[t] == ids[t - 1];
        }
    }
    CHECKF(wrong == 0, "%ld rows or positions with a wrong input, target or count", wrong);
    CHECK(special_hit == 0);
    double p = (double)chosen / positions, sd = sqrt(0.15 * 0.85 / positions);
    CHECKF(fabs(p - 0.15) < 5 * sd, "chosen share %.4f, expected 0.15", p);
    double pm = (double)masked / chosen, sdm = sqrt(0.8 * 0.2 / chosen);
    CHECKF(fabs(pm - 0.8) < 5 * sdm, "[MASK] share %.4f, expected 0.8", pm);
    /* unchanged: 10%, plus the random draws that hit the original token (rare) */
    double ps = (double)same / chosen, sds = sqrt(0.1 * 0.9 / chosen);
    CHECKF(ps > 0.1 - 5 * sds && ps < 0.1 + 5 * sds + 0.01, "unchanged share %.4f, expected 0.1", ps);
    mlm_make_row(&o, ids, T, 7, 12345, in, tg);
    mlm_make_row(&o, ids, T, 7, 12345, in2, tg2);
    CHECK(!memcmp(in, in2, sizeof(in)) && !memcmp(tg, tg2, sizeof(tg)));
    mlm_make_row(&o, ids, T, 8, 12345, in2, tg2);
    CHECK(memcmp(tg, tg2, sizeof(tg)) != 0); /* another seed, another masking */
    mlm_options_free(&o);
    /* whole words: a "##" piece is chosen exactly when the piece before it is */
    CHECK(mlm_options_init(&o, tok, 0.3f, 1) == 0);
    int has_cont = 0, split = 0;
    for (int r = 0; r < 500; r++) {
        mlm_make_row(&o, ids, T, 3, (uint64_t)r, in, tg);
        for (int t = 2; t < T - 1; t++) {
            if (!tokenizer_is_continuation(tok, ids[t - 1])) continue;
            has_cont = 1;
            split += (tg[t] >= 0) != (tg[t - 1] >= 0);
        }
    }
    CHECK(has_cont && split == 0);
    mlm_options_free(&o);
    /* bad options: a probability outside (0, 1), whole words without ## pieces */
    CHECK(mlm_options_init(&o, tok, 1.5f, 0) != 0 && strstr(err_get(), "data.mlm.prob"));
    Tokenizer *bpe = tokenizer_load("gpt2");
    CHECK(bpe && mlm_options_init(&o, bpe, 0.15f, 0) != 0 && strstr(err_get(), "no mask token"));
    tokenizer_free(bpe);
    free(ids);
    tokenizer_free(tok);
}

/* anvil embed's core against transformers: the texts through the tokenizer's template, mean and
 * cls pooling, in one batch and one text at a time. */
static void test_embed(void)
{
    char dir[512], ref[512], texts_path[512];
    snprintf(dir, sizeof(dir), "%s/bert/bertembed/model", test_fixtures());
    snprintf(ref, sizeof(ref), "%s/bert/bertembed/reference.safetensors", test_fixtures());
    snprintf(texts_path, sizeof(texts_path), "%s/bert/bertembed/texts.txt", test_fixtures());
    Fx fx = {.name = "bertembed"};
    CHECKF(st_open(&fx.ref, ref) == 0, "%s", err_get());
    Model *m = hf_load_model(dir, backend_cpu(), 0);
    Tokenizer *tok = tokenizer_load(dir);
    CHECKF(m && tok, "%s", err_get());
    char *text = NULL;
    size_t len;
    CHECK(fs_read_file(texts_path, &text, &len) == 0);
    if (!m || !tok || !text) return;
    const char *texts[8];
    int n = 0;
    for (char *p = strtok(text, "\n"); p && n < 8; p = strtok(NULL, "\n")) texts[n++] = p;
    int C = m->cfg.d_model;
    float *out = xmalloc((size_t)n * C * sizeof(float));
    const char *kinds[2] = {"mean", "cls"};
    for (int k = 0; k < 2; k++)
        for (int batch = 1; batch <= n; batch += n - 1) {
            CHECKF(embed_texts(m, tok, texts, n, (Pooling)k, batch, out) == 0, "%s", err_get());
            size_t numel = 0;
            float *r = ref_f32(&fx, kinds[k], &numel);
            if (!r) continue;
            CHECK(numel == (size_t)n * C);
            double e = rel_err_max(out, r, numel);
            CHECKF(e <= PARITY_TOL, "embed %s (batch %d): relative error %.3g", kinds[k], batch, e);
            fprintf(stderr, "  embed %s, batch %d: %d texts, relative error %.3g\n", kinds[k], batch, n, e);
            free(r);
        }
    free(out);
    free(text);
    tokenizer_free(tok);
    model_free(m);
    st_close(&fx.ref);
}

/* anvil eval mlm's scoring of pre-masked JSONL against transformers' loss and accuracy; seeded text
 * masking does not depend on the batch size. */
static void test_eval_mlm(void)
{
    const char *names[2] = {"bert", "roberta"};
    for (int k = 0; k < 2; k++) {
        char dir[512], data[512], refp[512];
        snprintf(dir, sizeof(dir), "%s/bert/%s/model", test_fixtures(), names[k]);
        snprintf(data, sizeof(data), "%s/bert/%s/premasked.jsonl", test_fixtures(), names[k]);
        snprintf(refp, sizeof(refp), "%s/bert/%s/premasked_reference.json", test_fixtures(), names[k]);
        Model *m = hf_load_model(dir, backend_cpu(), 0);
        json_error_t je;
        json_t *ref = json_load_file(refp, 0, &je);
        CHECKF(m && ref, "%s %s", err_get(), je.text);
        if (!m || !ref) continue;
        for (int batch = 1; batch <= 3; batch += 2) {
            MlmEvalOptions o = {.T = m->cfg.max_seq_len - m->cfg.pos_offset, .batch = batch};
            MlmEvalResult r = {0};
            CHECKF(mlm_eval_jsonl(m, data, &o, &r) == 0, "%s", err_get());
            double loss = r.loss_sum / (double)r.scored, acc = (double)r.correct / (double)r.scored;
            double rl = json_real_value(json_object_get(ref, "loss")),
                   ra = json_real_value(json_object_get(ref, "accuracy"));
            CHECK(r.scored == json_integer_value(json_object_get(ref, "scored")) && r.rows == 3);
            CHECKF(fabs(loss - rl) <= PARITY_TOL * rl, "%s: eval mlm loss %.7g, transformers %.7g", names[k],
                   loss, rl);
            CHECKF(fabs(acc - ra) < 1e-6, "%s: eval mlm accuracy %.6f, transformers %.6f", names[k], acc, ra);
            fprintf(stderr, "  eval mlm %s (batch %d): loss %.7g (transformers %.7g), accuracy %.4f (%.4f)\n",
                    names[k], batch, loss, rl, acc, ra);
        }
        json_decref(ref);
        model_free(m);
    }
    /* seeded masking of a token stream: the batch size changes nothing (options by hand for the
     * fixture's 96 ids: [CLS] 2, [SEP] 3, [MASK] 4, specials 0..4) */
    char tp[512];
    snprintf(tp, sizeof(tp), "%s/bert/bert/model", test_fixtures());
    Model *m = hf_load_model(tp, backend_cpu(), 0);
    if (!m) {
        CHECK(0);
        return;
    }
    uint8_t special[96] = {1, 1, 1, 1, 1}, cont[96] = {0};
    int32_t randoms[96];
    for (int i = 0; i < 91; i++) randoms[i] = 5 + i;
    MlmOptions mo = {.prob = 0.15f,
                     .mask_id = 4,
                     .vocab = 96,
                     .n_pre = 1,
                     .n_post = 1,
                     .pre = {2},
                     .post = {3},
                     .special = special,
                     .cont = cont,
                     .random_ids = randoms,
                     .n_random = 91};
    int32_t ids[500];
    for (int i = 0; i < 500; i++) ids[i] = 5 + (i * 37) % 90;
    MlmEvalResult r1 = {0}, r2 = {0};
    MlmEvalOptions o1 = {.T = 16, .batch = 1, .seed = 5}, o2 = {.T = 16, .batch = 7, .seed = 5};
    CHECK(mlm_eval_text(m, &mo, ids, 500, &o1, &r1) == 0 && mlm_eval_text(m, &mo, ids, 500, &o2, &r2) == 0);
    CHECK(r1.rows == 36 && r1.rows == r2.rows && r1.scored == r2.scored && r1.correct == r2.correct);
    CHECK_CLOSE(r1.loss_sum, r2.loss_sum, 1e-5);
    model_free(m);
}

int main(void)
{
    RUN(test_embed);
    RUN(test_eval_mlm);
    RUN(test_mlm_masking);
    RUN(test_bert_mlm);
    RUN(test_roberta_mlm);
    RUN(test_bertmodel);
    RUN(test_bert_roundtrip);
    RUN(test_bert_errors);
    return test_summary();
}
