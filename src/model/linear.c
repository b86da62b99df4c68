/* linear.c - the weight products (linear.h): the one place that looks at a weight's kind. */
#include "model/linear.h"

#include "core/error.h"
#include "model/lora.h"
#include "model/tp.h"

/* What a product needs of a weight: its compute copy and, when it has one, its gradient. */
typedef struct {
    const void *w;
    float *dw;
    int quant_act; /* BitLinear: the product's input is quantized to 8 bits per row first */
} LinearWeight;

/* BitLinear: the latent weight of tensor idx absmean-ternarized into ps->wq, each Hugging Face part
 * (q, k, v; gate, up) with its own scale. From the fp32 master; under ZeRO (tern_from_act), whose master
 * is sharded, from the compute copy every rank holds at that moment (ZeRO-3: the gathered layer): fp32
 * on the CPU, so the same values; bf16 on the GPU (docs/distributed.md says what that changes). */
static void bitlinear_quant(const ParamStore *ps, int idx, const ModelTp *tp)
{
    const Param *p = &ps->pt->p[idx];
    const Backend *be = ps->be;
    size_t row0 = 0, cols = (size_t)p->shape[1];
    void *act = ps->tern_from_act ? params_w(ps, idx) : NULL;
    if (!act && (p->seg < ps->master_lo || p->seg + p->numel > ps->master_lo + ps->master_n))
        fatal("linear: BitLinear %s: its master is sharded over the ranks (internal error)", p->name);
    const float *master = act ? NULL : ps->master + (p->seg - ps->master_lo);
    if (tp) { /* a slice of each part: the gammas of the whole parts (tp.h) */
        tp_bitlinear_quant(tp, be, p, ps->wq, act ? (const void *)act : (const void *)master, act != NULL);
        return;
    }
    for (int k = 0; k < p->nparts; k++) {
        size_t off = row0 * cols, n = (size_t)p->part_rows[k] * cols;
        if (act) be->ternary_wquant_act(act_at(be, ps->wq, off), act_at(be, act, off), n);
        else be->ternary_wquant(act_at(be, ps->wq, off), master + off, n);
        row0 += (size_t)p->part_rows[k];
    }
}

/* The switch on the weight's kind, written once. The gradient only for a backward (bwd 1): a
 * sharded run (ZeRO-2/3) has a layer's gradient buffer only while its backward runs. */
static LinearWeight linear_weight_at(const ParamStore *ps, const Linear *L, int bwd)
{
    LinearWeight lw = {0};
    int idx = L->w;
    const ModelTp *tp = L->split != LINEAR_WHOLE ? L->tp : NULL;
    switch (ps->pt->p[idx].kind) {
    case PARAM_TRAIN:
        if (ps->pt->p[idx].ternarize) {
            bitlinear_quant(ps, idx, tp);
            lw.w = ps->wq;
            lw.quant_act = 1;
        } else {
            lw.w = params_w(ps, idx);
        }
        lw.dw = bwd ? params_g(ps, idx) : NULL;
        break;
    case PARAM_TERNARY: /* trits * 2^E unpacked into the store's scratch; the float gradient for the update */
        lw.w = params_w_dense(ps, idx);
        lw.dw = bwd ? params_g(ps, idx) : NULL;
        break;
    case PARAM_FROZEN: /* a frozen BitLinear holds its ternarized weight already (params_upload) */
        lw.w = params_w(ps, idx);
        lw.quant_act = ps->pt->p[idx].ternarize;
        break;
    case PARAM_NF4: /* dequantized into the store's scratch, used at once (one stream: no later op overwrites it first) */
        lw.w = params_w_dense(ps, idx);
        break;
    default:
        fatal("linear: tensor %s has kind %d, which no product supports (internal error)", ps->pt->p[idx].name,
              (int)ps->pt->p[idx].kind);
    }
    return lw;
}

static LinearWeight linear_weight(const ParamStore *ps, const Linear *L) { return linear_weight_at(ps, L, 1); }
static LinearWeight linear_weight_fwd(const ParamStore *ps, const Linear *L) { return linear_weight_at(ps, L, 0); }

/* x as the adapters see it: dropout(x) into lb->xd when training with dropout, else x itself. The
 * seed is the product's own (lb->seed) mixed with the site, so each adapter draws its own mask, as
 * PEFT's per-module dropout does. */
static const void *adapter_input(const ParamStore *ps, const LinearAdapter *ad, const void *x, size_t n,
                                 const LinearBufs *lb)
{
    if (!lb->training || lb->dropout <= 0) return x;
    ps->be->dropout(lb->xd, x, n, lb->dropout, lb->seed * LORA_SITE_COUNT + (uint64_t)ad->site);
    return lb->xd;
}

/* The adapters of one product keep their saved products side by side: t[site] of adapter k is a column
 * slice of one (N, ld) block, ld the adapters' summed ranks (model_lora_t_alloc), and the backward's dt
 * likewise in lb->dt. */
static int adapters_ld(const Linear *L)
{
    int ld = 0;
    for (int k = 0; k < L->n_adapters; k++) ld += L->adapters[k].r;
    return ld;
}

/* Whether the adapters' A's (and, for a backward, their gradients) are one (ld, in) matrix in the store, as
 * params.c lays them out: then the A products of a fused weight's parts (q, k, v; gate, up) are one product
 * reading x once, and their share of dinp one product writing it once. Not with adapter dropout: each
 * adapter draws its own mask on x (as PEFT's per-module dropout). */
static int adapters_joined(const ParamStore *ps, const Linear *L, const LinearBufs *lb, int bwd)
{
    if (L->n_adapters < 2 || (lb->training && lb->dropout > 0)) return 0;
    const LinearAdapter *a0 = &L->adapters[0];
    const float *g0 = bwd ? params_g(ps, a0->a) : NULL;
    size_t off = 0;
    for (int k = 0; k < L->n_adapters; k++) {
        const LinearAdapter *ad = &L->adapters[k];
        if (params_w(ps, ad->a) != act_at(ps->be, (void *)params_w(ps, a0->a), off)) return 0;
        if (bwd && (g0 == NULL) != (params_g(ps, ad->a) == NULL)) return 0;
        if (bwd && g0 && params_g(ps, ad->a) != g0 + off) return 0;
        if ((char *)lb->t[ad->site] != (char *)act_at(ps->be, lb->t[a0->site], (size_t)(off / L->in))) return 0;
        off += (size_t)ad->r * L->in;
    }
    return 1;
}

/* out[:, rows] = scale * (dropout(x) @ A^T) @ B^T + beta * out[:, rows] for every adapter; t[site] keeps
 * dropout(x) @ A^T. */
static void adapters_fwd(const ParamStore *ps, const Linear *L, void *out, const void *inp, int N,
                         const LinearBufs *lb, float beta)
{
    const Backend *be = ps->be;
    int ld = adapters_ld(L);
    void *t0 = lb->t[L->adapters[0].site];
    /* a recompute of the block keeps t from its first forward: the same weights, inputs and masks */
    int kept = lb->t_kept && L->split != LINEAR_ROW;
    if (!kept && adapters_joined(ps, L, lb, 0)) /* [t_q | t_k | t_v] = x @ [A_q; A_k; A_v]^T */
        be->gemm(0, 1, N, ld, L->in, 1.0f, inp, L->in, params_w(ps, L->adapters[0].a), L->in, 0.0f, t0, ld, 0);
    else if (!kept)
        for (int k = 0; k < L->n_adapters; k++) {
            const LinearAdapter *ad = &L->adapters[k];
            const void *x = adapter_input(ps, ad, inp, (size_t)N * L->in, lb);
            be->gemm(0, 1, N, ad->r, L->in, 1.0f, x, L->in, params_w(ps, ad->a), L->in, 0.0f, lb->t[ad->site], ld, 0);
        }
    for (int k = 0; k < L->n_adapters; k++) {
        const LinearAdapter *ad = &L->adapters[k];
        be->gemm(0, 1, N, ad->rows, ad->r, ad->scale, lb->t[ad->site], ld, params_w(ps, ad->b), ad->r, beta,
                 act_at(be, out, (size_t)ad->row0), L->out, 0);
    }
    /* row-parallel: t is this rank's partial sum over its input columns; its share of out is summed
     * with the base product's, and the backward's dB needs the whole t */
    if (L->split == LINEAR_ROW) tp_all_reduce_act(L->tp, t0, (size_t)N * ld);
}

/* The adapters' gradients and their share of dinp: added to what the base wrote (beta 1), or written for the
 * base to add to (beta 0: one adapter, or joined ones, and no dropout; adapters_first). */
static void adapters_bwd(const ParamStore *ps, const Linear *L, void *dinp, const void *dout, const void *inp, int N,
                         const LinearBufs *lb, float beta)
{
    const Backend *be = ps->be;
    int ld = adapters_ld(L), joined = adapters_joined(ps, L, lb, 1);
    const LinearAdapter *a0 = &L->adapters[0];
    for (int k = 0, off = 0; k < L->n_adapters; off += L->adapters[k].r, k++) {
        const LinearAdapter *ad = &L->adapters[k];
        const void *dslice = act_at(be, (void *)dout, (size_t)ad->row0);
        void *dt = act_at(be, lb->dt, (size_t)off);
        float *dB = params_g(ps, ad->b);
        /* dB (rows, r) += scale * dout[:, rows]^T @ t (tried by row chunks that stay in the L2 between
         * this product and the next: slower on the H200, the chunks' small products cost more than the
         * second read of dout saves; docs/finetuning.md) */
        if (dB) be->gemm(1, 0, ad->rows, ad->r, N, ad->scale, dslice, L->out, lb->t[ad->site], ld, 1.0f, dB, ad->r, 1);
        /* dt (N, r) = scale * dout[:, rows] @ B */
        be->gemm(0, 0, N, ad->r, ad->rows, ad->scale, dslice, L->out, params_w(ps, ad->b), ad->r, 0.0f, dt, ld, 0);
    }
    /* dinp += dropout'(dt @ A) (the same mask on the gradient); joined: [dt_q | dt_k | dt_v] @ [A_q; A_k; A_v]
     * at once. Column-parallel: dt is this rank's partial sum over its output rows, and so is its share of
     * dinp (linear_bwd sums dinp over the group) */
    if (dinp && joined) {
        be->gemm(0, 0, N, L->in, ld, 1.0f, lb->dt, ld, params_w(ps, a0->a), L->in, beta, dinp, L->in, 0);
    } else if (dinp) {
        for (int k = 0, off = 0; k < L->n_adapters; off += L->adapters[k].r, k++) {
            const LinearAdapter *ad = &L->adapters[k];
            const void *dt = act_at(be, lb->dt, (size_t)off);
            if (lb->training && lb->dropout > 0) {
                be->gemm(0, 0, N, L->in, ad->r, 1.0f, dt, ld, params_w(ps, ad->a), L->in, 0.0f, lb->xd, L->in, 0);
                be->dropout(lb->xd, lb->xd, (size_t)N * L->in, lb->dropout,
                            lb->seed * LORA_SITE_COUNT + (uint64_t)ad->site);
                be->add(dinp, dinp, lb->xd, (size_t)N * L->in);
            } else {
                be->gemm(0, 0, N, L->in, ad->r, 1.0f, dt, ld, params_w(ps, ad->a), L->in, k ? 1.0f : beta, dinp,
                         L->in, 0);
            }
        }
    }
    /* dA (r, in) += dt^T @ dropout(x), with the whole dt (column-parallel: summed over the group first) */
    if (L->split == LINEAR_COL) tp_all_reduce_act(L->tp, lb->dt, (size_t)N * ld);
    if (joined) {
        float *dA = params_g(ps, a0->a);
        if (dA) be->gemm(1, 0, ld, L->in, N, 1.0f, lb->dt, ld, inp, L->in, 1.0f, dA, L->in, 1);
        return;
    }
    for (int k = 0, off = 0; k < L->n_adapters; off += L->adapters[k].r, k++) {
        const LinearAdapter *ad = &L->adapters[k];
        float *dA = params_g(ps, ad->a);
        const void *x = adapter_input(ps, ad, inp, (size_t)N * L->in, lb);
        if (dA) be->gemm(1, 0, ad->r, L->in, N, 1.0f, act_at(be, lb->dt, (size_t)off), ld, x, L->in, 1.0f, dA, L->in, 1);
    }
}

/* Whether the adapters' products come first, written over the output (beta 0), and the base product is
 * added to them (beta 1) rather than the adapters adding to the base's output: the adapters' products, of
 * inner dimension r, are bound by their output's traffic, and this way they write it without reading it
 * (the base product reads it in its epilogue, hidden behind its arithmetic). Forward (dinp NULL): the
 * adapters must cover every output column and the base have no bias. Backward: a frozen base without a
 * bias gradient, and one adapter or joined ones without dropout (one product writing dinp). */
static int adapters_first(const ParamStore *ps, const Linear *L, const LinearWeight *w, const LinearBufs *lb,
                          const void *dinp, int bwd)
{
    if (!L->n_adapters || L->out % 8 || L->in % 8) return 0;
    if (!bwd) {
        if (L->b >= 0) return 0;
        int next = 0;
        for (int k = 0; k < L->n_adapters; k++) {
            if (L->adapters[k].row0 != next) return 0;
            next += L->adapters[k].rows;
        }
        return next == L->out;
    }
    if (!dinp || w->dw || params_g(ps, L->b)) return 0;
    if (lb->training && lb->dropout > 0) return 0;
    return L->n_adapters == 1 || adapters_joined(ps, L, lb, 1);
}

static void check_bufs(const ParamStore *ps, const Linear *L, const LinearBufs *lb)
{
    if (L->n_adapters && !lb)
        fatal("linear: %s has adapters but no buffers for them (internal error)", ps->pt->p[L->w].name);
}

Linear linear_make(const ParamTable *pt, int w, int b)
{
    Linear L = {.w = w, .b = b};
    L.out = (int)pt->p[w].shape[0];
    L.in = (int)pt->p[w].shape[1];
    return L;
}

/* The product's input: inp itself, or for a BitLinear its 8-bit quantization (absmax per row) in the
 * store's scratch; row-parallel, the absmax of the whole row, whose other columns lie on the other ranks.
 * The straight-through estimator: the backward uses the same quantized input for the weight gradient and
 * passes the input gradient through the quantizer unchanged. */
static const void *linear_input(const ParamStore *ps, const Linear *L, const LinearWeight *w, const void *inp, int N)
{
    if (!w->quant_act) return inp;
    void *xq = params_xq(ps, (size_t)N * L->in);
    if (L->split == LINEAR_ROW) tp_bitlinear_act(L->tp, ps->be, xq, inp, N, L->in);
    else ps->be->act_quant8(xq, inp, N, L->in);
    return xq;
}

/* out (N, out) = inp @ W^T for a weight read by row chunks: each chunk's columns of out (no bias, no
 * adapters: the vocabulary tensors that are chunked have neither). */
static void linear_fwd_rows(const ParamStore *ps, const Linear *L, void *out, const void *inp, int N)
{
    for (int k = 0; k < params_nchunks(ps->pt, L->w); k++) {
        int r0, r1;
        params_chunk(ps->pt, L->w, k, &r0, &r1);
        const void *w = params_w_rows(ps, L->w, r0, r1);
        ps->be->gemm(0, 1, N, r1 - r0, L->in, 1.0f, inp, L->in, w, L->in, 0.0f, act_at(ps->be, out, (size_t)r0),
                     L->out, 0);
    }
}

void linear_fwd(const ParamStore *ps, const Linear *L, void *out, const void *inp, int N, const LinearBufs *lb)
{
    check_bufs(ps, L, lb);
    if (ps->pt->p[L->w].chunk_rows) {
        if (L->b >= 0 || L->n_adapters) fatal("linear: %s is read by row chunks but has a bias or adapters (internal error)", ps->pt->p[L->w].name);
        linear_fwd_rows(ps, L, out, inp, N);
        return;
    }
    int row = L->split == LINEAR_ROW;
    /* row-parallel: every rank's partial product, summed; the bias once (by the group's rank 0) */
    int b = row && L->tp->rank != 0 ? -1 : L->b;
    if (ps->pt->p[L->w].kind == PARAM_TERNARY && !L->n_adapters) { /* read from the packed trits where it pays */
        ps->be->ternary_matmul_fwd(out, inp, &ps->tern[L->w], params_w(ps, b), ps->wq, N, L->in, L->out);
        if (row && !L->sum_by_caller) tp_all_reduce_act(L->tp, out, (size_t)N * L->out);
        return;
    }
    LinearWeight w = linear_weight_fwd(ps, L);
    const void *x = linear_input(ps, L, &w, inp, N);
    if (adapters_first(ps, L, &w, lb, NULL, 0)) {
        adapters_fwd(ps, L, out, inp, N, lb, 0.0f);
        ps->be->gemm(0, 1, N, L->out, L->in, 1.0f, x, L->in, w.w, L->in, 1.0f, out, L->out, 0);
    } else {
        ps->be->matmul_fwd(out, x, w.w, params_w(ps, b), N, L->in, L->out);
        if (L->n_adapters) adapters_fwd(ps, L, out, inp, N, lb, 1.0f);
    }
    if (row && !L->sum_by_caller) tp_all_reduce_act(L->tp, out, (size_t)N * L->out);
}

void linear_bwd(const ParamStore *ps, const Linear *L, void *dinp, const void *dout, const void *inp, int N,
                const LinearBufs *lb)
{
    check_bufs(ps, L, lb);
    LinearWeight w = linear_weight(ps, L);
    const void *x = linear_input(ps, L, &w, inp, N);
    int first = adapters_first(ps, L, &w, lb, dinp, 1);
    if (first) adapters_bwd(ps, L, dinp, dout, inp, N, lb, 0.0f);
    params_grad_begin(ps, L->w);
    if (first) /* dinp += dout @ W */
        ps->be->gemm(0, 0, N, L->in, L->out, 1.0f, dout, L->out, w.w, L->in, 1.0f, dinp, L->in, 0);
    else
        ps->be->matmul_bwd(dinp, w.dw, params_g(ps, L->b), dout, x, w.w, N, L->in, L->out);
    params_grad_done(ps, L->w); /* a fused ternary weight: its update, now (its last use this step) */
    if (L->n_adapters && !first) adapters_bwd(ps, L, dinp, dout, inp, N, lb, 1.0f);
    /* column-parallel: each rank's slice of the outputs contributes to the whole input's gradient */
    if (L->split == LINEAR_COL && dinp && !L->sum_by_caller) tp_all_reduce_act(L->tp, dinp, (size_t)N * L->in);
}

void linear_gelu_fwd(const ParamStore *ps, const Linear *L, void *act, void *pre, const void *inp, int N,
                     const LinearBufs *lb)
{
    check_bufs(ps, L, lb);
    if (L->n_adapters) { /* the epilogue cannot add the adapters: the product, then the activation */
        linear_fwd(ps, L, pre, inp, N, lb);
        ps->be->gelu_fwd(act, pre, (size_t)N * L->out);
        return;
    }
    LinearWeight w = linear_weight_fwd(ps, L);
    if (w.quant_act) fatal("linear: BitLinear %s in a GELU product (internal error: gpt2 has no ternary mode)",
                           ps->pt->p[L->w].name);
    if (L->split == LINEAR_ROW) fatal("linear: row-parallel %s before a GELU (internal error)", ps->pt->p[L->w].name);
    ps->be->matmul_gelu_fwd(act, pre, inp, w.w, params_w(ps, L->b), N, L->in, L->out);
}

void linear_gelu_bwd(const ParamStore *ps, const Linear *L, int bias_pre, void *dpre, const void *dout,
                     const void *act, const void *pre, int N, const LinearBufs *lb)
{
    check_bufs(ps, L, lb);
    LinearWeight w = linear_weight(ps, L);
    if (L->n_adapters) { /* dact through the product (base + adapters), then GELU's derivative */
        linear_bwd(ps, L, dpre, dout, act, N, lb);
        ps->be->gelu_bwd(dpre, pre, dpre, (size_t)N * L->in);
        if (params_g(ps, bias_pre)) ps->be->matmul_bwd(NULL, NULL, params_g(ps, bias_pre), dpre, NULL, NULL, N, 1, L->in);
        return;
    }
    if (w.quant_act) fatal("linear: BitLinear %s in a GELU product (internal error: gpt2 has no ternary mode)",
                           ps->pt->p[L->w].name);
    /* the MLP-out product is row-parallel: dpre is this rank's slice, no sum */
    if (L->split == LINEAR_COL) fatal("linear: column-parallel %s after a GELU (internal error)", ps->pt->p[L->w].name);
    params_grad_begin(ps, L->w);
    ps->be->matmul_dgelu_bwd(dpre, params_g(ps, bias_pre), w.dw, params_g(ps, L->b), dout, act, pre, w.w, N, L->in,
                             L->out);
    params_grad_done(ps, L->w);
}

/* linear_head_xent of a weight read by row chunks (linear.h): pass 1 the running max, sum of exponentials
 * and target logit of every row over the chunks; pass 2 per chunk its logits again, dlogits in place,
 * dx += dlogits @ W_chunk (fp32), the chunk's gradient dlogits^T @ inp and its update; then dinp = dx. */
static void head_xent_rows(const ParamStore *ps, const Linear *L, float *losses, void *dinp, const void *inp,
                           const int32_t *targets, int N, float dscale, const LinearHeadBufs *hb)
{
    const Backend *be = ps->be;
    int nk = params_nchunks(ps->pt, L->w), C = L->in;
    if (!hb) fatal("linear: %s is read by row chunks but the head has no scratch (internal error)", ps->pt->p[L->w].name);
    for (int k = 0; k < nk; k++) {
        int r0, r1;
        params_chunk(ps->pt, L->w, k, &r0, &r1);
        be->matmul_fwd(hb->logits, inp, params_w_rows(ps, L->w, r0, r1), NULL, N, C, r1 - r0);
        be->xent_chunk_stats(hb->stats, hb->logits, targets, N, r1 - r0, r0);
    }
    be->xent_chunk_grad(losses, NULL, hb->stats, targets, N, 0, 0, 0.0f);
    if (dscale == 0) return;
    for (int k = 0; k < nk; k++) {
        int r0, r1;
        params_chunk(ps->pt, L->w, k, &r0, &r1);
        const void *w = params_w_rows(ps, L->w, r0, r1);
        be->matmul_fwd(hb->logits, inp, w, NULL, N, C, r1 - r0);
        be->xent_chunk_grad(NULL, hb->logits, hb->stats, targets, N, r1 - r0, r0, dscale);
        if (dinp) be->gemm(0, 0, N, C, r1 - r0, 1.0f, hb->logits, r1 - r0, w, C, k ? 1.0f : 0.0f, hb->dx, C, 1);
        if (params_g(ps, L->w)) {
            params_grad_rows_begin(ps, L->w, r0, r1);
            be->gemm(1, 0, r1 - r0, C, N, 1.0f, hb->logits, r1 - r0, inp, C, 1.0f, params_g(ps, L->w), C, 1);
            params_grad_rows_done(ps, L->w, r0, r1);
        }
    }
    if (dinp) be->cast_to_act(dinp, hb->dx, (size_t)N * C);
}

void linear_head_xent(const ParamStore *ps, const Linear *L, float *losses, void *dinp, const void *inp,
                      const int32_t *targets, int N, float dscale, const LinearHeadBufs *hb)
{
    if (L->n_adapters) fatal("linear: adapters on the output head are not supported (internal error)");
    if (L->split != LINEAR_WHOLE) fatal("linear: a split output head in lm_head_xent (internal error: tp_head_xent)");
    if (ps->pt->p[L->w].chunk_rows) {
        head_xent_rows(ps, L, losses, dinp, inp, targets, N, dscale, hb);
        return;
    }
    LinearWeight w = dscale != 0 ? linear_weight(ps, L) : linear_weight_fwd(ps, L);
    if (dscale != 0) params_grad_begin(ps, L->w);
    ps->be->lm_head_xent(losses, dscale != 0 ? dinp : NULL, dscale != 0 ? w.dw : NULL, inp, w.w, targets, N,
                         L->in, L->out, dscale);
    if (dscale != 0) params_grad_done(ps, L->w);
}

double linear_flops(const ParamStore *ps, const Linear *L, int backward)
{
    double mac = 2.0 * L->in * L->out; /* one product: a multiply and an add per weight */
    double ad = 0;
    for (int k = 0; k < L->n_adapters; k++) ad += 2.0 * L->adapters[k].r * (L->in + L->adapters[k].rows);
    if (!backward) return mac + ad;
    ParamKind k = ps->pt->p[L->w].kind;
    return 2 * mac + (k == PARAM_TRAIN || k == PARAM_TERNARY ? mac : 0.0) + 3 * ad;
}
