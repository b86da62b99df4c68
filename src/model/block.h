/* block.h - one transformer block, and the stack of them, for training, evaluation and cached
 * generation alike (model.h gives the block's equations).
 *
 * The attention of a block runs in a mode:
 *   ATTN_CAUSAL         each position attends to itself and the positions before it; with a KV
 *                       cache (generation) the new positions pos0.. also attend to the cached ones.
 *   ATTN_BIDIRECTIONAL  every position attends to every valid position of its sequence (encoders,
 *                       lengths[b] valid tokens per row, NULL = all T; padding is never attended
 *                       to): the backend's attention_len_fwd/bwd. No KV cache.
 */
#ifndef ANVIL_MODEL_BLOCK_H
#define ANVIL_MODEL_BLOCK_H

#include "model/model.h"

typedef enum { ATTN_CAUSAL = 0, ATTN_BIDIRECTIONAL = 1 } AttnMode;

typedef struct {
    AttnMode mode;
    int pos0;               /* absolute position of the first row of each sequence */
    void **kcache, **vcache; /* n_layer caches (backend.h kv_store layout), or NULL: no cache */
    int cap;                /* positions per cache row */
    const int32_t *lengths; /* (B) valid tokens per sequence (bidirectional), backend memory */
} AttnCtx;

/* The buffers a pass over the stack writes: the activations of each block (la[l], or la[0] for
 * every block when shared, as in generation), the final norm's output and statistics, and an
 * (N,C) scratch for branch outputs. */
typedef struct {
    LayerActs *la;
    int shared;
    void *res_final, *lnf;
    float *lnf_mean, *lnf_rstd;
    void *scratch;
} StackBufs;

/* Embeddings (tokens: backend copy (B,T)), every block, and the final norm: leaves
 * norm(x_L) in bufs->lnf. */
void model_stack_fwd(Model *m, const StackBufs *bufs, const int32_t *tokens, int B, int T, const AttnCtx *ctx);

/* Block l from its ln1 (already in a->ln1) to its MLP output in out (N,C); a->res2 and a->ln2
 * hold the attention branch's sum and the second norm. */
void block_fwd(Model *m, int l, LayerActs *a, int B, int T, const AttnCtx *ctx, void *out);
/* Recreate what the model's recompute level dropped for block l (before block_bwd). */
void block_recompute(Model *m, int l, LayerActs *a, int B, int T, void *scratch);
/* Backward of block l: dres holds d(block output) on entry and d(block input) on exit;
 * d1, d2 are scratch ((N, max(qkv, fc)) and (N, max(C, q, d_ff))). */
void block_bwd(Model *m, int l, LayerActs *a, int B, int T, void *dres, void *d1, void *d2);

#endif
