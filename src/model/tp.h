/* tp.h - tensor parallel (Megatron-style) for decoders (dense or MoE) and encoders: what each rank of a tp group holds,
 * and the few places of the model that talk to the group (docs/distributed.md "Tensor parallel").
 *
 * A group of P ranks runs one model whose Model.cfg is this rank's slice (tp_config_local):
 *   n_head / P query heads, n_kv_head / P key/value heads, d_ff / P MLP units, and the rows
 *   [v0, v0 + vn) of the vocabulary (vn = ceil(V / P), the last rank's fewer);
 * so the parameter table of each rank lists its slices (Megatron's layout):
 *   h.L.qkv.w/b  column-parallel: rows [q heads of r | k heads of r | v heads of r]
 *   h.L.fc.w/b   column-parallel: rows of the units of r (llama: [gate of r | up of r])
 *   h.L.o.w      row-parallel: the columns of r's query heads;  h.L.o.b whole (added by rank 0)
 *   h.L.proj.w   row-parallel: the columns of r's units;         h.L.proj.b whole (added by rank 0)
 *   wte, lm_head vocabulary-parallel: rows [v0, v0 + vn) (an encoder's decoder bias: entries [v0, v0 + vn))
 *   wpe, every norm                whole and identical on every rank (their gradients are, too),
 *   but BitNet's sub-norms:        h.L.attn_sub.w r's query heads' features, h.L.ffn_sub.w r's units
 *   h.L.exp.E.fc.w, shared.fc.w    an expert's [w1 | w3] (gate | up): the rows of r's units of each
 *   h.L.exp.E.proj.w, shared.proj.w  the columns of r's units;  router, shared.gate whole
 * (mixture of experts, moe.c: every rank routes every token alike and runs its slice of each expert;
 * the layer's output and input gradient are all-reduced once, not per expert)
 * The products (linear.h LinearSplit): a row-parallel output is all-reduced in the forward, a
 * column-parallel input gradient in the backward. The embedding: each rank looks up the ids of its
 * slice (zero rows for the others) and the rows are all-reduced; the loss: each rank's logits slice
 * (N, vn), its (max, sum of exp, target logit) per row all-gathered, so that every rank gets the
 * whole-vocabulary loss and its slice of the logits' gradient (backend.h xent_vp_*).
 * BitNet (model.ternary: bitnet): what a rank computes from its slices equals one rank's run because
 * the statistics over the whole are gathered: each BitLinear part's sum |W| (its gamma is the whole
 * part's mean), a row-parallel product's per-row input absmax (its 8-bit scale is the whole row's), and
 * a sub-norm's per-row sum of squares and, backward, of g * xhat (tp_bitlinear_*, tp_sub_norm_*).
 */
#ifndef ANVIL_MODEL_TP_H
#define ANVIL_MODEL_TP_H

#include <stddef.h>
#include <stdint.h>

#include "model/config.h"
#include "model/params.h"

struct Model;

typedef struct ModelTp {
    int rank, size;   /* this rank in its tensor-parallel group; the group's size P */
    int v0, vn;       /* this rank's vocabulary rows [v0, v0 + vn) */
    ModelConfig full; /* the whole model (Model.cfg is this rank's slice) */
    /* The group's collectives, in stream order; a failed one ends the process with a message naming
     * the rank (a forward cannot return errors). Set by the distributed layer (dist_tp_model). */
    void *ctx;
    /* buf (n act elements, backend memory) = the sum over the group */
    void (*all_reduce_act)(void *ctx, void *buf, size_t n);
    /* the same for n fp32 values */
    void (*all_reduce_f32)(void *ctx, float *buf, size_t n);
    /* buf (size parts of n fp32, backend memory; this rank's part filled) = every rank's part */
    void (*all_gather_f32)(void *ctx, float *buf, size_t n);
    /* buffers of tp_attach (backend memory unless _host): */
    int cap;            /* rows (Bmax x Tmax) */
    int32_t *ids, *pos; /* (cap) this slice's ids (0 for ids outside it), positions pos0 + t */
    int32_t *zrows;     /* (cap) the rows whose id lies outside the slice; nz of them */
    int32_t *ids_host, *zrows_host, *pos_host;
    int nz;
    void *zeros;  /* (cap, C) act zeros */
    void *logits; /* (cap, vn) act */
    float *stats; /* (size, cap, 3) */
    /* BitNet (model.ternary: bitnet; NULL otherwise): each rank's statistics of its slices, gathered */
    double *wsum;  /* (size, TP_BITLINEAR_PARTS) sum |W| of each part of a BitLinear (its gamma) */
    float *amax;   /* (size, cap) a row-parallel product's per-row absmax of its input columns */
    double *rowst; /* (size, cap) a sub-norm's per-row sum of squares (forward) or of g * xhat (backward) */
} ModelTp;

/* The most Hugging Face parts of one BitLinear tensor (q, k, v). */
#define TP_BITLINEAR_PARTS 3

/* This rank's slice of a config (above). -1 with err_set() naming the key that does not divide. */
int tp_config_local(const ModelConfig *full, int size, int rank, ModelConfig *local);
/* The vocabulary rows [*v0, *v0 + *vn) of rank r of P. */
void tp_vocab_part(int V, int P, int r, int *v0, int *vn);
/* 1 when a tensor of this role is split over the group, 0 when every rank holds it whole. */
int tp_role_split(int role);
/* The same for a tensor, adapters included (LoRA: on a column-parallel product B is split by rows and
 * A whole; on a row-parallel one A by columns and B whole). */
int tp_param_split(const Param *p);
/* Copy between the whole model's and rank r's tensors: host images (seg 0: Param.offset, every
 * tensor) or trainable segments (seg 1: Param.seg, trainable tensors; optimizer moments).
 * to_local 1: local = r's slice of whole; 0: r's slice of whole = local (whole tensors too). */
void tp_slice(const ModelConfig *full, int P, int r, const ParamTable *whole_pt, const ParamTable *local_pt,
              float *whole, float *local, int to_local, int seg);
/* The same for one tensor: pw of the whole table, pl of rank r's, their values at whole and local. */
void tp_slice_tensor(const ModelConfig *full, int P, int r, const Param *pw, const Param *pl, float *whole,
                     float *local, int to_local);
/* Rank r's part `part` of a 4-bit block linear pl, from part `part` of the whole tensor pw (whole,
 * quantized as dist.tp 1 quantizes it, or as a pre-quantized directory stores it): its rows (a
 * column-parallel product) or columns (a row-parallel one) of the codes, with fp32 block scales that
 * dequantize to exactly the whole tensor's values (quant4.h q4_gather), so that every rank computes
 * with the weights of dist.tp 1. -1 with err_set() naming the tensor when a slice splits a byte. */
int tp_q4_slice(const ModelConfig *full, int P, int r, const Param *pw, const Param *pl, int part,
                const Q4State *whole, Q4Quant *out);
/* The block size of that slice (whole blocks of blocksize) and its values: what `anvil plan --tp` counts. */
int tp_q4_blocksize(const ModelConfig *full, int P, int r, const Param *pw, const Param *pl, int part, int blocksize,
                    int64_t *values);

/* Give a model built from a local config its group: split its products and allocate the buffers
 * (after model_reserve). tp (owned by the caller) must outlive the model's passes. */
void tp_attach(struct Model *m, ModelTp *tp);
void tp_detach(struct Model *m);

/* BitNet: out (act) = this rank's slice w of BitLinear p (its values: fp32, or act when w_act)
 * ternarized part by part, each part's gamma the mean |W| of the whole part (the group's sums gathered
 * once for the tensor). Every rank of the group calls it for the same tensor at the same point. */
void tp_bitlinear_quant(const ModelTp *tp, const struct Backend *be, const Param *p, void *out, const void *w,
                        int w_act);
/* BitNet: xq (N, C) = the 8-bit quantization of a row-parallel product's input columns inp (N, C), each
 * row's scale that of the whole row (the group's absmax). */
void tp_bitlinear_act(const ModelTp *tp, const struct Backend *be, void *xq, const void *inp, int N, int C);
/* BitNet's sub-norm (RMSNorm, weight w (C)) of rows whose features are split over the group (C here,
 * C x size whole): out, rstd (N) as norm_fwd; the backward adds to dinp and dw as norm_bwd. */
void tp_sub_norm_fwd(const ModelTp *tp, const struct Backend *be, void *out, float *rstd, const void *x,
                     const void *w, int N, int C, float eps);
void tp_sub_norm_bwd(const ModelTp *tp, const struct Backend *be, void *dinp, float *dw, const void *dout,
                     const void *x, const void *w, const float *rstd, int N, int C);

/* The group's all-reduce (linear.c). */
static inline void tp_all_reduce_act(const ModelTp *tp, void *buf, size_t n)
{
    tp->all_reduce_act(tp->ctx, buf, n);
}

/* The host ids of a forward (N): this slice's ids, the rows outside it, the positions (uploaded). */
void tp_tokens(struct Model *m, const int32_t *ids, int B, int T, int pos0);
/* out (B,T,C) = wte[ids] + wpe[pos0 + t], wte vocabulary-parallel (scratch: (N,C) act). */
void tp_embed_fwd(struct Model *m, void *out, void *scratch, int B, int T);
/* The embeddings' gradients from dres (N,C), replicated over the group (scratch: (N,C) act). */
void tp_embed_bwd(struct Model *m, const void *dres, void *scratch, int B, int T);
/* The vocabulary-parallel head and loss: losses (N) of lnf (N,C) against targets (backend, whole ids);
 * with dscale != 0 also dlnf (N,C) (summed over the group) and the head's gradient. */
void tp_head_xent(struct Model *m, float *losses, void *dlnf, const void *lnf, const int32_t *targets, int N,
                  float dscale);

#endif
