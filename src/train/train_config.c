#include "train/train_config.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "backend/backend.h"
#include "core/error.h"
#include "model/quant4.h"
#include "data/chat.h"

/* dist.tp's upper bound: the GPUs of one node (8) times a margin for CPU tests. */
#define DIST_TP_MAX 64

/* CT_BATCH: a positive int, or "auto" (stored as 0) */
typedef enum { CT_INT, CT_LONG, CT_U64, CT_FLOAT, CT_STR, CT_BOOL, CT_TRI, CT_LIST, CT_BATCH } KeyType;

/* An unknown key names the nearest known one within this many edits. */
#define KEY_MAX_DIST 3

typedef struct {
    const char *key;
    KeyType type;
    size_t offset;
    size_t size; /* for strings */
    const char *def;
    const char *doc;
} KeyDef;

#define F(field) offsetof(TrainConfig, field), sizeof(((TrainConfig *)0)->field)

static const KeyDef keys[] = {
    {"model.preset", CT_STR, F(model_preset), "",
     "Named architecture: gpt2-124m, gpt2-350m, gpt2-760m, gpt2-1.3b, llama-1b, gpt2-tiny, llama-tiny, llama2-7b, "
     "llama2-13b, mistral-7b, llama3-8b. "
     "The model.* size keys below override it."},
    {"model.init", CT_STR, F(model_init), "",
     "Start from this Hugging Face model directory (config.json + safetensors) instead of random init."},
    {"model.family", CT_STR, F(model_family), "", "gpt2 or llama, when no preset or init gives it."},
    {"model.n_layer", CT_INT, F(n_layer), "0", "Transformer blocks (0 = from the preset)."},
    {"model.n_head", CT_INT, F(n_head), "0", "Attention heads (0 = from the preset)."},
    {"model.n_kv_head", CT_INT, F(n_kv_head), "0", "Key/value heads for grouped-query attention (0 = n_head)."},
    {"model.d_model", CT_INT, F(d_model), "0", "Residual width (0 = from the preset)."},
    {"model.d_ff", CT_INT, F(d_ff), "0", "MLP hidden width (0 = the preset's; gpt2 default 4*d_model)."},
    {"model.max_seq_len", CT_INT, F(max_seq_len), "0", "Longest sequence / learned positions (0 = preset)."},
    {"model.vocab_size", CT_INT, F(vocab_size), "0", "Vocabulary size (0 = preset)."},
    {"model.rope_theta", CT_FLOAT, F(rope_theta), "0", "RoPE base for the llama family (0 = preset, 10000)."},
    {"model.tie_embeddings", CT_TRI, F(tie_embeddings), "",
     "Tie the output head to the token embeddings (empty = family default: gpt2 yes, llama no)."},
    {"model.qkv_bias", CT_TRI, F(qkv_bias), "", "Biases on q/k/v (empty = family default; true is Qwen2-style)."},
    {"model.moe.experts", CT_INT, F(moe_experts), "0",
     "Routed experts per MoE layer (0 = the preset's; none: every MLP dense). docs/moe.md."},
    {"model.moe.top_k", CT_INT, F(moe_top_k), "0", "Experts each token is routed to (0 = the preset's, else 2)."},
    {"model.moe.d_ff", CT_INT, F(moe_d_ff), "0", "Each expert's hidden width (0 = the preset's, else model.d_ff)."},
    {"model.moe.every", CT_INT, F(moe_every), "0",
     "An MoE MLP on every n-th layer (layers l with (l+1) % n == 0; 1 = all; 0 = the preset's, else 1)."},
    {"model.moe.shared_experts", CT_INT, F(moe_shared), "0",
     "Always-on shared experts behind a sigmoid gate (Qwen2-MoE): one SwiGLU of n x model.moe.d_ff."},
    {"model.moe.norm_topk_prob", CT_TRI, F(moe_norm_topk), "",
     "Renormalise the top-k routing weights to sum 1 (empty = true, as Mixtral; Qwen2-MoE checkpoints say false)."},
    {"model.moe.aux_loss_coef", CT_FLOAT, F(moe_aux_coef), "0.01",
     "Load-balancing loss coefficient (transformers' load_balancing_loss_func, added to the loss)."},
    {"model.moe.z_loss_coef", CT_FLOAT, F(moe_z_coef), "0.001",
     "Router z-loss coefficient (ST-MoE: mean of logsumexp^2 of the router logits, added to the loss)."},
    {"model.moe.router_jitter", CT_FLOAT, F(moe_jitter), "0",
     "Mixtral's router_jitter_noise: while training, each MoE layer's input (what the router and the experts "
     "read) times uniform noise in [1 - j, 1 + j] per element, as transformers does in train mode. A config.json's "
     "router_jitter_noise is never applied: only this key (a note says so). 0 = none; in [0, 1). docs/moe.md."},
    {"model.dropout", CT_FLOAT, F(dropout), "0",
     "Dropout while training on the embedding output (bert: after the embedding LayerNorm) and on the attention "
     "output projection and MLP output (MoE: the combined experts) before each residual sum, every layer "
     "(BERT's hidden_dropout_prob; GPT-2's embd_pdrop and resid_pdrop). A config.json's dropout values are never "
     "applied (transformers applies them in train mode): only this key. 0 = none. docs/encoders.md."},
    {"model.attn_dropout", CT_FLOAT, F(attn_dropout), "0",
     "Dropout while training on the attention probabilities (BERT's attention_probs_dropout_prob; GPT-2's "
     "attn_pdrop). On CUDA above 0 the training attention runs anvil's simple kernels, never cuDNN's fused ones "
     "(whose masks differ). 0 = none. docs/encoders.md."},
    {"model.freeze", CT_LIST, F(freeze), "",
     "Tensors to freeze (no gradient, no optimizer state, left out of the gradient norm): shell globs over the "
     "Hugging Face names the checkpoint uses, e.g. [\"model.embed_tokens.*\", \"model.layers.[0-9].*\"]. "
     "A pattern that matches nothing is an error. --set model.freeze=a,b."},
    {"model.quant", CT_STR, F(quant), "none",
     "Store the frozen block linears 4-bit for QLoRA: nf4 or fp4 (bitsandbytes' quantize_4bit, block "
     "model.quant_blocksize); embeddings, norms and the head stay bf16. A bitsandbytes 4-bit model.init is "
     "used as it is. Needs lora.r."},
    {"model.quant_double", CT_BOOL, F(quant_double), "true",
     "Double quantization of the 4-bit block scales (8-bit, blocks of 256; bitsandbytes' compress_statistics)."},
    {"model.quant_blocksize", CT_INT, F(quant_blocksize), "64", "Values per 4-bit block (32 .. 4096, a power of two)."},
    {"model.ternary", CT_STR, F(ternary), "",
     "bitnet: every block linear is a BitNet b1.58 BitLinear (fp32 latent weights ternarized per tensor with "
     "absmean in the forward, inputs quantized per token to 8 bits, straight-through backward; embeddings, "
     "norms and head stay full precision); none: plain products. Empty = the family's (bitnet for model.family "
     "bitnet, else none). docs/ternary.md."},
    {"train.optimizer", CT_STR, F(optimizer), "adamw",
     "adamw; or ternary: integer-only training of the block linears (trits packed 5 per byte, an int8 "
     "power-of-two exponent per group, int8 accumulators; no float weights or optimizer state for them); the "
     "other tensors (norms, and the embeddings and head unless train.ternary.embeddings) train with AdamW. "
     "Data parallel with dist.zero 0 (the integer state replicated on every rank); not with ZeRO or dist.tp. "
     "docs/ternary.md."},
    {"train.ternary.group", CT_INT, F(tern_group), "128", "train.optimizer ternary: weights per exponent group."},
    {"train.ternary.threshold", CT_INT, F(tern_threshold), "3",
     "train.optimizer ternary: a trit moves one step when its sign accumulator reaches +-threshold (1 .. 127)."},
    {"train.ternary.scale_every", CT_INT, F(tern_scale_every), "127",
     "train.optimizer ternary: every N steps a group's exponent moves one step where 2 |E_accum| >= N (1 .. 127)."},
    {"train.ternary.deadzone", CT_FLOAT, F(tern_deadzone), "1.0",
     "train.optimizer ternary: a weight votes only when |g| >= deadzone x its group's mean |g| (0 = every "
     "nonzero gradient votes)."},
    {"train.ternary.embeddings", CT_BOOL, F(tern_embeddings), "false",
     "train.optimizer ternary: the token embeddings (and an untied head) integer-ternary too, so that only the "
     "norm weights stay float (freeze them with model.freeze for a model of 0 float parameters)."},
    {"train.ternary.fused", CT_BOOL, F(tern_fused), "false",
     "train.optimizer ternary: update each ternary tensor inside the backward, as soon as its gradient is "
     "complete, so that only one tensor's fp32 gradient exists at a time (the memory of large models); needs one "
     "micro-batch per step. A tied embedding is still updated after the step."},
    {"train.ternary.chunk_rows", CT_INT, F(tern_chunk_rows), "0",
     "train.ternary.fused: an untied embedding and output head (vocabulary x width) are read, differentiated and "
     "updated this many rows at a time, so that neither their fp32 gradient nor their unpacked weight exists "
     "whole; 0 = automatic (chunks the size of the largest block tensor), -1 = whole tensors."},
    {"lora.r", CT_INT, F(lora_r), "0",
     "LoRA rank: adapters on the linear layers of lora.targets, the base frozen (no gradient, no optimizer "
     "state); 0 = no adapters (docs/finetuning.md)."},
    {"lora.alpha", CT_FLOAT, F(lora_alpha), "16", "LoRA alpha: the adapters' product is scaled by alpha / r."},
    {"lora.dropout", CT_FLOAT, F(lora_dropout), "0", "Dropout on the adapters' input while training (PEFT's lora_dropout)."},
    {"lora.targets", CT_LIST, F(lora_targets), "all-linear",
     "Modules to adapt, by their Hugging Face names: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
     "down_proj (llama family); c_attn, c_proj, c_fc (gpt2); or all-linear. MoE: experts (or "
     "experts.gate_up_proj, experts.down_proj), or transformers 4's per-expert w1, w3, w2 (Mixtral), "
     "shared_expert_gate, gate (the router); all-linear leaves out the routed experts and the router "
     "(docs/moe.md)."},
    {"lora.rslora", CT_BOOL, F(lora_rslora), "false", "rsLoRA: scale by alpha / sqrt(r) instead of alpha / r."},
    {"lora.init", CT_STR, F(lora_init), "",
     "Start from this PEFT adapter directory (its adapter_config.json sets r, alpha, dropout and targets)."},
    {"data.train", CT_STR, F(data_train), "",
     "Training data: a shard directory, a shard glob, one shard (.bin), or a .txt file tokenized on the fly."},
    {"data.val", CT_STR, F(data_val), "", "Validation data (same forms); empty = no validation loss."},
    {"data.tokenizer", CT_STR, F(data_tokenizer), "",
     "Tokenizer: gpt2, byte, a tokenizer.json, or a model directory. Empty = model.init's; else GPT-2 for a "
     "text file, and for shards the built-in one they were made with."},
    {"data.format", CT_STR, F(data_format), "text",
     "text: token windows of shards or a text file; sft: instruction data, JSONL records {\"messages\": "
     "[{\"role\", \"content\"}, ...]} or {\"prompt\", \"completion\"}, one example per row, the loss over "
     "assistant/completion tokens only (docs/sft.md)."},
    {"data.chat_template", CT_STR, F(data_chat_template), "",
     "sft: the chat template. Empty = the tokenizer's own (tokenizer_config.json's chat_template, recognised as "
     "one of the families below); chatml, llama2, llama3, mistral, zephyr, gemma or phi3 to name one; none for "
     "no template (prompt/completion records only)."},
    {"data.train_on", CT_STR, F(data_train_on), "completion",
     "sft: completion = the loss covers only assistant turns (content + end-of-turn token) and completions (+ "
     "EOS); all = every token."},
    {"data.pack", CT_BOOL, F(data_pack), "false",
     "sft: pack several examples into one row. Not supported yet (it needs attention that keeps examples apart); "
     "each example is padded to train.seq_len."},
    {"data.objective", CT_STR, F(data_objective), "causal",
     "causal: predict the next token (decoders); mlm: masked-LM rows for encoders (model.family bert): windows of "
     "the token stream wrapped in the tokenizer's template ([CLS] ... [SEP]) of train.seq_len ids, tokens chosen "
     "with data.mlm.prob, 80% [MASK] / 10% random / 10% unchanged, the loss over chosen tokens only "
     "(docs/encoders.md)."},
    {"data.mlm.prob", CT_FLOAT, F(data_mlm_prob), "0.15", "mlm: the chance that a token (or word) is chosen."},
    {"data.mlm.whole_word", CT_BOOL, F(data_mlm_whole_word), "false",
     "mlm: choose whole words (a WordPiece piece and the ## pieces after it) together."},
    {"train.steps", CT_INT, F(steps), "1000", "Optimizer steps."},
    {"train.batch_size", CT_BATCH, F(batch_size), "8",
     "Sequences per micro-batch, or auto: the largest that anvil plan says fits the device (then checked by "
     "a trial step) among those that divide tokens_per_step / (seq_len * ranks); see docs/reporting.md."},
    {"train.seq_len", CT_INT, F(seq_len), "256", "Tokens per sequence."},
    {"train.tokens_per_step", CT_LONG, F(tokens_per_step), "0",
     "Tokens per optimizer step over all ranks; a multiple of batch_size*seq_len*ranks, reached by gradient "
     "accumulation on each rank, so that a run's data and losses do not depend on the number of ranks "
     "(0 = one micro-batch per rank)."},
    {"train.lr", CT_FLOAT, F(lr), "6e-4", "Peak learning rate."},
    {"train.min_lr", CT_FLOAT, F(min_lr), "6e-5", "Learning rate at the end of the decay."},
    {"train.warmup_steps", CT_INT, F(warmup_steps), "100", "Linear warmup steps (lr*step/warmup up to lr)."},
    {"train.schedule", CT_STR, F(schedule), "cosine", "Decay after warmup: cosine, linear or constant."},
    {"train.weight_decay", CT_FLOAT, F(weight_decay), "0.1",
     "AdamW decoupled weight decay, applied to matrices only (not to biases and norm weights)."},
    {"train.grad_clip", CT_FLOAT, F(grad_clip), "1.0", "Clip the global gradient norm to this (0 = off)."},
    {"train.beta1", CT_FLOAT, F(beta1), "0.9", "AdamW beta1."},
    {"train.beta2", CT_FLOAT, F(beta2), "0.95", "AdamW beta2."},
    {"train.eps", CT_FLOAT, F(eps), "1e-8", "AdamW epsilon."},
    {"train.seed", CT_U64, F(seed), "1337", "Seed for init and data order; one seed gives identical runs."},
    {"train.recompute", CT_INT, F(recompute), "0",
     "Activation recompute: 0 none, 1 norms and MLP activation, 2 whole blocks (least memory)."},
    {"train.recompute_layers", CT_INT, F(recompute_layers), "-1",
     "Only the first N blocks recompute at train.recompute; the others keep every activation (more memory, "
     "less recompute; -1 = all blocks)."},
    {"train.offload_optimizer", CT_BOOL, F(offload_optimizer), "false",
     "Keep the AdamW moments in pinned host memory: on a GPU the update reads and writes them over the bus "
     "(8 bytes per trainable parameter off the device; a slower update). The values are the same."},
    {"train.offload_embeddings", CT_BOOL, F(offload_embeddings), "false",
     "Keep a frozen input embedding (LoRA / QLoRA or model.freeze; not tied to the head) in pinned host memory: "
     "the lookup reads its B*T rows over the bus. Not with dist.zero 3 or dist.tp."},
    {"train.deterministic", CT_BOOL, F(deterministic), "false",
     "Bit-identical runs on a GPU: only kernels with fixed-order reductions (slower attention backward). "
     "ANVIL_DETERMINISTIC=0|1 overrides it (recorded in config.yaml). false allows atomics; the CPU is always "
     "deterministic."},
    {"train.log_every", CT_INT, F(log_every), "1",
     "Print a progress line every N steps (metrics.jsonl gets every step)."},
    {"log.tensorboard", CT_BOOL, F(log_tensorboard), "true",
     "Write TensorBoard event files (events.out.tfevents.*) into out_dir, every value of metrics.jsonl "
     "(docs/reporting.md)."},
    {"log.flush_s", CT_FLOAT, F(log_flush_s), "10", "Flush the event file at least this often (seconds)."},
    {"eval.every", CT_INT, F(eval_every), "100",
     "Validation loss every N steps and at the end (0 = only at the end)."},
    {"eval.steps", CT_INT, F(eval_steps), "20", "Validation batches per evaluation."},
    {"eval.mcq.task", CT_STR, F(eval_mcq_task), "",
     "Optional zero-shot multiple-choice task during training: hellaswag, piqa, arc, winogrande or generic."},
    {"eval.mcq.data", CT_STR, F(eval_mcq_data), "", "JSONL file for eval.mcq.task."},
    {"eval.mcq.every", CT_INT, F(eval_mcq_every), "0", "Run the mcq task every N steps and at the end (0 = only at the end)."},
    {"eval.mcq.limit", CT_INT, F(eval_mcq_limit), "0", "Score at most this many items (0 = all)."},
    {"checkpoint.every", CT_INT, F(ckpt_every), "0", "Save a checkpoint every N steps and at the end (0 = only at the end)."},
    {"checkpoint.keep", CT_INT, F(ckpt_keep), "3", "Keep the newest N checkpoints (0 = keep all)."},
    {"checkpoint.dtype", CT_STR, F(ckpt_dtype), "f32",
     "Dtype of model.safetensors in checkpoints: f32, or bf16 (smaller; the fp32 master weights then go to "
     "optimizer.safetensors so that resume stays exact)."},
    {"out_dir", CT_STR, F(out_dir), "runs/default", "Run directory: metrics.jsonl, config.yaml, step-NNNNNNN/."},
    {"device", CT_STR, F(device), "cpu", "cpu, cuda (bf16 mixed precision) or cuda-fp32."},
    {"dist.zero", CT_INT, F(dist_zero), "0",
     "With several ranks (anvil launch, mpirun, srun): 0 plain data parallel (every rank keeps the whole state), "
     "1 ZeRO-1 (optimizer moments sharded over the ranks, updated weights all-gathered), 2 ZeRO-2 (also the "
     "gradients reduce-scattered to their shard, kept only for it), 3 ZeRO-3 (also the parameters sharded, "
     "each layer all-gathered just before use, forward and backward). docs/distributed.md has the bytes per "
     "parameter of each. train.optimizer: ternary runs at 0 only."},
    {"dist.tp", CT_INT, F(dist_tp), "1",
     "Tensor-parallel ranks per model replica (Megatron-style, within a node): the job's ranks form replicas of "
     "dist.tp adjacent ranks, each holding a slice of every block's heads and MLP units and of the vocabulary; "
     "data parallel runs over the replicas (world = tp x dp). Must divide the ranks, model.n_head, "
     "model.n_kv_head and model.d_ff; dense gpt2/llama models, no LoRA; dist.zero shards over the replicas "
     "(docs/distributed.md)."},
    {"dist.timeout_s", CT_FLOAT, F(dist_timeout_s), "600",
     "Longest wait of a collective (and of the rendezvous) for the other ranks: past it the rank exits with "
     "status 1 naming the collective, instead of hanging on a dead peer. Must exceed the longest step, "
     "evaluation or checkpoint."},
    {"dist.bucket_mb", CT_FLOAT, F(dist_bucket_mb), "25",
     "MiB of fp32 gradient per reduction bucket (the gradient is reduced in buckets, last layer first, on the "
     "GPU on a communication stream)."},
    {"dist.comm", CT_STR, F(dist_comm), "auto",
     "Communication: auto (nccl for cuda devices; mpi for CPU ranks under mpirun, else tcp), tcp, mpi or nccl."},
    {"backend.attention", CT_STR, F(attention), "auto",
     "GPU attention kernels: auto (cuDNN's fused engines where they apply, else anvil's), cudnn, or anvil. "
     "ANVIL_ATTENTION overrides it; the value used is recorded in the run's config.yaml."},
    {"backend.gemm_tune", CT_STR, F(gemm_tune), "auto",
     "GPU matmul autotuning: auto (time cuBLASLt's candidates for recurring training-sized products), off, "
     "or always. ANVIL_GEMM_TUNE overrides it (recorded in config.yaml)."},
};

static int list_add(CfgList *l, const char *s, size_t n)
{
    if (l->n == CFG_LIST_MAX) return err_set("more than %d items", CFG_LIST_MAX);
    if (n >= CFG_ITEM_MAX) return err_set("item \"%.*s...\" is longer than %d bytes", 20, s, CFG_ITEM_MAX - 1);
    memcpy(l->item[l->n], s, n);
    l->item[l->n][n] = '\0';
    l->n++;
    return 0;
}

/* Edit distance (insert, delete, substitute, transpose) between two short keys, capped. */
static int key_distance(const char *a, const char *b)
{
    enum { MAXK = KEY_MAX_DIST };
    size_t n = strlen(a), m = strlen(b);
    if (n > 96 || m > 96) return 99;
    /* the distance is at least the difference in length: beyond MAXK, no need to count it */
    if ((n > m ? n - m : m - n) > MAXK) return MAXK + 1;
    int d[97][97];
    for (size_t i = 0; i <= n; i++) d[i][0] = (int)i;
    for (size_t j = 0; j <= m; j++) d[0][j] = (int)j;
    for (size_t i = 1; i <= n; i++)
        for (size_t j = 1; j <= m; j++) {
            int c = a[i - 1] != b[j - 1];
            int v = MIN(MIN(d[i - 1][j] + 1, d[i][j - 1] + 1), d[i - 1][j - 1] + c);
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) v = MIN(v, d[i - 2][j - 2] + 1);
            d[i][j] = v;
        }
    return d[n][m];
}

/* " (did you mean \"train.steps\"?)" for the nearest key within KEY_MAX_DIST edits, else "". */
static const char *did_you_mean(const char *key, char *buf, size_t n)
{
    int best = KEY_MAX_DIST + 1;
    const char *hit = NULL;
    for (size_t i = 0; i < ARRAY_LEN(keys); i++) {
        int dd = key_distance(key, keys[i].key);
        /* the same last part in another section also counts: "steps" for "train.steps" */
        const char *dot = strrchr(keys[i].key, '.');
        if (dot && !strcmp(dot + 1, key)) dd = 1;
        if (dd < best) best = dd, hit = keys[i].key;
    }
    if (!hit) return "";
    snprintf(buf, n, "; did you mean \"%s\"?", hit);
    return buf;
}

static const KeyDef *find_key(const char *key)
{
    for (size_t i = 0; i < ARRAY_LEN(keys); i++)
        if (!strcmp(keys[i].key, key)) return &keys[i];
    return NULL;
}

static int parse_bool(const char *v, int *out)
{
    const char *t[] = {"true", "True", "TRUE", "yes", "on", "1"};
    const char *f[] = {"false", "False", "FALSE", "no", "off", "0"};
    for (size_t i = 0; i < ARRAY_LEN(t); i++)
        if (!strcmp(v, t[i])) return *out = 1, 0;
    for (size_t i = 0; i < ARRAY_LEN(f); i++)
        if (!strcmp(v, f[i])) return *out = 0, 0;
    return -1;
}

/* "a,b", "[a, b]", "['a', \"b\"]" or "" into a list (items trimmed of spaces and quotes). */
static int list_parse(CfgList *l, const char *value)
{
    l->n = 0;
    const char *s = value;
    while (*s == ' ') s++;
    size_t len = strlen(s);
    while (len && s[len - 1] == ' ') len--;
    if (len >= 2 && s[0] == '[' && s[len - 1] == ']') s++, len -= 2;
    const char *end = s + len;
    while (s < end) {
        const char *c = memchr(s, ',', (size_t)(end - s));
        const char *e = c ? c : end;
        while (s < e && (*s == ' ' || *s == '"' || *s == '\'')) s++;
        const char *t = e;
        while (t > s && (t[-1] == ' ' || t[-1] == '"' || t[-1] == '\'')) t--;
        if (t > s && list_add(l, s, (size_t)(t - s))) return -1;
        s = c ? c + 1 : end;
    }
    return 0;
}

int train_config_set_key(TrainConfig *tc, const char *key, const char *value, const char *where)
{
    const KeyDef *k = find_key(key);
    const char *w = where ? where : "--set";
    char hint[160];
    if (!k) return err_set("%s: unknown config key \"%s\" (see docs/config.md%s)", w, key, did_you_mean(key, hint, sizeof(hint)));
    char *field = (char *)tc + k->offset;
    char *end;
    errno = 0;
    switch (k->type) {
    case CT_BATCH:
        if (!strcmp(value, "auto")) {
            *(int *)field = 0;
            break;
        }
        __attribute__((fallthrough)); /* an integer */
    case CT_INT:
    case CT_LONG: {
        long long v = strtoll(value, &end, 10);
        if (end == value || *end || errno) return err_set("%s: %s: expected an integer, got \"%s\"", w, key, value);
        if (k->type != CT_LONG) {
            if (v < -2147483647LL || v > 2147483647LL) return err_set("%s: %s: %s is out of range", w, key, value);
            *(int *)field = (int)v;
        } else {
            *(long *)field = (long)v;
        }
        break;
    }
    case CT_U64: {
        if (value[0] == '-') return err_set("%s: %s: expected a non-negative integer, got \"%s\"", w, key, value);
        unsigned long long v = strtoull(value, &end, 10);
        if (end == value || *end || errno) return err_set("%s: %s: expected an integer, got \"%s\"", w, key, value);
        *(uint64_t *)field = v;
        break;
    }
    case CT_FLOAT: {
        double v = strtod(value, &end);
        if (end == value || *end || errno) return err_set("%s: %s: expected a number, got \"%s\"", w, key, value);
        if (!isfinite(v) || !isfinite((float)v))
            return err_set("%s: %s: expected a finite number, got \"%s\"", w, key, value);
        *(float *)field = (float)v;
        break;
    }
    case CT_STR:
        if (strlen(value) >= k->size) return err_set("%s: %s: value is too long (%zu bytes)", w, key, strlen(value));
        memcpy(field, value, strlen(value) + 1);
        break;
    case CT_LIST:
        if (list_parse((CfgList *)field, value)) return err_set("%s: %s: %s", w, key, err_get());
        break;
    case CT_BOOL:
    case CT_TRI: {
        int b;
        if (k->type == CT_TRI && !value[0]) b = -1;
        else if (parse_bool(value, &b)) return err_set("%s: %s: expected true or false, got \"%s\"", w, key, value);
        *(int *)field = b;
        break;
    }
    }
    return 0;
}

void train_config_defaults(TrainConfig *tc)
{
    memset(tc, 0, sizeof(*tc));
    for (size_t i = 0; i < ARRAY_LEN(keys); i++)
        if (train_config_set_key(tc, keys[i].key, keys[i].def, "defaults")) fatal_err();
}

int train_config_set(TrainConfig *tc, const char *assignment)
{
    const char *eq = strchr(assignment, '=');
    char key[128];
    size_t n = eq ? (size_t)(eq - assignment) : 0;
    if (!eq || n == 0 || n >= sizeof(key)) return err_set("--set %s: expected key=value", assignment);
    memcpy(key, assignment, n);
    key[n] = '\0';
    /* as in YAML, an empty value, ~ or null means the key's default */
    const char *v = eq + 1;
    const KeyDef *k = find_key(key);
    if (k && (!v[0] || !strcmp(v, "~") || !strcmp(v, "null"))) v = k->def;
    return train_config_set_key(tc, key, v, "--set");
}

/* ---- YAML: nested mappings of scalars, flattened to dotted keys ---- */

#define MAX_DEPTH 8
#define KEY_MAX 128

/* The dotted key of a value at mapping level depth: name[2..depth] then the pending key. */
static void full_key(char *out, size_t n, char name[][KEY_MAX], int depth, const char *pending)
{
    size_t o = 0;
    out[0] = '\0';
    for (int d = 2; d <= depth && o < n; d++) o += (size_t)snprintf(out + o, n - o, "%s.", name[d]);
    if (o < n) snprintf(out + o, n - o, "%s", pending);
}

int train_config_load_yaml(TrainConfig *tc, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return err_set("%s: cannot open: %s", path, strerror(errno));
    yaml_parser_t parser;
    yaml_event_t ev;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_file(&parser, f);
    /* name[d] is the key that opened mapping level d (level 1 = top level) */
    char name[MAX_DEPTH + 1][KEY_MAX];
    int expect_key[MAX_DEPTH + 1] = {0};
    char pending[KEY_MAX] = "";
    int depth = 0, rc = 0, done = 0;
    CfgList *list = NULL; /* the list-valued key whose sequence is being read */
    char list_key[(MAX_DEPTH + 1) * KEY_MAX] = "";
    while (!done) {
        if (!yaml_parser_parse(&parser, &ev)) {
            rc = err_set("%s:%zu: YAML syntax error: %s", path, parser.problem_mark.line + 1,
                         parser.problem ? parser.problem : "unknown");
            break;
        }
        size_t line = ev.start_mark.line + 1;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT: done = 1; break;
        case YAML_MAPPING_START_EVENT:
            if (list) {
                rc = err_set("%s:%zu: %s: expected a list of strings", path, line, list_key);
                break;
            }
            if (depth == MAX_DEPTH) {
                rc = err_set("%s:%zu: mappings nested too deeply", path, line);
                break;
            }
            if (depth > 0) {
                if (expect_key[depth]) {
                    rc = err_set("%s:%zu: a mapping cannot be a key", path, line);
                    break;
                }
                expect_key[depth] = 1; /* after this value, the parent expects a key again */
            }
            depth++;
            snprintf(name[depth], KEY_MAX, "%s", depth > 1 ? pending : "");
            expect_key[depth] = 1;
            break;
        case YAML_MAPPING_END_EVENT: depth--; break;
        case YAML_SCALAR_EVENT: {
            const char *v = (const char *)ev.data.scalar.value;
            if (depth == 0) {
                if (v[0]) rc = err_set("%s:%zu: expected a mapping of keys at the top level", path, line);
                break;
            }
            if (list) {
                if (list_add(list, v, strlen(v))) rc = err_set("%s:%zu: %s: %s", path, line, list_key, err_get());
                break;
            }
            if (expect_key[depth]) {
                snprintf(pending, sizeof(pending), "%s", v);
                expect_key[depth] = 0;
                break;
            }
            char full[(MAX_DEPTH + 1) * KEY_MAX];
            full_key(full, sizeof(full), name, depth, pending);
            char where[CFG_PATH_MAX + 32];
            snprintf(where, sizeof(where), "%s:%zu", path, line);
            /* YAML null (~, null or nothing) means "the default" */
            int is_null = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
                          (!strcmp(v, "~") || !strcmp(v, "null") || !v[0]);
            const KeyDef *k = find_key(full);
            char hint[160];
            if (!k)
                rc = err_set("%s: unknown config key \"%s\" (see docs/config.md%s)", where, full,
                             did_you_mean(full, hint, sizeof(hint)));
            else rc = train_config_set_key(tc, full, is_null ? k->def : v, where);
            expect_key[depth] = 1;
            break;
        }
        case YAML_SEQUENCE_START_EVENT: {
            char full[(MAX_DEPTH + 1) * KEY_MAX];
            full_key(full, sizeof(full), name, depth, pending);
            const KeyDef *k = depth > 0 && !expect_key[depth] && !list ? find_key(full) : NULL;
            if (!k || k->type != CT_LIST) {
                rc = err_set("%s:%zu: %s: lists are not supported here; expected a single value", path, line, full);
                break;
            }
            list = (CfgList *)((char *)tc + k->offset);
            list->n = 0;
            snprintf(list_key, sizeof(list_key), "%s", full);
            break;
        }
        case YAML_SEQUENCE_END_EVENT:
            list = NULL;
            expect_key[depth] = 1;
            break;
        case YAML_ALIAS_EVENT: rc = err_set("%s:%zu: YAML aliases are not supported", path, line); break;
        default: break;
        }
        yaml_event_delete(&ev);
        if (rc) break;
    }
    yaml_parser_delete(&parser);
    fclose(f);
    return rc;
}

int train_config_validate(const TrainConfig *tc)
{
    if (tc->steps <= 0) return err_set("train.steps: must be positive, got %d", tc->steps);
    if (tc->batch_size < 0) return err_set("train.batch_size: must be positive (or auto), got %d", tc->batch_size);
    if (tc->seq_len <= 0) return err_set("train.seq_len: must be positive, got %d", tc->seq_len);
    long micro = (long)(tc->batch_size ? tc->batch_size : 1) * tc->seq_len; /* auto: checked once chosen */
    if (tc->tokens_per_step < 0 || (tc->tokens_per_step && tc->tokens_per_step % micro))
        return err_set("train.tokens_per_step: %ld is not a multiple of batch_size*seq_len = %ld",
                       tc->tokens_per_step, micro);
    if (!(tc->lr >= 0)) return err_set("train.lr: must be >= 0, got %g", tc->lr);
    if (!(tc->min_lr >= 0)) return err_set("train.min_lr: must be >= 0, got %g", tc->min_lr);
    if (tc->warmup_steps < 0) return err_set("train.warmup_steps: must be >= 0, got %d", tc->warmup_steps);
    if (strcmp(tc->schedule, "cosine") && strcmp(tc->schedule, "linear") && strcmp(tc->schedule, "constant"))
        return err_set("train.schedule: expected cosine, linear or constant, got \"%s\"", tc->schedule);
    if (!(tc->beta1 >= 0 && tc->beta1 < 1)) return err_set("train.beta1: must be in [0, 1), got %g", tc->beta1);
    if (!(tc->beta2 >= 0 && tc->beta2 < 1)) return err_set("train.beta2: must be in [0, 1), got %g", tc->beta2);
    if (!(tc->eps > 0)) return err_set("train.eps: must be positive, got %g", tc->eps);
    if (!(tc->grad_clip >= 0)) return err_set("train.grad_clip: must be >= 0, got %g", tc->grad_clip);
    if (!(tc->weight_decay >= 0)) return err_set("train.weight_decay: must be >= 0, got %g", tc->weight_decay);
    if (tc->recompute < 0 || tc->recompute > 2)
        return err_set("train.recompute: expected 0, 1 or 2, got %d", tc->recompute);
    if (tc->recompute_layers < -1)
        return err_set("train.recompute_layers: expected -1 (all blocks) or a count of blocks, got %d", tc->recompute_layers);
    if (tc->log_every <= 0) return err_set("train.log_every: must be positive, got %d", tc->log_every);
    if (!(tc->log_flush_s > 0) || !isfinite(tc->log_flush_s))
        return err_set("log.flush_s: must be a positive number of seconds, got %g", tc->log_flush_s);
    if (tc->eval_every < 0) return err_set("eval.every: must be >= 0, got %d", tc->eval_every);
    if (tc->eval_steps < 0) return err_set("eval.steps: must be >= 0, got %d", tc->eval_steps);
    if (tc->ckpt_every < 0) return err_set("checkpoint.every: must be >= 0, got %d", tc->ckpt_every);
    if (tc->ckpt_keep < 0) return err_set("checkpoint.keep: must be >= 0, got %d", tc->ckpt_keep);
    if (strcmp(tc->ckpt_dtype, "f32") && strcmp(tc->ckpt_dtype, "bf16"))
        return err_set("checkpoint.dtype: expected f32 or bf16, got \"%s\"", tc->ckpt_dtype);
    if (tc->lora_r < 0) return err_set("lora.r: must be >= 0, got %d", tc->lora_r);
    if (strcmp(tc->quant, "none") && q4_type_parse(tc->quant) < 0)
        return err_set("model.quant: expected none, nf4 or fp4, got \"%s\"", tc->quant);
    if (!q4_blocksize_valid(tc->quant_blocksize))
        return err_set("model.quant_blocksize: expected a power of two from 32 to 4096, got %d", tc->quant_blocksize);
    if (tc->ternary[0] && strcmp(tc->ternary, "none") && strcmp(tc->ternary, "bitnet"))
        return err_set("model.ternary: expected none or bitnet, got \"%s\"", tc->ternary);
    if (strcmp(tc->optimizer, "adamw") && strcmp(tc->optimizer, "ternary"))
        return err_set("train.optimizer: expected adamw or ternary, got \"%s\"", tc->optimizer);
    if (tc->tern_group <= 0) return err_set("train.ternary.group: must be positive, got %d", tc->tern_group);
    if (tc->tern_chunk_rows < -1)
        return err_set("train.ternary.chunk_rows: expected -1 (whole), 0 (automatic) or a row count, got %d",
                       tc->tern_chunk_rows);
    if (tc->tern_threshold < 1 || tc->tern_threshold > 127)
        return err_set("train.ternary.threshold: expected 1 .. 127 (an int8 accumulator), got %d", tc->tern_threshold);
    if (tc->tern_scale_every < 1 || tc->tern_scale_every > 127)
        return err_set("train.ternary.scale_every: expected 1 .. 127 (an int8 accumulator), got %d",
                       tc->tern_scale_every);
    if (!(tc->tern_deadzone >= 0) || !isfinite(tc->tern_deadzone))
        return err_set("train.ternary.deadzone: must be >= 0, got %g", tc->tern_deadzone);
    if (!strcmp(tc->optimizer, "ternary") && !strcmp(tc->ternary, "bitnet"))
        return err_set("train.optimizer: ternary trains integer trits; model.ternary: bitnet is the other method "
                       "(fp32 latent weights): choose one");
    if (!strcmp(tc->optimizer, "ternary") && (tc->lora_r || tc->lora_init[0]))
        return err_set("train.optimizer: ternary trains the base itself; it does not combine with lora.*");
    if (!(tc->dropout >= 0 && tc->dropout < 1))
        return err_set("model.dropout: must be a probability in [0, 1), got %g", tc->dropout);
    if (!(tc->attn_dropout >= 0 && tc->attn_dropout < 1))
        return err_set("model.attn_dropout: must be a probability in [0, 1), got %g", tc->attn_dropout);
    if (!(tc->lora_dropout >= 0 && tc->lora_dropout < 1))
        return err_set("lora.dropout: must be in [0, 1), got %g", tc->lora_dropout);
    if (!isfinite(tc->lora_alpha)) return err_set("lora.alpha: must be a finite number, got %g", tc->lora_alpha);
    if (tc->lora_r && tc->freeze.n)
        return err_set("model.freeze: with lora.r the whole base is frozen already; leave model.freeze empty");
    if (tc->dist_zero < 0 || tc->dist_zero > 3)
        return err_set("dist.zero: expected 0, 1, 2 or 3, got %d", tc->dist_zero);
    if (tc->dist_tp < 1 || tc->dist_tp > DIST_TP_MAX)
        return err_set("dist.tp: expected 1 .. %d ranks per replica, got %d", DIST_TP_MAX, tc->dist_tp);
    if (tc->dist_tp > 1 && !strcmp(tc->optimizer, "ternary"))
        return err_set("train.optimizer: ternary with dist.tp %d is not supported; use dist.tp 1", tc->dist_tp);
    if (!(tc->dist_timeout_s > 0) || !isfinite(tc->dist_timeout_s))
        return err_set("dist.timeout_s: must be a positive number of seconds, got %g", tc->dist_timeout_s);
    if (!(tc->dist_bucket_mb > 0) || !isfinite(tc->dist_bucket_mb))
        return err_set("dist.bucket_mb: must be positive, got %g", tc->dist_bucket_mb);
    if (strcmp(tc->dist_comm, "auto") && strcmp(tc->dist_comm, "tcp") && strcmp(tc->dist_comm, "mpi") &&
        strcmp(tc->dist_comm, "nccl"))
        return err_set("dist.comm: expected auto, tcp, mpi or nccl, got \"%s\"", tc->dist_comm);
    int mode;
    if (backend_attention_parse(tc->attention, &mode)) return err_prefix("backend.attention");
    if (backend_gemm_tune_parse(tc->gemm_tune, &mode)) return err_prefix("backend.gemm_tune");
    if (!tc->data_train[0]) return err_set("data.train: no training data given");
    if (strcmp(tc->data_format, "text") && strcmp(tc->data_format, "sft"))
        return err_set("data.format: expected text or sft, got \"%s\"", tc->data_format);
    int sft = !strcmp(tc->data_format, "sft");
    if (tc->data_chat_template[0] && !sft)
        return err_set("data.chat_template: is set but data.format is %s (set data.format: sft)", tc->data_format);
    if (strcmp(tc->data_train_on, "completion") && strcmp(tc->data_train_on, "all"))
        return err_set("data.train_on: expected completion or all, got \"%s\"", tc->data_train_on);
    if (!sft && strcmp(tc->data_train_on, "completion"))
        return err_set("data.train_on: is set but data.format is %s (set data.format: sft)", tc->data_format);
    if (tc->data_chat_template[0] && strcmp(tc->data_chat_template, "none")) {
        ChatTemplate ct;
        if (chat_template_named(tc->data_chat_template, &ct)) return err_prefix("data.chat_template");
    }
    if (strcmp(tc->data_objective, "causal") && strcmp(tc->data_objective, "mlm"))
        return err_set("data.objective: expected causal or mlm, got \"%s\"", tc->data_objective);
    int mlm = !strcmp(tc->data_objective, "mlm");
    if (mlm && sft) return err_set("data.objective: mlm needs data.format text, not sft");
    if (mlm && !(tc->data_mlm_prob > 0 && tc->data_mlm_prob < 1))
        return err_set("data.mlm.prob: must be between 0 and 1 (exclusive), got %g", tc->data_mlm_prob);
    if (!mlm && tc->data_mlm_whole_word)
        return err_set("data.mlm.whole_word: is set but data.objective is %s (set data.objective: mlm)",
                       tc->data_objective);
    if (tc->data_pack)
        return err_set("data.pack: packing is not supported yet (examples sharing a row would attend to each other "
                       "without per-example attention segments); leave it false: each example is padded to "
                       "train.seq_len");
    if (!tc->out_dir[0]) return err_set("out_dir: must not be empty");
    if (tc->eval_mcq_task[0] && !tc->eval_mcq_data[0])
        return err_set("eval.mcq.data: eval.mcq.task is set but no data file is given");
    return 0;
}

/* s double-quoted with escapes into buf (n bytes); the length written. */
static size_t quote_into(char *buf, size_t n, const char *s)
{
    size_t o = 0;
    if (n < 3) return 0;
    buf[o++] = '"';
    for (; *s && o + 3 < n; s++) {
        if (*s == '"' || *s == '\\') buf[o++] = '\\';
        buf[o++] = *s;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return o;
}

void train_config_warn(const TrainConfig *tc, FILE *f)
{
    if (tc->min_lr > tc->lr)
        fprintf(f, "anvil: warning: train.min_lr %g is above train.lr %g: the schedule decays upwards\n", tc->min_lr,
                tc->lr);
    if (tc->warmup_steps > tc->steps)
        fprintf(f, "anvil: warning: train.warmup_steps %d is more than train.steps %d: the run ends inside the warmup\n",
                tc->warmup_steps, tc->steps);
    if (tc->eval_mcq_data[0] && !tc->eval_mcq_task[0])
        fprintf(f, "anvil: warning: eval.mcq.data is set but eval.mcq.task is not: no multiple-choice evaluation runs\n");
}

/* A YAML scalar for a value: strings double-quoted with escapes. */
static void value_text(const TrainConfig *tc, const KeyDef *k, char *buf, size_t n)
{
    const char *field = (const char *)tc + k->offset;
    switch (k->type) {
    case CT_INT: snprintf(buf, n, "%d", *(const int *)field); break;
    case CT_BATCH:
        if (*(const int *)field) snprintf(buf, n, "%d", *(const int *)field);
        else snprintf(buf, n, "auto");
        break;
    case CT_LONG: snprintf(buf, n, "%ld", *(const long *)field); break;
    case CT_U64: snprintf(buf, n, "%llu", (unsigned long long)*(const uint64_t *)field); break;
    case CT_FLOAT: { /* the shortest decimal that reads back as the same float (0.003, not 0.00300000003) */
        float x = *(const float *)field;
        for (int p = 1; p <= 9; p++) {
            snprintf(buf, n, "%.*g", p, (double)x);
            if (strtof(buf, NULL) == x) break;
        }
        break;
    }
    case CT_BOOL: snprintf(buf, n, "%s", *(const int *)field ? "true" : "false"); break;
    case CT_TRI: {
        int v = *(const int *)field;
        snprintf(buf, n, "%s", v < 0 ? "null" : v ? "true" : "false");
        break;
    }
    case CT_LIST: {
        const CfgList *l = (const CfgList *)field;
        size_t o = (size_t)snprintf(buf, n, "[");
        for (int i = 0; i < l->n && o + 4 < n; i++) {
            if (i) o += (size_t)snprintf(buf + o, n - o, ", ");
            o += quote_into(buf + o, n - o, l->item[i]);
        }
        if (o + 1 < n) snprintf(buf + o, n - o, "]");
        break;
    }
    case CT_STR: {
        size_t o = 0;
        buf[o++] = '"';
        for (const char *s = field; *s && o + 3 < n; s++) {
            if (*s == '"' || *s == '\\') buf[o++] = '\\';
            buf[o++] = *s;
        }
        buf[o++] = '"';
        buf[o] = '\0';
        break;
    }
    }
}

char *train_config_to_yaml(const TrainConfig *tc)
{
    size_t cap = 8192, len = 0;
    char *out = xmalloc(cap);
    out[0] = '\0';
    char sect[KEY_MAX] = "", sub[KEY_MAX] = "";
    for (size_t i = 0; i < ARRAY_LEN(keys); i++) {
        const KeyDef *k = &keys[i];
        /* the longest value: a full list, every character escaped */
        static char val[CFG_LIST_MAX * (2 * CFG_ITEM_MAX + 4) + 8], line[sizeof(val) + 3 * KEY_MAX];
        value_text(tc, k, val, sizeof(val));
        /* split "a.b.c" into up to three parts and indent by level */
        char parts[3][KEY_MAX] = {"", "", ""};
        int np = 0;
        const char *s = k->key;
        while (np < 3) {
            const char *d = strchr(s, '.');
            size_t l = d ? (size_t)(d - s) : strlen(s);
            snprintf(parts[np++], KEY_MAX, "%.*s", (int)l, s);
            if (!d) break;
            s = d + 1;
        }
        line[0] = '\0';
        size_t o = 0;
        if (np == 1) {
            sect[0] = sub[0] = '\0';
            o += snprintf(line + o, sizeof(line) - o, "%s: %s\n", parts[0], val);
        } else {
            if (strcmp(sect, parts[0])) {
                o += snprintf(line + o, sizeof(line) - o, "%s:\n", parts[0]);
                snprintf(sect, KEY_MAX, "%s", parts[0]);
                sub[0] = '\0';
            }
            if (np == 2) {
                sub[0] = '\0';
                o += snprintf(line + o, sizeof(line) - o, "  %s: %s\n", parts[1], val);
            } else {
                if (strcmp(sub, parts[1])) {
                    o += snprintf(line + o, sizeof(line) - o, "  %s:\n", parts[1]);
                    snprintf(sub, KEY_MAX, "%s", parts[1]);
                }
                o += snprintf(line + o, sizeof(line) - o, "    %s: %s\n", parts[2], val);
            }
        }
        if (len + o + 1 > cap) out = xrealloc(out, cap = 2 * (len + o + 1));
        memcpy(out + len, line, o + 1);
        len += o;
    }
    return out;
}

void train_config_print_keys(void)
{
    static const char *tn[] = {"int", "int", "int", "float", "string", "bool", "bool", "list", "int or auto"};
    printf("| key | type | default | meaning |\n|---|---|---|---|\n");
    for (size_t i = 0; i < ARRAY_LEN(keys); i++)
        printf("| `%s` | %s | `%s` | %s |\n", keys[i].key, tn[keys[i].type],
               keys[i].def[0] ? keys[i].def : keys[i].type == CT_LIST ? "[]" : "\"\"",
               keys[i].doc);
}
