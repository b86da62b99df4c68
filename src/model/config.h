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
} ModelConfig;

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
/* Parse "gpt2" / "llama" (also "mistral", "qwen2" -> llama). -1 if unknown. */
int model_family_parse(const char *s, Family *f);
const char *model_family_name(Family f);

/* Sizes derived from the config. */
static inline int cfg_q_dim(const ModelConfig *c) { return c->n_head * c->head_dim; }
static inline int cfg_kv_dim(const ModelConfig *c) { return c->n_kv_head * c->head_dim; }
static inline int cfg_qkv_dim(const ModelConfig *c) { return cfg_q_dim(c) + 2 * cfg_kv_dim(c); }
/* Width of the first MLP matmul's output: d_ff (gpt2) or 2*d_ff ([gate|up], llama). */
static inline int cfg_fc_dim(const ModelConfig *c)
{
    return c->family == FAMILY_LLAMA ? 2 * c->d_ff : c->d_ff;
}

/* ---- the parameter table ----
 * Every parameter is a named tensor inside ONE flat fp32 buffer (the master
 * weights); gradients and optimizer moments use the same offsets. Internal
 * names and layouts (weights are (out, in) like torch.nn.Linear):
 *   wte (V,C)  wpe (P,C)  lm_head (V,C, untied only)  lnf.w (C)  lnf.b (C)
 *   h.L.ln1.w/b (C)  h.L.qkv.w (qkv_dim, C)  h.L.qkv.b (qkv_dim)
 *   h.L.o.w (C, q_dim)  h.L.o.b (C)  h.L.ln2.w/b (C)
 *   h.L.fc.w (fc_dim, C)  h.L.fc.b (fc_dim)  h.L.proj.w (C, d_ff)  h.L.proj.b (C)
 * qkv rows are [q heads | k heads | v heads]; llama fc rows are [gate | up].
 * Storage kind and trainable flag are per tensor so that frozen, quantized
 * and adapter tensors can join the table later without changing the model. */
enum { STORE_DENSE = 0 };

enum {
    PROLE_WTE, PROLE_WPE, PROLE_LM_HEAD, PROLE_LNF_W, PROLE_LNF_B,
    PROLE_LN1_W, PROLE_LN1_B, PROLE_QKV_W, PROLE_QKV_B, PROLE_O_W, PROLE_O_B,
    PROLE_LN2_W, PROLE_LN2_B, PROLE_FC_W, PROLE_FC_B, PROLE_PROJ_W, PROLE_PROJ_B,
    PROLE_COUNT
};

typedef struct {
    char name[64];
    int role;  /* PROLE_* */
    int layer; /* -1 for tensors outside the blocks */
    int ndim;
    int64_t shape[2];
    size_t numel;
    size_t offset; /* element offset in the flat buffer */
    int dtype;     /* storage dtype of the master copy (DTYPE_F32 for now) */
    int storage;   /* STORE_DENSE */
    int trainable;
    int decay; /* weight decay applies (matrices) */
} Param;

typedef struct {
    Param *p;
    int n;
    size_t total; /* elements */
} ParamTable;

/* Build the table for a config (every tensor trainable). */
void param_table_build(ParamTable *pt, const ModelConfig *c);
void param_table_free(ParamTable *pt);
/* Index of the named tensor, or -1. */
int param_find(const ParamTable *pt, const char *name);
/* Index of (role, layer), or -1 if the model has no such tensor. */
int param_find_role(const ParamTable *pt, int role, int layer);
/* Total trainable parameter count. */
size_t param_count(const ParamTable *pt);

#endif
