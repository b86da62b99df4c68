/* infer.h - the forward pass for generation, with a KV cache.
 *
 * A KVCache holds, for B rows that advance together, the rotated keys and the
 * values of every layer for positions 0 .. cap-1 (backend memory, act dtype,
 * (B, nkv, cap, hd) per layer), plus the scratch activations of one chunk of
 * new tokens. model_forward_cached runs T new tokens per row at positions
 * len .. len+T-1 (the same for every row) through the model's own block (block.c),
 * appends their keys and values, and returns the logits of each row's last new
 * position. The training-time activations of the Model (model_reserve) are not
 * touched.
 */
#ifndef ANVIL_MODEL_INFER_H
#define ANVIL_MODEL_INFER_H

#include <stdint.h>

#include "model/model.h"
#include "model/moe.h"

typedef struct {
    int B, cap;    /* rows; positions per row (<= the model's max_seq_len) */
    int len;       /* positions already in the cache (same for every row) */
    int chunk;     /* most new tokens per row in one pass; longer inputs run in chunks */
    void **k, **v; /* n_layer buffers each, (B, nkv, cap, hd) act */
    /* scratch for B x chunk tokens: one set of block activations shared by every layer (the
     * block of block.c runs over them), the final norm's output and a branch scratch */
    LayerActs acts;
    void *res_final, *lnf, *mlp;
    float *lnf_mean, *lnf_rstd;
    int32_t *tokens;      /* (B*chunk) backend copy */
    int32_t *tokens_host; /* (B*chunk) */
    void *logits;         /* (B, V) act */
    float *logits_host;   /* (B, V) fp32 */
    MoeBufs moe_bufs;     /* the MoE activations of acts.moe (MoE models) */
} KVCache;

/* A cache for B rows of up to cap positions, running up to chunk new tokens per
 * row per pass (chunk <= cap; 0 means min(cap, 512)). NULL with err_set() when
 * cap exceeds the model's window. */
KVCache *kv_cache_create(const Model *m, int B, int cap, int chunk);
void kv_cache_free(const Model *m, KVCache *kv);
/* Forget every position (the next forward starts at position 0). */
static inline void kv_cache_reset(KVCache *kv)
{
    kv->len = 0;
}

/* Run tokens (B, T) host ids: row b's new tokens are tokens[b*T .. b*T+T-1], at
 * positions kv->len .. kv->len+T-1; kv->len grows by T. Returns kv->logits_host,
 * the fp32 logits (B, V) of each row's last new token. -1/NULL with err_set()
 * if the cache has no room for T more positions. */
const float *model_forward_cached(Model *m, KVCache *kv, const int32_t *tokens, int T);

#endif
