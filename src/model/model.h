/* model.h - one transformer, forward and backward written once over the op table.
 *
 * A Model owns its parameter store (params.h: trainable and frozen tensors), and its activations,
 * all in backend memory. The same code runs both families; the switches live in ModelConfig.
 *
 * Per block (pre-norm), block.c, used by training, evaluation and cached generation alike:
 *   ln1 = norm(x);  qkv = linear(ln1);  rope(q,k) [llama]
 *   a = attention(qkv, mode);  x2 = x + linear_o(a)
 *   ln2 = norm(x2); h = linear_fc(ln2); g = gelu(h) | swiglu(h)
 *   x' = x2 + linear_proj(g)
 * then lnf = norm(x_L), logits = linear_head(lnf) (the head is wte when tied).
 *
 * Encoders (cfg.post_norm, the bert family) keep the same buffers with the norms moved after the
 * residual sums: ln1 = norm(res) is the block input, x2 = ln1 + linear_o(a), ln2 = norm(x2), and
 * the next block's res = ln2 + linear_proj(g); res of block 0 is the embedding sum (words,
 * positions from pos_offset, token types), its ln1 the embedding LayerNorm; lnf the last block's
 * output norm. The MLM head runs on the scored rows only (gathered first):
 *   logits = linear_dec(norm(gelu(linear_mlm(lnf[rows]))))   (the decoder is wte with its own bias)
 */
#ifndef ANVIL_MODEL_H
#define ANVIL_MODEL_H

#include <stdint.h>

#include "backend/backend.h"
#include "model/config.h"
#include "model/linear.h"
#include "model/lora.h"
#include "model/params.h"

/* Activation recomputation during backward, trading compute for memory. */
enum {
    RECOMPUTE_NONE = 0,  /* keep every activation */
    RECOMPUTE_CHEAP = 1, /* recompute norms and the MLP activation (element-wise) */
    RECOMPUTE_BLOCK = 2, /* keep only each block's input; rerun the block forward */
};

/* The tensors of one block: norm parameter indices (-1 where the family has none) and the four
 * products. */
typedef struct {
    int ln1_w, ln1_b, ln2_w, ln2_b;
    int asub_w, fsub_w; /* BitNet's attn_sub_norm / ffn_sub_norm weights (-1 without sub-norms) */
    Linear qkv, o, fc, proj;
    /* MoE layers (moe.h) instead of fc/proj: the router, each expert's fc/proj (E each, owned),
     * the shared expert and its gate (w -1 when absent) */
    int moe;
    Linear router, sh_fc, sh_proj, sh_gate;
    Linear *exp_fc, *exp_proj;
} LayerParams;

struct MoeActs;

/* Activations of one block, saved by forward for backward (or the scratch of one chunk of
 * generation, where every layer shares one set). */
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
    void *fch_act;     /* (N,d_ff) after GELU / SwiGLU / relu2-GLU */
    void *att_sn, *fch_sn;          /* BitNet sub-norms: (N,q_dim) norm(att), (N,d_ff) norm(fch_act) */
    float *att_sn_rstd, *fch_sn_rstd; /* (N) */
    void *lora_t[LORA_SITE_COUNT]; /* (N, r) per adapted site: dropout(x) @ A^T (lora.h), a column slice of
                                    * its product's block: [t_q | t_k | t_v] side by side (model_lora_t_alloc);
                                    * routed experts' (N k, r): each expert's rows where moe.c puts its tokens */
    void *lora_tb[LORA_SITE_COUNT]; /* the blocks those point into (owned; freed with the activations) */
    struct MoeActs *moe; /* MoE layers: routing and expert activations (moe.h); NULL for dense */
} LayerActs;

/* Hooks of a sharded run (src/dist/dist.h fills them; NULL members are skipped). g is a group of
 * the table's layer_seg: 0 the embeddings, 1 + l block l, n_layer + 1 the final norm and head. A
 * pass calls, in order of use:
 *   weights_need(g, next)  before group g's weights are first used (ZeRO-3: wait for the gathered
 *                          copy; next, -1 for none, is the group the pass needs after g: prefetch it)
 *   weights_done(g)        group g's weights are not used again in this pass
 *   grads_begin(g)         before the pass first writes group g's gradients (ZeRO-2/3: a staging
 *                          buffer for them)
 *   grads_ready(g)         every gradient of group g in this backward has been queued (the
 *                          reduction may start: the overlap of communication with backward)
 * The forward with a training loss runs the head's backward, so grads_begin of the head's groups
 * comes there; model_backward calls grads_ready in the order it finishes the groups: n_layer + 1,
 * n_layer, ..., 1, then 0 (last: a tied wte gets its gradient from both ends). */
typedef struct ModelHooks {
    void *ctx;
    void (*weights_need)(void *ctx, int g, int next);
    void (*weights_done)(void *ctx, int g);
    void (*grads_begin)(void *ctx, int g);
    void (*grads_ready)(void *ctx, int g);
} ModelHooks;

typedef struct Model {
    ModelConfig cfg;
    ParamTable pt;
    ParamStore ps;
    const Backend *be;
    int wte, wpe, lnf_w, lnf_b; /* param indices (-1 if absent) */
    Linear head;                /* the output layer: lm_head, or wte when tied */
    LayerParams *lp;            /* n_layer */
    float *inv_freq;            /* RoPE frequencies (head_dim/2), llama only */
    LoraSpec lora;              /* adapters (r 0: none) */
    LinearAdapter *adapters;    /* every adapter; the Linears of lp point into it */
    int training;               /* the current forward trains (adapter and model dropout on) */
    int head_unfused;           /* 1: the output layer as a whole (N,V) product, softmax and product
                                 * (the plain path, for `anvil bench --ablate`); 0: lm_head_xent */
    uint64_t dropout_seed;      /* the current micro-step's dropout stream (train_step sets it) */

    /* activation buffers sized for up to Bmax x Tmax tokens */
    int Bmax, Tmax, recompute;
    /* train.recompute_layers: the first recompute_layers blocks recompute at `recompute`, the others keep
     * every activation; -1 (the default) = all of them. Set with model_set_recompute_layers. */
    int recompute_layers;
    int cur_B, cur_T; /* shape of the last forward with targets (used by backward) */
    size_t act_bytes; /* backend memory of the buffers below */
    LayerActs *la;    /* n_layer */
    void *res_final;  /* (N,C) output of the last block */
    void *lnf;        /* (N,C) */
    float *lnf_mean, *lnf_rstd;
    void *logits;               /* (N,V) logits of a forward without targets (allocated by the first) */
    void *dres, *dbuf1, *dbuf2; /* backward scratch: (N,C), (N,max(qkv,fc)), (N,max(C,q,d_ff)) */
    void *lora_dt, *lora_xd;    /* adapter scratch: (N, r) and, with dropout, (N, max in) */
    int lora_t_kept;            /* in block_recompute: the layer's saved adapter products are this step's */
    void *drop_grad;            /* (N,C) a gradient through a hidden dropout site (cfg.dropout > 0 only; dropout.h) */
    int32_t *tokens, *targets;  /* (N) backend copies */
    LinearHeadBufs head_bufs;   /* a head read by row chunks (fused integer-ternary lm_head): its scratch */
    /* an embedding read by row chunks (fused integer-ternary wte, Param.chunk_rows): the looked-up rows
     * (N,C) and a row scratch (N,C), act; the positions, chunk-relative ids and 0..N-1 (N, backend);
     * host copies of the tokens, positions and ids (3N) */
    void *emb_rows, *emb_tmp;
    int32_t *emb_pos, *emb_ids, *emb_iota, *emb_host;
    float *losses;              /* (N) backend */
    float *losses_host;         /* (N) host */
    double loss_sum;            /* sum of the losses of the last forward with targets */
    const ModelHooks *hooks;    /* a sharded run's hooks (above), or NULL */
    struct MoeState *moe;       /* MoE models: backward scratch, routing losses, statistics (moe.h) */
    struct ModelTp *tp;         /* tensor parallel: this rank's group (model/tp.h), or NULL */

    /* encoders (bert family) */
    int tte;                    /* token-type embeddings (-1: none) */
    Linear mlm, dec;            /* the MLM head's dense layer and decoder (wte + mlm.bias); w -1: no head */
    int mlm_ln_w, mlm_ln_b;
    int32_t *lengths;           /* (Bmax) backend copy of the last forward's sequence lengths */
    const int32_t *cur_lengths; /* m->lengths when the last forward had lengths, else NULL (all T) */
    int32_t *types;             /* (N) token-type ids (zeros) */
    int32_t *rows, *rows_host;  /* (N) scored rows of the last forward (backend, host); n_rows of them */
    int n_rows;
    void *mlm_x, *mlm_h, *mlm_g, *mlm_u; /* (N,C) head input rows, pre-activation, GELU, norm output */
    float *mlm_mean, *mlm_rstd;          /* (N) */
    void *mlm_logits;                    /* (rows,V) logits of the scored rows (grow-only, mlm_cap rows) */
    int hidden_only;                     /* 1: a forward without targets stops at the hidden states (embeddings) */
    int mlm_cap;
} Model;

/* The hooks, where set (model.c, block.c). */
static inline void model_weights_need(const Model *m, int g, int next)
{
    if (m->hooks && m->hooks->weights_need) m->hooks->weights_need(m->hooks->ctx, g, next);
}
static inline void model_weights_done(const Model *m, int g)
{
    if (m->hooks && m->hooks->weights_done) m->hooks->weights_done(m->hooks->ctx, g);
}
static inline void model_grads_begin(const Model *m, int g)
{
    if (m->hooks && m->hooks->grads_begin) m->hooks->grads_begin(m->hooks->ctx, g);
}
static inline void model_grads_ready(const Model *m, int g)
{
    if (m->hooks && m->hooks->grads_ready) m->hooks->grads_ready(m->hooks->ctx, g);
}
/* The group of the output layer's weight: 0 when tied to wte, n_layer + 1 otherwise. */
/* The embedding table the lookup of tokens (N, backend) reads and the ids it reads it with: wte and
 * tokens themselves, or for a table read by row chunks the N looked-up rows (m->emb_rows, gathered chunk
 * by chunk) and the ids 0..N-1. */
const void *model_embed_table(Model *m, const int32_t *tokens, int N, const int32_t **ids);
static inline int model_head_group(const Model *m) { return m->head.w == m->wte ? 0 : m->cfg.n_layer + 1; }

/* Create a model on a backend with zeroed parameters, every tensor trainable (call model_init_gpt2
 * or load weights next). Activations are allocated by model_reserve. */
Model *model_create(const ModelConfig *cfg, const Backend *be);
/* The same with a kind per tensor of the config's table (NULL = all trainable; a table built by
 * param_table_build has the same order). */
Model *model_create_kinds(const ModelConfig *cfg, const Backend *be, const ParamKind *kinds);
/* All tensors frozen: evaluation and generation (no master, no gradients). */
Model *model_create_frozen(const ModelConfig *cfg, const Backend *be);
/* How a run wants a model's store allocated (a ZeRO rank: only its parts, params.h ParamAllocPlan):
 * plan is called with the model's table before the store exists. */
typedef struct ModelAlloc {
    void (*plan)(void *ctx, const ParamTable *pt, ParamAllocPlan *out);
    void *ctx;
} ModelAlloc;
Model *model_create_kinds_alloc(const ModelConfig *cfg, const Backend *be, const ParamKind *kinds,
                                const ModelAlloc *alloc);
/* How the frozen block linears are stored 4-bit (QLoRA): NULL or type < 0 = not at all. */
typedef struct Q4Spec {
    int type;      /* Q4Type: Q4_NF4 or Q4_FP4 */
    int blocksize; /* 64 */
    int nested;    /* double quantization of the block scales */
} Q4Spec;
/* With the adapters of lora (lora.h) after each block's tensors: the base tensors frozen, the
 * adapters trainable (train 1) or frozen too (train 0: evaluation with an adapter); with quant, the
 * block linears (q/k/v, o, gate/up, down; GPT-2's c_attn, c_proj, c_fc) stored 4-bit as
 * bitsandbytes does, one state per Hugging Face tensor; embeddings, norms and the head stay dense.
 * The adapters start as PEFT's: A Kaiming-uniform from seed, B zero (model_init_lora). */
Model *model_create_lora(const ModelConfig *cfg, const Backend *be, const LoraSpec *lora, int train, uint64_t seed,
                         const struct Q4Spec *quant);
Model *model_create_lora_alloc(const ModelConfig *cfg, const Backend *be, const LoraSpec *lora, int train,
                               uint64_t seed, const struct Q4Spec *quant, const ModelAlloc *alloc);
/* The kinds model_create_lora_alloc gives a table that param_table_build_lora built (adapters
 * trainable when train, block linears 4-bit when q4, the rest frozen), and the 4-bit tensors' parts
 * (ParamTable.part_rows): a table of the same model without its store (tensor parallel's whole model). */
void param_table_lora_kinds(ParamTable *pt, const ModelConfig *cfg, int train, int q4);
/* PEFT's initialisation of every adapter: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform_ with
 * a = sqrt(5)), B = 0; each tensor from its own stream of seed. */
void model_init_lora(Model *m, uint64_t seed);
/* The initial values x (p->numel) of adapter tensor i of a table (what model_init_lora uploads). */
void lora_init_tensor(const Param *p, int i, uint64_t seed, float *x);
void model_free(Model *m);
/* Allocate activations for batches of up to B x T tokens (T <= max_seq_len).
 * recompute is a RECOMPUTE_* level. -1 with err_set() if T is too long. */
int model_reserve(Model *m, int B, int T, int recompute);
/* Only the first k blocks recompute (model_reserve's level); the rest keep all their activations
 * (more memory, less recompute: Megatron's --recompute-num-layers). k < 0: every block. The next
 * model_reserve allocates for it. */
void model_set_recompute_layers(Model *m, int k);
/* The recompute level block l runs at (RECOMPUTE_*). */
int model_layer_recompute(const Model *m, int l);

/* GPT-2-style init: N(0, 0.02) for matrices, residual output projections
 * scaled by 1/sqrt(2*n_layer), zero biases, unit norm weights. Each tensor
 * draws from its own stream of `seed`, so the result is independent of order. */
void model_init_gpt2(Model *m, uint64_t seed);
/* Replace all parameters with host fp32 values laid out as a host image (pt.total, Param.offset). */
void model_set_params(Model *m, const float *host);
/* The same for the base tensors only (adapters keep their values): loading a base under adapters. */
void model_set_params_base(Model *m, const float *host);
/* The same for every tensor but the 4-bit ones, which keep their bytes (a resume: re-quantizing the
 * dequantized values is not the identity under double quantization). */
void model_set_params_keep_4bit(Model *m, const float *host);
/* A host image of the parameters: the master of trainable tensors, the compute copy of others. */
void model_get_params(const Model *m, float *host);
/* A host image of the gradients (zeros for tensors without one), and back (tests). */
void model_get_grads(const Model *m, float *host);
void model_set_grads(Model *m, const float *host);
/* Fold every adapter into its base weight in a host image of m's parameters (model_get_params):
 * W[rows] += scale * B @ A, accumulated in double (PEFT's merge_and_unload). */
void model_merge_adapters(const Model *m, float *host);
/* Layer l's saved adapter products for N rows into a->lora_t / a->lora_tb: one block per product,
 * the product's sites side by side (a row stride of their summed ranks, linear.c); a routed experts'
 * block has N k rows (every routed slot); l -1: the sites of every layer (a KV cache's one set, which
 * all layers reuse). Returns the widest block's row (elements), 0 without adapters. model_lora_t_free
 * frees the blocks. */
int model_lora_t_alloc(const Model *m, int l, size_t N, LayerActs *a);
void model_lora_t_free(const Model *m, LayerActs *a);
/* Refresh the compute copy from the master weights (after editing the master). */
void model_sync_act_params(Model *m);

/* Forward pass over inputs (B,T) host token ids. If targets (host, B*T,
 * negative = ignore) is given, returns the mean loss over non-ignored targets
 * (their sum goes to m->loss_sum) and, when loss_scale != 0, already runs the output layer's
 * backward (loss gradient scaled by loss_scale per scored target; the output weight's gradient
 * is ADDED here), ready for model_backward. The output layer and the loss are one chunked op
 * (lm_head_xent), so no (N,V) logits are kept. Without targets returns 0 and leaves logits (B,T,V)
 * in m->logits. *n_valid gets the count of scored targets when not NULL. */
float model_forward(Model *m, const int32_t *inputs, const int32_t *targets, int B, int T, float loss_scale,
                    int *n_valid);
/* model_forward for padded batches: lengths (host, B; NULL = T each) gives each sequence's valid
 * tokens (1..T), which a bidirectional model attends to (padding never is); a causal model refuses
 * lengths. An encoder's targets are the MLM labels (negative = not scored); without targets an encoder
 * with an MLM head leaves its (B,T,V) logits in m->logits, and every model its final hidden states
 * (B,T,C) in m->lnf. */
float model_forward_len(Model *m, const int32_t *inputs, const int32_t *targets, const int32_t *lengths, int B,
                        int T, float loss_scale, int *n_valid);
/* Backward pass after model_forward(..., loss_scale != 0); ADDS the gradients of trainable tensors
 * (zero them with model_zero_grad at the start of a step). */
void model_backward(Model *m);
void model_zero_grad(Model *m);

/* Forward + backward FLOPs per token at sequence length T: for every weight product 2 FLOPs per
 * weight forward, 2 for the input gradient, 2 more for the weight gradient when the weight is
 * trainable (6 / 4 per weight), plus causal attention 6 * n_layer * q_dim * T (docs/benchmarks.md);
 * an encoder's bidirectional attention twice that, and its MLM head's products times the share of
 * rows the last forward with targets scored (the head runs on those only).
 * Embedding lookups are not products and count nothing. */
double model_flops_per_token(const Model *m, int T);
/* The same for a forward only (evaluation): 2 per weight plus 2 * n_layer * q_dim * T. */
double model_flops_per_token_fwd(const Model *m, int T);

/* Backend memory by what holds it. The caller adds the optimizer's state (optim); workspace is
 * everything else the backend holds (its own workspaces, scratch, caches). */
typedef struct {
    size_t weights, master, grads, optim, acts, workspace;
    size_t in_use, peak; /* the backend's own counts */
    size_t host;         /* state kept in host memory for the device (train.offload_*): not in peak */
} MemReport;
/* Fill every field from the model and the backend; optim_bytes is the optimizer's state. */
void model_mem_report(const Model *m, size_t optim_bytes, MemReport *r);
/* One line: "weights 1.2 GiB | master ... | peak ..." into buf. */
void mem_report_format(const MemReport *r, char *buf, size_t n);

#endif
