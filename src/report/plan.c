/* plan.c - predicted memory of a training step (plan.h). */
#define _GNU_SOURCE /* strcasestr */
#include "report/plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/error.h"
#include "model/quant4.h"
#include "model/tp.h"
#include "train/freeze.h"
#include "train/optim.h"

/* ---- the planning backend: alloc counts, nothing else happens ---- */

static size_t g_in_use, g_peak;
static uintptr_t g_next = 4096; /* fake, distinct, never dereferenced addresses */

typedef struct {
    uintptr_t addr;
    size_t bytes;
} PlanBlock;
static PlanBlock *g_blocks;
static size_t g_nblocks, g_cap;

static void *plan_alloc(size_t bytes)
{
    if (g_nblocks == g_cap) g_blocks = xrealloc(g_blocks, (g_cap = g_cap ? 2 * g_cap : 256) * sizeof(PlanBlock));
    void *p = (void *)g_next;
    g_blocks[g_nblocks++] = (PlanBlock){g_next, bytes};
    g_next += (bytes + 4095) / 4096 * 4096 + 4096;
    g_in_use += bytes;
    if (g_in_use > g_peak) g_peak = g_in_use;
    return p;
}

static void plan_free(void *p)
{
    for (size_t i = 0; i < g_nblocks; i++)
        if (g_blocks[i].addr == (uintptr_t)p) {
            g_in_use -= g_blocks[i].bytes;
            g_blocks[i] = g_blocks[--g_nblocks];
            return;
        }
}

static void plan_mem_stats(size_t *in_use, size_t *peak)
{
    if (in_use) *in_use = g_in_use;
    if (peak) *peak = g_peak;
}

static void nop_copy(void *dst, const void *src, size_t n) { (void)dst, (void)src, (void)n; }
static void nop_zero(void *p, size_t n) { (void)p, (void)n; }
static void nop_cast(void *dst, const float *src, size_t n) { (void)dst, (void)src, (void)n; }
static void nop_up_act(void *dst, const float *src, size_t n) { (void)dst, (void)src, (void)n; }
static void nop_down_act(float *dst, const void *src, size_t n) { (void)dst, (void)src, (void)n; }
static void nop_sync(void) {}

static void *plan_alloc_host(size_t bytes) { return xcalloc(1, bytes ? bytes : 1); }

static Backend plan_backend(int act_size)
{
    Backend be = {0};
    be.name = "plan";
    be.act_size = (size_t)act_size;
    be.act_dtype = act_size == 2 ? DTYPE_BF16 : DTYPE_F32;
    be.alloc = plan_alloc;
    be.free = plan_free;
    be.zero = nop_zero;
    be.upload = nop_copy;
    be.download = nop_copy;
    be.copy = nop_copy;
    be.sync = nop_sync;
    be.cast_to_act = nop_cast;
    be.upload_act = nop_up_act;
    be.download_act = nop_down_act;
    be.mem_stats = plan_mem_stats;
    be.alloc_host = plan_alloc_host; /* not counted: train.offload_* moves it off the device */
    be.free_host = free;
    return be;
}

/* ---- what a GPU backend adds ---- */

/* cuBLASLt workspace (cuda_backend.cu). */
#define LT_WORKSPACE ((size_t)32 << 20)
/* The fused LM head's chunk of logits and its vocabulary padding (cuda_matmul.cu). */
#define LM_HEAD_CHUNK ((size_t)1 << 30)
#define VOCAB_PAD 128
#define LM_HEAD_ROW_ALIGN 128
/* What the H200 runs of 2026-12-01 held beyond the terms above (cuDNN's plans and workspaces,
 * grow-only scratch): 0.14 to 0.74 GiB over seven runs (docs/reporting.md); the middle of that. */
#define GPU_RESIDUAL ((size_t)(0.45 * 1073741824.0))

/* An encoder's MLM head keeps the logits of the scored rows (model.c, grow-only with a quarter of
 * headroom), data.mlm.prob's default share of them, instead of the LM head's chunk. */
#define PLAN_MLM_SHARE 0.15
#define PLAN_MLM_HEADROOM 1.25

/* --offload embeddings: the input embedding in host memory where the table allows it (else the
 * caller refuses). */
static void plan_emb_host(void *ctx, const ParamTable *pt, ParamAllocPlan *plan)
{
    (void)ctx;
    memset(plan, 0, sizeof(*plan));
    plan->emb_host = params_emb_host_ok(pt) == 1;
}

/* cuDNN's attention at a head size that is not a multiple of 8 (cuda_cudnn.cu pad_heads): the backward's
 * q/k/v, their gradient, out and dout with each head zero-padded, in one grow-only block (bf16, from
 * T >= 256 where the automatic choice takes cuDNN). */
static size_t attn_pad_bytes(const ModelConfig *c, const PlanSpec *s)
{
    int hd = c->head_dim, hp = (hd + 7) / 8 * 8;
    if (hp == hd || hp > 128 || s->act_size != 2 || s->T < 256) return 0;
    size_t N = (size_t)s->B * s->T, rq = N * (size_t)(c->n_head + 2 * c->n_kv_head), ro = N * (size_t)c->n_head;
    return (2 * rq + 2 * ro) * (size_t)hp * 2;
}

/* The LM head's scratch (and cuBLASLt's workspace, and the allocator's residue). */
static size_t head_workspace(const ModelConfig *c, const PlanSpec *s, int head_trains, int head_chunked)
{
    size_t N = (size_t)s->B * s->T, V = (size_t)c->vocab_size, Vp = (V + VOCAB_PAD - 1) / VOCAB_PAD * VOCAB_PAD;
    /* a head read by row chunks keeps its scratch with the activations (model.c) and never calls the op */
    if (head_chunked) return LT_WORKSPACE + GPU_RESIDUAL;
    if (c->mlm_head) return LT_WORKSPACE + GPU_RESIDUAL + (size_t)(N * PLAN_MLM_SHARE * PLAN_MLM_HEADROOM) * V * 2;
    size_t rows = LM_HEAD_CHUNK / (Vp * 2);
    if (rows > N) rows = N;
    size_t nchunk = (N + rows - 1) / rows;
    rows = (N + nchunk - 1) / nchunk;
    rows = (rows + LM_HEAD_ROW_ALIGN - 1) / LM_HEAD_ROW_ALIGN * LM_HEAD_ROW_ALIGN;
    if (rows > N) rows = N;
    size_t ws = LT_WORKSPACE + rows * Vp * 2 + GPU_RESIDUAL;
    if (Vp != V) ws += Vp * (size_t)c->d_model * 2 + (head_trains ? Vp * (size_t)c->d_model * 4 : 0);
    return ws;
}

static size_t plan_workspace(const ModelConfig *c, const PlanSpec *s, int head_trains, int head_chunked)
{
    return head_workspace(c, s, head_trains, head_chunked) + attn_pad_bytes(c, s);
}

/* The 4-bit states the store would upload (params_upload_q4): packed nibbles, 8-bit scales,
 * nested scales and the 8-bit map per part (double quantization, blocks of 64); under tensor
 * parallel a rank's slices keep one fp32 scale per block of the slice (tp_q4_slice). */
/* Bytes of the 4-bit tensors of group g (params_group; -1: all of them). tp (NULL: one process): the
 * whole model's table and config, and the group size, when m is rank 0's slice. */
typedef struct {
    const ParamTable *pt;
    const ModelConfig *c;
    int P;
} PlanTp;

static size_t q4_bytes(const Model *m, int g, const PlanTp *tp)
{
    size_t b = 0;
    for (int i = 0; i < m->pt.n; i++) {
        const Param *p = &m->pt.p[i];
        if (p->kind != PARAM_NF4 || (g >= 0 && params_group(&m->pt, i) != g)) continue;
        for (int k = 0; k < p->nparts; k++) {
            int64_t n = (int64_t)p->part_rows[k] * p->shape[1], nb = q4_nblocks(n, Q4_DEFAULT_BLOCKSIZE);
            if (tp) { /* the slice's blocks, as tp_q4_slice cuts them (a slice that cannot be cut: as whole blocks) */
                int bs = tp_q4_blocksize(tp->c, tp->P, 0, &tp->pt->p[i], p, k, Q4_DEFAULT_BLOCKSIZE, NULL);
                b += q4_packed_bytes(n) + (size_t)q4_nblocks(n, bs > 0 ? bs : Q4_DEFAULT_BLOCKSIZE) * 4;
                continue;
            }
            b += q4_packed_bytes(n) + (size_t)nb + (size_t)q4_nblocks(nb, Q4_NESTED_BLOCKSIZE) * 4 + Q4_MAP8_SIZE * 4;
        }
    }
    return b;
}

int plan_method_parse(const char *s, PlanMethod *m)
{
    if (!strcmp(s, "full")) *m = PLAN_FULL;
    else if (!strcmp(s, "lora")) *m = PLAN_LORA;
    else if (!strcmp(s, "qlora")) *m = PLAN_QLORA;
    else if (!strcmp(s, "ternary")) *m = PLAN_TERNARY;
    else return err_set("expected full, lora, qlora or ternary, got \"%s\"", s);
    return 0;
}

const char *plan_method_name(PlanMethod m)
{
    return m == PLAN_FULL ? "full" : m == PLAN_LORA ? "lora" : m == PLAN_QLORA ? "qlora" : "ternary";
}

int plan_memory(const ModelConfig *c, const PlanSpec *s, PlanResult *r)
{
    if (s->B <= 0 || s->T <= 0) return err_set("plan: batch and sequence length must be positive");
    if (s->T > c->max_seq_len) return err_set("plan: sequence length %d exceeds the model's %d", s->T, c->max_seq_len);
    if (s->act_size != 2 && s->act_size != 4) return err_set("plan: act size %d (2 or 4)", s->act_size);
    Backend be = plan_backend(s->act_size);
    g_in_use = g_peak = 0;
    int P = s->tp > 1 ? s->tp : 1;
    if (s->world % P)
        return err_set("plan: --tp %d does not divide --world %d (world counts every rank)", P, s->world);
    ModelConfig local; /* tensor parallel: rank 0's slice (its vocabulary slice is the largest) */
    if (P > 1 && tp_config_local(c, P, 0, &local)) return -1;
    if (P > 1 && s->offload_emb)
        return err_set("--offload embeddings does not combine with --tp (as train.offload_embeddings with dist.tp)");
    const ModelConfig *whole = c;
    if (P > 1) c = &local;
    ParamTable wpt;
    int have_wpt = 0;
    Model *m;
    if (s->method == PLAN_FULL) {
        m = model_create(c, &be);
    } else if (s->method == PLAN_TERNARY) { /* train.optimizer: ternary: packed trits for the block linears */
        if (c->family != FAMILY_LLAMA || c->moe_experts > 0)
            return err_set("plan: --method ternary needs a dense llama-family model (as train.optimizer: ternary)");
        ModelConfig tc = *c;
        tc.tern_fused = s->tern_fused;
        ParamKind *kinds = ternary_kinds(&tc, NULL, s->tern_embeddings);
        m = model_create_kinds(&tc, &be, kinds);
        free(kinds);
    } else {
        LoraSpec ls = {.r = s->lora_r > 0 ? s->lora_r : 16, .alpha = 32};
        const char *all = "all-linear";
        if (lora_sites_parse(&all, 1, c->family, &ls.sites)) return -1;
        Q4Spec q = {.type = s->method == PLAN_QLORA ? Q4_NF4 : -1, .blocksize = Q4_DEFAULT_BLOCKSIZE, .nested = 1};
        ModelAlloc alloc = {.plan = s->offload_emb ? plan_emb_host : NULL};
        m = model_create_lora_alloc(c, &be, &ls, 1, 1, &q, &alloc);
        if (P > 1 && q.type >= 0) { /* the whole model's table: what each 4-bit slice is cut from */
            param_table_build_lora(&wpt, whole, &ls);
            param_table_lora_kinds(&wpt, whole, 1, 1);
            have_wpt = 1;
        }
    }
    PlanTp ptp = {&wpt, whole, P};
    const PlanTp *qtp = have_wpt ? &ptp : NULL;
    if (s->offload_emb && !m->ps.emb_host) {
        model_free(m);
        return err_set("--offload embeddings needs a frozen, untied input embedding (lora or qlora)");
    }
    size_t q4 = q4_bytes(m, -1, qtp);
    if (s->keep_layers > 0) model_set_recompute_layers(m, MAX(0, c->n_layer - s->keep_layers));
    if (model_reserve(m, s->B, s->T, s->recompute)) {
        if (have_wpt) param_table_free(&wpt);
        model_free(m);
        return -1;
    }
    ModelTp tp = {.rank = 0, .size = P, .full = *whole}; /* its buffers (tp_attach); no collective runs */
    if (P > 1) {
        tp_vocab_part(whole->vocab_size, P, 0, &tp.v0, &tp.vn);
        tp_attach(m, &tp);
    }
    Optimizer o;
    int world = s->world > 1 ? s->world / P : 1; /* the data-parallel replicas ZeRO shards over */
    if (world < 1) world = 1;
    size_t lo = 0, hi = m->pt.n_train, slots = 0;
    if (s->zero >= 1 && world > 1 && m->pt.n_train) { /* rank 0's store as dist_attach shards it */
        const ParamTable *pt = &m->pt;
        params_shard(pt, 0, world, &lo, &hi);
        params_shard_store(&m->ps, lo, hi, PSHARD_MASTER | (s->zero >= 2 ? PSHARD_GRAD : 0) | (s->zero >= 3 ? PSHARD_ACT : 0));
        /* the staging (ZeRO-2/3: fp32 gradients of the embeddings and of two layers) and the
         * gathered weights (ZeRO-3: the same three groups in the compute type) */
        size_t g0 = pt->layer_seg[1] - pt->layer_seg[0], gmax = 0;
        for (int g = 1; g < pt->n_layer + 2; g++) gmax = MAX(gmax, pt->layer_seg[g + 1] - pt->layer_seg[g]);
        if (s->zero >= 2) slots += (g0 + 2 * gmax) * sizeof(float);
        if (s->zero >= 3) slots += (g0 + 2 * gmax) * (size_t)s->act_size;
    }
    if (s->zero >= 3 && world > 1 && m->pt.n_frozen) { /* ZeRO-3 shards dense frozen tensors too */
        const ParamTable *pt = &m->pt;
        size_t per = (pt->n_frozen + (size_t)world - 1) / (size_t)world;
        per = (per + PARAM_ALIGN - 1) / PARAM_ALIGN * PARAM_ALIGN;
        params_shard_frozen(&m->ps, 0, MIN(per, pt->n_frozen));
        size_t *fseg = xcalloc((size_t)pt->n_layer + 3, sizeof(size_t)), gmax = 0;
        params_frozen_groups(pt, fseg);
        for (int g = 1; g < pt->n_layer + 2; g++) gmax = MAX(gmax, fseg[g + 1] - fseg[g]);
        slots += (fseg[1] - fseg[0] + 2 * gmax) * (size_t)s->act_size;
        free(fseg);
    }
    if (s->zero >= 3 && world > 1 && q4) { /* and the 4-bit bytes: a part each, gathered layer by layer */
        size_t g0 = q4_bytes(m, 0, qtp), gmax = 0;
        for (int g = 1; g < m->pt.n_layer + 2; g++) gmax = MAX(gmax, q4_bytes(m, g, qtp));
        q4 = (q4 + (size_t)world - 1) / (size_t)world;
        slots += g0 + 2 * gmax;
    }
    optim_init_host(&o, m, 0.0f, lo, hi, s->offload_opt);
    MemReport mr;
    model_mem_report(m, optim_bytes(&o), &mr);
    mr.host += optim_host_bytes(&o);
    /* the 4-bit states are uploaded at load, not at creation: add them to the weights */
    mr.weights += q4;
    mr.workspace += slots;
    /* BitLinear (model.ternary: bitnet): the 8-bit copy of a product's input, grown by the first forward
     * (params_xq) to the widest input of B x T rows */
    size_t xq_in = 0;
    for (int i = 0; i < m->pt.n; i++)
        if (m->pt.p[i].ternarize) xq_in = MAX(xq_in, (size_t)m->pt.p[i].shape[1]);
    mr.workspace += xq_in * (size_t)s->B * (size_t)s->T * (size_t)s->act_size;
    int head_trains = m->pt.p[m->head.w].kind == PARAM_TRAIN;
    int head_chunked = m->pt.p[m->head.w].chunk_rows > 0;
    if (s->gpu) mr.workspace += plan_workspace(c, s, head_trains, head_chunked); /* beside the store's own scratch */
    mr.peak = mr.weights + mr.master + mr.grads + mr.optim + mr.acts + mr.workspace;
    mr.in_use = mr.peak;
    r->mem = mr;
    /* the rule of thumb people use: parameters x bytes per parameter x 1.2 for everything else;
     * bytes 18 for full training in mixed precision (2 + 4 + 4 + 8), 2 for a bf16 base under
     * adapters, 0.5 for a 4-bit base */
    /* (ternary: the seed's 1.3 bytes per ternary weight, 18.27 MB for 14M weights) */
    double Pn = (double)param_count_all(&m->pt), bytes = s->method == PLAN_FULL      ? 18
                                                       : s->method == PLAN_LORA    ? 2
                                                       : s->method == PLAN_TERNARY ? 1.3
                                                                                   : 0.5;
    r->rule_gib = Pn * bytes * 1.2 / 1073741824.0;
    optim_free(&o);
    if (P > 1) tp_detach(m);
    if (have_wpt) param_table_free(&wpt);
    model_free(m);
    return 0;
}

int plan_max_batch(const ModelConfig *c, const PlanSpec *s, size_t bytes, int b_max, int divides)
{
    int best = 0;
    for (int b = 1; b <= b_max; b++) {
        if (divides > 0 && divides % b) continue;
        PlanSpec t = *s;
        t.B = b;
        PlanResult r;
        if (plan_memory(c, &t, &r)) return best;
        if (r.mem.peak > bytes) break; /* memory grows with the batch */
        best = b;
    }
    return best;
}

/* Memory as sold (GB = 1e9 bytes) and dense bf16 tensor peak without sparsity, from NVIDIA's
 * datasheets (configs/gpus.yaml names them). */
static const PlanGpu gpus[] = {
    {"RTX 3090", 24e9 / 1073741824.0, 71},   {"RTX 4090", 24e9 / 1073741824.0, 165.2},
    {"RTX A6000", 48e9 / 1073741824.0, 154.8}, {"L40S", 48e9 / 1073741824.0, 362.05},
    {"A100 40GB", 40e9 / 1073741824.0, 312}, {"A100 80GB", 80e9 / 1073741824.0, 312},
    {"H100 PCIe", 80e9 / 1073741824.0, 756}, {"H100 SXM", 80e9 / 1073741824.0, 989},
    {"H200", 141e9 / 1073741824.0, 989},
};

const PlanGpu *plan_gpus(int *n)
{
    *n = (int)ARRAY_LEN(gpus);
    return gpus;
}

const PlanGpu *plan_gpu_find(const char *name)
{
    for (size_t i = 0; i < ARRAY_LEN(gpus); i++)
        if (!strcasecmp(gpus[i].name, name)) return &gpus[i];
    /* "h100" finds "H100 SXM", "a100" the first A100 */
    for (size_t i = 0; i < ARRAY_LEN(gpus); i++)
        if (strcasestr(gpus[i].name, name)) return &gpus[i];
    return NULL;
}
