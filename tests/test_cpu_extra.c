/* test_cpu_extra.c - the fused CPU ops of cpu_extra.c against the plain ops
 * they fuse (which test_ops checks against double references). */
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/error.h"
#include "core/rng.h"
#include "test.h"

static float *randn(size_t n, float std, uint64_t seed)
{
    float *x = xmalloc(n * sizeof(float));
    Rng r;
    rng_seed(&r, seed, 1);
    for (size_t i = 0; i < n; i++) x[i] = (float)(std * rng_normal(&r));
    return x;
}

/* lm_head_xent over several row chunks == matmul_fwd, xent_fwd_bwd, matmul_bwd on all rows */
static void test_lm_head_xent(void)
{
    const Backend *be = backend_cpu();
    int N = 600, C = 24, V = 97; /* N spans three chunks of the fused op */
    float *x = randn((size_t)N * C, 1, 1), *w = randn((size_t)V * C, 0.5f, 2), *dw0 = randn((size_t)V * C, 1, 3);
    int32_t *tg = xmalloc(sizeof(int32_t) * N);
    for (int i = 0; i < N; i++) tg[i] = (i * 31 + 7) % V;
    tg[10] = -1;
    for (int train = 0; train < 2; train++) {
        float dscale = train ? 1.0f / N : 0.0f;
        float *logits = xmalloc(sizeof(float) * (size_t)N * V), *loss_ref = xmalloc(sizeof(float) * N);
        float *dx_ref = xcalloc((size_t)N * C, sizeof(float)), *dw_ref = xmalloc(sizeof(float) * (size_t)V * C);
        memcpy(dw_ref, dw0, sizeof(float) * (size_t)V * C);
        be->matmul_fwd(logits, x, w, NULL, N, C, V);
        be->xent_fwd_bwd(loss_ref, logits, tg, N, V, dscale);
        if (train) be->matmul_bwd(dx_ref, dw_ref, NULL, logits, x, w, N, C, V);

        float *loss = xmalloc(sizeof(float) * N), *dx = xcalloc((size_t)N * C, sizeof(float));
        float *dw = xmalloc(sizeof(float) * (size_t)V * C);
        memcpy(dw, dw0, sizeof(float) * (size_t)V * C);
        be->lm_head_xent(loss, train ? dx : NULL, train ? dw : NULL, x, w, tg, N, C, V, dscale);
        CHECK(rel_err_max(loss, loss_ref, N) < 1e-6);
        CHECK(loss[10] == 0);
        CHECK(rel_err_max(dx, dx_ref, (size_t)N * C) < 1e-6);
        CHECK(rel_err_max(dw, dw_ref, (size_t)V * C) < 1e-5); /* summed per chunk, then added */
        free(logits), free(loss_ref), free(dx_ref), free(dw_ref), free(loss), free(dx), free(dw);
    }
    free(x), free(w), free(dw0), free(tg);
}

int main(void)
{
    RUN(test_lm_head_xent);
    return test_summary();
}
