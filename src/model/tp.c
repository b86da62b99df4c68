/* tp.c - tensor parallel: the slices of each rank, and the embedding and loss over a vocabulary
 * split across the group (tp.h). */
#include "model/tp.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "model/lora.h"
#include "model/model.h"

int tp_config_local(const ModelConfig *full, int P, int r, ModelConfig *local)
{
    if (P < 1 || r < 0 || r >= P)
        return err_set("dist.tp: %d (rank %d in it) is not a group size (internal error)", P, r);
    if (full->n_head % P) return err_set("dist.tp: %d does not divide model.n_head %d", P, full->n_head);
    if (full->n_kv_head % P)
        return err_set("dist.tp: %d does not divide model.n_kv_head %d", P, full->n_kv_head);
    if (full->d_ff % P) return err_set("dist.tp: %d does not divide model.d_ff %d", P, full->d_ff);
    if (full->moe_experts && full->moe_d_ff % P)
        return err_set("dist.tp: %d does not divide model.moe.d_ff %d", P, full->moe_d_ff);
    if (full->moe_experts && full->moe_shared_d_ff % P)
        return err_set("dist.tp: %d does not divide the shared experts' width %d (model.moe.shared_experts x "
                       "model.moe.d_ff, or the directory's shared_expert_intermediate_size)",
                       P, full->moe_shared_d_ff);
    int v0, vn;
    tp_vocab_part(full->vocab_size, P, P - 1, &v0, &vn);
    if (vn <= 0)
        return err_set("dist.tp: %d ranks leave the last one no rows of model.vocab_size %d", P,
                       full->vocab_size);
    *local = *full;
    local->n_head = full->n_head / P;
    local->n_kv_head = full->n_kv_head / P;
    local->d_ff = full->d_ff / P;
    local->moe_d_ff = full->moe_d_ff / P; /* each expert's units (and the shared expert's) split as a dense MLP's */
    local->moe_shared_d_ff = full->moe_shared_d_ff / P;
    tp_vocab_part(full->vocab_size, P, r, &v0, &vn);
    local->vocab_size = vn;
    return 0;
}

void tp_vocab_part(int V, int P, int r, int *v0, int *vn)
{
    int per = (V + P - 1) / P;
    *v0 = MIN(V, r * per);
    *vn = MIN(V, *v0 + per) - *v0;
}

/* Whether an adapter's site sits on a row-parallel product (attention-out, MLP-out): its A is split
 * by columns there, its B whole; on a column-parallel one the B by rows, the A whole. */
static int lora_site_row(int site)
{
    return site == LORA_O || site == LORA_DOWN || site == LORA_EXP_PROJ || site == LORA_EXP_W2 || site == LORA_SH_DOWN;
}

int tp_param_split(const Param *p)
{
    /* the shared expert's gate and the router are whole, and so are their adapters */
    if (p->site == LORA_SH_ROUTE || p->site == LORA_ROUTER) return 0;
    if (p->role == PROLE_LORA_A) return lora_site_row(p->site);
    if (p->role == PROLE_LORA_B) return !lora_site_row(p->site);
    return tp_role_split(p->role);
}

int tp_role_split(int role)
{
    switch (role) {
    case PROLE_WTE:
    case PROLE_LM_HEAD:
    case PROLE_MLM_BIAS:
    case PROLE_QKV_W:
    case PROLE_QKV_B:
    case PROLE_O_W:
    case PROLE_FC_W:
    case PROLE_FC_B:
    case PROLE_PROJ_W:
    case PROLE_EXP_FC_W:
    case PROLE_EXP_PROJ_W:
    case PROLE_SH_FC_W:
    case PROLE_SH_PROJ_W:
    case PROLE_ATTN_SUB_W: /* BitNet's sub-norms normalize split features: r's slice of them */
    case PROLE_FFN_SUB_W:
        return 1;
    default:
        return 0;
    }
}

/* rows x cols of whole[row0.., col0..] (row length wcols) <-> local[lrow0.., 0..] (row length lcols) */
static void copy_block(float *whole, size_t wcols, float *local, size_t lcols, size_t rows, size_t row0,
                       size_t lrow0, size_t col0, size_t cols, int to_local)
{
    for (size_t i = 0; i < rows; i++) {
        float *w = whole + (row0 + i) * wcols + col0, *l = local + (lrow0 + i) * lcols;
        if (to_local)
            memcpy(l, w, cols * sizeof(float));
        else
            memcpy(w, l, cols * sizeof(float));
    }
}

/* A gated MLP's [gate | up] rows (F each): r's F / P units of each half. */
static void copy_glu_rows(float *whole, size_t wcols, float *local, size_t lcols, size_t F, int P, int r, int to_local)
{
    size_t el = F / (size_t)P;
    copy_block(whole, wcols, local, lcols, el, r * el, 0, 0, wcols, to_local);
    copy_block(whole, wcols, local, lcols, el, F + r * el, el, 0, wcols, to_local);
}

/* One tensor: whole (pw) <-> rank r's slice (pl). */
static void slice_tensor(const ModelConfig *c, int P, int r, const Param *pw, const Param *pl, float *whole,
                         float *local, int to_local)
{
    size_t wcols = pw->ndim == 2 ? (size_t)pw->shape[1] : 1, lcols = pl->ndim == 2 ? (size_t)pl->shape[1] : 1;
    size_t wrows = pw->numel / wcols, lrows = pl->numel / lcols;
    size_t qd = (size_t)cfg_q_dim(c), kvd = (size_t)cfg_kv_dim(c), ql = qd / P, kvl = kvd / P,
           fl = (size_t)c->d_ff / P;
    switch (pw->role) {
    case PROLE_QKV_W:
    case PROLE_QKV_B: /* rows [q | k | v]: r's heads of each */
        copy_block(whole, wcols, local, lcols, ql, r * ql, 0, 0, wcols, to_local);
        copy_block(whole, wcols, local, lcols, kvl, qd + r * kvl, ql, 0, wcols, to_local);
        copy_block(whole, wcols, local, lcols, kvl, qd + kvd + r * kvl, ql + kvl, 0, wcols, to_local);
        break;
    case PROLE_FC_W:
    case PROLE_FC_B: /* rows of r's units; llama [gate | up] */
        if (c->family == FAMILY_LLAMA) copy_glu_rows(whole, wcols, local, lcols, (size_t)c->d_ff, P, r, to_local);
        else copy_block(whole, wcols, local, lcols, fl, r * fl, 0, 0, wcols, to_local);
        break;
    case PROLE_EXP_FC_W: /* an expert's [w1 | w3] (gate | up) */
        copy_glu_rows(whole, wcols, local, lcols, (size_t)c->moe_d_ff, P, r, to_local);
        break;
    case PROLE_SH_FC_W:
        copy_glu_rows(whole, wcols, local, lcols, (size_t)c->moe_shared_d_ff, P, r, to_local);
        break;
    case PROLE_ATTN_SUB_W: /* the features of r's query heads (o's input columns) */
        copy_block(whole, wcols, local, lcols, ql, r * ql, 0, 0, 1, to_local);
        break;
    case PROLE_FFN_SUB_W: /* the features of r's units (proj's input columns) */
        copy_block(whole, wcols, local, lcols, fl, r * fl, 0, 0, 1, to_local);
        break;
    case PROLE_O_W: /* columns of r's query heads */
        copy_block(whole, wcols, local, lcols, wrows, 0, 0, r * ql, ql, to_local);
        break;
    case PROLE_PROJ_W: /* columns of r's units */
        copy_block(whole, wcols, local, lcols, wrows, 0, 0, r * fl, fl, to_local);
        break;
    case PROLE_EXP_PROJ_W:
    case PROLE_SH_PROJ_W: /* columns of r's units of the expert */
        copy_block(whole, wcols, local, lcols, wrows, 0, 0, r * lcols, lcols, to_local);
        break;
    case PROLE_LORA_A: /* on a row-parallel product: the columns of r's heads or units */
    case PROLE_LORA_B: /* on a column-parallel one: the rows its part of the product's outputs */
        if (!tp_param_split(pw)) goto whole;
        switch (pw->site) {
        case LORA_O: copy_block(whole, wcols, local, lcols, wrows, 0, 0, r * ql, ql, to_local); break;
        case LORA_DOWN: copy_block(whole, wcols, local, lcols, wrows, 0, 0, r * fl, fl, to_local); break;
        case LORA_Q: copy_block(whole, wcols, local, lcols, ql, r * ql, 0, 0, wcols, to_local); break;
        case LORA_K:
        case LORA_V: copy_block(whole, wcols, local, lcols, kvl, r * kvl, 0, 0, wcols, to_local); break;
        case LORA_QKV: /* gpt2 c_attn: rows [q | k | v] as qkv.w's */
            copy_block(whole, wcols, local, lcols, ql, r * ql, 0, 0, wcols, to_local);
            copy_block(whole, wcols, local, lcols, kvl, qd + r * kvl, ql, 0, wcols, to_local);
            copy_block(whole, wcols, local, lcols, kvl, qd + kvd + r * kvl, ql + kvl, 0, wcols, to_local);
            break;
        case LORA_GATE:
        case LORA_UP:
        case LORA_FC: copy_block(whole, wcols, local, lcols, fl, r * fl, 0, 0, wcols, to_local); break;
        case LORA_EXP_FC: /* an expert's [gate | up] rows, as exp.e.fc.w's */
            copy_glu_rows(whole, wcols, local, lcols, (size_t)c->moe_d_ff, P, r, to_local);
            break;
        case LORA_SH_GATE:
        case LORA_SH_UP:    /* the shared expert's gate_proj or up_proj rows */
        case LORA_EXP_W1:   /* an expert's w1 (gate) or w3 (up) rows (transformers 4's modules) */
        case LORA_EXP_W3: {
            size_t el = (size_t)(pw->site == LORA_EXP_W1 || pw->site == LORA_EXP_W3 ? c->moe_d_ff : c->moe_shared_d_ff) / P;
            copy_block(whole, wcols, local, lcols, el, r * el, 0, 0, wcols, to_local);
            break;
        }
        case LORA_EXP_PROJ:
        case LORA_EXP_W2:
        case LORA_SH_DOWN: /* columns of r's units */
            copy_block(whole, wcols, local, lcols, wrows, 0, 0, r * lcols, lcols, to_local);
            break;
        default: fatal("tp: %s: adapter site %d (internal error)", pw->name, pw->site);
        }
        break;
    case PROLE_WTE:
    case PROLE_LM_HEAD:
    case PROLE_MLM_BIAS: { /* rows of r's vocabulary slice (an encoder's decoder bias: its entries) */
        int v0, vn;
        tp_vocab_part(c->vocab_size, P, r, &v0, &vn);
        copy_block(whole, wcols, local, lcols, (size_t)vn, (size_t)v0, 0, 0, wcols, to_local);
        break;
    }
    default: /* whole on every rank */
    whole:
        if (pw->numel != pl->numel)
            fatal("tp: %s has %zu elements whole and %zu on rank %d (internal error)", pw->name, pw->numel,
                  pl->numel, r);
        copy_block(whole, wcols, local, lcols, wrows, 0, 0, 0, wcols, to_local);
    }
    (void)lrows;
}

void tp_slice_tensor(const ModelConfig *full, int P, int r, const Param *pw, const Param *pl, float *whole,
                     float *local, int to_local)
{
    slice_tensor(full, P, r, pw, pl, whole, local, to_local);
}

void tp_slice(const ModelConfig *full, int P, int r, const ParamTable *wpt, const ParamTable *lpt,
              float *whole, float *local, int to_local, int seg)
{
    if (wpt->n != lpt->n) fatal("tp: %d tensors whole, %d on rank %d (internal error)", wpt->n, lpt->n, r);
    for (int i = 0; i < wpt->n; i++) {
        const Param *pw = &wpt->p[i], *pl = &lpt->p[i];
        if (pw->role != pl->role || strcmp(pw->name, pl->name))
            fatal("tp: tensor %d is %s whole and %s on rank %d (internal error)", i, pw->name, pl->name, r);
        if (seg && (pw->kind != PARAM_TRAIN || pl->kind != PARAM_TRAIN)) continue;
        size_t ow = seg ? pw->seg : pw->offset, ol = seg ? pl->seg : pl->offset;
        slice_tensor(full, P, r, pw, pl, whole + ow, local + ol, to_local);
    }
}

/* The rectangles of whole part `part` of pw (a (part_rows, cols) tensor) that rank r's part holds. */
static int q4_rects(const ModelConfig *c, int P, int r, const Param *pw, const Param *pl, int part, Q4Rect *q)
{
    int64_t cols = pw->shape[1], rows = pw->part_rows[part];
    switch (pw->role) {
    case PROLE_O_W:
    case PROLE_PROJ_W:
    case PROLE_EXP_PROJ_W:
    case PROLE_SH_PROJ_W: { /* row-parallel: r's columns of every row */
        int64_t nc = pl->shape[1];
        q[0] = (Q4Rect){0, rows, r * nc, nc};
        return 1;
    }
    case PROLE_QKV_W:
        if (pw->nparts == 1) { /* gpt2 c_attn, one tensor: r's rows of q, of k and of v */
            int64_t qd = cfg_q_dim(c), kvd = cfg_kv_dim(c), ql = qd / P, kvl = kvd / P;
            q[0] = (Q4Rect){r * ql, ql, 0, cols};
            q[1] = (Q4Rect){qd + r * kvl, kvl, 0, cols};
            q[2] = (Q4Rect){qd + kvd + r * kvl, kvl, 0, cols};
            return 3;
        }
        __attribute__((fallthrough)); /* llama's q, k and v are parts of their own */
    case PROLE_FC_W:
    case PROLE_EXP_FC_W:
    case PROLE_SH_FC_W: { /* column-parallel: r's rows of the part */
        int64_t nr = pl->part_rows[part];
        q[0] = (Q4Rect){r * nr, nr, 0, cols};
        return 1;
    }
    default: fatal("tp: %s is 4-bit but not a block linear (internal error)", pw->name);
    }
}

int tp_q4_blocksize(const ModelConfig *full, int P, int r, const Param *pw, const Param *pl, int part, int blocksize,
                    int64_t *values)
{
    Q4Rect q[3];
    int n = q4_rects(full, P, r, pw, pl, part, q);
    return q4_gather_blocksize((int64_t)pw->part_rows[part] * pw->shape[1], pw->shape[1], blocksize, q, n, values);
}

int tp_q4_slice(const ModelConfig *full, int P, int r, const Param *pw, const Param *pl, int part,
                const Q4State *whole, Q4Quant *out)
{
    if (pw->nparts != pl->nparts || part < 0 || part >= pw->nparts || pw->role != pl->role)
        fatal("tp: %s: part %d of %d whole and %d on rank %d (internal error)", pw->name, part, pw->nparts,
              pl->nparts, r);
    Q4Rect q[3];
    int n = q4_rects(full, P, r, pw, pl, part, q);
    if (q4_gather(whole, pw->shape[1], q, n, out))
        return err_prefix("dist.tp %d: the 4-bit %s cannot be split into %lld %s per rank", P, pw->name,
                          (long long)(n == 1 && q[0].nc < pw->shape[1] ? q[0].nc : pl->part_rows[part]),
                          n == 1 && q[0].nc < pw->shape[1] ? "columns" : "rows");
    int64_t want = (int64_t)pl->part_rows[part] * pl->shape[1];
    if (out->s.n != want)
        fatal("tp: %s part %d: %lld values sliced, %lld expected (internal error)", pw->name, part,
              (long long)out->s.n, (long long)want);
    return 0;
}

static void split_linear(Linear *L, LinearSplit s, const ModelTp *tp)
{
    if (L->w < 0) return;
    L->split = s;
    L->tp = tp;
}

void tp_attach(Model *m, ModelTp *tp)
{
    const Backend *be = m->be;
    if (!m->la) fatal("tp_attach: before model_reserve (internal error)");
    m->tp = tp;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        LayerParams *p = &m->lp[l];
        split_linear(&p->qkv, LINEAR_COL, tp);
        split_linear(&p->fc, LINEAR_COL, tp);
        split_linear(&p->o, LINEAR_ROW, tp);
        split_linear(&p->proj, LINEAR_ROW, tp);
        if (!p->moe) continue;
        /* an MoE layer's experts: split as a dense MLP's, the layer summing their outputs and input
         * gradients once (moe.c); their adapters' own sums stay in the products */
        for (int e = 0; e < m->cfg.moe_experts; e++) {
            split_linear(&p->exp_fc[e], LINEAR_COL, tp);
            split_linear(&p->exp_proj[e], LINEAR_ROW, tp);
            p->exp_fc[e].sum_by_caller = p->exp_proj[e].sum_by_caller = 1;
        }
        split_linear(&p->sh_fc, LINEAR_COL, tp);
        split_linear(&p->sh_proj, LINEAR_ROW, tp);
        p->sh_fc.sum_by_caller = p->sh_proj.sum_by_caller = 1;
    }
    split_linear(&m->head, LINEAR_COL, tp);
    size_t cap = (size_t)m->Bmax * m->Tmax, C = (size_t)m->cfg.d_model;
    tp->cap = (int)cap;
    tp->ids = be->alloc(cap * sizeof(int32_t));
    tp->pos = be->alloc(cap * sizeof(int32_t));
    tp->zrows = be->alloc(cap * sizeof(int32_t));
    tp->ids_host = xmalloc(cap * sizeof(int32_t));
    tp->pos_host = xmalloc(cap * sizeof(int32_t));
    tp->zrows_host = xmalloc(cap * sizeof(int32_t));
    tp->zeros = be->alloc(cap * C * be->act_size);
    be->zero(tp->zeros, cap * C * be->act_size);
    tp->logits = be->alloc(cap * (size_t)tp->vn * be->act_size);
    tp->stats = be->alloc((size_t)tp->size * cap * 3 * sizeof(float));
    if (m->cfg.ternary == TERNARY_BITNET || m->cfg.sub_norm) {
        tp->wsum = be->alloc((size_t)tp->size * TP_BITLINEAR_PARTS * sizeof(double));
        tp->amax = be->alloc((size_t)tp->size * cap * sizeof(float));
        tp->rowst = be->alloc((size_t)tp->size * cap * sizeof(double));
    }
}

void tp_detach(Model *m)
{
    ModelTp *tp = m->tp;
    if (!tp) return;
    const Backend *be = m->be;
    void *bufs[] = {tp->ids, tp->pos, tp->zrows, tp->zeros, tp->logits, tp->stats, tp->wsum, tp->amax, tp->rowst};
    for (size_t i = 0; i < ARRAY_LEN(bufs); i++)
        if (bufs[i]) be->free(bufs[i]);
    free(tp->ids_host);
    free(tp->pos_host);
    free(tp->zrows_host);
    tp->ids = tp->pos = tp->zrows = tp->ids_host = tp->pos_host = tp->zrows_host = NULL;
    tp->zeros = tp->logits = NULL;
    tp->stats = tp->amax = NULL;
    tp->wsum = tp->rowst = NULL;
    m->tp = NULL;
}

void tp_tokens(Model *m, const int32_t *ids, int B, int T, int pos0)
{
    ModelTp *tp = m->tp;
    int N = B * T;
    if (N > tp->cap) fatal("tp: %d rows exceed the reserved %d (internal error)", N, tp->cap);
    tp->nz = 0;
    for (int i = 0; i < N; i++) {
        if (ids[i] < 0 || ids[i] >= tp->full.vocab_size)
            fatal("model_forward: token %d is outside the vocabulary of %d (internal error)", ids[i],
                  tp->full.vocab_size);
        int t = ids[i] - tp->v0, in = t >= 0 && t < tp->vn;
        tp->ids_host[i] = in ? t : 0;
        if (!in) tp->zrows_host[tp->nz++] = i;
        tp->pos_host[i] = pos0 + i % T;
    }
    const Backend *be = m->be;
    be->upload(tp->ids, tp->ids_host, (size_t)N * sizeof(int32_t));
    be->upload(tp->pos, tp->pos_host, (size_t)N * sizeof(int32_t));
    if (tp->nz) be->upload(tp->zrows, tp->zrows_host, (size_t)tp->nz * sizeof(int32_t));
}

void tp_embed_fwd(Model *m, void *out, void *scratch, int B, int T)
{
    ModelTp *tp = m->tp;
    const Backend *be = m->be;
    int C = m->cfg.d_model;
    size_t n = (size_t)B * T * C;
    const void *wpe = params_w(&m->ps, m->wpe);
    /* the positions first, so that the word ids are the last lookup's (the CUDA backend keeps them for
     * embed_bwd) */
    if (wpe) be->embed_fwd(scratch, tp->pos, wpe, NULL, B, T, C, 0);
    be->embed_fwd(out, tp->ids, params_w_dense(&m->ps, m->wte), NULL, B, T, C, 0);
    if (tp->nz) be->scatter_rows(out, tp->zeros, tp->zrows, tp->nz, C); /* ids of other slices: zero rows */
    tp_all_reduce_act(tp, out, n); /* one rank's row plus zeros: exactly wte[id] */
    if (wpe) be->add(out, out, scratch, n);
}

void tp_embed_bwd(Model *m, const void *dres, void *scratch, int B, int T)
{
    ModelTp *tp = m->tp;
    const Backend *be = m->be;
    const ParamStore *ps = &m->ps;
    int C = m->cfg.d_model;
    float *dwpe = params_g(ps, m->wpe), *dwte = params_g(ps, m->wte);
    if (dwpe) be->embed_bwd(NULL, dwpe + (size_t)m->cfg.pos_offset * C, dres, tp->ids, B, T, C);
    if (!dwte) return;
    be->copy(scratch, dres, (size_t)B * T * C * be->act_size);
    if (tp->nz)
        be->scatter_rows(scratch, tp->zeros, tp->zrows, tp->nz, C); /* rows of other slices add nothing */
    be->embed_bwd(dwte, NULL, scratch, tp->ids, B, T, C);
}

void tp_head_xent(Model *m, float *losses, void *dlnf, const void *lnf, const int32_t *targets, int N,
                  float dscale)
{
    ModelTp *tp = m->tp;
    const Backend *be = m->be;
    const ParamStore *ps = &m->ps;
    linear_fwd(ps, &m->head, tp->logits, lnf, N, NULL); /* (N, vn): this rank's columns of the logits */
    be->xent_vp_stats(tp->stats + (size_t)tp->rank * N * 3, tp->logits, targets, N, tp->vn, tp->v0);
    tp->all_gather_f32(tp->ctx, tp->stats, (size_t)N * 3);
    be->xent_vp_finish(losses, tp->logits, targets, tp->stats, tp->size, N, tp->vn, tp->v0, dscale);
    if (dscale != 0)
        linear_bwd(ps, &m->head, dlnf, tp->logits, lnf, N, NULL); /* column-parallel: dlnf summed */
}

/* ---- BitNet: the statistics over the whole of what each rank holds a slice of ---- */

/* The group's gather of one double per rank and row (doubles travel as pairs of fp32 words: the
 * gather copies bytes, so each rank's sums arrive as they were computed). */
static void gather_f64(const ModelTp *tp, double *buf, size_t n)
{
    tp->all_gather_f32(tp->ctx, (float *)buf, 2 * n);
}

void tp_bitlinear_quant(const ModelTp *tp, const Backend *be, const Param *p, void *out, const void *w, int w_act)
{
    if (p->nparts < 1 || p->nparts > TP_BITLINEAR_PARTS)
        fatal("tp: BitLinear %s has %d parts (internal error)", p->name, p->nparts);
    size_t cols = (size_t)p->shape[1], off = 0, wsz = w_act ? be->act_size : sizeof(float);
    double *mine = tp->wsum + (size_t)tp->rank * TP_BITLINEAR_PARTS;
    for (int k = 0; k < p->nparts; off += (size_t)p->part_rows[k] * cols, k++)
        be->ternary_abs_sum(mine + k, (const char *)w + off * wsz, w_act, (size_t)p->part_rows[k] * cols);
    gather_f64(tp, tp->wsum, TP_BITLINEAR_PARTS);
    off = 0;
    for (int k = 0; k < p->nparts; off += (size_t)p->part_rows[k] * cols, k++) {
        size_t n = (size_t)p->part_rows[k] * cols; /* every rank holds as many of the part's values */
        be->ternary_wquant_sums(act_at(be, out, off), (const char *)w + off * wsz, w_act, n, tp->wsum + k, tp->size,
                                TP_BITLINEAR_PARTS, (double)n * tp->size);
    }
}

void tp_bitlinear_act(const ModelTp *tp, const Backend *be, void *xq, const void *inp, int N, int C)
{
    if (N > tp->cap) fatal("tp: %d rows exceed the reserved %d (internal error)", N, tp->cap);
    be->act_absmax(tp->amax + (size_t)tp->rank * N, inp, N, C);
    tp->all_gather_f32(tp->ctx, tp->amax, (size_t)N);
    be->act_quant8_amax(xq, inp, tp->amax, tp->size, N, C);
}

void tp_sub_norm_fwd(const ModelTp *tp, const Backend *be, void *out, float *rstd, const void *x, const void *w, int N,
                     int C, float eps)
{
    if (N > tp->cap) fatal("tp: %d rows exceed the reserved %d (internal error)", N, tp->cap);
    be->rms_row_dot(tp->rowst + (size_t)tp->rank * N, x, x, NULL, NULL, N, C);
    gather_f64(tp, tp->rowst, (size_t)N);
    be->rms_split_fwd(out, rstd, x, w, tp->rowst, tp->size, N, C, C * tp->size, eps);
}

void tp_sub_norm_bwd(const ModelTp *tp, const Backend *be, void *dinp, float *dw, const void *dout, const void *x,
                     const void *w, const float *rstd, int N, int C)
{
    if (N > tp->cap) fatal("tp: %d rows exceed the reserved %d (internal error)", N, tp->cap);
    be->rms_row_dot(tp->rowst + (size_t)tp->rank * N, dout, x, w, rstd, N, C);
    gather_f64(tp, tp->rowst, (size_t)N);
    be->rms_split_bwd(dinp, dw, dout, x, w, rstd, tp->rowst, tp->size, N, C, C * tp->size);
}
