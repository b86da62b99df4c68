/* backend.h - the op table.
 *
 * The model's forward/backward is written once over these function pointers;
 * a backend (cpu/, cuda/) fills the table. The model never knows which backend
 * runs it, and a backend never knows which model family calls it.
 *
 * Buffers. Every pointer below is backend memory (host memory for the CPU,
 * device memory for CUDA) obtained from alloc(). Two element types appear:
 *   - "act"  buffers (void *) hold activations and the compute copy of the
 *            weights, in the backend's act_dtype (fp32 on the CPU; bf16 or fp32
 *            on CUDA). Element size is act_size bytes.
 *   - float  buffers hold fp32 master weights, gradients, Adam moments and
 *            statistics (norm mean/rstd, attention log-sum-exp, losses).
 * Token ids are int32.
 *
 * Shapes use N = B*T rows, C = d_model, and row-major storage. A weight of a
 * linear layer is (OC, IC), as in torch.nn.Linear: out = inp @ W^T + bias.
 *
 * Gradient conventions: parameter gradients (dw, db, dwte...) always
 * ACCUMULATE (+=), so that micro-batches add up. Activation gradients
 * overwrite unless an op says it accumulates (norm_bwd adds into the residual
 * stream's gradient, which is how the residual connection's sum is formed).
 */
#ifndef ANVIL_BACKEND_H
#define ANVIL_BACKEND_H

#include <stddef.h>
#include <stdint.h>

enum { DTYPE_F32 = 0, DTYPE_BF16 = 1, DTYPE_F16 = 2 };

/* One tensor of the parameter table as the optimizer sees it. */
typedef struct {
    size_t offset; /* first element in the flat parameter buffer */
    size_t numel;
    float weight_decay; /* 0 for vectors (biases, norms) and frozen tensors */
    int trainable;      /* 0: skip entirely (frozen base weights) */
} OptTensor;

/* AdamW hyper-parameters for one step (decoupled weight decay, as in
 * torch.optim.AdamW: p -= lr*wd*p, then the Adam update). */
typedef struct {
    float lr, beta1, beta2, eps;
    int step;         /* 1-based step count for bias correction */
    float grad_scale; /* gradients are multiplied by this first (clipping) */
} AdamHyper;

/* One integer-ternary tensor (train.optimizer: ternary, model/params.h PARAM_TERNARY; docs/ternary.md),
 * arrays in backend memory. Weight i is trit(i) * 2^exp[i / group] with trit in {-1, 0, 1}:
 *   trits (ceil(n / 5) bytes)  five trits per byte, base 3: byte b = sum_k (trit(5b + k) + 1) * 3^k
 *                              (0 .. 242; the digits past n are 1, i.e. trit 0)
 *   exp (ngroups = ceil(n / group))  int8 power-of-two scale exponent of each group
 *   tacc (n)                   int8 per-weight sign accumulator (saturating)
 *   eacc (ngroups)             int8 per-group scale accumulator (saturating)
 *   grad (n)                   the step's fp32 gradient (read by the update only) */
typedef struct {
    uint8_t *trits;
    int8_t *exp, *tacc, *eacc;
    const float *grad;
    size_t n;
    int group;
} TernaryTensor;

/* The integer update of one step (ternary_update; the rule is written out in docs/ternary.md):
 * per group, mean_abs = sum |g| / count and sg = sum g * trit (both summed in double, in the fixed
 * order of model/ternary.h TERN_LANES); per weight, vote = -sign(g) where |g| >= deadzone * mean_abs (else 0); tacc = sat8(tacc + vote);
 * when tacc >= threshold the trit moves up one (at most 1), when tacc <= -threshold down one (at least
 * -1), and tacc is reset to 0 either way. Per group, eacc = sat8(eacc - sign(sg)) (the scale grows when
 * the loss falls along the group's own trits); on steps that are multiples of scale_every, exp moves one
 * in eacc's direction when 2 |eacc| >= scale_every (clamped to [exp_min, exp_max]) and eacc is reset. */
typedef struct {
    int threshold;   /* train.ternary.threshold */
    int scale_every; /* train.ternary.scale_every (1 .. 127) */
    int step;        /* 1-based optimizer step */
    float deadzone;  /* train.ternary.deadzone */
    int exp_min, exp_max;
} TernaryHyper;

/* Switches that change results or kernel choice. They are config keys (backend.attention,
 * backend.gemm_tune, train.deterministic) recorded with the run; an environment variable may
 * override one (backend_options_from_env), and then the value used is what the run records.
 * The last four are test knobs (0 = the backend's automatic choice). */
enum { ATTN_IMPL_AUTO = 0, ATTN_IMPL_CUDNN = 1, ATTN_IMPL_ANVIL = 2 };
enum { GEMM_TUNE_AUTO = 0, GEMM_TUNE_OFF = 1, GEMM_TUNE_ALWAYS = 2 };
typedef struct {
    int attention;     /* ATTN_IMPL_*: auto = cuDNN's fused engines where they apply, else ours */
    int gemm_tune;     /* GEMM_TUNE_*: auto = time cuBLASLt's candidates for recurring large products */
    int deterministic; /* 1: only kernels with fixed-order reductions (bit-identical reruns) */
    int lm_head_chunk_rows; /* rows per chunk of lm_head_xent (0 = automatic) */
    int attn_bwd_layout;    /* fused attention backward: 0 auto, 1 K/V in registers, 2 K/V in shared memory */
    int attn_launch_order;  /* flash attention grids: 0 auto, 1 x order, 2 z order */
    int tern_mm_variant;    /* the packed ternary product of few rows: 0 auto, 1-4 a layout (tests/bench_ternary.c) */
} BackendOptions;

/* Names used by config keys and environment variables: "auto" "cudnn" "anvil"; "auto" "off" "always". */
const char *backend_attention_name(int impl);
const char *backend_gemm_tune_name(int mode);
/* Parse a name; -1 with err_set() naming the accepted values. */
int backend_attention_parse(const char *s, int *impl);
int backend_gemm_tune_parse(const char *s, int *mode);
/* Override *o from ANVIL_ATTENTION, ANVIL_GEMM_TUNE and ANVIL_DETERMINISTIC where they are set;
 * returns a bit mask of the fields overridden (BACKEND_ENV_*), -1 with err_set() on a bad value. */
enum { BACKEND_ENV_ATTENTION = 1, BACKEND_ENV_GEMM_TUNE = 2, BACKEND_ENV_DETERMINISTIC = 4 };
int backend_options_from_env(BackendOptions *o);

typedef struct Backend Backend;
struct Backend {
    const char *name; /* "cpu", "cuda" */
    int act_dtype;    /* DTYPE_F32 or DTYPE_BF16 */
    size_t act_size;  /* bytes per act element */

    /* ---- memory ---- */
    void *(*alloc)(size_t bytes); /* zero-filled; fatal with a clear message if it fails */
    void (*free)(void *p);
    void (*zero)(void *p, size_t bytes);
    void (*upload)(void *dst, const void *host_src, size_t bytes);
    void (*download)(void *host_dst, const void *src, size_t bytes);
    void (*sync)(void);
    /* fp32 -> act (the compute copy of the weights); dst may equal src when
     * act_dtype is fp32, in which case it is a no-op. */
    void (*cast_to_act)(void *dst, const float *src, size_t n);
    /* act -> fp32 host memory (for logits, debugging, tests). */
    void (*download_act)(float *host_dst, const void *src, size_t n);
    /* fp32 host memory -> act buffer. */
    void (*upload_act)(void *dst, const float *host_src, size_t n);

    /* ---- embeddings ---- */
    /* out (B,T,C) = wte[tokens] + (wpe ? wpe[t] : 0); wpe rows start at pos0. */
    void (*embed_fwd)(void *out, const int32_t *tokens, const void *wte, const void *wpe, int B, int T,
                      int C, int pos0);
    /* dwte[tokens] += dout; dwpe[t] += sum_b dout (dwpe may be NULL). */
    void (*embed_bwd)(float *dwte, float *dwpe, const void *dout, const int32_t *tokens, int B, int T,
                      int C);

    /* ---- normalization ----
     * LayerNorm: out = (x - mean) * rstd * w + b.  RMSNorm (rms=1): out = x * rstd * w,
     * rstd = 1/sqrt(mean(x^2) + eps), mean unused (may be NULL), b NULL. */
    void (*norm_fwd)(void *out, float *mean, float *rstd, const void *inp, const void *w, const void *b,
                     int N, int C, float eps, int rms);
    /* dinp += d(norm)/d(inp); dw += ; db += (db NULL for RMSNorm). */
    void (*norm_bwd)(void *dinp, float *dw, float *db, const void *dout, const void *inp, const void *w,
                     const float *mean, const float *rstd, int N, int C, int rms);
    /* Fused residual add + norm: res = a + b; out = norm(res). */
    void (*add_norm_fwd)(void *res, void *out, float *mean, float *rstd, const void *a, const void *b,
                         const void *w, const void *bias, int N, int C, float eps, int rms);

    /* ---- linear layers ---- */
    /* out (N,OC) = inp (N,IC) @ w (OC,IC)^T + bias (OC, may be NULL). */
    void (*matmul_fwd)(void *out, const void *inp, const void *w, const void *bias, int N, int IC, int OC);
    /* dinp (N,IC) = dout @ w (overwrite; NULL to skip);
     * dw (OC,IC) += dout^T @ inp; dbias (OC) += sum over rows of dout (NULL to skip). */
    void (*matmul_bwd)(void *dinp, float *dw, float *dbias, const void *dout, const void *inp, const void *w,
                       int N, int IC, int OC);

    /* ---- element-wise ---- */
    /* GELU, tanh approximation (HF "gelu_new"). */
    void (*gelu_fwd)(void *out, const void *inp, size_t n);
    /* dinp = dout * gelu'(inp); dinp may alias dout. */
    void (*gelu_bwd)(void *dinp, const void *inp, const void *dout, size_t n);
    /* SwiGLU: inp (N, 2F) holds [gate | up] per row; out (N,F) = silu(gate) * up. */
    void (*swiglu_fwd)(void *out, const void *inp, int N, int F);
    /* dinp (N,2F) from dout (N,F); overwrite. */
    void (*swiglu_bwd)(void *dinp, const void *inp, const void *dout, int N, int F);
    /* out = a + b (n elements); out may alias a or b. */
    void (*add)(void *out, const void *a, const void *b, size_t n);

    /* ---- attention ----
     * qkv (B,T,(nh+2*nkv)*hd): per row [q heads | k heads | v heads]. Grouped-query:
     * query head h uses kv head h / (nh/nkv). Causal, scale 1/sqrt(hd).
     * out (B,T,nh*hd); lse (B,nh,T) the log-sum-exp of each softmax row (kept for backward). */
    void (*attention_fwd)(void *out, float *lse, const void *qkv, int B, int T, int nh, int nkv, int hd);
    /* dqkv (overwrite) from dout, using the forward's out and lse. */
    void (*attention_bwd)(void *dqkv, const void *dout, const void *out, const float *lse, const void *qkv,
                          int B, int T, int nh, int nkv, int hd);
    /* Rotary embedding (rotate-half / GPT-NeoX convention, as HF LLaMA) applied in place
     * to the q and k parts of qkv, positions pos0 .. pos0+T-1. inv_freq (hd/2) are the
     * frequencies (fp32, backend memory), computed by the model from theta. */
    void (*rope_fwd)(void *qkv, const float *inv_freq, int B, int T, int nh, int nkv, int hd, int pos0);
    /* Inverse rotation of the gradient, in place. */
    void (*rope_bwd)(void *dqkv, const float *inv_freq, int B, int T, int nh, int nkv, int hd, int pos0);

    /* ---- loss ----
     * Softmax cross-entropy over V classes for N rows of logits (row stride V).
     * losses (N) = -log softmax(logits)[target]; rows whose target < 0 give 0.
     * If dscale != 0 the logits are overwritten by dlogits = (softmax - onehot) * dscale
     * (0 for ignored rows); the probabilities are never stored. */
    void (*xent_fwd_bwd)(float *losses, void *logits, const int32_t *targets, int N, int V, float dscale);

    /* ---- optimizer ---- */
    /* AdamW over the listed tensors of the flat buffers; refreshes params_act (the
     * compute copy) when it is not NULL. m, v are fp32 moments. */
    void (*adamw)(float *params, void *params_act, const float *grads, float *m, float *v,
                  const OptTensor *tensors, int ntensors, const AdamHyper *h);
    /* Sum of squares of n fp32 values, returned to the host in double. */
    double (*sumsq)(const float *x, size_t n);
    /* x *= s */
    void (*scale)(float *x, float s, size_t n);

    /* ---- fused ops (appended; CPU versions in cpu/cpu_extra.c) ---- */
    /* The output layer and the loss in one op, over chunks of rows so that the (N,V)
     * logits never exist whole (the backend may also pad their rows for speed):
     * losses (N) as xent_fwd_bwd of logits = inp (N,C) @ w (V,C)^T. If dscale != 0, also
     * dinp (N,C) = dlogits @ w (overwrite) and dw (V,C) += dlogits^T @ inp, with
     * dlogits = (softmax - onehot(target)) * dscale (0 for ignored rows). */
    void (*lm_head_xent)(float *losses, void *dinp, float *dw, const void *inp, const void *w,
                         const int32_t *targets, int N, int C, int V, float dscale);

    /* ---- KV cache for generation (appended; CPU in cpu/cpu_kv.c, CUDA in cuda/cuda_kv.cu) ----
     * One layer's cache is two act buffers kcache, vcache of shape (B, nkv, cap, hd): for every
     * row and kv head, the keys (values) of positions 0..cap-1, each hd contiguous elements. */
    /* Store the k and v parts of qkv (B,T,(nh+2*nkv)*hd), already rotated (RoPE), as positions
     * pos0 .. pos0+T-1 of every row (pos0 + T <= cap). */
    void (*kv_store)(void *kcache, void *vcache, const void *qkv, int B, int T, int nh, int nkv, int hd,
                     int pos0, int cap);
    /* Causal attention of T new queries at positions pos0 .. pos0+T-1 over the cache:
     * out (B,T,nh*hd) = softmax(q k^T / sqrt(hd)) v with keys/values 0 .. pos0+t for query t.
     * q comes from qkv (B,T,...) as in attention_fwd; the cache must already hold positions
     * up to pos0+T-1 (kv_store first). Query head h reads kv head h / (nh/nkv). */
    void (*attention_kv_fwd)(void *out, const void *qkv, const void *kcache, const void *vcache, int B, int T,
                             int nh, int nkv, int hd, int pos0, int cap);

    /* ---- fused GELU products (appended; CPU versions in cpu/cpu_extra.c) ----
     * The MLP's first layer and its activation: pre (N,OC) = inp (N,IC) @ w (OC,IC)^T + bias (may be
     * NULL) and out (N,OC) = gelu(pre) (tanh approximation, as gelu_fwd); a backend may take out from
     * pre before it is rounded to the act type. */
    void (*matmul_gelu_fwd)(void *out, void *pre, const void *inp, const void *w, const void *bias, int N, int IC,
                            int OC);
    /* The backward of the MLP's second layer y = act @ w (OC,IC)^T + bias with act = gelu(pre) (N,IC),
     * through the activation: dpre (N,IC) = (dout (N,OC) @ w) * gelu'(pre) (overwrite);
     * dbias_pre (IC) += colsum(dpre), the first layer's bias gradient (NULL to skip);
     * dw (OC,IC) += dout^T @ act; dbias (OC) += colsum(dout) (NULL to skip). */
    void (*matmul_dgelu_bwd)(void *dpre, float *dbias_pre, float *dw, float *dbias, const void *dout, const void *act,
                             const void *pre, const void *w, int N, int IC, int OC);
    /* ---- small products and dropout (appended; the adapters of linear.c) ---- */
    /* General product, row-major: C (M,N) = alpha * op(A) (M,K) @ op(B) (K,N) + beta * C, op(X) = X or
     * X^T (ta, tb). A and B are act buffers with leading dimensions lda, ldb (elements); C is an act
     * buffer (c_f32 0) or an fp32 buffer such as a gradient (c_f32 1) with leading dimension ldc, so a
     * slice of a wider matrix's columns can be read or written. With ta 0, each row of C depends only
     * on its row of A (not on M or on the other rows), as in matmul_fwd. */
    void (*gemm)(int ta, int tb, int M, int N, int K, float alpha, const void *A, int lda, const void *B, int ldb,
                 float beta, void *C, int ldc, int c_f32);
    /* Inverted dropout of n act elements: out[i] = inp[i] / (1 - p) where the element is kept, else 0;
     * element i is dropped when dropout_u32(seed, i) < p * 2^32 (backend.h), on every backend, so the same
     * seed drops the same elements (the backward applies the same call to the gradient). out may be
     * inp. */
    void (*dropout)(void *out, const void *inp, size_t n, float p, uint64_t seed);

    /* ---- packed weights (appended; the NF4/FP4 kind of model/params.h) ---- */
    /* Dequantize a bitsandbytes 4-bit tensor into out (state->n act elements), from a Q4State
     * (model/quant4.h: packed nibbles, absmax or double-quantized absmax) whose arrays are backend
     * memory; the values equal q4_dequantize's (fp32) or their bf16 rounding. */
    void (*dequant4)(void *out, const void *q4state);

    /* ---- mixture of experts (appended; model/moe.c, docs/moe.md) ----
     * N tokens, E experts, k experts per token; "slot" i = r * k + s is token r's s-th choice. The
     * N*k slots sorted by expert (stable: by slot index within an expert) are the "rows" j. */
    /* Routing: probs (N,E) = softmax(logits) in fp32 (logits act (N,E)); lse (N) = logsumexp(logits);
     * topi (N,k) the k largest probabilities' experts in descending order (ties: lower index first),
     * topw (N,k) their probabilities, divided by their sum when norm; stats (E+1) = the column sums
     * of probs, then the sum of lse^2 (overwrite; fixed-order sums). */
    void (*moe_route_fwd)(float *probs, float *lse, int32_t *topi, float *topw, float *stats, const void *logits,
                          int N, int E, int k, int norm);
    /* Its backward: dlogits (N,E) act (overwrite) = softmax backward of dprobs, where
     * dprobs[r,e] = dpe[e] (fp32 (E), every row) + what dtopw (N,k) gives through the top-k weights
     * (and their renormalisation when norm); plus zscale * lse[r] * probs[r,e] (the z-loss term). */
    void (*moe_route_bwd)(void *dlogits, const float *probs, const float *lse, const int32_t *topi, const float *dtopw,
                          const float *dpe, float zscale, int N, int E, int k, int norm);
    /* Sort the slots by expert: perm (N*k) the slot of each row; pos (N*k) the row of each slot;
     * counts (E) rows per expert, in HOST memory (the op waits for the device). */
    void (*moe_sort)(int32_t *perm, int32_t *pos, int *counts, const int32_t *topi, int N, int E, int k);
    /* xp (N*k, C) row j = x (N,C) row perm[j] / k (overwrite). */
    void (*moe_gather_fwd)(void *xp, const void *x, const int32_t *perm, int N, int C, int k);
    /* dx (N,C) row r = sum_s dxp row pos[r*k+s] (overwrite). */
    void (*moe_gather_bwd)(void *dx, const void *dxp, const int32_t *pos, int N, int C, int k);
    /* out (N,C) row r = sum_s topw[r,s] * y row pos[r*k+s] (overwrite; fp32 sums). */
    void (*moe_combine_fwd)(void *out, const void *y, const float *topw, const int32_t *pos, int N, int C, int k);
    /* dy row pos[r*k+s] = topw[r,s] * dout row r (overwrite); dtopw[r,s] = dot(dout row r, y row pos[r*k+s]). */
    void (*moe_combine_bwd)(void *dy, float *dtopw, const void *dout, const void *y, const float *topw,
                            const int32_t *pos, int N, int C, int k);
    /* The shared expert's gate: out (N,C) += sigmoid(g[r]) * y (N,C), g act (N,1). */
    void (*moe_gate_fwd)(void *out, const void *y, const void *g, int N, int C);
    /* dy (N,C) = sigmoid(g[r]) * dout (overwrite); dg (N,1) act = sigmoid'(g[r]) * dot(dout row r, y row r). */
    void (*moe_gate_bwd)(void *dy, void *dg, const void *dout, const void *y, const void *g, int N, int C);
    /* ---- ternary weights (appended; model.ternary and train.optimizer: ternary, docs/ternary.md) ---- */
    /* BitNet's weight quantizer (transformers' WeightQuant): gamma = max(mean |w|, 1e-5) over the n fp32
     * values (summed in at least fp32), s = 1 / gamma (fp32), out = clamp(round(w * s), -1, 1) / s into
     * act; round half to even, as torch.round. */
    void (*ternary_wquant)(void *out, const float *w, size_t n);
    /* The same quantizer over n act values (the compute copy: ZeRO's BitLinear, whose fp32 master is
     * sharded); the same arithmetic on the values as read (fp32), so equal to ternary_wquant of them. */
    void (*ternary_wquant_act)(void *out, const void *w, size_t n);
    /* BitNet's activation quantizer (ActQuant), per row of C act values: s = 127 / max(max |x|, 1e-5),
     * out = clamp(round(x * s), -128, 127) / s (fp32 arithmetic). out may be inp. */
    void (*act_quant8)(void *out, const void *inp, int N, int C);
    /* BitNet's gated relu2 MLP activation: inp (N, 2F) holds [gate | up] per row; out (N,F) =
     * relu(gate)^2 * up; the backward writes dinp (N,2F) from dout (N,F) (overwrite). */
    void (*relu2glu_fwd)(void *out, const void *inp, int N, int F);
    void (*relu2glu_bwd)(void *dinp, const void *inp, const void *dout, int N, int F);
    /* out (t->n act values) = trit * 2^exp of an integer-ternary tensor (exact in bf16). */
    void (*trit_unpack)(void *out, const TernaryTensor *t);
    /* out (N, O) act = x (N, K) act @ W^T + bias (O act, may be NULL) (overwrite), W (O, K) the values
     * trit * 2^exp of the integer-ternary tensor t (t->n = O x K). scratch (t->n act values) may be used
     * to unpack W into. CUDA: up to TERN_MM_SMALL_N rows of x (decoding, small batches), K % 8 == 0 and
     * groups of at least 8, the product reads the packed trits and unpacks each weight in registers (fp32
     * sums); otherwise trit_unpack into scratch and matmul_fwd. The CPU: up to TERN_MM_SMALL_N rows from the trits
     * too (model/ternary.h tern_matmul_rows), more rows unpacked. */
    void (*ternary_matmul_fwd)(void *out, const void *x, const TernaryTensor *t, const void *bias, void *scratch,
                               int N, int K, int O);
    /* The integer update (TernaryHyper) of nt tensors in one call (on CUDA one kernel); the integer
     * results are the same on every backend, bit for bit. ts is host memory, its arrays backend memory. */
    void (*ternary_update)(const TernaryTensor *ts, int nt, const TernaryHyper *h);

    /* ---- switches and accounting ---- */
    /* Apply the switches that change numerics or kernel choice (BackendOptions). Called before the
     * first op and whenever a command changes them; the backend never reads them from the
     * environment itself (backend_options_from_env does that once, for the command). */
    void (*configure)(const BackendOptions *o);
    /* Bytes of backend memory held now and the high-water mark since start (every alloc, the
     * backend's own workspaces and scratch included). */
    void (*mem_stats)(size_t *in_use, size_t *peak);
    /* Start the high-water mark again from what is held now (measurements one after another). */
    void (*mem_reset_peak)(void);

    /* ---- copies (appended; ZeRO's shards and layer buffers, src/dist) ---- */
    /* dst = src, bytes of backend memory (overwrite; the ranges do not overlap), in stream order. */
    void (*copy)(void *dst, const void *src, size_t bytes);
    /* ---- encoders (appended; the bert family) ---- */
    /* Bidirectional attention over per-sequence lengths: query t of row b attends to the keys
     * s < lengths[b] of its row (lengths: B int32 in backend memory, each in 1..T, clamped to it; NULL =
     * T for every row), whatever t is, so padding is never attended to while the padded query rows are still
     * computed (as transformers does; their outputs are ignored downstream). qkv, out, lse and the
     * grouped-query heads as in attention_fwd; scale 1/sqrt(hd). */
    void (*attention_len_fwd)(void *out, float *lse, const void *qkv, const int32_t *lengths, int B, int T, int nh,
                              int nkv, int hd);
    /* dqkv (overwrite) from dout, as attention_bwd; padded keys get zero gradients. */
    void (*attention_len_bwd)(void *dqkv, const void *dout, const void *out, const float *lse, const void *qkv,
                              const int32_t *lengths, int B, int T, int nh, int nkv, int hd);
    /* The exact GELU, 0.5 x (1 + erf(x / sqrt 2)) (HF "gelu"); backward as gelu_bwd (dinp may alias dout). */
    void (*gelu_erf_fwd)(void *out, const void *inp, size_t n);
    void (*gelu_erf_bwd)(void *dinp, const void *inp, const void *dout, size_t n);
    /* out (M,C) = inp rows idx[0..M) (act); idx int32 in backend memory. */
    void (*gather_rows)(void *out, const void *inp, const int32_t *idx, int M, int C);
    /* dinp rows idx[m] = dout row m (overwrite those rows, others untouched; idx distinct). */
    void (*scatter_rows)(void *dinp, const void *dout, const int32_t *idx, int M, int C);

    /* ---- softmax cross-entropy over vocabulary chunks (appended; linear.c's head read by row chunks) ----
     * stats (3 N) fp32, per row: the running max of the logits, the sum of exp(logit - max) and the
     * target's logit, over the chunks seen so far. xent_chunk_stats folds in logits (N, V) (act), classes
     * [v0, v0 + V) (v0 0 starts every row afresh); rows whose target is negative are left alone. */
    void (*xent_chunk_stats)(float *stats, const void *logits, const int32_t *targets, int N, int V, int v0);
    /* With the statistics of every chunk: losses (N) = max + log(sum) - target logit (0 for a negative target)
     * when losses is not NULL; and when logits is not NULL, logits (N, V) of classes [v0, v0 + V) become in
     * place (softmax - onehot(target)) * dscale (0 for a negative target), as in xent_fwd_bwd. */
    void (*xent_chunk_grad)(float *losses, void *logits, const float *stats, const int32_t *targets, int N, int V,
                            int v0, float dscale);
    /* ---- a hint (appended) ----
     * on 1: the products that follow, until on 0, have a row count that changes from call to call (a
     * mixture-of-experts layer's experts: the tokens routed to each). The CUDA backend then picks each
     * product's cuBLASLt algorithm once per band of 128 rows (on the band's largest shape) instead of
     * once per exact shape, and keeps no plan per shape. NULL or a no-op elsewhere. */
    void (*ragged_products)(int on);
    /* ---- attention dropout (appended; model.attn_dropout, docs/encoders.md) ----
     * attention_fwd (causal 1) or attention_len_fwd (causal 0; lengths as there, ignored when causal) with
     * inverted dropout on the softmax probabilities: out = (P o M / (1 - p)) V, where element (b, h, t, s)
     * of P (query t, key s) is dropped when dropout_u32(seed, attn_dropout_index(b, h, t, s, nh, T)) <
     * dropout_cut(p), on every backend, so that the same seed drops the same probabilities. lse is that of
     * the undropped softmax (as attention_fwd's). Only the model's training forward calls it (p in (0, 1)). */
    void (*attention_drop_fwd)(void *out, float *lse, const void *qkv, const int32_t *lengths, int causal, int B,
                               int T, int nh, int nkv, int hd, float p, uint64_t seed);
    /* Its backward (dqkv overwrite), the mask regenerated from the seed: with Pd = P o M / (1 - p),
     * dV = Pd^T dO, dP = (dO V^T) o M / (1 - p), dS = P o (dP - rowsum(dO o O)) (O the dropped output). */
    void (*attention_drop_bwd)(void *dqkv, const void *dout, const void *out, const float *lse, const void *qkv,
                               const int32_t *lengths, int causal, int B, int T, int nh, int nkv, int hd, float p,
                               uint64_t seed);

    /* ---- vocabulary-parallel loss (appended; tensor parallel, model/tp.h) ----
     * logits (N, V) are this rank's columns [v0, v0 + V) of the whole vocabulary; targets (N) are
     * ids of the whole vocabulary (negative = ignored). Per row, stats (N, 3) fp32 = the slice's max
     * m, its sum of exp(z - m), and the target's logit when the target lies in the slice (else 0). */
    void (*xent_vp_stats)(float *stats, const void *logits, const int32_t *targets, int N, int V, int v0);
    /* From the stats of the P ranks of the group (P parts of (N, 3), in rank order): losses (N) =
     * logsumexp over the whole vocabulary - the target's logit (0 for ignored rows), as xent_fwd_bwd
     * of the whole row. If dscale != 0 the logits are overwritten by this slice of
     * (softmax - onehot) * dscale (0 for ignored rows). */
    void (*xent_vp_finish)(float *losses, void *logits, const int32_t *targets, const float *stats, int P, int N,
                           int V, int v0, float dscale);
    /* ---- host memory that ops accept as operands (appended; train.offload_optimizer and
     * train.offload_embeddings, docs/finetuning.md) ----
     * A zero-filled block in host memory that every op of this backend reads and writes like its own
     * (upload, download, zero and kernels alike), for state moved off the device: CUDA pinned and
     * mapped host memory, which kernels reach over the bus; the CPU's ordinary memory. Not counted by
     * mem_stats on a device backend (it holds no device memory). */
    void *(*alloc_host)(size_t bytes);
    void (*free_host)(void *p);
    /* ---- router jitter (appended; model.moe.router_jitter, docs/moe.md) ----
     * out[i] = inp[i] * jitter_factor(seed, i, eps) over n act elements (in place allowed): Mixtral's
     * multiplicative uniform noise in [1 - eps, 1 + eps], the same draw on every backend. */
    void (*jitter)(void *out, const void *inp, size_t n, float eps, uint64_t seed);
    /* ---- BitNet under tensor parallel (appended; model/tp.h, docs/ternary.md "Tensor parallel") ----
     * A rank holds a slice of each BitLinear part and of the features its sub-norms normalize: each op
     * below is a per-slice statistic (doubles, which the group gathers as they are: 8 bytes each), or
     * the quantizer or norm finished from the P ranks' statistics summed in rank order. */
    /* *sum (one double, overwrite) = the sum of |w| over n values in double: fp32 (w_act 0, the master)
     * or act (w_act 1, the compute copy: ternary_wquant_act's case). */
    void (*ternary_abs_sum)(double *sum, const void *w, int w_act, size_t n);
    /* ternary_wquant (w_act 0) or ternary_wquant_act (1) of n values whose gamma is that of a whole of
     * count values: gamma = max((float)(S / count), 1e-5), S = sums[0] + sums[stride] + ... (nsums of
     * them, in that order, in double). */
    void (*ternary_wquant_sums)(void *out, const void *w, int w_act, size_t n, const double *sums, int nsums,
                                int stride, double count);
    /* amax (N) fp32 = max |x| of each row of C act values (overwrite). */
    void (*act_absmax)(float *amax, const void *inp, int N, int C);
    /* act_quant8 with each row's absmax the largest of P parts of amax (P, N): the quantizer of a row
     * whose other columns lie on other ranks. out may be inp. */
    void (*act_quant8_amax)(void *out, const void *inp, const float *amax, int P, int N, int C);
    /* dot (N) double (overwrite) = sum_c (a[c] * w[c]) * (b[c] * s[row]) per row of C act values, each
     * product in fp32 and their sum in double; w NULL: 1, s NULL: 1. RMSNorm's sum of squares (a = b = x)
     * and its backward's sum of g * xhat (a = dout, b = x, s = rstd). */
    void (*rms_row_dot)(double *dot, const void *a, const void *b, const void *w, const float *s, int N, int C);
    /* RMSNorm of rows of C act values whose sums of squares over all Cn features are ss (P, N), summed
     * over the P parts: rstd (N) = (float)(1 / sqrt(sum / Cn + eps)), out = x * rstd * w (norm_fwd's
     * arithmetic). */
    void (*rms_split_fwd)(void *out, float *rstd, const void *x, const void *w, const double *ss, int P, int N,
                          int C, int Cn, float eps);
    /* Its backward: with gx = (sum of the P parts of dot (P, N)) / Cn, dinp += rstd * (dout * w - xhat * gx),
     * dw (C) += dout * xhat (dw NULL: skipped), xhat = x * rstd (norm_bwd's arithmetic). */
    void (*rms_split_bwd)(void *dinp, float *dw, const void *dout, const void *x, const void *w, const float *rstd,
                          const double *dot, int P, int N, int C, int Cn);
};

/* The CPU backend (always built). */
const Backend *backend_cpu(void);
/* The CUDA backend; NULL with err_set() when built without CUDA or no GPU is usable.
 * bf16 selects bf16 activations/weights (fp32 master); 0 gives an all-fp32 backend. */
const Backend *backend_cuda(int bf16);
/* By name: "cpu", "cuda" (bf16), "cuda-fp32". NULL with err_set() on failure. */
const Backend *backend_get(const char *name);

/* The dropout draw of element i for a seed: a 32-bit hash (splitmix64's finalizer of seed and i),
 * the same on every backend. */
#ifdef __CUDACC__
#define ANVIL_HOST_DEVICE __host__ __device__
#else
#define ANVIL_HOST_DEVICE
#endif
static inline ANVIL_HOST_DEVICE uint32_t dropout_u32(uint64_t seed, uint64_t i)
{
    uint64_t z = seed + 0x9e3779b97f4a7c15ULL * (i + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}

/* The router-jitter factor of element i: 1 - eps + 2 eps u, u the draw's top 24 bits over 2^24 (exact
 * in fp32), computed in double and rounded once, so that every backend gets the same float. */
static inline ANVIL_HOST_DEVICE float jitter_factor(uint64_t seed, uint64_t i, float eps)
{
    double u = (double)(dropout_u32(seed, i) >> 8) * (1.0 / 16777216.0);
    return (float)(1.0 - (double)eps + 2.0 * (double)eps * u);
}

/* The threshold of a dropout probability: an element is dropped when its draw is below it. */
static inline uint32_t dropout_cut(float p)
{
    double c = (double)p * 4294967296.0;
    return c >= 4294967295.0 ? 4294967295u : c > 0 ? (uint32_t)c : 0u;
}

/* The draw index of attention probability (b, h, t, s) (query t, key s) of a (B, nh, T, T) score tensor. */
static inline ANVIL_HOST_DEVICE uint64_t attn_dropout_index(int b, int h, int t, int s, int nh, int T)
{
    return (((uint64_t)b * (uint64_t)nh + (uint64_t)h) * (uint64_t)T + (uint64_t)t) * (uint64_t)T + (uint64_t)s;
}

/* Pointer to element `i` of an act buffer. */
static inline void *act_at(const Backend *be, void *base, size_t i)
{
    return (char *)base + i * be->act_size;
}

#endif
