/* hf.c - Hugging Face config.json and tensor names <-> ModelConfig and the
 * parameter table (see hf.h, docs/formats.md). */
#include "io/hf.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "io/bnb.h"
#include "io/fsutil.h"
#include "io/safetensors.h"
#include "model/model.h"

/* Significant digits that print any fp32 value exactly (FLT_DECIMAL_DIG). */
#define FLOAT_DIGITS 9
/* transformers' class defaults for keys a config.json may omit. */
#define GPT2_DEFAULT_POSITIONS 1024
#define GPT2_DEFAULT_EPS 1e-5f
#define LLAMA_DEFAULT_EPS 1e-6f
#define LLAMA_DEFAULT_THETA 10000.0f
#define LLAMA_DEFAULT_POSITIONS 2048
#define MISTRAL_DEFAULT_POSITIONS 131072
#define QWEN2_DEFAULT_POSITIONS 32768
#define MIXTRAL_DEFAULT_POSITIONS 131072
#define MIXTRAL_DEFAULT_THETA 1e6f
/* transformers' MixtralConfig / Qwen2MoeConfig router_aux_loss_coef default */
#define MOE_HF_DEFAULT_AUX 0.001f
#define BERT_DEFAULT_POSITIONS 512
#define BERT_DEFAULT_EPS 1e-12f
#define BERT_DEFAULT_TYPES 2
#define BERT_DEFAULT_PAD 0
#define ROBERTA_DEFAULT_PAD 1

/* ---- the supported classes ---- */

typedef struct {
    const char *arch, *model_type;
    Family family;
} HfClass;

static const HfClass hf_classes[] = {
    {"GPT2LMHeadModel", "gpt2", FAMILY_GPT2},
    {"LlamaForCausalLM", "llama", FAMILY_LLAMA},
    {"MistralForCausalLM", "mistral", FAMILY_LLAMA},
    {"Qwen2ForCausalLM", "qwen2", FAMILY_LLAMA},
    {"MixtralForCausalLM", "mixtral", FAMILY_LLAMA},
    {"Qwen2MoeForCausalLM", "qwen2_moe", FAMILY_LLAMA},
    {"BitNetForCausalLM", "bitnet", FAMILY_LLAMA},
    {"BertForMaskedLM", "bert", FAMILY_BERT},
    {"RobertaForMaskedLM", "roberta", FAMILY_BERT},
    {"BertModel", "bert", FAMILY_BERT},
    {"RobertaModel", "roberta", FAMILY_BERT},
};
#define HF_CLASS_LIST                                                                                   \
    "GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, MixtralForCausalLM, " \
    "Qwen2MoeForCausalLM, BitNetForCausalLM, BertForMaskedLM, BertModel, RobertaForMaskedLM, RobertaModel"

/* ---- typed access to config.json with messages naming file and key ---- */

typedef struct {
    const char *path; /* for messages */
} Cfg;

static void json_brief(const json_t *v, char *buf, size_t n)
{
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    snprintf(buf, n, "%.40s%s", s ? s : "?", s && strlen(s) > 40 ? "..." : "");
    free(s);
}

static int type_error(const Cfg *c, const char *key, const char *want, const json_t *got)
{
    char b[64];
    json_brief(got, b, sizeof(b));
    return err_set("%s: %s: expected %s, got %s", c->path, key, want, b);
}

/* Upper limits of the size keys: the limits model_config_finish enforces (src/model/config.c),
 * checked here first so that the message names the config.json key. They are far above every
 * published model and keep every size and product an int (docs/formats.md). */
#define HF_MAX_LAYERS 1024
#define HF_MAX_WIDTH (1 << 16) /* hidden size; heads x head_dim */
#define HF_MAX_HEADS 1024
#define HF_MAX_HEAD_DIM 1024
#define HF_MAX_FF (1 << 20)
#define HF_MAX_VOCAB (1 << 24)
#define HF_MAX_SEQ (1 << 24)

static const struct {
    const char *key;
    int max;
} hf_limits[] = {
    {"n_embd", HF_MAX_WIDTH},
    {"hidden_size", HF_MAX_WIDTH},
    {"n_layer", HF_MAX_LAYERS},
    {"num_hidden_layers", HF_MAX_LAYERS},
    {"n_head", HF_MAX_HEADS},
    {"num_attention_heads", HF_MAX_HEADS},
    {"num_key_value_heads", HF_MAX_HEADS},
    {"head_dim", HF_MAX_HEAD_DIM},
    {"n_inner", HF_MAX_FF},
    {"intermediate_size", HF_MAX_FF},
    {"vocab_size", HF_MAX_VOCAB},
    {"n_positions", HF_MAX_SEQ},
    {"max_position_embeddings", HF_MAX_SEQ},
    {"sliding_window", INT32_MAX},
};

static int key_limit(const char *key)
{
    for (size_t i = 0; i < ARRAY_LEN(hf_limits); i++)
        if (!strcmp(hf_limits[i].key, key)) return hf_limits[i].max;
    return INT32_MAX;
}

/* Integer key. Absent or null: *out = def, or an error when required. */
static int get_int(const Cfg *c, json_t *obj, const char *key, const char *shown, int required, int def,
                   int min, int *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required) return err_set("%s: %s: missing", c->path, shown);
        *out = def;
        return 0;
    }
    if (!json_is_integer(v)) return type_error(c, shown, "an integer", v);
    json_int_t x = json_integer_value(v);
    int max = key_limit(key);
    if (x < min || x > max)
        return err_set("%s: %s: %lld is out of range (%d .. %d)", c->path, shown, (long long)x, min, max);
    *out = (int)x;
    return 0;
}

/* Number key (integer or real), positive. */
static int get_num(const Cfg *c, json_t *obj, const char *key, const char *shown, int required, float def,
                   float *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required) return err_set("%s: %s: missing", c->path, shown);
        *out = def;
        return 0;
    }
    if (!json_is_number(v)) return type_error(c, shown, "a number", v);
    double x = json_number_value(v);
    if (!(x > 0) || !isfinite((float)x))
        return err_set("%s: %s: must be positive, got %g", c->path, shown, x);
    *out = (float)x;
    return 0;
}

static int get_bool(const Cfg *c, json_t *obj, const char *key, int def, int *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v)) return type_error(c, key, "true or false", v);
    *out = json_is_true(v);
    return 0;
}

/* String key; *out is NULL when absent or null. */
static int get_str(const Cfg *c, json_t *obj, const char *key, const char *shown, const char **out)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v)) return type_error(c, shown, "a string", v);
    *out = json_string_value(v);
    return 0;
}

/* bos/eos: an integer, null (-1), or a list whose first entry is used (LLaMA 3). */
static int get_token_id(const Cfg *c, json_t *obj, const char *key, int def, int *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (json_is_null(v)) {
        *out = -1;
        return 0;
    }
    if (json_is_array(v) && json_array_size(v) > 0) v = json_array_get(v, 0);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
        return type_error(c, key, "a token id", json_object_get(obj, key));
    *out = (int)json_integer_value(v);
    return 0;
}

/* ---- per family ---- */

static int read_gpt2(const Cfg *c, json_t *root, ModelConfig *m)
{
    int n_inner;
    const char *act;
    int scale_weights, by_layer;
    if (get_int(c, root, "n_embd", "n_embd", 1, 0, 1, &m->d_model) ||
        get_int(c, root, "n_layer", "n_layer", 1, 0, 1, &m->n_layer) ||
        get_int(c, root, "n_head", "n_head", 1, 0, 1, &m->n_head) ||
        get_int(c, root, "vocab_size", "vocab_size", 1, 0, 1, &m->vocab_size) ||
        get_int(c, root, "n_positions", "n_positions", 0, GPT2_DEFAULT_POSITIONS, 1, &m->max_seq_len) ||
        get_int(c, root, "n_inner", "n_inner", 0, 0, 1, &n_inner) ||
        get_num(c, root, "layer_norm_epsilon", "layer_norm_epsilon", 0, GPT2_DEFAULT_EPS, &m->norm_eps) ||
        get_bool(c, root, "tie_word_embeddings", 1, &m->tie_embeddings) ||
        get_str(c, root, "activation_function", "activation_function", &act) ||
        get_bool(c, root, "scale_attn_weights", 1, &scale_weights) ||
        get_bool(c, root, "scale_attn_by_inverse_layer_idx", 0, &by_layer) ||
        get_token_id(c, root, "bos_token_id", m->bos_token_id, &m->bos_token_id) ||
        get_token_id(c, root, "eos_token_id", m->eos_token_id, &m->eos_token_id))
        return -1;
    m->d_ff = n_inner; /* 0 (null) -> 4*n_embd in model_config_finish */
    /* both names are the tanh approximation that backend gelu_fwd computes */
    if (act && strcmp(act, "gelu_new") && strcmp(act, "gelu_pytorch_tanh"))
        return err_set("%s: activation_function: unsupported \"%s\" (supported: gelu_new, gelu_pytorch_tanh)",
                       c->path, act);
    if (!scale_weights) return err_set("%s: scale_attn_weights: false is not supported", c->path);
    if (by_layer) return err_set("%s: scale_attn_by_inverse_layer_idx: true is not supported", c->path);
    return 0;
}

/* RoPE: "rope_parameters" (transformers >= 5) or "rope_theta" + "rope_scaling"
 * (earlier). rope_type default or llama3. */
static int read_rope(const Cfg *c, json_t *root, ModelConfig *m)
{
    json_t *rp = json_object_get(root, "rope_parameters");
    const char *where = "rope_parameters";
    if (rp && !json_is_null(rp) && !json_is_object(rp)) return type_error(c, where, "an object", rp);
    if (get_num(c, root, "rope_theta", "rope_theta", 0, LLAMA_DEFAULT_THETA, &m->rope_theta)) return -1;
    if (!rp || json_is_null(rp)) {
        /* older configs: theta at the top, scaling (or null) in rope_scaling */
        rp = json_object_get(root, "rope_scaling");
        where = "rope_scaling";
        if (!rp || json_is_null(rp)) return 0;
        if (!json_is_object(rp)) return type_error(c, where, "an object", rp);
    } else if (json_object_get(rp, "rope_theta")) {
        char k[64];
        snprintf(k, sizeof(k), "%s.rope_theta", where);
        if (get_num(c, rp, "rope_theta", k, 1, 0, &m->rope_theta)) return -1;
    }
    const char *type;
    char k[96];
    snprintf(k, sizeof(k), "%s.rope_type", where);
    if (get_str(c, rp, "rope_type", k, &type)) return -1;
    if (!type) { /* rope_scaling used "type" before "rope_type" */
        snprintf(k, sizeof(k), "%s.type", where);
        if (get_str(c, rp, "type", k, &type)) return -1;
    }
    if (!type || !strcmp(type, "default")) return 0;
    if (strcmp(type, "llama3") != 0)
        return err_set("%s: %s: unsupported \"%s\" (supported: default, llama3)", c->path, k, type);
    char k1[96], k2[96], k3[96], k4[96];
    snprintf(k1, sizeof(k1), "%s.factor", where);
    snprintf(k2, sizeof(k2), "%s.low_freq_factor", where);
    snprintf(k3, sizeof(k3), "%s.high_freq_factor", where);
    snprintf(k4, sizeof(k4), "%s.original_max_position_embeddings", where);
    if (get_num(c, rp, "factor", k1, 1, 0, &m->rope_scale_factor) ||
        get_num(c, rp, "low_freq_factor", k2, 1, 0, &m->rope_low_freq_factor) ||
        get_num(c, rp, "high_freq_factor", k3, 1, 0, &m->rope_high_freq_factor) ||
        get_int(c, rp, "original_max_position_embeddings", k4, 1, 0, 1, &m->rope_orig_max_pos))
        return -1;
    if (!(m->rope_high_freq_factor > m->rope_low_freq_factor))
        return err_set("%s: %s: must be larger than low_freq_factor", c->path, k3);
    return 0;
}

/* Sliding-window attention equals full causal attention over sequences no
 * longer than the window, so a window below the context length caps
 * max_seq_len (with a warning) instead of refusing the model. */
static int read_window(const Cfg *c, json_t *root, ModelConfig *m, int qwen2)
{
    int window, use = 1;
    if (get_int(c, root, "sliding_window", "sliding_window", 0, 0, 0, &window)) return -1; /* 0: none (Qwen2-MoE) */
    if (qwen2 && get_bool(c, root, "use_sliding_window", 0, &use)) return -1;
    if (!use || window == 0 || window >= m->max_seq_len) return 0;
    fprintf(stderr,
            "anvil: warning: %s: sliding_window %d is shorter than max_position_embeddings %d; anvil attends "
            "over the full context, so the context is capped at %d tokens\n",
            c->path, window, m->max_seq_len, window);
    m->max_seq_len = window;
    return 0;
}

/* A coefficient: a finite number >= 0 (absent or null: def). */
static int get_coef(const Cfg *c, json_t *obj, const char *key, float def, float *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_number(v)) return type_error(c, key, "a number", v);
    double x = json_number_value(v);
    if (!(x >= 0) || !isfinite(x)) return err_set("%s: %s: must be a finite number >= 0, got %g", c->path, key, x);
    *out = (float)x;
    return 0;
}

/* The experts of MixtralForCausalLM (every layer; intermediate_size is each expert's width) or
 * Qwen2MoeForCausalLM (every decoder_sparse_step-th layer, moe_intermediate_size, a shared expert
 * behind a sigmoid gate; dense layers keep intermediate_size). */
static int read_moe(const Cfg *c, json_t *root, ModelConfig *m, int qwen2_moe)
{
    int norm = 1;
    if (get_int(c, root, qwen2_moe ? "num_experts" : "num_local_experts", qwen2_moe ? "num_experts" : "num_local_experts",
                1, 0, 1, &m->moe_experts) ||
        get_int(c, root, "num_experts_per_tok", "num_experts_per_tok", 1, 0, 1, &m->moe_top_k) ||
        get_coef(c, root, "router_aux_loss_coef", MOE_HF_DEFAULT_AUX, &m->moe_aux_coef))
        return -1;
    if (!qwen2_moe) {
        if (get_coef(c, root, "router_jitter_noise", 0.0f, &m->moe_jitter)) return -1;
        if (m->moe_jitter >= 1)
            return err_set("%s: router_jitter_noise: must be below 1, got %g", c->path, (double)m->moe_jitter);
        m->moe_d_ff = m->d_ff;
        m->moe_every = 1;
        m->moe_norm_topk = 1;
        return 0;
    }
    if (get_int(c, root, "moe_intermediate_size", "moe_intermediate_size", 1, 0, 1, &m->moe_d_ff) ||
        get_int(c, root, "shared_expert_intermediate_size", "shared_expert_intermediate_size", 0, 0, 0,
                &m->moe_shared_d_ff) ||
        get_int(c, root, "decoder_sparse_step", "decoder_sparse_step", 0, 1, 1, &m->moe_every) ||
        get_bool(c, root, "norm_topk_prob", 0, &norm))
        return -1;
    m->moe_norm_topk = norm;
    json_t *only = json_object_get(root, "mlp_only_layers");
    if (!only || json_is_null(only)) return 0;
    if (!json_is_array(only)) return type_error(c, "mlp_only_layers", "a list of layer numbers", only);
    size_t i;
    json_t *v;
    json_array_foreach(only, i, v)
    {
        double x = json_is_number(v) ? json_number_value(v) : -1;
        if (!json_is_integer(v) || x < 0 || x >= m->n_layer)
            return err_set("%s: mlp_only_layers[%zu]: expected a layer number in 0 .. %d", c->path, i, m->n_layer - 1);
        int l = (int)x;
        m->moe_dense[l / 8] |= (uint8_t)(1u << (l % 8));
    }
    return 0;
}

static int read_llama(const Cfg *c, json_t *root, ModelConfig *m, const char *model_type)
{
    int mixtral = !strcmp(model_type, "mixtral"), qwen2_moe = !strcmp(model_type, "qwen2_moe");
    int qwen2 = !strcmp(model_type, "qwen2") || qwen2_moe, mistral = !strcmp(model_type, "mistral") || mixtral;
    int def_pos = qwen2     ? QWEN2_DEFAULT_POSITIONS
                  : mixtral ? MIXTRAL_DEFAULT_POSITIONS
                  : mistral ? MISTRAL_DEFAULT_POSITIONS
                            : LLAMA_DEFAULT_POSITIONS;
    if (mixtral) m->rope_theta = MIXTRAL_DEFAULT_THETA;
    int attn_bias = 0, mlp_bias = 0;
    const char *act;
    if (get_int(c, root, "hidden_size", "hidden_size", 1, 0, 1, &m->d_model) ||
        get_int(c, root, "intermediate_size", "intermediate_size", 1, 0, 1, &m->d_ff) ||
        get_int(c, root, "num_hidden_layers", "num_hidden_layers", 1, 0, 1, &m->n_layer) ||
        get_int(c, root, "num_attention_heads", "num_attention_heads", 1, 0, 1, &m->n_head) ||
        get_int(c, root, "num_key_value_heads", "num_key_value_heads", 0, m->n_head, 1, &m->n_kv_head) ||
        get_int(c, root, "head_dim", "head_dim", 0, 0, 1, &m->head_dim) ||
        get_int(c, root, "vocab_size", "vocab_size", 1, 0, 1, &m->vocab_size) ||
        get_int(c, root, "max_position_embeddings", "max_position_embeddings", 0, def_pos, 1,
                &m->max_seq_len) ||
        get_num(c, root, "rms_norm_eps", "rms_norm_eps", 0, LLAMA_DEFAULT_EPS, &m->norm_eps) ||
        get_bool(c, root, "tie_word_embeddings", 0, &m->tie_embeddings) ||
        get_bool(c, root, "attention_bias", 0, &attn_bias) || get_bool(c, root, "mlp_bias", 0, &mlp_bias) ||
        get_str(c, root, "hidden_act", "hidden_act", &act) ||
        get_token_id(c, root, "bos_token_id", m->bos_token_id, &m->bos_token_id) ||
        get_token_id(c, root, "eos_token_id", m->eos_token_id, &m->eos_token_id) || read_rope(c, root, m) ||
        read_window(c, root, m, qwen2))
        return -1;
    int bitnet = !strcmp(model_type, "bitnet");
    if (bitnet) { /* BitNetForCausalLM: sub-norms, relu2 (its default); BitLinear products only with the
                   * bitnet quantization_config (without one transformers builds plain nn.Linear layers) */
        m->sub_norm = 1;
        m->mlp_relu2 = !act || !strcmp(act, "relu2");
        if (act && strcmp(act, "relu2") && strcmp(act, "silu"))
            return err_set("%s: hidden_act: unsupported \"%s\" for bitnet (supported: relu2, silu)", c->path, act);
    } else if (act && strcmp(act, "silu")) {
        return err_set("%s: hidden_act: unsupported \"%s\" (supported: silu)", c->path, act);
    }
    json_t *qc = json_object_get(root, "quantization_config");
    if (qc && json_is_object(qc)) {
        const char *qm = NULL;
        if (get_str(c, qc, "quant_method", "quantization_config.quant_method", &qm)) return -1;
        if (qm && !strcmp(qm, "bitnet")) m->ternary = TERNARY_BITNET;
    }
    if ((mixtral || qwen2_moe) && read_moe(c, root, m, qwen2_moe)) return -1;
    if (qwen2) {
        /* Qwen2 always has q/k/v biases and none on o_proj or the MLP. */
        m->qkv_bias = 1;
        m->o_bias = m->mlp_bias = 0;
    } else if (mistral) {
        m->qkv_bias = m->o_bias = m->mlp_bias = 0;
    } else {
        /* LlamaAttention: attention_bias covers q, k, v and o_proj. */
        m->qkv_bias = m->o_bias = attn_bias;
        m->mlp_bias = mlp_bias;
    }
    return 0;
}

/* BertConfig / RobertaConfig. RoBERTa's position ids start at pad_token_id + 1 (transformers'
 * create_position_ids_from_input_ids); the MLM head exists for the *ForMaskedLM classes. */
static int read_bert(const Cfg *c, json_t *root, ModelConfig *m, const HfClass *cls)
{
    int roberta = !strcmp(cls->model_type, "roberta");
    const char *act, *pos_type;
    if (get_int(c, root, "hidden_size", "hidden_size", 1, 0, 1, &m->d_model) ||
        get_int(c, root, "intermediate_size", "intermediate_size", 1, 0, 1, &m->d_ff) ||
        get_int(c, root, "num_hidden_layers", "num_hidden_layers", 1, 0, 1, &m->n_layer) ||
        get_int(c, root, "num_attention_heads", "num_attention_heads", 1, 0, 1, &m->n_head) ||
        get_int(c, root, "vocab_size", "vocab_size", 1, 0, 1, &m->vocab_size) ||
        get_int(c, root, "max_position_embeddings", "max_position_embeddings", 0, BERT_DEFAULT_POSITIONS, 1,
                &m->max_seq_len) ||
        get_int(c, root, "type_vocab_size", "type_vocab_size", 0, BERT_DEFAULT_TYPES, 0, &m->type_vocab_size) ||
        get_num(c, root, "layer_norm_eps", "layer_norm_eps", 0, BERT_DEFAULT_EPS, &m->norm_eps) ||
        get_bool(c, root, "tie_word_embeddings", 1, &m->tie_embeddings) ||
        get_str(c, root, "hidden_act", "hidden_act", &act) ||
        get_str(c, root, "position_embedding_type", "position_embedding_type", &pos_type) ||
        get_token_id(c, root, "pad_token_id", roberta ? ROBERTA_DEFAULT_PAD : BERT_DEFAULT_PAD, &m->pad_token_id) ||
        get_token_id(c, root, "bos_token_id", m->bos_token_id, &m->bos_token_id) ||
        get_token_id(c, root, "eos_token_id", m->eos_token_id, &m->eos_token_id))
        return -1;
    if (act && strcmp(act, "gelu"))
        return err_set("%s: hidden_act: unsupported \"%s\" (supported: gelu)", c->path, act);
    if (pos_type && strcmp(pos_type, "absolute"))
        return err_set("%s: position_embedding_type: unsupported \"%s\" (supported: absolute)", c->path, pos_type);
    m->mlm_head = strstr(cls->arch, "ForMaskedLM") != NULL;
    if (m->mlm_head && !m->tie_embeddings)
        return err_set("%s: tie_word_embeddings: false (an untied MLM decoder) is not supported", c->path);
    m->tie_embeddings = 1;
    if (roberta) {
        if (m->pad_token_id < 0) return err_set("%s: pad_token_id: RoBERTa needs one (positions start after it)", c->path);
        m->pos_offset = m->pad_token_id + 1;
        if (m->pos_offset >= m->max_seq_len)
            return err_set("%s: max_position_embeddings: %d leaves no position after pad_token_id %d", c->path,
                           m->max_seq_len, m->pad_token_id);
    }
    return 0;
}

/* Products of size keys, in 64 bits, against the same limits, naming the keys. */
static int check_products(const Cfg *c, const ModelConfig *m)
{
    int gpt2 = m->family == FAMILY_GPT2;
    const char *width = gpt2 ? "n_embd" : "hidden_size", *heads = gpt2 ? "n_head" : "num_attention_heads";
    if (m->head_dim > 0 && (int64_t)m->n_head * m->head_dim > HF_MAX_WIDTH)
        return err_set("%s: %s: %d heads x head_dim %d = %lld is larger than the limit %d", c->path, heads,
                       m->n_head, m->head_dim, (long long)m->n_head * m->head_dim, HF_MAX_WIDTH);
    if (m->head_dim > 0 && (int64_t)m->n_kv_head * m->head_dim > HF_MAX_WIDTH)
        return err_set("%s: num_key_value_heads: %d heads x head_dim %d is larger than the limit %d", c->path,
                       m->n_kv_head, m->head_dim, HF_MAX_WIDTH);
    if (gpt2 && m->d_ff == 0 && (int64_t)4 * m->d_model > HF_MAX_FF)
        return err_set("%s: n_embd: 4 x %d (n_inner null) is larger than the limit %d", c->path, m->d_model,
                       HF_MAX_FF);
    if ((int64_t)m->vocab_size * m->d_model > INT32_MAX)
        return err_set("%s: vocab_size: %d x %s %d = %lld embedding elements, more than %d", c->path,
                       m->vocab_size, width, m->d_model, (long long)m->vocab_size * m->d_model, INT32_MAX);
    if (gpt2 && (int64_t)m->max_seq_len * m->d_model > INT32_MAX)
        return err_set("%s: n_positions: %d x n_embd %d = %lld position elements, more than %d", c->path,
                       m->max_seq_len, m->d_model, (long long)m->max_seq_len * m->d_model, INT32_MAX);
    return 0;
}

int hf_read_config(const char *dir, ModelConfig *cfg)
{
    char *path = fs_join(dir, "config.json");
    Cfg c = {path};
    char *text = NULL;
    size_t n;
    json_t *root = NULL;
    int rc = -1;
    if (!fs_is_dir(dir)) {
        err_set("%s: %s", dir, fs_exists(dir) ? "not a directory" : "no such directory");
        goto out;
    }
    if (fs_read_file(path, &text, &n) != 0) goto out;
    json_error_t jerr;
    root = json_loadb(text, n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        err_set("%s: invalid JSON at line %d: %s", path, jerr.line, jerr.text);
        goto out;
    }
    if (!json_is_object(root)) {
        err_set("%s: expected a JSON object", path);
        goto out;
    }
    /* the class: architectures[0], else model_type */
    const char *arch = NULL, *mtype = NULL;
    json_t *archs = json_object_get(root, "architectures");
    if (archs && !json_is_null(archs)) {
        if (!json_is_array(archs) || json_array_size(archs) == 0 ||
            !json_is_string(json_array_get(archs, 0))) {
            type_error(&c, "architectures", "a list of class names", archs);
            goto out;
        }
        arch = json_string_value(json_array_get(archs, 0));
    }
    if (get_str(&c, root, "model_type", "model_type", &mtype)) goto out;
    const HfClass *cls = NULL;
    for (size_t i = 0; i < ARRAY_LEN(hf_classes); i++) {
        if (arch ? !strcmp(arch, hf_classes[i].arch) : mtype && !strcmp(mtype, hf_classes[i].model_type))
            cls = &hf_classes[i];
    }
    if (!cls) {
        if (arch)
            err_set("%s: architectures: unsupported \"%s\" (supported: %s)", path, arch, HF_CLASS_LIST);
        else if (mtype)
            err_set("%s: model_type: unsupported \"%s\" (supported: gpt2, llama, mistral, qwen2, mixtral, qwen2_moe, bitnet, bert, roberta)", path,
                    mtype);
        else
            err_set("%s: architectures: missing (and no model_type)", path);
        goto out;
    }
    model_config_defaults(cfg, cls->family);
    if (cls->family == FAMILY_GPT2   ? read_gpt2(&c, root, cfg)
        : cls->family == FAMILY_BERT ? read_bert(&c, root, cfg, cls)
                                     : read_llama(&c, root, cfg, cls->model_type))
        goto out;
    snprintf(cfg->hf_arch, sizeof(cfg->hf_arch), "%s", cls->arch);
    snprintf(cfg->hf_model_type, sizeof(cfg->hf_model_type), "%s", cls->model_type);
    if (check_products(&c, cfg)) goto out;
    if (model_config_finish(cfg) != 0) {
        err_prefix("%s", path);
        goto out;
    }
    rc = hf_has_weights(dir) ? hf_check_shapes(dir, cfg) : 0;
out:
    json_decref(root);
    free(text);
    free(path);
    return rc;
}

/* ---- tensor names and layouts ----
 * One entry per HF tensor: it fills rows [row0, row0+rows) of one parameter
 * (all of its columns). GPT-2's Conv1D stores weights (in, out), so those
 * entries are transposed: HF shape (K, rows) against our (rows, K). */
typedef struct {
    char name[96]; /* HF name as written */
    int param;     /* index in the ParamTable */
    int64_t row0, rows;
    int transpose;
    /* MoE: where transformers 5's in-memory layout (a state_dict saved by hand) keeps the same
     * rows, read only: the tensor `alt` whole, or slab `slab` of the 3-D tensor `fused`
     * (E, rows, cols) from its row frow0; "" when none */
    char alt[96], fused[96];
    int slab;
    int64_t frow0;
} HfMap;

/* GPT-2's Conv1D weights that are transposed, by role. */
static int gpt2_transposed(int role)
{
    return role == PROLE_QKV_W || role == PROLE_O_W || role == PROLE_FC_W || role == PROLE_PROJ_W;
}

static void map_add(HfMap **map, int *n, int *cap, int param, int64_t row0, int64_t rows, int transpose,
                    const char *fmt, ...) __attribute__((format(printf, 8, 9)));

static void map_add(HfMap **map, int *n, int *cap, int param, int64_t row0, int64_t rows, int transpose,
                    const char *fmt, ...)
{
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        *map = xrealloc(*map, (size_t)*cap * sizeof(HfMap));
    }
    HfMap *e = &(*map)[(*n)++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->name, sizeof(e->name), fmt, ap);
    va_end(ap);
    e->param = param;
    e->row0 = row0;
    e->rows = rows;
    e->transpose = transpose;
    e->fused[0] = e->alt[0] = '\0';
}

/* The fused-layout alternative of the entry just added. */
static void map_fused(HfMap *map, int n, int slab, int64_t frow0, const char *fmt, int l)
{
    HfMap *e = &map[n - 1];
    snprintf(e->fused, sizeof(e->fused), fmt, l);
    e->slab = slab;
    e->frow0 = frow0;
}

/* The MoE tensors of a llama-family layer (role PROLE_ROUTER_W .. PROLE_SH_GATE_W); 0 if role is not one. */
static int map_moe(const ModelConfig *cfg, const Param *p, int i, HfMap **map, int *n, int *cap)
{
    int l = p->layer, e = p->expert, qwen = !strcmp(cfg->hf_model_type, "qwen2_moe");
    /* transformers 5 names Mixtral's block "mlp" in memory and "block_sparse_moe" in checkpoints */
    int64_t F = cfg->moe_d_ff, Fs = cfg->moe_shared_d_ff;
    const char *blk = qwen ? "mlp" : "block_sparse_moe";
    const char *w1 = qwen ? "gate_proj" : "w1", *w3 = qwen ? "up_proj" : "w3", *w2 = qwen ? "down_proj" : "w2";
    char fused[96];
    switch (p->role) {
    case PROLE_ROUTER_W:
        map_add(map, n, cap, i, 0, p->shape[0], 0, "model.layers.%d.%s.gate.weight", l, blk);
        snprintf((*map)[*n - 1].alt, sizeof((*map)[*n - 1].alt), "model.layers.%d.mlp.gate.weight", l);
        return 1;
    case PROLE_EXP_FC_W:
        snprintf(fused, sizeof(fused), "model.layers.%%d.mlp.experts.gate_up_proj");
        map_add(map, n, cap, i, 0, F, 0, "model.layers.%d.%s.experts.%d.%s.weight", l, blk, e, w1);
        map_fused(*map, *n, e, 0, fused, l);
        map_add(map, n, cap, i, F, F, 0, "model.layers.%d.%s.experts.%d.%s.weight", l, blk, e, w3);
        map_fused(*map, *n, e, F, fused, l);
        return 1;
    case PROLE_EXP_PROJ_W:
        snprintf(fused, sizeof(fused), "model.layers.%%d.mlp.experts.down_proj");
        map_add(map, n, cap, i, 0, p->shape[0], 0, "model.layers.%d.%s.experts.%d.%s.weight", l, blk, e, w2);
        map_fused(*map, *n, e, 0, fused, l);
        return 1;
    case PROLE_SH_FC_W:
        map_add(map, n, cap, i, 0, Fs, 0, "model.layers.%d.mlp.shared_expert.gate_proj.weight", l);
        map_add(map, n, cap, i, Fs, Fs, 0, "model.layers.%d.mlp.shared_expert.up_proj.weight", l);
        return 1;
    case PROLE_SH_PROJ_W:
        map_add(map, n, cap, i, 0, p->shape[0], 0, "model.layers.%d.mlp.shared_expert.down_proj.weight", l);
        return 1;
    case PROLE_SH_GATE_W:
        map_add(map, n, cap, i, 0, p->shape[0], 0, "model.layers.%d.mlp.shared_expert_gate.weight", l);
        return 1;
    default:
        return 0;
    }
}

/* HF suffixes of one block's tensors, by role (NULL: split or absent). */
static const char *gpt2_suffix(int role)
{
    switch (role) {
    case PROLE_LN1_W:
        return "ln_1.weight";
    case PROLE_LN1_B:
        return "ln_1.bias";
    case PROLE_QKV_W:
        return "attn.c_attn.weight";
    case PROLE_QKV_B:
        return "attn.c_attn.bias";
    case PROLE_O_W:
        return "attn.c_proj.weight";
    case PROLE_O_B:
        return "attn.c_proj.bias";
    case PROLE_LN2_W:
        return "ln_2.weight";
    case PROLE_LN2_B:
        return "ln_2.bias";
    case PROLE_FC_W:
        return "mlp.c_fc.weight";
    case PROLE_FC_B:
        return "mlp.c_fc.bias";
    case PROLE_PROJ_W:
        return "mlp.c_proj.weight";
    case PROLE_PROJ_B:
        return "mlp.c_proj.bias";
    default:
        return NULL;
    }
}

static const char *llama_suffix(int role)
{
    switch (role) {
    case PROLE_LN1_W:
        return "input_layernorm.weight";
    case PROLE_O_W:
        return "self_attn.o_proj.weight";
    case PROLE_O_B:
        return "self_attn.o_proj.bias";
    case PROLE_LN2_W:
        return "post_attention_layernorm.weight";
    case PROLE_PROJ_W:
        return "mlp.down_proj.weight";
    case PROLE_PROJ_B:
        return "mlp.down_proj.bias";
    case PROLE_ATTN_SUB_W:
        return "self_attn.attn_sub_norm.weight";
    case PROLE_FFN_SUB_W:
        return "mlp.ffn_sub_norm.weight";
    default:
        return NULL;
    }
}

static const char *bert_suffix(int role)
{
    switch (role) {
    case PROLE_O_W: return "attention.output.dense.weight";
    case PROLE_O_B: return "attention.output.dense.bias";
    case PROLE_LN2_W: return "attention.output.LayerNorm.weight";
    case PROLE_LN2_B: return "attention.output.LayerNorm.bias";
    case PROLE_FC_W: return "intermediate.dense.weight";
    case PROLE_FC_B: return "intermediate.dense.bias";
    case PROLE_PROJ_W: return "output.dense.weight";
    case PROLE_PROJ_B: return "output.dense.bias";
    default: return NULL;
    }
}

/* The base model's prefix of an encoder's tensors: "bert." / "roberta." inside a *ForMaskedLM,
 * none in a BertModel / RobertaModel (read_mapped also tries the other spelling). */
static const char *bert_prefix(const ModelConfig *cfg)
{
    if (!cfg->mlm_head) return "";
    return !strcmp(cfg->hf_model_type, "roberta") ? "roberta." : "bert.";
}

/* The bert family's names. Our h.L.ln1 is the norm that made block L's input: the embedding
 * LayerNorm for block 0, block L-1's output LayerNorm after it; lnf is the last block's. */
static int bert_map_add(const ModelConfig *cfg, const Param *p, int i, HfMap **map, int *n, int *cap)
{
    const char *pre = bert_prefix(cfg), *sfx;
    int roberta = !strcmp(cfg->hf_model_type, "roberta");
    const char *head = roberta ? "lm_head." : "cls.predictions.";
    const char *tr = roberta ? "lm_head." : "cls.predictions.transform.";
    int l = p->layer;
    int64_t rows = p->shape[0], C = cfg->d_model;
    const char *wb = (p->role == PROLE_LN1_B || p->role == PROLE_LNF_B || p->role == PROLE_QKV_B ||
                      p->role == PROLE_MLM_B || p->role == PROLE_MLM_LN_B)
                         ? "bias"
                         : "weight";
    switch (p->role) {
    case PROLE_WTE: map_add(map, n, cap, i, 0, rows, 0, "%sembeddings.word_embeddings.weight", pre); break;
    case PROLE_WPE: map_add(map, n, cap, i, 0, rows, 0, "%sembeddings.position_embeddings.weight", pre); break;
    case PROLE_TTE: map_add(map, n, cap, i, 0, rows, 0, "%sembeddings.token_type_embeddings.weight", pre); break;
    case PROLE_LN1_W:
    case PROLE_LN1_B:
        if (l == 0) map_add(map, n, cap, i, 0, rows, 0, "%sembeddings.LayerNorm.%s", pre, wb);
        else map_add(map, n, cap, i, 0, rows, 0, "%sencoder.layer.%d.output.LayerNorm.%s", pre, l - 1, wb);
        break;
    case PROLE_LNF_W:
    case PROLE_LNF_B:
        map_add(map, n, cap, i, 0, rows, 0, "%sencoder.layer.%d.output.LayerNorm.%s", pre, cfg->n_layer - 1, wb);
        break;
    case PROLE_QKV_W:
    case PROLE_QKV_B:
        map_add(map, n, cap, i, 0, C, 0, "%sencoder.layer.%d.attention.self.query.%s", pre, l, wb);
        map_add(map, n, cap, i, C, C, 0, "%sencoder.layer.%d.attention.self.key.%s", pre, l, wb);
        map_add(map, n, cap, i, 2 * C, C, 0, "%sencoder.layer.%d.attention.self.value.%s", pre, l, wb);
        break;
    case PROLE_MLM_W:
    case PROLE_MLM_B: map_add(map, n, cap, i, 0, rows, 0, "%sdense.%s", tr, wb); break;
    case PROLE_MLM_LN_W:
    case PROLE_MLM_LN_B: map_add(map, n, cap, i, 0, rows, 0, "%s%s.%s", tr, roberta ? "layer_norm" : "LayerNorm", wb); break;
    case PROLE_MLM_BIAS: map_add(map, n, cap, i, 0, rows, 0, "%sbias", head); break;
    default:
        if (!(sfx = bert_suffix(p->role))) return -1;
        map_add(map, n, cap, i, 0, rows, 0, "%sencoder.layer.%d.%s", pre, l, sfx);
    }
    return 0;
}

/* The mapping for a config; every parameter row is covered exactly once. */
static int hf_map_build(const ModelConfig *cfg, const ParamTable *pt, HfMap **out, int *nout)
{
    HfMap *map = NULL;
    int n = 0, cap = 0;
    int gpt2 = cfg->family == FAMILY_GPT2;
    int64_t q = cfg_q_dim(cfg), kv = cfg_kv_dim(cfg), ff = cfg->d_ff;
    for (int i = 0; i < pt->n; i++) {
        const Param *p = &pt->p[i];
        int role = p->role, l = p->layer;
        const char *sfx;
        if (p->site >= 0) continue; /* adapters live in PEFT directories (io/peft.c), not in the model's */
        if (cfg->family == FAMILY_BERT) {
            if (bert_map_add(cfg, p, i, &map, &n, &cap)) goto unknown;
            continue;
        }
        if (gpt2) {
            switch (role) {
            case PROLE_WTE:
                map_add(&map, &n, &cap, i, 0, p->shape[0], 0, "transformer.wte.weight");
                break;
            case PROLE_WPE:
                map_add(&map, &n, &cap, i, 0, p->shape[0], 0, "transformer.wpe.weight");
                break;
            case PROLE_LNF_W:
                map_add(&map, &n, &cap, i, 0, p->shape[0], 0, "transformer.ln_f.weight");
                break;
            case PROLE_LNF_B:
                map_add(&map, &n, &cap, i, 0, p->shape[0], 0, "transformer.ln_f.bias");
                break;
            case PROLE_LM_HEAD:
                map_add(&map, &n, &cap, i, 0, p->shape[0], 0, "lm_head.weight");
                break;
            default:
                if (!(sfx = gpt2_suffix(role))) goto unknown;
                map_add(&map, &n, &cap, i, 0, p->shape[0], gpt2_transposed(role), "transformer.h.%d.%s", l,
                        sfx);
            }
            continue;
        }
        switch (role) {
        case PROLE_WTE:
            map_add(&map, &n, &cap, i, 0, p->shape[0], 0, "model.embed_tokens.weight");
            break;
        case PROLE_LNF_W:
            map_add(&map, &n, &cap, i, 0, p->shape[0], 0, "model.norm.weight");
            break;
        case PROLE_LM_HEAD:
            map_add(&map, &n, &cap, i, 0, p->shape[0], 0, "lm_head.weight");
            break;
        case PROLE_QKV_W:
        case PROLE_QKV_B: {
            const char *kind = role == PROLE_QKV_W ? "weight" : "bias";
            map_add(&map, &n, &cap, i, 0, q, 0, "model.layers.%d.self_attn.q_proj.%s", l, kind);
            map_add(&map, &n, &cap, i, q, kv, 0, "model.layers.%d.self_attn.k_proj.%s", l, kind);
            map_add(&map, &n, &cap, i, q + kv, kv, 0, "model.layers.%d.self_attn.v_proj.%s", l, kind);
            break;
        }
        case PROLE_FC_W:
        case PROLE_FC_B: { /* our fc rows are [gate | up] */
            const char *kind = role == PROLE_FC_W ? "weight" : "bias";
            map_add(&map, &n, &cap, i, 0, ff, 0, "model.layers.%d.mlp.gate_proj.%s", l, kind);
            map_add(&map, &n, &cap, i, ff, ff, 0, "model.layers.%d.mlp.up_proj.%s", l, kind);
            break;
        }
        default:
            if (map_moe(cfg, p, i, &map, &n, &cap)) break;
            if (!(sfx = llama_suffix(role))) goto unknown;
            map_add(&map, &n, &cap, i, 0, p->shape[0], 0, "model.layers.%d.%s", l, sfx);
        }
        continue;
    unknown:
        free(map);
        return err_set("%s: no Hugging Face name for parameter %s", cfg->hf_arch, p->name);
    }
    *out = map;
    *nout = n;
    return 0;
}

/* HF shape of a mapping entry. */
static int map_shape(const ParamTable *pt, const HfMap *e, int64_t shape[2])
{
    const Param *p = &pt->p[e->param];
    if (p->ndim == 1) {
        shape[0] = e->rows;
        return 1;
    }
    shape[0] = e->transpose ? p->shape[1] : e->rows;
    shape[1] = e->transpose ? e->rows : p->shape[1];
    return 2;
}

/* Copy between an HF-layout tensor and the flat buffer. to_flat: hf -> buf. */
static void map_copy(const ParamTable *pt, const HfMap *e, float *buf, float *hf, int to_flat)
{
    const Param *p = &pt->p[e->param];
    int64_t K = p->ndim == 2 ? p->shape[1] : 1;
    float *base = buf + p->offset + (size_t)(e->row0 * K);
    size_t numel = (size_t)(e->rows * K);
    if (!e->transpose) {
        if (to_flat)
            memcpy(base, hf, numel * sizeof(float));
        else
            memcpy(hf, base, numel * sizeof(float));
        return;
    }
    /* hf (K, rows) <-> ours (rows, K) */
    for (int64_t r = 0; r < e->rows; r++)
        for (int64_t k = 0; k < K; k++) {
            if (to_flat)
                base[r * K + k] = hf[k * e->rows + r];
            else
                hf[k * e->rows + r] = base[r * K + k];
        }
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape)
{
    size_t o = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < n) snprintf(buf + o, n - o, ")");
}

/* The GPT-2 checkpoints of the OpenAI release name tensors without the
 * "transformer." prefix (h.0.attn.c_attn.weight, wte.weight). */
#define GPT2_PREFIX "transformer."

/* Index of the first NaN or infinity in x[0..n), or n. */
static size_t first_nonfinite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return i;
    return n;
}

/* One entry's rows from slab e->slab of a fused (E, rows, cols) expert tensor. */
static int read_fused(const StTensor *t, const StFile *file, const ParamTable *pt, const HfMap *e, float *buf,
                      float **tmp, size_t *tmp_cap, const StTensor **last)
{
    const Param *p = &pt->p[e->param];
    int64_t cols = p->shape[1];
    if (t->ndim != 3 || e->slab >= t->shape[0] || t->shape[2] != cols || e->frow0 + e->rows > t->shape[1]) {
        char a[64];
        shape_str(a, sizeof(a), t->ndim, t->shape);
        return err_set("%s: %s: shape %s cannot hold expert %d's %lld x %lld rows", file->path, t->name, a, e->slab,
                       (long long)e->rows, (long long)cols);
    }
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16 && t->dtype != ST_F64)
        return err_set("%s: %s: dtype %s is not a floating type", file->path, t->name, st_dtype_name(t->dtype));
    if (!buf) return 0;
    if (t != *last) { /* converted once for all the entries it holds */
        if (t->numel > *tmp_cap) {
            free(*tmp);
            *tmp_cap = t->numel;
            *tmp = xmalloc(*tmp_cap * sizeof(float));
        }
        st_to_f32(t, *tmp);
        *last = t;
    }
    const float *src = *tmp + ((size_t)e->slab * t->shape[1] + (size_t)e->frow0) * cols;
    size_t n = (size_t)(e->rows * cols), bad = first_nonfinite(src, n);
    if (bad < n)
        return err_set("%s: %s: non-finite value (%g) in expert %d: the weights are corrupt or diverged", file->path,
                       t->name, (double)src[bad], e->slab);
    memcpy(buf + p->offset + (size_t)(e->row0 * cols), src, n * sizeof(float));
    return 0;
}

/* ---- BitNet's packed layout (transformers.integrations.bitnet) ----
 * A BitLinear weight (out, in) is stored as U8 (ceil(out / 4), in): byte [r][c] holds in bits 2i..2i+1
 * the trit + 1 of row i * R + r (R = the packed rows), beside "<name>_scale" (weight_scale, one value
 * s = 1 / gamma): the product is (x_q @ trits^T) / s. */
#define BITNET_PER_BYTE 4

/* The weight_scale of a packed BitLinear weight t where a float tensor of shape want is expected, or
 * NULL when t is not one. */
static const StTensor *bitnet_scale(const StSet *set, const StTensor *t, int nd, const int64_t *want)
{
    if (t->dtype != ST_U8 || nd != 2 || t->ndim != 2 || t->shape[1] != want[1] ||
        t->shape[0] != (want[0] + BITNET_PER_BYTE - 1) / BITNET_PER_BYTE)
        return NULL;
    char sname[300];
    snprintf(sname, sizeof(sname), "%s_scale", t->name);
    return st_set_find(set, sname, NULL);
}

/* The latent fp32 weights of a packed BitLinear: trit * gamma / p, p the fraction of nonzero trits,
 * so that anvil's BitLinear (absmean of the latent weight = gamma) ternarizes them back to exactly these
 * trits with exactly this scale: the imported model computes what transformers' BitLinear does. */
static int bitnet_unpack(const StFile *file, const StTensor *t, const StTensor *ws, const int64_t *want,
                         float *out)
{
    float s;
    if (ws->numel != 1 || st_to_f32(ws, &s) || !(s > 0) || !isfinite(s))
        return err_set("%s: %s: expected one positive finite weight_scale", file->path, ws->name);
    const uint8_t *pk = t->data;
    int64_t R = t->shape[0], rows = want[0], cols = want[1];
    size_t nz = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            int v = (pk[(r % R) * cols + c] >> (2 * (r / R))) & 3;
            if (v == 3) return err_set("%s: %s: invalid 2-bit code 3 at row %lld", file->path, t->name, (long long)r);
            out[r * cols + c] = (float)(v - 1);
            nz += v != 1;
        }
    double latent = nz ? (double)(rows * cols) / (double)nz / (double)s : 0.0; /* gamma / p */
    for (int64_t i = 0; i < rows * cols; i++) out[i] = (float)(out[i] * latent);
    return 0;
}

/* Fill buf from the tensors "<prefix><hf name>" of a set of files; `where`
 * names the file (or index) in messages about missing tensors. */
/* After entry i of the map: when it was the last one of its parameter, done (if any) gets that
 * parameter, whose values in buf are complete then. */
static void entry_done(const HfMap *map, const int *last, int i, int rc, void (*done)(void *, int), void *ctx)
{
    if (done && !rc && last[map[i].param] == i) done(ctx, map[i].param);
}

static int read_mapped_each(const StSet *set, const char *where, const char *prefix, const ModelConfig *cfg,
                            const ParamTable *pt, float *buf, void (*done)(void *, int), void *ctx)
{
    HfMap *map;
    int n;
    if (hf_map_build(cfg, pt, &map, &n) != 0) return -1;
    int *last = xmalloc(((size_t)pt->n + 1) * sizeof(int));
    for (int i = 0; i < pt->n; i++) last[i] = -1;
    for (int i = 0; i < n; i++) last[map[i].param] = i;
    float *tmp = NULL;
    const StTensor *fused_last = NULL; /* the fused tensor tmp holds */
    size_t tmp_cap = 0, plen = strlen(prefix);
    char name[256];
    int rc = 0;
    /* entry_done runs after every entry, also after a `continue` (it is the loop's increment) */
    for (int i = 0; i < n && rc == 0; entry_done(map, last, i, rc, done, ctx), i++) {
        const HfMap *e = &map[i];
        const StFile *file = NULL;
        snprintf(name, sizeof(name), "%s%s", prefix, e->name);
        const StTensor *t = st_set_find(set, name, &file);
        if (!t && !strncmp(e->name, GPT2_PREFIX, strlen(GPT2_PREFIX))) {
            snprintf(name + plen, sizeof(name) - plen, "%s", e->name + strlen(GPT2_PREFIX));
            t = st_set_find(set, name, &file);
        }
        if (!t && e->alt[0]) {
            snprintf(name, sizeof(name), "%s%s", prefix, e->alt);
            t = st_set_find(set, name, &file);
        }
        if (!t && e->fused[0]) { /* transformers 5's in-memory layout: one 3-D tensor per layer */
            snprintf(name, sizeof(name), "%s%s", prefix, e->fused);
            const StTensor *ft = st_set_find(set, name, &file);
            if (ft) {
                rc = read_fused(ft, file, pt, e, buf, &tmp, &tmp_cap, &fused_last);
                continue;
            }
        }
        if (!t && cfg->family == FAMILY_BERT) { /* the base model's tensors with or without its prefix */
            const char *base = !strcmp(cfg->hf_model_type, "roberta") ? "roberta." : "bert.";
            size_t bl = strlen(base);
            if (!strncmp(e->name, base, bl)) snprintf(name + plen, sizeof(name) - plen, "%s", e->name + bl);
            else snprintf(name + plen, sizeof(name) - plen, "%s%s", base, e->name);
            t = st_set_find(set, name, &file);
        }
        if (!t) {
            rc = err_set("%s: %s%s: missing", where, prefix, e->name);
            break;
        }
        int64_t want[2];
        int nd = map_shape(pt, e, want);
        /* transformers' offline BitLinear layout (packed trits + weight_scale), only where the config
         * says BitLinear (quantization_config.quant_method bitnet): without it transformers builds
         * plain nn.Linear layers, and a packed tensor is the wrong shape */
        const StTensor *ws = cfg->ternary == TERNARY_BITNET ? bitnet_scale(set, t, nd, want) : NULL;
        if (ws) {
            if (!buf) continue;
            if ((size_t)(want[0] * want[1]) > tmp_cap) {
                free(tmp);
                tmp_cap = (size_t)(want[0] * want[1]);
                tmp = xmalloc(tmp_cap * sizeof(float));
            }
            if ((rc = bitnet_unpack(file, t, ws, want, tmp))) break;
            map_copy(pt, e, buf, tmp, 1);
            continue;
        }
        if (t->ndim != nd || t->shape[0] != want[0] || (nd == 2 && t->shape[1] != want[1])) {
            char a[64], b[64];
            shape_str(a, sizeof(a), t->ndim, t->shape);
            shape_str(b, sizeof(b), nd, want);
            rc = err_set("%s: %s: shape %s, expected %s", file->path, t->name, a, b);
            break;
        }
        if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16 && t->dtype != ST_F64) {
            rc = err_set("%s: %s: dtype %s is not a floating type", file->path, t->name,
                         st_dtype_name(t->dtype));
            break;
        }
        if (!buf) continue; /* validating only */
        if (t->numel > tmp_cap) {
            free(tmp);
            tmp_cap = t->numel;
            tmp = xmalloc(tmp_cap * sizeof(float));
        }
        st_to_f32(t, tmp);
        fused_last = NULL;
        size_t bad = first_nonfinite(tmp, t->numel);
        if (bad < t->numel) {
            rc = err_set("%s: %s: non-finite value (%g) at element %zu: the weights are corrupt or diverged",
                         file->path, t->name, (double)tmp[bad], bad);
            break;
        }
        map_copy(pt, e, buf, tmp, 1);
    }
    free(tmp);
    free(map);
    free(last);
    return rc;
}

static int read_mapped(const StSet *set, const char *where, const char *prefix, const ModelConfig *cfg,
                       const ParamTable *pt, float *buf)
{
    return read_mapped_each(set, where, prefix, cfg, pt, buf, NULL, NULL);
}

/* ---- config.json against the safetensors headers ---- */

int hf_has_weights(const char *dir)
{
    char *a = fs_join(dir, "model.safetensors"), *b = fs_join(dir, "model.safetensors.index.json");
    int yes = fs_exists(a) || fs_exists(b);
    free(a);
    free(b);
    return yes;
}

/* The key names of one family's size fields in config.json. */
typedef struct {
    const char *width, *layers, *heads, *kv_heads, *ff, *vocab, *positions;
} HfKeys;

static const HfKeys gpt2_keys = {"n_embd", "n_layer", "n_head", "n_head", "n_inner", "vocab_size", "n_positions"};
static const HfKeys llama_keys = {"hidden_size",         "num_hidden_layers", "num_attention_heads",
                                  "num_key_value_heads", "intermediate_size", "vocab_size",
                                  "max_position_embeddings"};

/* The tensor `name` (GPT-2: also without "transformer."); NULL if absent. */
static const StTensor *find_tensor(const StSet *set, const char *name, const StFile **file)
{
    const StTensor *t = st_set_find(set, name, file);
    if (!t && !strncmp(name, GPT2_PREFIX, strlen(GPT2_PREFIX)))
        t = st_set_find(set, name + strlen(GPT2_PREFIX), file);
    return t;
}

/* Whether `name` is a bitsandbytes 4-bit weight (packed bytes beside a quant_state). */
static int bnb_packed(const StSet *set, const char *name)
{
    char q[256];
    snprintf(q, sizeof(q), "%s.quant_state.bitsandbytes__nf4", name);
    if (find_tensor(set, q, NULL)) return 1;
    snprintf(q, sizeof(q), "%s.quant_state.bitsandbytes__fp4", name);
    return find_tensor(set, q, NULL) != NULL;
}

/* Tensor `name` must be 2-D; its dimension `dim` must equal `want`, the value (or a product of
 * values) of config key `key`. A missing tensor is an error too: nothing can be checked without it. */
static int expect_dim(const StSet *set, const char *where, const char *cpath, const char *name, int dim,
                      int64_t want, const char *key, const char *how)
{
    const StFile *f = NULL;
    const StTensor *t = find_tensor(set, name, &f);
    if (!t) return err_set("%s: %s: missing", where, name);
    if (bnb_packed(set, name)) return 0; /* a 4-bit weight: bnb_model.c checks its quant_state's shape */
    char sname[300];
    snprintf(sname, sizeof(sname), "%s_scale", name);
    if (t->dtype == ST_U8 && find_tensor(set, sname, NULL)) { /* BitNet packed rows: 4 per byte */
        if (t->ndim == 2 && (dim == 1 ? t->shape[1] == want : t->shape[0] == (want + 3) / 4)) return 0;
        char shp[64];
        shape_str(shp, sizeof(shp), t->ndim, t->shape);
        return err_set("%s: %s: %lld%s does not match the packed BitNet weight %s %s in %s", cpath, key,
                       (long long)want, how, name, shp, f->path);
    }
    if (t->ndim != 2 || t->shape[dim] != want) {
        char shp[64];
        shape_str(shp, sizeof(shp), t->ndim, t->shape);
        return err_set("%s: %s: %lld%s does not match the weights: %s %s is %s in %s", cpath, key,
                       (long long)want, how, name, dim ? "(columns)" : "(rows)", shp, f->path);
    }
    return 0;
}

int hf_check_shapes(const char *dir, const ModelConfig *c)
{
    StSet set;
    if (st_set_open_dir(&set, dir, "model") != 0) return -1;
    char *cpath = fs_join(dir, "config.json"), *where = fs_join(dir, "model.safetensors");
    if (!fs_exists(where)) {
        free(where);
        where = fs_join(dir, "model.safetensors.index.json");
    }
    int gpt2 = c->family == FAMILY_GPT2, rc = 0;
    if (c->family == FAMILY_BERT) { /* every tensor's shape is checked as it is read (read_mapped) */
        ParamTable pt;
        param_table_build(&pt, c);
        rc = read_mapped(&set, where, "", c, &pt, NULL);
        param_table_free(&pt);
        free(cpath);
        free(where);
        st_set_close(&set);
        return rc ? -1 : 0;
    }
    const HfKeys *k = gpt2 ? &gpt2_keys : &llama_keys;
    int64_t C = c->d_model, q = (int64_t)c->n_head * c->head_dim, kv = (int64_t)c->n_kv_head * c->head_dim;
    char name[160], how[96];
    const char *emb = gpt2 ? GPT2_PREFIX "wte.weight" : "model.embed_tokens.weight";
    /* the embedding fixes the width and the vocabulary */
    rc = expect_dim(&set, where, cpath, emb, 1, C, k->width, "") ||
         expect_dim(&set, where, cpath, emb, 0, c->vocab_size, k->vocab, "");
    if (!rc && gpt2) rc = expect_dim(&set, where, cpath, GPT2_PREFIX "wpe.weight", 0, c->max_seq_len, k->positions, "");
    if (!rc && !c->tie_embeddings)
        rc = expect_dim(&set, where, cpath, "lm_head.weight", 0, c->vocab_size, k->vocab, "");
    /* layer 0 fixes the attention and MLP widths */
    if (!rc && gpt2) {
        snprintf(how, sizeof(how), " (x 3 = %lld)", (long long)(3 * C));
        rc = expect_dim(&set, where, cpath, GPT2_PREFIX "h.0.attn.c_attn.weight", 1, 3 * C, k->width, how) ||
             expect_dim(&set, where, cpath, GPT2_PREFIX "h.0.mlp.c_fc.weight", 1, c->d_ff, k->ff,
                        c->d_ff == 4 * c->d_model ? " (4 x n_embd)" : "");
    } else if (!rc) {
        snprintf(how, sizeof(how), " x head_dim %d = %lld", c->head_dim, (long long)q);
        rc = expect_dim(&set, where, cpath, "model.layers.0.self_attn.q_proj.weight", 0, q, k->heads, how);
        snprintf(how, sizeof(how), " x head_dim %d = %lld", c->head_dim, (long long)kv);
        if (!rc) rc = expect_dim(&set, where, cpath, "model.layers.0.self_attn.k_proj.weight", 0, kv, k->kv_heads, how);
        if (!rc && !cfg_is_moe(c, 0))
            rc = expect_dim(&set, where, cpath, "model.layers.0.mlp.gate_proj.weight", 0, c->d_ff, k->ff, "");
        else if (!rc) { /* expert 0 of layer 0 (per-expert layout), or the fused one */
            int qwen = !strcmp(c->hf_model_type, "qwen2_moe");
            snprintf(name, sizeof(name), "model.layers.0.%s.experts.0.%s.weight", qwen ? "mlp" : "block_sparse_moe",
                     qwen ? "gate_proj" : "w1");
            if (find_tensor(&set, name, NULL))
                rc = expect_dim(&set, where, cpath, name, 0, c->moe_d_ff,
                                qwen ? "moe_intermediate_size" : "intermediate_size", "");
        }
    }
    /* the layer count: the last layer is there, the one after it is not */
    if (!rc) {
        const char *fmt = gpt2 ? GPT2_PREFIX "h.%d.ln_1.weight" : "model.layers.%d.input_layernorm.weight";
        snprintf(name, sizeof(name), fmt, c->n_layer - 1);
        if (!find_tensor(&set, name, NULL))
            rc = err_set("%s: %s: %d does not match the weights: %s has no layer %d (%s is missing)", cpath,
                         k->layers, c->n_layer, where, c->n_layer - 1, name);
        snprintf(name, sizeof(name), fmt, c->n_layer);
        if (!rc && find_tensor(&set, name, NULL))
            rc = err_set("%s: %s: %d does not match the weights: %s has a layer %d too (%s)", cpath, k->layers,
                         c->n_layer, where, c->n_layer, name);
    }
    /* the other layers: together the tensors must hold at least the parameters in 2-byte floats,
     * so that a config is never allocated far beyond the file it came with */
    if (!rc) {
        ParamTable pt;
        param_table_build(&pt, c);
        uint64_t have = 0, need = (uint64_t)pt.total * 2;
        int packed = 0, trits = 0;
        for (int f = 0; f < set.nfiles; f++)
            for (int i = 0; i < set.files[f].n; i++) {
                have += set.files[f].t[i].nbytes;
                packed |= strstr(set.files[f].t[i].name, ".quant_state.bitsandbytes__") != NULL;
                trits |= strstr(set.files[f].t[i].name, ".weight_scale") != NULL;
            }
        BnbConfig bc; /* only a bitsandbytes 4-bit config makes quant_state tensors 4-bit weights */
        if (packed && bnb_read_config(dir, &bc) == 1)
            need = (uint64_t)pt.total / 2; /* 4-bit weights hold two parameters a byte */
        else
            packed = 0;
        trits = trits && c->ternary == TERNARY_BITNET;
        if (trits) need = (uint64_t)pt.total / 4; /* BitNet's packed 2-bit weights hold four a byte */
        if (need > have)
            rc = err_set("%s: %s: %d layers need %zu parameters (%llu bytes even in %s), but the weights "
                         "hold %llu bytes",
                         cpath, k->layers, c->n_layer, pt.total, (unsigned long long)need,
                         trits ? "2 bits" : packed ? "4 bits" : "16 bits", (unsigned long long)have);
        param_table_free(&pt);
    }
    free(cpath);
    free(where);
    st_set_close(&set);
    return rc ? -1 : 0;
}

int hf_read_weights(const char *dir, const ModelConfig *cfg, const ParamTable *pt, float *host)
{
    return hf_read_weights_each(dir, cfg, pt, host, NULL, NULL);
}

int hf_read_weights_each(const char *dir, const ModelConfig *cfg, const ParamTable *pt, float *host,
                         void (*done)(void *ctx, int i), void *ctx)
{
    StSet set;
    if (st_set_open_dir(&set, dir, "model") != 0) return -1;
    /* files named in messages: the single file, or the index of the shards */
    char *where = fs_join(dir, "model.safetensors");
    if (!fs_exists(where)) {
        free(where);
        where = fs_join(dir, "model.safetensors.index.json");
    }
    int rc = read_mapped_each(&set, where, "", cfg, pt, host, done, ctx);
    free(where);
    st_set_close(&set);
    return rc;
}

int hf_import_file(const char *path, const char *prefix, const ModelConfig *cfg, const ParamTable *pt,
                   float *buf)
{
    StSet set = {.files = xcalloc(1, sizeof(StFile)), .nfiles = 1};
    if (st_open(&set.files[0], path) != 0) {
        free(set.files);
        return -1;
    }
    int rc = read_mapped(&set, path, prefix, cfg, pt, buf);
    st_set_close(&set);
    return rc;
}

int hf_export(const ModelConfig *cfg, const ParamTable *pt, const float *buf, HfTensor **out, int *nout)
{
    HfMap *map;
    int n;
    if (hf_map_build(cfg, pt, &map, &n) != 0) return -1;
    HfTensor *t = xcalloc((size_t)n, sizeof(HfTensor));
    for (int i = 0; i < n; i++) {
        snprintf(t[i].name, sizeof(t[i].name), "%s", map[i].name);
        t[i].ndim = map_shape(pt, &map[i], t[i].shape);
        size_t numel = (size_t)t[i].shape[0] * (size_t)(t[i].ndim == 2 ? t[i].shape[1] : 1);
        t[i].data = xmalloc(numel * sizeof(float));
        map_copy(pt, &map[i], (float *)buf, t[i].data, 0);
    }
    free(map);
    *out = t;
    *nout = n;
    return 0;
}

int hf_names(const ModelConfig *cfg, const ParamTable *pt, HfName **out, int *nout)
{
    HfMap *map;
    int n;
    if (hf_map_build(cfg, pt, &map, &n) != 0) return -1;
    HfName *names = xcalloc((size_t)n + 1, sizeof(HfName));
    for (int i = 0; i < n; i++) {
        snprintf(names[i].name, sizeof(names[i].name), "%s", map[i].name);
        names[i].param = map[i].param;
        names[i].row0 = map[i].row0;
        names[i].rows = map[i].rows;
        names[i].transpose = map[i].transpose;
    }
    free(map);
    *out = names;
    *nout = n;
    return 0;
}

void hf_tensors_free(HfTensor *t, int n)
{
    if (!t) return;
    for (int i = 0; i < n; i++) free(t[i].data);
    free(t);
}

/* The largest number among keys[] of root (0 for absent or non-numeric keys). */
static float max_number(json_t *root, const char *const *keys, int n)
{
    double v = 0;
    for (int i = 0; i < n; i++) {
        json_t *x = json_object_get(root, keys[i]);
        if (json_is_number(x) && json_number_value(x) > v) v = json_number_value(x);
    }
    return (float)v;
}

int hf_config_dropout(const char *dir, float *hidden, float *attn)
{
    static const char *const hk[] = {"hidden_dropout_prob", "resid_pdrop", "embd_pdrop", "hidden_dropout"};
    static const char *const ak[] = {"attention_probs_dropout_prob", "attn_pdrop", "attention_dropout"};
    char *path = fs_join(dir, "config.json"), *text = NULL;
    size_t n;
    json_error_t jerr;
    json_t *root = NULL;
    int rc = -1;
    *hidden = *attn = 0;
    if (fs_read_file(path, &text, &n) != 0) goto out;
    root = json_loadb(text, n, 0, &jerr);
    if (!json_is_object(root)) {
        err_set("%s: invalid JSON at line %d: %s", path, jerr.line, jerr.text);
        goto out;
    }
    *hidden = max_number(root, hk, (int)ARRAY_LEN(hk));
    *attn = max_number(root, ak, (int)ARRAY_LEN(ak));
    rc = 0;
out:
    json_decref(root);
    free(text);
    free(path);
    return rc;
}

/* ---- writing ---- */

/* A JSON real holding the shortest decimal that reads back as x, so that
 * 1e-6f is written "1e-06" rather than 9.9999999747524271e-07. */
static json_t *json_float(float x)
{
    char b[32];
    for (int p = 1; p <= FLOAT_DIGITS; p++) {
        snprintf(b, sizeof(b), "%.*g", p, (double)x);
        if (strtof(b, NULL) == x) break;
    }
    return json_real(strtod(b, NULL));
}

static json_t *json_token(int id)
{
    return id >= 0 ? json_integer(id) : json_null();
}

/* The RoPE description in transformers 5's "rope_parameters" form. */
static json_t *rope_json(const ModelConfig *c, int with_theta)
{
    json_t *r = json_object();
    if (with_theta) json_object_set_new(r, "rope_theta", json_float(c->rope_theta));
    if (c->rope_scale_factor > 0) {
        json_object_set_new(r, "rope_type", json_string("llama3"));
        json_object_set_new(r, "factor", json_float(c->rope_scale_factor));
        json_object_set_new(r, "low_freq_factor", json_float(c->rope_low_freq_factor));
        json_object_set_new(r, "high_freq_factor", json_float(c->rope_high_freq_factor));
        json_object_set_new(r, "original_max_position_embeddings", json_integer(c->rope_orig_max_pos));
    } else {
        json_object_set_new(r, "rope_type", json_string("default"));
    }
    return r;
}

/* Can the HF class express this config? */
static int check_writable(const char *path, const ModelConfig *c)
{
    const char *a = c->hf_arch;
    if (c->family == FAMILY_GPT2) {
        if (strcmp(a, "GPT2LMHeadModel"))
            return err_set("%s: architectures: a gpt2-family model cannot be written as %s", path, a);
        if (c->n_kv_head != c->n_head || c->head_dim * c->n_head != c->d_model || !c->qkv_bias ||
            !c->o_bias || !c->mlp_bias)
            return err_set(
                "%s: GPT2LMHeadModel needs n_kv_head = n_head, head_dim = d_model/n_head and all biases",
                path);
        return 0;
    }
    if (c->family == FAMILY_BERT) {
        int roberta = !strcmp(c->hf_model_type, "roberta");
        const char *want = roberta ? (c->mlm_head ? "RobertaForMaskedLM" : "RobertaModel")
                                   : (c->mlm_head ? "BertForMaskedLM" : "BertModel");
        if (strcmp(a, want)) return err_set("%s: architectures: this encoder is written as %s, not %s", path, want, a);
        if (c->n_kv_head != c->n_head || c->head_dim * c->n_head != c->d_model || !c->qkv_bias || !c->o_bias ||
            !c->mlp_bias || !c->post_norm || !c->gelu_erf || !c->tie_embeddings)
            return err_set("%s: %s needs n_kv_head = n_head, head_dim = d_model/n_head, all biases, post-LN, "
                           "the exact GELU and a tied decoder", path, want);
        if (roberta ? c->pos_offset != c->pad_token_id + 1 : c->pos_offset != 0)
            return err_set("%s: %s: position offset %d does not follow pad_token_id %d", path, want, c->pos_offset,
                           c->pad_token_id);
        return 0;
    }
    int ok;
    if (c->moe_experts > 0) {
        if (!strcmp(a, "MixtralForCausalLM")) {
            if (c->qkv_bias || c->o_bias || c->mlp_bias || c->moe_every != 1 || cfg_moe_dense_count(c) || c->moe_shared_d_ff ||
                !c->moe_norm_topk)
                return err_set("%s: MixtralForCausalLM needs experts on every layer, no shared expert, renormalised "
                               "top-k weights and no biases (use Qwen2MoeForCausalLM)",
                               path);
            return 0;
        }
        if (!strcmp(a, "Qwen2MoeForCausalLM")) {
            if (!c->qkv_bias || c->o_bias || c->mlp_bias || c->moe_shared_d_ff <= 0)
                return err_set("%s: Qwen2MoeForCausalLM needs q/k/v biases (only) and a shared expert", path);
            return 0;
        }
        return err_set("%s: architectures: %s cannot express experts (MixtralForCausalLM or Qwen2MoeForCausalLM)",
                       path, a);
    }
    if (!strcmp(a, "Qwen2ForCausalLM"))
        ok = c->qkv_bias && !c->o_bias && !c->mlp_bias;
    else if (!strcmp(a, "MistralForCausalLM"))
        ok = !c->qkv_bias && !c->o_bias && !c->mlp_bias;
    else if (!strcmp(a, "LlamaForCausalLM"))
        ok = c->qkv_bias == c->o_bias && !c->sub_norm && !c->mlp_relu2;
    else if (!strcmp(a, "BitNetForCausalLM"))
        ok = c->qkv_bias == c->o_bias && !c->mlp_bias && c->sub_norm;
    else
        return err_set("%s: architectures: cannot write a llama-family model as \"%s\"", path, a);
    if (!ok)
        return err_set("%s: %s cannot express these biases (q/k/v %d, o %d, mlp %d)", path, a, c->qkv_bias,
                       c->o_bias, c->mlp_bias);
    return 0;
}

/* The quantization_config of a BitNet model: the latent weights quantized at every use (online,
 * AutoBitLinear: what anvil's checkpoints hold), or packed ternary weights + weight_scale (offline,
 * BitLinear: hf_save_bitnet). The head stays a plain linear. */
static json_t *bitnet_qconfig(int packed)
{
    json_t *q = json_object();
    json_object_set_new(q, "quant_method", json_string("bitnet"));
    json_object_set_new(q, "linear_class", json_string(packed ? "bitlinear" : "autobitlinear"));
    json_object_set_new(q, "quantization_mode", json_string(packed ? "offline" : "online"));
    json_object_set_new(q, "modules_to_not_convert", json_pack("[s]", "lm_head"));
    json_object_set_new(q, "use_rms_norm", json_false());
    return q;
}

static json_t *config_json(const ModelConfig *c, int dtype, int packed)
{
    json_t *j = json_object();
    const char *dt = dtype == DTYPE_BF16 ? "bfloat16" : "float32";
    json_object_set_new(j, "architectures", json_pack("[s]", c->hf_arch));
    json_object_set_new(j, "model_type", json_string(c->hf_model_type));
    json_object_set_new(j, "vocab_size", json_integer(c->vocab_size));
    json_object_set_new(j, "bos_token_id", json_token(c->bos_token_id));
    json_object_set_new(j, "eos_token_id", json_token(c->eos_token_id));
    json_object_set_new(j, "tie_word_embeddings", json_boolean(c->tie_embeddings));
    json_object_set_new(j, "initializer_range", json_real(0.02)); /* transformers' default; unused by anvil */
    json_object_set_new(j, "use_cache", json_true());
    /* "dtype" since transformers 5, "torch_dtype" before */
    json_object_set_new(j, "dtype", json_string(dt));
    json_object_set_new(j, "torch_dtype", json_string(dt));
    if (c->family == FAMILY_GPT2) {
        json_object_set_new(j, "n_embd", json_integer(c->d_model));
        json_object_set_new(j, "n_layer", json_integer(c->n_layer));
        json_object_set_new(j, "n_head", json_integer(c->n_head));
        json_object_set_new(j, "n_positions", json_integer(c->max_seq_len));
        json_object_set_new(j, "n_inner", c->d_ff == 4 * c->d_model ? json_null() : json_integer(c->d_ff));
        json_object_set_new(j, "activation_function", json_string("gelu_new"));
        json_object_set_new(j, "layer_norm_epsilon", json_float(c->norm_eps));
        /* the run's dropout (0 unless model.dropout / model.attn_dropout), so that fine-tuning in transformers,
         * which applies these in train mode, matches */
        json_object_set_new(j, "attn_pdrop", c->attn_dropout > 0 ? json_float(c->attn_dropout) : json_real(0.0));
        json_object_set_new(j, "embd_pdrop", c->dropout > 0 ? json_float(c->dropout) : json_real(0.0));
        json_object_set_new(j, "resid_pdrop", c->dropout > 0 ? json_float(c->dropout) : json_real(0.0));
        json_object_set_new(j, "scale_attn_weights", json_true());
        json_object_set_new(j, "scale_attn_by_inverse_layer_idx", json_false());
        json_object_set_new(j, "reorder_and_upcast_attn", json_false());
        return j;
    }
    if (c->family == FAMILY_BERT) {
        json_object_set_new(j, "hidden_size", json_integer(c->d_model));
        json_object_set_new(j, "intermediate_size", json_integer(c->d_ff));
        json_object_set_new(j, "num_hidden_layers", json_integer(c->n_layer));
        json_object_set_new(j, "num_attention_heads", json_integer(c->n_head));
        json_object_set_new(j, "hidden_act", json_string("gelu"));
        json_object_set_new(j, "max_position_embeddings", json_integer(c->max_seq_len));
        json_object_set_new(j, "type_vocab_size", json_integer(c->type_vocab_size));
        json_object_set_new(j, "layer_norm_eps", json_float(c->norm_eps));
        json_object_set_new(j, "pad_token_id", json_token(c->pad_token_id));
        json_object_set_new(j, "position_embedding_type", json_string("absolute"));
        /* the run's dropout (0 unless model.dropout / model.attn_dropout), so that fine-tuning in transformers,
         * which applies these in train mode, matches */
        json_object_set_new(j, "hidden_dropout_prob", c->dropout > 0 ? json_float(c->dropout) : json_real(0.0));
        json_object_set_new(j, "attention_probs_dropout_prob",
                            c->attn_dropout > 0 ? json_float(c->attn_dropout) : json_real(0.0));
        json_object_set_new(j, "is_decoder", json_false());
        json_object_set_new(j, "use_cache", json_false());
        return j;
    }
    json_object_set_new(j, "hidden_size", json_integer(c->d_model));
    json_object_set_new(j, "intermediate_size", json_integer(c->d_ff));
    json_object_set_new(j, "num_hidden_layers", json_integer(c->n_layer));
    json_object_set_new(j, "num_attention_heads", json_integer(c->n_head));
    json_object_set_new(j, "num_key_value_heads", json_integer(c->n_kv_head));
    json_object_set_new(j, "head_dim", json_integer(c->head_dim));
    json_object_set_new(j, "hidden_act", json_string(c->mlp_relu2 ? "relu2" : "silu"));
    json_object_set_new(j, "max_position_embeddings", json_integer(c->max_seq_len));
    json_object_set_new(j, "rms_norm_eps", json_float(c->norm_eps));
    json_object_set_new(j, "attention_dropout", json_real(0.0));
    /* both spellings: rope_theta (+ rope_scaling) before transformers 5, rope_parameters since */
    json_object_set_new(j, "rope_theta", json_float(c->rope_theta));
    json_object_set_new(j, "rope_parameters", rope_json(c, 1));
    json_object_set_new(j, "rope_scaling", c->rope_scale_factor > 0 ? rope_json(c, 0) : json_null());
    if (c->ternary == TERNARY_BITNET) /* transformers' bitnet quantizer (integrations/bitnet.py) */
        json_object_set_new(j, "quantization_config", bitnet_qconfig(packed));
    if (!strcmp(c->hf_model_type, "llama") || !strcmp(c->hf_model_type, "bitnet")) {
        json_object_set_new(j, "attention_bias", json_boolean(c->qkv_bias));
        json_object_set_new(j, "mlp_bias", json_boolean(c->mlp_bias));
    } else if (!strcmp(c->hf_model_type, "mixtral")) {
        json_object_set_new(j, "intermediate_size", json_integer(c->moe_d_ff));
        json_object_set_new(j, "num_local_experts", json_integer(c->moe_experts));
        json_object_set_new(j, "num_experts_per_tok", json_integer(c->moe_top_k));
        json_object_set_new(j, "router_aux_loss_coef", json_float(c->moe_aux_coef));
        json_object_set_new(j, "router_jitter_noise", json_float(c->moe_jitter));
        json_object_set_new(j, "output_router_logits", json_false());
        json_object_set_new(j, "sliding_window", json_null());
    } else if (!strcmp(c->hf_model_type, "qwen2_moe")) {
        json_object_set_new(j, "moe_intermediate_size", json_integer(c->moe_d_ff));
        json_object_set_new(j, "shared_expert_intermediate_size", json_integer(c->moe_shared_d_ff));
        json_object_set_new(j, "num_experts", json_integer(c->moe_experts));
        json_object_set_new(j, "num_experts_per_tok", json_integer(c->moe_top_k));
        json_object_set_new(j, "decoder_sparse_step", json_integer(c->moe_every));
        json_t *only = json_array();
        for (int l = 0; l < c->n_layer; l++)
            if (cfg_moe_dense(c, l)) json_array_append_new(only, json_integer(l));
        json_object_set_new(j, "mlp_only_layers", only);
        json_object_set_new(j, "norm_topk_prob", json_boolean(c->moe_norm_topk));
        json_object_set_new(j, "router_aux_loss_coef", json_float(c->moe_aux_coef));
        json_object_set_new(j, "output_router_logits", json_false());
        json_object_set_new(j, "qkv_bias", json_true());
        json_object_set_new(j, "use_sliding_window", json_false());
        json_object_set_new(j, "sliding_window", json_null());
        json_object_set_new(j, "max_window_layers", json_integer(c->n_layer));
    } else if (!strcmp(c->hf_model_type, "qwen2")) {
        json_object_set_new(j, "use_sliding_window", json_false());
        json_object_set_new(j, "sliding_window", json_null());
        json_object_set_new(j, "max_window_layers", json_integer(c->n_layer));
    } else {
        json_object_set_new(j, "sliding_window", json_null());
    }
    return j;
}

/* Write a JSON object to dir/name atomically (indent 2, sorted keys, as transformers does). */
static int write_json(const char *dir, const char *name, json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(FLOAT_DIGITS));
    char *path = fs_join(dir, name);
    int rc;
    if (!s) {
        rc = err_set("%s: cannot encode JSON", path);
    } else {
        size_t n = strlen(s);
        s = xrealloc(s, n + 2);
        s[n] = '\n';
        rc = fs_write_atomic(path, s, n + 1);
    }
    free(s);
    free(path);
    return rc;
}

static int write_config(const char *dir, const ModelConfig *cfg, int dtype, int packed)
{
    char *path = fs_join(dir, "config.json");
    int rc = check_writable(path, cfg);
    free(path);
    if (rc != 0) return -1;
    json_t *j = config_json(cfg, dtype, packed);
    rc = write_json(dir, "config.json", j);
    json_decref(j);
    if (rc != 0) return -1;
    j = json_object();
    json_object_set_new(j, "_from_model_config", json_true());
    if (cfg->bos_token_id >= 0) json_object_set_new(j, "bos_token_id", json_integer(cfg->bos_token_id));
    if (cfg->eos_token_id >= 0) json_object_set_new(j, "eos_token_id", json_integer(cfg->eos_token_id));
    rc = write_json(dir, "generation_config.json", j);
    json_decref(j);
    return rc;
}

int hf_write_config(const char *dir, const ModelConfig *cfg, int dtype) { return write_config(dir, cfg, dtype, 0); }

/* Pack one BitLinear weight (rows, cols) of latent values w as transformers does: t = clamp(round(w *
 * s), -1, 1) with s = 1 / max(mean |w|, 1e-5) (WeightQuant's arithmetic), into (ceil(rows/4), cols)
 * bytes; returns s, the weight_scale. */
static float bitnet_pack(const float *w, int64_t rows, int64_t cols, uint8_t *out)
{
    double a = 0;
    for (int64_t i = 0; i < rows * cols; i++) a += fabs((double)w[i]);
    float gamma = (float)(a / (double)(rows * cols));
    if (gamma < 1e-5f) gamma = 1e-5f; /* transformers' clamp_(min=1e-5) */
    float s = 1.0f / gamma;
    int64_t R = (rows + BITNET_PER_BYTE - 1) / BITNET_PER_BYTE;
    memset(out, 0, (size_t)(R * cols));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            float q = rintf(w[r * cols + c] * s);
            int v = (q > 0 ? 1 : q < 0 ? -1 : 0) + 1;
            out[(r % R) * cols + c] |= (uint8_t)(v << (2 * (r / R)));
        }
    return s;
}

static int write_files(const char *dir, const ModelConfig *cfg, const ParamTable *pt, const float *host, int dtype,
                       int packed);

int hf_write_files(const char *dir, const ModelConfig *cfg, const ParamTable *pt, const float *host,
                   int dtype)
{
    return write_files(dir, cfg, pt, host, dtype, 0);
}

int hf_save_bitnet(const char *dir, const ModelConfig *cfg, const ParamTable *pt, const float *host)
{
    if (cfg->ternary != TERNARY_BITNET)
        return err_set("%s: the model is not a BitNet (model.ternary: bitnet) model: nothing to pack", dir);
    if (fs_mkdir_p(dir)) return -1;
    return write_files(dir, cfg, pt, host, DTYPE_F32, 1);
}

static int write_files(const char *dir, const ModelConfig *cfg, const ParamTable *pt, const float *host, int dtype,
                       int packed)
{
    if (dtype != DTYPE_F32 && dtype != DTYPE_BF16)
        return err_set("%s: can only write F32 or BF16 weights", dir);
    if (!fs_is_dir(dir)) return err_set("%s: not a directory", dir);
    char *cpath = fs_join(dir, "config.json");
    int rc = check_writable(cpath, cfg);
    free(cpath);
    if (rc != 0) return -1;
    HfMap *map;
    int n;
    if (hf_map_build(cfg, pt, &map, &n) != 0) return -1;
    StWriteTensor *t = xcalloc((size_t)n * 2, sizeof(StWriteTensor));
    float **copies = xcalloc((size_t)n * 2, sizeof(float *)); /* transposed tensors (GPT-2 Conv1D), packed */
    char (*snames)[104] = xcalloc((size_t)n, sizeof(*snames));
    int nt = n;
    for (int i = 0; i < n; i++) {
        const HfMap *e = &map[i];
        const Param *p = &pt->p[e->param];
        int64_t K = p->ndim == 2 ? p->shape[1] : 1;
        if (packed && p->ternarize) { /* U8 (ceil(rows/4), K) + weight_scale F32 (1) */
            int64_t R = (e->rows + BITNET_PER_BYTE - 1) / BITNET_PER_BYTE;
            uint8_t *pk = xmalloc((size_t)(R * K));
            float *sc = xmalloc(sizeof(float));
            *sc = bitnet_pack(host + p->offset + (size_t)(e->row0 * K), e->rows, K, pk);
            copies[i] = (float *)pk;
            copies[nt] = sc;
            t[i] = (StWriteTensor){.name = e->name, .dtype = ST_U8, .ndim = 2, .shape = {R, K}, .data = pk};
            snprintf(snames[i], sizeof(snames[i]), "%s_scale", e->name);
            t[nt] = (StWriteTensor){.name = snames[i], .dtype = ST_F32, .ndim = 1, .shape = {1}, .data = sc};
            nt++;
            continue;
        }
        t[i].name = e->name;
        t[i].dtype = dtype == DTYPE_BF16 ? ST_BF16 : ST_F32;
        t[i].ndim = map_shape(pt, e, t[i].shape);
        t[i].src_f32 = 1;
        if (e->transpose) {
            copies[i] = xmalloc((size_t)(e->rows * K) * sizeof(float));
            map_copy(pt, e, (float *)host, copies[i], 0);
            t[i].data = copies[i];
        } else {
            t[i].data = host + p->offset + (size_t)(e->row0 * K);
        }
    }
    StMeta meta[] = {{"format", "pt"}};
    rc = st_write_dir(dir, "model", t, nt, meta, 1, 0);
    if (rc == 0) rc = write_config(dir, cfg, dtype, packed);
    for (int i = 0; i < nt; i++) free(copies[i]);
    free(copies);
    free(snames);
    free(t);
    free(map);
    return rc;
}

/* The tokenizer files of a Hugging Face directory (what tokenizer_load reads and
 * transformers' AutoTokenizer saves), copied unchanged by hf_save_with_tokenizer. */
static const char *const hf_tokenizer_files[] = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json",     "merges.txt",            "encoder.json",            "vocab.bpe",
    "tokenizer.model", "vocab.txt",
};

static int copy_tokenizer_files(const char *from, const char *to)
{
    for (size_t i = 0; i < ARRAY_LEN(hf_tokenizer_files); i++) {
        char *src = fs_join(from, hf_tokenizer_files[i]), *dst = fs_join(to, hf_tokenizer_files[i]);
        char *data = NULL;
        size_t n = 0;
        int rc = 0;
        if (fs_exists(src)) rc = fs_read_file(src, &data, &n) || fs_write_atomic(dst, data, n);
        free(data);
        free(src);
        free(dst);
        if (rc) return -1;
    }
    return 0;
}

int hf_save(const char *dir, const ModelConfig *cfg, const ParamTable *pt, const float *host, int dtype)
{
    return hf_save_with_tokenizer(dir, cfg, pt, host, dtype, NULL);
}

int hf_save_with_tokenizer(const char *dir, const ModelConfig *cfg, const ParamTable *pt, const float *host,
                           int dtype, const char *tokenizer_from)
{
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') len--;
    char *tmp = xmalloc(len + 32);
    snprintf(tmp, len + 32, "%.*s.tmp.%ld", (int)len, dir, (long)getpid());
    int rc = fs_rm_rf(tmp);
    if (rc == 0) rc = fs_mkdir_p(tmp);
    if (rc == 0) rc = hf_write_files(tmp, cfg, pt, host, dtype);
    if (rc == 0 && tokenizer_from) rc = copy_tokenizer_files(tokenizer_from, tmp);
    if (rc == 0) rc = fs_publish_dir(tmp, dir);
    if (rc != 0) {
        char keep[ANVIL_ERR_MAX];
        snprintf(keep, sizeof(keep), "%s", err_get());
        fs_rm_rf(tmp);
        err_set("%s", keep);
    }
    free(tmp);
    return rc;
}

Model *hf_load_model(const char *dir, const Backend *be, int trainable)
{
    ModelConfig cfg;
    if (hf_read_config(dir, &cfg) != 0) return NULL;
    Model *m = trainable ? model_create(&cfg, be) : model_create_frozen(&cfg, be);
    float *host = xmalloc(m->pt.total * sizeof(float));
    if (hf_read_weights(dir, &m->cfg, &m->pt, host) != 0) {
        free(host);
        model_free(m);
        return NULL;
    }
    model_set_params(m, host);
    free(host);
    return m;
}
