/* dropout.c - the model's hidden dropout sites and their seeds (dropout.h). */
#include "model/dropout.h"

#include "core/error.h"

/* A tag that sets the model's streams apart from the adapters' (block.c lora_bufs), whose seeds are
 * small multiples of the same micro-step seed: the first 64 bits of pi's fraction. */
#define MODEL_DROP_TAG 0x243f6a8885a308d3ULL

/* splitmix64's finalizer: a stream seed from (micro-step, layer, site) with no simple relation between
 * neighbouring ones. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t model_dropout_seed(const Model *m, int l, int site)
{
    uint64_t z = (m->dropout_seed * (uint64_t)(m->cfg.n_layer + 1) + (uint64_t)(l + 1)) * DROP_SITE_COUNT +
                 (uint64_t)site;
    return mix64(z ^ MODEL_DROP_TAG);
}

uint64_t model_jitter_seed(const Model *m, int l)
{
    return mix64(model_dropout_seed(m, l, DROP_SITE_MLP_OUT) ^ 0x6a6974746572ULL /* "jitter" */);
}

void model_dropout_fwd(const Model *m, int l, int site, void *x, size_t n)
{
    if (!model_hidden_dropout(m)) return;
    m->be->dropout(x, x, n, m->cfg.dropout, model_dropout_seed(m, l, site));
}

const void *model_dropout_grad(const Model *m, int l, int site, const void *g, size_t n)
{
    if (!model_hidden_dropout(m)) return g;
    if (!m->drop_grad || n > (size_t)m->Bmax * m->Tmax * m->cfg.d_model)
        fatal("dropout: no gradient buffer for %zu values (internal error)", n);
    m->be->dropout(m->drop_grad, g, n, m->cfg.dropout, model_dropout_seed(m, l, site));
    return m->drop_grad;
}
