/* moe.h - the mixture-of-experts MLP of a block (docs/moe.md), called by block.c on the layers
 * where cfg_is_moe() holds, for training, evaluation and generation alike.
 *
 * For the block's normed input x = ln2 (N,C), E experts, k per token:
 *   logits = linear_router(x) (N,E);  p = softmax(logits) in fp32;  topi, w = top-k of p
 *   (w renormalised to sum 1 when moe_norm_topk, as Mixtral)
 *   the N*k (token, slot) pairs sorted by expert: xp = x[perm]  (contiguous rows per expert)
 *   for each expert e over its rows: y_e = linear_proj_e(swiglu(linear_fc_e(xp_e)))
 *   out[r] = sum_s w[r,s] y[pos[r,s]]  (+ sigmoid(linear_gate(x)) * shared(x), Qwen2-MoE)
 * The routing losses of a forward, over the R = (MoE layers) x N rows of all its MoE layers:
 *   aux = E * sum_e (count_e / R) (sum_r p[r,e] / R)     (transformers' load_balancing_loss_func)
 *   z   = sum_r logsumexp(logits[r])^2 / R               (ST-MoE router z-loss)
 * and the objective adds aux_coef * aux + z_coef * z; their gradients enter at the routing
 * backward (count_e is a constant: the selection has no gradient).
 */
#ifndef ANVIL_MODEL_MOE_H
#define ANVIL_MODEL_MOE_H

#include <stdio.h>

#include "model/model.h"

/* One MoE layer's activations (LayerActs.moe). The routing part is kept per layer at every
 * recompute level (it is small); the rest per layer or one shared set, as the level says. */
typedef struct MoeActs {
    float *probs;    /* (N,E) softmax of the router logits */
    float *lse;      /* (N) their logsumexp */
    float *stats;    /* (E+1) column sums of probs, then the sum of lse^2 (this forward) */
    int32_t *topi;   /* (N,k) chosen experts */
    float *topw;     /* (N,k) their weights */
    int32_t *perm;   /* (N*k) the slot r*k+s of each expert-sorted row */
    int32_t *pos;    /* (N*k) the row of each slot */
    int *counts;     /* (E) host: rows per expert */
    void *logits;    /* (N,E) act */
    void *xp;        /* (N*k, C) tokens in expert order */
    void *h;         /* (N*k, 2F) the experts' [gate | up] */
    void *act;       /* (N*k, F) swiglu(h) */
    void *y;         /* (N*k, C) the experts' outputs */
    void *sh_h, *sh_act, *sh_y, *sh_g; /* shared expert: (N, 2Fs), (N, Fs), (N, C), gate (N, 1) */
} MoeActs;

/* Backend blocks to free together (a model's or a KV cache's MoE buffers). */
typedef struct {
    void **p;    /* backend memory */
    int n, cap;
    void **h;    /* host memory */
    int nh, caph;
} MoeBufs;

/* A model's MoE state (Model.moe): backward scratch, the routing losses of the last forward with
 * targets, and statistics accumulated over forwards since moe_stats_reset. */
typedef struct MoeState {
    MoeBufs bufs;
    int n_moe;                  /* MoE layers */
    int *moe_index;             /* (n_layer) the MoE layer number of each layer, -1 for dense */
    /* backward scratch, sized for Bmax x Tmax tokens */
    void *dy, *dact, *dh, *dxp; /* (N*k, C), (N*k, F), (N*k, 2F), (N*k, C) */
    float *dtopw;               /* (N,k) */
    void *dlogits, *dx;         /* (N,E), (N,C) */
    void *xj;                   /* (N,C) the jittered layer input (model.moe.router_jitter, training only) */
    void *dsh_act, *dsh_h, *dys, *dg; /* (N,Fs), (N,2Fs), (N,C), (N,1) */
    float *dpe;                 /* (E) the aux loss's gradient per expert probability */
    float zscale;               /* the z loss's factor in the routing backward */
    /* the last forward with targets */
    double aux, z;              /* unscaled losses */
    float aux_w, z_w;           /* their weights in the gradient (coefficient x the forward's share) */
    /* since moe_stats_reset: routed rows per MoE layer and expert, losses summed over forwards */
    double *load;               /* (n_moe x E) */
    double aux_sum, z_sum;
    int n_fwd;
} MoeState;

/* The MoE Linears of layer l (LayerParams.router, exp_fc, ...) from the table; free with moe_params_free. */
void moe_params_make(Model *m, int l);
void moe_params_free(Model *m);
/* Allocate the MoE state of a model (NULL model->moe for a dense one) and its backward scratch for
 * N tokens; moe_state_free frees it. */
void moe_state_reserve(Model *m, int N);
void moe_state_free(Model *m);
/* Allocate layer activations for N tokens into *a (registered in bufs): the routing part always,
 * the rest unless shared (then copied from *from, which must be allocated). keep_act 0 shares
 * the element-wise outputs (act, sh_act) with from as recompute level 1 does. */
MoeActs *moe_acts_alloc(const Model *m, MoeBufs *bufs, int N, const MoeActs *from, int keep_big, int keep_act);
void moe_bufs_free(const Backend *be, MoeBufs *bufs);

/* The MoE MLP of block l: out (N,C) from a->ln2 (overwrite). */
void moe_fwd(Model *m, int l, LayerActs *a, int N, void *out, const LinearBufs *lb);
/* Recompute the element-wise outputs (recompute level 1). */
void moe_recompute_act(Model *m, int l, LayerActs *a, int N);
/* Backward: dout (N,C) the gradient of out; dln2 (N,C) the gradient of a->ln2 (overwrite). */
void moe_bwd(Model *m, int l, LayerActs *a, int N, const void *dout, void *dln2, const LinearBufs *lb);

/* After a forward with targets (N tokens): the routing losses (m->moe->aux, z) from every MoE
 * layer's statistics, added to the accumulated statistics; loss_weight is the weight of this
 * forward in the step's objective (loss_scale x its scored targets: 1 for a single batch), which
 * scales the losses' gradients for the backward. */
void moe_after_forward(Model *m, int N, double loss_weight);
/* The routing losses' contribution to the last forward's objective: aux_coef * aux + z_coef * z. */
double moe_loss(const Model *m);
void moe_stats_reset(Model *m);

/* Per-layer figures of accumulated statistics: load (E) = each expert's share of the routed rows,
 * balance = mean / max load (1 = even), entropy in bits of the load distribution (log2 E = even). */
void moe_layer_stats(const Model *m, int moe_layer, double *load, double *balance, double *entropy_bits);

/* The routing statistics accumulated since moe_stats_reset as metrics.jsonl keys (docs/moe.md):
 * , "aux_loss": mean over forwards, "z_loss", then per MoE layer "expert_load" [[shares]],
 * "load_balance" [..], "routing_entropy_bits" [..]. Appended to buf (n bytes) at *o, never past n. */
void moe_metrics_json(const Model *m, char *buf, size_t n, size_t *o);
/* The per-expert load table of load (n_moe x E routed rows), with bars, to f; what names the span. */
void moe_print_load_table(const Model *m, const double *load, const char *what, FILE *f);

/* FLOPs per token of the MoE MLP of a layer, counting the k experts a token is routed to. */
double moe_flops(const Model *m, int l, int backward);

#endif
