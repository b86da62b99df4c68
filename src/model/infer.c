/* infer.c - the cached forward pass for generation (infer.h).
 *
 * The block is the one of model.c (pre-norm, fused residual add + norm), run
 * over the new tokens only: their q, k, v come from the usual matmul, RoPE
 * rotates them at their absolute positions, k and v go into the cache, and
 * attention reads every cached position. When the cache is empty the new
 * tokens attend only to each other, so the ordinary causal attention_fwd (the
 * backend's fastest kernel) does the prompt. */
#include "model/infer.h"

#include <stdlib.h>

#include "core/error.h"

/* Prompt tokens per pass when the caller gives no chunk size: bounds the
 * scratch memory (B x chunk x max(qkv, d_ff) elements) for long prompts. */
#define DEFAULT_CHUNK 512

static void *Wt(const Model *m, int idx)
{
    return idx < 0 ? NULL : act_at(m->be, m->params_act, m->pt.p[idx].offset);
}

static int is_rms(const Model *m)
{
    return m->cfg.family == FAMILY_LLAMA;
}

KVCache *kv_cache_create(const Model *m, int B, int cap, int chunk)
{
    const ModelConfig *c = &m->cfg;
    const Backend *be = m->be;
    if (cap > c->max_seq_len)
        return err_set("%d positions exceed the model's window of %d tokens", cap, c->max_seq_len), NULL;
    if (B <= 0 || cap <= 0) return err_set("KV cache: %d rows x %d positions", B, cap), NULL;
    if (chunk <= 0) chunk = MIN(cap, DEFAULT_CHUNK);
    chunk = MIN(chunk, cap);
    KVCache *kv = xcalloc(1, sizeof(KVCache));
    kv->B = B;
    kv->cap = cap;
    kv->chunk = chunk;
    size_t as = be->act_size, N = (size_t)B * chunk, C = c->d_model;
    size_t per_layer = (size_t)B * c->n_kv_head * cap * c->head_dim * as;
    kv->k = xcalloc((size_t)c->n_layer, sizeof(void *));
    kv->v = xcalloc((size_t)c->n_layer, sizeof(void *));
    for (int l = 0; l < c->n_layer; l++) {
        kv->k[l] = be->alloc(per_layer);
        kv->v[l] = be->alloc(per_layer);
    }
    kv->x = be->alloc(N * C * as);
    kv->ln = be->alloc(N * C * as);
    kv->qkv = be->alloc(N * cfg_qkv_dim(c) * as);
    kv->att = be->alloc(N * cfg_q_dim(c) * as);
    kv->res2 = be->alloc(N * C * as);
    kv->fch = be->alloc(N * cfg_fc_dim(c) * as);
    kv->fch_act = be->alloc(N * c->d_ff * as);
    kv->mlp = be->alloc(N * C * as);
    kv->mean = be->alloc(N * sizeof(float));
    kv->rstd = be->alloc(N * sizeof(float));
    kv->lse = be->alloc((size_t)B * c->n_head * chunk * sizeof(float));
    kv->tokens = be->alloc(N * sizeof(int32_t));
    kv->tokens_host = xmalloc(N * sizeof(int32_t));
    kv->logits = be->alloc((size_t)B * c->vocab_size * as);
    kv->logits_host = xmalloc((size_t)B * c->vocab_size * sizeof(float));
    return kv;
}

void kv_cache_free(const Model *m, KVCache *kv)
{
    if (!kv) return;
    const Backend *be = m->be;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        be->free(kv->k[l]);
        be->free(kv->v[l]);
    }
    free(kv->k);
    free(kv->v);
    void *bufs[] = {kv->x,   kv->ln,   kv->qkv,  kv->att, kv->res2,   kv->fch,   kv->fch_act,
                    kv->mlp, kv->mean, kv->rstd, kv->lse, kv->tokens, kv->logits};
    for (size_t i = 0; i < ARRAY_LEN(bufs); i++) be->free(bufs[i]);
    free(kv->tokens_host);
    free(kv->logits_host);
    free(kv);
}

/* One pass over Tc new tokens per row (already in kv->tokens) at positions pos0..; leaves the
 * final norm's output (B*Tc, C) in kv->ln. */
static void forward_chunk(Model *m, KVCache *kv, int Tc, int pos0)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    int B = kv->B, N = B * Tc, C = c->d_model, L = c->n_layer;
    int nh = c->n_head, nkv = c->n_kv_head, hd = c->head_dim;
    be->embed_fwd(kv->x, kv->tokens, Wt(m, m->wte), Wt(m, m->wpe), B, Tc, C, pos0);
    be->norm_fwd(kv->ln, kv->mean, kv->rstd, kv->x, Wt(m, m->lp[0].ln1_w), Wt(m, m->lp[0].ln1_b), N, C,
                 c->norm_eps, is_rms(m));
    for (int l = 0; l < L; l++) {
        const LayerParams *p = &m->lp[l];
        // x (block input), ln = norm1(x) -> res2 = x + attn(ln); ln = norm2(res2); x = res2 + mlp(ln)
        be->matmul_fwd(kv->qkv, kv->ln, Wt(m, p->qkv_w), Wt(m, p->qkv_b), N, C, cfg_qkv_dim(c));
        if (c->family == FAMILY_LLAMA) be->rope_fwd(kv->qkv, m->inv_freq, B, Tc, nh, nkv, hd, pos0);
        be->kv_store(kv->k[l], kv->v[l], kv->qkv, B, Tc, nh, nkv, hd, pos0, kv->cap);
        if (pos0 == 0)
            be->attention_fwd(kv->att, kv->lse, kv->qkv, B, Tc, nh, nkv, hd);
        else
            be->attention_kv_fwd(kv->att, kv->qkv, kv->k[l], kv->v[l], B, Tc, nh, nkv, hd, pos0, kv->cap);
        be->matmul_fwd(kv->mlp, kv->att, Wt(m, p->o_w), Wt(m, p->o_b), N, cfg_q_dim(c), C);
        be->add_norm_fwd(kv->res2, kv->ln, kv->mean, kv->rstd, kv->x, kv->mlp, Wt(m, p->ln2_w),
                         Wt(m, p->ln2_b), N, C, c->norm_eps, is_rms(m));
        be->matmul_fwd(kv->fch, kv->ln, Wt(m, p->fc_w), Wt(m, p->fc_b), N, C, cfg_fc_dim(c));
        if (c->family == FAMILY_LLAMA)
            be->swiglu_fwd(kv->fch_act, kv->fch, N, c->d_ff);
        else
            be->gelu_fwd(kv->fch_act, kv->fch, (size_t)N * c->d_ff);
        be->matmul_fwd(kv->mlp, kv->fch_act, Wt(m, p->proj_w), Wt(m, p->proj_b), N, c->d_ff, C);
        /* next block's input and its first norm, or the final norm */
        int last = l + 1 == L;
        const void *nw = last ? Wt(m, m->lnf_w) : Wt(m, m->lp[l + 1].ln1_w);
        const void *nb = last ? Wt(m, m->lnf_b) : Wt(m, m->lp[l + 1].ln1_b);
        be->add_norm_fwd(kv->x, kv->ln, kv->mean, kv->rstd, kv->res2, kv->mlp, nw, nb, N, C, c->norm_eps,
                         is_rms(m));
    }
}

const float *model_forward_cached(Model *m, KVCache *kv, const int32_t *tokens, int T)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    int B = kv->B, C = c->d_model, V = c->vocab_size;
    if (T <= 0) return err_set("model_forward_cached: no new tokens"), NULL;
    if (kv->len + T > kv->cap)
        return err_set("the context is full: %d + %d tokens exceed the cache's %d positions", kv->len, T,
                       kv->cap),
               NULL;
    int Tc = 0;
    for (int t0 = 0; t0 < T; t0 += Tc) {
        Tc = MIN(kv->chunk, T - t0);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < Tc; t++) kv->tokens_host[b * Tc + t] = tokens[(size_t)b * T + t0 + t];
        be->upload(kv->tokens, kv->tokens_host, (size_t)B * Tc * sizeof(int32_t));
        forward_chunk(m, kv, Tc, kv->len);
        kv->len += Tc;
    }
    /* logits of each row's last position: row b*Tc + Tc-1 of the final norm's output */
    int out_w = m->lm_head >= 0 ? m->lm_head : m->wte;
    if (Tc == 1) {
        be->matmul_fwd(kv->logits, kv->ln, Wt(m, out_w), NULL, B, C, V);
    } else {
        for (int b = 0; b < B; b++)
            be->matmul_fwd(act_at(be, kv->logits, (size_t)b * V),
                           act_at(be, kv->ln, ((size_t)b * Tc + Tc - 1) * C), Wt(m, out_w), NULL, 1, C, V);
    }
    be->download_act(kv->logits_host, kv->logits, (size_t)B * V);
    return kv->logits_host;
}
