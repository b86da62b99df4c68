/* test_eval.c - evaluation and generation against independent references.
 *
 * References: tests/fixtures/{gpt2,llama,qwen2} (tools/make_fixtures.py: logits, loss and
 * transformers' greedy generate() of tiny random models) and tests/fixtures/eval
 * (tools/make_eval_fixtures.py: two tiny trained models with tokenizers; the HF guide's
 * perplexity loop and every window's per-token NLLs; lm-evaluation-harness requests and
 * log-likelihoods for each task format; greedy continuations with and without EOS; Python's
 * own results for the string helpers). Nothing here compares anvil with itself except
 * the KV-cache path against the plain forward and batch / chunk invariance.
 */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "core/error.h"
#include "core/rng.h"
#include "data/textio.h"
#include "data/tokenizer.h"
#include "data/utf8.h"
#include "eval/generate.h"
#include "eval/mcq.h"
#include "eval/ppl.h"
#include "eval/sampling.h"
#include "io/fsutil.h"
#include "io/hf.h"
#include "io/safetensors.h"
#include "model/infer.h"
#include "model/model.h"
#include "test.h"

/* fp32 on the CPU against fp32 PyTorch: summation order only. */
#define TOL_LOGITS 1e-5
#define TOL_NLL 1e-5 /* relative, mean NLL over hundreds of tokens */
#define TOL_LL 2e-4  /* absolute, nats: a continuation's summed log-likelihood */

static json_t *g_exp; /* tests/fixtures/eval/expected.json */

static void path_of(char *buf, size_t n, const char *a, const char *b)
{
    snprintf(buf, n, "%s/%s%s%s", test_fixtures(), a, b ? "/" : "", b ? b : "");
}

static json_t *model_ref(const char *name)
{
    return json_object_get(json_object_get(g_exp, "models"), name);
}

static Model *load_model(const char *dir)
{
    Model *m = hf_load_model(dir, backend_cpu(), 0);
    CHECKF(m != NULL, "%s: %s", dir, err_get());
    return m;
}

static int32_t *json_ids(json_t *a, int *n)
{
    *n = (int)json_array_size(a);
    int32_t *v = xmalloc((size_t)(*n + 1) * sizeof(int32_t));
    for (int i = 0; i < *n; i++) v[i] = (int32_t)json_integer_value(json_array_get(a, (size_t)i));
    return v;
}

/* tokenizer(text) as transformers does it: BOS first when the post-processor adds one. */
static int32_t *encode_hf(const Tokenizer *tok, const char *s, size_t len, int *n)
{
    int32_t *v = NULL;
    long k = tokenizer_encode(tok, s, len, &v);
    CHECK(k >= 0);
    int bos = tokenizer_add_bos(tok);
    int32_t *out = xmalloc((size_t)(k + 2) * sizeof(int32_t));
    if (bos) out[0] = tokenizer_bos_id(tok);
    if (k > 0) memcpy(out + bos, v, (size_t)k * sizeof(int32_t));
    free(v);
    *n = (int)k + bos;
    return out;
}

/* ----------------------------------------------------------------- ops */

/* attention over a cache filled by kv_store == causal attention over the whole sequence */
static void test_kv_ops(void)
{
    const Backend *be = backend_cpu();
    int shapes[][5] = {{2, 7, 4, 2, 8}, {1, 5, 3, 3, 6}, {3, 4, 8, 1, 4}}; /* B, T, nh, nkv, hd */
    for (size_t si = 0; si < ARRAY_LEN(shapes); si++) {
        int B = shapes[si][0], T = shapes[si][1], nh = shapes[si][2], nkv = shapes[si][3], hd = shapes[si][4];
        int row = (nh + 2 * nkv) * hd, cap = T + 2;
        size_t nq = (size_t)B * T * row, no = (size_t)B * T * nh * hd;
        float *qkv = xmalloc(nq * sizeof(float)), *full = xmalloc(no * sizeof(float));
        float *lse = xmalloc((size_t)B * nh * T * sizeof(float));
        Rng r;
        rng_seed(&r, 7, si);
        for (size_t i = 0; i < nq; i++) qkv[i] = (float)rng_normal(&r);
        be->attention_fwd(full, lse, qkv, B, T, nh, nkv, hd);
        for (int p0 = 0; p0 < T; p0 += 2) { /* first p0 positions stored, then T - p0 new ones */
            float *kc = xcalloc((size_t)B * nkv * cap * hd, sizeof(float));
            float *vc = xcalloc((size_t)B * nkv * cap * hd, sizeof(float));
            int Tn = T - p0;
            float *pre = xmalloc(((size_t)B * p0 + 1) * row * sizeof(float));
            float *suf = xmalloc((size_t)B * Tn * row * sizeof(float));
            float *out = xmalloc((size_t)B * Tn * nh * hd * sizeof(float));
            for (int b = 0; b < B; b++) {
                memcpy(pre + (size_t)b * p0 * row, qkv + (size_t)b * T * row,
                       (size_t)p0 * row * sizeof(float));
                memcpy(suf + (size_t)b * Tn * row, qkv + ((size_t)b * T + p0) * row,
                       (size_t)Tn * row * sizeof(float));
            }
            if (p0) be->kv_store(kc, vc, pre, B, p0, nh, nkv, hd, 0, cap);
            be->kv_store(kc, vc, suf, B, Tn, nh, nkv, hd, p0, cap);
            be->attention_kv_fwd(out, suf, kc, vc, B, Tn, nh, nkv, hd, p0, cap);
            double worst = 0;
            for (int b = 0; b < B; b++)
                for (int t = 0; t < Tn; t++)
                    for (int e = 0; e < nh * hd; e++) {
                        float x = out[((size_t)b * Tn + t) * nh * hd + e];
                        float y = full[((size_t)b * T + p0 + t) * nh * hd + e];
                        worst = fmax(worst, fabs((double)x - y));
                    }
            CHECKF(worst <= 1e-6, "shape %zu, pos0 %d: max |cached - full| = %.3g", si, p0, worst);
            free(kc);
            free(vc);
            free(pre);
            free(suf);
            free(out);
        }
        free(qkv);
        free(full);
        free(lse);
    }
}

/* ----------------------------------------------------- cached forward */

/* Cached logits (prompt in chunks, then one token at a time, 2 rows) == model_forward's. */
static void check_cached_forward(const char *dir)
{
    Model *m = load_model(dir);
    if (!m) return;
    int V = m->cfg.vocab_size, B = 2, T = MIN(m->cfg.max_seq_len, 20), P = 6;
    int32_t *ids = xmalloc((size_t)B * T * sizeof(int32_t));
    for (int i = 0; i < B * T; i++) ids[i] = (int32_t)((i * 37 + 11) % V);
    CHECK(model_reserve(m, B, T, RECOMPUTE_NONE) == 0);
    model_forward(m, ids, NULL, B, T, 0.0f, NULL);
    float *full = xmalloc((size_t)B * T * V * sizeof(float));
    m->be->download_act(full, m->logits, (size_t)B * T * V);
    KVCache *kv = kv_cache_create(m, B, T, 4); /* a 6-token prompt runs as 4 + 2: both attention paths */
    CHECK(kv != NULL);
    int32_t *step = xmalloc((size_t)B * P * sizeof(int32_t));
    for (int b = 0; b < B; b++) memcpy(step + b * P, ids + (size_t)b * T, (size_t)P * sizeof(int32_t));
    const float *lg = model_forward_cached(m, kv, step, P);
    double worst = 0;
    for (int t = P - 1; t < T && lg; t++) {
        for (int b = 0; b < B; b++) {
            double e = rel_err_max(lg + (size_t)b * V, full + ((size_t)b * T + t) * V, (size_t)V);
            worst = fmax(worst, e);
        }
        if (t + 1 < T) {
            for (int b = 0; b < B; b++) step[b] = ids[(size_t)b * T + t + 1];
            lg = model_forward_cached(m, kv, step, 1);
        }
    }
    CHECKF(lg && worst <= TOL_LOGITS, "%s: cached vs full logits: rel err %.3g", dir, worst);
    CHECK(kv->len == T);
    CHECK(model_forward_cached(m, kv, step, 1) == NULL); /* full */
    kv_cache_free(m, kv);
    free(step);
    free(full);
    free(ids);
    model_free(m);
}

static void test_cached_forward(void)
{
    const char *names[] = {"gpt2", "llama", "qwen2"};
    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        char dir[512];
        path_of(dir, sizeof(dir), names[i], "model");
        check_cached_forward(dir);
    }
}

/* ---------------------------------------------------------- generation */

static GenOptions greedy_opts(int max_tokens, int batch, int eos)
{
    GenOptions o = {
        .max_tokens = max_tokens, .sampler = {0.0f, 0, 1.0f}, .seed = 1, .batch = batch, .eos_id = eos};
    return o;
}

/* transformers' greedy generate() of tools/make_fixtures.py, batch 1 and 3 */
static void test_greedy_parity_fixtures(void)
{
    const char *names[] = {"gpt2", "llama", "qwen2"};
    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        char dir[512], ref[512];
        path_of(dir, sizeof(dir), names[i], "model");
        path_of(ref, sizeof(ref), names[i], "reference.safetensors");
        StFile f;
        if (st_open(&f, ref)) {
            CHECKF(0, "%s", err_get());
            continue;
        }
        const StTensor *tp = st_find(&f, "greedy.prompt"), *to = st_find(&f, "greedy.output");
        Model *m = load_model(dir);
        if (tp && to && m) {
            int P = (int)tp->shape[1], NEW = (int)to->shape[1];
            int32_t *prompt = xmalloc((size_t)P * sizeof(int32_t)),
                    *want = xmalloc((size_t)NEW * sizeof(int32_t));
            memcpy(prompt, tp->data, (size_t)P * sizeof(int32_t));
            memcpy(want, to->data, (size_t)NEW * sizeof(int32_t));
            for (int batch = 1; batch <= 3; batch += 2) {
                GenOptions o = greedy_opts(NEW, batch, -1);
                GenResult r;
                CHECKF(generate_run(m, prompt, P, &o, &r) == 0, "%s", err_get());
                for (int b = 0; b < r.batch; b++)
                    CHECKF(r.n_ids[b] == NEW && !memcmp(r.ids[b], want, (size_t)NEW * sizeof(int32_t)),
                           "%s: batch %d sample %d: greedy differs from transformers' generate()", names[i],
                           batch, b);
                gen_result_free(&r);
            }
            free(prompt);
            free(want);
        }
        model_free(m);
        st_close(&f);
    }
}

typedef struct {
    char buf[4096];
    size_t n;
    int chunks, bad_utf8;
} Collect;

static void collect_text(void *ctx, const char *s, size_t n)
{
    Collect *c = ctx;
    if (c->n + n < sizeof(c->buf)) memcpy(c->buf + c->n, s, n);
    c->n += n;
    c->chunks++;
    c->bad_utf8 |= utf8_validate((const uint8_t *)s, n) != n;
}

/* The trained eval models: prompt tokenization, greedy with and without EOS, stop strings. */
static void check_generate_eval_model(const char *name)
{
    char dir[512];
    path_of(dir, sizeof(dir), "eval", name);
    Model *m = load_model(dir);
    Tokenizer *tok = tokenizer_load(dir);
    CHECKF(tok != NULL, "%s", err_get());
    json_t *cases = json_object_get(model_ref(name), "generate");
    CHECK(json_array_size(cases) > 0);
    for (size_t ci = 0; m && tok && ci < json_array_size(cases); ci++) {
        json_t *c = json_array_get(cases, ci);
        const char *text = json_string_value(json_object_get(c, "prompt"));
        int np, nref, nw, ne;
        int32_t *prompt = encode_hf(tok, text, strlen(text), &np);
        int32_t *pref = json_ids(json_object_get(c, "prompt_ids"), &nref);
        int32_t *want = json_ids(json_object_get(c, "greedy"), &nw);
        int32_t *want_eos = json_ids(json_object_get(c, "greedy_eos"), &ne);
        CHECKF(np == nref && !memcmp(prompt, pref, (size_t)np * sizeof(int32_t)), "%s: prompt %zu ids", name,
               ci);
        /* no EOS stop: the whole continuation, streamed */
        Collect col = {0};
        GenOptions o = greedy_opts(nw, 1, m->cfg.eos_token_id);
        o.ignore_eos = 1;
        o.tok = tok;
        o.on_text = collect_text;
        o.ctx = &col;
        GenResult r;
        CHECKF(generate_run(m, prompt, np, &o, &r) == 0, "%s", err_get());
        CHECKF(r.n_ids[0] == nw && !memcmp(r.ids[0], want, (size_t)nw * sizeof(int32_t)),
               "%s: \"%s\": greedy differs from transformers", name, text);
        size_t len;
        char *dec = tokenizer_decode(tok, want, (size_t)nw, &len);
        CHECKF(r.text_len[0] == len && !memcmp(r.text[0], dec, len), "%s: text is not decode(ids)", name);
        CHECKF(col.n == len && !memcmp(col.buf, dec, len) && !col.bad_utf8, "%s: streamed text differs",
               name);
        /* a stop string taken from the middle of the text: output ends right before it */
        if (len > 12) {
            char stop[4];
            memcpy(stop, dec + len / 2, 3);
            stop[3] = 0;
            const char *stops[] = {"\x01never", stop};
            size_t cut = (size_t)(strstr(dec, stop) - dec);
            Collect c2 = {0};
            o.stops = stops;
            o.n_stops = 2;
            o.ctx = &c2;
            GenResult r2;
            CHECKF(generate_run(m, prompt, np, &o, &r2) == 0, "%s", err_get());
            CHECKF(r2.stop[0] == GEN_STOP_STRING && r2.text_len[0] == cut && !memcmp(r2.text[0], dec, cut),
                   "%s: stop \"%s\": got %zu bytes, want %zu", name, stop, r2.text_len[0], cut);
            CHECKF(c2.n == cut && !memcmp(c2.buf, dec, cut), "%s: streamed text with a stop string", name);
            gen_result_free(&r2);
            o.stops = NULL;
            o.n_stops = 0;
        }
        free(dec);
        gen_result_free(&r);
        /* stopping at EOS, as generate() with eos_token_id */
        o = greedy_opts(nw, 1, m->cfg.eos_token_id);
        o.tok = tok;
        CHECKF(generate_run(m, prompt, np, &o, &r) == 0, "%s", err_get());
        CHECKF(r.n_ids[0] == ne && !memcmp(r.ids[0], want_eos, (size_t)ne * sizeof(int32_t)),
               "%s: \"%s\": generation with EOS differs (%d ids, want %d)", name, text, r.n_ids[0], ne);
        int ended = ne > 0 && want_eos[ne - 1] == m->cfg.eos_token_id;
        CHECK(r.stop[0] == (ended ? GEN_STOP_EOS : GEN_STOP_LENGTH));
        dec = tokenizer_decode(tok, want_eos, (size_t)(ne - ended), &len);
        CHECKF(r.text_len[0] == len && !memcmp(r.text[0], dec, len), "%s: text with EOS", name);
        free(dec);
        gen_result_free(&r);
        free(prompt);
        free(pref);
        free(want);
        free(want_eos);
    }
    if (tok) tokenizer_free(tok);
    model_free(m);
}

static void test_generate_eval_models(void)
{
    check_generate_eval_model("gpt2");
    check_generate_eval_model("llama");
}

/* The window: generation stops when the cache is full. */
static void test_generate_window(void)
{
    char dir[512];
    path_of(dir, sizeof(dir), "eval", "gpt2");
    Model *m = load_model(dir);
    if (!m) return;
    int W = m->cfg.max_seq_len;
    int32_t prompt[3] = {5, 6, 7};
    GenOptions o = greedy_opts(W + 10, 2, -1);
    GenResult r;
    CHECKF(generate_run(m, prompt, 3, &o, &r) == 0, "%s", err_get());
    CHECK(r.stop[0] == GEN_STOP_WINDOW && r.n_ids[0] == W - 3 + 1);
    gen_result_free(&r);
    int32_t *big = xcalloc((size_t)W + 1, sizeof(int32_t));
    CHECK(generate_run(m, big, W + 1, &o, &r) == -1 && strstr(err_get(), "window"));
    big[0] = m->cfg.vocab_size;
    CHECK(generate_run(m, big, 2, &o, &r) == -1 && strstr(err_get(), "vocabulary"));
    free(big);
    model_free(m);
}

/* ------------------------------------------------------------- sampling */

static void test_sampler(void)
{
    const double probs[4] = {0.5, 0.3, 0.15, 0.05};
    float logits[4];
    for (int i = 0; i < 4; i++) logits[i] = (float)log(probs[i]) + 3.0f; /* a shift changes nothing */
    Rng r;
    rng_seed(&r, 99, 0);
    int N = 4000;
    struct {
        SamplerOptions o;
        double p_kept[4]; /* the distribution each setting must draw from */
    } cases[] = {
        {{1.0f, 0, 1.0f}, {0.5, 0.3, 0.15, 0.05}},
        {{1.0f, 2, 1.0f}, {0.5 / 0.8, 0.3 / 0.8, 0, 0}},
        {{1.0f, 0, 0.75f}, {0.5 / 0.8, 0.3 / 0.8, 0, 0}}, /* 0.5 + 0.3 reach 0.75: the rest goes */
        {{1.0f, 0, 0.9f}, {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0}},
        {{1.0f, 1, 1.0f}, {1, 0, 0, 0}},
        {{1.0f, 0, 0.1f}, {1, 0, 0, 0}},
    };
    for (size_t c = 0; c < ARRAY_LEN(cases); c++) {
        Sampler s;
        sampler_init(&s, &cases[c].o, 4);
        int cnt[4] = {0};
        for (int i = 0; i < N; i++) cnt[sampler_next(&s, logits, &r)]++;
        for (int k = 0; k < 4; k++) {
            double f = (double)cnt[k] / N, p = cases[c].p_kept[k];
            double tol = 4 * sqrt(p * (1 - p) / N) + 1e-9; /* 4 standard deviations */
            CHECKF(fabs(f - p) <= tol, "case %zu: token %d drawn %.4f, want %.4f", c, k, f, p);
        }
        sampler_free(&s);
    }
    /* temperature: logits / T, so T = 0.5 squares the odds */
    SamplerOptions ot = {0.5f, 0, 1.0f};
    Sampler s;
    sampler_init(&s, &ot, 4);
    int cnt[4] = {0};
    for (int i = 0; i < N; i++) cnt[sampler_next(&s, logits, &r)]++;
    double z = 0.25 + 0.09 + 0.0225 + 0.0025;
    CHECK(fabs(cnt[0] / (double)N - 0.25 / z) < 4 * sqrt(0.25 / z * (1 - 0.25 / z) / N));
    sampler_free(&s);
    /* greedy: the first of equal maxima, as torch.argmax */
    float tie[5] = {1, 3, 2, 3, 0};
    SamplerOptions og = {0.0f, 0, 1.0f};
    sampler_init(&s, &og, 5);
    CHECK(sampler_next(&s, tie, &r) == 1);
    sampler_free(&s);
    SamplerOptions bad = {-1.0f, 0, 1.0f};
    CHECK(sampler_check(&bad) == -1 && strstr(err_get(), "--temperature"));
    bad = (SamplerOptions){1.0f, 0, 0.0f};
    CHECK(sampler_check(&bad) == -1 && strstr(err_get(), "--top-p"));
}

/* the same seed gives the same tokens; sample 0 of a batch is the batch-1 output */
static void test_sampling_reproducible(void)
{
    char dir[512];
    path_of(dir, sizeof(dir), "eval", "llama");
    Model *m = load_model(dir);
    if (!m) return;
    int32_t prompt[4] = {m->cfg.bos_token_id, 40, 41, 42};
    GenOptions o = {.max_tokens = 40, .sampler = {0.9f, 50, 0.95f}, .seed = 7, .batch = 1, .eos_id = -1};
    GenResult a, b, c, d;
    CHECK(generate_run(m, prompt, 4, &o, &a) == 0);
    CHECK(generate_run(m, prompt, 4, &o, &b) == 0);
    o.seed = 8;
    CHECK(generate_run(m, prompt, 4, &o, &c) == 0);
    o.seed = 7;
    o.batch = 3;
    CHECK(generate_run(m, prompt, 4, &o, &d) == 0);
    CHECK(a.n_ids[0] == 40 && b.n_ids[0] == 40 && !memcmp(a.ids[0], b.ids[0], 40 * sizeof(int32_t)));
    CHECKF(memcmp(a.ids[0], c.ids[0], 40 * sizeof(int32_t)) != 0, "seeds 7 and 8 gave the same 40 tokens");
    CHECKF(!memcmp(a.ids[0], d.ids[0], 40 * sizeof(int32_t)), "sample 0 of a batch differs from batch 1");
    CHECKF(memcmp(d.ids[0], d.ids[1], 40 * sizeof(int32_t)) != 0, "two samples of a batch are identical");
    gen_result_free(&a);
    gen_result_free(&b);
    gen_result_free(&c);
    gen_result_free(&d);
    model_free(m);
}

/* --------------------------------------------------------- text stream */

static void test_text_stream(void)
{
    CHECK(utf8_stable_prefix("a\xC3", 2) == 1);
    CHECK(utf8_stable_prefix("a\xE2\x82", 3) == 1);
    CHECK(utf8_stable_prefix("a\xE2\x82\xAC", 4) == 4);
    CHECK(utf8_stable_prefix("\xF0\x9F\x98", 3) == 0);
    CHECK(utf8_stable_prefix("\xF0\x9F\x98\x80", 4) == 4);
    CHECK(utf8_stable_prefix("\x80", 1) == 1); /* a stray continuation byte can never complete */
    CHECK(utf8_stable_prefix("ab\xFF", 3) == 3);
    Tokenizer *tok = tokenizer_load("byte"); /* ids 0..255 are the bytes */
    CHECKF(tok != NULL, "%s", err_get());
    if (!tok) return;
    const char *text = "h\xC3\xA9llo w\xC3\xB6rld \xE2\x82\xAC STOP more";
    const char *stops[] = {"w\xC3\xB6rlds", "STOP"};
    TextStream ts;
    text_stream_init(&ts, tok, stops, 2);
    char got[128];
    size_t n = 0;
    int stopped = 0, bad = 0, held_partial = 0;
    for (const char *p = text; *p && !stopped; p++) {
        const char *out;
        size_t k;
        stopped = text_stream_push(&ts, (uint8_t)*p, &out, &k);
        if (k) bad |= utf8_validate((const uint8_t *)out, k) != k;
        if (k) memcpy(got + n, out, k);
        n += k;
        got[n] = 0;
        /* after "wörld" the text could still become "wörlds": nothing of it may be out yet */
        if (p[0] == 'd' && p[1] == ' ') held_partial = !strstr(got, "w");
    }
    const char *out;
    size_t k;
    text_stream_finish(&ts, &out, &k);
    if (k) memcpy(got + n, out, k);
    n += k;
    got[n] = 0;
    CHECK(stopped && !bad && held_partial);
    CHECKF(!strcmp(got, "h\xC3\xA9llo w\xC3\xB6rld \xE2\x82\xAC "), "stream gave \"%s\"", got);
    text_stream_free(&ts);
    tokenizer_free(tok);
}

/* ------------------------------------------------------------- perplexity */

/* -log softmax(logits)[y] in double */
static double nll_of(const float *logits, int V, int y)
{
    double mx = -INFINITY, s = 0;
    for (int v = 0; v < V; v++) mx = fmax(mx, logits[v]);
    for (int v = 0; v < V; v++) s += exp((double)logits[v] - mx);
    return mx + log(s) - logits[y];
}

/* stride = ctx over the parity fixtures' two rows: ppl == exp(mean NLL from the fixture logits),
 * which the fixture loss pins down (loss covers all targets but the ignored ones). */
static void check_ppl_parity(const char *name)
{
    char dir[512], ref[512];
    path_of(dir, sizeof(dir), name, "model");
    path_of(ref, sizeof(ref), name, "reference.safetensors");
    StFile f;
    if (st_open(&f, ref)) {
        CHECKF(0, "%s", err_get());
        return;
    }
    const StTensor *ti = st_find(&f, "input_ids"), *tt = st_find(&f, "targets"), *tl = st_find(&f, "logits"),
                   *ts = st_find(&f, "loss");
    Model *m = load_model(dir);
    if (ti && tt && tl && ts && m) {
        int T = (int)ti->shape[1], V = (int)tl->shape[2];
        const int32_t *in = ti->data, *tg = tt->data;
        float *logits = xmalloc(tl->numel * sizeof(float)), loss;
        st_to_f32(tl, logits);
        st_to_f32(ts, &loss);
        CHECK(tg[T - 1] >= 0 && tg[2 * T - 1] < 0); /* row 0 knows its last token, row 1 does not */
        /* the stream: row 0 and its last target (T + 1 tokens), then row 1 (T tokens) */
        int n = 2 * T + 1;
        int32_t *seq = xmalloc((size_t)n * sizeof(int32_t));
        memcpy(seq, in, (size_t)T * sizeof(int32_t));
        seq[T] = tg[T - 1];
        memcpy(seq + T + 1, in + T, (size_t)T * sizeof(int32_t));
        /* windows [0, T+1) and [T+1, 2T+1): each scores all but its first token */
        double sum = 0, ignored = 0;
        int cnt = 0, n_ign = 0;
        for (int t = 0; t < T; t++) { /* row 0: targets seq[1..T] */
            double l = nll_of(logits + (size_t)t * V, V, seq[t + 1]);
            sum += l;
            cnt++;
            if (tg[t] < 0) ignored += l, n_ign++;
        }
        for (int t = 0; t + 1 < T; t++) { /* row 1: targets in[T+1 ..] */
            double l = nll_of(logits + ((size_t)T + t) * V, V, in[T + t + 1]);
            sum += l;
            cnt++;
        }
        double want = sum / cnt;
        /* tie the logits to the fixture loss: loss averages the same NLLs minus the ignored ones */
        int n_loss = 2 * T - 2; /* 2T targets, 2 ignored */
        CHECKF(fabs((loss * n_loss + ignored) / (n_loss + n_ign) - want) < 1e-5,
               "%s: fixture loss %.6f vs its logits", name, loss);
        for (int batch = 1; batch <= 2; batch++) {
            PplOptions o = {.ctx = T + 1, .stride = T + 1, .batch = batch};
            PplResult r;
            CHECKF(ppl_run(m, seq, (size_t)n, &o, NULL, &r) == 0, "%s", err_get());
            CHECKF(r.tokens == (uint64_t)cnt && r.windows == 2, "%s: %llu tokens in %d windows", name,
                   (unsigned long long)r.tokens, r.windows);
            CHECK_CLOSE(r.nll, want, TOL_NLL);
            CHECK_CLOSE(r.ppl, exp(want), TOL_NLL);
            CHECK_CLOSE(r.hf_doc_nll, r.nll, 1e-12); /* no overlap: the guide's weighting is the same */
        }
        free(seq);
        free(logits);
    }
    model_free(m);
    st_close(&f);
}

static void test_ppl_parity_fixtures(void)
{
    check_ppl_parity("gpt2");
    check_ppl_parity("llama");
    check_ppl_parity("qwen2");
}

/* The eval models on ppl.txt: tokens, the HF guide's loop (transformers), and the windows'
 * per-token NLLs combined by this test's own rule: a token counts in the first window that
 * scores it (any window scores positions begin+1 .. end-1). */
static void check_ppl_eval(const char *name)
{
    char dir[512], txt[512];
    path_of(dir, sizeof(dir), "eval", name);
    path_of(txt, sizeof(txt), "eval", "ppl.txt");
    Model *m = load_model(dir);
    Tokenizer *tok = tokenizer_load(dir);
    size_t tlen;
    char *text = text_read_file(txt, &tlen);
    json_t *ref = json_object_get(model_ref(name), "ppl");
    if (!m || !tok || !text || !ref) {
        CHECKF(0, "%s: missing model, tokenizer, ppl.txt or reference", name);
        goto out;
    }
    int n, nref;
    int32_t *ids = encode_hf(tok, text, tlen, &n), *want = json_ids(json_object_get(ref, "ids"), &nref);
    CHECKF(n == nref && !memcmp(ids, want, (size_t)n * sizeof(int32_t)), "%s: ppl.txt tokenizes differently",
           name);
    json_t *cases = json_object_get(ref, "cases");
    for (size_t ci = 0; ci < json_array_size(cases); ci++) {
        json_t *c = json_array_get(cases, ci);
        int ctx = (int)json_integer_value(json_object_get(c, "ctx"));
        int stride = (int)json_integer_value(json_object_get(c, "stride"));
        json_t *wins = json_object_get(c, "windows");
        unsigned char *scored = xcalloc((size_t)n, 1);
        double sum = 0;
        uint64_t cnt = 0, bytes = 0;
        for (size_t w = 0; w < json_array_size(wins); w++) {
            json_t *win = json_array_get(wins, w), *nl = json_object_get(win, "nll");
            int begin = (int)json_integer_value(json_object_get(win, "begin"));
            for (size_t j = 0; j < json_array_size(nl); j++) {
                int pos = begin + (int)j + 1;
                if (scored[pos]) continue;
                scored[pos] = 1;
                sum += json_real_value(json_array_get(nl, j));
                cnt++;
                size_t bl;
                tokenizer_token_bytes(tok, ids[pos], &bl);
                bytes += bl;
            }
        }
        free(scored);
        for (int batch = 1; batch <= 3; batch += 2) {
            PplOptions o = {.ctx = ctx, .stride = stride, .batch = batch};
            PplResult r;
            CHECKF(ppl_run(m, ids, (size_t)n, &o, tok, &r) == 0, "%s", err_get());
            CHECKF(r.tokens == cnt && r.tokens == (uint64_t)json_integer_value(json_object_get(c, "tokens")),
                   "%s ctx %d stride %d: %llu tokens scored, want %llu", name, ctx, stride,
                   (unsigned long long)r.tokens, (unsigned long long)cnt);
            CHECK_CLOSE(r.nll, sum / (double)cnt, TOL_NLL);
            CHECK_CLOSE(r.nll, json_real_value(json_object_get(c, "nll")), TOL_NLL);
            CHECK_CLOSE(r.hf_doc_nll, json_real_value(json_object_get(c, "hf_doc_nll")), TOL_NLL);
            CHECK(r.hf_doc_tokens == (uint64_t)json_integer_value(json_object_get(c, "hf_doc_tokens")));
            if (ctx == stride) CHECK_CLOSE(r.nll, r.hf_doc_nll, 1e-12);
            CHECK(r.bytes == bytes);
            CHECK_CLOSE(r.bpb, sum / log(2.0) / (double)bytes, TOL_NLL);
        }
    }
    /* every token but the first is scored when windows overlap: the text's bytes minus token 0's */
    PplOptions o = {.ctx = 64, .stride = 24, .batch = 2};
    PplResult r;
    if (!ppl_run(m, ids, (size_t)n, &o, tok, &r)) {
        size_t b0;
        tokenizer_token_bytes(tok, ids[0], &b0);
        CHECKF(r.bytes == tlen - (tokenizer_add_bos(tok) ? 0 : b0), "%s: %llu bytes scored of %zu", name,
               (unsigned long long)r.bytes, tlen);
    }
    o = (PplOptions){.ctx = 64, .stride = 65, .batch = 1};
    CHECK(ppl_run(m, ids, (size_t)n, &o, tok, &r) == -1 && strstr(err_get(), "--stride"));
    o = (PplOptions){.ctx = m->cfg.max_seq_len + 1, .stride = 1, .batch = 1};
    CHECK(ppl_run(m, ids, (size_t)n, &o, tok, &r) == -1 && strstr(err_get(), "--seq"));
    free(ids);
    free(want);
out:
    free(text);
    if (tok) tokenizer_free(tok);
    model_free(m);
}

/* Weights that are finite but overflow the activations: ppl and generate report an error
 * (the old code printed "ppl -nan" and sampled from NaN logits). */
static void test_nonfinite_results(void)
{
    char dir[512];
    path_of(dir, sizeof(dir), "gpt2", "model");
    Model *m = load_model(dir);
    if (!m) return;
    float *host = xmalloc(m->pt.total * sizeof(float));
    model_get_params(m, host);
    const Param *lnf = &m->pt.p[m->lnf_w];
    for (size_t i = 0; i < lnf->numel; i++) host[lnf->offset + i] = 3e38f; /* finite; the logits are not */
    model_set_params(m, host);
    free(host);
    int32_t ids[40];
    for (int i = 0; i < 40; i++) ids[i] = (i * 7) % m->cfg.vocab_size;
    PplOptions o = {.ctx = 16, .stride = 16, .batch = 2};
    PplResult r;
    CHECKF(ppl_run(m, ids, 40, &o, NULL, &r) == -1 && strstr(err_get(), "not finite"), "ppl %g: %s", r.ppl,
           err_get());
    GenOptions g = {.max_tokens = 3, .sampler = {1.0f, 0, 1.0f}, .seed = 1, .batch = 1, .eos_id = -1};
    GenResult gr;
    CHECKF(generate_run(m, ids, 4, &g, &gr) == -1 && strstr(err_get(), "logits are not finite"), "%s", err_get());
    model_free(m);
}

static void test_ppl_eval_models(void)
{
    check_ppl_eval("gpt2");
    check_ppl_eval("llama");
}

/* ------------------------------------------------------ multiple choice */

static void check_mcq(Model *m, const Tokenizer *tok, const char *name, const char *task, json_t *ref,
                      int no_bos)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/eval/%s.jsonl", test_fixtures(), task);
    McqTask t;
    CHECK(mcq_task_parse(task, &t) == 0);
    McqSet set;
    if (mcq_load(path, t, 0, 0, &set)) {
        CHECKF(0, "%s", err_get());
        return;
    }
    json_t *items = json_object_get(ref, "items");
    CHECKF(set.n == (int)json_array_size(items), "%s: %d items", task, set.n);
    /* the requests lm-eval builds */
    for (int i = 0; i < set.n && i < (int)json_array_size(items); i++) {
        json_t *reqs = json_object_get(json_array_get(items, (size_t)i), "requests");
        CHECK(set.items[i].n == (int)json_array_size(reqs));
        for (int c = 0; c < set.items[i].n && c < (int)json_array_size(reqs); c++) {
            json_t *q = json_array_get(reqs, (size_t)c);
            CHECKF(!strcmp(set.items[i].ctx[c], json_string_value(json_array_get(q, 0))),
                   "%s item %d: context \"%s\"", task, i, set.items[i].ctx[c]);
            CHECKF(!strcmp(set.items[i].cont[c], json_string_value(json_array_get(q, 1))),
                   "%s item %d: continuation \"%s\"", task, i, set.items[i].cont[c]);
        }
    }
    for (int batch = 1; batch <= 4; batch += 3) {
        McqOptions o = {
            .ctx = (int)json_integer_value(json_object_get(g_exp, "ctx")), .batch = batch, .no_bos = no_bos};
        McqResult r;
        if (mcq_score(m, tok, &set, &o, &r)) {
            CHECKF(0, "%s", err_get());
            continue;
        }
        double worst = 0;
        int preds_ok = 1, trunc_ok = 1;
        for (int i = 0; i < r.items && i < (int)json_array_size(items); i++) {
            json_t *it = json_array_get(items, (size_t)i), *lls = json_object_get(it, "lls");
            for (int c = 0; c < set.items[i].n; c++)
                worst = fmax(worst, fabs(r.ll[i][c] - json_real_value(json_array_get(lls, (size_t)c))));
            preds_ok &= r.pred[i] == json_integer_value(json_object_get(it, "pred"));
            if (r.has_norm) {
                preds_ok &= r.pred_norm[i] == json_integer_value(json_object_get(it, "pred_norm"));
                preds_ok &= r.pred_bytes[i] == json_integer_value(json_object_get(it, "pred_bytes"));
            }
            trunc_ok &= r.item_truncated[i] == json_is_true(json_object_get(it, "truncated"));
        }
        CHECKF(worst <= TOL_LL, "%s %s batch %d: log-likelihoods off by %.3g", name, task, batch, worst);
        CHECKF(preds_ok, "%s %s batch %d: predictions differ from the reference", name, task, batch);
        CHECKF(trunc_ok && r.truncated == json_integer_value(json_object_get(ref, "truncated")),
               "%s %s: truncated %d", name, task, r.truncated);
        CHECK_CLOSE(r.acc, json_real_value(json_object_get(ref, "acc")), 1e-12);
        CHECK(r.has_norm == (json_object_get(ref, "acc_norm") != NULL));
        if (r.has_norm) {
            CHECK_CLOSE(r.acc_norm, json_real_value(json_object_get(ref, "acc_norm")), 1e-12);
            CHECK_CLOSE(r.acc_bytes, json_real_value(json_object_get(ref, "acc_bytes")), 1e-12);
        }
        mcq_result_free(&r);
    }
    mcq_set_free(&set);
}

/* A window shorter than some continuations: those items are left out and counted. */
static void check_mcq_too_long(Model *m, const Tokenizer *tok, json_t *ref)
{
    const int window = 24;
    char path[512];
    snprintf(path, sizeof(path), "%s/eval/hellaswag.jsonl", test_fixtures());
    McqSet set;
    if (mcq_load(path, MCQ_HELLASWAG, 0, 0, &set)) return;
    json_t *items = json_object_get(ref, "items");
    int want = 0;
    for (size_t i = 0; i < json_array_size(items); i++) {
        json_t *ct = json_object_get(json_array_get(items, i), "cont_tokens");
        int longest = 0;
        for (size_t c = 0; c < json_array_size(ct); c++)
            longest = MAX(longest, (int)json_integer_value(json_array_get(ct, c)));
        want += longest > window;
    }
    CHECK(want > 0 && want < set.n); /* the fixture has both kinds */
    McqOptions o = {.ctx = window, .batch = 2};
    McqResult r;
    CHECKF(mcq_score(m, tok, &set, &o, &r) == 0, "%s", err_get());
    CHECKF(r.too_long == want && r.items == set.n - want, "too_long %d, want %d", r.too_long, want);
    for (int i = 0; i < set.n; i++) CHECK((r.pred[i] < 0) == r.item_too_long[i]);
    mcq_result_free(&r);
    o.ctx = 4;
    CHECK(mcq_score(m, tok, &set, &o, &r) == -1 && strstr(err_get(), "no item fits"));
    mcq_set_free(&set);
}

static void test_mcq_eval_models(void)
{
    const char *models[] = {"gpt2", "llama"};
    const char *tasks[] = {"hellaswag", "piqa", "arc", "winogrande", "generic"};
    for (size_t mi = 0; mi < ARRAY_LEN(models); mi++) {
        char dir[512];
        path_of(dir, sizeof(dir), "eval", models[mi]);
        Model *m = load_model(dir);
        Tokenizer *tok = tokenizer_load(dir);
        json_t *mref = model_ref(models[mi]);
        if (m && tok) {
            for (size_t ti = 0; ti < ARRAY_LEN(tasks); ti++)
                check_mcq(m, tok, models[mi], tasks[ti],
                          json_object_get(json_object_get(mref, "mcq"), tasks[ti]), 0);
            check_mcq(m, tok, models[mi], "generic",
                      json_object_get(json_object_get(mref, "mcq_nobos"), "generic"), 1);
            check_mcq_too_long(m, tok, json_object_get(json_object_get(mref, "mcq"), "hellaswag"));
        }
        if (tok) tokenizer_free(tok);
        model_free(m);
    }
}

/* Python's own results for preprocess / capitalize / strip. */
static void test_mcq_strings(void)
{
    json_t *s = json_object_get(g_exp, "strings");
    struct {
        const char *key;
        char *(*fn)(const char *);
    } fns[] = {{"hellaswag_preprocess", mcq_hellaswag_preprocess},
               {"capitalize", mcq_py_capitalize},
               {"strip", mcq_py_strip}};
    for (size_t k = 0; k < ARRAY_LEN(fns); k++) {
        json_t *cases = json_object_get(s, fns[k].key);
        CHECK(json_array_size(cases) > 0);
        for (size_t i = 0; i < json_array_size(cases); i++) {
            json_t *c = json_array_get(cases, i);
            char *got = fns[k].fn(json_string_value(json_array_get(c, 0)));
            const char *want = json_string_value(json_array_get(c, 1));
            CHECKF(!strcmp(got, want), "%s(\"%s\") = \"%s\", Python gives \"%s\"", fns[k].key,
                   json_string_value(json_array_get(c, 0)), got, want);
            free(got);
        }
    }
}

static char *write_tmp(const char *name, const char *content)
{
    char *path = xmalloc(256);
    snprintf(path, 256, "/tmp/anvil_test_eval_%d_%s", (int)getpid(), name);
    FILE *f = fopen(path, "wb");
    fputs(content, f);
    fclose(f);
    return path;
}

/* Malformed lines: "FILE:LINE: what", fatal or skipped. */
static void test_mcq_bad_input(void)
{
    const char *ok = "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\", \"label\": 1}\n";
    char content[1024];
    snprintf(content, sizeof(content),
             "%s{\"goal\": \"g\", \"sol1\": \n%s\n{\"goal\": \"g\", \"sol1\": \"a\", \"label\": 0}\n%s", ok,
             "  ", ok);
    char *path = write_tmp("piqa.jsonl", content);
    McqSet set;
    char want[300];
    CHECK(mcq_load(path, MCQ_PIQA, 0, 0, &set) == -1);
    snprintf(want, sizeof(want), "%s:2: invalid JSON", path);
    CHECKF(strstr(err_get(), want) != NULL, "got \"%s\"", err_get());
    CHECK(mcq_load(path, MCQ_PIQA, 0, 1, &set) == 0);
    CHECK(set.n == 2 && set.skipped == 2 && set.items[0].line == 1 && set.items[1].line == 5);
    CHECK(set.items[0].gold == 1 && !strcmp(set.items[0].ctx[0], "Question: g\nAnswer:"));
    mcq_set_free(&set);
    CHECK(mcq_load(path, MCQ_PIQA, 1, 0, &set) == 0 && set.n == 1); /* --limit 1 stops before line 2 */
    mcq_set_free(&set);
    unlink(path);
    free(path);
    struct {
        McqTask t;
        const char *line, *needle;
    } bad[] = {
        {MCQ_PIQA, "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\"}", ":1: missing field \"label\""},
        {MCQ_PIQA, "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\", \"label\": 2}",
         "outside the 2 choices"},
        {MCQ_ARC,
         "{\"question\": \"q\", \"choices\": {\"text\": [\"a\", \"b\"], \"label\": [\"A\", \"B\"]}, "
         "\"answerKey\": \"C\"}",
         "\"C\" is not one of choices.label"},
        {MCQ_WINOGRANDE,
         "{\"sentence\": \"no blank\", \"option1\": \"a\", \"option2\": \"b\", \"answer\": \"1\"}",
         "no \"_\""},
        {MCQ_HELLASWAG, "{\"ctx\": \"c\", \"endings\": [\"a\"], \"label\": 0}", "at least 2 strings"},
        {MCQ_GENERIC, "[1, 2]", "expected a JSON object"},
        {MCQ_GENERIC, "{\"context\": \"c\", \"choices\": [\"x\", \"y\"], \"answer\": \"z\"}",
         "field \"answer\""},
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        char *p = write_tmp("bad.jsonl", bad[i].line);
        CHECK(mcq_load(p, bad[i].t, 0, 0, &set) == -1);
        CHECKF(strstr(err_get(), bad[i].needle) && strstr(err_get(), p), "case %zu: \"%s\"", i, err_get());
        unlink(p);
        free(p);
    }
    /* the accepted variants: labels as strings, answers as text, ARC in AI2's own layout */
    char *p =
        write_tmp("gen.jsonl", "{\"context\": \"c\", \"choices\": [\"x\", \"y\"], \"answer\": \"y\"}\n");
    CHECK(mcq_load(p, MCQ_GENERIC, 0, 0, &set) == 0 && set.items[0].gold == 1 &&
          !strcmp(set.items[0].cont[1], " y"));
    mcq_set_free(&set);
    unlink(p);
    free(p);
    p = write_tmp("arc.jsonl",
                  "{\"question\": {\"stem\": \"Why?\", \"choices\": [{\"text\": \"a\", \"label\": \"A\"}, "
                  "{\"text\": \"b\", \"label\": \"B\"}]}, \"answerKey\": \"B\"}\n");
    CHECKF(mcq_load(p, MCQ_ARC, 0, 0, &set) == 0, "%s", err_get());
    CHECK(set.n == 1 && set.items[0].gold == 1 && !strcmp(set.items[0].ctx[0], "Question: Why?\nAnswer:"));
    mcq_set_free(&set);
    unlink(p);
    free(p);
}

int main(void)
{
    char path[512];
    path_of(path, sizeof(path), "eval", "expected.json");
    json_error_t je;
    g_exp = json_load_file(path, 0, &je);
    if (!g_exp) {
        printf("skip: %s: %s\n", path, je.text);
        return test_summary();
    }
    RUN(test_kv_ops);
    RUN(test_cached_forward);
    RUN(test_greedy_parity_fixtures);
    RUN(test_generate_eval_models);
    RUN(test_generate_window);
    RUN(test_sampler);
    RUN(test_sampling_reproducible);
    RUN(test_text_stream);
    RUN(test_ppl_parity_fixtures);
    RUN(test_ppl_eval_models);
    RUN(test_nonfinite_results);
    RUN(test_mcq_eval_models);
    RUN(test_mcq_strings);
    RUN(test_mcq_bad_input);
    json_decref(g_exp);
    return test_summary();
}
