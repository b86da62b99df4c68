/* test_ops.c - every CPU op against an independent double-precision reference.
 *
 * For each op: (1) the fp32 forward matches a naive double forward written
 * here; (2) the fp32 backward matches central finite differences of
 * f(x) = sum(forward(x) * R) in double (R a fixed random upstream gradient). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/error.h"
#include "core/rng.h"
#include "test.h"

#define FD_H 1e-6
#define FWD_TOL 2e-5 /* fp32 forward vs double reference, relative to max |ref| */
#define BWD_TOL 2e-4 /* fp32 analytic gradient vs double finite differences */

static const Backend *be;
static Rng rng;

static void fill(double *x, size_t n, double scale)
{
    for (size_t i = 0; i < n; i++) x[i] = scale * rng_normal(&rng);
}
static float *tof(const double *x, size_t n)
{
    float *f = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) f[i] = (float)x[i];
    return f;
}
static double rel_err_fd(const float *a, const double *b, size_t n)
{
    double md = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (isnan(a[i])) return INFINITY;
        if (d > md) md = d;
        if (fabs(b[i]) > mb) mb = fabs(b[i]);
    }
    return mb > 0 ? md / mb : md;
}

/* A reference forward: computes out (nout doubles) from the inputs. */
typedef void (*RefFn)(double *out, double **inp, const int *dims);

/* f = sum(out * R); grad wrt input k by central differences. */
static void fd_grad(RefFn f, double **inp, const size_t *nin, int k, const int *dims, const double *R, size_t nout,
                    double *g)
{
    double *out = malloc(nout * sizeof(double));
    for (size_t j = 0; j < nin[k]; j++) {
        double x0 = inp[k][j], fp = 0, fm = 0;
        inp[k][j] = x0 + FD_H;
        f(out, inp, dims);
        for (size_t i = 0; i < nout; i++) fp += out[i] * R[i];
        inp[k][j] = x0 - FD_H;
        f(out, inp, dims);
        for (size_t i = 0; i < nout; i++) fm += out[i] * R[i];
        inp[k][j] = x0;
        g[j] = (fp - fm) / (2 * FD_H);
    }
    free(out);
}

/* ------------------------------------------------------------ references */

// dims: N, C, rms ; inp: x, w, b
static void ref_norm(double *out, double **in, const int *d)
{
    int N = d[0], C = d[1], rms = d[2];
    for (int i = 0; i < N; i++) {
        const double *x = in[0] + (size_t)i * C;
        double m = 0, v = 0;
        if (!rms) {
            for (int c = 0; c < C; c++) m += x[c];
            m /= C;
        }
        for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
        v /= C;
        double s = 1 / sqrt(v + 1e-5);
        for (int c = 0; c < C; c++) out[(size_t)i * C + c] = (x[c] - m) * s * in[1][c] + (rms ? 0 : in[2][c]);
    }
}

static void test_norm_kind(int rms)
{
    int N = 5, C = 24, dims[3] = {N, C, rms};
    size_t nx = (size_t)N * C;
    double *x = malloc(nx * 8), *w = malloc(C * 8), *b = malloc(C * 8), *R = malloc(nx * 8), *ref = malloc(nx * 8);
    fill(x, nx, 1.5);
    for (size_t i = 0; i < nx; i++) x[i] += 0.3; /* non-zero mean */
    fill(w, C, 1);
    fill(b, C, 1);
    fill(R, nx, 1);
    double *in[3] = {x, w, b};
    ref_norm(ref, in, dims);
    float *xf = tof(x, nx), *wf = tof(w, C), *bf = tof(b, C), *Rf = tof(R, nx);
    float *out = calloc(nx, 4), *mean = calloc(N, 4), *rstd = calloc(N, 4);
    be->norm_fwd(out, rms ? NULL : mean, rstd, xf, wf, rms ? NULL : bf, N, C, 1e-5f, rms);
    CHECKF(rel_err_fd(out, ref, nx) < FWD_TOL, "rms=%d fwd err %g", rms, rel_err_fd(out, ref, nx));
    /* fused residual add: res = a + b, out = norm(res) */
    float *a1 = calloc(nx, 4), *a2 = calloc(nx, 4), *res = calloc(nx, 4), *out2 = calloc(nx, 4);
    for (size_t i = 0; i < nx; i++) {
        a1[i] = xf[i] * 0.25f;
        a2[i] = xf[i] - a1[i];
    }
    be->add_norm_fwd(res, out2, rms ? NULL : mean, rstd, a1, a2, wf, rms ? NULL : bf, N, C, 1e-5f, rms);
    CHECKF(rel_err_fd(out2, ref, nx) < FWD_TOL, "add_norm rms=%d", rms);
    be->norm_fwd(out, rms ? NULL : mean, rstd, xf, wf, rms ? NULL : bf, N, C, 1e-5f, rms);
    /* backward: dinp accumulates into a pre-filled buffer */
    float *dx = calloc(nx, 4), *dw = calloc(C, 4), *db = calloc(C, 4);
    for (size_t i = 0; i < nx; i++) dx[i] = 0.5f;
    for (int i = 0; i < C; i++) dw[i] = 0.25f;
    be->norm_bwd(dx, dw, rms ? NULL : db, Rf, xf, wf, mean, rstd, N, C, rms);
    for (size_t i = 0; i < nx; i++) dx[i] -= 0.5f;
    for (int i = 0; i < C; i++) dw[i] -= 0.25f;
    size_t nin[3] = {nx, (size_t)C, (size_t)C};
    double *g = malloc(nx * 8);
    fd_grad(ref_norm, in, nin, 0, dims, R, nx, g);
    CHECKF(rel_err_fd(dx, g, nx) < BWD_TOL, "rms=%d dx err %g", rms, rel_err_fd(dx, g, nx));
    fd_grad(ref_norm, in, nin, 1, dims, R, nx, g);
    CHECKF(rel_err_fd(dw, g, C) < BWD_TOL, "rms=%d dw err %g", rms, rel_err_fd(dw, g, C));
    if (!rms) {
        fd_grad(ref_norm, in, nin, 2, dims, R, nx, g);
        CHECKF(rel_err_fd(db, g, C) < BWD_TOL, "db err %g", rel_err_fd(db, g, C));
    }
    free(x), free(w), free(b), free(R), free(ref), free(xf), free(wf), free(bf), free(Rf), free(out), free(mean);
    free(rstd), free(a1), free(a2), free(res), free(out2), free(dx), free(dw), free(db), free(g);
}
static void test_layernorm(void) { test_norm_kind(0); }
static void test_rmsnorm(void) { test_norm_kind(1); }

// dims: N, IC, OC ; inp: x (N,IC), w (OC,IC), b (OC)
static void ref_matmul(double *out, double **in, const int *d)
{
    int N = d[0], IC = d[1], OC = d[2];
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OC; o++) {
            double s = in[2][o];
            for (int k = 0; k < IC; k++) s += in[0][(size_t)i * IC + k] * in[1][(size_t)o * IC + k];
            out[(size_t)i * OC + o] = s;
        }
}

static void test_matmul(void)
{
    int N = 6, IC = 10, OC = 7, dims[3] = {N, IC, OC};
    size_t nx = N * IC, nw = OC * IC, no = N * OC;
    double *x = malloc(nx * 8), *w = malloc(nw * 8), *b = malloc(OC * 8), *R = malloc(no * 8), *ref = malloc(no * 8);
    fill(x, nx, 1), fill(w, nw, 1), fill(b, OC, 1), fill(R, no, 1);
    double *in[3] = {x, w, b};
    ref_matmul(ref, in, dims);
    float *xf = tof(x, nx), *wf = tof(w, nw), *bf = tof(b, OC), *Rf = tof(R, no), *out = calloc(no, 4);
    be->matmul_fwd(out, xf, wf, bf, N, IC, OC);
    CHECK(rel_err_fd(out, ref, no) < FWD_TOL);
    float *dx = calloc(nx, 4), *dw = calloc(nw, 4), *db = calloc(OC, 4);
    for (size_t i = 0; i < nw; i++) dw[i] = 1.0f; /* accumulates */
    be->matmul_bwd(dx, dw, db, Rf, xf, wf, N, IC, OC);
    for (size_t i = 0; i < nw; i++) dw[i] -= 1.0f;
    size_t nin[3] = {nx, nw, (size_t)OC};
    double *g = malloc(MAX(nx, nw) * 8);
    fd_grad(ref_matmul, in, nin, 0, dims, R, no, g);
    CHECKF(rel_err_fd(dx, g, nx) < BWD_TOL, "dx %g", rel_err_fd(dx, g, nx));
    fd_grad(ref_matmul, in, nin, 1, dims, R, no, g);
    CHECKF(rel_err_fd(dw, g, nw) < BWD_TOL, "dw %g", rel_err_fd(dw, g, nw));
    fd_grad(ref_matmul, in, nin, 2, dims, R, no, g);
    CHECKF(rel_err_fd(db, g, OC) < BWD_TOL, "db %g", rel_err_fd(db, g, OC));
    /* without bias */
    be->matmul_fwd(out, xf, wf, NULL, N, IC, OC);
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OC; o++) ref[i * OC + o] -= b[o];
    CHECK(rel_err_fd(out, ref, no) < FWD_TOL);
    free(x), free(w), free(b), free(R), free(ref), free(xf), free(wf), free(bf), free(Rf), free(out), free(dx);
    free(dw), free(db), free(g);
}

// dims: n ; gelu tanh approximation
static void ref_gelu(double *out, double **in, const int *d)
{
    for (int i = 0; i < d[0]; i++) {
        double x = in[0][i];
        out[i] = 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    }
}

// dims: N, F ; inp (N, 2F) [gate | up]
static void ref_swiglu(double *out, double **in, const int *d)
{
    int N = d[0], F = d[1];
    for (int i = 0; i < N; i++)
        for (int j = 0; j < F; j++) {
            double g = in[0][(size_t)i * 2 * F + j], u = in[0][(size_t)i * 2 * F + F + j];
            out[(size_t)i * F + j] = g / (1 + exp(-g)) * u;
        }
}

static void test_activations(void)
{
    int n = 64, dims[1] = {n};
    double *x = malloc(n * 8), *R = malloc(n * 8), *ref = malloc(n * 8), *g = malloc(n * 8);
    fill(x, n, 2), fill(R, n, 1);
    double *in[1] = {x};
    ref_gelu(ref, in, dims);
    float *xf = tof(x, n), *Rf = tof(R, n), *out = calloc(n, 4), *dx = calloc(n, 4);
    be->gelu_fwd(out, xf, n);
    CHECK(rel_err_fd(out, ref, n) < FWD_TOL);
    be->gelu_bwd(dx, xf, Rf, n);
    size_t nin[1] = {(size_t)n};
    fd_grad(ref_gelu, in, nin, 0, dims, R, n, g);
    CHECKF(rel_err_fd(dx, g, n) < BWD_TOL, "gelu %g", rel_err_fd(dx, g, n));
    /* in place (dinp aliases dout) */
    memcpy(dx, Rf, n * 4);
    be->gelu_bwd(dx, xf, dx, n);
    CHECK(rel_err_fd(dx, g, n) < BWD_TOL);
    free(x), free(R), free(ref), free(g), free(xf), free(Rf), free(out), free(dx);

    int N = 3, F = 8, sd[2] = {N, F};
    size_t ni = N * 2 * F, no = N * F;
    x = malloc(ni * 8), R = malloc(no * 8), ref = malloc(no * 8), g = malloc(ni * 8);
    fill(x, ni, 2), fill(R, no, 1);
    double *in2[1] = {x};
    ref_swiglu(ref, in2, sd);
    xf = tof(x, ni), Rf = tof(R, no), out = calloc(no, 4), dx = calloc(ni, 4);
    be->swiglu_fwd(out, xf, N, F);
    CHECK(rel_err_fd(out, ref, no) < FWD_TOL);
    be->swiglu_bwd(dx, xf, Rf, N, F);
    size_t nin2[1] = {ni};
    fd_grad(ref_swiglu, in2, nin2, 0, sd, R, no, g);
    CHECKF(rel_err_fd(dx, g, ni) < BWD_TOL, "swiglu %g", rel_err_fd(dx, g, ni));
    free(x), free(R), free(ref), free(g), free(xf), free(Rf), free(out), free(dx);
}

// dims: B, T, nh, nkv, hd ; inp: qkv (B,T,(nh+2nkv)hd) ; causal softmax attention
static void ref_attention(double *out, double **in, const int *d)
{
    int B = d[0], T = d[1], nh = d[2], nkv = d[3], hd = d[4], row = (nh + 2 * nkv) * hd;
    const double *qkv = in[0];
    double *p = malloc(T * 8);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < nh; h++) {
            int kh = h / (nh / nkv);
            for (int t = 0; t < T; t++) {
                const double *q = qkv + ((size_t)b * T + t) * row + h * hd;
                double mx = -INFINITY, sum = 0;
                for (int s = 0; s <= t; s++) {
                    const double *k = qkv + ((size_t)b * T + s) * row + (nh + kh) * hd;
                    double dot = 0;
                    for (int e = 0; e < hd; e++) dot += q[e] * k[e];
                    p[s] = dot / sqrt(hd);
                    mx = fmax(mx, p[s]);
                }
                for (int s = 0; s <= t; s++) sum += (p[s] = exp(p[s] - mx));
                double *o = out + ((size_t)b * T + t) * nh * hd + h * hd;
                for (int e = 0; e < hd; e++) {
                    double acc = 0;
                    for (int s = 0; s <= t; s++) acc += p[s] / sum * qkv[((size_t)b * T + s) * row + (nh + nkv + kh) * hd + e];
                    o[e] = acc;
                }
            }
        }
    free(p);
}

static void test_attention_shape(int nh, int nkv)
{
    int B = 2, T = 7, hd = 4, dims[5] = {B, T, nh, nkv, hd};
    size_t nin = (size_t)B * T * (nh + 2 * nkv) * hd, no = (size_t)B * T * nh * hd;
    double *x = malloc(nin * 8), *R = malloc(no * 8), *ref = malloc(no * 8), *g = malloc(nin * 8);
    fill(x, nin, 1), fill(R, no, 1);
    double *in[1] = {x};
    ref_attention(ref, in, dims);
    float *xf = tof(x, nin), *Rf = tof(R, no), *out = calloc(no, 4), *lse = calloc((size_t)B * nh * T, 4);
    float *dx = calloc(nin, 4);
    be->attention_fwd(out, lse, xf, B, T, nh, nkv, hd);
    CHECKF(rel_err_fd(out, ref, no) < FWD_TOL, "nh=%d nkv=%d fwd", nh, nkv);
    for (size_t i = 0; i < nin; i++) dx[i] = 7.0f; /* must be overwritten */
    be->attention_bwd(dx, Rf, out, lse, xf, B, T, nh, nkv, hd);
    size_t ni[1] = {nin};
    fd_grad(ref_attention, in, ni, 0, dims, R, no, g);
    CHECKF(rel_err_fd(dx, g, nin) < BWD_TOL, "nh=%d nkv=%d bwd %g", nh, nkv, rel_err_fd(dx, g, nin));
    free(x), free(R), free(ref), free(g), free(xf), free(Rf), free(out), free(lse), free(dx);
}
static void test_attention(void)
{
    test_attention_shape(2, 2); /* multi-head */
    test_attention_shape(4, 2); /* grouped-query */
    test_attention_shape(4, 1); /* multi-query */
}

// dims: B, T, nh, nkv, hd, pos0 ; rotate-half rope with theta 10000
static void ref_rope(double *out, double **in, const int *d)
{
    int B = d[0], T = d[1], nh = d[2], nkv = d[3], hd = d[4], pos0 = d[5], row = (nh + 2 * nkv) * hd;
    size_t n = (size_t)B * T * row;
    memcpy(out, in[0], n * 8);
    for (int i = 0; i < B * T; i++)
        for (int h = 0; h < nh + nkv; h++)
            for (int j = 0; j < hd / 2; j++) {
                double f = (float)(1.0 / pow(10000.0, 2.0 * j / hd));
                double ang = (float)((float)(pos0 + i % T) * (float)f);
                const double *x = in[0] + (size_t)i * row + h * hd;
                double *o = out + (size_t)i * row + h * hd;
                o[j] = x[j] * cos(ang) - x[j + hd / 2] * sin(ang);
                o[j + hd / 2] = x[j + hd / 2] * cos(ang) + x[j] * sin(ang);
            }
}

static void test_rope(void)
{
    int B = 2, T = 5, nh = 4, nkv = 2, hd = 8, pos0 = 3, dims[6] = {B, T, nh, nkv, hd, pos0};
    size_t n = (size_t)B * T * (nh + 2 * nkv) * hd;
    double *x = malloc(n * 8), *R = malloc(n * 8), *ref = malloc(n * 8), *g = malloc(n * 8);
    fill(x, n, 1), fill(R, n, 1);
    double *in[1] = {x};
    ref_rope(ref, in, dims);
    float inv_freq[4];
    for (int j = 0; j < hd / 2; j++) inv_freq[j] = (float)(1.0 / pow(10000.0, 2.0 * j / hd));
    float *xf = tof(x, n), *Rf = tof(R, n);
    be->rope_fwd(xf, inv_freq, B, T, nh, nkv, hd, pos0);
    CHECK(rel_err_fd(xf, ref, n) < FWD_TOL);
    be->rope_bwd(Rf, inv_freq, B, T, nh, nkv, hd, pos0);
    size_t ni[1] = {n};
    fd_grad(ref_rope, in, ni, 0, dims, R, n, g);
    CHECKF(rel_err_fd(Rf, g, n) < BWD_TOL, "rope %g", rel_err_fd(Rf, g, n));
    free(x), free(R), free(ref), free(g), free(xf), free(Rf);
}

// dims: B, T, C, V, P ; inp: wte (V,C), wpe (P,C); tokens fixed
static int32_t emb_tokens[] = {3, 1, 3, 0, 2, 3};
static void ref_embed(double *out, double **in, const int *d)
{
    int B = d[0], T = d[1], C = d[2];
    for (int i = 0; i < B * T; i++)
        for (int c = 0; c < C; c++)
            out[(size_t)i * C + c] = in[0][(size_t)emb_tokens[i] * C + c] + in[1][(size_t)(i % T) * C + c];
}

static void test_embed(void)
{
    int B = 2, T = 3, C = 5, V = 4, dims[3] = {B, T, C};
    size_t no = B * T * C;
    double *wte = malloc(V * C * 8), *wpe = malloc(T * C * 8), *R = malloc(no * 8), *ref = malloc(no * 8);
    double *g = malloc(V * C * 8);
    fill(wte, V * C, 1), fill(wpe, T * C, 1), fill(R, no, 1);
    double *in[2] = {wte, wpe};
    ref_embed(ref, in, dims);
    float *wf = tof(wte, V * C), *pf = tof(wpe, T * C), *Rf = tof(R, no), *out = calloc(no, 4);
    float *dw = calloc(V * C, 4), *dp = calloc(T * C, 4);
    be->embed_fwd(out, emb_tokens, wf, pf, B, T, C, 0);
    CHECK(rel_err_fd(out, ref, no) < FWD_TOL);
    be->embed_bwd(dw, dp, Rf, emb_tokens, B, T, C);
    size_t ni[2] = {(size_t)V * C, (size_t)T * C};
    fd_grad(ref_embed, in, ni, 0, dims, R, no, g);
    CHECK(rel_err_fd(dw, g, V * C) < BWD_TOL);
    fd_grad(ref_embed, in, ni, 1, dims, R, no, g);
    CHECK(rel_err_fd(dp, g, T * C) < BWD_TOL);
    free(wte), free(wpe), free(R), free(ref), free(g), free(wf), free(pf), free(Rf), free(out), free(dw), free(dp);
}

// dims: N, V ; inp logits ; out per-row loss; targets fixed (one ignored)
static int32_t xent_tg[] = {2, -1, 0, 5};
static void ref_xent(double *out, double **in, const int *d)
{
    int N = d[0], V = d[1];
    for (int i = 0; i < N; i++) {
        const double *l = in[0] + (size_t)i * V;
        if (xent_tg[i] < 0) {
            out[i] = 0;
            continue;
        }
        double mx = -INFINITY, s = 0;
        for (int j = 0; j < V; j++) mx = fmax(mx, l[j]);
        for (int j = 0; j < V; j++) s += exp(l[j] - mx);
        out[i] = mx + log(s) - l[xent_tg[i]];
    }
}

static void test_xent(void)
{
    int N = 4, V = 9, dims[2] = {N, V};
    size_t n = N * V;
    double *x = malloc(n * 8), *ref = malloc(N * 8), *g = malloc(n * 8), R[4];
    fill(x, n, 3);
    double *in[1] = {x};
    ref_xent(ref, in, dims);
    float *xf = tof(x, n), losses[4];
    float dscale = 0.37f;
    for (int i = 0; i < N; i++) R[i] = dscale;
    be->xent_fwd_bwd(losses, xf, xent_tg, N, V, dscale);
    CHECK(rel_err_fd(losses, ref, N) < FWD_TOL);
    size_t ni[1] = {n};
    fd_grad(ref_xent, in, ni, 0, dims, R, N, g);
    CHECKF(rel_err_fd(xf, g, n) < BWD_TOL, "xent %g", rel_err_fd(xf, g, n));
    /* dscale 0: logits untouched */
    float *xf2 = tof(x, n), *xf3 = tof(x, n);
    be->xent_fwd_bwd(losses, xf2, xent_tg, N, V, 0.0f);
    CHECK(memcmp(xf2, xf3, n * sizeof(float)) == 0);
    free(x), free(ref), free(g), free(xf), free(xf2), free(xf3);
}

/* The cross-entropy over vocabulary chunks (xent_chunk_stats, xent_chunk_grad), chunks of 4, 1 and 4
 * classes of the 9: the losses of the double reference, the gradient by finite differences, and the
 * target of row 0 (class 2) in the first chunk, of row 3 (class 5) in the one-class chunk. */
static void test_xent_chunks(void)
{
    int N = 4, V = 9, dims[2] = {N, V}, cut[] = {0, 4, 5, 9};
    size_t n = N * V;
    double *x = malloc(n * 8), *ref = malloc(N * 8), *g = malloc(n * 8), R[4];
    fill(x, n, 3);
    double *in[1] = {x};
    ref_xent(ref, in, dims);
    float *xf = tof(x, n), losses[4], stats[12], chunk[4 * 9], dl[4 * 9];
    float dscale = 0.37f;
    for (int pass = 0; pass < 2; pass++)
        for (int k = 0; k < 3; k++) {
            int v0 = cut[k], vc = cut[k + 1] - cut[k];
            for (int i = 0; i < N; i++) memcpy(chunk + (size_t)i * vc, xf + (size_t)i * V + v0, vc * sizeof(float));
            if (pass == 0) {
                be->xent_chunk_stats(stats, chunk, xent_tg, N, vc, v0);
                continue;
            }
            be->xent_chunk_grad(k == 0 ? losses : NULL, chunk, stats, xent_tg, N, vc, v0, dscale);
            for (int i = 0; i < N; i++) memcpy(dl + (size_t)i * V + v0, chunk + (size_t)i * vc, vc * sizeof(float));
        }
    CHECKF(rel_err_fd(losses, ref, N) < FWD_TOL, "chunked xent losses %g", rel_err_fd(losses, ref, N));
    for (int i = 0; i < N; i++) R[i] = dscale;
    size_t ni[1] = {n};
    fd_grad(ref_xent, in, ni, 0, dims, R, N, g);
    CHECKF(rel_err_fd(dl, g, n) < BWD_TOL, "chunked xent %g", rel_err_fd(dl, g, n));
    float lonly[4] = {-1, -1, -1, -1};
    be->xent_chunk_grad(lonly, NULL, stats, xent_tg, N, 0, 0, 0.0f); /* losses only */
    CHECK(memcmp(lonly, losses, sizeof(lonly)) == 0);
    free(x), free(ref), free(g), free(xf);
}

static void test_adamw(void)
{
    /* two tensors: one decayed, one not; compare to the formula in double */
    size_t n = 10;
    float p[10], g[10], m[10], v[10];
    double pd[10], md[10], vd[10];
    for (size_t i = 0; i < n; i++) {
        p[i] = (float)rng_normal(&rng);
        g[i] = (float)rng_normal(&rng);
        m[i] = (float)(0.1 * rng_normal(&rng));
        v[i] = (float)fabs(0.1 * rng_normal(&rng));
        pd[i] = p[i], md[i] = m[i], vd[i] = v[i];
    }
    OptTensor t[2] = {{0, 6, 0.1f, 1}, {6, 4, 0.0f, 1}};
    AdamHyper h = {.lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .step = 3, .grad_scale = 0.5f};
    be->adamw(p, NULL, g, m, v, t, 2, &h);
    for (size_t i = 0; i < n; i++) {
        double wd = i < 6 ? 0.1 : 0.0, gi = 0.5 * (double)g[i];
        md[i] = 0.9 * md[i] + 0.1 * gi;
        vd[i] = 0.95 * vd[i] + 0.05 * gi * gi;
        double mh = md[i] / (1 - pow(0.9, 3)), vh = vd[i] / (1 - pow(0.95, 3));
        pd[i] = pd[i] * (1 - 0.01 * wd) - 0.01 * mh / (sqrt(vh) + 1e-8);
    }
    CHECK(rel_err_fd(p, pd, n) < 1e-5);
    CHECK(rel_err_fd(m, md, n) < 1e-5);
    CHECK(rel_err_fd(v, vd, n) < 1e-5);
    /* sumsq / scale */
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)g[i] * g[i];
    CHECK_CLOSE(be->sumsq(g, n), s, 1e-12);
    be->scale(g, 2.0f, n);
    CHECK_CLOSE(be->sumsq(g, n), 4 * s, 1e-12);
}

/* ---- fused ops (appended to the table): against double references too ---- */

// dims: N, IC, OC ; inp: pre (N,IC), w (OC,IC), b (OC) ; out = gelu(pre) @ w^T + b
static void ref_gelu_linear(double *out, double **in, const int *d)
{
    int N = d[0], IC = d[1], OC = d[2];
    double *act = malloc((size_t)N * IC * 8);
    int n[1] = {N * IC};
    double *a[1] = {in[0]};
    ref_gelu(act, a, n);
    double *lin[3] = {act, in[1], in[2]};
    int md[3] = {N, IC, OC};
    ref_matmul(out, lin, md);
    free(act);
}

static void test_fused_gelu_ops(void)
{
    int N = 5, IC = 12, OC = 7, dims[3] = {N, IC, OC};
    size_t np = (size_t)N * IC, nw = (size_t)OC * IC, no = (size_t)N * OC;
    /* matmul_gelu_fwd: pre = x w^T + b, out = gelu(pre) */
    double *x = malloc(np * 8), *w1 = malloc((size_t)IC * IC * 8), *b1 = malloc(IC * 8), *pre_ref = malloc(np * 8);
    double *act_ref = malloc(np * 8);
    fill(x, np, 1), fill(w1, (size_t)IC * IC, 0.5), fill(b1, IC, 1);
    double *in1[3] = {x, w1, b1};
    int d1[3] = {N, IC, IC}, dn[1] = {(int)np};
    ref_matmul(pre_ref, in1, d1);
    double *pin[1] = {pre_ref};
    ref_gelu(act_ref, pin, dn);
    float *xf = tof(x, np), *w1f = tof(w1, (size_t)IC * IC), *b1f = tof(b1, IC);
    float *pre = calloc(np, 4), *act = calloc(np, 4);
    be->matmul_gelu_fwd(act, pre, xf, w1f, b1f, N, IC, IC);
    CHECK(rel_err_fd(pre, pre_ref, np) < FWD_TOL);
    CHECK(rel_err_fd(act, act_ref, np) < FWD_TOL);
    /* matmul_dgelu_bwd: the backward of out = gelu(pre) @ w^T + b through the activation */
    double *w = malloc(nw * 8), *b = malloc(OC * 8), *R = malloc(no * 8), *g = malloc(MAX(np, nw) * 8);
    fill(w, nw, 1), fill(b, OC, 1), fill(R, no, 1);
    double *in[3] = {pre_ref, w, b};
    float *wf = tof(w, nw), *Rf = tof(R, no), *pref = tof(pre_ref, np), *actf = calloc(np, 4);
    be->gelu_fwd(actf, pref, np);
    float *dpre = calloc(np, 4), *dbp = calloc(IC, 4), *dw = calloc(nw, 4), *db = calloc(OC, 4);
    be->matmul_dgelu_bwd(dpre, dbp, dw, db, Rf, actf, pref, wf, N, IC, OC);
    size_t nin[3] = {np, nw, (size_t)OC};
    fd_grad(ref_gelu_linear, in, nin, 0, dims, R, no, g);
    CHECKF(rel_err_fd(dpre, g, np) < BWD_TOL, "dpre %g", rel_err_fd(dpre, g, np));
    double colsum[64] = {0};
    for (int i = 0; i < N; i++)
        for (int j = 0; j < IC; j++) colsum[j] += g[(size_t)i * IC + j];
    CHECKF(rel_err_fd(dbp, colsum, IC) < BWD_TOL, "dbias_pre %g", rel_err_fd(dbp, colsum, IC));
    fd_grad(ref_gelu_linear, in, nin, 1, dims, R, no, g);
    CHECKF(rel_err_fd(dw, g, nw) < BWD_TOL, "dw %g", rel_err_fd(dw, g, nw));
    fd_grad(ref_gelu_linear, in, nin, 2, dims, R, no, g);
    CHECKF(rel_err_fd(db, g, OC) < BWD_TOL, "db %g", rel_err_fd(db, g, OC));
    free(x), free(w1), free(b1), free(pre_ref), free(act_ref), free(xf), free(w1f), free(b1f), free(pre), free(act);
    free(w), free(b), free(R), free(g), free(wf), free(Rf), free(pref), free(actf), free(dpre), free(dbp), free(dw);
    free(db);
}

// dims: N, C, V ; inp: x (N,C), w (V,C) ; per-row loss of softmax(x w^T) at xent_tg (one ignored)
static void ref_lm_head(double *out, double **in, const int *d)
{
    int N = d[0], C = d[1], V = d[2];
    double *logits = malloc((size_t)N * V * 8), *zero = calloc(V, 8);
    double *lin[3] = {in[0], in[1], zero};
    int md[3] = {N, C, V}, xd[2] = {N, V};
    ref_matmul(logits, lin, md);
    double *l[1] = {logits};
    ref_xent(out, l, xd);
    free(logits), free(zero);
}

static void test_lm_head_xent_fd(void)
{
    int N = 4, C = 6, V = 9, dims[3] = {N, C, V};
    size_t nx = (size_t)N * C, nw = (size_t)V * C;
    double *x = malloc(nx * 8), *w = malloc(nw * 8), *ref = malloc(N * 8), *g = malloc(nw * 8), R[4];
    fill(x, nx, 1), fill(w, nw, 1);
    double *in[2] = {x, w};
    ref_lm_head(ref, in, dims);
    float dscale = 0.25f, losses[4];
    for (int i = 0; i < N; i++) R[i] = dscale;
    float *xf = tof(x, nx), *wf = tof(w, nw), *dx = calloc(nx, 4), *dw = calloc(nw, 4);
    be->lm_head_xent(losses, dx, dw, xf, wf, xent_tg, N, C, V, dscale);
    CHECK(rel_err_fd(losses, ref, N) < FWD_TOL);
    size_t nin[2] = {nx, nw};
    fd_grad(ref_lm_head, in, nin, 0, dims, R, N, g);
    CHECKF(rel_err_fd(dx, g, nx) < BWD_TOL, "lm_head dx %g", rel_err_fd(dx, g, nx));
    fd_grad(ref_lm_head, in, nin, 1, dims, R, N, g);
    CHECKF(rel_err_fd(dw, g, nw) < BWD_TOL, "lm_head dw %g", rel_err_fd(dw, g, nw));
    free(x), free(w), free(ref), free(g), free(xf), free(wf), free(dx), free(dw);
}

int main(void)
{
    be = backend_cpu();
    rng_seed(&rng, 1234, 0);
    RUN(test_layernorm);
    RUN(test_rmsnorm);
    RUN(test_matmul);
    RUN(test_activations);
    RUN(test_attention);
    RUN(test_rope);
    RUN(test_embed);
    RUN(test_xent);
    RUN(test_xent_chunks);
    RUN(test_adamw);
    RUN(test_fused_gelu_ops);
    RUN(test_lm_head_xent_fd);
    return test_summary();
}
