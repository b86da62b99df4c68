/* hf.c - Hugging Face config.json and tensor names <-> ModelConfig and the
 * parameter table (see hf.h, docs/formats.md). */
#include "io/hf.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "io/fsutil.h"
#include "io/safetensors.h"

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
};
#define HF_CLASS_LIST "GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"

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
    if (x < min || x > INT32_MAX)
        return err_set("%s: %s: %lld is out of range (at least %d)", c->path, shown, (long long)x, min);
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
    if (get_int(c, root, "sliding_window", "sliding_window", 0, 0, 1, &window)) return -1;
    if (qwen2 && get_bool(c, root, "use_sliding_window", 0, &use)) return -1;
    if (!use || window == 0 || window >= m->max_seq_len) return 0;
    fprintf(stderr,
            "anvil: warning: %s: sliding_window %d is shorter than max_position_embeddings %d; anvil attends "
            "over the full context, so the context is capped at %d tokens\n",
            c->path, window, m->max_seq_len, window);
    m->max_seq_len = window;
    return 0;
}

static int read_llama(const Cfg *c, json_t *root, ModelConfig *m, const char *model_type)
{
    int qwen2 = !strcmp(model_type, "qwen2"), mistral = !strcmp(model_type, "mistral");
    int def_pos = qwen2     ? QWEN2_DEFAULT_POSITIONS
                  : mistral ? MISTRAL_DEFAULT_POSITIONS
                            : LLAMA_DEFAULT_POSITIONS;
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
    if (act && strcmp(act, "silu"))
        return err_set("%s: hidden_act: unsupported \"%s\" (supported: silu)", c->path, act);
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
            err_set("%s: model_type: unsupported \"%s\" (supported: gpt2, llama, mistral, qwen2)", path,
                    mtype);
        else
            err_set("%s: architectures: missing (and no model_type)", path);
        goto out;
    }
    model_config_defaults(cfg, cls->family);
    if (cls->family == FAMILY_GPT2 ? read_gpt2(&c, root, cfg) : read_llama(&c, root, cfg, cls->model_type))
        goto out;
    snprintf(cfg->hf_arch, sizeof(cfg->hf_arch), "%s", cls->arch);
    snprintf(cfg->hf_model_type, sizeof(cfg->hf_model_type), "%s", cls->model_type);
    if (model_config_finish(cfg) != 0) {
        err_prefix("%s", path);
        goto out;
    }
    rc = 0;
out:
    json_decref(root);
    free(text);
    free(path);
    return rc;
}
