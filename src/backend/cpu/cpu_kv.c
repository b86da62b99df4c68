/* cpu_kv.c - the KV-cache ops (backend.h) on the CPU, fp32.
 *
 * attention_kv_fwd does the arithmetic of cpu_attention_fwd in the same order
 * (fp32 dot products, exp against the row max, a double sum, one reciprocal),
 * so attending over a cache gives the same numbers as attending over the
 * whole sequence. */
#include "backend/cpu/cpu_kv.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

/* Below this many multiply-adds an op runs on one thread: a decoding step of a small model
 * is cheaper than waking the others (and than waiting for them on a busy machine). */
#define KV_PARALLEL_MIN (1L << 16)

// kcache[b, kvh, pos0 + t, :] = k part of qkv[b, t, kvh];  same for v
void cpu_kv_store(void *kcache, void *vcache, const void *qkv_, int B, int T, int nh, int nkv, int hd,
                  int pos0, int cap)
{
    const float *qkv = qkv_;
    float *kc = kcache, *vc = vcache;
    int row = (nh + 2 * nkv) * hd;
    if (pos0 < 0 || pos0 + T > cap)
        fatal("kv_store: positions %d..%d outside the cache (%d)", pos0, pos0 + T - 1, cap);
#pragma omp parallel for collapse(2) schedule(static) if ((long)B * T * nkv * hd >= KV_PARALLEL_MIN)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *r = qkv + ((size_t)b * T + t) * row;
            for (int h = 0; h < nkv; h++) {
                size_t dst = (((size_t)b * nkv + h) * cap + (size_t)(pos0 + t)) * hd;
                memcpy(kc + dst, r + (size_t)(nh + h) * hd, (size_t)hd * sizeof(float));
                memcpy(vc + dst, r + (size_t)(nh + nkv + h) * hd, (size_t)hd * sizeof(float));
            }
        }
}

// out[b, t, h] = sum_s softmax_s(q . k_s / sqrt(hd)) v_s over cached positions s <= pos0 + t
void cpu_attention_kv_fwd(void *out_, const void *qkv_, const void *kcache, const void *vcache, int B, int T,
                          int nh, int nkv, int hd, int pos0, int cap)
{
    float *out = out_;
    const float *qkv = qkv_, *kc = kcache, *vc = vcache;
    int row = (nh + 2 * nkv) * hd, group = nh / nkv;
    float scale = 1.0f / sqrtf((float)hd);
    if (pos0 < 0 || pos0 + T > cap)
        fatal("attention_kv_fwd: positions %d..%d outside the cache (%d)", pos0, pos0 + T - 1, cap);
#pragma omp parallel if ((long)B * nh * T * (pos0 + T) * hd >= KV_PARALLEL_MIN)
    {
        float *p = xmalloc((size_t)(pos0 + T) * sizeof(float));
#pragma omp for collapse(3) schedule(static)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < nh; h++)
                for (int t = 0; t < T; t++) {
                    const float *q = qkv + ((size_t)b * T + t) * row + (size_t)h * hd;
                    const float *K = kc + ((size_t)b * nkv + h / group) * cap * hd;
                    const float *Vv = vc + ((size_t)b * nkv + h / group) * cap * hd;
                    int S = pos0 + t + 1;
                    float mx = -INFINITY;
                    for (int s = 0; s < S; s++) {
                        const float *k = K + (size_t)s * hd;
                        float dot = 0;
                        for (int d = 0; d < hd; d++) dot += q[d] * k[d];
                        p[s] = dot * scale;
                        if (p[s] > mx) mx = p[s];
                    }
                    double sum = 0;
                    for (int s = 0; s < S; s++) {
                        p[s] = expf(p[s] - mx);
                        sum += p[s];
                    }
                    float inv = (float)(1.0 / sum);
                    float *o = out + ((size_t)b * T + t) * nh * hd + (size_t)h * hd;
                    for (int d = 0; d < hd; d++) o[d] = 0;
                    for (int s = 0; s < S; s++) {
                        const float *v = Vv + (size_t)s * hd;
                        float w = p[s] * inv;
                        for (int d = 0; d < hd; d++) o[d] += w * v[d];
                    }
                }
        free(p);
    }
}
