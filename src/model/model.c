/* model.c - the transformer forward and backward, written once over the op
 * table (backend.h) for both families. See model.h for the block structure. */
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"
#include "model/block.h"
#include "model/dropout.h"
#include "model/moe.h"
#include "model/tp.h"

/* GPT-2 init (Radford et al. 2019; nanoGPT/llm.c): std 0.02 for every matrix,
 * residual output projections scaled by 1/sqrt(2 * n_layer). */
#define INIT_STD 0.02
/* Values per random stream of the init: a tensor's chunks are drawn in parallel, and the result does
 * not depend on the thread count. */
#define INIT_CHUNK ((size_t)1 << 20)

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

/* The Linear of layer p that carries a weight of the role (expert e's for the routed experts). */
static Linear *adapted_linear(LayerParams *p, int role, int e)
{
    switch (role) {
    case PROLE_QKV_W: return &p->qkv;
    case PROLE_O_W: return &p->o;
    case PROLE_FC_W: return &p->fc;
    case PROLE_EXP_FC_W: return &p->exp_fc[e];
    case PROLE_EXP_PROJ_W: return &p->exp_proj[e];
    case PROLE_SH_FC_W: return &p->sh_fc;
    case PROLE_SH_PROJ_W: return &p->sh_proj;
    case PROLE_SH_GATE_W: return &p->sh_gate;
    case PROLE_ROUTER_W: return &p->router;
    default: return &p->proj;
    }
}

/* The adapters of every layer into m->adapters, each Linear pointing at its own (contiguous: sites
 * are numbered in the order of the products they sit on). */
static void attach_adapters(Model *m)
{
    const ParamTable *pt = &m->pt;
    const ModelConfig *c = &m->cfg;
    int n = 0;
    for (int i = 0; i < pt->n; i++) n += pt->p[i].role == PROLE_LORA_A;
    if (!n) return;
    m->adapters = xcalloc((size_t)n, sizeof(LinearAdapter));
    float scale = lora_scale(&m->lora);
    int k = 0;
    for (int l = 0; l < c->n_layer; l++) {
        LayerParams *p = &m->lp[l];
        /* the other sites, then each routed expert's (a pair per expert and site, transformers 4's w1 and w3
         * on one product): a Linear's adapters are consecutive */
        for (int pass = 0; pass < 1 + c->moe_experts; pass++)
            for (int s = 0; s < LORA_SITE_COUNT; s++) {
                if (lora_site_is_expert((LoraSite)s) != (pass > 0)) continue;
                int e = pass > 0 ? pass - 1 : 0;
                int a = param_find_lora_expert(pt, l, s, e, 0);
                if (a < 0) continue;
                LinearAdapter *ad = &m->adapters[k++];
                int role;
                lora_site_rows(c, (LoraSite)s, &role, &ad->row0, &ad->rows);
                ad->a = a;
                ad->b = param_find_lora_expert(pt, l, s, e, 1);
                ad->r = m->lora.r;
                ad->site = s;
                ad->scale = scale;
                Linear *L = adapted_linear(p, role, e);
                if (!L->n_adapters) L->adapters = ad;
                L->n_adapters++;
            }
    }
}

/* The table (with adapters when lora is set), the kinds, the products and the store. */
static Model *model_build(const ModelConfig *cfg, const Backend *be, const ParamKind *kinds, const LoraSpec *lora,
                          const ModelAlloc *alloc)
{
    /* derived sizes must be filled in (a preset or parsed config goes through model_config_finish) */
    if (cfg->head_dim <= 0 || cfg->d_ff <= 0 || cfg->n_kv_head <= 0)
        fatal("model_create: unfinished model config (head_dim %d, d_ff %d, n_kv_head %d): internal error",
              cfg->head_dim, cfg->d_ff, cfg->n_kv_head);
    Model *m = xcalloc(1, sizeof(Model));
    m->cfg = *cfg;
    m->be = be;
    m->recompute_layers = -1; /* every block at the reserved level */
    if (lora) m->lora = *lora;
    param_table_build_lora(&m->pt, cfg, lora);
    param_table_set_kinds(&m->pt, kinds);
    const ParamTable *pt = &m->pt;
    m->wte = param_find_role(pt, PROLE_WTE, -1);
    m->wpe = param_find_role(pt, PROLE_WPE, -1);
    m->lnf_w = param_find_role(pt, PROLE_LNF_W, -1);
    m->lnf_b = param_find_role(pt, PROLE_LNF_B, -1);
    int lm_head = param_find_role(pt, PROLE_LM_HEAD, -1);
    m->head = linear_make(pt, lm_head >= 0 ? lm_head : m->wte, -1);
    m->tte = param_find_role(pt, PROLE_TTE, -1);
    m->mlm.w = m->dec.w = -1;
    m->mlm_ln_w = param_find_role(pt, PROLE_MLM_LN_W, -1);
    m->mlm_ln_b = param_find_role(pt, PROLE_MLM_LN_B, -1);
    if (param_find_role(pt, PROLE_MLM_W, -1) >= 0) {
        m->mlm = linear_make(pt, param_find_role(pt, PROLE_MLM_W, -1), param_find_role(pt, PROLE_MLM_B, -1));
        m->dec = linear_make(pt, m->wte, param_find_role(pt, PROLE_MLM_BIAS, -1));
        m->head = m->dec;
    }
    m->lp = xcalloc((size_t)cfg->n_layer, sizeof(LayerParams));
    for (int l = 0; l < cfg->n_layer; l++) {
        LayerParams *p = &m->lp[l];
        p->ln1_w = param_find_role(pt, PROLE_LN1_W, l);
        p->ln1_b = param_find_role(pt, PROLE_LN1_B, l);
        p->ln2_w = param_find_role(pt, PROLE_LN2_W, l);
        p->ln2_b = param_find_role(pt, PROLE_LN2_B, l);
        p->asub_w = param_find_role(pt, PROLE_ATTN_SUB_W, l);
        p->fsub_w = param_find_role(pt, PROLE_FFN_SUB_W, l);
        p->qkv = linear_make(pt, param_find_role(pt, PROLE_QKV_W, l), param_find_role(pt, PROLE_QKV_B, l));
        p->o = linear_make(pt, param_find_role(pt, PROLE_O_W, l), param_find_role(pt, PROLE_O_B, l));
        if (cfg_is_moe(cfg, l)) { /* no dense MLP: the router and the experts (moe.c) */
            p->fc = p->proj = (Linear){.w = -1, .b = -1};
            moe_params_make(m, l);
            continue;
        }
        p->fc = linear_make(pt, param_find_role(pt, PROLE_FC_W, l), param_find_role(pt, PROLE_FC_B, l));
        p->proj = linear_make(pt, param_find_role(pt, PROLE_PROJ_W, l), param_find_role(pt, PROLE_PROJ_B, l));
    }
    attach_adapters(m);
    ParamAllocPlan plan = {0};
    if (alloc && alloc->plan) alloc->plan(alloc->ctx, &m->pt, &plan);
    params_alloc_plan(&m->ps, be, &m->pt, alloc && alloc->plan ? &plan : NULL);
    if (cfg->family == FAMILY_LLAMA) {
        float *f = xmalloc(sizeof(float) * (size_t)(cfg->head_dim / 2));
        rope_inv_freq(cfg, f);
        m->inv_freq = be->alloc(sizeof(float) * (size_t)(cfg->head_dim / 2));
        be->upload(m->inv_freq, f, sizeof(float) * (size_t)(cfg->head_dim / 2));
        free(f);
    }
    return m;
}

Model *model_create_kinds(const ModelConfig *cfg, const Backend *be, const ParamKind *kinds)
{
    return model_build(cfg, be, kinds, NULL, NULL);
}

Model *model_create_kinds_alloc(const ModelConfig *cfg, const Backend *be, const ParamKind *kinds,
                                const ModelAlloc *alloc)
{
    return model_build(cfg, be, kinds, NULL, alloc);
}

Model *model_create(const ModelConfig *cfg, const Backend *be) { return model_create_kinds(cfg, be, NULL); }

static int is_block_linear(int role)
{
    return role == PROLE_QKV_W || role == PROLE_O_W || role == PROLE_FC_W || role == PROLE_PROJ_W ||
           role == PROLE_EXP_FC_W || role == PROLE_EXP_PROJ_W || role == PROLE_SH_FC_W || role == PROLE_SH_PROJ_W;
}

/* The Hugging Face tensors a fused weight is made of (row ranges): llama's q/k/v and gate/up. */
static void set_parts(Param *p, const ModelConfig *c)
{
    if (c->family != FAMILY_LLAMA) return;
    if (p->role == PROLE_QKV_W) {
        p->nparts = 3;
        p->part_rows[0] = cfg_q_dim(c);
        p->part_rows[1] = p->part_rows[2] = cfg_kv_dim(c);
    } else if (p->role == PROLE_FC_W) {
        p->nparts = 2;
        p->part_rows[0] = p->part_rows[1] = c->d_ff;
    } else if (p->role == PROLE_EXP_FC_W || p->role == PROLE_SH_FC_W) { /* [w1 | w3], [gate_proj | up_proj] */
        p->nparts = 2;
        p->part_rows[0] = p->part_rows[1] = p->role == PROLE_EXP_FC_W ? c->moe_d_ff : c->moe_shared_d_ff;
    }
}

static void set_q4_parts(ParamTable *pt, const ModelConfig *c)
{
    for (int i = 0; i < pt->n; i++)
        if (pt->p[i].kind == PARAM_NF4) set_parts(&pt->p[i], c);
}

/* What model_create_lora makes of each tensor: adapters trainable (train), block linears 4-bit (q4),
 * the rest frozen. */
static ParamKind *lora_kinds(const ParamTable *pt, int train, int q4)
{
    ParamKind *kinds = xmalloc((size_t)pt->n * sizeof(ParamKind));
    for (int i = 0; i < pt->n; i++)
        kinds[i] = train && pt->p[i].site >= 0           ? PARAM_TRAIN
                 : q4 && is_block_linear(pt->p[i].role) ? PARAM_NF4
                                                         : PARAM_FROZEN;
    return kinds;
}

void param_table_lora_kinds(ParamTable *pt, const ModelConfig *cfg, int train, int q4)
{
    ParamKind *kinds = lora_kinds(pt, train, q4);
    param_table_set_kinds(pt, kinds);
    free(kinds);
    set_q4_parts(pt, cfg);
}

Model *model_create_lora(const ModelConfig *cfg, const Backend *be, const LoraSpec *lora, int train, uint64_t seed,
                         const Q4Spec *quant)
{
    return model_create_lora_alloc(cfg, be, lora, train, seed, quant, NULL);
}

Model *model_create_lora_alloc(const ModelConfig *cfg, const Backend *be, const LoraSpec *lora, int train,
                               uint64_t seed, const Q4Spec *quant, const ModelAlloc *alloc)
{
    ParamTable pt;
    param_table_build_lora(&pt, cfg, lora);
    int q4 = quant && quant->type >= 0;
    ParamKind *kinds = lora_kinds(&pt, train, q4);
    Model *m = model_build(cfg, be, kinds, lora, alloc);
    free(kinds);
    param_table_free(&pt);
    if (q4) {
        set_q4_parts(&m->pt, cfg);
        m->ps.q4_type = quant->type;
        m->ps.q4_blocksize = quant->blocksize;
        m->ps.q4_double = quant->nested;
    }
    model_init_lora(m, seed);
    return m;
}

void lora_init_tensor(const Param *p, int i, uint64_t seed, float *x)
{
    memset(x, 0, p->numel * sizeof(float));
    if (p->role == PROLE_LORA_A) { /* kaiming_uniform_(a=sqrt(5)): bound = sqrt(6 / ((1 + 5) fan_in)) */
        double bound = 1.0 / sqrt((double)p->shape[1]);
        Rng r;
        rng_seed(&r, seed, (uint64_t)i);
        for (size_t j = 0; j < p->numel; j++) x[j] = (float)((2.0 * rng_float(&r) - 1.0) * bound);
    }
}

void model_init_lora(Model *m, uint64_t seed)
{
    for (int i = 0; i < m->pt.n; i++) {
        const Param *p = &m->pt.p[i];
        if (p->site < 0) continue;
        float *x = xmalloc(p->numel * sizeof(float));
        lora_init_tensor(p, i, seed, x);
        params_upload(&m->ps, i, x);
        free(x);
    }
}

Model *model_create_frozen(const ModelConfig *cfg, const Backend *be)
{
    ParamTable pt;
    param_table_build(&pt, cfg);
    ParamKind *kinds = xmalloc((size_t)pt.n * sizeof(ParamKind));
    for (int i = 0; i < pt.n; i++) kinds[i] = PARAM_FROZEN;
    Model *m = model_create_kinds(cfg, be, kinds);
    free(kinds);
    param_table_free(&pt);
    return m;
}

/* The first layer with a dense MLP (whose fch / fch_act later dense layers share under recompute), or
 * n_layer when every layer is MoE. */
static int first_dense(const ModelConfig *c)
{
    int l = 0;
    while (l < c->n_layer && cfg_is_moe(c, l)) l++;
    return l;
}

static void free_acts(Model *m)
{
    const Backend *be = m->be;
    moe_state_free(m); /* the MoE activations and scratch */
    if (!m->la) return;
    /* Buffers shared between layers (recompute) are owned by layer 0 only. */
    for (int l = 0; l < m->cfg.n_layer; l++) {
        LayerActs *a = &m->la[l];
        void *bufs[] = {a->res, a->ln1, a->ln1_mean, a->ln1_rstd, a->qkv, a->att, a->lse, a->res2,
                        a->ln2, a->ln2_mean, a->ln2_rstd, a->fch, a->fch_act, a->att_sn, a->fch_sn,
                        a->att_sn_rstd, a->fch_sn_rstd};
        for (size_t i = 0; i < ARRAY_LEN(bufs); i++) {
            if (!bufs[i]) continue;
            int shared = 0;
            if (l > 0) {
                LayerActs *a0 = &m->la[0];
                int d = first_dense(&m->cfg);
                LayerActs *ad = &m->la[d < m->cfg.n_layer ? d : 0];
                void *b0[] = {a0->res, a0->ln1, a0->ln1_mean, a0->ln1_rstd, a0->qkv, a0->att, a0->lse, a0->res2,
                              a0->ln2, a0->ln2_mean, a0->ln2_rstd, ad->fch, ad->fch_act, a0->att_sn, a0->fch_sn,
                              a0->att_sn_rstd, a0->fch_sn_rstd};
                if (l == d) b0[11] = b0[12] = NULL; /* the first dense layer owns its own */
                shared = bufs[i] == b0[i];
            }
            if (!shared) be->free(bufs[i]);
        }
    }
    for (int l = 0; l < m->cfg.n_layer; l++) model_lora_t_free(m, &m->la[l]);
    free(m->la);
    m->la = NULL;
    if (m->lora_dt) be->free(m->lora_dt);
    if (m->lora_xd) be->free(m->lora_xd);
    m->lora_dt = m->lora_xd = NULL;
    if (m->drop_grad) be->free(m->drop_grad);
    m->drop_grad = NULL;
    if (m->logits == m->mlm_logits) m->logits = NULL; /* an encoder's logits are its head's */
    m->mlm_cap = 0;
    void *rest[] = {m->res_final, m->lnf, m->lnf_mean, m->lnf_rstd, m->logits, m->dres, m->dbuf1,
                    m->dbuf2, m->tokens, m->targets, m->losses, m->lengths, m->types, m->rows, m->mlm_x,
                    m->mlm_h, m->mlm_g, m->mlm_u, m->mlm_mean, m->mlm_rstd, m->mlm_logits,
                    m->head_bufs.logits, m->head_bufs.stats, m->head_bufs.dx, m->emb_rows, m->emb_tmp, m->emb_pos,
                    m->emb_ids, m->emb_iota};
    for (size_t i = 0; i < ARRAY_LEN(rest); i++)
        if (rest[i]) be->free(rest[i]);
    free(m->losses_host);
    free(m->rows_host);
    free(m->emb_host);
    memset(&m->head_bufs, 0, sizeof(m->head_bufs));
    m->emb_rows = m->emb_tmp = NULL;
    m->emb_pos = m->emb_ids = m->emb_iota = m->emb_host = NULL;
    m->losses_host = NULL;
    m->rows_host = NULL;
    m->lengths = m->types = m->rows = NULL;
    m->mlm_x = m->mlm_h = m->mlm_g = m->mlm_u = m->mlm_logits = NULL;
    m->mlm_mean = m->mlm_rstd = NULL;
    m->cur_lengths = NULL;
    m->act_bytes = 0;
}

void model_free(Model *m)
{
    if (!m) return;
    const Backend *be = m->be;
    tp_detach(m);
    free_acts(m);
    moe_params_free(m);
    params_free(&m->ps);
    if (m->inv_freq) be->free(m->inv_freq);
    free(m->lp);
    free(m->adapters);
    param_table_free(&m->pt);
    free(m);
}

void model_set_recompute_layers(Model *m, int k)
{
    if (k < 0) k = -1;
    if (k != m->recompute_layers) free_acts(m); /* the next model_reserve sizes the layers anew */
    m->recompute_layers = k;
}

int model_layer_recompute(const Model *m, int l)
{
    return m->recompute_layers >= 0 && l >= m->recompute_layers ? RECOMPUTE_NONE : m->recompute;
}

int model_reserve(Model *m, int B, int T, int recompute)
{
    const ModelConfig *c = &m->cfg;
    const Backend *be = m->be;
    if (T > c->max_seq_len - c->pos_offset)
        return err_set("sequence length %d exceeds the model's max_seq_len %d%s", T, c->max_seq_len - c->pos_offset,
                       c->pos_offset ? " (positions less the offset)" : "");
    if (B <= 0 || T <= 0) return err_set("batch size and sequence length must be positive (got %d x %d)", B, T);
    if (m->la && B <= m->Bmax && T <= m->Tmax && recompute == m->recompute && (size_t)B * T <= (size_t)m->Bmax * m->Tmax)
        return 0;
    free_acts(m);
    size_t before;
    be->mem_stats(&before, NULL);
    size_t N = (size_t)B * T, C = c->d_model, as = be->act_size;
    size_t qkv = cfg_qkv_dim(c), qd = cfg_q_dim(c), fc = cfg_fc_dim(c), ff = c->d_ff;
    int lora_w = 0; /* the widest adapted product's summed ranks */
    m->Bmax = B;
    m->Tmax = T;
    m->recompute = recompute;
    m->la = xcalloc((size_t)c->n_layer, sizeof(LayerActs));
    moe_state_reserve(m, (int)N);
    int dense0 = first_dense(c);
    MoeActs *moe0 = NULL; /* the first MoE layer's set, which later layers share under recompute */
    for (int l = 0; l < c->n_layer; l++) {
        LayerActs *a = &m->la[l], *a0 = &m->la[0], *ad = &m->la[dense0 < c->n_layer ? dense0 : 0];
        int first = l == 0, moe = cfg_is_moe(c, l);
        /* kept per layer at every level: the block input and the small statistics */
        a->res = be->alloc(N * C * as);
        a->ln1_mean = be->alloc(N * sizeof(float));
        a->ln1_rstd = be->alloc(N * sizeof(float));
        a->ln2_mean = be->alloc(N * sizeof(float));
        a->ln2_rstd = be->alloc(N * sizeof(float));
        /* the recomputed blocks are the first ones, so layer 0 (and the first dense or MoE layer, whose
         * buffers later recomputed layers share) is one of them whenever any block recomputes */
        int level = model_layer_recompute(m, l);
        int keep_cheap = level == RECOMPUTE_NONE;          /* norms and activation outputs */
        int keep_block = level != RECOMPUTE_BLOCK;         /* everything else */
        a->ln1 = (keep_cheap || first) ? be->alloc(N * C * as) : a0->ln1;
        a->ln2 = (keep_cheap || first) ? be->alloc(N * C * as) : a0->ln2;
        a->fch_act = moe ? NULL : (keep_cheap || l == dense0) ? be->alloc(N * ff * as) : ad->fch_act;
        a->qkv = (keep_block || first) ? be->alloc(N * qkv * as) : a0->qkv;
        a->att = (keep_block || first) ? be->alloc(N * qd * as) : a0->att;
        a->lse = (keep_block || first) ? be->alloc((size_t)B * c->n_head * T * sizeof(float)) : a0->lse;
        a->res2 = (keep_block || first) ? be->alloc(N * C * as) : a0->res2;
        a->fch = moe ? NULL : (keep_block || l == dense0) ? be->alloc(N * fc * as) : ad->fch;
        if (moe) {
            a->moe = moe_acts_alloc(m, &m->moe->bufs, (int)N, moe0, keep_block, keep_cheap);
            if (!moe0) moe0 = a->moe;
        }
        if (c->sub_norm) { /* norm outputs like ln1/ln2; their statistics per layer */
            a->att_sn = (keep_cheap || first) ? be->alloc(N * qd * as) : a0->att_sn;
            a->fch_sn = (keep_cheap || first) ? be->alloc(N * ff * as) : a0->fch_sn;
            a->att_sn_rstd = be->alloc(N * sizeof(float));
            a->fch_sn_rstd = be->alloc(N * sizeof(float));
        }
        /* small (N, r) per site ((N k, r) for the routed experts): kept at every level */
        int w = model_lora_t_alloc(m, l, N, a); /* not inside MAX, which evaluates it twice */
        lora_w = MAX(lora_w, w);
    }
    if (m->adapters) {
        /* the widest product's [dt_q | dt_k | dt_v] (an expert's rows are at most N) */
        m->lora_dt = be->alloc(N * (size_t)lora_w * as);
        size_t in = MAX(MAX(C, qd), MAX(ff, (size_t)MAX(c->moe_d_ff, c->moe_shared_d_ff)));
        if (m->lora.dropout > 0) m->lora_xd = be->alloc(N * in * as);
    }
    m->res_final = be->alloc(N * C * as);
    m->lnf = be->alloc(N * C * as);
    m->lnf_mean = be->alloc(N * sizeof(float));
    m->lnf_rstd = be->alloc(N * sizeof(float));
    /* (N,V) logits only for forwards without targets (generation, scoring), allocated then:
     * training and evaluation go through the fused, chunked lm_head_xent instead */
    m->logits = NULL;
    m->dres = be->alloc(N * C * as);
    if (c->dropout > 0) m->drop_grad = be->alloc(N * C * as); /* dropout.h */
    m->dbuf1 = be->alloc(N * MAX(MAX(C, qkv), fc) * as);
    m->dbuf2 = be->alloc(N * MAX(MAX(C, qd), ff) * as);
    m->tokens = be->alloc(N * sizeof(int32_t));
    m->targets = be->alloc(N * sizeof(int32_t));
    const Param *hp = &m->pt.p[m->head.w];
    if (hp->chunk_rows) { /* a head read by row chunks (linear.h LinearHeadBufs) */
        m->head_bufs.logits = be->alloc(N * (size_t)hp->chunk_rows * as);
        m->head_bufs.stats = be->alloc(3 * N * sizeof(float));
        m->head_bufs.dx = be->alloc(N * C * sizeof(float));
    }
    if (m->pt.p[m->wte].chunk_rows) { /* an embedding read by row chunks (model_embed_rows) */
        m->emb_rows = be->alloc(N * C * as);
        m->emb_tmp = be->alloc(N * C * as);
        m->emb_pos = be->alloc(N * sizeof(int32_t));
        m->emb_ids = be->alloc(N * sizeof(int32_t));
        m->emb_iota = be->alloc(N * sizeof(int32_t));
        m->emb_host = xmalloc(3 * N * sizeof(int32_t));
        for (size_t i = 0; i < N; i++) m->emb_host[i] = (int32_t)i;
        be->upload(m->emb_iota, m->emb_host, N * sizeof(int32_t));
    }
    m->losses = be->alloc(N * sizeof(float));
    m->losses_host = xmalloc(N * sizeof(float));
    if (c->bidirectional) {
        m->lengths = be->alloc((size_t)B * sizeof(int32_t));
        m->rows = be->alloc(N * sizeof(int32_t));
        m->rows_host = xmalloc(N * sizeof(int32_t));
    }
    if (m->tte >= 0) m->types = be->alloc(N * sizeof(int32_t)); /* zeros: one segment per sequence */
    if (m->mlm.w >= 0) {
        m->mlm_x = be->alloc(N * C * as);
        m->mlm_h = be->alloc(N * C * as);
        m->mlm_g = be->alloc(N * C * as);
        m->mlm_u = be->alloc(N * C * as);
        m->mlm_mean = be->alloc(N * sizeof(float));
        m->mlm_rstd = be->alloc(N * sizeof(float));
    }
    size_t after;
    be->mem_stats(&after, NULL);
    m->act_bytes = after - before;
    return 0;
}

/* Synthetic 4-bit weights for speed runs of large quantized models: a sample of N(0, std) quantized
 * once, its blocks tiled over the tensor (a valid state with the distribution of a quantized
 * Gaussian, made in a memcpy's time instead of quantizing billions of values). */
#define Q4_SAMPLE_BLOCKS 4096
static void init_q4_synthetic(Model *m, int i, double std, Rng *r)
{
    ParamStore *ps = &m->ps;
    const Param *p = &m->pt.p[i];
    int bs = ps->q4_blocksize;
    int64_t ns = (int64_t)Q4_SAMPLE_BLOCKS * bs;
    float *x = xmalloc((size_t)ns * sizeof(float));
    for (int64_t k = 0; k < ns; k++) x[k] = (float)(std * rng_normal(r));
    Q4Quant sample;
    if (q4_quantize(x, ns, (Q4Type)ps->q4_type, bs, ps->q4_double, &sample)) fatal_err();
    free(x);
    for (int part = 0; part < p->nparts; part++) {
        int64_t n = (int64_t)p->part_rows[part] * p->shape[1], nb = q4_nblocks(n, bs);
        Q4State s = sample.s;
        s.n = n;
        uint8_t *packed = xmalloc(q4_packed_bytes(n)), *qa = NULL;
        float *absmax = NULL, *nested = NULL;
        for (size_t o = 0; o < q4_packed_bytes(n); o += q4_packed_bytes(ns))
            memcpy(packed + o, sample.s.packed, MIN(q4_packed_bytes(ns), q4_packed_bytes(n) - o));
        s.packed = packed;
        if (s.absmax) {
            absmax = xmalloc((size_t)nb * sizeof(float));
            for (int64_t b = 0; b < nb; b++) absmax[b] = sample.absmax[b % Q4_SAMPLE_BLOCKS];
            s.absmax = absmax;
        } else {
            int64_t nn = q4_nblocks(nb, s.nested_blocksize);
            qa = xmalloc((size_t)nb);
            nested = xmalloc((size_t)nn * sizeof(float));
            for (int64_t b = 0; b < nb; b++) qa[b] = sample.qabsmax[b % Q4_SAMPLE_BLOCKS];
            for (int64_t b = 0; b < nn; b++) nested[b] = sample.nested_absmax[b % (Q4_SAMPLE_BLOCKS / s.nested_blocksize)];
            s.qabsmax = qa;
            s.nested_absmax = nested;
        }
        params_upload_q4(ps, i, part, &s);
        free(packed), free(qa), free(absmax), free(nested);
    }
    q4_quant_free(&sample);
}

void model_init_gpt2(Model *m, uint64_t seed)
{
    const ParamTable *pt = &m->pt;
    double resid_std = INIT_STD / sqrt(2.0 * m->cfg.n_layer);
    /* tensor by tensor, so a large model never needs a host copy of all its weights */
    for (int i = 0; i < pt->n; i++) {
        const Param *p = &pt->p[i];
        int is_norm_w = p->role == PROLE_LN1_W || p->role == PROLE_LN2_W || p->role == PROLE_LNF_W ||
                        p->role == PROLE_ATTN_SUB_W || p->role == PROLE_FFN_SUB_W || p->role == PROLE_MLM_LN_W;
        /* BERT's init (transformers BertPreTrainedModel) has no residual scaling */
        int resid = (p->role == PROLE_O_W || p->role == PROLE_PROJ_W || p->role == PROLE_EXP_PROJ_W ||
                     p->role == PROLE_SH_PROJ_W) && !m->cfg.post_norm;
        double std = resid ? resid_std : INIT_STD;
        Rng r;
        rng_seed(&r, seed, (uint64_t)i);
        if (p->kind == PARAM_NF4) {
            init_q4_synthetic(m, i, std, &r);
            continue;
        }
        float *x = xcalloc(p->numel, sizeof(float));
        if (is_norm_w) {
            for (size_t j = 0; j < p->numel; j++) x[j] = 1.0f;
        } else if (p->ndim == 2) { /* chunks of INIT_CHUNK values, each its own stream: threads fill them */
            size_t nchunk = (p->numel + INIT_CHUNK - 1) / INIT_CHUNK;
#pragma omp parallel for schedule(dynamic)
            for (size_t c = 0; c < nchunk; c++) {
                Rng rc;
                rng_seed(&rc, seed, ((uint64_t)i << 32) | c);
                size_t end = MIN(p->numel, (c + 1) * INIT_CHUNK);
                for (size_t j = c * INIT_CHUNK; j < end; j++) x[j] = (float)(std * rng_normal(&rc));
            }
        } /* biases stay zero */
        params_upload(&m->ps, i, x);
        free(x);
    }
}

void model_sync_act_params(Model *m) { params_sync_act(&m->ps); }

void model_set_params(Model *m, const float *host)
{
    for (int i = 0; i < m->pt.n; i++) params_upload(&m->ps, i, host + m->pt.p[i].offset);
}

void model_set_params_base(Model *m, const float *host)
{
    for (int i = 0; i < m->pt.n; i++)
        if (m->pt.p[i].site < 0) params_upload(&m->ps, i, host + m->pt.p[i].offset);
}

void model_set_params_keep_4bit(Model *m, const float *host)
{
    for (int i = 0; i < m->pt.n; i++)
        if (m->pt.p[i].kind != PARAM_NF4) params_upload(&m->ps, i, host + m->pt.p[i].offset);
}

void model_merge_adapters(const Model *m, float *host)
{
    for (int k = 0; m->adapters && k < m->pt.n; k++) {
        const Param *pa = &m->pt.p[k];
        if (pa->role != PROLE_LORA_A) continue;
        const Param *pb = &m->pt.p[param_find_lora_expert(&m->pt, pa->layer, pa->site, MAX(pa->expert, 0), 1)];
        int role, row0, rows;
        lora_site_rows(&m->cfg, (LoraSite)pa->site, &role, &row0, &rows);
        int w = pa->expert >= 0 ? param_find_expert(&m->pt, role, pa->layer, pa->expert)
                                : param_find_role(&m->pt, role, pa->layer);
        const Param *pw = &m->pt.p[w];
        int r = (int)pa->shape[0], in = (int)pa->shape[1];
        const float *A = host + pa->offset, *Bm = host + pb->offset;
        float *W = host + pw->offset + (size_t)row0 * in;
        double scale = lora_scale(&m->lora);
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < in; j++) {
                double s = 0;
                for (int q = 0; q < r; q++) s += (double)Bm[(size_t)i * r + q] * A[(size_t)q * in + j];
                W[(size_t)i * in + j] = (float)(W[(size_t)i * in + j] + scale * s);
            }
    }
}

/* The A tensor of a site in layer l (l -1: in the first layer that has it), or -1. */
static int lora_a_of(const Model *m, int l, int s)
{
    for (int k = l < 0 ? 0 : l; k < (l < 0 ? m->cfg.n_layer : l + 1); k++) {
        int ia = param_find_lora(&m->pt, k, s, 0);
        if (ia >= 0) return ia;
    }
    return -1;
}

int model_lora_t_alloc(const Model *m, int l, size_t N, LayerActs *a)
{
    const Backend *be = m->be;
    int widest = 0;
    for (int s = 0; s < LORA_SITE_COUNT; s++) a->lora_t[s] = a->lora_tb[s] = NULL;
    for (int s0 = 0; s0 < LORA_SITE_COUNT; s0++) {
        int role0, row0, rows;
        if (a->lora_t[s0] || lora_a_of(m, l, s0) < 0) continue;
        lora_site_rows(&m->cfg, (LoraSite)s0, &role0, &row0, &rows);
        int width = 0, role;
        for (int s = s0; s < LORA_SITE_COUNT; s++) { /* the sites on s0's product, in the order of its adapters */
            int ia = lora_a_of(m, l, s);
            if (ia < 0) continue;
            lora_site_rows(&m->cfg, (LoraSite)s, &role, &row0, &rows);
            if (role == role0) width += (int)m->pt.p[ia].shape[0];
        }
        size_t rows_t = lora_site_is_expert((LoraSite)s0) ? N * (size_t)m->cfg.moe_top_k : N; /* every routed slot */
        void *blk = a->lora_tb[s0] = be->alloc(rows_t * (size_t)width * be->act_size);
        for (int s = s0, off = 0; s < LORA_SITE_COUNT; s++) {
            int ia = lora_a_of(m, l, s);
            if (ia < 0) continue;
            lora_site_rows(&m->cfg, (LoraSite)s, &role, &row0, &rows);
            if (role != role0) continue;
            a->lora_t[s] = act_at(be, blk, (size_t)off);
            off += (int)m->pt.p[ia].shape[0];
        }
        widest = MAX(widest, width);
    }
    return widest;
}

void model_lora_t_free(const Model *m, LayerActs *a)
{
    for (int s = 0; s < LORA_SITE_COUNT; s++) {
        if (a->lora_tb[s]) m->be->free(a->lora_tb[s]);
        a->lora_t[s] = a->lora_tb[s] = NULL;
    }
}

void model_get_params(const Model *m, float *host)
{
    for (int i = 0; i < m->pt.n; i++) params_download(&m->ps, i, host + m->pt.p[i].offset);
}

void model_get_grads(const Model *m, float *host)
{
    for (int i = 0; i < m->pt.n; i++) {
        const Param *p = &m->pt.p[i];
        const float *g = params_g(&m->ps, i);
        if (g) m->be->download(host + p->offset, g, p->numel * sizeof(float));
        else memset(host + p->offset, 0, p->numel * sizeof(float));
    }
}

void model_set_grads(Model *m, const float *host)
{
    for (int i = 0; i < m->pt.n; i++) {
        float *g = params_g(&m->ps, i);
        if (g) m->be->upload(g, host + m->pt.p[i].offset, m->pt.p[i].numel * sizeof(float));
    }
}

void model_zero_grad(Model *m) { params_zero_grad(&m->ps); }

/* ------------------------------------------------------------------ forward */

static StackBufs train_bufs(Model *m)
{
    return (StackBufs){.la = m->la, .shared = 0, .res_final = m->res_final, .lnf = m->lnf,
                       .lnf_mean = m->lnf_mean, .lnf_rstd = m->lnf_rstd,
                       .scratch = m->dres}; /* backward scratch is free during the forward */
}

/* The forward is done with the final norm and the head (backward gathers the final norm again). */
static void head_done(const Model *m)
{
    model_weights_done(m, m->cfg.n_layer + 1);
    if (model_head_group(m) == 0) model_weights_done(m, 0);
}

/* The MLM head over M rows x (M,C) into m->mlm_logits (M,V): dense, exact GELU, LayerNorm, decoder
 * (with decode 0: all but the decoder, whose input is m->mlm_u). */
static void mlm_head_fwd(Model *m, const void *x, int M, int decode)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    const ParamStore *ps = &m->ps;
    if (decode && M > m->mlm_cap) { /* grow-only, with headroom: masking scores a varying ~15% of the rows */
        size_t before, after;
        be->mem_stats(&before, NULL);
        if (m->mlm_logits) be->free(m->mlm_logits);
        int64_t cap = MIN((int64_t)m->Bmax * m->Tmax, (int64_t)M + M / 4);
        m->mlm_logits = be->alloc((size_t)cap * c->vocab_size * be->act_size);
        m->mlm_cap = (int)cap;
        be->mem_stats(&after, NULL);
        m->act_bytes += after - before;
    }
    linear_fwd(ps, &m->mlm, m->mlm_h, x, M, NULL);
    be->gelu_erf_fwd(m->mlm_g, m->mlm_h, (size_t)M * c->d_model);
    be->norm_fwd(m->mlm_u, m->mlm_mean, m->mlm_rstd, m->mlm_g, params_w(ps, m->mlm_ln_w), params_w(ps, m->mlm_ln_b),
                 M, c->d_model, c->norm_eps, 0);
    if (decode) linear_fwd(ps, &m->dec, m->mlm_logits, m->mlm_u, M, NULL);
}

/* The loss of an encoder over its scored rows (targets >= 0), gathered first: the head's products
 * run on those rows only. With loss_scale != 0 the head's backward too, leaving d(lnf) (N,C) in
 * dbuf1 (zero on the rows not scored), where model_backward starts. Returns the loss sum. */
static double mlm_loss(Model *m, const int32_t *targets, int N, float loss_scale, int *n_valid)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    const ParamStore *ps = &m->ps;
    int C = c->d_model, M = 0;
    int32_t *tgt = xmalloc((size_t)N * sizeof(int32_t));
    int V = m->tp ? m->tp->full.vocab_size : c->vocab_size; /* tensor parallel: c is a slice's config */
    for (int i = 0; i < N; i++) {
        if (targets[i] < 0) continue;
        if (targets[i] >= V)
            fatal("model_forward: target %d is outside the vocabulary of %d (internal error)", targets[i], V);
        m->rows_host[M] = i;
        tgt[M++] = targets[i];
    }
    m->n_rows = M;
    *n_valid = M;
    if (loss_scale != 0) be->zero(m->dbuf1, (size_t)N * C * be->act_size);
    if (!M) {
        free(tgt);
        return 0;
    }
    be->upload(m->rows, m->rows_host, (size_t)M * sizeof(int32_t));
    be->upload(m->targets, tgt, (size_t)M * sizeof(int32_t));
    free(tgt);
    be->gather_rows(m->mlm_x, m->lnf, m->rows, M, C);
    void *du = m->dbuf2, *dg = m->dres, *dh = m->dbuf2, *dx = m->dres;
    mlm_head_fwd(m, m->mlm_x, M, !m->tp);
    if (m->tp) /* vocabulary-parallel decoder and loss (model/tp.h); du is summed over the group */
        tp_head_xent(m, m->losses, du, m->mlm_u, m->targets, M, loss_scale);
    else
        be->xent_fwd_bwd(m->losses, m->mlm_logits, m->targets, M, c->vocab_size, loss_scale);
    if (loss_scale != 0) { /* d(u) -> d(g) (norm) -> d(h) (GELU) -> d(x), scattered into d(lnf) */
        if (!m->tp) linear_bwd(ps, &m->dec, du, m->mlm_logits, m->mlm_u, M, NULL);
        be->zero(dg, (size_t)M * C * be->act_size);
        be->norm_bwd(dg, params_g(ps, m->mlm_ln_w), params_g(ps, m->mlm_ln_b), du, m->mlm_g, params_w(ps, m->mlm_ln_w),
                     m->mlm_mean, m->mlm_rstd, M, C, 0);
        be->gelu_erf_bwd(dh, m->mlm_h, dg, (size_t)M * C);
        linear_bwd(ps, &m->mlm, dx, dh, m->mlm_x, M, NULL);
        be->scatter_rows(m->dbuf1, dx, m->rows, M, C);
    }
    be->download(m->losses_host, m->losses, (size_t)M * sizeof(float));
    double sum = 0;
    for (int i = 0; i < M; i++) sum += m->losses_host[i];
    return sum;
}

float model_forward(Model *m, const int32_t *inputs, const int32_t *targets, int B, int T, float loss_scale,
                    int *n_valid)
{
    return model_forward_len(m, inputs, targets, NULL, B, T, loss_scale, n_valid);
}

float model_forward_len(Model *m, const int32_t *inputs, const int32_t *targets, const int32_t *lengths, int B,
                        int T, float loss_scale, int *n_valid)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    int N = B * T;
    if (!m->la || B * T > m->Bmax * m->Tmax || T > m->Tmax)
        fatal("model_forward: %d x %d tokens exceed the reserved %d x %d (internal error)", B, T, m->Bmax, m->Tmax);
    if (lengths && !c->bidirectional) fatal("model_forward: sequence lengths for a causal model (internal error)");
    be->upload(m->tokens, inputs, (size_t)N * sizeof(int32_t));
    if (m->tp) tp_tokens(m, inputs, B, T, c->pos_offset);
    if (targets && !c->bidirectional) be->upload(m->targets, targets, (size_t)N * sizeof(int32_t));
    if (c->bidirectional && targets && m->mlm.w < 0)
        fatal("model_forward: this encoder has no MLM head to score targets with (internal error)");
    m->cur_lengths = NULL;
    if (lengths) {
        for (int b = 0; b < B; b++)
            if (lengths[b] < 1 || lengths[b] > T)
                fatal("model_forward: sequence %d has length %d, outside 1..%d (internal error)", b, lengths[b], T);
        be->upload(m->lengths, lengths, (size_t)B * sizeof(int32_t));
        m->cur_lengths = m->lengths;
    }
    StackBufs bufs = train_bufs(m);
    AttnCtx ctx = {.mode = c->bidirectional ? ATTN_BIDIRECTIONAL : ATTN_CAUSAL, .pos0 = c->pos_offset,
                   .lengths = m->cur_lengths};
    m->training = targets && loss_scale != 0;
    model_stack_fwd(m, &bufs, m->tokens, B, T, &ctx);
    if (n_valid) *n_valid = 0;
    m->loss_sum = 0;
    if (c->bidirectional) {
        if (!targets) {
            if (m->mlm.w >= 0 && !m->hidden_only) {
                if (m->tp) fatal("model_forward: logits of a split encoder (internal error: tensor parallel scores targets only)");
                mlm_head_fwd(m, m->lnf, N, 1);
                m->logits = m->mlm_logits;
            }
            head_done(m);
            return 0.0f;
        }
        if (loss_scale != 0) { /* the MLM head's backward comes with the loss, as a decoder's head's */
            model_grads_begin(m, c->n_layer + 1);
            if (model_head_group(m) == 0) model_grads_begin(m, 0);
        }
        int valid = 0;
        m->loss_sum = mlm_loss(m, targets, N, loss_scale, &valid);
        head_done(m);
        if (n_valid) *n_valid = valid;
        m->cur_B = B;
        m->cur_T = T;
        return valid ? (float)(m->loss_sum / valid) : 0.0f;
    }
    if (!targets) {
        if (m->tp) fatal("model_forward: logits of a tensor-parallel model (internal error: not supported)");
        if (!m->logits) {
            size_t before;
            be->mem_stats(&before, NULL);
            m->logits = be->alloc((size_t)m->Bmax * m->Tmax * c->vocab_size * be->act_size);
            size_t after;
            be->mem_stats(&after, NULL);
            m->act_bytes += after - before;
        }
        linear_fwd(&m->ps, &m->head, m->logits, m->lnf, N, NULL);
        head_done(m);
        return 0.0f;
    }
    if (loss_scale != 0) { /* the head's backward comes with the loss: its gradients start here */
        model_grads_begin(m, c->n_layer + 1);
        if (model_head_group(m) == 0) model_grads_begin(m, 0);
    }
    /* output layer + loss, and when training already their backward: dlnf into dbuf1 (where
     * model_backward starts) and the head's gradient */
    if (m->tp) { /* each rank its slice of the vocabulary (model/tp.h) */
        tp_head_xent(m, m->losses, m->dbuf1, m->lnf, m->targets, N, loss_scale);
    } else if (m->head_unfused && !m->pt.p[m->head.w].chunk_rows) { /* the whole (N,V) logits, the softmax, the product back */
        if (!m->logits) {
            size_t before, after;
            be->mem_stats(&before, NULL);
            m->logits = be->alloc((size_t)m->Bmax * m->Tmax * c->vocab_size * be->act_size);
            be->mem_stats(&after, NULL);
            m->act_bytes += after - before;
        }
        linear_fwd(&m->ps, &m->head, m->logits, m->lnf, N, NULL);
        be->xent_fwd_bwd(m->losses, m->logits, m->targets, N, c->vocab_size, loss_scale);
        if (loss_scale != 0) linear_bwd(&m->ps, &m->head, m->dbuf1, m->logits, m->lnf, N, NULL);
    } else {
        linear_head_xent(&m->ps, &m->head, m->losses, m->dbuf1, m->lnf, m->targets, N, loss_scale, &m->head_bufs);
    }
    head_done(m);
    be->download(m->losses_host, m->losses, (size_t)N * sizeof(float));
    double sum = 0;
    int valid = 0;
    for (int i = 0; i < N; i++) {
        if (targets[i] < 0) continue;
        sum += m->losses_host[i];
        valid++;
    }
    if (n_valid) *n_valid = valid;
    m->loss_sum = sum;
    if (m->moe) moe_after_forward(m, N, (double)loss_scale * valid);
    m->cur_B = B;
    m->cur_T = T;
    return valid ? (float)(sum / valid) : 0.0f;
}

/* ------------------------------------------- an embedding read by row chunks */

/* For chunk [r0, r1) of the embedding: the positions of the tokens (host, tok) that fall in it and their
 * chunk-relative ids, uploaded to emb_pos / emb_ids; returns how many. */
static int embed_chunk_lists(Model *m, const int32_t *tok, int N, int r0, int r1)
{
    int32_t *pos = m->emb_host + N, *ids = m->emb_host + 2 * (size_t)N;
    int M = 0;
    for (int i = 0; i < N; i++)
        if (tok[i] >= r0 && tok[i] < r1) pos[M] = i, ids[M] = tok[i] - r0, M++;
    if (M) {
        m->be->upload(m->emb_pos, pos, (size_t)M * sizeof(int32_t));
        m->be->upload(m->emb_ids, ids, (size_t)M * sizeof(int32_t));
    }
    return M;
}

const void *model_embed_table(Model *m, const int32_t *tokens, int N, const int32_t **ids)
{
    const ParamStore *ps = &m->ps;
    if (!m->pt.p[m->wte].chunk_rows) {
        *ids = tokens;
        return params_w_dense(ps, m->wte);
    }
    const Backend *be = m->be;
    int C = m->cfg.d_model;
    int32_t *tok = m->emb_host; /* the first N entries: the tokens (the rest: the chunk lists) */
    be->download(tok, tokens, (size_t)N * sizeof(int32_t));
    for (int k = 0; k < params_nchunks(&m->pt, m->wte); k++) {
        int r0, r1;
        params_chunk(&m->pt, m->wte, k, &r0, &r1);
        int M = embed_chunk_lists(m, tok, N, r0, r1);
        if (!M) continue;
        be->gather_rows(m->emb_tmp, params_w_rows(ps, m->wte, r0, r1), m->emb_ids, M, C);
        be->scatter_rows(m->emb_rows, m->emb_tmp, m->emb_pos, M, C);
    }
    *ids = m->emb_iota;
    return m->emb_rows;
}

/* The embedding's backward by row chunks: per chunk its rows' gradient from the rows of dres whose tokens
 * fall in it (a chunk no token falls in has a zero gradient: its update still runs, as the whole
 * tensor's would), then the chunk's integer update; the position table's gradient once. */
static void embed_bwd_rows(Model *m, float *dwpe, const void *dres, int B, int T)
{
    const Backend *be = m->be;
    const ParamStore *ps = &m->ps;
    int N = B * T, C = m->cfg.d_model;
    int32_t *tok = m->emb_host;
    be->download(tok, m->tokens, (size_t)N * sizeof(int32_t));
    if (dwpe) be->embed_bwd(NULL, dwpe, dres, m->tokens, B, T, C);
    for (int k = 0; k < params_nchunks(&m->pt, m->wte); k++) {
        int r0, r1;
        params_chunk(&m->pt, m->wte, k, &r0, &r1);
        params_grad_rows_begin(ps, m->wte, r0, r1);
        int M = embed_chunk_lists(m, tok, N, r0, r1);
        if (M) {
            be->gather_rows(m->emb_tmp, dres, m->emb_pos, M, C);
            be->embed_bwd(params_g(ps, m->wte), NULL, m->emb_tmp, m->emb_ids, 1, M, C);
        }
        params_grad_rows_done(ps, m->wte, r0, r1);
    }
}

/* ----------------------------------------------------------------- backward */

void model_backward(Model *m)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    const ParamStore *ps = &m->ps;
    int B = m->cur_B, T = m->cur_T, N = B * T, C = c->d_model;
    void *dres = m->dres, *d1 = m->dbuf1, *d2 = m->dbuf2;

    /* d1 = dlnf and the head's gradient were made with the loss (linear_head_xent in model_forward) */
    /* the hooks (model.h) see the groups finish: the head's, each block's from the last, the embeddings' */
    int L = c->n_layer;
    be->zero(dres, (size_t)N * C * be->act_size);
    model_weights_need(m, L + 1, L);
    be->norm_bwd(dres, params_g(ps, m->lnf_w), params_g(ps, m->lnf_b), d1, m->res_final, params_w(ps, m->lnf_w),
                 m->lnf_mean, m->lnf_rstd, N, C, !cfg_layernorm(c));
    model_weights_done(m, L + 1);
    model_grads_ready(m, L + 1);
    for (int l = L - 1; l >= 0; l--) {
        model_weights_need(m, 1 + l, l > 0 ? l : -1);
        model_grads_begin(m, 1 + l);
        block_recompute(m, l, &m->la[l], B, T, m->dbuf2);
        block_bwd(m, l, &m->la[l], B, T, dres, d1, d2);
        model_weights_done(m, 1 + l);
        model_grads_ready(m, 1 + l);
    }
    if (model_head_group(m) != 0) model_grads_begin(m, 0);
    /* the embedding output's dropout (pre-norm; the bert family's comes after its norm, in block 0): the
     * same mask on the gradient */
    if (!c->post_norm) model_dropout_fwd(m, -1, DROP_SITE_EMBED, dres, (size_t)N * C);
    float *dwpe = params_g(ps, m->wpe);
    if (dwpe) dwpe += (size_t)c->pos_offset * C; /* positions pos_offset.. */
    if (m->pt.p[m->wte].chunk_rows) {
        embed_bwd_rows(m, dwpe, dres, B, T);
        model_grads_ready(m, 0);
        return;
    }
    params_grad_begin(ps, m->wte);
    if (m->tp) tp_embed_bwd(m, dres, d1, B, T);
    else be->embed_bwd(params_g(ps, m->wte), dwpe, dres, m->tokens, B, T, C);
    if (m->tte >= 0 && params_g(ps, m->tte)) be->embed_bwd(params_g(ps, m->tte), NULL, dres, m->types, B, T, C);
    params_grad_done(ps, m->wte);
    model_grads_ready(m, 0);
}

/* ------------------------------------------------------------ accounting */

static double stack_flops(const Model *m, int backward)
{
    double f = 0;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        const LayerParams *p = &m->lp[l];
        f += linear_flops(&m->ps, &p->qkv, backward) + linear_flops(&m->ps, &p->o, backward);
        f += p->moe ? moe_flops(m, l, backward)
                    : linear_flops(&m->ps, &p->fc, backward) + linear_flops(&m->ps, &p->proj, backward);
    }
    if (m->mlm.w >= 0) { /* the MLM head runs on the scored rows only: their share in the last forward */
        double rows = (double)m->cur_B * m->cur_T, share = rows > 0 ? m->n_rows / rows : 1.0;
        return f + share * (linear_flops(&m->ps, &m->mlm, backward) + linear_flops(&m->ps, &m->dec, backward));
    }
    return f + linear_flops(&m->ps, &m->head, backward);
}

/* Causal attention per token and layer: the score and value products, 2 * q_dim * T each over the
 * full row, of which the causal kernels compute half: 2 * q_dim * T forward, twice that backward. */
double model_flops_per_token(const Model *m, int T)
{
    /* bidirectional attention computes the whole row: twice the causal kernels' products */
    double attn = (m->cfg.bidirectional ? 12.0 : 6.0) * m->cfg.n_layer * (double)cfg_q_dim(&m->cfg) * T;
    return stack_flops(m, 1) + attn;
}

double model_flops_per_token_fwd(const Model *m, int T)
{
    double attn = (m->cfg.bidirectional ? 4.0 : 2.0) * m->cfg.n_layer * (double)cfg_q_dim(&m->cfg) * T;
    return stack_flops(m, 0) + attn;
}

void model_mem_report(const Model *m, size_t optim_bytes, MemReport *r)
{
    ParamBytes pb = params_bytes(&m->ps);
    memset(r, 0, sizeof(*r));
    r->weights = pb.weights;
    r->master = pb.master;
    r->grads = pb.grads;
    r->optim = optim_bytes + pb.tstate; /* AdamW moments + integer-ternary accumulators */
    r->acts = m->act_bytes;
    r->host = pb.host;
    m->be->mem_stats(&r->in_use, &r->peak);
    size_t known = r->weights + r->master + r->grads + r->optim + r->acts;
    r->workspace = r->in_use > known ? r->in_use - known : 0;
}

static void fmt_bytes(char *buf, size_t n, size_t b)
{
    double g = b / (1024.0 * 1024.0 * 1024.0);
    if (g >= 1) snprintf(buf, n, "%.2f GiB", g);
    else snprintf(buf, n, "%.1f MiB", b / (1024.0 * 1024.0));
}

void mem_report_format(const MemReport *r, char *buf, size_t n)
{
    char w[32], ma[32], g[32], o[32], a[32], ws[32], pk[32];
    fmt_bytes(w, sizeof(w), r->weights);
    fmt_bytes(ma, sizeof(ma), r->master);
    fmt_bytes(g, sizeof(g), r->grads);
    fmt_bytes(o, sizeof(o), r->optim);
    fmt_bytes(a, sizeof(a), r->acts);
    fmt_bytes(ws, sizeof(ws), r->workspace);
    fmt_bytes(pk, sizeof(pk), r->peak);
    int k = snprintf(buf, n, "weights %s | master %s | gradients %s | optimizer %s | activations %s | workspace %s | peak %s",
                     w, ma, g, o, a, ws, pk);
    if (r->host && k > 0 && (size_t)k < n) {
        char h[32];
        fmt_bytes(h, sizeof(h), r->host);
        snprintf(buf + k, n - (size_t)k, " (+ %s in host memory)", h);
    }
}
