/* params.h - the parameter store: every tensor of a model, its kind, and the memory each kind owns.
 *
 * The table (ParamTable) lists the tensors of a config with their internal names and layouts
 * (weights are (out, in) like torch.nn.Linear):
 *   wte (V,C)  wpe (P,C)  lm_head (V,C, untied only)  lnf.w (C)  lnf.b (C)
 *   h.L.ln1.w/b (C)  h.L.qkv.w (qkv_dim, C)  h.L.qkv.b (qkv_dim)
 *   h.L.o.w (C, q_dim)  h.L.o.b (C)  h.L.ln2.w/b (C)
 *   h.L.fc.w (fc_dim, C)  h.L.fc.b (fc_dim)  h.L.proj.w (C, d_ff)  h.L.proj.b (C)
 * and in an MoE layer instead of fc/proj (docs/moe.md):
 *   h.L.router.w (E, C)  h.L.exp.e.fc.w (2 moe_d_ff, C)  h.L.exp.e.proj.w (C, moe_d_ff)  (e = 0 .. E-1)
 *   h.L.shared.fc.w (2 shared_d_ff, C)  h.L.shared.proj.w (C, shared_d_ff)  h.L.shared.gate.w (1, C)
 * The bert family adds tte (types, C) after wpe and, with the MLM head, mlm.w (C,C) mlm.b mlm.ln.w
 * mlm.ln.b (C) and mlm.bias (V) after lnf; its h.L.ln1 is the norm that made block L's input (the
 * embedding LayerNorm for block 0, block L-1's output LayerNorm after), lnf the last block's.
 * qkv rows are [q heads | k heads | v heads]; llama fc rows are [gate | up]. Table order is
 * layer-major: the embeddings, then block 0 .. L-1, then the final norm and the head.
 *
 * Each tensor has a kind, and the kind decides what memory exists for it (ParamStore):
 *   PARAM_TRAIN   fp32 master + compute copy + fp32 gradient (+ the optimizer's state, which the
 *                 optimizer owns); the compute copy IS the master when the backend computes in fp32.
 *   PARAM_FROZEN  the compute copy only: no master, no gradient, no optimizer state; left out of the
 *                 gradient norm, clipping, weight decay and optimizer checkpoints.
 *   PARAM_NF4     frozen as above, stored 4-bit as bitsandbytes does (model/quant4.h): packed nibbles
 *                 and block scales (double-quantized or not), one state per Hugging Face tensor (a fused
 *                 qkv.w holds three: q, k, v, so a pre-quantized directory loads byte for byte); a
 *                 product dequantizes it into the store's scratch (linear.c).
 *   PARAM_TERNARY integer ternary (docs/ternary.md): trits packed 5 per byte, an int8 power-of-two
 *                 exponent per group of ModelConfig.tern_group weights, an int8 sign accumulator per
 *                 weight and an int8 scale accumulator per group; a product unpacks it into the store's
 *                 scratch. Its fp32 gradient lives in a third segment (n_tern) for the length of a step
 *                 only (the update reads it; nothing of it is kept or saved); it is not in the gradient
 *                 norm or clipping (the update uses signs).
 * A trainable tensor with `ternarize` set (model.ternary: bitnet) is a BitNet b1.58 latent weight:
 * fp32 master, gradient and Adam state as any trainable tensor, ternarized (absmean) into the scratch
 * at every product, whose input is quantized to 8 bits (linear.c): from the fp32 master, or under ZeRO
 * (tern_from_act) from the compute copy every rank holds then (fp32 on the CPU: the same values).
 * Trainable tensors live in one contiguous segment (master, compute copy and gradient each one
 * buffer of n_train elements), in table order, so that the optimizer sees one vector and a
 * data-parallel run can cut it into equal per-rank shards (params_shard). Frozen tensors live in a
 * second segment of compute copies. Every tensor starts at a multiple of PARAM_ALIGN elements.
 *
 * Adding a kind (NF4, ternary, FP8): give it a segment (or a packed buffer) here, teach
 * params_upload / params_download to convert to and from fp32, and add its case to the one switch
 * in linear.c (linear_weight), which turns a tensor into what a product needs. Nothing else in the
 * model, the trainer or the backends changes.
 */
#ifndef ANVIL_MODEL_PARAMS_H
#define ANVIL_MODEL_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "model/config.h"
#include "model/quant4.h"

typedef enum {
    PARAM_TRAIN = 0,
    PARAM_FROZEN = 1,
    PARAM_NF4 = 2, /* frozen, 4-bit (NF4 or FP4, bitsandbytes layout): packed nibbles + block scales */
    PARAM_TERNARY = 3, /* integer ternary (train.optimizer: ternary): packed trits + int8 group exponents and
                        * accumulators (backend.h TernaryTensor), no float weight or optimizer state */
    PARAM_KIND_COUNT
} ParamKind;

/* Segment offsets are multiples of this many elements (256 bytes of fp32): aligned rows for
 * vector loads and the GPU's 16-byte alignment rules, whatever the tensor sizes. */
#define PARAM_ALIGN 64

enum {
    PROLE_WTE, PROLE_WPE, PROLE_LM_HEAD, PROLE_LNF_W, PROLE_LNF_B,
    PROLE_LN1_W, PROLE_LN1_B, PROLE_QKV_W, PROLE_QKV_B, PROLE_O_W, PROLE_O_B,
    PROLE_LN2_W, PROLE_LN2_B, PROLE_FC_W, PROLE_FC_B, PROLE_PROJ_W, PROLE_PROJ_B,
    PROLE_LORA_A, PROLE_LORA_B, /* adapters (lora.h): A (r, in), B (rows, r) of one site */
    /* MoE layers (config.h cfg_is_moe) in place of fc/proj: the router (E, C); expert e's
     * fc.w (2 moe_d_ff, C) [gate | up] and proj.w (C, moe_d_ff), the experts one after another
     * (param_find_expert); the shared expert's fc/proj and its gate (1, C) */
    PROLE_ROUTER_W, PROLE_EXP_FC_W, PROLE_EXP_PROJ_W, PROLE_SH_FC_W, PROLE_SH_PROJ_W, PROLE_SH_GATE_W,
    PROLE_ATTN_SUB_W, PROLE_FFN_SUB_W, /* BitNet's sub-norms: h.L.attn_sub.w (q_dim), h.L.ffn_sub.w (d_ff) */
    /* encoders (bert family): token types, the MLM head's transform (dense, norm) and decoder bias */
    PROLE_TTE, PROLE_MLM_W, PROLE_MLM_B, PROLE_MLM_LN_W, PROLE_MLM_LN_B, PROLE_MLM_BIAS,
    PROLE_COUNT
};

typedef struct {
    char name[64];
    int role;  /* PROLE_* */
    int layer; /* -1 for tensors outside the blocks */
    int ndim;
    int64_t shape[2];
    size_t numel;
    size_t offset;  /* element offset in a host image of the whole table (every tensor, table order) */
    ParamKind kind;
    size_t seg;     /* element offset inside its kind's segment */
    int decay;      /* weight decay applies (matrices) */
    int site;       /* LoraSite of an adapter tensor, -1 otherwise */
    int ternarize;  /* BitNet QAT (model.ternary: bitnet): a trainable weight ternarized at every use */
    int fused;      /* PARAM_TERNARY updated as soon as its gradient is complete (train.ternary.fused): no
                     * gradient segment, the store's one scratch instead */
    int chunk_rows; /* a fused vocabulary tensor (untied wte, lm_head) read, differentiated and updated this
                     * many rows at a time (params_chunk; 0: whole) */
    int nparts;     /* 4-bit: the Hugging Face tensors it is made of (row ranges), 1..PARAM_MAX_PARTS */
    int part_rows[3];
    int expert;     /* the routed expert of a PROLE_EXP_* tensor or of its adapter, -1 otherwise */
} Param;

#define PARAM_MAX_PARTS 3

typedef struct {
    Param *p;
    int n;
    size_t total;   /* elements of a host image (the sum of numel) */
    size_t n_train; /* elements of the trainable segment (padded to PARAM_ALIGN per tensor) */
    size_t n_frozen;
    size_t n_tern;  /* elements of the fp32 gradient segment of PARAM_TERNARY tensors */
    int tern_group; /* weights per exponent group of PARAM_TERNARY tensors (ModelConfig.tern_group) */
    int tern_fused; /* ModelConfig.tern_fused */
    int tern_chunk_rows; /* ModelConfig.tern_chunk_rows */
    int tern_frozen;     /* ModelConfig.tern_frozen */
    int n_layer;
    int *by_role;   /* (n_layer + 1) x PROLE_COUNT tensor indices, -1 where absent (row 0: outside blocks) */
    int *by_site;   /* n_layer x LORA_SITE_COUNT x 2 (A, B) adapter tensor indices (experts: expert 0's), -1 where absent */
    /* Trainable-segment offset where each group of tensors starts: group 0 the embeddings, group
     * 1 + l block l, group n_layer + 1 the final norm and head; layer_seg[n_layer + 2] = n_train. */
    size_t *layer_seg;
} ParamTable;

struct LoraSpec;
/* Build the table for a config, every tensor trainable. */
void param_table_build(ParamTable *pt, const ModelConfig *c);
/* The same with the adapters of lora (NULL or r 0: none) after each block's tensors. */
void param_table_build_lora(ParamTable *pt, const ModelConfig *c, const struct LoraSpec *lora);
void param_table_free(ParamTable *pt);
/* Set the kinds (kinds[i] for tensor i; NULL = all trainable) and lay out the segments. */
void param_table_set_kinds(ParamTable *pt, const ParamKind *kinds);
/* Index of the named tensor, or -1. */
int param_find(const ParamTable *pt, const char *name);
/* Index of (role, layer), or -1 if the model has no such tensor. O(1). */
int param_find_role(const ParamTable *pt, int role, int layer);
/* Index of expert e's PROLE_EXP_FC_W or PROLE_EXP_PROJ_W tensor in MoE layer l, or -1. O(1). */
int param_find_expert(const ParamTable *pt, int role, int layer, int e);
/* Index of the adapter tensor A (ab 0) or B (ab 1) of a site in layer l, or -1. O(1). */
int param_find_lora(const ParamTable *pt, int layer, int site, int ab);
/* The same for expert e of a routed experts' site (lora.h LORA_EXP_*: per expert the A's of its product's
 * sites then their B's, in expert order; param_find_lora gives expert 0's); -1 where absent. For any other
 * site, e 0 is the site's pair. */
int param_find_lora_expert(const ParamTable *pt, int layer, int site, int e, int ab);
/* Elements of tensors of one kind, and of all of them. */
size_t param_count_kind(const ParamTable *pt, ParamKind kind);
size_t param_count_all(const ParamTable *pt);
/* Elements a token uses: all, less the routed experts it is not sent to ((E - k) of E per MoE layer). */
size_t param_count_active(const ParamTable *pt, const ModelConfig *c);
/* Trainable elements (param_count_kind(PARAM_TRAIN)). */
size_t param_count(const ParamTable *pt);
const char *param_kind_name(ParamKind k);
/* The part [*lo, *hi) of the trainable segment that rank `rank` of `world` owns: equal slices,
 * the last one shorter when world does not divide n_train. */
void params_shard(const ParamTable *pt, int rank, int world, size_t *lo, size_t *hi);

/* The 4-bit state of one part of a PARAM_NF4 tensor, arrays in backend memory. */
typedef struct {
    Q4State s;
    void *mem[4]; /* what backend memory holds s's arrays (freed with the store) */
    int nested;   /* s has the double-quantized scales (qabsmax, nested_absmax, map8), not absmax */
} ParamQ4Part;

/* The memory of the tensors, in backend memory. */
typedef struct {
    const Backend *be;
    const ParamTable *pt;
    float *master;    /* (n_train) fp32 master weights */
    void *train_act;  /* (n_train) compute copy (== master when the backend's act type is fp32) */
    float *grad;      /* (n_train) fp32 gradients */
    void *frozen_act; /* (n_frozen) compute copy of the frozen tensors */
    /* train.offload_embeddings: the frozen segment's first emb_n elements (the input embedding) lie in
     * host memory the backend reads (Backend.alloc_host), and frozen_act holds the rest */
    void *emb_host;
    size_t emb_n;
    ParamQ4Part (*q4)[PARAM_MAX_PARTS]; /* per tensor (NULL unless a tensor is PARAM_NF4) */
    void *dq;         /* act scratch of the largest 4-bit tensor: where a product dequantizes it */
    size_t q4_bytes;
    int q4_type, q4_blocksize, q4_double; /* how params_upload quantizes (Q4Type, block, nested) */
    /* ZeRO-3 of 4-bit tensors (params_shard_q4): q4_shard holds bytes [q4_lo, q4_lo + q4_n) of the
     * 4-bit segment (params_q4_layout); the parts' arrays point into a gathered group only while
     * params_q4_point says so */
    void *q4_shard;
    size_t q4_lo, q4_n;
    int q4_sharded;
    /* ZeRO (src/dist, params_shard_store): the part of the trainable segment each buffer holds,
     * [x_lo, x_lo + x_n); a whole store (what params_alloc makes) has lo 0 and n n_train for all. */
    size_t master_lo, master_n;
    size_t act_lo, act_n;   /* train_act (ZeRO-3: this rank's shard) */
    size_t grad_lo, grad_n; /* grad (ZeRO-2/3: this rank's shard) */
    int master_alias;       /* master lies inside train_act (fp32 compute): no buffer of its own */
    /* Per group of the table's layer_seg (n_layer + 2), while a run holds that group's compute
     * copy or gradient elsewhere: a buffer holding [layer_seg[g], layer_seg[g + 1]) of the segment
     * (ZeRO-3: the gathered layer; ZeRO-2/3: the staging bucket the backward writes). NULL array:
     * train_act / grad serve every tensor; a NULL entry: the group is not available now, and
     * touching it is an internal error (fatal), never a read of stale memory. */
    void **wgroup;
    float **ggroup;
    TernaryTensor *tern; /* per tensor (NULL unless a tensor is PARAM_TERNARY): its arrays in backend memory */
    float *tgrad;        /* (n_tern) fp32 gradients of the PARAM_TERNARY tensors */
    int tern_group;      /* weights per exponent group */
    size_t tern_bytes, tern_state_bytes; /* trits + exponents; accumulators */
    void *wq;            /* act scratch of the largest ternarized or ternary tensor: its product's weight */
    int tern_from_act;   /* a BitLinear ternarizes its compute copy (params_w), not the master: ZeRO 1-3, whose
                          * master is sharded (set by dist_attach on every rank alike) */
    size_t wq_numel;
    struct ParamActScratch *xq; /* grow-only act scratch of a BitLinear's 8-bit input (linear.c) */
    float *fgrad;        /* fp32 gradient scratch of the largest fused PARAM_TERNARY tensor */
    size_t fgrad_numel;
    int n_fused;         /* fused PARAM_TERNARY tensors */
    TernaryHyper tern_hyper; /* the rule of the step in progress (optim_begin_step) */
    int tern_live;       /* 1 while a training step's backward may update fused tensors */
    /* Data parallel (dist_attach; NULL in one process): sums a fused tensor's (or row chunk's) gradient,
     * n fp32 values in fgrad, over the ranks before its update (every rank calls it for the same tensors
     * in the same order); nonzero when the collective failed (the update is then skipped, and the step
     * reports the error). */
    int (*tern_reduce)(void *ctx, float *grad, size_t n);
    void *tern_ctx;
    /* ZeRO-3 of frozen dense tensors (params_shard_frozen): frozen_act holds [frozen_lo, frozen_lo +
     * frozen_n) of the frozen segment, and fgroup (as wgroup) the gathered frozen tensors of a group */
    size_t frozen_lo, frozen_n;
    void **fgroup;
    size_t *fseg;   /* params_frozen_groups of the table (set with fgroup) */
} ParamStore;

/* The group of layer_seg that tensor i belongs to (0 embeddings, 1 + l block l, n_layer + 1 the
 * final norm and head); a trainable tensor lies in [layer_seg[g], layer_seg[g + 1]). */
int params_group(const ParamTable *pt, int i);
/* Keep only [lo, hi) of the trainable segment in the buffers named by what (PSHARD_*): their
 * values over [lo, hi) are kept (copied into smaller buffers; a gradient is zeroed), the rest is
 * freed. On an fp32 backend the master stays inside the compute copy. */
enum { PSHARD_MASTER = 1, PSHARD_ACT = 2, PSHARD_GRAD = 4 };
void params_shard_store(ParamStore *ps, size_t lo, size_t hi, int what);
/* The same for the frozen segment's compute copy (dense frozen tensors; 4-bit ones stay whole). */
void params_shard_frozen(ParamStore *ps, size_t lo, size_t hi);
/* [fseg[g], fseg[g + 1]): where group g's frozen tensors lie in the frozen segment (n_layer + 3
 * entries, filled by the call; groups as params_group's). */
void params_frozen_groups(const ParamTable *pt, size_t *fseg);

/* ZeRO-3 of 4-bit tensors. The arrays of every PARAM_NF4 part (packed values, scales, the nested
 * scales and their map) laid out as one byte segment, group by group (groups as params_group's),
 * each array at a 16-byte boundary: its size, and qseg (n_layer + 3 entries) where each group lies. */
size_t params_q4_layout(const ParamStore *ps, size_t *qseg);
/* Keep only bytes [lo, hi) of that segment in ps->q4_shard, copied from wherever the parts' arrays
 * are (their own blocks, or a buffer params_q4_point named); the parts' own blocks are freed and
 * their pointers cleared: a product of a part of a group not pointed at is an internal error. */
void params_shard_q4(ParamStore *ps, size_t lo, size_t hi);
/* Point the arrays of group g's parts into buf, which holds the group's bytes [qseg[g], qseg[g + 1])
 * (g -1: every group, buf the whole segment); buf NULL clears them. */
void params_q4_point(ParamStore *ps, int g, void *buf);

/* Allocate every segment the table's kinds need (zero-filled); nothing for a kind with no tensor. */
void params_alloc(ParamStore *ps, const Backend *be, const ParamTable *pt);
/* What a store of a ZeRO rank holds from the start, so that the whole model never exists on it: of
 * the trainable segment only [lo, hi) in the buffers of what (PSHARD_*; ACT implies MASTER), of the
 * frozen segment only [flo, fhi) when frozen_part. Uploads then write the parts they hit, and
 * params_shard_store / params_shard_frozen of the same parts change nothing. */
typedef struct {
    size_t lo, hi;
    int what;
    int frozen_part;
    size_t flo, fhi;
    int emb_host; /* the frozen input embedding in host memory (params_emb_host_ok; not with frozen_part) */
} ParamAllocPlan;
/* Whether a table's input embedding can live in host memory (ParamAllocPlan.emb_host): frozen, the
 * frozen segment's first tensor, and not the output head too (untied); 0 with err_set() otherwise. */
int params_emb_host_ok(const ParamTable *pt);
void params_alloc_plan(ParamStore *ps, const Backend *be, const ParamTable *pt, const ParamAllocPlan *plan);
void params_free(ParamStore *ps);
/* The compute copy of tensor i (act dtype), NULL when i < 0. */
void *params_w(const ParamStore *ps, int i);
/* The fp32 gradient of tensor i, NULL when i < 0 or the tensor has none (frozen). */
float *params_g(const ParamStore *ps, int i);
/* Tensor i from / to host fp32 values (numel of them, our layout). Upload sets the master and the
 * compute copy; download reads the master, or the compute copy of a tensor that has none. */
void params_upload(ParamStore *ps, int i, const float *host);
/* A frozen BitLinear's values already ternarized (tensor parallel: a slice of the whole tensor, each part
 * ternarized whole with its own gamma), uploaded as they are. */
void params_upload_ternarized(ParamStore *ps, int i, const float *q);
void params_download(const ParamStore *ps, int i, float *host);
/* A part of a 4-bit tensor from a host state (its arrays copied into backend memory): a
 * pre-quantized directory's bytes as they are. */
void params_upload_q4(ParamStore *ps, int i, int part, const Q4State *host);
/* Part `part` of a 4-bit tensor p (p's values at host, fp32) quantized as params_upload quantizes it
 * (the store's type, block size and double quantization, from the values' bf16 rounding); p may be
 * of another table than the store's (tensor parallel: the whole tensor a rank holds a slice of). */
void params_q4_quantize(const ParamStore *ps, const Param *p, int part, const float *host, Q4Quant *out);
/* Tensor i's compute copy for a product: the stored one, a 4-bit tensor dequantized into ps->dq, or
 * an integer-ternary tensor unpacked into ps->wq. */
const void *params_w_dense(const ParamStore *ps, int i);
/* The act scratch for n elements of a BitLinear's quantized input (grows; owned by the store). */
void *params_xq(const ParamStore *ps, size_t n);
/* The integer state of a PARAM_TERNARY tensor from / to host arrays (trit_bytes(numel) packed trits,
 * tern_groups exponents and scale accumulators, numel sign accumulators): checkpoints, exactly. */
void params_tern_upload(ParamStore *ps, int i, const uint8_t *trits, const int8_t *exp, const int8_t *tacc,
                        const int8_t *eacc);
void params_tern_download(const ParamStore *ps, int i, uint8_t *trits, int8_t *exp, int8_t *tacc, int8_t *eacc);
/* Refresh every trainable compute copy from the master (after the master was written directly). */
void params_sync_act(ParamStore *ps);
/* Around a product that accumulates into params_g(ps, i) within one micro-step: begin zeroes the scratch of
 * a fused ternary tensor; done sums its gradient over the ranks (tern_reduce, data parallel) and runs its
 * integer update (when a training step is live). No-ops for every other tensor. */
void params_grad_begin(const ParamStore *ps, int i);
/* A fused vocabulary tensor with Param.chunk_rows: nchunks row chunks, chunk k rows [*r0, *r1); the
 * elements of one chunk (numel when whole). Its products go chunk by chunk: params_w_rows unpacks rows
 * [r0, r1) into the weight scratch; params_grad_rows_begin zeroes the gradient scratch (params_g) for
 * them and params_grad_rows_done runs their integer update, which is the tensor's own restricted to those
 * rows (the rule works per group and a chunk is whole groups). */
size_t params_chunk_numel(const ParamTable *pt, int i);
int params_nchunks(const ParamTable *pt, int i);
void params_chunk(const ParamTable *pt, int i, int k, int *r0, int *r1);
const void *params_w_rows(const ParamStore *ps, int i, int r0, int r1);
void params_grad_rows_begin(const ParamStore *ps, int i, int r0, int r1);
void params_grad_rows_done(const ParamStore *ps, int i, int r0, int r1);
void params_grad_done(const ParamStore *ps, int i);
void params_zero_grad(ParamStore *ps);

/* Bytes of backend memory by what it holds. */
typedef struct {
    size_t weights; /* compute copies that are not the master (bf16 copies, frozen tensors) */
    size_t master;  /* fp32 master weights of trainable tensors */
    size_t grads;   /* fp32 gradients */
    size_t scratch; /* the dequantization scratch of 4-bit tensors, the ternary weight scratch */
    size_t tstate;  /* int8 accumulators of integer-ternary tensors (their optimizer state) */
    size_t host;    /* weights kept in host memory for the backend (train.offload_embeddings) */
} ParamBytes;
ParamBytes params_bytes(const ParamStore *ps);

#endif
