/* test_engine.c - the engine (docs/architecture.md): the parameter store's kinds, the Linear op of
 * each kind against a double-precision reference and finite differences, freezing, the loss
 * normalisation of accumulated micro-batches, cached generation through the shared block, the
 * FLOP count and the memory report. CPU backend; no fixtures. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu_extra.h"
#include "core/error.h"
#include "core/rng.h"
#include "model/block.h"
#include "model/infer.h"
#include "model/linear.h"
#include "model/model.h"
#include "train/freeze.h"
#include "train/optim.h"
#include "train/step.h"
#include "train/train_config.h"
#include "test.h"

static ModelConfig tiny(Family f)
{
    ModelConfig c;
    model_config_defaults(&c, f);
    c.n_layer = 2;
    c.n_head = 4;
    c.n_kv_head = f == FAMILY_LLAMA ? 2 : 4;
    c.d_model = 16;
    c.d_ff = f == FAMILY_LLAMA ? 24 : 0;
    c.vocab_size = 37;
    c.max_seq_len = 16;
    if (model_config_finish(&c)) fatal_err();
    return c;
}

static void fill_normal(float *x, size_t n, double std, uint64_t seed)
{
    Rng r;
    rng_seed(&r, seed, 3);
    for (size_t i = 0; i < n; i++) x[i] = (float)(std * rng_normal(&r));
}

/* Random weights everywhere, norm weights around 1, so every gradient path is exercised. */
static void randomize(Model *m, uint64_t seed)
{
    float *p = xmalloc(m->pt.total * sizeof(float));
    fill_normal(p, m->pt.total, 0.3, seed);
    for (int k = 0; k < m->pt.n; k++) {
        int role = m->pt.p[k].role;
        if (role == PROLE_LN1_W || role == PROLE_LN2_W || role == PROLE_LNF_W)
            for (size_t j = 0; j < m->pt.p[k].numel; j++) p[m->pt.p[k].offset + j] += 1.0f;
    }
    model_set_params(m, p);
    free(p);
}

static void make_tokens(int32_t *x, int n, int V, uint64_t seed)
{
    Rng r;
    rng_seed(&r, seed, 5);
    for (int i = 0; i < n; i++) x[i] = (int32_t)rng_below(&r, (uint64_t)V);
}

/* ------------------------------------------------------------- the Linear op */

/* A two-tensor table (W (OUT,IN), b (OUT)) on the CPU with W of the given kind. */
typedef struct {
    ParamTable pt;
    ParamStore ps;
    Linear L;
} LinearFixture;

static void linear_fixture(LinearFixture *f, int in, int out, ParamKind wkind, ParamKind bkind, uint64_t seed)
{
    ModelConfig c = tiny(FAMILY_GPT2);
    c.n_layer = 1;
    c.d_model = in;
    c.d_ff = out;
    c.n_head = c.n_kv_head = 1;
    c.head_dim = in;
    if (model_config_finish(&c)) fatal_err();
    param_table_build(&f->pt, &c); /* any table with an (out, in) weight and an (out) bias will do */
    int w = param_find(&f->pt, "h.0.fc.w"), b = param_find(&f->pt, "h.0.fc.b");
    ParamKind *kinds = xmalloc((size_t)f->pt.n * sizeof(ParamKind));
    for (int i = 0; i < f->pt.n; i++) kinds[i] = PARAM_FROZEN;
    kinds[w] = wkind;
    kinds[b] = bkind;
    param_table_set_kinds(&f->pt, kinds);
    free(kinds);
    params_alloc(&f->ps, backend_cpu(), &f->pt);
    f->L = linear_make(&f->pt, w, b);
    float *hw = xmalloc((size_t)in * out * sizeof(float)), *hb = xmalloc((size_t)out * sizeof(float));
    fill_normal(hw, (size_t)in * out, 0.5, seed);
    fill_normal(hb, (size_t)out, 0.5, seed + 1);
    params_upload(&f->ps, w, hw);
    params_upload(&f->ps, b, hb);
    free(hw), free(hb);
}

static void linear_fixture_free(LinearFixture *f)
{
    params_free(&f->ps);
    param_table_free(&f->pt);
}

static double gelu_d(double x) { return 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }

/* Forward of each kind against a double reference; backward against the exact gradients in
 * double of L = sum(out * R) and central finite differences of that L. */
static void check_linear(ParamKind kind, int gelu)
{
    enum { N = 5, IN = 7, OUT = 6 };
    LinearFixture f;
    linear_fixture(&f, IN, OUT, kind, kind, 10 + kind);
    const float *W = params_w(&f.ps, f.L.w), *b = params_w(&f.ps, f.L.b);
    float x[N * IN], R[N * OUT], out[N * OUT], pre[N * OUT], dinp[N * IN];
    fill_normal(x, N * IN, 1.0, 20);
    fill_normal(R, N * OUT, 1.0, 21);
    if (gelu) linear_gelu_fwd(&f.ps, &f.L, out, pre, x, N, NULL);
    else linear_fwd(&f.ps, &f.L, out, x, N, NULL);
    double worst = 0;
    double ref_pre[N * OUT];
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OUT; o++) {
            double s = b[o];
            for (int k = 0; k < IN; k++) s += (double)x[i * IN + k] * W[o * IN + k];
            ref_pre[i * OUT + o] = s;
            double y = gelu ? gelu_d(s) : s;
            worst = fmax(worst, fabs(y - out[i * OUT + o]) / fmax(1, fabs(y)));
        }
    CHECKF(worst < 1e-5, "kind %s gelu %d: forward rel err %.3g", param_kind_name(kind), gelu, worst);

    /* backward: dout = R (through the GELU when fused: the first product's dpre is what the fused
     * backward of the SECOND product yields, so for gelu the check uses linear_bwd on pre) */
    float *dw = params_g(&f.ps, f.L.w), *db = params_g(&f.ps, f.L.b);
    CHECK((dw == NULL) == (kind == PARAM_FROZEN));
    linear_bwd(&f.ps, &f.L, dinp, R, x, N, NULL);
    double werr = 0, dwerr = 0;
    for (int i = 0; i < N; i++)
        for (int k = 0; k < IN; k++) {
            double s = 0;
            for (int o = 0; o < OUT; o++) s += (double)R[i * OUT + o] * W[o * IN + k];
            werr = fmax(werr, fabs(s - dinp[i * IN + k]) / fmax(1, fabs(s)));
        }
    CHECKF(werr < 1e-5, "kind %s: dinp rel err %.3g", param_kind_name(kind), werr);
    if (dw) {
        for (int o = 0; o < OUT; o++) {
            double sb = 0;
            for (int i = 0; i < N; i++) sb += R[i * OUT + o];
            dwerr = fmax(dwerr, fabs(sb - db[o]) / fmax(1, fabs(sb)));
            for (int k = 0; k < IN; k++) {
                double s = 0;
                for (int i = 0; i < N; i++) s += (double)R[i * OUT + o] * x[i * IN + k];
                dwerr = fmax(dwerr, fabs(s - dw[o * IN + k]) / fmax(1, fabs(s)));
            }
        }
        CHECKF(dwerr < 1e-5, "kind %s: dW/db rel err %.3g", param_kind_name(kind), dwerr);
        /* finite differences of L = sum(out * R) in W (double arithmetic on the float weights) */
        double fd_err = 0;
        for (int t = 0; t < 6; t++) {
            int o = t % OUT, k = (3 * t) % IN;
            double h = 1e-3, L[2];
            for (int sgn = 0; sgn < 2; sgn++) {
                double acc = 0;
                for (int i = 0; i < N; i++) {
                    double s = b[o];
                    for (int kk = 0; kk < IN; kk++)
                        s += (double)x[i * IN + kk] * (W[o * IN + kk] + (kk == k ? (sgn ? -h : h) : 0));
                    acc += s * R[i * OUT + o];
                }
                L[sgn] = acc;
            }
            double fd = (L[0] - L[1]) / (2 * h);
            fd_err = fmax(fd_err, fabs(fd - dw[o * IN + k]) / fmax(1, fabs(fd)));
        }
        CHECKF(fd_err < 1e-4, "kind %s: finite differences of dW rel err %.3g", param_kind_name(kind), fd_err);
    }
    (void)ref_pre;
    linear_fixture_free(&f);
}

static void test_linear_train(void) { check_linear(PARAM_TRAIN, 0); }
static void test_linear_frozen(void) { check_linear(PARAM_FROZEN, 0); }
static void test_linear_gelu_train(void) { check_linear(PARAM_TRAIN, 1); }
static void test_linear_gelu_frozen(void) { check_linear(PARAM_FROZEN, 1); }

/* The fused backward through GELU (the MLP's second product) for both kinds: dpre against the
 * double chain rule, the weight gradient only where the weight trains. */
static void check_linear_gelu_bwd(ParamKind kind)
{
    enum { N = 4, IN = 6, OUT = 5 };
    LinearFixture f;
    linear_fixture(&f, IN, OUT, kind, kind, 40 + kind);
    const float *W = params_w(&f.ps, f.L.w);
    float pre[N * IN], act[N * IN], dout[N * OUT], dpre[N * IN];
    fill_normal(pre, N * IN, 1.0, 41);
    for (int i = 0; i < N * IN; i++) act[i] = (float)gelu_d(pre[i]);
    fill_normal(dout, N * OUT, 1.0, 42);
    linear_gelu_bwd(&f.ps, &f.L, -1, dpre, dout, act, pre, N, NULL);
    double err = 0;
    for (int i = 0; i < N; i++)
        for (int k = 0; k < IN; k++) {
            double s = 0, x = pre[i * IN + k], h = 1e-5;
            for (int o = 0; o < OUT; o++) s += (double)dout[i * OUT + o] * W[o * IN + k];
            double d = (gelu_d(x + h) - gelu_d(x - h)) / (2 * h);
            err = fmax(err, fabs(s * d - dpre[i * IN + k]) / fmax(1, fabs(s * d)));
        }
    CHECKF(err < 1e-4, "kind %s: dpre rel err %.3g", param_kind_name(kind), err);
    float *dw = params_g(&f.ps, f.L.w);
    if (kind == PARAM_TRAIN) {
        double e2 = 0;
        for (int o = 0; o < OUT; o++)
            for (int k = 0; k < IN; k++) {
                double s = 0;
                for (int i = 0; i < N; i++) s += (double)dout[i * OUT + o] * act[i * IN + k];
                e2 = fmax(e2, fabs(s - dw[o * IN + k]) / fmax(1, fabs(s)));
            }
        CHECKF(e2 < 1e-5, "dW rel err %.3g", e2);
    } else {
        CHECK(dw == NULL);
    }
    linear_fixture_free(&f);
}
static void test_linear_gelu_bwd(void)
{
    check_linear_gelu_bwd(PARAM_TRAIN);
    check_linear_gelu_bwd(PARAM_FROZEN);
}

/* The head + loss of each kind against a double softmax cross-entropy. */
static void check_head(ParamKind kind)
{
    enum { N = 4, IN = 6, OUT = 9 };
    LinearFixture f;
    linear_fixture(&f, IN, OUT, kind, PARAM_FROZEN, 50 + kind);
    Linear L = f.L;
    L.b = -1;
    const float *W = params_w(&f.ps, L.w);
    float x[N * IN], losses[N], dinp[N * IN];
    int32_t tg[N] = {0, 8, -1, 3};
    fill_normal(x, N * IN, 1.0, 51);
    linear_head_xent(&f.ps, &L, losses, dinp, x, tg, N, 1.0f, NULL);
    double err = 0, derr = 0;
    for (int i = 0; i < N; i++) {
        double z[OUT], mx = -1e30, sum = 0;
        for (int o = 0; o < OUT; o++) {
            z[o] = 0;
            for (int k = 0; k < IN; k++) z[o] += (double)x[i * IN + k] * W[o * IN + k];
            mx = fmax(mx, z[o]);
        }
        for (int o = 0; o < OUT; o++) sum += exp(z[o] - mx);
        double loss = tg[i] < 0 ? 0 : -(z[tg[i]] - mx - log(sum));
        err = fmax(err, fabs(loss - losses[i]) / fmax(1, loss));
        for (int k = 0; k < IN; k++) {
            double d = 0;
            for (int o = 0; o < OUT && tg[i] >= 0; o++) d += (exp(z[o] - mx) / sum - (o == tg[i])) * W[o * IN + k];
            derr = fmax(derr, fabs(d - dinp[i * IN + k]) / fmax(1, fabs(d)));
        }
    }
    CHECKF(err < 1e-5 && derr < 1e-5, "kind %s: loss rel err %.3g, dinp %.3g", param_kind_name(kind), err, derr);
    CHECK((params_g(&f.ps, L.w) == NULL) == (kind == PARAM_FROZEN));
    linear_fixture_free(&f);
}
static void test_head_kinds(void)
{
    check_head(PARAM_TRAIN);
    check_head(PARAM_FROZEN);
}

/* --------------------------------------------------------------- the store */

/* A CPU backend whose allocations are counted (every byte asked for, and the blocks). */
static Backend counting;
static size_t count_bytes, count_blocks;
static void *count_alloc(size_t n)
{
    count_bytes += n;
    count_blocks++;
    return backend_cpu()->alloc(n);
}
static const Backend *counting_backend(void)
{
    counting = *backend_cpu();
    counting.alloc = count_alloc;
    return &counting;
}

static ParamKind *kinds_for(const ModelConfig *c, const char *patterns)
{
    TrainConfig tc;
    train_config_defaults(&tc);
    if (train_config_set_key(&tc, "model.freeze", patterns, "test")) fatal_err();
    int bad;
    ParamKind *k = freeze_kinds(&tc.freeze, c, &bad);
    if (bad) fatal_err();
    return k;
}

static size_t aligned(size_t n) { return (n + PARAM_ALIGN - 1) / PARAM_ALIGN * PARAM_ALIGN; }

/* A frozen tensor gets a compute copy and nothing else: no master, gradient or moments. */
static void test_frozen_allocates_nothing(void)
{
    ModelConfig c = tiny(FAMILY_GPT2);
    const Backend *be = counting_backend();
    size_t bytes[2], blocks[2];
    size_t frozen = 0;
    for (int pass = 0; pass < 2; pass++) {
        ParamKind *k = pass ? kinds_for(&c, "transformer.wte.*,transformer.h.0.*") : NULL;
        count_bytes = count_blocks = 0;
        Model *m = model_create_kinds(&c, be, k);
        Optimizer o;
        optim_init(&o, m, 0.1f);
        bytes[pass] = count_bytes;
        blocks[pass] = count_blocks;
        if (pass) {
            for (int i = 0; i < m->pt.n; i++) {
                const Param *p = &m->pt.p[i];
                int want = !strcmp(p->name, "wte") || p->layer == 0;
                CHECKF((p->kind == PARAM_FROZEN) == want, "%s kind %s", p->name, param_kind_name(p->kind));
                if (p->kind == PARAM_FROZEN) {
                    frozen += aligned(p->numel);
                    CHECK(params_g(&m->ps, i) == NULL);
                }
            }
            for (int t = 0; t < o.nt; t++) CHECK(m->pt.p[o.param[t]].kind == PARAM_TRAIN);
            CHECK(m->pt.n_frozen == frozen);
        }
        /* fp32 backend: master = compute copy (4 B), gradient 4, two moments 8; frozen: 4 */
        size_t want = m->pt.n_train * 16 + m->pt.n_frozen * 4;
        CHECKF(count_bytes == want, "pass %d: %zu bytes allocated, expected %zu", pass, count_bytes, want);
        ParamBytes pb = params_bytes(&m->ps);
        CHECK(pb.grads == m->pt.n_train * 4 && pb.master == m->pt.n_train * 4 && pb.weights == m->pt.n_frozen * 4);
        CHECK(optim_bytes(&o) == m->pt.n_train * 8);
        optim_free(&o);
        model_free(m);
        free(k);
    }
    CHECKF(bytes[0] - bytes[1] == frozen * 12, "freezing saved %zu bytes, expected %zu", bytes[0] - bytes[1],
           frozen * 12);
    CHECK(blocks[1] == blocks[0] + 1); /* one more block: the frozen segment */
}

/* The trainable segment is layer-major and its shards cover it exactly. */
static void test_segment_layout(void)
{
    ModelConfig c = tiny(FAMILY_LLAMA);
    Model *m = model_create(&c, backend_cpu());
    const ParamTable *pt = &m->pt;
    size_t prev = 0;
    for (int i = 0; i < pt->n; i++) {
        CHECK(pt->p[i].seg >= prev && pt->p[i].seg % PARAM_ALIGN == 0);
        prev = pt->p[i].seg + pt->p[i].numel;
        int l = pt->p[i].layer;
        if (l >= 0) CHECK(pt->p[i].seg >= pt->layer_seg[1 + l] && prev <= pt->layer_seg[2 + l]);
    }
    CHECK(pt->layer_seg[c.n_layer + 2] == pt->n_train);
    for (int world = 1; world <= 5; world++) {
        size_t covered = 0, lo, hi, last = 0;
        for (int r = 0; r < world; r++) {
            params_shard(pt, r, world, &lo, &hi);
            CHECK(lo == last);
            covered += hi - lo;
            last = hi;
        }
        CHECK(covered == pt->n_train);
    }
    CHECK(param_find_role(pt, PROLE_QKV_W, 1) == param_find(pt, "h.1.qkv.w"));
    CHECK(param_find_role(pt, PROLE_WPE, -1) == -1);
    model_free(m);
}

static void test_freeze_patterns(void)
{
    ModelConfig c = tiny(FAMILY_LLAMA);
    TrainConfig tc;
    train_config_defaults(&tc);
    int bad;
    /* a pattern that matches nothing names itself */
    CHECK(train_config_set_key(&tc, "model.freeze", "model.layers.9.*", "test") == 0);
    CHECK(freeze_kinds(&tc.freeze, &c, &bad) == NULL && bad);
    CHECKF(strstr(err_get(), "model.layers.9.*") != NULL, "%s", err_get());
    /* part of a fused tensor: q_proj without k/v */
    CHECK(train_config_set_key(&tc, "model.freeze", "[\"*.q_proj.weight\"]", "test") == 0);
    CHECK(freeze_kinds(&tc.freeze, &c, &bad) == NULL && bad);
    CHECKF(strstr(err_get(), "q_proj") && strstr(err_get(), "h.0.qkv.w"), "%s", err_get());
    /* all three: fine */
    CHECK(train_config_set_key(&tc, "model.freeze", "*.q_proj.*, *.k_proj.*,*.v_proj.*", "test") == 0);
    CHECK(tc.freeze.n == 3 && !strcmp(tc.freeze.item[1], "*.k_proj.*"));
    ParamKind *k = freeze_kinds(&tc.freeze, &c, &bad);
    CHECK(k && !bad);
    ParamTable pt;
    param_table_build(&pt, &c);
    for (int i = 0; k && i < pt.n; i++)
        CHECKF((k[i] == PARAM_FROZEN) == (pt.p[i].role == PROLE_QKV_W), "%s", pt.p[i].name);
    param_table_free(&pt);
    free(k);
    /* [0-9] classes and the empty list */
    CHECK(train_config_set_key(&tc, "model.freeze", "model.layers.[0-9].*", "test") == 0);
    k = freeze_kinds(&tc.freeze, &c, &bad);
    CHECK(k && !bad);
    free(k);
    CHECK(train_config_set_key(&tc, "model.freeze", "", "test") == 0);
    CHECK(tc.freeze.n == 0 && freeze_kinds(&tc.freeze, &c, &bad) == NULL && !bad);
}

/* ------------------------------------------------------------------ training */

static void copy_params(Model *dst, const Model *src)
{
    float *p = xmalloc(src->pt.total * sizeof(float));
    model_get_params(src, p);
    model_set_params(dst, p);
    free(p);
}

/* Training with frozen tensors: they stay bit-identical, and the trainable tensors get exactly
 * the updates of an all-trainable run whose norm, clipping and AdamW cover them alone. */
static void test_freeze_training(void)
{
    for (int f = 0; f < 2; f++) {
        ModelConfig c = tiny((Family)f);
        const char *pat = f ? "model.embed_tokens.*,model.layers.1.*" : "transformer.wte.*,transformer.h.1.*";
        ParamKind *kinds = kinds_for(&c, pat);
        Model *a = model_create_kinds(&c, backend_cpu(), kinds), *b = model_create(&c, backend_cpu());
        randomize(a, 7);
        copy_params(b, a);
        float *p0 = xmalloc(a->pt.total * sizeof(float)), *pa = xmalloc(a->pt.total * sizeof(float)),
              *pb = xmalloc(a->pt.total * sizeof(float)), *gb = xmalloc(a->pt.total * sizeof(float));
        model_get_params(a, p0);
        int B = 2, T = 8;
        CHECK(model_reserve(a, B, T, 0) == 0 && model_reserve(b, B, T, 0) == 0);
        Optimizer oa, ob;
        optim_init(&oa, a, 0.1f);
        optim_init(&ob, b, 0.1f);
        /* b's optimizer list: the tensors a trains */
        int keep = 0;
        for (int t = 0; t < ob.nt; t++)
            if (kinds[ob.param[t]] == PARAM_TRAIN) ob.t[keep++] = ob.t[t];
        ob.nt = keep;
        int32_t in[16], tg[16];
        int32_t *pin = in, *ptg = tg;
        for (int step = 1; step <= 3; step++) {
            make_tokens(in, 16, c.vocab_size, 100 + step);
            make_tokens(tg, 16, c.vocab_size, 200 + step);
            StepBatch sb = {.B = B, .T = T, .accum = 1, .in = &pin, .tg = &ptg};
            StepHyper h = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .step = step, .grad_clip = 0.05f};
            StepResult ra;
            CHECK(train_step(a, &oa, &sb, &h, &ra) == 0);
            CHECK(ra.clip_scale < 1.0f); /* the clipping is exercised */
            /* b by hand: the norm over a's trainable tensors only */
            model_zero_grad(b);
            model_forward(b, in, tg, B, T, 1.0f / 16, NULL);
            model_backward(b);
            model_get_grads(b, gb);
            double ss = 0;
            for (int i = 0; i < b->pt.n; i++)
                if (kinds[i] == PARAM_TRAIN)
                    for (size_t j = 0; j < b->pt.p[i].numel; j++) ss += (double)gb[b->pt.p[i].offset + j] * gb[b->pt.p[i].offset + j];
            double gn = sqrt(ss);
            CHECK_CLOSE(ra.grad_norm, gn, 1e-12);
            AdamHyper ah = {h.lr, h.beta1, h.beta2, h.eps, step, (float)(h.grad_clip / (gn + 1e-6))};
            optim_step(&ob, b, &ah);
        }
        model_get_params(a, pa);
        model_get_params(b, pb);
        double worst = 0;
        int frozen_same = 1, trained = 0;
        for (int i = 0; i < a->pt.n; i++) {
            const Param *p = &a->pt.p[i];
            if (p->kind == PARAM_FROZEN) {
                frozen_same &= !memcmp(pa + p->offset, p0 + p->offset, p->numel * sizeof(float));
                continue;
            }
            trained |= memcmp(pa + p->offset, p0 + p->offset, p->numel * sizeof(float)) != 0;
            worst = fmax(worst, rel_err_max(pa + p->offset, pb + p->offset, p->numel));
        }
        CHECKF(frozen_same, "family %d: a frozen tensor changed", f);
        CHECK(trained);
        CHECKF(worst == 0, "family %d: trainable tensors differ from the reference run (rel err %.3g)", f, worst);
        optim_free(&oa);
        optim_free(&ob);
        model_free(a);
        model_free(b);
        free(kinds), free(p0), free(pa), free(pb), free(gb);
    }
}

/* Micro-batches with different numbers of ignored targets accumulate to exactly the gradient and
 * loss of one big batch: the loss of a step is the mean over all its scored targets. */
static void test_loss_normalisation(void)
{
    ModelConfig c = tiny(FAMILY_LLAMA);
    Model *m = model_create(&c, backend_cpu());
    randomize(m, 3);
    int T = 8;
    CHECK(model_reserve(m, 2, T, 0) == 0);
    int32_t in[16], tg[16];
    make_tokens(in, 16, c.vocab_size, 1);
    make_tokens(tg, 16, c.vocab_size, 2);
    for (int t = 0; t < 6; t++) tg[t] = -100; /* row 0 scores 2 targets, row 1 all 8 */
    Optimizer o;
    optim_init(&o, m, 0.0f);
    size_t n = m->pt.total;
    float *g_big = xmalloc(n * sizeof(float)), *g_acc = xmalloc(n * sizeof(float)), *p0 = xmalloc(n * sizeof(float));
    model_get_params(m, p0);
    StepHyper h = {.lr = 0.0f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .step = 1, .grad_clip = 0};
    /* one batch of 2 rows */
    int32_t *pin[2] = {in, in + 8}, *ptg[2] = {tg, tg + 8};
    StepBatch big = {.B = 2, .T = T, .accum = 1, .in = pin, .tg = ptg};
    StepResult rb, ra;
    CHECK(train_step(m, &o, &big, &h, &rb) == 0);
    model_get_grads(m, g_big);
    /* two micro-batches of one row */
    model_set_params(m, p0);
    StepBatch acc = {.B = 1, .T = T, .accum = 2, .in = pin, .tg = ptg};
    CHECK(train_step(m, &o, &acc, &h, &ra) == 0);
    model_get_grads(m, g_acc);
    CHECK(rb.scored == 10 && ra.scored == 10);
    CHECK_CLOSE(ra.loss, rb.loss, 1e-6);
    double err = rel_err_max(g_acc, g_big, n);
    CHECKF(err < 1e-5, "accumulated gradient vs one batch: rel err %.3g", err);
    /* the per-micro-batch mean (the old rule) would weigh row 0's 2 targets like row 1's 8: that
     * is far from the big batch, so the check above can tell the two apart */
    double m0 = model_forward(m, in, tg, 1, T, 0, NULL), m1 = model_forward(m, in + 8, tg + 8, 1, T, 0, NULL);
    CHECKF(fabs((m0 + m1) / 2 - rb.loss) > 1e-3, "the two rules agree on this batch (%g vs %g)", (m0 + m1) / 2,
           rb.loss);
    /* a step where nothing is scored is refused */
    for (int t = 0; t < 16; t++) tg[t] = -1;
    CHECK(train_step(m, &o, &big, &h, &rb) == -1);
    optim_free(&o);
    model_free(m);
    free(g_big), free(g_acc), free(p0);
}

/* ---------------------------------------------------------------- generation */

/* Cached generation runs the same block as training: the logits of every position, through a
 * prompt pass and then one token at a time, equal the training forward's bit for bit. */
/* Two logit rows: identical bytes, or (exact 0) within 1e-5 of the larger magnitude. */
static int rows_agree(const float *a, const float *b, int n, int exact)
{
    if (exact) return !memcmp(a, b, (size_t)n * sizeof(float));
    for (int i = 0; i < n; i++)
        if (fabsf(a[i] - b[i]) > 1e-5f * fmaxf(1.0f, fmaxf(fabsf(a[i]), fabsf(b[i])))) return 0;
    return 1;
}

static void test_cached_equals_training(void)
{
    /* bit for bit where OpenBLAS's kernel rounds a row alike at every position of a tile; else (Zen,
     * Haswell: cpu_blas_position_free) the same to float rounding */
    int exact = cpu_blas_position_free();
    if (!exact)
        fprintf(stderr, "  note: this OpenBLAS kernel (%s) rounds a row by its position in a product: cached logits "
                        "are compared to 1e-5, not bit for bit\n", openblas_get_corename());
    for (int f = 0; f < 2; f++) {
        ModelConfig c = tiny((Family)f);
        Model *m = model_create_frozen(&c, backend_cpu());
        randomize(m, 5);
        int B = 2, T = 12, P = 5, V = c.vocab_size;
        int32_t ids[24];
        make_tokens(ids, B * T, V, 9);
        CHECK(model_reserve(m, B, T, 0) == 0);
        model_forward(m, ids, NULL, B, T, 0, NULL);
        const float *full = m->logits;
        KVCache *kv = kv_cache_create(m, B, T, 0);
        int32_t step[24];
        for (int b = 0; b < B; b++) memcpy(step + b * P, ids + b * T, P * sizeof(int32_t));
        const float *lg = model_forward_cached(m, kv, step, P);
        int same = 1;
        for (int b = 0; b < B; b++) same &= rows_agree(lg + (size_t)b * V, full + ((size_t)b * T + P - 1) * V, V, exact);
        CHECKF(same, "family %d: prompt pass logits differ from the training forward", f);
        for (int t = P; t < T; t++) {
            for (int b = 0; b < B; b++) step[b] = ids[b * T + t];
            lg = model_forward_cached(m, kv, step, 1);
            same = 1;
            for (int b = 0; b < B; b++) same &= rows_agree(lg + (size_t)b * V, full + ((size_t)b * T + t) * V, V, exact);
            CHECKF(same, "family %d: decoding position %d: logits differ from the training forward", f, t);
        }
        kv_cache_free(m, kv);
        model_free(m);
    }
}

/* ------------------------------------------------------------------ accounting */

/* FLOPs of the products actually run, counted here from the config alone. */
static void test_flops(void)
{
    ModelConfig c;
    CHECK(model_preset(&c, "gpt2-124m") == 0 && model_config_finish(&c) == 0);
    int T = 1024;
    double C = c.d_model, L = c.n_layer, V = c.vocab_size;
    double per_layer = C * 3 * C + C * C + C * 4 * C + 4 * C * C; /* qkv, o, fc, proj weights */
    double attn = 6.0 * L * C * T;
    Model *m = model_create(&c, backend_cpu());
    double want = 6 * (L * per_layer + V * C) + attn; /* the head is wte (tied) */
    CHECK_CLOSE(model_flops_per_token(m, T), want, 1e-12);
    CHECK_CLOSE(model_flops_per_token_fwd(m, T), 2 * (L * per_layer + V * C) + 2.0 * L * C * T, 1e-12);
    model_free(m);
    /* blocks frozen: 4 per frozen weight; the head trains (6) */
    ParamKind *k = kinds_for(&c, "transformer.h.*");
    m = model_create_kinds(&c, backend_cpu(), k);
    CHECK_CLOSE(model_flops_per_token(m, T), 4 * L * per_layer + 6 * V * C + attn, 1e-12);
    model_free(m);
    free(k);
}

/* The memory report's categories add up to what the backend holds. */
static void test_mem_report(void)
{
    ModelConfig c = tiny(FAMILY_GPT2);
    ParamKind *k = kinds_for(&c, "transformer.wte.*");
    size_t before;
    backend_cpu()->mem_stats(&before, NULL);
    Model *m = model_create_kinds(&c, backend_cpu(), k);
    Optimizer o;
    optim_init(&o, m, 0.1f);
    CHECK(model_reserve(m, 2, 8, 1) == 0);
    MemReport r;
    model_mem_report(m, optim_bytes(&o), &r);
    CHECK(r.master == m->pt.n_train * 4 && r.grads == m->pt.n_train * 4 && r.optim == m->pt.n_train * 8);
    CHECK(r.weights == m->pt.n_frozen * 4 && r.acts > 0);
    /* the CPU backend has no workspaces of its own: nothing is left unaccounted */
    CHECKF(r.workspace == before, "workspace %zu, held before %zu", r.workspace, before);
    CHECK(r.peak >= r.in_use);
    char line[512];
    mem_report_format(&r, line, sizeof(line));
    CHECK(strstr(line, "gradients") && strstr(line, "peak"));
    optim_free(&o);
    model_free(m);
    free(k);
}

int main(void)
{
    RUN(test_linear_train);
    RUN(test_linear_frozen);
    RUN(test_linear_gelu_train);
    RUN(test_linear_gelu_frozen);
    RUN(test_linear_gelu_bwd);
    RUN(test_head_kinds);
    RUN(test_frozen_allocates_nothing);
    RUN(test_segment_layout);
    RUN(test_freeze_patterns);
    RUN(test_freeze_training);
    RUN(test_loss_normalisation);
    RUN(test_cached_equals_training);
    RUN(test_flops);
    RUN(test_mem_report);
    return test_summary();
}
