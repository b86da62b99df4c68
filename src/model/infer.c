/* infer.c - the cached forward pass for generation (infer.h).
 *
 * The blocks are those of training (block.c, model_stack_fwd), run over the new tokens only with
 * an attention context that holds the cache: q, k, v come from the same products, RoPE rotates
 * them at their absolute positions, k and v go into the cache, and attention reads every cached
 * position. When the cache is empty the new tokens attend only to each other, so the ordinary
 * causal attention_fwd (the backend's fastest kernel) does the prompt. */
#include "model/infer.h"

#include <stdlib.h>

#include "core/error.h"
#include "model/block.h"

/* Prompt tokens per pass when the caller gives no chunk size: bounds the
 * scratch memory (B x chunk x max(qkv, d_ff) elements) for long prompts. */
#define DEFAULT_CHUNK 512

KVCache *kv_cache_create(const Model *m, int B, int cap, int chunk)
{
    const ModelConfig *c = &m->cfg;
    const Backend *be = m->be;
    if (c->bidirectional)
        return err_set("%s is an encoder (bidirectional attention): it fills in masked tokens, it does not generate "
                       "text (anvil eval mlm, anvil embed)", c->hf_arch),
               NULL;
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
    LayerActs *a = &kv->acts;
    a->res = be->alloc(N * C * as);
    a->ln1 = be->alloc(N * C * as);
    a->ln2 = be->alloc(N * C * as);
    a->qkv = be->alloc(N * cfg_qkv_dim(c) * as);
    a->att = be->alloc(N * cfg_q_dim(c) * as);
    a->res2 = be->alloc(N * C * as);
    a->fch = be->alloc(N * cfg_fc_dim(c) * as);
    a->fch_act = be->alloc(N * c->d_ff * as);
    a->ln1_mean = be->alloc(N * sizeof(float));
    a->ln1_rstd = be->alloc(N * sizeof(float));
    a->ln2_mean = be->alloc(N * sizeof(float));
    a->ln2_rstd = be->alloc(N * sizeof(float));
    a->lse = be->alloc((size_t)B * c->n_head * chunk * sizeof(float));
    if (c->sub_norm) {
        a->att_sn = be->alloc(N * cfg_q_dim(c) * as);
        a->fch_sn = be->alloc(N * c->d_ff * as);
        a->att_sn_rstd = be->alloc(N * sizeof(float));
        a->fch_sn_rstd = be->alloc(N * sizeof(float));
    }
    model_lora_t_alloc(m, -1, N, a); /* one layer's adapter products, the sites of every layer: each reuses them */
    if (cfg_moe_layers(c)) a->moe = moe_acts_alloc(m, &kv->moe_bufs, (int)N, NULL, 1, 1);
    kv->res_final = be->alloc(N * C * as);
    kv->lnf = be->alloc(N * C * as);
    kv->mlp = be->alloc(N * C * as);
    kv->lnf_mean = be->alloc(N * sizeof(float));
    kv->lnf_rstd = be->alloc(N * sizeof(float));
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
    LayerActs *a = &kv->acts;
    void *bufs[] = {a->res,      a->ln1,      a->ln2,      a->qkv,      a->att,       a->res2,
                    a->fch,      a->fch_act,  a->ln1_mean, a->ln1_rstd, a->ln2_mean,  a->ln2_rstd,
                    a->lse,      kv->res_final, kv->lnf,   kv->mlp,     kv->lnf_mean, kv->lnf_rstd,
                    kv->tokens,  kv->logits};
    for (size_t i = 0; i < ARRAY_LEN(bufs); i++) be->free(bufs[i]);
    void *sub[] = {a->att_sn, a->fch_sn, a->att_sn_rstd, a->fch_sn_rstd};
    for (size_t i = 0; i < ARRAY_LEN(sub); i++)
        if (sub[i]) be->free(sub[i]);
    model_lora_t_free(m, a);
    moe_bufs_free(be, &kv->moe_bufs);
    free(kv->tokens_host);
    free(kv->logits_host);
    free(kv);
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
    m->training = 0; /* no adapter dropout in generation */
    StackBufs bufs = {.la = &kv->acts, .shared = 1, .res_final = kv->res_final, .lnf = kv->lnf,
                      .lnf_mean = kv->lnf_mean, .lnf_rstd = kv->lnf_rstd, .scratch = kv->mlp};
    int Tc = 0;
    for (int t0 = 0; t0 < T; t0 += Tc) {
        Tc = MIN(kv->chunk, T - t0);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < Tc; t++) kv->tokens_host[b * Tc + t] = tokens[(size_t)b * T + t0 + t];
        be->upload(kv->tokens, kv->tokens_host, (size_t)B * Tc * sizeof(int32_t));
        AttnCtx ctx = {.mode = ATTN_CAUSAL, .pos0 = kv->len, .kcache = kv->k, .vcache = kv->v, .cap = kv->cap};
        model_stack_fwd(m, &bufs, kv->tokens, B, Tc, &ctx);
        kv->len += Tc;
    }
    /* logits of each row's last position: row b*Tc + Tc-1 of the final norm's output */
    if (Tc == 1) {
        linear_fwd(&m->ps, &m->head, kv->logits, kv->lnf, B, NULL);
    } else {
        for (int b = 0; b < B; b++)
            linear_fwd(&m->ps, &m->head, act_at(be, kv->logits, (size_t)b * V),
                       act_at(be, kv->lnf, ((size_t)b * Tc + Tc - 1) * C), 1, NULL);
    }
    be->download_act(kv->logits_host, kv->logits, (size_t)B * V);
    return kv->logits_host;
}
