/* test_dropout.c - the model's dropout (model.dropout, model.attn_dropout; src/model/dropout.h) on the CPU:
 *
 *   - the attention-dropout ops against a double reference that draws the mask from backend.h's hash
 *     (forward), and finite differences of that reference under the same mask (backward), causal and
 *     bidirectional with padded lengths; the mask itself read back exactly and its keep rate;
 *   - whole models (gpt2, llama, llama MoE, bert) with dropout: finite differences of the training loss
 *     under a fixed seed (the masks are deterministic), every recompute level bit-identical, the same seed
 *     repeating and another seed, micro-step, layer or site giving other masks;
 *   - p = 0 and eval-mode forwards bit-identical to a model without dropout; the keys' validation. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/error.h"
#include "core/rng.h"
#include "io/fsutil.h"
#include "io/hf.h"
#include "model/dropout.h"
#include "model/model.h"
#include "test.h"

#define FD_H 1e-6
#define FWD_TOL 2e-5 /* fp32 forward vs double reference, relative to max |ref| */
#define BWD_TOL 2e-4 /* fp32 analytic gradient vs double finite differences */

static const Backend *be;
static Rng rng;

static double rel_err(const float *a, const double *b, size_t n)
{
    double md = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i])) return INFINITY;
        md = fmax(md, fabs(a[i] - b[i]));
        mb = fmax(mb, fabs(b[i]));
    }
    return mb > 0 ? md / mb : md;
}

/* ------------------------------------------------------- attention ops */

typedef struct {
    int B, T, nh, nkv, hd, causal;
    const int32_t *lengths; /* bidirectional: keys per row (NULL = T) */
    float p;
    uint64_t seed;
} AttnShape;

/* out (B,T,nh*hd) = (softmax(q k^T / sqrt(hd)) o M / (1 - p)) v in double, M from backend.h's hash. */
static void ref_attention_drop(double *out, const double *qkv, const AttnShape *a)
{
    int T = a->T, nh = a->nh, hd = a->hd, row = (nh + 2 * a->nkv) * hd;
    uint32_t cut = dropout_cut(a->p);
    double keep = 1.0 / (1.0 - (double)a->p);
    double *p = malloc((size_t)T * sizeof(double));
    for (int b = 0; b < a->B; b++)
        for (int h = 0; h < nh; h++) {
            int kh = h / (nh / a->nkv);
            for (int t = 0; t < T; t++) {
                int ns = a->causal ? t + 1 : a->lengths ? a->lengths[b] : T;
                const double *q = qkv + ((size_t)b * T + t) * row + h * hd;
                double mx = -INFINITY, sum = 0;
                for (int s = 0; s < ns; s++) {
                    const double *k = qkv + ((size_t)b * T + s) * row + (nh + kh) * hd;
                    double dot = 0;
                    for (int e = 0; e < hd; e++) dot += q[e] * k[e];
                    p[s] = dot / sqrt(hd);
                    mx = fmax(mx, p[s]);
                }
                for (int s = 0; s < ns; s++) sum += (p[s] = exp(p[s] - mx));
                for (int s = 0; s < ns; s++) {
                    int dropped = dropout_u32(a->seed, attn_dropout_index(b, h, t, s, nh, T)) < cut;
                    p[s] = dropped ? 0.0 : p[s] / sum * keep;
                }
                double *o = out + ((size_t)b * T + t) * nh * hd + h * hd;
                for (int e = 0; e < hd; e++) {
                    double acc = 0;
                    for (int s = 0; s < ns; s++)
                        acc += p[s] * qkv[((size_t)b * T + s) * row + (nh + a->nkv + kh) * hd + e];
                    o[e] = acc;
                }
            }
        }
    free(p);
}

/* The op's forward and backward against the reference and its finite differences. */
static void attention_drop_case(AttnShape a, const char *name)
{
    size_t nin = (size_t)a.B * a.T * (a.nh + 2 * a.nkv) * a.hd, no = (size_t)a.B * a.T * a.nh * a.hd;
    double *x = malloc(nin * 8), *R = malloc(no * 8), *ref = malloc(no * 8), *g = malloc(nin * 8),
           *o2 = malloc(no * 8);
    for (size_t i = 0; i < nin; i++) x[i] = rng_normal(&rng);
    for (size_t i = 0; i < no; i++) R[i] = rng_normal(&rng);
    ref_attention_drop(ref, x, &a);
    float *xf = malloc(nin * 4), *Rf = malloc(no * 4), *out = calloc(no, 4),
          *lse = calloc((size_t)a.B * a.nh * a.T, 4);
    float *dx = malloc(nin * 4);
    for (size_t i = 0; i < nin; i++) xf[i] = (float)x[i];
    for (size_t i = 0; i < no; i++) Rf[i] = (float)R[i];
    be->attention_drop_fwd(out, lse, xf, a.lengths, a.causal, a.B, a.T, a.nh, a.nkv, a.hd, a.p, a.seed);
    CHECKF(rel_err(out, ref, no) < FWD_TOL, "%s fwd %g", name, rel_err(out, ref, no));
    for (size_t i = 0; i < nin; i++) dx[i] = 7.0f; /* must be overwritten */
    be->attention_drop_bwd(dx, Rf, out, lse, xf, a.lengths, a.causal, a.B, a.T, a.nh, a.nkv, a.hd, a.p,
                           a.seed);
    for (size_t j = 0; j < nin; j++) {
        double x0 = x[j], fp = 0, fm = 0;
        x[j] = x0 + FD_H;
        ref_attention_drop(o2, x, &a);
        for (size_t i = 0; i < no; i++) fp += o2[i] * R[i];
        x[j] = x0 - FD_H;
        ref_attention_drop(o2, x, &a);
        for (size_t i = 0; i < no; i++) fm += o2[i] * R[i];
        x[j] = x0;
        g[j] = (fp - fm) / (2 * FD_H);
    }
    CHECKF(rel_err(dx, g, nin) < BWD_TOL, "%s bwd %g", name, rel_err(dx, g, nin));
    /* the same call without dropout differs (the mask drops something) */
    be->attention_drop_fwd(out, lse, xf, a.lengths, a.causal, a.B, a.T, a.nh, a.nkv, a.hd, a.p, a.seed + 1);
    CHECKF(rel_err(out, ref, no) > 1e-3, "%s: another seed gives the same output", name);
    free(x), free(R), free(ref), free(g), free(o2), free(xf), free(Rf), free(out), free(lse), free(dx);
}

static void test_attention_drop_ops(void)
{
    int32_t lens[2] = {7, 3};
    attention_drop_case((AttnShape){2, 7, 2, 2, 4, 1, NULL, 0.3f, 99}, "causal MHA");
    attention_drop_case((AttnShape){2, 7, 4, 1, 4, 1, NULL, 0.5f, 7}, "causal MQA");
    attention_drop_case((AttnShape){2, 7, 4, 2, 4, 0, lens, 0.3f, 5}, "bidirectional GQA, lengths");
    attention_drop_case((AttnShape){2, 7, 2, 2, 4, 0, NULL, 0.1f, 3}, "bidirectional full rows");
}

/* The mask read back exactly: q = k = 0 makes every probability 1 / ns, and v row s = e_s (hd = T) puts
 * probability (t, s) into output column s: out = M / (1 - p) / ns. It must be the hash's mask, and its keep
 * rate within 5 sigma of 1 - p. */
static void test_attention_drop_mask(void)
{
    int B = 2, T = 64, nh = 4, nkv = 2, hd = T, row = (nh + 2 * nkv) * hd;
    float p = 0.1f;
    uint64_t seed = 1234;
    size_t nin = (size_t)B * T * row, no = (size_t)B * T * nh * hd;
    float *qkv = calloc(nin, 4), *out = malloc(no * 4), *lse = malloc((size_t)B * nh * T * 4);
    for (int b = 0; b < B; b++)
        for (int s = 0; s < T; s++)
            for (int kh = 0; kh < nkv; kh++) qkv[((size_t)b * T + s) * row + (nh + nkv + kh) * hd + s] = 1.0f;
    for (int causal = 0; causal < 2; causal++) {
        be->attention_drop_fwd(out, lse, qkv, NULL, causal, B, T, nh, nkv, hd, p, seed);
        size_t n = 0, kept = 0, wrong = 0;
        uint32_t cut = dropout_cut(p);
        for (int b = 0; b < B; b++)
            for (int h = 0; h < nh; h++)
                for (int t = 0; t < T; t++) {
                    int ns = causal ? t + 1 : T;
                    for (int s = 0; s < ns; s++) {
                        float v = out[((size_t)b * T + t) * nh * hd + h * hd + s];
                        int k = v != 0.0f,
                            want = dropout_u32(seed, attn_dropout_index(b, h, t, s, nh, T)) >= cut;
                        wrong += k != want;
                        if (k && fabsf(v - 1.0f / (1.0f - p) / ns) > 1e-5f / ns) wrong++;
                        kept += k;
                        n++;
                    }
                }
        double rate = (double)kept / n, sigma = sqrt(p * (1 - p) / n);
        CHECKF(wrong == 0, "causal %d: %zu of %zu probabilities not as the hash says", causal, wrong, n);
        CHECKF(fabs(rate - (1 - p)) < 5 * sigma, "causal %d: keep rate %.4f, expected %.4f +- %.4f", causal,
               rate, 1 - p, 5 * sigma);
    }
    free(qkv), free(out), free(lse);
}

/* ---------------------------------------------------------------- models */

typedef enum { M_GPT2, M_LLAMA, M_MOE, M_BERT, M_COUNT } Kind;
static const char *const kind_names[M_COUNT] = {"gpt2", "llama", "llama-moe", "bert"};

static ModelConfig tiny(Kind k, float drop, float attn_drop)
{
    ModelConfig c;
    model_config_defaults(&c, k == M_GPT2 ? FAMILY_GPT2 : k == M_BERT ? FAMILY_BERT : FAMILY_LLAMA);
    c.n_layer = 2;
    c.n_head = 4;
    c.n_kv_head = k == M_LLAMA || k == M_MOE ? 2 : 4;
    c.d_model = 16;
    c.d_ff = k == M_GPT2 ? 0 : 24;
    c.vocab_size = 37;
    c.max_seq_len = 16;
    if (k == M_MOE) {
        c.moe_experts = 4;
        c.moe_top_k = 2;
        c.moe_d_ff = 12;
        c.moe_aux_coef = c.moe_z_coef = 0; /* the loss below is the cross-entropy alone */
    }
    c.dropout = drop;
    c.attn_dropout = attn_drop;
    if (model_config_finish(&c)) fatal_err();
    return c;
}

static void randomize(Model *m, uint64_t seed)
{
    float *p = xmalloc(m->pt.total * sizeof(float));
    Rng r;
    rng_seed(&r, seed, 7);
    for (size_t i = 0; i < m->pt.total; i++) p[i] = (float)(0.3 * rng_normal(&r));
    for (int k = 0; k < m->pt.n; k++) {
        int role = m->pt.p[k].role;
        if (role == PROLE_LN1_W || role == PROLE_LN2_W || role == PROLE_LNF_W)
            for (size_t j = 0; j < m->pt.p[k].numel; j++) p[m->pt.p[k].offset + j] += 1.0f;
    }
    model_set_params(m, p);
    free(p);
}

enum { B_ = 2, T_ = 6, N_ = B_ * T_ };
static int32_t g_in[N_], g_tg[N_], g_lens[B_] = {6, 4};

static void make_batch(Kind k)
{
    Rng r;
    rng_seed(&r, 3, (uint64_t)k);
    for (int i = 0; i < N_; i++) g_in[i] = (int32_t)rng_below(&r, 37);
    for (int i = 0; i < N_; i++) g_tg[i] = (int32_t)rng_below(&r, 37);
    g_tg[4] = -1;
    if (k == M_BERT) /* padding past each row's length, not scored */
        for (int i = 0; i < N_; i++)
            if (i % T_ >= g_lens[i / T_]) g_in[i] = 0, g_tg[i] = -1;
}

/* The summed loss of one forward (training when scale != 0: the model's dropout on). */
static double forward(Model *m, Kind k, float scale)
{
    int nv = 0;
    float loss = model_forward_len(m, g_in, g_tg, k == M_BERT ? g_lens : NULL, B_, T_, scale, &nv);
    return (double)loss * nv;
}

/* Gradients of the summed loss (loss scale 1) into g (host, pt.total). */
static double train_grads(Model *m, Kind k, float *g)
{
    model_zero_grad(m);
    double loss = forward(m, k, 1.0f);
    model_backward(m);
    model_get_grads(m, g);
    return loss;
}

static Model *make_model(Kind k, float drop, float attn_drop, int recompute)
{
    ModelConfig c = tiny(k, drop, attn_drop);
    Model *m = model_create(&c, be);
    randomize(m, 5 + (uint64_t)k);
    CHECK(model_reserve(m, B_, T_, recompute) == 0);
    m->dropout_seed = 4242;
    return m;
}

/* Finite differences of the training loss (dropout on, the same masks at every evaluation: the seed is
 * fixed) against the backward, at sampled entries of every tensor. */
static void fd_case(Kind k, float drop, float attn_drop)
{
    make_batch(k);
    Model *m = make_model(k, drop, attn_drop, RECOMPUTE_NONE);
    float *g = xmalloc(m->pt.total * 4), *p = xmalloc(m->pt.total * 4);
    double loss = train_grads(m, k, g);
    model_get_params(m, p);
    /* dropout is on: the training loss differs from the eval loss */
    double eval = forward(m, k, 0.0f);
    CHECKF(fabs(loss - eval) > 1e-4 * fabs(eval), "%s: dropout %g/%g changes nothing (%g vs eval %g)",
           kind_names[k], drop, attn_drop, loss, eval);
    Rng r;
    rng_seed(&r, 9, (uint64_t)k);
    int bad = 0, checked = 0;
    for (int t = 0; t < m->pt.n; t++) {
        const Param *pp = &m->pt.p[t];
        for (int s = 0; s < 3; s++) {
            size_t j = pp->offset + rng_below(&r, pp->numel);
            float x0 = p[j];
            /* MoE: a smaller step, so that it does not move a token across a top-k routing switch (a kink of
             * the loss; with 1e-2 one sampled entry of wte does) */
            double h = k == M_MOE ? 3e-3 : 1e-2;
            p[j] = x0 + (float)h;
            model_set_params(m, p);
            double lp = forward(m, k, 1.0f);
            p[j] = x0 - (float)h;
            model_set_params(m, p);
            double lm = forward(m, k, 1.0f);
            p[j] = x0;
            double fd = (lp - lm) / (2 * h);
            double err = fabs(fd - g[j]) / fmax(5e-2, fabs(fd)); /* fp32 noise floor of the summed loss */
            checked++;
            if (err > 2e-2) {
                bad++;
                fprintf(stderr, "  %s %s[%zu]: fd %g analytic %g\n", kind_names[k], pp->name, j - pp->offset,
                        fd, g[j]);
            }
        }
    }
    model_set_params(m, p);
    CHECKF(bad == 0, "%s dropout %g attn_dropout %g: %d of %d sampled gradients disagree", kind_names[k],
           drop, attn_drop, bad, checked);
    fprintf(stderr, "  %s dropout %g attn_dropout %g: %d gradients checked\n", kind_names[k], drop, attn_drop,
            checked);
    free(g), free(p);
    model_free(m);
}

static void test_fd_hidden(void)
{
    for (int k = 0; k < M_COUNT; k++) fd_case((Kind)k, 0.3f, 0.0f);
}

static void test_fd_attention(void)
{
    fd_case(M_GPT2, 0.0f, 0.3f);  /* causal */
    fd_case(M_LLAMA, 0.0f, 0.3f); /* causal GQA, RoPE */
    fd_case(M_BERT, 0.0f, 0.3f);  /* bidirectional over padded rows */
    fd_case(M_BERT, 0.2f, 0.2f);  /* both */
}

/* Every recompute level regenerates the same masks: loss and gradients bit-identical. */
static void test_recompute(void)
{
    for (int k = 0; k < M_COUNT; k++) {
        make_batch((Kind)k);
        Model *m = make_model((Kind)k, 0.2f, 0.2f, RECOMPUTE_NONE);
        float *g0 = xmalloc(m->pt.total * 4), *g1 = xmalloc(m->pt.total * 4);
        double l0 = train_grads(m, (Kind)k, g0);
        for (int level = 1; level <= 2; level++) {
            CHECK(model_reserve(m, B_, T_, level) == 0);
            double l1 = train_grads(m, (Kind)k, g1);
            CHECKF(l1 == l0 && memcmp(g0, g1, m->pt.total * 4) == 0, "%s recompute %d: not bit-identical",
                   kind_names[k], level);
        }
        free(g0), free(g1);
        model_free(m);
    }
}

/* The same seed repeats the step bit for bit; another micro-step seed draws other masks. */
static void test_seeds(void)
{
    for (int k = 0; k < M_COUNT; k++) {
        make_batch((Kind)k);
        Model *m = make_model((Kind)k, 0.2f, 0.2f, RECOMPUTE_NONE);
        float *g0 = xmalloc(m->pt.total * 4), *g1 = xmalloc(m->pt.total * 4);
        double l0 = train_grads(m, (Kind)k, g0), l1 = train_grads(m, (Kind)k, g1);
        CHECKF(l0 == l1 && memcmp(g0, g1, m->pt.total * 4) == 0, "%s: the same seed does not repeat",
               kind_names[k]);
        m->dropout_seed++;
        double l2 = train_grads(m, (Kind)k, g1);
        CHECKF(l2 != l0, "%s: another micro-step seed gives the same loss %g", kind_names[k], l0);
        free(g0), free(g1);
        model_free(m);
    }
    /* the stream seeds of every (micro-step, layer, site) differ, and so do their masks */
    ModelConfig c = tiny(M_GPT2, 0.5f, 0.5f);
    Model *m = model_create(&c, be);
    enum { NS = 3 * 3 * DROP_SITE_COUNT, NX = 256 };
    uint64_t seeds[NS];
    int n = 0;
    for (uint64_t step = 0; step < 3; step++)
        for (int l = -1; l < 2; l++)
            for (int s = 0; s < DROP_SITE_COUNT; s++) {
                m->dropout_seed = step;
                seeds[n++] = model_dropout_seed(m, l, s);
            }
    float ones[NX], masks[NS][NX];
    for (int i = 0; i < NX; i++) ones[i] = 1.0f;
    for (int i = 0; i < NS; i++) be->dropout(masks[i], ones, NX, 0.5f, seeds[i]);
    int same = 0;
    for (int i = 0; i < NS; i++)
        for (int j = i + 1; j < NS; j++)
            same += seeds[i] == seeds[j] || !memcmp(masks[i], masks[j], sizeof(masks[i]));
    CHECKF(same == 0, "%d pairs of (micro-step, layer, site) share a seed or a mask", same);
    model_free(m);
}

/* p = 0 (the default) is the model without dropout, and eval-mode forwards of a model with dropout are
 * too: losses, gradients and logits bit-identical. */
static void test_p0_and_eval(void)
{
    for (int k = 0; k < M_COUNT; k++) {
        make_batch((Kind)k);
        Model *a = make_model((Kind)k, 0.0f, 0.0f, RECOMPUTE_NONE),
              *b = make_model((Kind)k, 0.3f, 0.3f, RECOMPUTE_NONE);
        CHECK(a->drop_grad == NULL); /* p = 0: no extra buffer */
        float *ga = xmalloc(a->pt.total * 4);
        double la = train_grads(a, (Kind)k, ga);
        /* p = 0 trains as it evaluates (the same forward) */
        CHECKF(forward(a, (Kind)k, 0.0f) == la, "%s p = 0: training loss %g differs from eval", kind_names[k],
               la);
        CHECKF(forward(b, (Kind)k, 0.0f) == la, "%s: eval loss with dropout set differs from p = 0",
               kind_names[k]);
        if (k != M_BERT) { /* logits of a forward without targets */
            size_t nl = (size_t)N_ * a->cfg.vocab_size;
            model_forward(a, g_in, NULL, B_, T_, 0, NULL);
            float *la_logits = xmalloc(nl * 4);
            memcpy(la_logits, a->logits, nl * 4);
            model_forward(b, g_in, NULL, B_, T_, 0, NULL);
            CHECKF(!memcmp(la_logits, b->logits, nl * 4), "%s: eval logits differ with dropout set",
                   kind_names[k]);
            free(la_logits);
        } else { /* hidden states (embed) */
            a->hidden_only = b->hidden_only = 1;
            model_forward_len(a, g_in, NULL, g_lens, B_, T_, 0, NULL);
            model_forward_len(b, g_in, NULL, g_lens, B_, T_, 0, NULL);
            CHECKF(!memcmp(a->lnf, b->lnf, (size_t)N_ * a->cfg.d_model * 4),
                   "bert: hidden states differ with dropout set");
        }
        free(ga);
        model_free(a), model_free(b);
    }
}

/* The keys: 0 <= p < 1 and finite, with an error naming the key. */
static void test_validation(void)
{
    const float bad[] = {-0.1f, 1.0f, 1.5f, NAN, INFINITY};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        for (int which = 0; which < 2; which++) {
            ModelConfig c;
            model_config_defaults(&c, FAMILY_GPT2);
            c.n_layer = 1, c.n_head = 2, c.d_model = 8, c.vocab_size = 11, c.max_seq_len = 8;
            if (which)
                c.attn_dropout = bad[i];
            else
                c.dropout = bad[i];
            CHECK(model_config_finish(&c) == -1);
            CHECKF(strstr(err_get(), which ? "model.attn_dropout" : "model.dropout") != NULL, "error: %s",
                   err_get());
        }
    ModelConfig c;
    model_config_defaults(&c, FAMILY_GPT2);
    c.n_layer = 1, c.n_head = 2, c.d_model = 8, c.vocab_size = 11, c.max_seq_len = 8;
    c.dropout = 0.0f, c.attn_dropout = 0.999f;
    CHECK(model_config_finish(&c) == 0);
}

/* A checkpoint's config.json carries the run's dropout (for transformers, which applies it in train mode);
 * reading a config.json never turns dropout on, and hf_config_dropout reports what it asks for. */
static void test_config_json(void)
{
    for (int k = 0; k < 2; k++) {
        ModelConfig c = tiny(k ? M_BERT : M_GPT2, 0.1f, 0.25f), back;
        char dir[64];
        snprintf(dir, sizeof(dir), "/tmp/anvil_test_dropout_%d_%d", (int)getpid(), k);
        CHECK(fs_mkdir_p(dir) == 0);
        CHECKF(hf_write_config(dir, &c, DTYPE_F32) == 0, "%s", err_get());
        float hidden = -1, attn = -1;
        CHECKF(hf_config_dropout(dir, &hidden, &attn) == 0, "%s", err_get());
        CHECKF(hidden == 0.1f && attn == 0.25f, "%s: config.json dropout %g / %g",
               kind_names[k ? M_BERT : M_GPT2], hidden, attn);
        CHECKF(hf_read_config(dir, &back) == 0, "%s", err_get());
        CHECK(back.dropout == 0 && back.attn_dropout == 0);
        c.dropout = c.attn_dropout = 0; /* the default writes zeros */
        CHECK(hf_write_config(dir, &c, DTYPE_F32) == 0 && hf_config_dropout(dir, &hidden, &attn) == 0);
        CHECK(hidden == 0 && attn == 0);
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        CHECK(system(cmd) == 0);
    }
}

int main(void)
{
    be = backend_cpu();
    rng_seed(&rng, 2026, 12);
    RUN(test_attention_drop_ops);
    RUN(test_attention_drop_mask);
    RUN(test_fd_hidden);
    RUN(test_fd_attention);
    RUN(test_recompute);
    RUN(test_seeds);
    RUN(test_p0_and_eval);
    RUN(test_validation);
    RUN(test_config_json);
    return test_summary();
}
