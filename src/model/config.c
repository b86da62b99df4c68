#include "model/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/error.h"

/* GPT-2 BPE vocabulary size (50,000 merges + 256 bytes + <|endoftext|>). */
#define GPT2_VOCAB 50257
#define GPT2_EOT 50256

void model_config_defaults(ModelConfig *c, Family f)
{
    memset(c, 0, sizeof(*c));
    c->family = f;
    c->bos_token_id = -1;
    c->eos_token_id = -1;
    if (f == FAMILY_GPT2) {
        c->max_seq_len = 1024;
        c->vocab_size = GPT2_VOCAB;
        c->norm_eps = 1e-5f; /* HF GPT2Config.layer_norm_epsilon */
        c->tie_embeddings = 1;
        c->qkv_bias = c->o_bias = c->mlp_bias = 1;
        c->bos_token_id = c->eos_token_id = GPT2_EOT;
    } else {
        c->max_seq_len = 2048;
        c->vocab_size = 32000;
        c->norm_eps = 1e-5f; /* TinyLlama / LLaMA-2 rms_norm_eps */
        c->rope_theta = 10000.0f;
        c->tie_embeddings = 0;
        c->bos_token_id = 1;
        c->eos_token_id = 2;
    }
}

typedef struct {
    const char *name;
    Family family;
    int n_layer, n_head, n_kv_head, d_model, d_ff, vocab, max_seq;
    float rope_theta; /* 0: the family's default */
} Preset;

/* d_ff 0 means the family default (gpt2: 4*d_model). */
static const Preset presets[] = {
    {"gpt2-124m", FAMILY_GPT2, 12, 12, 12, 768, 0, GPT2_VOCAB, 1024, 0},
    {"gpt2-350m", FAMILY_GPT2, 24, 16, 16, 1024, 0, GPT2_VOCAB, 1024, 0},
    {"gpt2-760m", FAMILY_GPT2, 24, 16, 16, 1536, 0, GPT2_VOCAB, 1024, 0},
    {"gpt2-1.3b", FAMILY_GPT2, 24, 16, 16, 2048, 0, GPT2_VOCAB, 1024, 0},
    /* TinyLlama-1.1B shape. */
    {"llama-1b", FAMILY_LLAMA, 22, 32, 4, 2048, 5632, 32000, 2048, 0},
    /* Tiny models for tests and the built-in example; GPT-2 vocabulary so that
     * they train on GPT-2 token data. */
    {"gpt2-tiny", FAMILY_GPT2, 2, 4, 4, 64, 0, GPT2_VOCAB, 256, 0},
    {"llama-tiny", FAMILY_LLAMA, 2, 4, 2, 64, 176, GPT2_VOCAB, 256, 0},
    /* The real shapes of open 7B-13B checkpoints (config.json of each release), for speed and memory
     * runs with random weights; real weights come through model.init. Mistral-7B's sliding window
     * (4096) is not implemented, so its preset stops at 4096 positions, where the window is the
     * whole context. */
    {"llama2-7b", FAMILY_LLAMA, 32, 32, 32, 4096, 11008, 32000, 4096, 10000.0f},
    {"llama2-13b", FAMILY_LLAMA, 40, 40, 40, 5120, 13824, 32000, 4096, 10000.0f},
    {"mistral-7b", FAMILY_LLAMA, 32, 32, 8, 4096, 14336, 32000, 4096, 10000.0f},
    {"llama3-8b", FAMILY_LLAMA, 32, 32, 8, 4096, 14336, 128256, 8192, 500000.0f},
};

const char *model_preset_names(void)
{
    return "gpt2-124m, gpt2-350m, gpt2-760m, gpt2-1.3b, llama-1b, gpt2-tiny, llama-tiny, llama2-7b, llama2-13b, "
           "mistral-7b, llama3-8b";
}

int model_preset(ModelConfig *c, const char *name)
{
    for (size_t i = 0; i < ARRAY_LEN(presets); i++) {
        const Preset *p = &presets[i];
        if (strcmp(p->name, name) != 0) continue;
        model_config_defaults(c, p->family);
        c->n_layer = p->n_layer;
        c->n_head = p->n_head;
        c->n_kv_head = p->n_kv_head;
        c->d_model = p->d_model;
        c->d_ff = p->d_ff;
        c->vocab_size = p->vocab;
        c->max_seq_len = p->max_seq;
        if (p->rope_theta > 0) c->rope_theta = p->rope_theta;
        if (p->family == FAMILY_LLAMA && p->vocab == GPT2_VOCAB) c->bos_token_id = c->eos_token_id = GPT2_EOT;
        return 0;
    }
    return err_set("unknown model preset \"%s\" (known: %s)", name, model_preset_names());
}

int model_family_parse(const char *s, Family *f)
{
    if (!strcmp(s, "gpt2")) *f = FAMILY_GPT2;
    else if (!strcmp(s, "llama") || !strcmp(s, "mistral") || !strcmp(s, "qwen2")) *f = FAMILY_LLAMA;
    else return err_set("unknown model family \"%s\" (expected gpt2 or llama)", s);
    return 0;
}

const char *model_family_name(Family f) { return f == FAMILY_GPT2 ? "gpt2" : "llama"; }

int model_config_finish(ModelConfig *c)
{
    if (c->n_layer <= 0) return err_set("model.n_layer: must be positive, got %d", c->n_layer);
    if (c->n_head <= 0) return err_set("model.n_head: must be positive, got %d", c->n_head);
    if (c->d_model <= 0) return err_set("model.d_model: must be positive, got %d", c->d_model);
    if (c->vocab_size <= 0) return err_set("model.vocab_size: must be positive, got %d", c->vocab_size);
    if (c->max_seq_len <= 0) return err_set("model.max_seq_len: must be positive, got %d", c->max_seq_len);
    if (c->n_kv_head <= 0) c->n_kv_head = c->n_head;
    if (c->n_head % c->n_kv_head)
        return err_set("model.n_kv_head: %d does not divide n_head %d", c->n_kv_head, c->n_head);
    if (c->head_dim <= 0) {
        if (c->d_model % c->n_head)
            return err_set("model.n_head: %d does not divide d_model %d", c->n_head, c->d_model);
        c->head_dim = c->d_model / c->n_head;
    }
    if (c->family == FAMILY_LLAMA && c->head_dim % 2)
        return err_set("model: RoPE needs an even head dimension, got %d", c->head_dim);
    if (c->d_ff <= 0) {
        if (c->family == FAMILY_GPT2) c->d_ff = 4 * c->d_model;
        else return err_set("model.d_ff: must be set for the llama family");
    }
    if (c->family == FAMILY_LLAMA && !(c->rope_theta > 0))
        return err_set("model.rope_theta: must be positive, got %g", c->rope_theta);
    if (!(c->norm_eps > 0)) c->norm_eps = 1e-5f;
    if (!c->hf_model_type[0])
        snprintf(c->hf_model_type, sizeof(c->hf_model_type), "%s",
                 c->family == FAMILY_GPT2 ? "gpt2" : (c->qkv_bias ? "qwen2" : "llama"));
    if (!c->hf_arch[0]) {
        const char *a = "LlamaForCausalLM";
        if (!strcmp(c->hf_model_type, "gpt2")) a = "GPT2LMHeadModel";
        else if (!strcmp(c->hf_model_type, "qwen2")) a = "Qwen2ForCausalLM";
        else if (!strcmp(c->hf_model_type, "mistral")) a = "MistralForCausalLM";
        snprintf(c->hf_arch, sizeof(c->hf_arch), "%s", a);
    }
    return 0;
}

const char *model_config_diff(const ModelConfig *a, const ModelConfig *b)
{
#define DIFF(field, key) \
    if (a->field != b->field) return key
    DIFF(family, "model.family");
    DIFF(n_layer, "model.n_layer");
    DIFF(n_head, "model.n_head");
    DIFF(n_kv_head, "model.n_kv_head");
    DIFF(d_model, "model.d_model");
    DIFF(head_dim, "model head_dim");
    DIFF(d_ff, "model.d_ff");
    DIFF(max_seq_len, "model.max_seq_len");
    DIFF(vocab_size, "model.vocab_size");
    DIFF(tie_embeddings, "model.tie_embeddings");
    DIFF(qkv_bias, "model.qkv_bias");
    DIFF(o_bias, "model o_bias (attention output bias)");
    DIFF(mlp_bias, "model mlp_bias (MLP biases)");
    DIFF(rope_theta, "model.rope_theta");
    DIFF(norm_eps, "model norm_eps");
    DIFF(rope_scale_factor, "model rope_scaling.factor");
    DIFF(rope_low_freq_factor, "model rope_scaling.low_freq_factor");
    DIFF(rope_high_freq_factor, "model rope_scaling.high_freq_factor");
    DIFF(rope_orig_max_pos, "model rope_scaling.original_max_position_embeddings");
#undef DIFF
    return NULL;
}
