/* linear.c - the weight products (linear.h): the one place that looks at a weight's kind. */
#include "model/linear.h"

#include "core/error.h"

/* What a product needs of a weight: its compute copy and, when it has one, its gradient. */
typedef struct {
    const void *w;
    float *dw;
} LinearWeight;

/* The switch on the weight's kind, written once. */
static LinearWeight linear_weight(const ParamStore *ps, int idx)
{
    LinearWeight lw = {0};
    switch (ps->pt->p[idx].kind) {
    case PARAM_TRAIN:
        lw.w = params_w(ps, idx);
        lw.dw = params_g(ps, idx);
        break;
    case PARAM_FROZEN:
        lw.w = params_w(ps, idx);
        break;
    default:
        fatal("linear: tensor %s has kind %d, which no product supports (internal error)", ps->pt->p[idx].name,
              (int)ps->pt->p[idx].kind);
    }
    return lw;
}

static void check_adapters(const ParamStore *ps, const Linear *L)
{
    if (L->n_adapters)
        fatal("linear: %s carries %d adapters, which this build cannot run yet (internal error)",
              ps->pt->p[L->w].name, L->n_adapters);
}

Linear linear_make(const ParamTable *pt, int w, int b)
{
    Linear L = {.w = w, .b = b};
    L.out = (int)pt->p[w].shape[0];
    L.in = (int)pt->p[w].shape[1];
    return L;
}

void linear_fwd(const ParamStore *ps, const Linear *L, void *out, const void *inp, int N)
{
    check_adapters(ps, L);
    LinearWeight w = linear_weight(ps, L->w);
    ps->be->matmul_fwd(out, inp, w.w, params_w(ps, L->b), N, L->in, L->out);
}

void linear_bwd(const ParamStore *ps, const Linear *L, void *dinp, const void *dout, const void *inp, int N)
{
    check_adapters(ps, L);
    LinearWeight w = linear_weight(ps, L->w);
    ps->be->matmul_bwd(dinp, w.dw, params_g(ps, L->b), dout, inp, w.w, N, L->in, L->out);
}

void linear_gelu_fwd(const ParamStore *ps, const Linear *L, void *act, void *pre, const void *inp, int N)
{
    check_adapters(ps, L);
    LinearWeight w = linear_weight(ps, L->w);
    ps->be->matmul_gelu_fwd(act, pre, inp, w.w, params_w(ps, L->b), N, L->in, L->out);
}

void linear_gelu_bwd(const ParamStore *ps, const Linear *L, int bias_pre, void *dpre, const void *dout,
                     const void *act, const void *pre, int N)
{
    check_adapters(ps, L);
    LinearWeight w = linear_weight(ps, L->w);
    ps->be->matmul_dgelu_bwd(dpre, params_g(ps, bias_pre), w.dw, params_g(ps, L->b), dout, act, pre, w.w, N, L->in,
                             L->out);
}

void linear_head_xent(const ParamStore *ps, const Linear *L, float *losses, void *dinp, const void *inp,
                      const int32_t *targets, int N, float dscale)
{
    check_adapters(ps, L);
    LinearWeight w = linear_weight(ps, L->w);
    ps->be->lm_head_xent(losses, dscale != 0 ? dinp : NULL, dscale != 0 ? w.dw : NULL, inp, w.w, targets, N,
                         L->in, L->out, dscale);
}

double linear_flops(const ParamStore *ps, const Linear *L, int backward)
{
    double mac = 2.0 * L->in * L->out; /* one product: a multiply and an add per weight */
    if (!backward) return mac;
    return 2 * mac + (ps->pt->p[L->w].kind == PARAM_TRAIN ? mac : 0.0);
}
