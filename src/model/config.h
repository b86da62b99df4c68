/* config.h - model hyper-parameters, presets, and the parameter table.
 *
 * One ModelConfig describes both families (see docs/architecture.md):
 *   gpt2:  LayerNorm with bias, GELU(tanh) MLP with biases, learned positions,
 *          multi-head attention with biases, head tied to the embeddings.
 *   llama: RMSNorm, SwiGLU MLP, RoPE, grouped-query attention, optional q/k/v
 *          bias (Qwen2), tied or untied head.
 */
#ifndef ANVIL_MODEL_CONFIG_H
#define ANVIL_MODEL_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef enum { FAMILY_GPT2 = 0, FAMILY_LLAMA = 1 } Family;

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
    /* BitNet b1.58 (transformers' BitNetForCausalLM, model_type "bitnet"; docs/ternary.md): llama
     * family plus sub_norm (an RMSNorm on the attention output before o_proj, attn_sub_norm, and on
     * the MLP hidden before down_proj, ffn_sub_norm) and mlp_relu2 (the gated MLP's activation is
     * relu(x)^2, hidden_act "relu2", instead of silu). */
    int sub_norm, mlp_relu2;
    int ternary; /* TERNARY_*: how the block linears are quantized in the forward */
    int tern_group; /* integer-ternary tensors: weights per exponent group (0 = TERN_DEFAULT_GROUP) */
    int tern_fused; /* integer-ternary tensors updated inside the backward (train.ternary.fused) */
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
static inline int cfg_fc_dim(const ModelConfig *c)
{
    return c->family == FAMILY_LLAMA ? 2 * c->d_ff : c->d_ff;
}

/* The tensors of a config and their kinds: model/params.h. */

#endif
