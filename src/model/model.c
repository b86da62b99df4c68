/* model.c - the transformer forward and backward, written once over the op
 * table (backend.h) for both families. See model.h for the block structure. */
#include "model/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"

/* GPT-2 init (Radford et al. 2019; nanoGPT/llm.c): std 0.02 for every matrix,
 * residual output projections scaled by 1/sqrt(2 * n_layer). */
#define INIT_STD 0.02

static void *W(const Model *m, int idx)
{
    return idx < 0 ? NULL : act_at(m->be, m->params_act, m->pt.p[idx].offset);
}

static float *G(const Model *m, int idx) { return idx < 0 ? NULL : m->grads + m->pt.p[idx].offset; }

/* RoPE frequencies as HF computes them: inv_freq[i] = theta^(-2i/hd), with the
 * LLaMA-3 ("llama3" rope_type) rescaling of low frequencies when configured. */
static void rope_inv_freq(const ModelConfig *c, float *out)
{
    int hd = c->head_dim;
    for (int i = 0; i < hd / 2; i++) {
        double f = 1.0 / pow((double)c->rope_theta, (double)(2 * i) / hd);
        if (c->rope_scale_factor > 0) {
            double factor = c->rope_scale_factor, lo = c->rope_low_freq_factor, hi = c->rope_high_freq_factor;
            double old_ctx = c->rope_orig_max_pos;
            double lo_wavelen = old_ctx / lo, hi_wavelen = old_ctx / hi;
            double wavelen = 2 * M_PI / f;
            if (wavelen > lo_wavelen) f = f / factor;
            else if (wavelen >= hi_wavelen) {
                double smooth = (old_ctx / wavelen - lo) / (hi - lo);
                f = (1 - smooth) * f / factor + smooth * f;
            }
        }
        out[i] = (float)f;
    }
}

Model *model_create(const ModelConfig *cfg, const Backend *be)
{
    /* derived sizes must be filled in (a preset or parsed config goes through model_config_finish) */
    if (cfg->head_dim <= 0 || cfg->d_ff <= 0 || cfg->n_kv_head <= 0)
        fatal("model_create: unfinished model config (head_dim %d, d_ff %d, n_kv_head %d): internal error",
              cfg->head_dim, cfg->d_ff, cfg->n_kv_head);
    Model *m = xcalloc(1, sizeof(Model));
    m->cfg = *cfg;
    m->be = be;
    param_table_build(&m->pt, cfg);
    const ParamTable *pt = &m->pt;
    m->wte = param_find_role(pt, PROLE_WTE, -1);
    m->wpe = param_find_role(pt, PROLE_WPE, -1);
    m->lnf_w = param_find_role(pt, PROLE_LNF_W, -1);
    m->lnf_b = param_find_role(pt, PROLE_LNF_B, -1);
    m->lm_head = param_find_role(pt, PROLE_LM_HEAD, -1);
    m->lp = xcalloc((size_t)cfg->n_layer, sizeof(LayerParams));
    for (int l = 0; l < cfg->n_layer; l++) {
        LayerParams *p = &m->lp[l];
        p->ln1_w = param_find_role(pt, PROLE_LN1_W, l);
        p->ln1_b = param_find_role(pt, PROLE_LN1_B, l);
        p->qkv_w = param_find_role(pt, PROLE_QKV_W, l);
        p->qkv_b = param_find_role(pt, PROLE_QKV_B, l);
        p->o_w = param_find_role(pt, PROLE_O_W, l);
        p->o_b = param_find_role(pt, PROLE_O_B, l);
        p->ln2_w = param_find_role(pt, PROLE_LN2_W, l);
        p->ln2_b = param_find_role(pt, PROLE_LN2_B, l);
        p->fc_w = param_find_role(pt, PROLE_FC_W, l);
        p->fc_b = param_find_role(pt, PROLE_FC_B, l);
        p->proj_w = param_find_role(pt, PROLE_PROJ_W, l);
        p->proj_b = param_find_role(pt, PROLE_PROJ_B, l);
    }
    m->params = be->alloc(pt->total * sizeof(float));
    m->params_act = be->act_dtype == DTYPE_F32 ? (void *)m->params : be->alloc(pt->total * be->act_size);
    m->grads = be->alloc(pt->total * sizeof(float));
    if (cfg->family == FAMILY_LLAMA) {
        float *f = xmalloc(sizeof(float) * (size_t)(cfg->head_dim / 2));
        rope_inv_freq(cfg, f);
        m->inv_freq = be->alloc(sizeof(float) * (size_t)(cfg->head_dim / 2));
        be->upload(m->inv_freq, f, sizeof(float) * (size_t)(cfg->head_dim / 2));
        free(f);
    }
    return m;
}

static void free_acts(Model *m)
{
    const Backend *be = m->be;
    if (!m->la) return;
    /* Buffers shared between layers (recompute) are owned by layer 0 only. */
    for (int l = 0; l < m->cfg.n_layer; l++) {
        LayerActs *a = &m->la[l];
        void *bufs[] = {a->res, a->ln1, a->ln1_mean, a->ln1_rstd, a->qkv, a->att, a->lse, a->res2,
                        a->ln2, a->ln2_mean, a->ln2_rstd, a->fch, a->fch_act};
        for (size_t i = 0; i < ARRAY_LEN(bufs); i++) {
            if (!bufs[i]) continue;
            int shared = 0;
            if (l > 0) {
                LayerActs *a0 = &m->la[0];
                void *b0[] = {a0->res, a0->ln1, a0->ln1_mean, a0->ln1_rstd, a0->qkv, a0->att, a0->lse, a0->res2,
                              a0->ln2, a0->ln2_mean, a0->ln2_rstd, a0->fch, a0->fch_act};
                shared = bufs[i] == b0[i];
            }
            if (!shared) be->free(bufs[i]);
        }
    }
    free(m->la);
    m->la = NULL;
    void *rest[] = {m->res_final, m->lnf, m->lnf_mean, m->lnf_rstd, m->logits, m->dres, m->dbuf1,
                    m->dbuf2, m->tokens, m->targets, m->losses};
    for (size_t i = 0; i < ARRAY_LEN(rest); i++)
        if (rest[i]) be->free(rest[i]);
    free(m->losses_host);
    m->losses_host = NULL;
}

void model_free(Model *m)
{
    if (!m) return;
    const Backend *be = m->be;
    free_acts(m);
    if (m->params_act != (void *)m->params) be->free(m->params_act);
    be->free(m->params);
    be->free(m->grads);
    if (m->inv_freq) be->free(m->inv_freq);
    free(m->lp);
    param_table_free(&m->pt);
    free(m);
}

int model_reserve(Model *m, int B, int T, int recompute)
{
    const ModelConfig *c = &m->cfg;
    const Backend *be = m->be;
    if (T > c->max_seq_len)
        return err_set("sequence length %d exceeds the model's max_seq_len %d", T, c->max_seq_len);
    if (B <= 0 || T <= 0) return err_set("batch size and sequence length must be positive (got %d x %d)", B, T);
    if (m->la && B <= m->Bmax && T <= m->Tmax && recompute == m->recompute && (size_t)B * T <= (size_t)m->Bmax * m->Tmax)
        return 0;
    free_acts(m);
    size_t N = (size_t)B * T, C = c->d_model, as = be->act_size;
    size_t qkv = cfg_qkv_dim(c), qd = cfg_q_dim(c), fc = cfg_fc_dim(c), ff = c->d_ff;
    m->Bmax = B;
    m->Tmax = T;
    m->recompute = recompute;
    m->la = xcalloc((size_t)c->n_layer, sizeof(LayerActs));
    for (int l = 0; l < c->n_layer; l++) {
        LayerActs *a = &m->la[l], *a0 = &m->la[0];
        int first = l == 0;
        /* kept per layer at every level: the block input and the small statistics */
        a->res = be->alloc(N * C * as);
        a->ln1_mean = be->alloc(N * sizeof(float));
        a->ln1_rstd = be->alloc(N * sizeof(float));
        a->ln2_mean = be->alloc(N * sizeof(float));
        a->ln2_rstd = be->alloc(N * sizeof(float));
        int keep_cheap = recompute == RECOMPUTE_NONE;         /* norms and activation outputs */
        int keep_block = recompute != RECOMPUTE_BLOCK;        /* everything else */
        a->ln1 = (keep_cheap || first) ? be->alloc(N * C * as) : a0->ln1;
        a->ln2 = (keep_cheap || first) ? be->alloc(N * C * as) : a0->ln2;
        a->fch_act = (keep_cheap || first) ? be->alloc(N * ff * as) : a0->fch_act;
        a->qkv = (keep_block || first) ? be->alloc(N * qkv * as) : a0->qkv;
        a->att = (keep_block || first) ? be->alloc(N * qd * as) : a0->att;
        a->lse = (keep_block || first) ? be->alloc((size_t)B * c->n_head * T * sizeof(float)) : a0->lse;
        a->res2 = (keep_block || first) ? be->alloc(N * C * as) : a0->res2;
        a->fch = (keep_block || first) ? be->alloc(N * fc * as) : a0->fch;
    }
    m->res_final = be->alloc(N * C * as);
    m->lnf = be->alloc(N * C * as);
    m->lnf_mean = be->alloc(N * sizeof(float));
    m->lnf_rstd = be->alloc(N * sizeof(float));
    /* (N,V) logits only for forwards without targets (generation, scoring), allocated then:
     * training and evaluation go through the fused, chunked lm_head_xent instead */
    m->logits = NULL;
    m->dres = be->alloc(N * C * as);
    m->dbuf1 = be->alloc(N * MAX(MAX(C, qkv), fc) * as);
    m->dbuf2 = be->alloc(N * MAX(MAX(C, qd), ff) * as);
    m->tokens = be->alloc(N * sizeof(int32_t));
    m->targets = be->alloc(N * sizeof(int32_t));
    m->losses = be->alloc(N * sizeof(float));
    m->losses_host = xmalloc(N * sizeof(float));
    return 0;
}

void model_init_gpt2(Model *m, uint64_t seed)
{
    const ParamTable *pt = &m->pt;
    float *host = xcalloc(pt->total, sizeof(float));
    double resid_std = INIT_STD / sqrt(2.0 * m->cfg.n_layer);
    for (int i = 0; i < pt->n; i++) {
        const Param *p = &pt->p[i];
        float *x = host + p->offset;
        int is_norm_w = p->role == PROLE_LN1_W || p->role == PROLE_LN2_W || p->role == PROLE_LNF_W;
        if (is_norm_w) {
            for (size_t j = 0; j < p->numel; j++) x[j] = 1.0f;
        } else if (p->ndim == 2) {
            double std = (p->role == PROLE_O_W || p->role == PROLE_PROJ_W) ? resid_std : INIT_STD;
            Rng r;
            rng_seed(&r, seed, (uint64_t)i);
            for (size_t j = 0; j < p->numel; j++) x[j] = (float)(std * rng_normal(&r));
        } /* biases stay zero */
    }
    model_set_params(m, host);
    free(host);
}

void model_sync_act_params(Model *m)
{
    if (m->params_act != (void *)m->params) m->be->cast_to_act(m->params_act, m->params, m->pt.total);
}

void model_set_params(Model *m, const float *host)
{
    m->be->upload(m->params, host, m->pt.total * sizeof(float));
    model_sync_act_params(m);
}

void model_get_params(const Model *m, float *host)
{
    m->be->download(host, m->params, m->pt.total * sizeof(float));
}

void model_zero_grad(Model *m) { m->be->zero(m->grads, m->pt.total * sizeof(float)); }

/* ------------------------------------------------------------------ forward */

static int is_rms(const Model *m) { return m->cfg.family == FAMILY_LLAMA; }

/* Whether the GELU MLP goes through the fused ops (every backend has them; NULL = an older table). */
static int gelu_fused_fwd(const Model *m) { return m->cfg.family != FAMILY_LLAMA && m->be->matmul_gelu_fwd; }
static int gelu_fused_bwd(const Model *m) { return m->cfg.family != FAMILY_LLAMA && m->be->matmul_dgelu_bwd; }

/* fch = ln2 @ Wfc^T + b and fch_act = act(fch) of block l. The fused op is also how recompute
 * remakes fch_act, so that every recompute level gives the same bits. */
static void mlp_act_forward(Model *m, int l, int N)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    const LayerParams *p = &m->lp[l];
    LayerActs *a = &m->la[l];
    if (gelu_fused_fwd(m)) {
        be->matmul_gelu_fwd(a->fch_act, a->fch, a->ln2, W(m, p->fc_w), W(m, p->fc_b), N, c->d_model, c->d_ff);
        return;
    }
    be->matmul_fwd(a->fch, a->ln2, W(m, p->fc_w), W(m, p->fc_b), N, c->d_model, cfg_fc_dim(c));
    if (c->family == FAMILY_LLAMA) be->swiglu_fwd(a->fch_act, a->fch, N, c->d_ff);
    else be->gelu_fwd(a->fch_act, a->fch, (size_t)N * c->d_ff);
}

/* Block l from its ln1 (already computed) to its MLP output in `mlp_out` (N,C). */
static void block_forward(Model *m, int l, int B, int T, void *mlp_out)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    const LayerParams *p = &m->lp[l];
    LayerActs *a = &m->la[l];
    int N = B * T, C = c->d_model;
    be->matmul_fwd(a->qkv, a->ln1, W(m, p->qkv_w), W(m, p->qkv_b), N, C, cfg_qkv_dim(c));
    if (c->family == FAMILY_LLAMA)
        be->rope_fwd(a->qkv, m->inv_freq, B, T, c->n_head, c->n_kv_head, c->head_dim, 0);
    be->attention_fwd(a->att, a->lse, a->qkv, B, T, c->n_head, c->n_kv_head, c->head_dim);
    /* attention output projection into the scratch, then x2 = x + it, ln2 = norm(x2) */
    be->matmul_fwd(mlp_out, a->att, W(m, p->o_w), W(m, p->o_b), N, cfg_q_dim(c), C);
    be->add_norm_fwd(a->res2, a->ln2, a->ln2_mean, a->ln2_rstd, a->res, mlp_out, W(m, p->ln2_w), W(m, p->ln2_b),
                     N, C, c->norm_eps, is_rms(m));
    mlp_act_forward(m, l, N);
    be->matmul_fwd(mlp_out, a->fch_act, W(m, p->proj_w), W(m, p->proj_b), N, c->d_ff, C);
}

float model_forward(Model *m, const int32_t *inputs, const int32_t *targets, int B, int T, float loss_scale,
                    int *n_valid)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    int N = B * T, C = c->d_model, L = c->n_layer;
    if (!m->la || B * T > m->Bmax * m->Tmax || T > m->Tmax)
        fatal("model_forward: %d x %d tokens exceed the reserved %d x %d (internal error)", B, T, m->Bmax, m->Tmax);
    be->upload(m->tokens, inputs, (size_t)N * sizeof(int32_t));
    if (targets) be->upload(m->targets, targets, (size_t)N * sizeof(int32_t));

    be->embed_fwd(m->la[0].res, m->tokens, W(m, m->wte), W(m, m->wpe), B, T, C, 0);
    be->norm_fwd(m->la[0].ln1, m->la[0].ln1_mean, m->la[0].ln1_rstd, m->la[0].res, W(m, m->lp[0].ln1_w),
                 W(m, m->lp[0].ln1_b), N, C, c->norm_eps, is_rms(m));
    void *mlp_out = m->dres; /* backward scratch is free during the forward */
    for (int l = 0; l < L; l++) {
        block_forward(m, l, B, T, mlp_out);
        /* next block's input x' = x2 + mlp, fused with its first norm (or the final norm) */
        LayerActs *a = &m->la[l];
        if (l + 1 < L) {
            LayerActs *n = &m->la[l + 1];
            const LayerParams *np = &m->lp[l + 1];
            be->add_norm_fwd(n->res, n->ln1, n->ln1_mean, n->ln1_rstd, a->res2, mlp_out, W(m, np->ln1_w),
                             W(m, np->ln1_b), N, C, c->norm_eps, is_rms(m));
        } else {
            be->add_norm_fwd(m->res_final, m->lnf, m->lnf_mean, m->lnf_rstd, a->res2, mlp_out, W(m, m->lnf_w),
                             W(m, m->lnf_b), N, C, c->norm_eps, is_rms(m));
        }
    }
    int out_w = m->lm_head >= 0 ? m->lm_head : m->wte;
    if (n_valid) *n_valid = 0;
    if (!targets) {
        if (!m->logits) m->logits = be->alloc((size_t)m->Bmax * m->Tmax * c->vocab_size * be->act_size);
        be->matmul_fwd(m->logits, m->lnf, W(m, out_w), NULL, N, C, c->vocab_size);
        return 0.0f;
    }
    /* output layer + loss, and when training already their backward: dlnf into dbuf1 (where
     * model_backward starts) and Wout's gradient */
    int train = loss_scale != 0;
    be->lm_head_xent(m->losses, train ? m->dbuf1 : NULL, train ? G(m, out_w) : NULL, m->lnf, W(m, out_w),
                     m->targets, N, C, c->vocab_size, loss_scale);
    be->download(m->losses_host, m->losses, (size_t)N * sizeof(float));
    double sum = 0;
    int valid = 0;
    for (int i = 0; i < N; i++) {
        if (targets[i] < 0) continue;
        sum += m->losses_host[i];
        valid++;
    }
    if (n_valid) *n_valid = valid;
    m->cur_B = B;
    m->cur_T = T;
    return valid ? (float)(sum / valid) : 0.0f;
}

/* ----------------------------------------------------------------- backward */

/* Recreate what the recompute level dropped for block l. */
static void block_recompute(Model *m, int l, int B, int T)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    const LayerParams *p = &m->lp[l];
    LayerActs *a = &m->la[l];
    int N = B * T, C = c->d_model;
    if (m->recompute == RECOMPUTE_NONE) return;
    be->norm_fwd(a->ln1, a->ln1_mean, a->ln1_rstd, a->res, W(m, p->ln1_w), W(m, p->ln1_b), N, C, c->norm_eps,
                 is_rms(m));
    if (m->recompute == RECOMPUTE_BLOCK) {
        block_forward(m, l, B, T, m->dbuf2);
        return;
    }
    be->norm_fwd(a->ln2, a->ln2_mean, a->ln2_rstd, a->res2, W(m, p->ln2_w), W(m, p->ln2_b), N, C, c->norm_eps,
                 is_rms(m));
    if (gelu_fused_fwd(m)) mlp_act_forward(m, l, N); /* the product again: fch_act as the forward made it */
    else if (c->family == FAMILY_LLAMA) be->swiglu_fwd(a->fch_act, a->fch, N, c->d_ff);
    else be->gelu_fwd(a->fch_act, a->fch, (size_t)N * c->d_ff);
}

void model_backward(Model *m)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    int B = m->cur_B, T = m->cur_T, N = B * T, C = c->d_model;
    int rms = is_rms(m);
    void *dres = m->dres, *d1 = m->dbuf1, *d2 = m->dbuf2;

    /* d1 = dlnf and Wout's gradient were made with the loss (lm_head_xent in model_forward) */
    be->zero(dres, (size_t)N * C * be->act_size);
    be->norm_bwd(dres, G(m, m->lnf_w), G(m, m->lnf_b), d1, m->res_final, W(m, m->lnf_w), m->lnf_mean, m->lnf_rstd,
                 N, C, rms);
    for (int l = c->n_layer - 1; l >= 0; l--) {
        const LayerParams *p = &m->lp[l];
        LayerActs *a = &m->la[l];
        block_recompute(m, l, B, T);
        /* MLP: out = act(ln2 @ Wfc^T) @ Wproj^T, dres = d(block output) */
        if (gelu_fused_bwd(m)) { /* d1 = d(fch) and the fc bias gradient in one op */
            be->matmul_dgelu_bwd(d1, G(m, p->fc_b), G(m, p->proj_w), G(m, p->proj_b), dres, a->fch_act, a->fch,
                                 W(m, p->proj_w), N, c->d_ff, C);
            be->matmul_bwd(d2, G(m, p->fc_w), NULL, d1, a->ln2, W(m, p->fc_w), N, C, cfg_fc_dim(c));
        } else {
            be->matmul_bwd(d2, G(m, p->proj_w), G(m, p->proj_b), dres, a->fch_act, W(m, p->proj_w), N, c->d_ff, C);
            if (c->family == FAMILY_LLAMA) be->swiglu_bwd(d1, a->fch, d2, N, c->d_ff);
            else be->gelu_bwd(d1, a->fch, d2, (size_t)N * c->d_ff);
            be->matmul_bwd(d2, G(m, p->fc_w), G(m, p->fc_b), d1, a->ln2, W(m, p->fc_w), N, C, cfg_fc_dim(c));
        }
        be->norm_bwd(dres, G(m, p->ln2_w), G(m, p->ln2_b), d2, a->res2, W(m, p->ln2_w), a->ln2_mean, a->ln2_rstd,
                     N, C, rms); /* dres = d(x2) */
        /* attention */
        be->matmul_bwd(d2, G(m, p->o_w), G(m, p->o_b), dres, a->att, W(m, p->o_w), N, cfg_q_dim(c), C);
        be->attention_bwd(d1, d2, a->att, a->lse, a->qkv, B, T, c->n_head, c->n_kv_head, c->head_dim);
        if (c->family == FAMILY_LLAMA)
            be->rope_bwd(d1, m->inv_freq, B, T, c->n_head, c->n_kv_head, c->head_dim, 0);
        be->matmul_bwd(d2, G(m, p->qkv_w), G(m, p->qkv_b), d1, a->ln1, W(m, p->qkv_w), N, C, cfg_qkv_dim(c));
        be->norm_bwd(dres, G(m, p->ln1_w), G(m, p->ln1_b), d2, a->res, W(m, p->ln1_w), a->ln1_mean, a->ln1_rstd, N,
                     C, rms); /* dres = d(x) */
    }
    be->embed_bwd(G(m, m->wte), G(m, m->wpe), dres, m->tokens, B, T, C);
}

double model_flops_per_token(const Model *m, int T)
{
    return 6.0 * (double)param_count(&m->pt) + 6.0 * m->cfg.n_layer * m->cfg.d_model * (double)T;
}
