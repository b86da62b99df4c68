/* block.c - the block and the stack (block.h), written once for training, evaluation and
 * generation. Every weight product goes through linear.h. */
#include "model/block.h"

#include "core/error.h"
#include "model/dropout.h"
#include "model/moe.h"
#include "model/tp.h"

static int is_rms(const Model *m) { return !cfg_layernorm(&m->cfg); }

/* The attention context of the model's last forward (recompute and backward run in its mode). */
static AttnCtx model_ctx(const Model *m)
{
    return (AttnCtx){.mode = m->cfg.bidirectional ? ATTN_BIDIRECTIONAL : ATTN_CAUSAL, .pos0 = m->cfg.pos_offset,
                     .lengths = m->cur_lengths};
}

/* The adapters' buffers of block l over activations a (NULL when the model has none). */
static const LinearBufs *lora_bufs(const Model *m, int l, LayerActs *a, LinearBufs *lb)
{
    if (!m->adapters) return NULL;
    *lb = (LinearBufs){.t = a->lora_t, .dt = m->lora_dt, .xd = m->lora_xd, .dropout = m->lora.dropout,
                       .training = m->training, .seed = m->dropout_seed * (uint64_t)m->cfg.n_layer + (uint64_t)l,
                       .t_kept = m->lora_t_kept};
    return lb;
}

/* The GELU MLP goes through the fused product + activation ops; SwiGLU (relu2-GLU for BitNet) and the
 * exact GELU (bert) through a product and the element-wise op (mlp_act_only). */
static int fused_gelu(const Model *m) { return m->cfg.family != FAMILY_LLAMA && !m->cfg.gelu_erf; }

static void glu_fwd(const Model *m, void *out, const void *inp, int N)
{
    if (m->cfg.mlp_relu2) m->be->relu2glu_fwd(out, inp, N, m->cfg.d_ff);
    else m->be->swiglu_fwd(out, inp, N, m->cfg.d_ff);
}

/* The element-wise activation after an unfused product: the exact GELU, or the gated one (SwiGLU,
 * relu2-GLU). */
static void mlp_act_only(Model *m, LayerActs *a, int N)
{
    if (m->cfg.gelu_erf) m->be->gelu_erf_fwd(a->fch_act, a->fch, (size_t)N * m->cfg.d_ff);
    else glu_fwd(m, a->fch_act, a->fch, N);
}

/* BitNet's sub-norm (RMSNorm, weight w) of an (N, n) branch activation into out; without sub-norms the
 * branch is used as it is. Returns what the next product reads. Under tensor parallel the n features are
 * this rank's slice of the row (its heads' or units'): the norm is over the whole row (tp.h). */
static const void *sub_norm_fwd(const Model *m, int w, void *out, float *rstd, const void *x, int N, int n)
{
    if (w < 0) return x;
    if (m->tp) tp_sub_norm_fwd(m->tp, m->be, out, rstd, x, params_w(&m->ps, w), N, n, m->cfg.norm_eps);
    else m->be->norm_fwd(out, NULL, rstd, x, params_w(&m->ps, w), NULL, N, n, m->cfg.norm_eps, 1);
    return out;
}

/* Its backward: dinp (N, n) += d(sub-norm)/dx of dout, and the weight's gradient. */
static void sub_norm_bwd(const Model *m, int w, void *dinp, const void *dout, const void *x, const float *rstd, int N,
                         int n)
{
    const ParamStore *ps = &m->ps;
    if (m->tp) tp_sub_norm_bwd(m->tp, m->be, dinp, params_g(ps, w), dout, x, params_w(ps, w), rstd, N, n);
    else m->be->norm_bwd(dinp, params_g(ps, w), NULL, dout, x, params_w(ps, w), NULL, rstd, N, n, 1);
}

/* fch = linear_fc(ln2) and fch_act = act(fch) of block l. The fused op is also how recompute
 * remakes fch_act, so that every recompute level gives the same bits. */
static void mlp_act_fwd(Model *m, int l, LayerActs *a, int N)
{
    const LayerParams *p = &m->lp[l];
    LinearBufs lbs;
    const LinearBufs *lb = lora_bufs(m, l, a, &lbs);
    if (fused_gelu(m)) {
        linear_gelu_fwd(&m->ps, &p->fc, a->fch_act, a->fch, a->ln2, N, lb);
        return;
    }
    linear_fwd(&m->ps, &p->fc, a->fch, a->ln2, N, lb);
    mlp_act_only(m, a, N);
}

/* Attention with dropout on its probabilities (training with cfg.attn_dropout, dropout.h). */
static void attention_drop_fwd(Model *m, int l, LayerActs *a, int B, int T, const int32_t *lengths, int causal)
{
    const ModelConfig *c = &m->cfg;
    m->be->attention_drop_fwd(a->att, a->lse, a->qkv, lengths, causal, B, T, c->n_head, c->n_kv_head, c->head_dim,
                              c->attn_dropout, model_dropout_seed(m, l, DROP_SITE_ATTN_PROBS));
}

static void attention_fwd(Model *m, int l, LayerActs *a, int B, int T, const AttnCtx *ctx)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    int nh = c->n_head, nkv = c->n_kv_head, hd = c->head_dim;
    if (ctx->mode == ATTN_BIDIRECTIONAL) {
        if (ctx->kcache) fatal("attention: a KV cache in the bidirectional mode (internal error)");
        if (model_attn_dropout(m)) attention_drop_fwd(m, l, a, B, T, ctx->lengths, 0);
        else be->attention_len_fwd(a->att, a->lse, a->qkv, ctx->lengths, B, T, nh, nkv, hd);
        return;
    }
    if (c->family == FAMILY_LLAMA) be->rope_fwd(a->qkv, m->inv_freq, B, T, nh, nkv, hd, ctx->pos0);
    if (!ctx->kcache) {
        if (model_attn_dropout(m)) attention_drop_fwd(m, l, a, B, T, NULL, 1);
        else be->attention_fwd(a->att, a->lse, a->qkv, B, T, nh, nkv, hd);
        return;
    }
    be->kv_store(ctx->kcache[l], ctx->vcache[l], a->qkv, B, T, nh, nkv, hd, ctx->pos0, ctx->cap);
    /* an empty cache: the new tokens attend only to each other (the fastest kernel does it) */
    if (ctx->pos0 == 0) be->attention_fwd(a->att, a->lse, a->qkv, B, T, nh, nkv, hd);
    else be->attention_kv_fwd(a->att, a->qkv, ctx->kcache[l], ctx->vcache[l], B, T, nh, nkv, hd, ctx->pos0, ctx->cap);
}

static void glu_bwd(const Model *m, void *dinp, const void *inp, const void *dout, int N)
{
    if (m->cfg.mlp_relu2) m->be->relu2glu_bwd(dinp, inp, dout, N, m->cfg.d_ff);
    else m->be->swiglu_bwd(dinp, inp, dout, N, m->cfg.d_ff);
}

void block_fwd(Model *m, int l, LayerActs *a, int B, int T, const AttnCtx *ctx, void *out)
{
    const ModelConfig *c = &m->cfg;
    const LayerParams *p = &m->lp[l];
    int N = B * T, C = c->d_model;
    LinearBufs lbs;
    const LinearBufs *lb = lora_bufs(m, l, a, &lbs);
    linear_fwd(&m->ps, &p->qkv, a->qkv, a->ln1, N, lb);
    attention_fwd(m, l, a, B, T, ctx);
    /* attention output projection into out, then x2 = x + it (post-LN: ln1 + it), ln2 = norm(x2) */
    const void *att = sub_norm_fwd(m, p->asub_w, a->att_sn, a->att_sn_rstd, a->att, N, cfg_q_dim(c));
    linear_fwd(&m->ps, &p->o, out, att, N, lb);
    model_dropout_fwd(m, l, DROP_SITE_ATTN_OUT, out, (size_t)N * C);
    m->be->add_norm_fwd(a->res2, a->ln2, a->ln2_mean, a->ln2_rstd, c->post_norm ? a->ln1 : a->res, out,
                        params_w(&m->ps, p->ln2_w), params_w(&m->ps, p->ln2_b), N, C, c->norm_eps, is_rms(m));
    if (p->moe) {
        moe_fwd(m, l, a, N, out, lb);
    } else {
        mlp_act_fwd(m, l, a, N);
        const void *h = sub_norm_fwd(m, p->fsub_w, a->fch_sn, a->fch_sn_rstd, a->fch_act, N, c->d_ff);
        linear_fwd(&m->ps, &p->proj, out, h, N, lb);
    }
    model_dropout_fwd(m, l, DROP_SITE_MLP_OUT, out, (size_t)N * C);
}

void model_stack_fwd(Model *m, const StackBufs *bufs, const int32_t *tokens, int B, int T, const AttnCtx *ctx)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    const ParamStore *ps = &m->ps;
    int N = B * T, C = c->d_model, L = c->n_layer;
    LayerActs *a0 = &bufs->la[0];
    int head = model_head_group(m); /* the groups (hooks, model.h): 0 embeddings, 1 + l block l */
    model_weights_need(m, 0, 1);
    /* token-type embeddings (every token of type 0) first, so that the word ids are the last lookup's
     * (the CUDA backend keeps those for embed_bwd) */
    if (m->tte >= 0) be->embed_fwd(bufs->scratch, m->types, params_w(ps, m->tte), NULL, B, T, C, 0);
    if (m->tp) { /* vocabulary-parallel (model/tp.h); ln1 (written below) holds the positions' rows */
        tp_embed_fwd(m, a0->res, a0->ln1, B, T);
    } else {
        const int32_t *ids;
        const void *wte = model_embed_table(m, tokens, N, &ids);
        be->embed_fwd(a0->res, ids, wte, params_w(ps, m->wpe), B, T, C, ctx->pos0);
    }
    if (m->tte >= 0) be->add(a0->res, a0->res, bufs->scratch, (size_t)N * C);
    if (!c->post_norm) model_dropout_fwd(m, -1, DROP_SITE_EMBED, a0->res, (size_t)N * C); /* the embedding output */
    model_weights_need(m, 1, 2);
    be->norm_fwd(a0->ln1, a0->ln1_mean, a0->ln1_rstd, a0->res, params_w(ps, m->lp[0].ln1_w),
                 params_w(ps, m->lp[0].ln1_b), N, C, c->norm_eps, is_rms(m));
    if (c->post_norm) model_dropout_fwd(m, -1, DROP_SITE_EMBED, a0->ln1, (size_t)N * C); /* after the embedding norm */
    if (head != 0) model_weights_done(m, 0); /* a tied wte is the head too (model_forward releases it) */
    for (int l = 0; l < L; l++) {
        LayerActs *a = &bufs->la[bufs->shared ? 0 : l];
        model_weights_need(m, 1 + l, 2 + l);
        block_fwd(m, l, a, B, T, ctx, bufs->scratch);
        model_weights_need(m, 2 + l, 2 + l <= L ? 3 + l : -1); /* the next ln1, or the final norm */
        /* next block's input x' = x2 + mlp (post-LN: ln2 + mlp), fused with its first norm (or the final norm) */
        const void *stream = c->post_norm ? a->ln2 : a->res2;
        if (l + 1 < L) {
            LayerActs *n = &bufs->la[bufs->shared ? 0 : l + 1];
            const LayerParams *np = &m->lp[l + 1];
            be->add_norm_fwd(n->res, n->ln1, n->ln1_mean, n->ln1_rstd, stream, bufs->scratch,
                             params_w(ps, np->ln1_w), params_w(ps, np->ln1_b), N, C, c->norm_eps, is_rms(m));
        } else {
            be->add_norm_fwd(bufs->res_final, bufs->lnf, bufs->lnf_mean, bufs->lnf_rstd, stream, bufs->scratch,
                             params_w(ps, m->lnf_w), params_w(ps, m->lnf_b), N, C, c->norm_eps, is_rms(m));
        }
        model_weights_done(m, 1 + l);
    }
}

void block_recompute(Model *m, int l, LayerActs *a, int B, int T, void *scratch)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    const LayerParams *p = &m->lp[l];
    const ParamStore *ps = &m->ps;
    int N = B * T, C = c->d_model;
    int level = model_layer_recompute(m, l);
    if (level == RECOMPUTE_NONE) return;
    be->norm_fwd(a->ln1, a->ln1_mean, a->ln1_rstd, a->res, params_w(ps, p->ln1_w), params_w(ps, p->ln1_b), N, C,
                 c->norm_eps, is_rms(m));
    if (l == 0 && c->post_norm) model_dropout_fwd(m, -1, DROP_SITE_EMBED, a->ln1, (size_t)N * C); /* the same mask */
    if (level == RECOMPUTE_BLOCK) {
        AttnCtx ctx = model_ctx(m);
        m->lora_t_kept = 1; /* the adapters' saved products (kept at every level) are the forward's */
        block_fwd(m, l, a, B, T, &ctx, scratch);
        m->lora_t_kept = 0;
        return;
    }
    be->norm_fwd(a->ln2, a->ln2_mean, a->ln2_rstd, a->res2, params_w(ps, p->ln2_w), params_w(ps, p->ln2_b), N, C,
                 c->norm_eps, is_rms(m));
    if (p->moe) moe_recompute_act(m, l, a, N);
    else if (fused_gelu(m)) mlp_act_fwd(m, l, a, N); /* the product again: fch_act as the forward made it */
    else mlp_act_only(m, a, N);
    sub_norm_fwd(m, p->asub_w, a->att_sn, a->att_sn_rstd, a->att, N, cfg_q_dim(c));
    sub_norm_fwd(m, p->fsub_w, a->fch_sn, a->fch_sn_rstd, a->fch_act, N, c->d_ff);
}

void block_bwd(Model *m, int l, LayerActs *a, int B, int T, void *dres, void *d1, void *d2)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    const LayerParams *p = &m->lp[l];
    const ParamStore *ps = &m->ps;
    int N = B * T, C = c->d_model, rms = is_rms(m);
    LinearBufs lbs;
    const LinearBufs *lb = lora_bufs(m, l, a, &lbs);
    size_t nc = (size_t)N * C;
    /* MLP: out = act(linear_fc(ln2)) through linear_proj; dres = d(block output), dmlp = d(out) (through the
     * output's dropout) */
    const void *dmlp = model_dropout_grad(m, l, DROP_SITE_MLP_OUT, dres, nc);
    if (p->moe) {
        moe_bwd(m, l, a, N, dmlp, d2, lb); /* d2 = d(ln2) */
    } else if (fused_gelu(m)) { /* d1 = d(fch) and the fc bias gradient in one op */
        linear_gelu_bwd(ps, &p->proj, p->fc.b, d1, dmlp, a->fch_act, a->fch, N, lb);
        Linear fc_nobias = p->fc;
        fc_nobias.b = -1; /* its bias gradient came with d1 */
        linear_bwd(ps, &fc_nobias, d2, d1, a->ln2, N, lb);
    } else if (p->fsub_w >= 0) { /* through ffn_sub_norm: d1 = d(fch_sn), d2 = d(fch_act) (norm_bwd adds) */
        linear_bwd(ps, &p->proj, d1, dmlp, a->fch_sn, N, lb);
        be->zero(d2, (size_t)N * c->d_ff * be->act_size);
        sub_norm_bwd(m, p->fsub_w, d2, d1, a->fch_act, a->fch_sn_rstd, N, c->d_ff);
        glu_bwd(m, d1, a->fch, d2, N);
        linear_bwd(ps, &p->fc, d2, d1, a->ln2, N, lb);
    } else {
        linear_bwd(ps, &p->proj, d2, dmlp, a->fch_act, N, lb);
        if (c->gelu_erf) be->gelu_erf_bwd(d1, a->fch, d2, (size_t)N * c->d_ff);
        else glu_bwd(m, d1, a->fch, d2, N);
        linear_bwd(ps, &p->fc, d2, d1, a->ln2, N, lb);
    }
    if (c->post_norm) { /* the output is ln2 + mlp: d(ln2) = dres + d2, and the norm's gradient replaces dres */
        be->add(d2, d2, dres, nc);
        be->zero(dres, nc * be->act_size);
    }
    be->norm_bwd(dres, params_g(ps, p->ln2_w), params_g(ps, p->ln2_b), d2, a->res2, params_w(ps, p->ln2_w),
                 a->ln2_mean, a->ln2_rstd, N, C, rms); /* dres = d(x2) */
    /* attention (through attn_sub_norm: d1 = d(att_sn), then d2 = d(att)); dout_o = d(o output) through its dropout */
    const void *dout_o = model_dropout_grad(m, l, DROP_SITE_ATTN_OUT, dres, nc);
    if (p->asub_w >= 0) {
        linear_bwd(ps, &p->o, d1, dout_o, a->att_sn, N, lb);
        be->zero(d2, (size_t)N * cfg_q_dim(c) * be->act_size);
        sub_norm_bwd(m, p->asub_w, d2, d1, a->att, a->att_sn_rstd, N, cfg_q_dim(c));
    } else {
        linear_bwd(ps, &p->o, d2, dout_o, a->att, N, lb);
    }
    if (model_attn_dropout(m))
        be->attention_drop_bwd(d1, d2, a->att, a->lse, a->qkv, c->bidirectional ? m->cur_lengths : NULL,
                               !c->bidirectional, B, T, c->n_head, c->n_kv_head, c->head_dim, c->attn_dropout,
                               model_dropout_seed(m, l, DROP_SITE_ATTN_PROBS));
    else if (c->bidirectional)
        be->attention_len_bwd(d1, d2, a->att, a->lse, a->qkv, m->cur_lengths, B, T, c->n_head, c->n_kv_head,
                              c->head_dim);
    else be->attention_bwd(d1, d2, a->att, a->lse, a->qkv, B, T, c->n_head, c->n_kv_head, c->head_dim);
    if (c->family == FAMILY_LLAMA) be->rope_bwd(d1, m->inv_freq, B, T, c->n_head, c->n_kv_head, c->head_dim, 0);
    linear_bwd(ps, &p->qkv, d2, d1, a->ln1, N, lb);
    if (c->post_norm) { /* x2 = ln1 + o: d(ln1) = d(x2) + d2 */
        be->add(d2, d2, dres, nc);
        be->zero(dres, nc * be->act_size);
        /* block 0's ln1 is the embedding norm's output after its dropout: the same mask on the gradient */
        if (l == 0) model_dropout_fwd(m, -1, DROP_SITE_EMBED, d2, nc);
    }
    be->norm_bwd(dres, params_g(ps, p->ln1_w), params_g(ps, p->ln1_b), d2, a->res, params_w(ps, p->ln1_w),
                 a->ln1_mean, a->ln1_rstd, N, C, rms); /* dres = d(x) */
}
