/* model.h - one transformer, forward and backward written once over the op table.
 *
 * A Model owns its parameters (fp32 master + the backend's compute copy),
 * gradients and activations, all in backend memory. The same code runs both
 * families; the switches live in ModelConfig.
 *
 * Per block (pre-norm):
 *   ln1 = norm(x);  qkv = ln1 @ Wqkv^T (+b);  rope(q,k) [llama]
 *   a = causal_attention(qkv);  x2 = x + a @ Wo^T (+b)
 *   ln2 = norm(x2); h = ln2 @ Wfc^T (+b); g = gelu(h) | swiglu(h)
 *   x' = x2 + g @ Wproj^T (+b)
 * then lnf = norm(x_L), logits = lnf @ Wout^T (Wout = wte when tied).
 */
#ifndef ANVIL_MODEL_H
#define ANVIL_MODEL_H

#include <stdint.h>

#include "backend/backend.h"
#include "model/config.h"

/* Activation recomputation during backward, trading compute for memory. */
enum {
    RECOMPUTE_NONE = 0,  /* keep every activation */
    RECOMPUTE_CHEAP = 1, /* recompute norms and the MLP activation (element-wise) */
    RECOMPUTE_BLOCK = 2, /* keep only each block's input; rerun the block forward */
};

/* Parameter indices of one block (-1 where the family has no such tensor). */
typedef struct {
    int ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b, fc_w, fc_b, proj_w, proj_b;
} LayerParams;

/* Activations of one block, saved by forward for backward. */
typedef struct {
    void *res;         /* (N,C) block input x (residual stream) */
    void *ln1;         /* (N,C) */
    float *ln1_mean, *ln1_rstd; /* (N) */
    void *qkv;         /* (N,qkv_dim), after RoPE */
    void *att;         /* (N,q_dim) attention output (before Wo) */
    float *lse;        /* (B,nh,T) */
    void *res2;        /* (N,C) x2 = x + attention branch */
    void *ln2;         /* (N,C) */
    float *ln2_mean, *ln2_rstd;
    void *fch;         /* (N,fc_dim) pre-activation */
    void *fch_act;     /* (N,d_ff) after GELU / SwiGLU */
} LayerActs;

typedef struct Model {
    ModelConfig cfg;
    ParamTable pt;
    const Backend *be;
    int wte, wpe, lnf_w, lnf_b, lm_head; /* param indices (-1 if absent) */
    LayerParams *lp;                     /* n_layer */

    float *params;    /* fp32 master, pt.total elements (backend memory) */
    void *params_act; /* compute copy (== params when act_dtype is fp32) */
    float *grads;     /* fp32, pt.total */
    float *inv_freq;  /* RoPE frequencies (head_dim/2), llama only */

    /* activation buffers sized for up to Bmax x Tmax tokens */
    int Bmax, Tmax, recompute;
    int cur_B, cur_T; /* shape of the last forward with targets (used by backward) */
    LayerActs *la; /* n_layer */
    void *res_final;          /* (N,C) output of the last block */
    void *lnf;                /* (N,C) */
    float *lnf_mean, *lnf_rstd;
    void *logits;             /* (N,V) logits of a forward without targets (allocated by the first) */
    void *dres, *dbuf1, *dbuf2; /* backward scratch: (N,C), (N,max(qkv,fc)), (N,max(C,q,d_ff)) */
    int32_t *tokens, *targets; /* (N) backend copies */
    float *losses;             /* (N) backend */
    float *losses_host;        /* (N) host */
} Model;

/* Create a model on a backend with zeroed parameters (call model_init_gpt2
 * or load weights next). Activations are allocated by model_reserve. */
Model *model_create(const ModelConfig *cfg, const Backend *be);
void model_free(Model *m);
/* Allocate activations for batches of up to B x T tokens (T <= max_seq_len).
 * recompute is a RECOMPUTE_* level. -1 with err_set() if T is too long. */
int model_reserve(Model *m, int B, int T, int recompute);

/* GPT-2-style init: N(0, 0.02) for matrices, residual output projections
 * scaled by 1/sqrt(2*n_layer), zero biases, unit norm weights. Each tensor
 * draws from its own stream of `seed`, so the result is independent of order. */
void model_init_gpt2(Model *m, uint64_t seed);
/* Replace all parameters with host fp32 values (pt.total of them). */
void model_set_params(Model *m, const float *host);
/* Copy the fp32 master parameters to host memory (pt.total). */
void model_get_params(const Model *m, float *host);
/* Refresh the compute copy from the master weights (after editing params). */
void model_sync_act_params(Model *m);

/* Forward pass over inputs (B,T) host token ids. If targets (host, B*T,
 * negative = ignore) is given, returns the mean loss over non-ignored targets
 * and, when loss_scale != 0, already runs the output layer's backward (loss
 * gradient scaled by loss_scale per token; the output weight's gradient is
 * ADDED to m->grads here), ready for model_backward. The output layer and the
 * loss are one chunked op (lm_head_xent), so no (N,V) logits are kept. Without
 * targets returns 0 and leaves logits (B,T,V) in m->logits. *n_valid gets the count of scored
 * targets when not NULL. */
float model_forward(Model *m, const int32_t *inputs, const int32_t *targets, int B, int T, float loss_scale,
                    int *n_valid);
/* Backward pass after model_forward(..., loss_scale != 0); ADDS the gradients
 * to m->grads (zero them with model_zero_grad at the start of a step). */
void model_backward(Model *m);
void model_zero_grad(Model *m);

/* Forward + backward FLOPs per token, 6*N + 6*n_layer*d_model*T (docs/). */
double model_flops_per_token(const Model *m, int T);

#endif
