/* params.c - the parameter table and the parameter store (params.h). */
#include "model/params.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "io/safetensors.h"
#include "model/lora.h"
#include "model/ternary.h"

/* The grow-only scratch of BitLinear inputs (params_xq). */
struct ParamActScratch {
    void *p;
    size_t n;
};

/* ---- the table ---- */

static void add_param(ParamTable *pt, int *cap, const char *name, int role, int layer, int ndim, int64_t d0,
                      int64_t d1)
{
    if (pt->n == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        pt->p = xrealloc(pt->p, (size_t)*cap * sizeof(Param));
    }
    Param *p = &pt->p[pt->n++];
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "%s", name);
    p->role = role;
    p->layer = layer;
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = ndim == 2 ? d1 : 1;
    p->numel = (size_t)d0 * (size_t)(ndim == 2 ? d1 : 1);
    p->offset = pt->total;
    p->kind = PARAM_TRAIN;
    p->decay = ndim == 2;
    p->site = -1;
    p->nparts = 1;
    p->part_rows[0] = (int)d0;
    p->expert = -1;
    pt->total += p->numel;
}

static size_t align_up(size_t n) { return (n + PARAM_ALIGN - 1) / PARAM_ALIGN * PARAM_ALIGN; }

static size_t gcd_size(size_t a, size_t b)
{
    while (b) {
        size_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* Rows per chunk of a fused vocabulary tensor (Param.chunk_rows), 0 for the whole tensor. A chunk starts
 * on a whole packed byte that is also the first of a 32-bit word (the GPU update adds to bytes through
 * their word) and on a group boundary: its first element is a multiple of lcm(20, group), so the row
 * count is a multiple of `unit`. Automatic: about the elements of the largest other fused tensor (the
 * scratch it needs anyway), at least a million, in a multiple of 64 rows. */
static int chunk_rows_for(const ParamTable *pt, const Param *p, size_t others)
{
    if (pt->tern_chunk_rows < 0) return 0;
    size_t rows = (size_t)p->shape[0], cols = (size_t)p->shape[1];
    size_t g = (size_t)(pt->tern_group > 0 ? pt->tern_group : TERN_DEFAULT_GROUP);
    size_t align = 20 / gcd_size(20, g) * g; /* lcm(20, group) elements */
    size_t unit = align / gcd_size(cols, align);
    size_t want = pt->tern_chunk_rows > 0 ? (size_t)pt->tern_chunk_rows : MAX(others, (size_t)1 << 20) / cols;
    if (pt->tern_chunk_rows == 0) unit = unit / gcd_size(unit, 64) * 64; /* automatic: tile-sized products too */
    want = MAX(unit, (want + unit - 1) / unit * unit);
    return want >= rows ? 0 : (int)want;
}

void param_table_set_kinds(ParamTable *pt, const ParamKind *kinds)
{
    size_t off[PARAM_KIND_COUNT] = {0};
    int L = pt->n_layer, group = 0;
    for (int i = 0; i < pt->n; i++) {
        Param *p = &pt->p[i];
        p->kind = kinds ? kinds[i] : PARAM_TRAIN;
        /* a fused ternary tensor: no gradient segment (a tied embedding gets two gradients, head and
         * lookup, so it keeps its segment and the optimizer's update) */
        p->fused = p->kind == PARAM_TERNARY && pt->tern_fused &&
                   !(p->role == PROLE_WTE && param_find_role(pt, PROLE_LM_HEAD, -1) < 0);
        p->chunk_rows = 0;
        if (p->kind == PARAM_NF4 || p->fused) { /* no segment: packed storage of its own (params_upload) */
            p->seg = 0;
            continue;
        }
        /* groups in table order: embeddings (0), block l (1 + l), the tensors after the blocks (L + 1) */
        int g = p->layer >= 0 ? 1 + p->layer : (i > 0 && group > 0 ? L + 1 : 0);
        while (group < g) pt->layer_seg[++group] = off[PARAM_TRAIN];
        p->seg = off[p->kind];
        off[p->kind] += align_up(p->numel);
    }
    while (group < L + 2) pt->layer_seg[++group] = off[PARAM_TRAIN];
    /* the vocabulary tensors of a fused run by row chunks, sized by the other fused tensors */
    size_t others = 0;
    for (int i = 0; i < pt->n; i++)
        if (pt->p[i].fused && pt->p[i].role != PROLE_WTE && pt->p[i].role != PROLE_LM_HEAD)
            others = MAX(others, pt->p[i].numel);
    for (int i = 0; i < pt->n; i++)
        if (pt->p[i].fused && (pt->p[i].role == PROLE_WTE || pt->p[i].role == PROLE_LM_HEAD))
            pt->p[i].chunk_rows = chunk_rows_for(pt, &pt->p[i], others);
    pt->n_train = off[PARAM_TRAIN];
    pt->n_frozen = off[PARAM_FROZEN];
    pt->n_tern = off[PARAM_TERNARY];
}

/* The adapters of layer l (lora.h): A (r, in) and B (rows, r) per site, in site order, every A of a
 * product before its B's (q.A k.A v.A q.B k.B v.B, o.A o.B, gate.A up.A gate.B up.B, ...), so that
 * the A's of one fused weight's parts are one (parts x r, in) matrix in the store, formed by one
 * product (linear.c). A routed experts' site is a product per expert: A then B of expert 0, of expert
 * 1, ... (param_find_lora_expert). */
static void add_lora(ParamTable *pt, int *cap, const ModelConfig *c, const LoraSpec *lora, int l)
{
    int role_of[LORA_SITE_COUNT];
    for (int s = 0; s < LORA_SITE_COUNT; s++) {
        role_of[s] = -1;
        if (!(lora->sites & (1u << s)) || !lora_site_in_layer(c, l, (LoraSite)s)) continue;
        int row0, rows;
        lora_site_rows(c, (LoraSite)s, &role_of[s], &row0, &rows);
    }
    for (int s0 = 0; s0 < LORA_SITE_COUNT; s0++) {
        int role = role_of[s0];
        if (role < 0) continue;
        int expert = lora_site_is_expert((LoraSite)s0), ne = expert ? c->moe_experts : 1;
        for (int e = 0; e < ne; e++)
            for (int ab = 0; ab < 2; ab++) /* the A's of the product's sites, then their B's */
                for (int s = s0; s < LORA_SITE_COUNT; s++) {
                    if (role_of[s] != role) continue;
                    int rl, r0, rows;
                    lora_site_rows(c, (LoraSite)s, &rl, &r0, &rows);
                    char nm[64], ex[16] = "";
                    if (expert) snprintf(ex, sizeof(ex), ".%d", e);
                    snprintf(nm, sizeof(nm), "h.%d.lora.%s%s.%s", l, lora_site_short((LoraSite)s), ex, ab ? "B" : "A");
                    if (ab) add_param(pt, cap, nm, PROLE_LORA_B, l, 2, rows, lora->r);
                    else add_param(pt, cap, nm, PROLE_LORA_A, l, 2, lora->r, lora_site_in(c, (LoraSite)s));
                    pt->p[pt->n - 1].site = s;
                    pt->p[pt->n - 1].expert = expert ? e : -1;
                }
        for (int s = s0 + 1; s < LORA_SITE_COUNT; s++)
            if (role_of[s] == role) role_of[s] = -1; /* done with s0's product */
    }
}

void param_table_build(ParamTable *pt, const ModelConfig *c) { param_table_build_lora(pt, c, NULL); }

void param_table_build_lora(ParamTable *pt, const ModelConfig *c, const LoraSpec *lora)
{
    int cap = 0;
    int C = c->d_model;
    int gpt2 = cfg_layernorm(c); /* LayerNorm biases and learned positions (gpt2, bert) */
    char nm[64];
    memset(pt, 0, sizeof(*pt));
    pt->n_layer = c->n_layer;
    pt->tern_group = c->tern_group > 0 ? c->tern_group : TERN_DEFAULT_GROUP;
    pt->tern_fused = c->tern_fused;
    pt->tern_chunk_rows = c->tern_chunk_rows;
    pt->tern_frozen = c->tern_frozen;
    add_param(pt, &cap, "wte", PROLE_WTE, -1, 2, c->vocab_size, C);
    if (gpt2) add_param(pt, &cap, "wpe", PROLE_WPE, -1, 2, c->max_seq_len, C);
    if (c->type_vocab_size > 0) add_param(pt, &cap, "tte", PROLE_TTE, -1, 2, c->type_vocab_size, C);
    for (int l = 0; l < c->n_layer; l++) {
#define P1(suffix, role, n) \
    (snprintf(nm, sizeof(nm), "h.%d.%s", l, suffix), add_param(pt, &cap, nm, role, l, 1, n, 1))
#define P2(suffix, role, r, k) \
    (snprintf(nm, sizeof(nm), "h.%d.%s", l, suffix), add_param(pt, &cap, nm, role, l, 2, r, k))
        P1("ln1.w", PROLE_LN1_W, C);
        if (gpt2) P1("ln1.b", PROLE_LN1_B, C);
        P2("qkv.w", PROLE_QKV_W, cfg_qkv_dim(c), C);
        if (c->qkv_bias) P1("qkv.b", PROLE_QKV_B, cfg_qkv_dim(c));
        if (c->sub_norm) P1("attn_sub.w", PROLE_ATTN_SUB_W, cfg_q_dim(c));
        P2("o.w", PROLE_O_W, C, cfg_q_dim(c));
        if (c->o_bias) P1("o.b", PROLE_O_B, C);
        P1("ln2.w", PROLE_LN2_W, C);
        if (gpt2) P1("ln2.b", PROLE_LN2_B, C);
        if (cfg_is_moe(c, l)) {
            P2("router.w", PROLE_ROUTER_W, c->moe_experts, C);
            for (int e = 0; e < c->moe_experts; e++) { /* fc then proj of each expert: param_find_expert */
                char sfx[32];
                snprintf(sfx, sizeof(sfx), "exp.%d.fc.w", e);
                P2(sfx, PROLE_EXP_FC_W, 2 * c->moe_d_ff, C);
                pt->p[pt->n - 1].expert = e;
                snprintf(sfx, sizeof(sfx), "exp.%d.proj.w", e);
                P2(sfx, PROLE_EXP_PROJ_W, C, c->moe_d_ff);
                pt->p[pt->n - 1].expert = e;
            }
            if (c->moe_shared_d_ff > 0) {
                P2("shared.fc.w", PROLE_SH_FC_W, 2 * c->moe_shared_d_ff, C);
                P2("shared.proj.w", PROLE_SH_PROJ_W, C, c->moe_shared_d_ff);
                P2("shared.gate.w", PROLE_SH_GATE_W, 1, C);
            }
        } else {
            P2("fc.w", PROLE_FC_W, cfg_fc_dim(c), C);
            if (c->mlp_bias) P1("fc.b", PROLE_FC_B, cfg_fc_dim(c));
            if (c->sub_norm) P1("ffn_sub.w", PROLE_FFN_SUB_W, c->d_ff);
            P2("proj.w", PROLE_PROJ_W, C, c->d_ff);
            if (c->mlp_bias) P1("proj.b", PROLE_PROJ_B, C);
        }
#undef P1
#undef P2
        if (lora && lora->r > 0) add_lora(pt, &cap, c, lora, l);
    }
    add_param(pt, &cap, "lnf.w", PROLE_LNF_W, -1, 1, C, 1);
    if (gpt2) add_param(pt, &cap, "lnf.b", PROLE_LNF_B, -1, 1, C, 1);
    if (!c->tie_embeddings) add_param(pt, &cap, "lm_head", PROLE_LM_HEAD, -1, 2, c->vocab_size, C);
    if (c->mlm_head) {
        add_param(pt, &cap, "mlm.w", PROLE_MLM_W, -1, 2, C, C);
        add_param(pt, &cap, "mlm.b", PROLE_MLM_B, -1, 1, C, 1);
        add_param(pt, &cap, "mlm.ln.w", PROLE_MLM_LN_W, -1, 1, C, 1);
        add_param(pt, &cap, "mlm.ln.b", PROLE_MLM_LN_B, -1, 1, C, 1);
        add_param(pt, &cap, "mlm.bias", PROLE_MLM_BIAS, -1, 1, c->vocab_size, 1);
    }
    size_t rows = (size_t)c->n_layer + 1;
    pt->by_role = xmalloc(rows * PROLE_COUNT * sizeof(int));
    for (size_t i = 0; i < rows * PROLE_COUNT; i++) pt->by_role[i] = -1;
    pt->by_site = xmalloc((size_t)c->n_layer * LORA_SITE_COUNT * 2 * sizeof(int) + sizeof(int));
    for (size_t i = 0; i < (size_t)c->n_layer * LORA_SITE_COUNT * 2; i++) pt->by_site[i] = -1;
    for (int i = 0; i < pt->n; i++) {
        const Param *p = &pt->p[i];
        if (p->site >= 0) { /* a routed experts' site: expert 0's pair (param_find_lora_expert) */
            size_t k = ((size_t)p->layer * LORA_SITE_COUNT + (size_t)p->site) * 2 + (p->role == PROLE_LORA_B);
            int *slot = &pt->by_site[k];
            if (*slot < 0) *slot = i;
        } else pt->by_role[(size_t)(p->layer + 1) * PROLE_COUNT + p->role] = i;
    }
    /* BitLinear: each Hugging Face linear (q, k, v; gate, up) is ternarized with its own absmean */
    for (int i = 0; i < pt->n && c->ternary == TERNARY_BITNET; i++) {
        Param *p = &pt->p[i];
        int r = p->role;
        p->ternarize = r == PROLE_QKV_W || r == PROLE_O_W || r == PROLE_FC_W || r == PROLE_PROJ_W;
        if (r == PROLE_QKV_W) {
            p->nparts = 3;
            p->part_rows[0] = cfg_q_dim(c);
            p->part_rows[1] = p->part_rows[2] = cfg_kv_dim(c);
        } else if (r == PROLE_FC_W) {
            p->nparts = 2;
            p->part_rows[0] = p->part_rows[1] = c->d_ff;
        }
    }
    pt->layer_seg = xcalloc((size_t)c->n_layer + 3, sizeof(size_t));
    param_table_set_kinds(pt, NULL);
}

void param_table_free(ParamTable *pt)
{
    free(pt->p);
    free(pt->by_role);
    free(pt->by_site);
    free(pt->layer_seg);
    memset(pt, 0, sizeof(*pt));
}

int param_find(const ParamTable *pt, const char *name)
{
    for (int i = 0; i < pt->n; i++)
        if (!strcmp(pt->p[i].name, name)) return i;
    return -1;
}

int param_find_role(const ParamTable *pt, int role, int layer)
{
    if (role < 0 || role >= PROLE_COUNT || layer < -1 || layer >= pt->n_layer) return -1;
    return pt->by_role[(size_t)(layer + 1) * PROLE_COUNT + role];
}

int param_find_expert(const ParamTable *pt, int role, int layer, int e)
{
    if (role != PROLE_EXP_FC_W && role != PROLE_EXP_PROJ_W) return -1;
    int first = param_find_role(pt, PROLE_EXP_FC_W, layer); /* by_role keeps the last: expert E-1's */
    if (first < 0) return -1;
    int E = pt->p[first].expert + 1;
    if (e < 0 || e >= E) return -1;
    int i = first - 2 * (E - 1 - e) + (role == PROLE_EXP_PROJ_W);
    if (pt->p[i].role != role || pt->p[i].expert != e || pt->p[i].layer != layer)
        fatal("param_find_expert: table order broken at %s (internal error)", pt->p[i].name);
    return i;
}

int param_find_lora(const ParamTable *pt, int layer, int site, int ab)
{
    if (layer < 0 || layer >= pt->n_layer || site < 0 || site >= LORA_SITE_COUNT) return -1;
    return pt->by_site[((size_t)layer * LORA_SITE_COUNT + site) * 2 + (ab != 0)];
}

int param_find_lora_expert(const ParamTable *pt, int layer, int site, int e, int ab)
{
    int first = param_find_lora(pt, layer, site, 0);
    if (first < 0 || pt->p[first].expert < 0) return e == 0 || first < 0 ? param_find_lora(pt, layer, site, ab) : -1;
    /* after expert 0's A come, in the layer's order, the rest of the product's tensors (the A's of its
     * sites, then their B's, per expert: add_lora; two sites for transformers 4's w1 and w3 on one fc) */
    int role = ab ? PROLE_LORA_B : PROLE_LORA_A;
    for (int i = first; e >= 0 && i < pt->n && pt->p[i].layer == layer; i++)
        if (pt->p[i].site == site && pt->p[i].expert == e && pt->p[i].role == role) return i;
    return -1;
}

size_t param_count_kind(const ParamTable *pt, ParamKind kind)
{
    size_t n = 0;
    for (int i = 0; i < pt->n; i++)
        if (pt->p[i].kind == kind) n += pt->p[i].numel;
    return n;
}

size_t param_count_all(const ParamTable *pt) { return pt->total; }

size_t param_count_active(const ParamTable *pt, const ModelConfig *c)
{
    size_t experts = 0;
    for (int i = 0; i < pt->n; i++)
        if (pt->p[i].role == PROLE_EXP_FC_W || pt->p[i].role == PROLE_EXP_PROJ_W) experts += pt->p[i].numel;
    if (!experts) return pt->total;
    return pt->total - experts + experts / (size_t)c->moe_experts * (size_t)c->moe_top_k;
}

size_t param_count(const ParamTable *pt) { return param_count_kind(pt, PARAM_TRAIN); }

const char *param_kind_name(ParamKind k)
{
    static const char *const names[PARAM_KIND_COUNT] = {"trainable", "frozen", "frozen-4bit", "ternary"};
    return k >= 0 && k < PARAM_KIND_COUNT ? names[k] : "?";
}

void params_shard(const ParamTable *pt, int rank, int world, size_t *lo, size_t *hi)
{
    size_t per = (pt->n_train + (size_t)world - 1) / (size_t)world;
    per = align_up(per);
    *lo = MIN(pt->n_train, per * (size_t)rank);
    *hi = MIN(pt->n_train, *lo + per);
}

/* ---- the store ---- */

/* The integer-ternary arrays of every PARAM_TERNARY tensor (weights trit 0, exponents 0), their
 * gradient segment, and the weight scratch of ternarized and ternary tensors. */
static void tern_alloc(ParamStore *ps)
{
    const ParamTable *pt = ps->pt;
    const Backend *be = ps->be;
    ps->tern_group = pt->tern_group > 0 ? pt->tern_group : TERN_DEFAULT_GROUP;
    for (int i = 0; i < pt->n; i++) {
        const Param *p = &pt->p[i];
        if (p->kind != PARAM_TERNARY && !(p->kind == PARAM_TRAIN && p->ternarize)) continue;
        ps->wq_numel = MAX(ps->wq_numel, params_chunk_numel(pt, i));
        if (p->kind != PARAM_TERNARY) continue;
        if (!ps->tern) ps->tern = xcalloc((size_t)pt->n, sizeof(TernaryTensor));
        TernaryTensor *t = &ps->tern[i];
        t->n = p->numel;
        t->group = ps->tern_group;
        size_t nb = trit_bytes(t->n), ng = tern_groups(t->n, t->group);
        /* rounded up to whole 32-bit words: the GPU update changes bytes through their word */
        size_t nb4 = (nb + 3) / 4 * 4;
        uint8_t *zero_trits = xmalloc(nb4);
        memset(zero_trits, 121, nb4); /* every digit 1: trit 0 */
        t->trits = be->alloc(nb4);
        be->upload(t->trits, zero_trits, nb4);
        free(zero_trits);
        t->exp = be->alloc(ng);
        ps->tern_bytes += nb + ng;
        if (pt->tern_frozen) continue; /* read only: no accumulators, no gradient */
        t->tacc = be->alloc(t->n);
        t->eacc = be->alloc(ng);
        ps->tern_state_bytes += t->n + ng;
    }
    if (pt->n_tern && !pt->tern_frozen) ps->tgrad = be->alloc(pt->n_tern * sizeof(float));
    for (int i = 0; i < pt->n; i++)
        if (pt->p[i].fused) ps->fgrad_numel = MAX(ps->fgrad_numel, params_chunk_numel(pt, i)), ps->n_fused++;
    if (ps->fgrad_numel) ps->fgrad = be->alloc(ps->fgrad_numel * sizeof(float));
    for (int i = 0; ps->tern && i < pt->n; i++)
        if (pt->p[i].kind == PARAM_TERNARY)
            ps->tern[i].grad = pt->p[i].fused ? ps->fgrad : ps->tgrad ? ps->tgrad + pt->p[i].seg : NULL;
    if (ps->wq_numel) ps->wq = be->alloc(ps->wq_numel * be->act_size);
    ps->xq = xcalloc(1, sizeof(*ps->xq));
}

static void tern_free(ParamStore *ps)
{
    const Backend *be = ps->be;
    for (int i = 0; ps->tern && i < ps->pt->n; i++) {
        TernaryTensor *t = &ps->tern[i];
        void *a[] = {t->trits, t->exp, t->tacc, t->eacc};
        for (int k = 0; k < 4; k++)
            if (a[k]) be->free(a[k]);
    }
    free(ps->tern);
    if (ps->tgrad) be->free(ps->tgrad);
    if (ps->fgrad) be->free(ps->fgrad);
    if (ps->wq) be->free(ps->wq);
    if (ps->xq && ps->xq->p) be->free(ps->xq->p);
    free(ps->xq);
}

void *params_xq(const ParamStore *ps, size_t n)
{
    struct ParamActScratch *x = ps->xq;
    if (x->n < n) {
        if (x->p) ps->be->free(x->p);
        x->p = ps->be->alloc(n * ps->be->act_size);
        x->n = n;
    }
    return x->p;
}

void params_tern_upload(ParamStore *ps, int i, const uint8_t *trits, const int8_t *exp, const int8_t *tacc,
                        const int8_t *eacc)
{
    TernaryTensor *t = &ps->tern[i];
    size_t ng = tern_groups(t->n, t->group);
    ps->be->upload(t->trits, trits, trit_bytes(t->n));
    ps->be->upload(t->exp, exp, ng);
    if (!t->tacc) return; /* a read-only tensor (ParamTable.tern_frozen) */
    if (tacc) ps->be->upload(t->tacc, tacc, t->n);
    else ps->be->zero(t->tacc, t->n);
    if (eacc) ps->be->upload(t->eacc, eacc, ng);
    else ps->be->zero(t->eacc, ng);
}

void params_tern_download(const ParamStore *ps, int i, uint8_t *trits, int8_t *exp, int8_t *tacc, int8_t *eacc)
{
    const TernaryTensor *t = &ps->tern[i];
    size_t ng = tern_groups(t->n, t->group);
    if (trits) ps->be->download(trits, t->trits, trit_bytes(t->n));
    if (exp) ps->be->download(exp, t->exp, ng);
    if (tacc) ps->be->download(tacc, t->tacc, t->n);
    if (eacc) ps->be->download(eacc, t->eacc, ng);
}

void params_alloc(ParamStore *ps, const Backend *be, const ParamTable *pt) { params_alloc_plan(ps, be, pt, NULL); }

/* err_set's message, and 0 */
#define err_set0(...) (err_set(__VA_ARGS__), 0)

int params_emb_host_ok(const ParamTable *pt)
{
    int e = param_find_role(pt, PROLE_WTE, -1);
    if (e < 0) return err_set0("the model has no input embedding");
    const Param *p = &pt->p[e];
    if (p->kind != PARAM_FROZEN)
        return err_set0("the input embedding %s is %s, not frozen: host memory holds a frozen embedding only "
                       "(LoRA / QLoRA, or model.freeze)", p->name, param_kind_name(p->kind));
    if (param_find_role(pt, PROLE_LM_HEAD, -1) < 0)
        return err_set0("the input embedding %s is also the output head (tied): the head's product needs it on "
                       "the device", p->name);
    if (p->seg != 0) return err_set0("the input embedding %s is not the first frozen tensor (internal error)", p->name);
    return 1;
}

void params_alloc_plan(ParamStore *ps, const Backend *be, const ParamTable *pt, const ParamAllocPlan *plan)
{
    memset(ps, 0, sizeof(*ps));
    ps->be = be;
    ps->pt = pt;
    int what = plan ? plan->what : 0;
    size_t n = pt->n_train, lo = plan ? plan->lo : 0, hi = plan ? plan->hi : n;
    if (what && (lo > hi || hi > n)) fatal("params_alloc: [%zu, %zu) of %zu (internal error)", lo, hi, n);
    if (what & PSHARD_ACT) what |= PSHARD_MASTER; /* a sharded compute copy has only its part's master */
    ps->master_alias = be->act_dtype == DTYPE_F32;
    ps->act_lo = what & PSHARD_ACT ? lo : 0;
    ps->act_n = what & PSHARD_ACT ? hi - lo : n;
    ps->master_lo = what & PSHARD_MASTER ? lo : 0;
    ps->master_n = what & PSHARD_MASTER ? hi - lo : n;
    ps->grad_lo = what & PSHARD_GRAD ? lo : 0;
    ps->grad_n = what & PSHARD_GRAD ? hi - lo : n;
    if (n) {
        if (ps->act_n) ps->train_act = be->alloc(ps->act_n * be->act_size);
        if (ps->master_alias) /* fp32 compute: the master is (a part of) the compute copy */
            ps->master = (float *)ps->train_act + (ps->master_lo - ps->act_lo);
        else if (ps->master_n)
            ps->master = be->alloc(ps->master_n * sizeof(float));
        if (ps->grad_n) ps->grad = be->alloc(ps->grad_n * sizeof(float));
    }
    ps->frozen_lo = plan && plan->frozen_part ? plan->flo : 0;
    ps->frozen_n = plan && plan->frozen_part ? plan->fhi - plan->flo : pt->n_frozen;
    if (plan && plan->emb_host) {
        if (plan->frozen_part || !params_emb_host_ok(pt) || !be->alloc_host)
            fatal("params_alloc: the input embedding cannot be kept in host memory (internal error)");
        ps->emb_n = align_up(pt->p[param_find_role(pt, PROLE_WTE, -1)].numel);
        ps->emb_host = be->alloc_host(ps->emb_n * be->act_size);
        ps->frozen_lo = ps->emb_n; /* the device block holds the rest, as a shard from emb_n would */
        ps->frozen_n = pt->n_frozen - ps->emb_n;
    }
    if (ps->frozen_n) ps->frozen_act = be->alloc(ps->frozen_n * be->act_size);
    tern_alloc(ps);
    size_t dq = 0;
    for (int i = 0; i < pt->n; i++)
        if (pt->p[i].kind == PARAM_NF4) dq = MAX(dq, pt->p[i].numel);
    if (dq) {
        ps->q4 = xcalloc((size_t)pt->n, sizeof(*ps->q4));
        ps->dq = be->alloc(dq * be->act_size);
        ps->q4_type = Q4_NF4;
        ps->q4_blocksize = Q4_DEFAULT_BLOCKSIZE;
        ps->q4_double = 1;
    }
}

/* Copy n bytes of host memory into a new backend block (counted as 4-bit weights). */
static void *q4_put(ParamStore *ps, const void *host, size_t n)
{
    if (!host || !n) return NULL;
    void *d = ps->be->alloc(n);
    ps->be->upload(d, host, n);
    ps->q4_bytes += n;
    return d;
}

static void q4_part_free(ParamStore *ps, ParamQ4Part *q)
{
    for (int k = 0; k < 4; k++)
        if (q->mem[k]) ps->be->free(q->mem[k]);
    memset(q, 0, sizeof(*q));
}

void params_upload_q4(ParamStore *ps, int i, int part, const Q4State *h)
{
    ParamQ4Part *q = &ps->q4[i][part];
    int64_t nb = q4_nblocks(h->n, h->blocksize);
    q4_part_free(ps, q);
    q->s = *h;
    q->nested = h->absmax == NULL;
    q->s.packed = q->mem[0] = q4_put(ps, h->packed, q4_packed_bytes(h->n));
    if (h->absmax) {
        q->s.absmax = q->mem[1] = q4_put(ps, h->absmax, (size_t)nb * sizeof(float));
    } else {
        q->s.qabsmax = q->mem[1] = q4_put(ps, h->qabsmax, (size_t)nb);
        q->s.nested_absmax = q->mem[2] =
            q4_put(ps, h->nested_absmax, (size_t)q4_nblocks(nb, h->nested_blocksize) * sizeof(float));
        q->s.map8 = q->mem[3] = q4_put(ps, h->map8, Q4_MAP8_SIZE * sizeof(float));
    }
}

/* The arrays of a 4-bit part: the address of each pointer in its state and its bytes; their count. */
typedef struct {
    const void **ptr;
    size_t bytes;
} Q4Array;

static int q4_arrays(ParamQ4Part *q, Q4Array *a)
{
    Q4State *s = &q->s;
    int64_t nb = q4_nblocks(s->n, s->blocksize);
    int n = 0;
    a[n++] = (Q4Array){(const void **)&s->packed, q4_packed_bytes(s->n)};
    if (!q->nested) {
        a[n++] = (Q4Array){(const void **)&s->absmax, (size_t)nb * sizeof(float)};
    } else {
        a[n++] = (Q4Array){(const void **)&s->qabsmax, (size_t)nb};
        a[n++] = (Q4Array){(const void **)&s->nested_absmax, (size_t)q4_nblocks(nb, s->nested_blocksize) * sizeof(float)};
        a[n++] = (Q4Array){(const void **)&s->map8, Q4_MAP8_SIZE * sizeof(float)};
    }
    return n;
}

#define Q4_ALIGN 16

/* Call f for every array of the 4-bit segment in layout order, with its group and offset; returns the
 * segment's size, and fills qseg (n_layer + 3) unless NULL. */
static size_t q4_walk(const ParamStore *ps, size_t *qseg,
                      void (*f)(ParamStore *ps, int g, size_t off, Q4Array *a, void *ctx), void *ctx)
{
    const ParamTable *pt = ps->pt;
    int G = pt->n_layer + 2;
    size_t off = 0;
    if (qseg)
        for (int g = 0; g <= G; g++) qseg[g] = SIZE_MAX;
    for (int i = 0; ps->q4 && i < pt->n; i++) { /* table order is group order */
        const Param *p = &pt->p[i];
        if (p->kind != PARAM_NF4) continue;
        int g = params_group(pt, i);
        if (qseg && qseg[g] == SIZE_MAX) qseg[g] = off;
        for (int part = 0; part < p->nparts; part++) {
            Q4Array a[4];
            int n = q4_arrays(&ps->q4[i][part], a);
            for (int k = 0; k < n; k++) {
                if (f) f((ParamStore *)ps, g, off, &a[k], ctx);
                off += (a[k].bytes + Q4_ALIGN - 1) / Q4_ALIGN * Q4_ALIGN;
            }
        }
    }
    if (qseg) { /* an empty group starts where the next one does */
        qseg[G] = off;
        for (int g = G - 1; g >= 0; g--)
            if (qseg[g] == SIZE_MAX || qseg[g] > qseg[g + 1]) qseg[g] = qseg[g + 1];
    }
    return off;
}

size_t params_q4_layout(const ParamStore *ps, size_t *qseg) { return q4_walk(ps, qseg, NULL, NULL); }

typedef struct {
    char *dst;
    size_t lo, hi;
} Q4Pack;

static void q4_pack_one(ParamStore *ps, int g, size_t off, Q4Array *a, void *ctx)
{
    Q4Pack *k = ctx;
    size_t lo = MAX(off, k->lo), hi = MIN(off + a->bytes, k->hi);
    (void)g;
    if (hi <= lo) return;
    if (!*a->ptr) fatal("params_shard_q4: a 4-bit array is not held (internal error)");
    ps->be->copy(k->dst + (lo - k->lo), (const char *)*a->ptr + (lo - off), hi - lo);
}

void params_shard_q4(ParamStore *ps, size_t lo, size_t hi)
{
    const ParamTable *pt = ps->pt;
    if (!ps->q4) return;
    Q4Pack k = {.dst = hi > lo ? ps->be->alloc(hi - lo) : NULL, .lo = lo, .hi = hi};
    q4_walk(ps, NULL, q4_pack_one, &k);
    if (ps->q4_shard) ps->be->free(ps->q4_shard);
    for (int i = 0; i < pt->n; i++)
        for (int part = 0; pt->p[i].kind == PARAM_NF4 && part < pt->p[i].nparts; part++) {
            ParamQ4Part *q = &ps->q4[i][part];
            for (int m = 0; m < 4; m++)
                if (q->mem[m]) ps->be->free(q->mem[m]), q->mem[m] = NULL;
        }
    params_q4_point(ps, -1, NULL);
    ps->q4_shard = k.dst;
    ps->q4_lo = lo;
    ps->q4_n = hi - lo;
    ps->q4_bytes = hi - lo;
    ps->q4_sharded = 1;
}

typedef struct {
    int g;
    char *buf;
    size_t base;
} Q4Point;

static void q4_point_one(ParamStore *ps, int g, size_t off, Q4Array *a, void *ctx)
{
    Q4Point *k = ctx;
    (void)ps;
    if (k->g < 0 || k->g == g) *a->ptr = k->buf ? k->buf + (off - k->base) : NULL;
}

void params_q4_point(ParamStore *ps, int g, void *buf)
{
    size_t *qseg = xmalloc(((size_t)ps->pt->n_layer + 3) * sizeof(size_t));
    params_q4_layout(ps, qseg);
    Q4Point k = {.g = g, .buf = buf, .base = g < 0 ? 0 : qseg[g]};
    q4_walk(ps, NULL, q4_point_one, &k);
    free(qseg);
}

/* Quantize tensor i's fp32 values part by part (each part a Hugging Face tensor, quantized on its
 * own as bitsandbytes does), from their bf16 rounding: what a bf16-loaded model holds. */
void params_q4_quantize(const ParamStore *ps, const Param *p, int part, const float *host, Q4Quant *out)
{
    int64_t cols = p->shape[1], row0 = 0;
    for (int k = 0; k < part; k++) row0 += p->part_rows[k];
    int64_t n = (int64_t)p->part_rows[part] * cols;
    const float *v = host + row0 * cols;
    float *x = xmalloc((size_t)n * sizeof(float));
    for (int64_t k = 0; k < n; k++) x[k] = st_bf16_to_f32(st_f32_to_bf16(v[k]));
    if (q4_quantize(x, n, (Q4Type)ps->q4_type, ps->q4_blocksize, ps->q4_double, out)) fatal_err();
    free(x);
}

static void q4_quantize_upload(ParamStore *ps, int i, const float *host)
{
    const Param *p = &ps->pt->p[i];
    for (int part = 0; part < p->nparts; part++) {
        Q4Quant qq;
        params_q4_quantize(ps, p, part, host, &qq);
        params_upload_q4(ps, i, part, &qq.s);
        q4_quant_free(&qq);
    }
}

const void *params_w_dense(const ParamStore *ps, int i)
{
    const Param *p = &ps->pt->p[i];
    if (p->chunk_rows) fatal("params_w_dense: %s is read by row chunks (internal error)", p->name);
    if (p->kind == PARAM_TERNARY) { /* unpacked into the scratch, used at once (one stream) */
        ps->be->trit_unpack(ps->wq, &ps->tern[i]);
        return ps->wq;
    }
    if (p->kind != PARAM_NF4) return params_w(ps, i);
    size_t row0 = 0;
    for (int part = 0; part < p->nparts; part++) {
        if (!ps->q4[i][part].s.packed)
            fatal("params: the 4-bit tensor %s is not gathered (ZeRO-3; internal error)", p->name);
        ps->be->dequant4(act_at(ps->be, ps->dq, row0 * (size_t)p->shape[1]), &ps->q4[i][part].s);
        row0 += (size_t)p->part_rows[part];
    }
    return ps->dq;
}

void params_free(ParamStore *ps)
{
    const Backend *be = ps->be;
    if (!be) return;
    if (ps->train_act) be->free(ps->train_act);
    if (ps->master && !ps->master_alias) be->free(ps->master);
    if (ps->grad) be->free(ps->grad);
    if (ps->frozen_act) be->free(ps->frozen_act);
    if (ps->emb_host) be->free_host(ps->emb_host);
    if (ps->q4_shard) be->free(ps->q4_shard);
    if (ps->q4) {
        for (int i = 0; i < ps->pt->n; i++)
            for (int k = 0; k < PARAM_MAX_PARTS; k++) q4_part_free(ps, &ps->q4[i][k]);
        free(ps->q4);
    }
    if (ps->dq) be->free(ps->dq);
    tern_free(ps);
    free(ps->fseg);
    memset(ps, 0, sizeof(*ps));
}

void *params_w(const ParamStore *ps, int i)
{
    if (i < 0) return NULL;
    const Param *p = &ps->pt->p[i];
    if (p->kind == PARAM_NF4 || p->kind == PARAM_TERNARY)
        fatal("params_w: %s is packed (%s): use params_w_dense (internal error)", p->name, param_kind_name(p->kind));
    if (p->kind != PARAM_TRAIN) {
        if (ps->emb_host && p->seg + p->numel <= ps->emb_n) return act_at(ps->be, ps->emb_host, p->seg);
        if (ps->fgroup) {
            int g = params_group(ps->pt, i);
            if (!ps->fgroup[g]) fatal("params_w: %s: its layer's frozen weights were not gathered (internal error)", p->name);
            return act_at(ps->be, ps->fgroup[g], p->seg - ps->fseg[g]);
        }
        if (p->seg < ps->frozen_lo || p->seg + p->numel > ps->frozen_lo + ps->frozen_n)
            fatal("params_w: %s lies outside this rank's shard of the frozen weights (internal error)", p->name);
        return act_at(ps->be, ps->frozen_act, p->seg - ps->frozen_lo);
    }
    if (ps->wgroup) {
        int g = params_group(ps->pt, i);
        if (!ps->wgroup[g]) fatal("params_w: %s: its layer's weights were not gathered (internal error)", p->name);
        return act_at(ps->be, ps->wgroup[g], p->seg - ps->pt->layer_seg[g]);
    }
    if (p->seg < ps->act_lo || p->seg + p->numel > ps->act_lo + ps->act_n)
        fatal("params_w: %s lies outside this rank's shard of the weights (internal error)", p->name);
    return act_at(ps->be, ps->train_act, p->seg - ps->act_lo);
}

float *params_g(const ParamStore *ps, int i)
{
    if (i < 0) return NULL;
    if (ps->pt->p[i].kind == PARAM_TERNARY)
        return ps->pt->p[i].fused ? ps->fgrad : ps->tgrad ? ps->tgrad + ps->pt->p[i].seg : NULL;
    if (ps->pt->p[i].kind != PARAM_TRAIN) return NULL;
    const Param *p = &ps->pt->p[i];
    if (ps->ggroup) {
        int g = params_group(ps->pt, i);
        if (!ps->ggroup[g]) fatal("params_g: %s: its layer has no gradient buffer now (internal error)", p->name);
        return ps->ggroup[g] + (p->seg - ps->pt->layer_seg[g]);
    }
    if (p->seg < ps->grad_lo || p->seg + p->numel > ps->grad_lo + ps->grad_n)
        fatal("params_g: %s lies outside this rank's shard of the gradients (internal error)", p->name);
    return ps->grad + (p->seg - ps->grad_lo);
}

/* [*a, *e) = [seg, seg + n) clipped to [lo, lo + len); 0 when empty. */
static int clip_range(size_t seg, size_t n, size_t lo, size_t len, size_t *a, size_t *e)
{
    *a = MAX(seg, lo);
    *e = MIN(seg + n, lo + len);
    return *e > *a;
}

static int store_is_whole(const ParamStore *ps)
{
    size_t n = ps->pt->n_train;
    return !ps->master_lo && !ps->act_lo && ps->master_n == n && ps->act_n == n;
}

/* A trainable tensor into a sharded store: the parts of the master and of the compute copy the
 * store holds (the compute copy converted from the host values, as cast_to_act would). */
static void upload_train_part(ParamStore *ps, const Param *p, const float *host)
{
    const Backend *be = ps->be;
    size_t a, e;
    if (!ps->master_alias && clip_range(p->seg, p->numel, ps->master_lo, ps->master_n, &a, &e))
        be->upload(ps->master + (a - ps->master_lo), host + (a - p->seg), (e - a) * sizeof(float));
    if (clip_range(p->seg, p->numel, ps->act_lo, ps->act_n, &a, &e))
        be->upload_act(act_at(be, ps->train_act, a - ps->act_lo), host + (a - p->seg), e - a);
}

void params_upload(ParamStore *ps, int i, const float *host)
{
    const Param *p = &ps->pt->p[i];
    const Backend *be = ps->be;
    if (p->kind == PARAM_TERNARY) { /* the integer state of the values (ternary.h), accumulators zero */
        const TernaryTensor *t = &ps->tern[i];
        uint8_t *trits = xmalloc(trit_bytes(t->n));
        int8_t *exp = xmalloc(tern_groups(t->n, t->group));
        tern_from_f32(trits, exp, host, t->n, t->group);
        params_tern_upload(ps, i, trits, exp, NULL, NULL);
        free(trits);
        free(exp);
    } else if (p->kind == PARAM_NF4) {
        q4_quantize_upload(ps, i, host);
    } else if (p->kind == PARAM_TRAIN && !store_is_whole(ps)) {
        upload_train_part(ps, p, host);
    } else if (p->kind == PARAM_TRAIN) {
        be->upload(ps->master + p->seg, host, p->numel * sizeof(float));
        if (ps->train_act != (void *)ps->master)
            be->cast_to_act(act_at(be, ps->train_act, p->seg), ps->master + p->seg, p->numel);
    } else if (p->ternarize) { /* a frozen BitLinear (evaluation, model.freeze): ternarized once, here, part
                                 * by part; the part of it this store holds (ZeRO-3 shards the frozen segment) */
        float *q = xmalloc(p->numel * sizeof(float));
        size_t row0 = 0, cols = (size_t)p->shape[1];
        for (int k = 0; k < p->nparts; k++) {
            tern_wquant(q + row0 * cols, host + row0 * cols, (size_t)p->part_rows[k] * cols);
            row0 += (size_t)p->part_rows[k];
        }
        params_upload_ternarized(ps, i, q);
        free(q);
    } else {
        size_t a, e;
        if (clip_range(p->seg, p->numel, ps->frozen_lo, ps->frozen_n, &a, &e))
            be->upload_act(act_at(be, ps->frozen_act, a - ps->frozen_lo), host + (a - p->seg), e - a);
        if (clip_range(p->seg, p->numel, 0, ps->emb_n, &a, &e))
            be->upload_act(act_at(be, ps->emb_host, a), host + (a - p->seg), e - a);
    }
}

void params_upload_ternarized(ParamStore *ps, int i, const float *q)
{
    const Param *p = &ps->pt->p[i];
    const Backend *be = ps->be;
    size_t a, e;
    if (p->kind != PARAM_FROZEN || !p->ternarize)
        fatal("params: %s is not a frozen BitLinear (internal error)", p->name);
    if (clip_range(p->seg, p->numel, ps->frozen_lo, ps->frozen_n, &a, &e))
        be->upload_act(act_at(be, ps->frozen_act, a - ps->frozen_lo), q + (a - p->seg), e - a);
    if (clip_range(p->seg, p->numel, 0, ps->emb_n, &a, &e))
        be->upload_act(act_at(be, ps->emb_host, a), q + (a - p->seg), e - a);
}

void params_download(const ParamStore *ps, int i, float *host)
{
    const Param *p = &ps->pt->p[i];
    const Backend *be = ps->be;
    if (p->kind == PARAM_TERNARY) {
        const TernaryTensor *t = &ps->tern[i];
        uint8_t *trits = xmalloc(trit_bytes(t->n));
        int8_t *exp = xmalloc(tern_groups(t->n, t->group));
        params_tern_download(ps, i, trits, exp, NULL, NULL);
        tern_to_f32(host, trits, exp, t->n, t->group);
        free(trits);
        free(exp);
        return;
    }
    if (p->kind == PARAM_NF4) {
        be->download_act(host, params_w_dense(ps, i), p->numel);
        return;
    }
    if (p->kind == PARAM_TRAIN) {
        size_t a, e;
        if (clip_range(p->seg, p->numel, ps->master_lo, ps->master_n, &a, &e) && e - a == p->numel)
            be->download(host, ps->master + (p->seg - ps->master_lo), p->numel * sizeof(float));
        else if (ps->master_alias && clip_range(p->seg, p->numel, ps->act_lo, ps->act_n, &a, &e) && e - a == p->numel)
            be->download(host, (const float *)ps->train_act + (p->seg - ps->act_lo), p->numel * sizeof(float));
        else
            fatal("params_download: %s is sharded over the ranks (internal error: gather the master first)", p->name);
    } else if (ps->emb_host && p->seg + p->numel <= ps->emb_n) {
        be->download_act(host, act_at(be, ps->emb_host, p->seg), p->numel);
    } else {
        if (p->seg < ps->frozen_lo || p->seg + p->numel > ps->frozen_lo + ps->frozen_n)
            fatal("params_download: %s is sharded over the ranks (internal error: gather it first)", p->name);
        be->download_act(host, act_at(be, ps->frozen_act, p->seg - ps->frozen_lo), p->numel);
    }
}

void params_sync_act(ParamStore *ps)
{
    size_t a, e;
    if (ps->master_alias || !clip_range(ps->master_lo, ps->master_n, ps->act_lo, ps->act_n, &a, &e)) return;
    ps->be->cast_to_act(act_at(ps->be, ps->train_act, a - ps->act_lo), ps->master + (a - ps->master_lo), e - a);
}

size_t params_chunk_numel(const ParamTable *pt, int i)
{
    const Param *p = &pt->p[i];
    return p->chunk_rows ? (size_t)p->chunk_rows * (size_t)p->shape[1] : p->numel;
}

int params_nchunks(const ParamTable *pt, int i)
{
    const Param *p = &pt->p[i];
    return p->chunk_rows ? (int)((p->shape[0] + p->chunk_rows - 1) / p->chunk_rows) : 1;
}

void params_chunk(const ParamTable *pt, int i, int k, int *r0, int *r1)
{
    const Param *p = &pt->p[i];
    int rows = (int)p->shape[0], step = p->chunk_rows ? p->chunk_rows : rows;
    *r0 = k * step;
    *r1 = MIN(rows, *r0 + step);
}

/* Rows [r0, r1) of a ternary tensor as a tensor of its own (r0 on a chunk boundary: whole bytes, words and
 * groups, chunk_rows_for), its gradient the scratch. */
static TernaryTensor tern_rows(const ParamStore *ps, int i, int r0, int r1)
{
    TernaryTensor t = ps->tern[i];
    size_t cols = (size_t)ps->pt->p[i].shape[1], s = (size_t)r0 * cols;
    t.trits += s / TRITS_PER_BYTE;
    t.exp += s / (size_t)t.group;
    t.tacc += s;
    t.eacc += s / (size_t)t.group;
    t.n = (size_t)(r1 - r0) * cols;
    t.grad = ps->fgrad;
    return t;
}

const void *params_w_rows(const ParamStore *ps, int i, int r0, int r1)
{
    const Param *p = &ps->pt->p[i];
    if (p->kind != PARAM_TERNARY || (size_t)(r1 - r0) * (size_t)p->shape[1] > ps->wq_numel)
        fatal("params_w_rows: %s rows %d..%d do not fit the weight scratch (internal error)", p->name, r0, r1);
    TernaryTensor t = tern_rows(ps, i, r0, r1);
    ps->be->trit_unpack(ps->wq, &t);
    return ps->wq;
}

void params_grad_rows_begin(const ParamStore *ps, int i, int r0, int r1)
{
    ps->be->zero(ps->fgrad, (size_t)(r1 - r0) * (size_t)ps->pt->p[i].shape[1] * sizeof(float));
}

/* A fused tensor's (or chunk's) gradient in fgrad is complete on this rank: data parallel sums it over the
 * ranks (the global mean gradient: every rank's loss gradient is scaled by 1 / the global count), then
 * every rank makes the same integer update. */
static void tern_update_fused(const ParamStore *ps, const TernaryTensor *t)
{
    if (ps->tern_reduce && ps->tern_reduce(ps->tern_ctx, ps->fgrad, t->n)) return; /* t->grad is fgrad */
    ps->be->ternary_update(t, 1, &ps->tern_hyper);
}

void params_grad_rows_done(const ParamStore *ps, int i, int r0, int r1)
{
    if (!ps->tern_live) return;
    TernaryTensor t = tern_rows(ps, i, r0, r1);
    tern_update_fused(ps, &t);
}

void params_grad_begin(const ParamStore *ps, int i)
{
    if (i >= 0 && ps->pt->p[i].chunk_rows) fatal("params_grad_begin: %s is updated by row chunks (internal error)", ps->pt->p[i].name);
    if (i >= 0 && ps->pt->p[i].fused) ps->be->zero(ps->fgrad, ps->pt->p[i].numel * sizeof(float));
}

void params_grad_done(const ParamStore *ps, int i)
{
    if (i < 0 || !ps->pt->p[i].fused || !ps->tern_live) return;
    tern_update_fused(ps, &ps->tern[i]);
}

void params_zero_grad(ParamStore *ps)
{
    if (ps->grad) ps->be->zero(ps->grad, ps->grad_n * sizeof(float));
    if (ps->tgrad) ps->be->zero(ps->tgrad, ps->pt->n_tern * sizeof(float));
}

ParamBytes params_bytes(const ParamStore *ps)
{
    const ParamTable *pt = ps->pt;
    size_t as = ps->be->act_size;
    ParamBytes b = {0};
    /* an fp32 compute copy is the master (counted as master) */
    b.master = !ps->master ? 0 : ps->master_alias ? ps->act_n * sizeof(float) : ps->master_n * sizeof(float);
    b.grads = (ps->grad ? ps->grad_n * sizeof(float) : 0) + (ps->tgrad ? pt->n_tern * sizeof(float) : 0) +
              ps->fgrad_numel * sizeof(float);
    b.weights = (ps->train_act && !ps->master_alias ? ps->act_n * as : 0) +
                (ps->frozen_act ? ps->frozen_n * as : 0) + ps->q4_bytes + ps->tern_bytes;
    b.tstate = ps->tern_state_bytes;
    b.host = ps->emb_n * as;
    b.scratch = ps->wq_numel * as;
    if (ps->dq) {
        size_t dq = 0;
        for (int i = 0; i < pt->n; i++)
            if (pt->p[i].kind == PARAM_NF4) dq = MAX(dq, pt->p[i].numel);
        b.scratch += dq * as;
    }
    return b;
}

int params_group(const ParamTable *pt, int i)
{
    const Param *p = &pt->p[i];
    if (p->layer >= 0) return 1 + p->layer;
    /* the bert family's token types lie among the embeddings (param_table_set_kinds' groups) */
    return p->role == PROLE_WTE || p->role == PROLE_WPE || p->role == PROLE_TTE ? 0 : pt->n_layer + 1;
}

void params_frozen_groups(const ParamTable *pt, size_t *fseg)
{
    int G = pt->n_layer + 2;
    for (int g = 0; g <= G; g++) fseg[g] = pt->n_frozen;
    for (int i = pt->n - 1; i >= 0; i--) /* table order is group order: the first tensor of each */
        if (pt->p[i].kind == PARAM_FROZEN) fseg[params_group(pt, i)] = pt->p[i].seg;
    for (int g = G - 1; g >= 0; g--) /* an empty group starts where the next one does */
        if (fseg[g] > fseg[g + 1]) fseg[g] = fseg[g + 1];
}

/* A new buffer of the part [lo, hi) of a buffer that holds [old_lo, old_lo + old_n), elem bytes per
 * element, the values copied; the old buffer freed. */
static void *keep_part(const Backend *be, void *old, size_t old_lo, size_t elem, size_t lo, size_t hi, int copy)
{
    void *nb = hi > lo ? be->alloc((hi - lo) * elem) : NULL;
    if (copy && nb) be->copy(nb, (char *)old + (lo - old_lo) * elem, (hi - lo) * elem);
    if (old) be->free(old);
    return nb;
}

void params_shard_store(ParamStore *ps, size_t lo, size_t hi, int what)
{
    const Backend *be = ps->be;
    if (!ps->pt->n_train) return;
    if (lo < ps->act_lo || hi > ps->act_lo + ps->act_n || (!ps->master_alias && (lo < ps->master_lo || hi > ps->master_lo + ps->master_n)))
        fatal("params_shard_store: [%zu, %zu) is not held (internal error)", lo, hi);
    if (ps->act_lo == lo && ps->act_n == hi - lo) what &= ~PSHARD_ACT; /* allocated so (params_alloc_plan) */
    if (ps->master_lo == lo && ps->master_n == hi - lo) what &= ~PSHARD_MASTER;
    if (ps->grad_lo == lo && ps->grad_n == hi - lo) what &= ~PSHARD_GRAD;
    if (what & PSHARD_ACT) {
        ps->train_act = keep_part(be, ps->train_act, ps->act_lo, be->act_size, lo, hi, 1);
        ps->act_lo = lo;
        ps->act_n = hi - lo;
        if (ps->master_alias) { /* the master was inside the old copy: it is the new one */
            ps->master = ps->train_act;
            ps->master_lo = lo;
            ps->master_n = hi - lo;
        }
    }
    if (what & PSHARD_MASTER) {
        if (ps->master_alias) {
            ps->master = (float *)ps->train_act + (lo - ps->act_lo);
        } else {
            ps->master = keep_part(be, ps->master, ps->master_lo, sizeof(float), lo, hi, 1);
        }
        ps->master_lo = lo;
        ps->master_n = hi - lo;
    }
    if (what & PSHARD_GRAD) {
        ps->grad = keep_part(be, ps->grad, ps->grad_lo, sizeof(float), lo, hi, 0);
        if (ps->grad) be->zero(ps->grad, (hi - lo) * sizeof(float));
        ps->grad_lo = lo;
        ps->grad_n = hi - lo;
    }
}

void params_shard_frozen(ParamStore *ps, size_t lo, size_t hi)
{
    if (!ps->pt->n_frozen) return;
    if (lo < ps->frozen_lo || hi > ps->frozen_lo + ps->frozen_n)
        fatal("params_shard_frozen: [%zu, %zu) is not held (internal error)", lo, hi);
    if (ps->frozen_lo == lo && ps->frozen_n == hi - lo) return; /* allocated so (params_alloc_plan) */
    ps->frozen_act = keep_part(ps->be, ps->frozen_act, ps->frozen_lo, ps->be->act_size, lo, hi, 1);
    ps->frozen_lo = lo;
    ps->frozen_n = hi - lo;
}
