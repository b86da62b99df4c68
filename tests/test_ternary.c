/* test_ternary.c - ternary weights on the CPU backend (docs/ternary.md):
 *   BitNet's absmean / absmax quantizers against a double-precision reference; the straight-through
 *   gradients of a BitLinear product against double products of the quantized operands; a whole
 *   BitNetForCausalLM against transformers' own QAT (tools/make_ternary_fixtures.py: logits, loss,
 *   every gradient); import of transformers' packed BitLinear directory and export to it (the packed
 *   bytes equal transformers' pack_weights); the trit packing for all 243 byte values; the integer
 *   update rule on hand-made cases. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/error.h"
#include "core/rng.h"
#include "io/fsutil.h"
#include "io/hf.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model/ternary.h"
#include "test.h"

/* max|ours - ref| / max|ref| allowed against transformers (fp32 both sides). A quantizer boundary that
 * the two sides' roundoff puts on different sides would show as an error of one 8-bit level; the
 * fixture was checked to have none, so the bar is the one of tests/test_parity.c. */
#define PARITY_TOL 1e-4

static void fill_normal(float *x, size_t n, double std, uint64_t seed)
{
    Rng r;
    rng_seed(&r, seed, 0);
    for (size_t i = 0; i < n; i++) x[i] = (float)(std * rng_normal(&r));
}

/* w / gamma or x * s within this of a rounding boundary (k + 0.5) is not a mismatch: fp32 and double
 * may round it differently. */
#define BOUNDARY_SLACK 1e-4

static int near_half(double v) { return fabs(fabs(v - floor(v)) - 0.5) < BOUNDARY_SLACK; }

static void test_wquant_reference(void)
{
    const Backend *be = backend_cpu();
    size_t n = 5000;
    float *w = xmalloc(n * sizeof(float)), *q = xmalloc(n * sizeof(float));
    fill_normal(w, n, 0.7, 11);
    w[0] = 0; /* exact zero stays zero */
    be->ternary_wquant(q, w, n);
    double s = 0;
    for (size_t i = 0; i < n; i++) s += fabs((double)w[i]);
    double gamma = fmax(s / n, 1e-5);
    int bad = 0, used[3] = {0, 0, 0};
    for (size_t i = 0; i < n; i++) {
        double r = w[i] / gamma, t = fmin(1, fmax(-1, nearbyint(r)));
        used[(int)t + 1]++;
        if (near_half(r)) continue;
        if (fabs(q[i] - t * gamma) > 1e-6 * gamma) bad++;
    }
    CHECKF(bad == 0, "%d of %zu ternarized weights differ from the double reference", bad, n);
    CHECK(used[0] > 0 && used[1] > 0 && used[2] > 0);
    CHECK(q[0] == 0.0f);
    /* an all-zero tensor: gamma is clamped to 1e-5, every value stays 0 */
    memset(w, 0, n * sizeof(float));
    be->ternary_wquant(q, w, n);
    int nz = 0;
    for (size_t i = 0; i < n; i++) nz += q[i] != 0;
    CHECK(nz == 0);
    free(w);
    free(q);
}

/* x rounded to the nearest bf16 (ties to even): what a bf16 compute copy holds of an fp32 master. */
static float bf16_of(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

/* What ZeRO's BitLinear changes on a bf16 GPU, where it ternarizes the bf16 compute copy instead of the
 * fp32 master (linear.c bitlinear_quant): BitNet-shaped tensors of normal weights (an init; trained
 * latent weights spread alike), quantized from the values and from their bf16 rounding. The scale moves
 * by the mean of the roundings (relative ~1e-6) and a trit changes only where w / gamma lies within a
 * bf16 rounding (at most 2^-8 relative) of +-0.5: measured 5e-4 of the weights (1.1e-3 in the small
 * tensor), each by one level. For scale: one AdamW step of lr 1e-3 (each weight moved by +-lr, the
 * size of Adam's first steps) changes some 3% of them. The bounds are about 4x the measurements
 * (docs/distributed.md quotes them). */
static void test_wquant_bf16_source(void)
{
    const size_t rows[3] = {256, 2560, 6912}, cols[3] = {256, 2560, 2560};
    double worst_flip = 0, worst_gamma = 0, least_step = 1;
    for (int k = 0; k < 3; k++) {
        size_t n = rows[k] * cols[k];
        float *w = xmalloc(n * sizeof(float)), *wb = xmalloc(n * sizeof(float));
        float *q = xmalloc(n * sizeof(float)), *qb = xmalloc(n * sizeof(float));
        fill_normal(w, n, 0.02, 40 + (uint64_t)k);
        for (size_t i = 0; i < n; i++) wb[i] = bf16_of(w[i]);
        float g = tern_wquant(q, w, n), gb = tern_wquant(qb, wb, n);
        size_t flips = 0, moved = 0;
        for (size_t i = 0; i < n; i++) flips += nearbyintf(q[i] / g) != nearbyintf(qb[i] / gb);
        double gr = fabs((double)gb - g) / g;
        Rng r;
        rng_seed(&r, 50 + (uint64_t)k, 0);
        for (size_t i = 0; i < n; i++) wb[i] = w[i] + (rng_below(&r, 2) ? 1e-3f : -1e-3f);
        gb = tern_wquant(qb, wb, n);
        for (size_t i = 0; i < n; i++) moved += nearbyintf(q[i] / g) != nearbyintf(qb[i] / gb);
        double fr = (double)flips / (double)n, st = (double)moved / (double)n;
        printf("  bf16 source, %zu x %zu: %zu of %zu trits differ (%.2e), gamma rel %.2e; one step of 1e-3: %.2e\n",
               rows[k], cols[k], flips, n, fr, gr, st);
        worst_flip = fmax(worst_flip, fr);
        worst_gamma = fmax(worst_gamma, gr);
        least_step = fmin(least_step, st);
        free(w), free(wb), free(q), free(qb);
    }
    CHECKF(worst_flip < 4e-3 && worst_gamma < 2e-5 && least_step > 10 * worst_flip,
           "trits %.2e, gamma %.2e, a step %.2e", worst_flip, worst_gamma, least_step);
}

static void test_act_quant_reference(void)
{
    const Backend *be = backend_cpu();
    int N = 7, C = 300;
    float *x = xmalloc((size_t)N * C * sizeof(float)), *q = xmalloc((size_t)N * C * sizeof(float));
    fill_normal(x, (size_t)N * C, 2.0, 12);
    for (int j = 0; j < C; j++) x[(size_t)6 * C + j] = 0; /* a zero row: scale from the 1e-5 clamp */
    be->act_quant8(q, x, N, C);
    int bad = 0, max_level = 0;
    for (int i = 0; i < N; i++) {
        double mx = 0;
        for (int j = 0; j < C; j++) mx = fmax(mx, fabs((double)x[(size_t)i * C + j]));
        double sc = 127.0 / fmax(mx, 1e-5);
        for (int j = 0; j < C; j++) {
            double r = x[(size_t)i * C + j] * sc, lv = fmin(127, fmax(-128, nearbyint(r)));
            if ((int)fabs(lv) > max_level) max_level = (int)fabs(lv);
            if (near_half(r)) continue;
            if (fabs(q[(size_t)i * C + j] - lv / sc) > 1e-6 * (mx > 0 ? mx : 1)) bad++;
        }
    }
    CHECKF(bad == 0, "%d of %d quantized activations differ from the double reference", bad, N * C);
    CHECK(max_level == 127); /* the row maximum maps to the top level */
    /* in place gives the same */
    float *y = xmalloc((size_t)N * C * sizeof(float));
    memcpy(y, x, (size_t)N * C * sizeof(float));
    be->act_quant8(y, y, N, C);
    CHECK(memcmp(y, q, (size_t)N * C * sizeof(float)) == 0);
    free(x), free(q), free(y);
}

/* The straight-through estimator of one BitLinear (layer 0's o_proj of bitnet-tiny): dinp = dout @ W_q
 * and dW = dout^T @ x_q, with W_q and x_q the forward's quantized operands, in double. */
static void test_ste_gradients(void)
{
    ModelConfig c;
    CHECK(model_preset(&c, "bitnet-tiny") == 0);
    c.vocab_size = 64;
    CHECK(model_config_finish(&c) == 0);
    Model *m = model_create(&c, backend_cpu());
    model_init_gpt2(m, 5);
    const Linear *L = &m->lp[0].o;
    CHECK(m->pt.p[L->w].ternarize && m->pt.p[L->w].kind == PARAM_TRAIN);
    int N = 6, in = L->in, out = L->out;
    float *x = xmalloc((size_t)N * in * sizeof(float)), *dout = xmalloc((size_t)N * out * sizeof(float));
    float *y = xmalloc((size_t)N * out * sizeof(float)), *dx = xmalloc((size_t)N * in * sizeof(float));
    fill_normal(x, (size_t)N * in, 1.0, 21);
    fill_normal(dout, (size_t)N * out, 1.0, 22);
    size_t nw = (size_t)out * in;
    float *w = xmalloc(nw * sizeof(float)), *wq = xmalloc(nw * sizeof(float));
    params_download(&m->ps, L->w, w);
    tern_wquant(wq, w, nw);
    float *xq = xmalloc((size_t)N * in * sizeof(float));
    for (int i = 0; i < N; i++) tern_act_quant_row(xq + (size_t)i * in, x + (size_t)i * in, in);
    model_zero_grad(m);
    linear_fwd(&m->ps, L, y, x, N, NULL);
    linear_bwd(&m->ps, L, dx, dout, x, N, NULL);
    double ey = 0, my = 0, ex = 0, mx = 0, ew = 0, mw = 0;
    for (int i = 0; i < N; i++)
        for (int o = 0; o < out; o++) {
            double s = 0;
            for (int k = 0; k < in; k++) s += (double)xq[(size_t)i * in + k] * wq[(size_t)o * in + k];
            ey = fmax(ey, fabs(s - y[(size_t)i * out + o]));
            my = fmax(my, fabs(s));
        }
    for (int i = 0; i < N; i++)
        for (int k = 0; k < in; k++) {
            double s = 0;
            for (int o = 0; o < out; o++) s += (double)dout[(size_t)i * out + o] * wq[(size_t)o * in + k];
            ex = fmax(ex, fabs(s - dx[(size_t)i * in + k]));
            mx = fmax(mx, fabs(s));
        }
    const float *g = params_g(&m->ps, L->w);
    for (int o = 0; o < out; o++)
        for (int k = 0; k < in; k++) {
            double s = 0;
            for (int i = 0; i < N; i++) s += (double)dout[(size_t)i * out + o] * xq[(size_t)i * in + k];
            ew = fmax(ew, fabs(s - g[(size_t)o * in + k]));
            mw = fmax(mw, fabs(s));
        }
    CHECKF(ey <= 1e-5 * my, "forward: %.3g of %.3g", ey, my);
    CHECKF(ex <= 1e-5 * mx, "dinp: %.3g of %.3g", ex, mx);
    CHECKF(ew <= 1e-5 * mw, "dW: %.3g of %.3g", ew, mw);
    free(x), free(dout), free(y), free(dx), free(w), free(wq), free(xq);
    model_free(m);
}

/* ---- transformers' BitNetForCausalLM ---- */

static float *ref_f32(const StFile *f, const char *name, size_t *n)
{
    const StTensor *t = st_find(f, name);
    CHECKF(t != NULL, "%s: %s missing", f->path, name);
    if (!t) return NULL;
    float *x = xmalloc(t->numel * sizeof(float));
    st_to_f32(t, x);
    if (n) *n = t->numel;
    return x;
}

static double logits_err(Model *m, const StFile *ref, const char *key, const int32_t *ids, int B, int T)
{
    int V = m->cfg.vocab_size;
    CHECK(model_reserve(m, B, T, 0) == 0);
    model_forward(m, ids, NULL, B, T, 0.0f, NULL);
    float *lg = xmalloc((size_t)B * T * V * sizeof(float));
    m->be->download_act(lg, m->logits, (size_t)B * T * V);
    size_t n = 0;
    float *r = ref_f32(ref, key, &n);
    double e = r && n == (size_t)B * T * V ? rel_err_max(lg, r, n) : INFINITY;
    free(r);
    free(lg);
    return e;
}

static int open_fixture(StFile *ref, const char *file)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/ternary/bitnet/%s", test_fixtures(), file);
    if (!fs_exists(path)) {
        fprintf(stderr, "skip: %s not found (tools/make_ternary_fixtures.py)\n", path);
        return -1;
    }
    CHECKF(st_open(ref, path) == 0, "%s", err_get());
    return 0;
}

static void test_transformers_qat(void)
{
    StFile ref;
    if (open_fixture(&ref, "reference.safetensors")) return;
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/ternary/bitnet/model", test_fixtures());
    Model *m = hf_load_model(dir, backend_cpu(), 1);
    CHECKF(m != NULL, "%s", err_get());
    if (!m) goto out;
    CHECK(m->cfg.ternary == TERNARY_BITNET && m->cfg.sub_norm && m->cfg.mlp_relu2);
    const StTensor *ti = st_find(&ref, "input_ids"), *tt = st_find(&ref, "targets");
    CHECK(ti && tt);
    if (!ti || !tt) goto out;
    int B = (int)ti->shape[0], T = (int)ti->shape[1];
    const int32_t *ids = ti->data, *tg = tt->data;
    double e = logits_err(m, &ref, "logits", ids, B, T);
    CHECKF(e <= PARITY_TOL, "logits: relative error %.3g", e);
    fprintf(stderr, "  bitnet logits vs transformers: %.3g\n", e);
    int valid = 0;
    for (int i = 0; i < B * T; i++) valid += tg[i] >= 0;
    model_zero_grad(m);
    float loss = model_forward(m, ids, tg, B, T, 1.0f / (float)valid, NULL);
    float *rl = ref_f32(&ref, "loss", NULL);
    if (rl) CHECKF(fabs(loss - rl[0]) <= PARITY_TOL * fabs(rl[0]), "loss %.7g vs %.7g", loss, rl[0]);
    free(rl);
    model_backward(m);
    float *g = xmalloc(m->pt.total * sizeof(float));
    model_get_grads(m, g);
    HfTensor *ht;
    int nh, matched = 0;
    double worst = 0;
    CHECK(hf_export(&m->cfg, &m->pt, g, &ht, &nh) == 0);
    for (int i = 0; i < nh; i++) {
        char key[160];
        snprintf(key, sizeof(key), "grad.%s", ht[i].name);
        size_t n = 0;
        float *r = ref_f32(&ref, key, &n);
        if (!r) continue;
        size_t ours = (size_t)ht[i].shape[0] * (size_t)(ht[i].ndim == 2 ? ht[i].shape[1] : 1);
        double ge = ours == n ? rel_err_max(ht[i].data, r, n) : INFINITY;
        CHECKF(ge <= PARITY_TOL, "%s: relative error %.3g", key, ge);
        worst = fmax(worst, ge);
        matched++;
        free(r);
    }
    int expected = 0;
    for (int i = 0; i < ref.n; i++) expected += !strncmp(ref.t[i].name, "grad.", 5);
    CHECKF(matched == expected && expected > 0, "matched %d of %d gradients", matched, expected);
    fprintf(stderr, "  bitnet gradients vs transformers (%d tensors): worst %.3g\n", matched, worst);
    hf_tensors_free(ht, nh);
    /* the recompute levels remake the sub-norms and the relu2-GLU: the same bits */
    for (int level = 1; level <= 2; level++) {
        CHECK(model_reserve(m, B, T, level) == 0);
        model_zero_grad(m);
        float l2 = model_forward(m, ids, tg, B, T, 1.0f / (float)valid, NULL);
        model_backward(m);
        float *g2 = xmalloc(m->pt.total * sizeof(float));
        model_get_grads(m, g2);
        CHECKF(l2 == loss && !memcmp(g2, g, m->pt.total * sizeof(float)), "recompute %d: not bit-identical", level);
        free(g2);
    }
    free(g);
out:
    model_free(m);
    st_close(&ref);
}

/* transformers' packed BitLinear directory: imported, it computes transformers' offline logits; exported
 * again, its bytes are transformers' pack_weights and weight_scale bit for bit. */
static void test_packed_import_export(void)
{
    StFile ref;
    if (open_fixture(&ref, "reference_packed.safetensors")) return;
    char dir[512], ref_model[600];
    snprintf(dir, sizeof(dir), "%s/ternary/bitnet/model_packed", test_fixtures());
    snprintf(ref_model, sizeof(ref_model), "%s/model.safetensors", dir);
    Model *m = hf_load_model(dir, backend_cpu(), 1);
    CHECKF(m != NULL, "%s", err_get());
    if (!m) {
        st_close(&ref);
        return;
    }
    const StTensor *ti = st_find(&ref, "input_ids");
    int B = (int)ti->shape[0], T = (int)ti->shape[1];
    double e = logits_err(m, &ref, "packed_logits", ti->data, B, T);
    CHECKF(e <= PARITY_TOL, "packed import: logits relative error %.3g", e);
    fprintf(stderr, "  packed import vs transformers' BitLinear: %.3g\n", e);
    /* export, then compare every tensor with the fixture's (transformers-made) file */
    char out[] = "/tmp/anvil_bitnet_export_XXXXXX";
    CHECK(mkdtemp(out) != NULL);
    float *host = xmalloc(m->pt.total * sizeof(float));
    model_get_params(m, host);
    CHECKF(hf_save_bitnet(out, &m->cfg, &m->pt, host) == 0, "%s", err_get());
    char path[600];
    snprintf(path, sizeof(path), "%s/model.safetensors", out);
    StFile a, b;
    CHECK(st_open(&a, path) == 0);
    CHECK(st_open(&b, ref_model) == 0);
    int same = 0, packed = 0;
    for (int i = 0; i < b.n; i++) {
        const StTensor *tb = &b.t[i], *ta = st_find(&a, tb->name);
        CHECKF(ta != NULL, "export: %s missing", tb->name);
        if (!ta) continue;
        packed += tb->dtype == ST_U8;
        if (tb->dtype == ST_U8 || strstr(tb->name, "weight_scale")) {
            int eq = ta->dtype == tb->dtype && ta->nbytes == tb->nbytes && !memcmp(ta->data, tb->data, tb->nbytes);
            if (!eq && strstr(tb->name, "weight_scale")) { /* 1 / gamma: fp32 roundoff of the mean allowed */
                float x, y;
                st_to_f32(ta, &x), st_to_f32(tb, &y);
                eq = fabsf(x - y) <= 1e-6f * fabsf(y);
            }
            CHECKF(eq, "export: %s differs from transformers' packed tensor", tb->name);
            same += eq;
        }
    }
    CHECK(packed == 7 * m->cfg.n_layer);
    CHECK(same == 2 * packed);
    CHECK(a.n == b.n);
    st_close(&a);
    st_close(&b);
    /* and the exported directory loads back with the same logits */
    Model *m2 = hf_load_model(out, backend_cpu(), 0);
    CHECKF(m2 != NULL, "%s", err_get());
    if (m2) {
        e = logits_err(m2, &ref, "packed_logits", ti->data, B, T);
        CHECKF(e <= PARITY_TOL, "re-imported export: logits relative error %.3g", e);
        model_free(m2);
    }
    fs_rm_rf(out);
    free(host);
    model_free(m);
    st_close(&ref);
}

/* ---- integer ternary ---- */

static void test_trit_bytes(void)
{
    int bad = 0;
    for (int v = 0; v <= TRIT_BYTE_MAX; v++) { /* every valid byte: unpack, pack, the same byte */
        uint8_t b = (uint8_t)v, b2;
        int8_t t[TRITS_PER_BYTE];
        trit_unpack_i8(t, &b, TRITS_PER_BYTE);
        int val = 0;
        for (int k = TRITS_PER_BYTE - 1; k >= 0; k--) {
            if (t[k] < -1 || t[k] > 1) bad++;
            val = val * 3 + t[k] + 1;
        }
        if (val != v) bad++;
        trit_pack(&b2, t, TRITS_PER_BYTE);
        if (b2 != b) bad++;
        for (int k = 0; k < TRITS_PER_BYTE; k++) { /* trit_set of each digit to each value */
            for (int nv = -1; nv <= 1; nv++) {
                uint8_t c = b;
                trit_set(&c, (size_t)k, nv);
                for (int q = 0; q < TRITS_PER_BYTE; q++)
                    if (trit_get(&c, (size_t)q) != (q == k ? nv : t[q])) bad++;
            }
        }
    }
    CHECKF(bad == 0, "%d mismatches over the 243 byte values", bad);
    /* a tail: 7 trits in 2 bytes, the unused digits trit 0 */
    int8_t t7[7] = {-1, 0, 1, 1, -1, 1, -1}, back[10];
    uint8_t pk[2];
    trit_pack(pk, t7, 7);
    trit_unpack_i8(back, pk, 10);
    CHECK(memcmp(back, t7, 7) == 0 && back[7] == 0 && back[8] == 0 && back[9] == 0);
}

static void test_tern_from_to_f32(void)
{
    float w[6] = {0.3f, -0.26f, 0.01f, 0.5f, -0.9f, 0.0f}; /* one group: mean |w| = 0.328 -> E = -2 (0.25) */
    uint8_t tr[2];
    int8_t e[1];
    tern_from_f32(tr, e, w, 6, 8);
    CHECK(e[0] == -2);
    float back[6];
    tern_to_f32(back, tr, e, 6, 8);
    const float want[6] = {0.25f, -0.25f, 0.0f, 0.25f, -0.25f, 0.0f}; /* round(w / 0.25) clamped */
    CHECK(memcmp(back, want, sizeof(want)) == 0);
    /* values already trit x 2^E come back with the same trits and exponents, however sparse the group
     * (a third nonzero: mean |w| = 2^E / 3 would round E down by two), groups straddling bytes */
    enum { TN = 1003, TG = 40 };
    size_t ng = tern_groups(TN, TG);
    int8_t t0[TN], t1[TN], e0[32], e1[32];
    uint64_t x = 12345;
    for (int i = 0; i < TN; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        int r = (int)((x >> 33) % 6);
        t0[i] = (int8_t)(r == 0 ? 1 : r == 1 ? -1 : 0);
    }
    for (size_t g = 0; g < ng; g++) e0[g] = (int8_t)(-7 + (int)(g % 9));
    uint8_t p0[(TN + 4) / 5], p1[(TN + 4) / 5];
    trit_pack(p0, t0, TN);
    float *v = malloc(TN * sizeof(float));
    tern_to_f32(v, p0, e0, TN, TG);
    tern_from_f32(p1, e1, v, TN, TG);
    trit_unpack_i8(t1, p1, TN);
    CHECK(memcmp(t0, t1, TN) == 0);
    int same_e = 1;
    for (size_t g = 0; g < ng; g++) {
        int any = 0;
        for (size_t i = g * TG; i < (g + 1) * TG && i < TN; i++) any |= t0[i] != 0;
        if (any && e0[g] != e1[g]) same_e = 0;
    }
    CHECK(same_e);
    free(v);
}

/* The product read from packed trits (tern_matmul_rows, the CPU backend's for up to TERN_MM_SMALL_N rows)
 * against the unpacked weights multiplied in double: 1 to 4 rows, groups that straddle rows and packed
 * bytes (7, 40, a whole row, several rows), with and without a bias. */
static void test_matmul_rows(void)
{
    const struct { int N, K, O, group, bias; } cs[] = {{1, 37, 5, 7, 0}, {2, 40, 9, 40, 1}, {3, 100, 7, 100, 1},
                                                       {4, 64, 11, 128, 0}, {4, 13, 3, 8, 1}};
    for (size_t c = 0; c < sizeof(cs) / sizeof(cs[0]); c++) {
        int N = cs[c].N, K = cs[c].K, O = cs[c].O, G = cs[c].group;
        size_t n = (size_t)O * K, ng = tern_groups(n, G);
        int8_t *tr = malloc(n), *ex = malloc(ng);
        uint8_t *packed = malloc(trit_bytes(n));
        float *x = malloc((size_t)N * K * sizeof(float)), *w = malloc(n * sizeof(float));
        float *bias = malloc((size_t)O * sizeof(float)), *out = malloc((size_t)N * O * sizeof(float));
        uint64_t r = 77 + c;
        for (size_t i = 0; i < n; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            tr[i] = (int8_t)((int)((r >> 33) % 3) - 1);
        }
        for (size_t g = 0; g < ng; g++) ex[g] = (int8_t)(-6 + (int)(g % 5));
        for (int i = 0; i < N * K; i++) x[i] = (float)sin(0.37 * i + (double)c);
        for (int i = 0; i < O; i++) bias[i] = 0.25f * (float)i - 1.0f;
        trit_pack(packed, tr, n);
        tern_to_f32(w, packed, ex, n, G);
        TernaryTensor t = {.trits = packed, .exp = ex, .n = n, .group = G};
        tern_matmul_rows(out, x, &t, cs[c].bias ? bias : NULL, N, K, O);
        double worst = 0, scale = 0;
        for (int a = 0; a < N; a++)
            for (int o = 0; o < O; o++) {
                double ref = cs[c].bias ? bias[o] : 0;
                for (int k = 0; k < K; k++) ref += (double)x[a * K + k] * w[(size_t)o * K + k];
                worst = fmax(worst, fabs(out[(size_t)a * O + o] - ref));
                scale = fmax(scale, fabs(ref));
            }
        CHECKF(worst <= 1e-5 * scale + 1e-7, "tern_matmul_rows N %d K %d O %d group %d: error %.3g (scale %.3g)", N, K, O,
               G, worst, scale);
        free(tr), free(ex), free(packed), free(x), free(w), free(bias), free(out);
    }
}

/* A hand-made tensor of two groups of four weights, stepped with known gradients. */
static void test_update_rule(void)
{
    int8_t t0[8] = {0, 0, 1, -1, 0, 1, -1, 0};
    uint8_t trits[2];
    int8_t exp[2] = {-3, -3}, tacc[8] = {0}, eacc[2] = {0};
    trit_pack(trits, t0, 8);
    float g[8];
    TernaryTensor t = {.trits = trits, .exp = exp, .tacc = tacc, .eacc = eacc, .grad = g, .n = 8, .group = 4};
    TernaryHyper h = {.threshold = 3, .scale_every = 4, .deadzone = 1.0f, .exp_min = -8, .exp_max = 2};
    /* group 0: g = (+1, -1, +1, -0.1): mean |g| = 0.775, so weights 0..2 vote, weight 3 is in the dead zone */
    const float g0[4] = {1.0f, -1.0f, 1.0f, -0.1f};
    /* group 1: g = (0, -2, +2, 0): mean 1; weights 5, 6 vote; sg = sum g * t = -2 * 1 + 2 * -1 = -4 < 0 */
    const float g1[4] = {0.0f, -2.0f, 2.0f, 0.0f};
    memcpy(g, g0, sizeof(g0));
    memcpy(g + 4, g1, sizeof(g1));
    for (int step = 1; step <= 3; step++) {
        h.step = step;
        tern_update(&t, &h);
        if (step < 3) { /* the accumulators count votes, nothing moves yet */
            CHECK(tacc[0] == -step && tacc[1] == step && tacc[2] == -step && tacc[3] == 0);
            CHECK(tacc[5] == step && tacc[6] == -step && tacc[4] == 0 && tacc[7] == 0);
        }
    }
    /* after 3 votes: weight 0 moved down (0 -> -1), weight 1 up (0 -> 1), weight 2 down (1 -> 0); weight 5 is
     * at +1 and cannot go up (reset anyway), weight 6 at -1 cannot go down */
    int8_t now[8];
    trit_unpack_i8(now, trits, 8);
    const int8_t want[8] = {-1, 1, 0, -1, 0, 1, -1, 0};
    CHECK(memcmp(now, want, 8) == 0);
    for (int i = 0; i < 8; i++) CHECKF(tacc[i] == 0, "tacc[%d] = %d", i, tacc[i]);
    /* group 0's sg per step: 1*0 + -1*0 + 1*1 + -0.1*-1 = 1.1 > 0 for steps 1-3: eacc -3 (after the moves,
     * step 4 sees t = (-1, 1, 0, -1): sg = -1 - 1 + 0 + 0.1 = -1.9 < 0: +1); group 1: -4 each step: +4 */
    CHECK(eacc[0] == -3 && eacc[1] == 3);
    h.step = 4; /* a scale step: group 1 has 2 * |4| >= 4: E -3 -> -2; group 0 has 2 * |-2| >= 4: E -3 -> -4 */
    tern_update(&t, &h);
    CHECK(exp[0] == -4 && exp[1] == -2);
    CHECK(eacc[0] == 0 && eacc[1] == 0);
    /* saturation: 200 votes one way stay at 127 with a threshold above it never reached */
    int8_t a1[1] = {0}, e1[1] = {0}, ea1[1] = {0};
    uint8_t tr1[1];
    int8_t z[1] = {0};
    trit_pack(tr1, z, 1);
    float gg[1] = {-1.0f};
    TernaryTensor t1 = {.trits = tr1, .exp = e1, .tacc = a1, .eacc = ea1, .grad = gg, .n = 1, .group = 1};
    TernaryHyper h1 = {.threshold = 127, .scale_every = 127, .deadzone = 0, .exp_min = -8, .exp_max = 2};
    for (int s = 1; s <= 126; s++) {
        h1.step = s;
        tern_update(&t1, &h1);
    }
    CHECK(a1[0] == 126 && trit_get(tr1, 0) == 0);
    h1.step = 127; /* the 127th vote reaches the threshold: the trit moves, the accumulator resets */
    tern_update(&t1, &h1);
    CHECK(a1[0] == 0 && trit_get(tr1, 0) == 1);
    /* the exponent clamps at exp_max */
    int8_t ex[1] = {2}, eac[1] = {127};
    TernaryTensor t2 = t1;
    t2.exp = ex;
    t2.eacc = eac;
    h1.step = 127;
    tern_update(&t2, &h1); /* sg = -1 * 1 < 0: eacc saturates at 127, 2*127 >= 127: E would be 3 */
    CHECK(ex[0] == 2 && eac[0] == 0);
}

/* A PARAM_TERNARY tensor in the store: upload quantizes, the product uses trit * 2^E, the gradient
 * lands in the ternary segment and is not in the trainable one. */
static void test_store_kind(void)
{
    ModelConfig c;
    CHECK(model_preset(&c, "llama-tiny") == 0);
    c.vocab_size = 64;
    CHECK(model_config_finish(&c) == 0);
    ParamTable pt;
    param_table_build(&pt, &c);
    ParamKind *k = xmalloc((size_t)pt.n * sizeof(ParamKind));
    for (int i = 0; i < pt.n; i++) k[i] = pt.p[i].role == PROLE_O_W ? PARAM_TERNARY : PARAM_TRAIN;
    Model *m = model_create_kinds(&c, backend_cpu(), k);
    model_init_gpt2(m, 9);
    int o = m->lp[0].o.w;
    CHECK(m->pt.p[o].kind == PARAM_TERNARY);
    CHECK(m->pt.n_tern >= m->pt.p[o].numel);
    size_t n = m->pt.p[o].numel;
    float *w = xmalloc(n * sizeof(float));
    params_download(&m->ps, o, w);
    int levels = 0;
    for (size_t i = 0; i < n; i++) { /* every value is 0 or +-2^E */
        int e;
        float f = frexpf(fabsf(w[i]), &e);
        levels += w[i] == 0 || f == 0.5f;
    }
    CHECK(levels == (int)n);
    ParamBytes pb = params_bytes(&m->ps);
    CHECK(pb.tstate >= n);
    CHECK(params_g(&m->ps, o) == m->ps.tgrad + m->pt.p[o].seg);
    free(w);
    free(k);
    param_table_free(&pt);
    model_free(m);
}

int main(void)
{
    RUN(test_wquant_reference);
    RUN(test_wquant_bf16_source);
    RUN(test_act_quant_reference);
    RUN(test_ste_gradients);
    RUN(test_transformers_qat);
    RUN(test_packed_import_export);
    RUN(test_trit_bytes);
    RUN(test_tern_from_to_f32);
    RUN(test_matmul_rows);
    RUN(test_update_rule);
    RUN(test_store_kind);
    return test_summary();
}
