/* linear.h - every weight product of the model goes through these functions.
 *
 * A Linear names a weight W (out, in) and an optional bias b (out) in the parameter store:
 *   out (N, out) = inp (N, in) @ W^T + b
 * The weight's kind (params.h) is looked at in one place, linear_weight(): a trainable or frozen
 * dense weight is used as it is; a later packed kind (NF4, ternary) is turned there into what the
 * product needs. The backward overwrites dinp and ADDS the weight and bias gradients, except for a
 * weight without a gradient (frozen), whose weight-gradient product is not run at all.
 *
 * Adapters: a Linear may carry low-rank adapters (LoRA, lora.h), each covering the output rows
 * [row0, row0 + rows) of W, so that separate q/k/v (or gate/up) adapters sit on our fused weights
 * exactly as PEFT defines them:  out[:, rows] += scale * (dropout(x) @ A^T) @ B^T.  Their products
 * go through the backend's small general product (gemm). The forward keeps t = dropout(x) @ A^T
 * of each adapter (LinearBufs.t[site], (N, r)) for the backward, which then adds
 *   dB += scale * dout[:, rows]^T @ t,  dt = scale * dout[:, rows] @ B,
 *   dA += dt^T @ dropout(x),  dinp += dropout'(dt @ A)
 * (dropout regenerated from its seed, never stored).
 */
#ifndef ANVIL_MODEL_LINEAR_H
#define ANVIL_MODEL_LINEAR_H

#include "model/params.h"

typedef struct {
    int a, b;       /* parameter indices of A (r, in) and B (rows, r) */
    int row0, rows; /* output rows of W the adapter adds to */
    int r;
    int site;       /* LoraSite: the slot of its saved product in LinearBufs.t */
    float scale;    /* alpha / r (or alpha / sqrt(r), rsLoRA) */
} LinearAdapter;

/* The activation buffers a Linear's adapters use (NULL for a Linear without adapters). */
typedef struct {
    void **t;       /* t[site] (N, r): dropout(x) @ A^T of each adapter, kept from forward to backward */
    void *dt;       /* (N, r) scratch of the backward */
    void *xd;       /* (N, in) scratch for dropout(x) (dropout > 0 only) */
    float dropout;  /* probability; applied only when training */
    int training;
    int t_kept;     /* t already holds this forward's products (a recompute of the block): the forward
                     * forms only the B products from it (not for row-parallel products, whose t was summed) */
    uint64_t seed;  /* this product's dropout stream (distinct per layer, site and micro-step) */
} LinearBufs;

/* Tensor parallel (model/tp.h): how a Linear is split over the ranks of its tp group. */
typedef enum {
    LINEAR_WHOLE = 0, /* not split (no tensor parallel) */
    LINEAR_COL = 1,   /* column-parallel: this rank holds a slice of W's output rows (q/k/v heads, MLP-in,
                       * the vocabulary of the head); its input is whole, so its input gradient is a
                       * partial sum: linear_bwd all-reduces dinp over the group */
    LINEAR_ROW = 2,   /* row-parallel: this rank holds a slice of W's input columns (attention-out,
                       * MLP-out); its output is a partial sum: linear_fwd all-reduces out over the
                       * group, the bias added by the group's rank 0 only */
} LinearSplit;

struct ModelTp;

typedef struct {
    int w, b;    /* parameter indices of the weight and the bias (-1: no bias) */
    int in, out; /* W is (out, in); this rank's slice under tensor parallel */
    const LinearAdapter *adapters;
    int n_adapters;
    LinearSplit split;         /* LINEAR_WHOLE unless tp_attach split it */
    const struct ModelTp *tp;  /* the group's collectives (split != LINEAR_WHOLE) */
    int sum_by_caller;         /* split, but the caller sums the outputs (row) or input gradients (col)
                                * over the group, once for many products (an MoE layer's experts): the
                                * adapters' own sums (t, dt) stay here */
} Linear;

/* A Linear for weight w and bias b (-1 for none), its shape read from the table. */
Linear linear_make(const ParamTable *pt, int w, int b);

/* out (N, out) = inp (N, in) @ W^T + b (+ the adapters); row-parallel: then summed over the tp group */
void linear_fwd(const ParamStore *ps, const Linear *L, void *out, const void *inp, int N, const LinearBufs *lb);
/* dinp (N, in) = dout @ W (overwrite; NULL to skip) (+ the adapters' input gradient); dW += dout^T @ inp
 * and db += colsum(dout) where the tensors have gradients; the adapters' gradients. Column-parallel:
 * dinp then summed over the tp group. */
void linear_bwd(const ParamStore *ps, const Linear *L, void *dinp, const void *dout, const void *inp, int N,
                const LinearBufs *lb);

/* The product and the GELU (tanh) activation fused: pre (N, out) = inp @ W^T + b, act = gelu(pre).
 * With adapters: pre from linear_fwd, then the activation (the fused epilogue cannot see them). */
void linear_gelu_fwd(const ParamStore *ps, const Linear *L, void *act, void *pre, const void *inp, int N,
                     const LinearBufs *lb);
/* The backward of L applied to act = gelu(pre) (the MLP's second product), through the activation:
 * dpre (N, in) = (dout @ W) * gelu'(pre) (overwrite); dW += dout^T @ act; db += colsum(dout);
 * and bias_pre's gradient (the first product's bias, -1 for none) += colsum(dpre). */
void linear_gelu_bwd(const ParamStore *ps, const Linear *L, int bias_pre, void *dpre, const void *dout,
                     const void *act, const void *pre, int N, const LinearBufs *lb);

/* Scratch of a head whose weight is read by row chunks (a fused integer-ternary head, Param.chunk_rows),
 * for up to N rows: the logits of one chunk (N, chunk_rows) act, the running softmax statistics (3 N)
 * fp32 and dinp's fp32 sum over the chunks (N, in). NULL for any other head. */
typedef struct {
    void *logits;
    float *stats, *dx;
} LinearHeadBufs;

/* The output head and the softmax cross-entropy over V = L->out classes, fused and chunked so that
 * the (N, V) logits never exist whole (backend.h lm_head_xent): losses (N); with dscale != 0 also
 * dinp (N, in) (overwrite) and dW += where W has a gradient. A weight read by row chunks goes through
 * two passes over its chunks (backend.h xent_chunk_stats, xent_chunk_grad): the softmax statistics,
 * then each chunk's logits again, their gradient, its share of dinp, the chunk's weight gradient and
 * its integer update (hb: its scratch). */
void linear_head_xent(const ParamStore *ps, const Linear *L, float *losses, void *dinp, const void *inp,
                      const int32_t *targets, int N, float dscale, const LinearHeadBufs *hb);

/* FLOPs of one token through L: the forward 2*in*out; with backward also 2*in*out for dinp and,
 * when W is trainable, another 2*in*out for dW (6 or 4 per weight in all; docs/benchmarks.md);
 * each adapter's two products likewise (6 per adapter weight: they train). */
double linear_flops(const ParamStore *ps, const Linear *L, int backward);

#endif
