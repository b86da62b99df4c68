/* cpu_extra.c - the fused ops appended to the op table, written with the CPU
 * backend's own ops (so they are exactly as tested as those). */
#include "backend/cpu/cpu_extra.h"

#include <stdlib.h>

#include "backend/backend.h"
#include "core/error.h"

/* Rows per chunk of the fused LM head: a 256 x V fp32 block (51 MB for the
 * GPT-2 vocabulary) instead of the whole (N,V) logits. */
#define LM_HEAD_CHUNK_ROWS 256

// for each chunk of rows: logits = inp @ w^T; losses, dlogits = xent(logits);
// dinp = dlogits @ w; dw += dlogits^T @ inp
void cpu_lm_head_xent(float *losses, void *dinp, float *dw, const void *inp, const void *w, const int32_t *targets,
                      int N, int C, int V, float dscale)
{
    const Backend *be = backend_cpu();
    int rows_max = MIN(N, LM_HEAD_CHUNK_ROWS);
    float *logits = xmalloc((size_t)rows_max * V * sizeof(float));
    for (int r0 = 0; r0 < N; r0 += rows_max) {
        int rows = MIN(rows_max, N - r0);
        const float *x = (const float *)inp + (size_t)r0 * C;
        be->matmul_fwd(logits, x, w, NULL, rows, C, V);
        be->xent_fwd_bwd(losses + r0, logits, targets + r0, rows, V, dscale);
        if (dscale != 0)
            be->matmul_bwd(dinp ? (float *)dinp + (size_t)r0 * C : NULL, dw, NULL, logits, x, w, rows, C, V);
    }
    free(logits);
}
