/* config.h - model hyper-parameters, presets, and the parameter table.
 *
 * One ModelConfig describes both families (see docs/architecture.md):
 *   gpt2:  LayerNorm with bias, GELU(tanh) MLP with biases, learned positions,
 *          multi-head attention with biases, head tied to the embeddings.
 *   llama: RMSNorm, SwiGLU MLP, RoPE, grouped-query attention, optional q/k/v
 *          bias (Qwen2), tied or untied head.
 *   bert:  encoders (BERT, RoBERTa): learned positions (from pos_offset) and token types with an
 *          embedding LayerNorm, post-LayerNorm blocks, exact (erf) GELU, biases everywhere,
 *          bidirectional attention over each sequence's valid tokens, the masked-LM head.
 */
#ifndef ANVIL_MODEL_CONFIG_H
#define ANVIL_MODEL_CONFIG_H

#include <stddef.h>
#include <stdint.h>

/* The most blocks a model may have (model_config_finish). */
#define CFG_MAX_LAYERS 1024

typedef enum { FAMILY_GPT2 = 0, FAMILY_LLAMA = 1, FAMILY_BERT = 2 } Family;

typedef struct {
    Family family;
    int n_layer;
    int n_head;
    int n_kv_head; /* = n_head for multi-head attention */
    int d_model;
    int head_dim; /* usually d_model / n_head */
    int d_ff;     /* MLP hidden width (gpt2: 4*d_model) */
    int max_seq_len;
    int vocab_size;
    float rope_theta; /* llama only */
    float norm_eps;
    int tie_embeddings;
    int qkv_bias;  /* biases on q/k/v (gpt2: yes, qwen2: yes, llama: no) */
    int o_bias;    /* bias on the attention output projection (gpt2) */
    int mlp_bias;  /* biases in the MLP (gpt2) */
    int bos_token_id, eos_token_id; /* -1 when unknown */
    /* The Hugging Face class written to config.json "architectures" and the
     * model_type ("gpt2", "llama", "mistral", "qwen2"). */
    char hf_arch[64];
    char hf_model_type[32];
    /* The RoPE scaling of LLaMA 3.x ("llama3"); factor 0 means none. */
    float rope_scale_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_orig_max_pos;
    /* Mixture of experts (llama family; docs/moe.md). moe_experts 0 = every MLP dense. A layer l
     * with (l + 1) % moe_every == 0 replaces its dense MLP (width d_ff) by a router over
     * moe_experts SwiGLU experts of width moe_d_ff, moe_top_k of them per token, plus an always-on
     * shared SwiGLU expert of width moe_shared_d_ff behind a sigmoid gate (0 = none, Qwen2-MoE). */
    int moe_experts, moe_top_k, moe_d_ff, moe_every, moe_shared_d_ff;
    /* Layers that keep their dense MLP whatever moe_every says (bit l % 8 of byte l / 8; Qwen2-MoE's
     * mlp_only_layers). */
    uint8_t moe_dense[CFG_MAX_LAYERS / 8];
    int moe_norm_topk;                 /* renormalise the top-k weights to sum 1 (Mixtral: yes) */
    float moe_aux_coef, moe_z_coef;    /* load-balancing and router z-loss coefficients */
    float moe_jitter;                  /* Mixtral's router_jitter_noise: while training, the MoE layer's input
                                        * times U(1 - j, 1 + j) per element (router and experts); 0 = off */
    /* BitNet b1.58 (transformers' BitNetForCausalLM, model_type "bitnet"; docs/ternary.md): llama
     * family plus sub_norm (an RMSNorm on the attention output before o_proj, attn_sub_norm, and on
     * the MLP hidden before down_proj, ffn_sub_norm) and mlp_relu2 (the gated MLP's activation is
     * relu(x)^2, hidden_act "relu2", instead of silu). */
    int sub_norm, mlp_relu2;
    int ternary; /* TERNARY_*: how the block linears are quantized in the forward */
    int tern_group; /* integer-ternary tensors: weights per exponent group (0 = TERN_DEFAULT_GROUP) */
    /* Encoder switches (the bert family sets them; 0 for the decoders). */
    int post_norm;       /* post-LN: the residual stream continues from each norm's output */
    int gelu_erf;        /* the exact GELU, 0.5 x (1 + erf(x / sqrt 2)), instead of the tanh form */
    int bidirectional;   /* attention over every valid position of the sequence */
    int type_vocab_size; /* token-type embeddings (0: none) */
    int pos_offset;      /* position id of the first token (RoBERTa: padding_idx + 1 = 2) */
    int mlm_head;        /* the MLM head: dense + GELU + LayerNorm, decoder tied to wte, with a bias */
    int pad_token_id;    /* -1 when unknown */
    int tern_fused; /* integer-ternary tensors updated inside the backward (train.ternary.fused) */
    int tern_chunk_rows; /* fused vocabulary tensors updated by row chunks of this many rows (0 automatic,
                          * -1 whole; train.ternary.chunk_rows) */
    int tern_frozen; /* integer-ternary tensors only read (eval, generate from an integer-ternary checkpoint):
                      * packed trits and exponents, no accumulators and no gradient */
    /* Dropout while training only (model.dropout, model.attn_dropout; docs/encoders.md), 0 = none: dropout
     * on the embedding output (bert: after the embedding LayerNorm) and on the attention and MLP branch
     * outputs before their residual sums; attn_dropout on the attention probabilities. Never read from a
     * config.json: only the keys turn it on. */
    float dropout, attn_dropout;
} ModelConfig;

/* model.ternary: TERNARY_BITNET makes every block linear a BitLinear (fp32 latent weights,
 * ternarized per tensor with absmean and activations quantized per token to 8 bits in the forward,
 * straight-through backward); the embeddings, norms and head stay full precision. */
enum { TERNARY_NONE = 0, TERNARY_BITNET = 1 };
/* train.ternary.group's default: 128 weights per power-of-two exponent. */
#define TERN_DEFAULT_GROUP 128

/* Fill *c with a named preset (gpt2-124m, gpt2-350m, gpt2-760m, gpt2-1.3b,
 * llama-1b, and the tiny test presets gpt2-tiny, llama-tiny). -1 if unknown. */
int model_preset(ModelConfig *c, const char *name);
/* A comma-separated list of preset names, for messages. */
const char *model_preset_names(void);
/* Defaults for a family before individual fields are set. */
void model_config_defaults(ModelConfig *c, Family f);
/* Fill derived fields (head_dim, d_ff, hf names) and check consistency;
 * -1 with err_set() naming the field. */
int model_config_finish(ModelConfig *c);
/* Parse "gpt2" / "llama" (also "mistral", "qwen2", "bitnet" -> llama). -1 if unknown. */
int model_family_parse(const char *s, Family *f);
/* The BitNet b1.58 architecture on a llama-family config: sub-norms, relu2, model_type "bitnet",
 * ternary BitLinear products. */
void model_config_bitnet(ModelConfig *c);
const char *model_family_name(Family f);
/* The config key of the first field that shapes tensors or changes results and differs between
 * a and b ("model.n_layer", "model.rope_theta", ...), or NULL when they describe the same model. */
const char *model_config_diff(const ModelConfig *a, const ModelConfig *b);

/* Sizes derived from the config. */
static inline int cfg_q_dim(const ModelConfig *c) { return c->n_head * c->head_dim; }
static inline int cfg_kv_dim(const ModelConfig *c) { return c->n_kv_head * c->head_dim; }
static inline int cfg_qkv_dim(const ModelConfig *c) { return cfg_q_dim(c) + 2 * cfg_kv_dim(c); }
/* Width of the first MLP matmul's output: d_ff (gpt2) or 2*d_ff ([gate|up], llama). */
/* LayerNorm with biases (gpt2, bert) rather than RMSNorm; learned absolute positions. */
static inline int cfg_layernorm(const ModelConfig *c) { return c->family != FAMILY_LLAMA; }
static inline int cfg_learned_pos(const ModelConfig *c) { return c->family != FAMILY_LLAMA; }
static inline int cfg_fc_dim(const ModelConfig *c)
{
    return c->family == FAMILY_LLAMA ? 2 * c->d_ff : c->d_ff;
}

/* Whether block l is listed in moe_dense, and the count of listed blocks. */
static inline int cfg_moe_dense(const ModelConfig *c, int l)
{
    return l >= 0 && l < CFG_MAX_LAYERS && (c->moe_dense[l / 8] >> (l % 8) & 1);
}
static inline int cfg_moe_dense_count(const ModelConfig *c)
{
    int n = 0;
    for (int l = 0; l < c->n_layer && l < CFG_MAX_LAYERS; l++) n += cfg_moe_dense(c, l);
    return n;
}
/* Whether block l has the MoE MLP. */
static inline int cfg_is_moe(const ModelConfig *c, int l)
{
    return c->moe_experts > 0 && c->moe_every > 0 && (l + 1) % c->moe_every == 0 && !cfg_moe_dense(c, l);
}
/* MoE layers of the model. */
static inline int cfg_moe_layers(const ModelConfig *c)
{
    int n = 0;
    for (int l = 0; l < c->n_layer; l++) n += cfg_is_moe(c, l);
    return n;
}

/* The tensors of a config and their kinds: model/params.h. */

#endif
