/* moe.c - the mixture-of-experts MLP (moe.h, docs/moe.md). Every weight product goes through
 * linear.h: the router, each expert's two products over its contiguous rows, the shared expert. */
#include "model/moe.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "model/dropout.h"
#include "model/lora.h"
#include "model/tp.h"

/* ---- parameters ---- */

void moe_params_make(Model *m, int l)
{
    const ModelConfig *c = &m->cfg;
    const ParamTable *pt = &m->pt;
    LayerParams *p = &m->lp[l];
    int E = c->moe_experts;
    p->moe = 1;
    p->router = linear_make(pt, param_find_role(pt, PROLE_ROUTER_W, l), -1);
    p->exp_fc = xcalloc((size_t)E, sizeof(Linear));
    p->exp_proj = xcalloc((size_t)E, sizeof(Linear));
    for (int e = 0; e < E; e++) {
        p->exp_fc[e] = linear_make(pt, param_find_expert(pt, PROLE_EXP_FC_W, l, e), -1);
        p->exp_proj[e] = linear_make(pt, param_find_expert(pt, PROLE_EXP_PROJ_W, l, e), -1);
    }
    Linear none = {.w = -1, .b = -1};
    p->sh_fc = p->sh_proj = p->sh_gate = none;
    if (c->moe_shared_d_ff > 0) {
        p->sh_fc = linear_make(pt, param_find_role(pt, PROLE_SH_FC_W, l), -1);
        p->sh_proj = linear_make(pt, param_find_role(pt, PROLE_SH_PROJ_W, l), -1);
        p->sh_gate = linear_make(pt, param_find_role(pt, PROLE_SH_GATE_W, l), -1);
    }
}

void moe_params_free(Model *m)
{
    for (int l = 0; m->lp && l < m->cfg.n_layer; l++) {
        free(m->lp[l].exp_fc);
        free(m->lp[l].exp_proj);
        m->lp[l].exp_fc = m->lp[l].exp_proj = NULL;
    }
}

/* ---- memory ---- */

static void *bufs_alloc(const Backend *be, MoeBufs *b, size_t bytes)
{
    if (b->n == b->cap) b->p = xrealloc(b->p, (size_t)(b->cap = b->cap ? 2 * b->cap : 32) * sizeof(void *));
    return b->p[b->n++] = be->alloc(bytes);
}

static void *bufs_host(MoeBufs *b, size_t bytes)
{
    if (b->nh == b->caph) b->h = xrealloc(b->h, (size_t)(b->caph = b->caph ? 2 * b->caph : 32) * sizeof(void *));
    return b->h[b->nh++] = xcalloc(1, bytes);
}

void moe_bufs_free(const Backend *be, MoeBufs *b)
{
    for (int i = 0; i < b->n; i++) be->free(b->p[i]);
    for (int i = 0; i < b->nh; i++) free(b->h[i]);
    free(b->p);
    free(b->h);
    memset(b, 0, sizeof(*b));
}

MoeActs *moe_acts_alloc(const Model *m, MoeBufs *bufs, int N_, const MoeActs *from, int keep_big, int keep_act)
{
    const ModelConfig *c = &m->cfg;
    const Backend *be = m->be;
    size_t N = (size_t)N_, E = (size_t)c->moe_experts, k = (size_t)c->moe_top_k, C = (size_t)c->d_model;
    size_t F = (size_t)c->moe_d_ff, Fs = (size_t)c->moe_shared_d_ff, as = be->act_size, f4 = sizeof(float);
    MoeActs *a = bufs_host(bufs, sizeof(MoeActs));
    a->probs = bufs_alloc(be, bufs, N * E * f4);
    a->lse = bufs_alloc(be, bufs, N * f4);
    a->stats = bufs_alloc(be, bufs, (E + 1) * f4);
    a->topi = bufs_alloc(be, bufs, N * k * sizeof(int32_t));
    a->topw = bufs_alloc(be, bufs, N * k * f4);
    a->perm = bufs_alloc(be, bufs, N * k * sizeof(int32_t));
    a->pos = bufs_alloc(be, bufs, N * k * sizeof(int32_t));
    a->counts = bufs_host(bufs, E * sizeof(int));
    if (keep_big || !from) {
        a->logits = bufs_alloc(be, bufs, N * E * as);
        a->xp = bufs_alloc(be, bufs, N * k * C * as);
        a->h = bufs_alloc(be, bufs, N * k * 2 * F * as);
        a->y = bufs_alloc(be, bufs, N * k * C * as);
        if (Fs) {
            a->sh_h = bufs_alloc(be, bufs, N * 2 * Fs * as);
            a->sh_y = bufs_alloc(be, bufs, N * C * as);
            a->sh_g = bufs_alloc(be, bufs, N * as);
        }
    } else {
        a->logits = from->logits, a->xp = from->xp, a->h = from->h, a->y = from->y;
        a->sh_h = from->sh_h, a->sh_y = from->sh_y, a->sh_g = from->sh_g;
    }
    if ((keep_big && keep_act) || !from) {
        a->act = bufs_alloc(be, bufs, N * k * F * as);
        if (Fs) a->sh_act = bufs_alloc(be, bufs, N * Fs * as);
    } else {
        a->act = from->act, a->sh_act = from->sh_act;
    }
    return a;
}

void moe_state_reserve(Model *m, int N_)
{
    const ModelConfig *c = &m->cfg;
    const Backend *be = m->be;
    moe_state_free(m);
    if (!cfg_moe_layers(c)) return;
    MoeState *s = m->moe = xcalloc(1, sizeof(MoeState));
    size_t N = (size_t)N_, E = (size_t)c->moe_experts, k = (size_t)c->moe_top_k, C = (size_t)c->d_model;
    size_t F = (size_t)c->moe_d_ff, Fs = (size_t)c->moe_shared_d_ff, as = be->act_size;
    s->moe_index = xmalloc((size_t)c->n_layer * sizeof(int));
    for (int l = 0; l < c->n_layer; l++) s->moe_index[l] = cfg_is_moe(c, l) ? s->n_moe++ : -1;
    s->dy = bufs_alloc(be, &s->bufs, N * k * C * as);
    s->dact = bufs_alloc(be, &s->bufs, N * k * F * as);
    s->dh = bufs_alloc(be, &s->bufs, N * k * 2 * F * as);
    s->dxp = bufs_alloc(be, &s->bufs, N * k * C * as);
    s->dtopw = bufs_alloc(be, &s->bufs, N * k * sizeof(float));
    s->dlogits = bufs_alloc(be, &s->bufs, N * E * as);
    s->dx = bufs_alloc(be, &s->bufs, N * C * as);
    if (c->moe_jitter > 0) s->xj = bufs_alloc(be, &s->bufs, N * C * as);
    if (Fs) {
        s->dsh_act = bufs_alloc(be, &s->bufs, N * Fs * as);
        s->dsh_h = bufs_alloc(be, &s->bufs, N * 2 * Fs * as);
        s->dys = bufs_alloc(be, &s->bufs, N * C * as);
        s->dg = bufs_alloc(be, &s->bufs, N * as);
    }
    s->dpe = bufs_alloc(be, &s->bufs, E * sizeof(float));
    s->load = xcalloc((size_t)s->n_moe * E, sizeof(double));
}

void moe_state_free(Model *m)
{
    MoeState *s = m->moe;
    if (!s) return;
    moe_bufs_free(m->be, &s->bufs);
    free(s->moe_index);
    free(s->load);
    free(s);
    m->moe = NULL;
}

/* ---- forward and backward ---- */

/* The experts' products have a row count that changes at every step (backend.h ragged_products). */
static void ragged(const Backend *be, int on)
{
    if (be->ragged_products) be->ragged_products(on);
}

/* The adapter buffers of expert product L whose rows start at off: the layer's, with the saved products
 * of L's adapters ((N k, ld) side by side, ld their summed ranks: one adapter, or transformers 4's w1 and
 * w3 on one fc) moved to the expert's rows (t holds the slots); NULL without adapters. The experts'
 * adapters have no dropout (lora.dropout is refused with them). */
static const LinearBufs *expert_bufs(const Model *m, const Linear *L, const LinearBufs *lb, LinearBufs *loc,
                                     void **t, size_t off)
{
    if (!lb) return NULL;
    *loc = *lb;
    for (int s = 0; s < LORA_SITE_COUNT; s++) t[s] = lb->t[s];
    size_t ld = 0;
    for (int k = 0; k < L->n_adapters; k++) ld += (size_t)L->adapters[k].r;
    for (int k = 0; k < L->n_adapters; k++) {
        int s = L->adapters[k].site;
        t[s] = act_at(m->be, lb->t[s], off * ld);
    }
    loc->t = t;
    return loc;
}

/* Rows of expert e start at off; the products of each expert over its rows. */
static void experts_fwd(Model *m, const LayerParams *p, MoeActs *a, const LinearBufs *lb, int which)
{
    const ModelConfig *c = &m->cfg;
    const Backend *be = m->be;
    size_t C = (size_t)c->d_model, F = (size_t)c->moe_d_ff, off = 0;
    ragged(be, 1);
    for (int e = 0; e < c->moe_experts; e++) {
        int n = a->counts[e];
        LinearBufs loc;
        void *t[LORA_SITE_COUNT];
        const LinearBufs *eb = expert_bufs(m, which == 0 ? &p->exp_fc[e] : &p->exp_proj[e], lb, &loc, t, off);
        if (n > 0 && which == 0)
            linear_fwd(&m->ps, &p->exp_fc[e], act_at(be, a->h, off * 2 * F), act_at(be, a->xp, off * C), n, eb);
        if (n > 0 && which == 1)
            linear_fwd(&m->ps, &p->exp_proj[e], act_at(be, a->y, off * C), act_at(be, a->act, off * F), n, eb);
        off += (size_t)n;
    }
    ragged(be, 0);
}

/* Mixtral's router jitter while training (model.moe.router_jitter): the layer's input (router and experts)
 * times U(1 - j, 1 + j) per element, a stream per layer and micro-step apart from dropout's; into
 * m->moe->xj, which the backward fills again (the same draw) for the router's weight gradient. NULL when off. */
static const void *jitter_input(const Model *m, int l, const void *ln2, int N)
{
    if (!m->training || m->cfg.moe_jitter <= 0 || !m->moe || !m->moe->xj) return NULL;
    m->be->jitter(m->moe->xj, ln2, (size_t)N * m->cfg.d_model, m->cfg.moe_jitter, model_jitter_seed(m, l));
    return m->moe->xj;
}

void moe_fwd(Model *m, int l, LayerActs *la, int N, void *out, const LinearBufs *lb)
{
    const ModelConfig *c = &m->cfg;
    const Backend *be = m->be;
    const LayerParams *p = &m->lp[l];
    MoeActs *a = la->moe;
    int E = c->moe_experts, k = c->moe_top_k, C = c->d_model;
    const void *xj = jitter_input(m, l, la->ln2, N), *x = xj ? xj : la->ln2;
    linear_fwd(&m->ps, &p->router, a->logits, x, N, lb);
    be->moe_route_fwd(a->probs, a->lse, a->topi, a->topw, a->stats, a->logits, N, E, k, c->moe_norm_topk);
    be->moe_sort(a->perm, a->pos, a->counts, a->topi, N, E, k);
    be->moe_gather_fwd(a->xp, x, a->perm, N, C, k);
    experts_fwd(m, p, a, lb, 0);
    be->swiglu_fwd(a->act, a->h, N * k, c->moe_d_ff);
    experts_fwd(m, p, a, lb, 1);
    be->moe_combine_fwd(out, a->y, a->topw, a->pos, N, C, k);
    if (c->moe_shared_d_ff > 0) {
        linear_fwd(&m->ps, &p->sh_fc, a->sh_h, la->ln2, N, lb);
        be->swiglu_fwd(a->sh_act, a->sh_h, N, c->moe_shared_d_ff);
        linear_fwd(&m->ps, &p->sh_proj, a->sh_y, a->sh_act, N, lb);
        linear_fwd(&m->ps, &p->sh_gate, a->sh_g, la->ln2, N, lb);
        be->moe_gate_fwd(out, a->sh_y, a->sh_g, N, C);
    }
    /* tensor parallel: each rank's experts (and shared expert) hold its slice of their units, so out is
     * its partial sum: one all-reduce for the layer (tp.h) */
    if (m->tp) tp_all_reduce_act(m->tp, out, (size_t)N * C);
}

void moe_recompute_act(Model *m, int l, LayerActs *la, int N)
{
    const ModelConfig *c = &m->cfg;
    MoeActs *a = la->moe;
    (void)l;
    m->be->swiglu_fwd(a->act, a->h, N * c->moe_top_k, c->moe_d_ff);
    if (c->moe_shared_d_ff > 0) m->be->swiglu_fwd(a->sh_act, a->sh_h, N, c->moe_shared_d_ff);
}

void moe_bwd(Model *m, int l, LayerActs *la, int N, const void *dout, void *dln2, const LinearBufs *lb)
{
    const ModelConfig *c = &m->cfg;
    const Backend *be = m->be;
    const ParamStore *ps = &m->ps;
    const LayerParams *p = &m->lp[l];
    MoeActs *a = la->moe;
    MoeState *s = m->moe;
    int E = c->moe_experts, k = c->moe_top_k, C = c->d_model;
    size_t F = (size_t)c->moe_d_ff, Cz = (size_t)C;
    /* the weighted un-permute, then each expert's products backwards over its rows */
    be->moe_combine_bwd(s->dy, s->dtopw, dout, a->y, a->topw, a->pos, N, C, k);
    /* tensor parallel: y is this rank's partial sum, and so is dtopw = <dout, y>; the router needs the sum */
    if (m->tp) m->tp->all_reduce_f32(m->tp->ctx, s->dtopw, (size_t)N * k);
    size_t off = 0;
    ragged(be, 1);
    for (int e = 0; e < E; e++) {
        int n = a->counts[e];
        LinearBufs loc;
        void *t[LORA_SITE_COUNT];
        if (n > 0)
            linear_bwd(ps, &p->exp_proj[e], act_at(be, s->dact, off * F), act_at(be, s->dy, off * Cz),
                       act_at(be, a->act, off * F), n, expert_bufs(m, &p->exp_proj[e], lb, &loc, t, off));
        off += (size_t)n;
    }
    be->swiglu_bwd(s->dh, a->h, s->dact, N * k, (int)F);
    off = 0;
    for (int e = 0; e < E; e++) {
        int n = a->counts[e];
        LinearBufs loc;
        void *t[LORA_SITE_COUNT];
        if (n > 0)
            linear_bwd(ps, &p->exp_fc[e], act_at(be, s->dxp, off * Cz), act_at(be, s->dh, off * 2 * F),
                       act_at(be, a->xp, off * Cz), n, expert_bufs(m, &p->exp_fc[e], lb, &loc, t, off));
        off += (size_t)n;
    }
    ragged(be, 0);
    be->moe_gather_bwd(dln2, s->dxp, a->pos, N, C, k);
    /* the shared expert's products (under tensor parallel, like the experts', partial sums over the
     * ranks' units, as is its gate's gradient dg = sigmoid'(g) <dout, shared output>) */
    if (c->moe_shared_d_ff > 0) {
        be->moe_gate_bwd(s->dys, s->dg, dout, a->sh_y, a->sh_g, N, C);
        if (m->tp) tp_all_reduce_act(m->tp, s->dg, (size_t)N);
        linear_bwd(ps, &p->sh_proj, s->dsh_act, s->dys, a->sh_act, N, lb);
        be->swiglu_bwd(s->dsh_h, a->sh_h, s->dsh_act, N, c->moe_shared_d_ff);
        linear_bwd(ps, &p->sh_fc, s->dx, s->dsh_h, la->ln2, N, lb);
        be->add(dln2, dln2, s->dx, (size_t)N * Cz);
    }
    if (m->tp) tp_all_reduce_act(m->tp, dln2, (size_t)N * Cz); /* the units' share, summed over the ranks */
    /* the router: through the top-k weights, plus the routing losses' gradients (whole on every rank) */
    be->moe_route_bwd(s->dlogits, a->probs, a->lse, a->topi, s->dtopw, s->dpe, s->zscale, N, E, k, c->moe_norm_topk);
    const void *xj = jitter_input(m, l, la->ln2, N); /* the forward's draw again */
    linear_bwd(ps, &p->router, s->dx, s->dlogits, xj ? xj : la->ln2, N, lb);
    be->add(dln2, dln2, s->dx, (size_t)N * Cz);
    /* through the jitter: d ln2 = u o d x (no shared expert with it: model_config_finish) */
    if (xj) be->jitter(dln2, dln2, (size_t)N * Cz, c->moe_jitter, model_jitter_seed(m, l));
    if (c->moe_shared_d_ff > 0) {
        linear_bwd(ps, &p->sh_gate, s->dx, s->dg, la->ln2, N, lb);
        be->add(dln2, dln2, s->dx, (size_t)N * Cz);
    }
}

/* ---- routing losses and statistics ---- */

void moe_after_forward(Model *m, int N, double loss_weight)
{
    const ModelConfig *c = &m->cfg;
    MoeState *s = m->moe;
    int E = c->moe_experts;
    double R = (double)s->n_moe * N;
    double *cnt = xcalloc((size_t)E, sizeof(double)), *psum = xcalloc((size_t)E, sizeof(double));
    float *st = xmalloc(((size_t)E + 1) * sizeof(float));
    double zsum = 0;
    for (int l = 0; l < c->n_layer; l++) {
        int j = s->moe_index[l];
        if (j < 0) continue;
        const MoeActs *a = m->la[l].moe;
        m->be->download(st, a->stats, ((size_t)E + 1) * sizeof(float));
        for (int e = 0; e < E; e++) {
            cnt[e] += a->counts[e];
            psum[e] += st[e];
            if (m->training) s->load[(size_t)j * E + e] += a->counts[e]; /* training forwards only */
        }
        zsum += st[E];
    }
    double aux = 0;
    for (int e = 0; e < E; e++) aux += (cnt[e] / R) * (psum[e] / R);
    s->aux = aux * E;
    s->z = zsum / R;
    if (m->training) {
        s->aux_sum += s->aux;
        s->z_sum += s->z;
        s->n_fwd++;
    }
    /* gradients: d aux / d p[r,e] = E count_e / R^2 in every MoE layer; d z / d logit = 2 lse p / R */
    s->aux_w = (float)(c->moe_aux_coef * loss_weight);
    s->z_w = (float)(c->moe_z_coef * loss_weight);
    for (int e = 0; e < E; e++) st[e] = (float)(s->aux_w * E * cnt[e] / (R * R));
    m->be->upload(s->dpe, st, (size_t)E * sizeof(float));
    s->zscale = (float)(s->z_w * 2.0 / R);
    free(st);
    free(cnt);
    free(psum);
}

double moe_loss(const Model *m)
{
    if (!m->moe) return 0;
    return m->cfg.moe_aux_coef * m->moe->aux + m->cfg.moe_z_coef * m->moe->z;
}

void moe_stats_reset(Model *m)
{
    MoeState *s = m->moe;
    if (!s) return;
    memset(s->load, 0, (size_t)s->n_moe * m->cfg.moe_experts * sizeof(double));
    s->aux_sum = s->z_sum = 0;
    s->n_fwd = 0;
}

void moe_layer_stats(const Model *m, int j, double *load, double *balance, double *entropy_bits)
{
    int E = m->cfg.moe_experts;
    const double *cnt = m->moe->load + (size_t)j * E;
    double tot = 0, mx = 0, h = 0;
    for (int e = 0; e < E; e++) tot += cnt[e];
    for (int e = 0; e < E; e++) {
        double f = tot > 0 ? cnt[e] / tot : 0;
        if (load) load[e] = f;
        mx = f > mx ? f : mx;
        if (f > 0) h -= f * log2(f);
    }
    *balance = mx > 0 ? (1.0 / E) / mx : 0;
    *entropy_bits = h;
}

double moe_flops(const Model *m, int l, int backward)
{
    const LayerParams *p = &m->lp[l];
    const ParamStore *ps = &m->ps;
    double f = linear_flops(ps, &p->router, backward);
    /* every token runs through k experts; the experts have one shape (expert 0 stands for all) */
    f += m->cfg.moe_top_k * (linear_flops(ps, &p->exp_fc[0], backward) + linear_flops(ps, &p->exp_proj[0], backward));
    if (m->cfg.moe_shared_d_ff > 0)
        f += linear_flops(ps, &p->sh_fc, backward) + linear_flops(ps, &p->sh_proj, backward) +
             linear_flops(ps, &p->sh_gate, backward);
    return f;
}

/* ---- reports ---- */

static void put(char *buf, size_t n, size_t *o, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void put(char *buf, size_t n, size_t *o, const char *fmt, ...)
{
    if (*o >= n) return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf + *o, n - *o, fmt, ap);
    va_end(ap);
    if (k > 0) *o = *o + (size_t)k < n ? *o + (size_t)k : n;
}

void moe_metrics_json(const Model *m, char *buf, size_t n, size_t *o)
{
    const MoeState *s = m->moe;
    if (!s || !s->n_fwd) return;
    int E = m->cfg.moe_experts, L = s->n_moe;
    double *load = xmalloc((size_t)E * sizeof(double)), *bal = xmalloc((size_t)L * sizeof(double)),
           *ent = xmalloc((size_t)L * sizeof(double));
    put(buf, n, o, ", \"aux_loss\": %.6f, \"z_loss\": %.6f, \"expert_load\": [", s->aux_sum / s->n_fwd,
        s->z_sum / s->n_fwd);
    for (int j = 0; j < L; j++) {
        moe_layer_stats(m, j, load, &bal[j], &ent[j]);
        put(buf, n, o, "%s[", j ? ", " : "");
        for (int e = 0; e < E; e++) put(buf, n, o, "%s%.5f", e ? ", " : "", load[e]);
        put(buf, n, o, "]");
    }
    put(buf, n, o, "], \"load_balance\": [");
    for (int j = 0; j < L; j++) put(buf, n, o, "%s%.5f", j ? ", " : "", bal[j]);
    put(buf, n, o, "], \"routing_entropy_bits\": [");
    for (int j = 0; j < L; j++) put(buf, n, o, "%s%.5f", j ? ", " : "", ent[j]);
    put(buf, n, o, "]");
    free(load), free(bal), free(ent);
}

/* Bar width of the busiest expert. */
#define LOAD_BAR_MAX 40

void moe_print_load_table(const Model *m, const double *load, const char *what, FILE *f)
{
    const ModelConfig *c = &m->cfg;
    const MoeState *s = m->moe;
    if (!s) return;
    int E = c->moe_experts;
    fprintf(f, "expert load %s (share of the routed token slots; balance = mean / max, entropy max %.2f bits):\n",
            what, log2(E));
    for (int l = 0; l < c->n_layer; l++) {
        int j = s->moe_index[l];
        if (j < 0) continue;
        const double *cnt = load + (size_t)j * E;
        double tot = 0, mx = 0, h = 0;
        for (int e = 0; e < E; e++) tot += cnt[e];
        for (int e = 0; e < E; e++) {
            double p = tot > 0 ? cnt[e] / tot : 0;
            mx = p > mx ? p : mx;
            if (p > 0) h -= p * log2(p);
        }
        fprintf(f, "  layer %d: load balance factor %.2f, routing entropy %.2f bits (max %.2f)\n", l,
                mx > 0 ? 1.0 / E / mx : 0, h, log2(E));
        for (int e = 0; e < E; e++) {
            double p = tot > 0 ? cnt[e] / tot : 0;
            int w = mx > 0 ? (int)lround(LOAD_BAR_MAX * p / mx) : 0;
            fprintf(f, "    expert %3d: %5.1f%% ", e, 100 * p);
            for (int k = 0; k < w; k++) fputs("\u2588", f);
            fputc('\n', f);
        }
    }
}
