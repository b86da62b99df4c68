/* ternary.c - ternary quantizers and the integer-ternary update on the host (ternary.h). */
#include "model/ternary.h"

#include <math.h>
#include <string.h>

/* torch.round: half to even, which rintf gives in the default rounding mode. */
float tern_wquant(float *out, const float *w, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += fabs((double)w[i]);
    return tern_wquant_gamma(out, w, n, n ? (float)(s / (double)n) : 0.0f);
}

float tern_wquant_gamma(float *out, const float *w, size_t n, float gamma)
{
    if (gamma < TERN_EPS) gamma = TERN_EPS;
    float scale = 1.0f / gamma;
    for (size_t i = 0; i < n; i++) {
        float q = rintf(w[i] * scale);
        q = q > 1.0f ? 1.0f : q < -1.0f ? -1.0f : q;
        out[i] = q / scale;
    }
    return gamma;
}

void tern_act_quant_row(float *out, const float *x, int C)
{
    float mx = 0;
    for (int j = 0; j < C; j++) mx = fmaxf(mx, fabsf(x[j]));
    tern_act_quant_row_amax(out, x, C, mx);
}

void tern_act_quant_row_amax(float *out, const float *x, int C, float mx)
{
    if (mx < TERN_EPS) mx = TERN_EPS;
    float s = TERN_ACT_QP / mx;
    for (int j = 0; j < C; j++) {
        float q = rintf(x[j] * s);
        q = q > TERN_ACT_QP ? TERN_ACT_QP : q < TERN_ACT_QN ? TERN_ACT_QN : q;
        out[j] = q / s;
    }
}

static const int pow3[TRITS_PER_BYTE] = {1, 3, 9, 27, 81};

/* The five trits of every byte value (bytes past 242 are never written). */
static int8_t trit_lut[256][TRITS_PER_BYTE];
static int trit_lut_ready;

void tern_tables_init(void)
{
    if (trit_lut_ready) return;
    for (int v = 0; v < 256; v++)
        for (int k = 0; k < TRITS_PER_BYTE; k++) trit_lut[v][k] = (int8_t)((v / pow3[k]) % 3 - 1);
    trit_lut_ready = 1;
}

int trit_get(const uint8_t *packed, size_t i)
{
    return (packed[i / TRITS_PER_BYTE] / pow3[i % TRITS_PER_BYTE]) % 3 - 1;
}

void trit_set(uint8_t *packed, size_t i, int t)
{
    uint8_t *b = &packed[i / TRITS_PER_BYTE];
    int p = pow3[i % TRITS_PER_BYTE], old = (*b / p) % 3;
    *b = (uint8_t)(*b + (t + 1 - old) * p);
}

void trit_pack(uint8_t *packed, const int8_t *t, size_t n)
{
    size_t nb = trit_bytes(n);
    for (size_t b = 0; b < nb; b++) {
        int v = 0;
        for (int k = TRITS_PER_BYTE - 1; k >= 0; k--) {
            size_t i = b * TRITS_PER_BYTE + (size_t)k;
            v = v * 3 + (i < n ? t[i] + 1 : 1);
        }
        packed[b] = (uint8_t)v;
    }
}

void trit_unpack_i8(int8_t *t, const uint8_t *packed, size_t n)
{
    for (size_t i = 0; i < n; i++) t[i] = (int8_t)trit_get(packed, i);
}

void tern_from_f32(uint8_t *trits, int8_t *exp, const float *w, size_t n, int group)
{
    size_t ng = tern_groups(n, group);
    for (size_t b = 0; b < trit_bytes(n); b++) trits[b] = 121; /* every digit 1: trit 0 (121 = 1+3+9+27+81) */
    for (size_t g = 0; g < ng; g++) {
        size_t lo = g * (size_t)group, hi = lo + (size_t)group < n ? lo + (size_t)group : n;
        /* values already trit x 2^E (a ternary checkpoint read as floats) keep their E, however few are nonzero */
        float m = 0;
        for (size_t i = lo; i < hi; i++) m = fmaxf(m, fabsf(w[i]));
        int pe, exact = m > 0;
        if (exact && frexpf(m, &pe) == 0.5f && pe - 1 >= TERN_EXP_MIN && pe - 1 <= TERN_EXP_MAX) {
            for (size_t i = lo; i < hi && exact; i++) exact = w[i] == 0 || fabsf(w[i]) == m;
        } else {
            exact = 0;
        }
        if (exact) {
            exp[g] = (int8_t)(pe - 1);
            for (size_t i = lo; i < hi; i++) trit_set(trits, i, w[i] > 0 ? 1 : w[i] < 0 ? -1 : 0);
            continue;
        }
        double s = 0;
        for (size_t i = lo; i < hi; i++) s += fabs((double)w[i]);
        double mean = s / (double)(hi - lo);
        int e = mean > 0 ? (int)lrint(log2(mean)) : TERN_EXP_MIN;
        e = e < TERN_EXP_MIN ? TERN_EXP_MIN : e > TERN_EXP_MAX ? TERN_EXP_MAX : e;
        exp[g] = (int8_t)e;
        for (size_t i = lo; i < hi; i++) {
            double q = rint(ldexp((double)w[i], -e));
            trit_set(trits, i, q > 0 ? 1 : q < 0 ? -1 : 0);
        }
    }
}

void tern_to_f32(float *w, const uint8_t *trits, const int8_t *exp, size_t n, int group)
{
    tern_tables_init(); /* before the threads: they only read it */
    size_t nb = trit_bytes(n);
#pragma omp parallel for schedule(static)
    for (size_t b = 0; b < nb; b++) {
        const int8_t *t = trit_lut[trits[b]];
        for (int k = 0; k < TRITS_PER_BYTE; k++) {
            size_t i = b * TRITS_PER_BYTE + (size_t)k;
            if (i < n) w[i] = ldexpf((float)t[k], exp[i / (size_t)group]);
        }
    }
}

void tern_matmul_rows(float *out, const float *x, const TernaryTensor *t, const float *bias, int N, int K, int O)
{
    tern_tables_init(); /* before the threads: they only read it */
    size_t G = (size_t)t->group;
#pragma omp parallel for schedule(static)
    for (int o = 0; o < O; o++) {
        float acc[TERN_MM_SMALL_N] = {0};
        size_t f = (size_t)o * (size_t)K, end = f + (size_t)K, b = f / TRITS_PER_BYTE;
        int d = (int)(f - b * TRITS_PER_BYTE);
        const float *xr = x - f; /* xr[f + n K] is x (n, f - o K) */
        while (f < end) { /* one group's stretch of the row at a time */
            size_t g = f / G, stop = (g + 1) * G < end ? (g + 1) * G : end;
            float s[TERN_MM_SMALL_N] = {0};
            for (; f < stop; f++) {
                int tr = trit_lut[t->trits[b]][d];
                if (++d == TRITS_PER_BYTE) d = 0, b++;
                if (!tr) continue;
                for (int n = 0; n < N; n++) s[n] += (float)tr * xr[f + (size_t)n * (size_t)K];
            }
            float sc = ldexpf(1.0f, t->exp[g]);
            for (int n = 0; n < N; n++) acc[n] += s[n] * sc;
        }
        for (int n = 0; n < N; n++) out[(size_t)n * (size_t)O + (size_t)o] = acc[n] + (bias ? bias[o] : 0.0f);
    }
}

static int8_t sat8(int v) { return (int8_t)(v > 127 ? 127 : v < -128 ? -128 : v); }

void tern_update(const TernaryTensor *t, const TernaryHyper *h)
{
    tern_tables_init();
    size_t ng = tern_groups(t->n, t->group);
    int scale_step = h->scale_every > 0 && h->step % h->scale_every == 0;
    for (size_t g = 0; g < ng; g++) {
        size_t lo = g * (size_t)t->group, hi = lo + (size_t)t->group < t->n ? lo + (size_t)t->group : t->n;
        /* the sums in the order of the GPU's warp (TERN_LANES partial sums, then the butterfly) */
        double pa[TERN_LANES], pg[TERN_LANES];
        for (int j = 0; j < TERN_LANES; j++) {
            pa[j] = pg[j] = 0;
            for (size_t i = lo + (size_t)j; i < hi; i += TERN_LANES) {
                double gi = t->grad[i];
                pa[j] += fabs(gi);
                pg[j] += gi * trit_lut[t->trits[i / TRITS_PER_BYTE]][i % TRITS_PER_BYTE];
            }
        }
        for (int off = TERN_LANES / 2; off > 0; off /= 2) {
            double na[TERN_LANES], ng2[TERN_LANES];
            for (int j = 0; j < TERN_LANES; j++) na[j] = pa[j] + pa[j ^ off], ng2[j] = pg[j] + pg[j ^ off];
            memcpy(pa, na, sizeof(pa));
            memcpy(pg, ng2, sizeof(pg));
        }
        double sabs = pa[0], sg = pg[0];
        double cut = (double)h->deadzone * (sabs / (double)(hi - lo));
        for (size_t i = lo; i < hi; i++) {
            double gi = t->grad[i];
            int vote = gi == 0 || fabs(gi) < cut ? 0 : gi > 0 ? -1 : 1;
            int a = sat8(t->tacc[i] + vote);
            if (a >= h->threshold || a <= -h->threshold) {
                int tr = trit_lut[t->trits[i / TRITS_PER_BYTE]][i % TRITS_PER_BYTE] + (a > 0 ? 1 : -1);
                if (tr >= -1 && tr <= 1) trit_set(t->trits, i, tr);
                a = 0;
            }
            t->tacc[i] = (int8_t)a;
        }
        int ea = sat8(t->eacc[g] + (sg < 0 ? 1 : sg > 0 ? -1 : 0));
        if (scale_step) {
            if (2 * (ea < 0 ? -ea : ea) >= h->scale_every) {
                int e = t->exp[g] + (ea > 0 ? 1 : -1);
                t->exp[g] = (int8_t)(e < h->exp_min ? h->exp_min : e > h->exp_max ? h->exp_max : e);
            }
            ea = 0;
        }
        t->eacc[g] = (int8_t)ea;
    }
}
