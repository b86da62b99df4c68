/* dropout.h - the model's own dropout while training (model.dropout, model.attn_dropout; docs/encoders.md).
 *
 * Hidden dropout (cfg.dropout) at three sites: the embedding output (bert: after the embedding
 * LayerNorm), the attention output projection and the MLP output (MoE: the combined experts), each
 * before its residual sum, in every layer. Attention dropout (cfg.attn_dropout) on the softmax
 * probabilities (backend.h attention_drop_fwd/bwd). Only while m->training; the masks are never
 * stored: the backward (and recompute) draws them again from the same seed, which is distinct per
 * micro-step (m->dropout_seed), layer and site, and apart from the adapters' streams (block.c).
 */
#ifndef ANVIL_MODEL_DROPOUT_H
#define ANVIL_MODEL_DROPOUT_H

#include "model/model.h"

enum {
    DROP_SITE_EMBED = 0,      /* the embedding output (layer -1) */
    DROP_SITE_ATTN_OUT = 1,   /* the attention output projection */
    DROP_SITE_MLP_OUT = 2,    /* the MLP (MoE) output */
    DROP_SITE_ATTN_PROBS = 3, /* the attention probabilities */
    DROP_SITE_COUNT = 4,
};

/* Whether this forward drops hidden activations / attention probabilities. */
static inline int model_hidden_dropout(const Model *m)
{
    return m->training && m->cfg.dropout > 0;
}
static inline int model_attn_dropout(const Model *m)
{
    return m->training && m->cfg.attn_dropout > 0;
}

/* The seed of layer l's (-1: the embeddings') site for the current micro-step. */
uint64_t model_dropout_seed(const Model *m, int l, int site);
/* The seed of layer l's router jitter (model.moe.router_jitter) for the current micro-step: a stream of
 * its own, apart from the dropout sites'. */
uint64_t model_jitter_seed(const Model *m, int l);
/* x (n act values) = dropout(x) in place with the site's mask; nothing unless model_hidden_dropout. */
void model_dropout_fwd(const Model *m, int l, int site, void *x, size_t n);
/* The gradient through the site's dropout: mask(g) in m->drop_grad (n <= its (N, d_model) values) when
 * model_hidden_dropout, else g itself. */
const void *model_dropout_grad(const Model *m, int l, int site, const void *g, size_t n);

#endif
