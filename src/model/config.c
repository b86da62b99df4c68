#include "model/config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/error.h"

/* GPT-2 BPE vocabulary size (50,000 merges + 256 bytes + <|endoftext|>). */
#define GPT2_VOCAB 50257
#define GPT2_EOT 50256
/* Defaults of model.moe.aux_loss_coef and z_loss_coef (issue 12; ST-MoE uses 1e-3 for z). */
#define MOE_DEFAULT_AUX 0.01f
#define MOE_DEFAULT_Z 0.001f
/* The uncased English BERT WordPiece vocabulary (bert-base-uncased). */
#define BERT_VOCAB 30522
/* RoBERTa's byte-level BPE vocabulary (roberta-base), its pad id (= padding_idx) and <s>, </s>. */
#define ROBERTA_VOCAB 50265
#define ROBERTA_PAD 1
#define ROBERTA_BOS 0
#define ROBERTA_EOS 2

void model_config_defaults(ModelConfig *c, Family f)
{
    memset(c, 0, sizeof(*c));
    c->family = f;
    c->bos_token_id = -1;
    c->eos_token_id = -1;
    c->pad_token_id = -1;
    if (f == FAMILY_GPT2) {
        c->max_seq_len = 1024;
        c->vocab_size = GPT2_VOCAB;
        c->norm_eps = 1e-5f; /* HF GPT2Config.layer_norm_epsilon */
        c->tie_embeddings = 1;
        c->qkv_bias = c->o_bias = c->mlp_bias = 1;
        c->bos_token_id = c->eos_token_id = GPT2_EOT;
    } else if (f == FAMILY_BERT) {
        /* HF BertConfig's defaults: 512 positions, 2 token types, eps 1e-12, pad id 0 */
        c->max_seq_len = 512;
        c->vocab_size = BERT_VOCAB;
        c->norm_eps = 1e-12f;
        c->tie_embeddings = 1;
        c->qkv_bias = c->o_bias = c->mlp_bias = 1;
        c->post_norm = c->gelu_erf = c->bidirectional = c->mlm_head = 1;
        c->type_vocab_size = 2;
        c->pad_token_id = 0;
    } else {
        c->max_seq_len = 2048;
        c->vocab_size = 32000;
        c->norm_eps = 1e-5f; /* TinyLlama / LLaMA-2 rms_norm_eps */
        c->rope_theta = 10000.0f;
        c->tie_embeddings = 0;
        c->bos_token_id = 1;
        c->eos_token_id = 2;
    }
    c->moe_norm_topk = 1;
    c->moe_aux_coef = MOE_DEFAULT_AUX;
    c->moe_z_coef = MOE_DEFAULT_Z;
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
    /* BitNet b1.58 2B4T's shape (microsoft/bitnet-b1.58-2B-4T config.json), and a tiny one. */
    {"bitnet-2b", FAMILY_LLAMA, 30, 20, 5, 2560, 6912, 128256, 4096, 500000.0f},
    /* the BitNet b1.58 paper's 3B shape (Ma et al. 2024: 26 layers, width 3200, 32 heads, GLU 8640) with
     * LLaMA's 32K vocabulary, in the 2B4T's architecture: 3.43B parameters */
    {"bitnet-3b", FAMILY_LLAMA, 26, 32, 32, 3200, 8640, 32000, 2048, 10000.0f},
    {"bitnet-tiny", FAMILY_LLAMA, 2, 4, 2, 64, 176, GPT2_VOCAB, 256, 0},
    /* The real shapes of open 7B-13B checkpoints (config.json of each release), for speed and memory
     * runs with random weights; real weights come through model.init. Mistral-7B's sliding window
     * (4096) is not implemented, so its preset stops at 4096 positions, where the window is the
     * whole context. */
    {"llama2-7b", FAMILY_LLAMA, 32, 32, 32, 4096, 11008, 32000, 4096, 10000.0f},
    {"llama2-13b", FAMILY_LLAMA, 40, 40, 40, 5120, 13824, 32000, 4096, 10000.0f},
    {"mistral-7b", FAMILY_LLAMA, 32, 32, 8, 4096, 14336, 32000, 4096, 10000.0f},
    {"llama3-8b", FAMILY_LLAMA, 32, 32, 8, 4096, 14336, 128256, 8192, 500000.0f},
    /* BERT (Devlin et al. 2018), the uncased WordPiece vocabulary; bert-tiny for tests (its small
     * vocabulary covers the test WordPiece tokenizers). */
    {"bert-base", FAMILY_BERT, 12, 12, 12, 768, 3072, BERT_VOCAB, 512, 0},
    {"bert-large", FAMILY_BERT, 24, 16, 16, 1024, 4096, BERT_VOCAB, 512, 0},
    {"bert-tiny", FAMILY_BERT, 2, 4, 4, 64, 256, 2048, 128, 0},
    /* RoBERTa (Liu et al. 2019): BERT's shape, the GPT-2 byte-level BPE vocabulary (50265), positions
     * after padding_idx 1 (514 rows for 512 tokens); roberta-tiny for tests. */
    {"roberta-base", FAMILY_BERT, 12, 12, 12, 768, 3072, ROBERTA_VOCAB, 514, 0},
    {"roberta-tiny", FAMILY_BERT, 2, 4, 4, 64, 256, 1024, 130, 0},
};

/* Mixture-of-experts presets: a llama-family shape and its experts (d_ff is each expert's width). */
typedef struct {
    Preset base;
    int experts, top_k;
    float aux_coef; /* 0: the default (MOE_DEFAULT_AUX) */
} MoePreset;


static const MoePreset moe_presets[] = {
    /* 1.21B total, 0.38B active parameters (8 experts, 2 per token) */
    {{"moe-1b", FAMILY_LLAMA, 16, 16, 4, 1024, 2816, 32000, 2048, 0}, 8, 2, 0},
    /* Mixtral-8x7B-v0.1's config.json (46.7B parameters, 12.9B active) */
    {{"mixtral-8x7b", FAMILY_LLAMA, 32, 32, 8, 4096, 14336, 32000, 32768, 1e6f}, 8, 2, 0.02f},
    /* tiny, for tests: GPT-2 vocabulary */
    {{"moe-tiny", FAMILY_LLAMA, 2, 4, 2, 64, 96, GPT2_VOCAB, 256, 0}, 4, 2, 0},
};

const char *model_preset_names(void)
{
    return "gpt2-124m, gpt2-350m, gpt2-760m, gpt2-1.3b, llama-1b, gpt2-tiny, llama-tiny, llama2-7b, llama2-13b, "
           "mistral-7b, llama3-8b, moe-1b, mixtral-8x7b, moe-tiny, bitnet-2b, bitnet-3b, bitnet-tiny, bert-base, bert-large, bert-tiny, "
           "roberta-base, roberta-tiny";
}

static void preset_fill(ModelConfig *c, const Preset *p)
{
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
    if (!strncmp(p->name, "bitnet", 6)) model_config_bitnet(c);
    if (!strncmp(p->name, "roberta", 7)) { /* positions start after the pad id; one token type */
        c->pad_token_id = ROBERTA_PAD;
        c->pos_offset = ROBERTA_PAD + 1;
        c->type_vocab_size = 1;
        c->bos_token_id = ROBERTA_BOS;
        c->eos_token_id = ROBERTA_EOS;
        snprintf(c->hf_model_type, sizeof(c->hf_model_type), "roberta");
    }
}

int model_preset(ModelConfig *c, const char *name)
{
    for (size_t i = 0; i < ARRAY_LEN(presets); i++) {
        const Preset *p = &presets[i];
        if (strcmp(p->name, name) != 0) continue;
        preset_fill(c, p);
        return 0;
    }
    for (size_t i = 0; i < ARRAY_LEN(moe_presets); i++) {
        const MoePreset *p = &moe_presets[i];
        if (strcmp(p->base.name, name) != 0) continue;
        preset_fill(c, &p->base);
        c->moe_experts = p->experts;
        c->moe_top_k = p->top_k;
        c->moe_d_ff = p->base.d_ff;
        c->moe_every = 1;
        if (p->aux_coef > 0) c->moe_aux_coef = p->aux_coef;
        return 0;
    }
    return err_set("unknown model preset \"%s\" (known: %s)", name, model_preset_names());
}

int model_family_parse(const char *s, Family *f)
{
    if (!strcmp(s, "gpt2")) *f = FAMILY_GPT2;
    else if (!strcmp(s, "llama") || !strcmp(s, "mistral") || !strcmp(s, "qwen2") || !strcmp(s, "bitnet"))
        *f = FAMILY_LLAMA;
    else if (!strcmp(s, "bert") || !strcmp(s, "roberta")) *f = FAMILY_BERT;
    else return err_set("unknown model family \"%s\" (expected gpt2, llama, bitnet or bert)", s);
    return 0;
}

void model_config_bitnet(ModelConfig *c)
{
    c->family = FAMILY_LLAMA;
    c->sub_norm = 1;
    c->mlp_relu2 = 1;
    c->ternary = TERNARY_BITNET;
    snprintf(c->hf_model_type, sizeof(c->hf_model_type), "bitnet");
    snprintf(c->hf_arch, sizeof(c->hf_arch), "BitNetForCausalLM");
}

const char *model_family_name(Family f)
{
    return f == FAMILY_GPT2 ? "gpt2" : f == FAMILY_BERT ? "bert" : "llama";
}

/* Experts per MoE layer at most (the largest published models route over 256-384). */
#define MOE_MAX_EXPERTS 1024

/* Check and complete the model.moe.* fields; -1 with err_set() naming the key. */
static int moe_finish(ModelConfig *c)
{
    if (c->moe_experts < 0) return err_set("model.moe.experts: must be >= 0, got %d", c->moe_experts);
    if (c->moe_experts == 0) {
        if (c->moe_top_k > 0) return err_set("model.moe.top_k: %d is set but model.moe.experts is 0", c->moe_top_k);
        if (c->moe_shared_d_ff > 0)
            return err_set("model.moe.shared_experts: set but model.moe.experts is 0");
        if (c->moe_d_ff > 0) return err_set("model.moe.d_ff: %d is set but model.moe.experts is 0", c->moe_d_ff);
        c->moe_top_k = c->moe_d_ff = c->moe_every = 0;
        return 0;
    }
    if (c->family != FAMILY_LLAMA) return err_set("model.moe.experts: mixture of experts needs the llama family");
    if (c->moe_experts > MOE_MAX_EXPERTS)
        return err_set("model.moe.experts: %d is larger than the limit %d", c->moe_experts, MOE_MAX_EXPERTS);
    if (c->moe_top_k == 0) c->moe_top_k = c->moe_experts < 2 ? 1 : 2;
    if (c->moe_top_k < 0 || c->moe_top_k > c->moe_experts)
        return err_set("model.moe.top_k: must be in 1 .. model.moe.experts (%d), got %d", c->moe_experts, c->moe_top_k);
    if (c->moe_d_ff == 0) c->moe_d_ff = c->d_ff;
    if (c->moe_d_ff < 0 || c->moe_d_ff > (1 << 20))
        return err_set("model.moe.d_ff: must be in 1 .. %d, got %d", 1 << 20, c->moe_d_ff);
    if (c->moe_every == 0) c->moe_every = 1;
    if (c->moe_every < 0 || c->moe_every > c->n_layer)
        return err_set("model.moe.every: must be in 1 .. model.n_layer (%d), got %d", c->n_layer, c->moe_every);
    /* no dense MLP anywhere: d_ff means the experts' width, as Mixtral's intermediate_size does */
    if (c->moe_every == 1 && !cfg_moe_dense_count(c)) c->d_ff = c->moe_d_ff;
    if (c->moe_shared_d_ff < 0 || c->moe_shared_d_ff > (1 << 20))
        return err_set("model.moe.shared_experts: the shared width %d is out of range", c->moe_shared_d_ff);
    if (!(c->moe_aux_coef >= 0) || !isfinite(c->moe_aux_coef))
        return err_set("model.moe.aux_loss_coef: must be a finite number >= 0, got %g", c->moe_aux_coef);
    if (!(c->moe_z_coef >= 0) || !isfinite(c->moe_z_coef))
        return err_set("model.moe.z_loss_coef: must be a finite number >= 0, got %g", c->moe_z_coef);
    if (!(c->moe_jitter >= 0 && c->moe_jitter < 1))
        return err_set("model.moe.router_jitter: must be a number in [0, 1), got %g", c->moe_jitter);
    if (c->moe_jitter > 0 && c->moe_shared_d_ff > 0)
        return err_set("model.moe.router_jitter: Mixtral's (its MoE layers have no shared expert; Qwen2-MoE has no "
                       "jitter)");
    if ((int64_t)2 * c->moe_d_ff * c->d_model > INT32_MAX || (int64_t)2 * c->moe_shared_d_ff * c->d_model > INT32_MAX)
        return err_set("model.moe.d_ff: an expert matrix (2 x %d x %d) has more than %d elements", c->moe_d_ff,
                       c->d_model, INT32_MAX);
    return 0;
}

/* A dropout probability: finite, in [0, 1). */
static int dropout_check(const char *key, float p)
{
    if (!(p >= 0 && p < 1)) return err_set("%s: must be a probability in [0, 1), got %g", key, p);
    return 0;
}

int model_config_finish(ModelConfig *c)
{
    if (dropout_check("model.dropout", c->dropout) || dropout_check("model.attn_dropout", c->attn_dropout)) return -1;
    /* Upper limits, far above every published model (the largest, LLaMA-3 405B, has 126 layers,
     * width 16384, 128 heads of 128, d_ff 53248, a 128256-token vocabulary; contexts reach 10M)
     * and low enough that every size and product below fits an int, and every tensor's element
     * count fits 32 bits, whatever the config says. Products are formed in 64 bits. */
    enum {
        MAX_LAYERS = CFG_MAX_LAYERS,
        MAX_WIDTH = 1 << 16,      /* d_model, n_head * head_dim */
        MAX_HEADS = 1024,         /* n_head, n_kv_head */
        MAX_HEAD_DIM = 1024,
        MAX_FF = 1 << 20,         /* d_ff */
        MAX_VOCAB = 1 << 24,
        MAX_SEQ = 1 << 24,        /* max_seq_len */
    };
    const int64_t max_numel = INT32_MAX; /* elements of one parameter tensor */
#define CHECK_RANGE(field, v, hi)                                                                          \
    do {                                                                                                   \
        if ((v) <= 0) return err_set("model.%s: must be positive, got %d", field, (v));                  \
        if ((v) > (hi)) return err_set("model.%s: %d is larger than the limit %d", field, (v), (int)(hi)); \
    } while (0)
    CHECK_RANGE("n_layer", c->n_layer, MAX_LAYERS);
    CHECK_RANGE("n_head", c->n_head, MAX_HEADS);
    CHECK_RANGE("d_model", c->d_model, MAX_WIDTH);
    CHECK_RANGE("vocab_size", c->vocab_size, MAX_VOCAB);
    CHECK_RANGE("max_seq_len", c->max_seq_len, MAX_SEQ);
    if (c->n_kv_head <= 0) c->n_kv_head = c->n_head;
    CHECK_RANGE("n_kv_head", c->n_kv_head, MAX_HEADS);
    if (c->n_head % c->n_kv_head)
        return err_set("model.n_kv_head: %d does not divide n_head %d", c->n_kv_head, c->n_head);
    if (c->head_dim <= 0) {
        if (c->d_model % c->n_head)
            return err_set("model.n_head: %d does not divide d_model %d", c->n_head, c->d_model);
        c->head_dim = c->d_model / c->n_head;
    }
    CHECK_RANGE("head_dim", c->head_dim, MAX_HEAD_DIM);
    int64_t q_dim = (int64_t)c->n_head * c->head_dim;
    if (q_dim > MAX_WIDTH)
        return err_set("model.n_head: %d heads of %d (head_dim) = %lld is larger than the limit %d", c->n_head,
                       c->head_dim, (long long)q_dim, (int)MAX_WIDTH);
    if (c->family == FAMILY_LLAMA && c->head_dim % 2)
        return err_set("model: RoPE needs an even head dimension, got %d", c->head_dim);
    if (c->d_ff <= 0) {
        if (c->family != FAMILY_GPT2)
            return err_set("model.d_ff: must be set for the %s family", model_family_name(c->family));
        if ((int64_t)4 * c->d_model > MAX_FF)
            return err_set("model.d_model: 4 * %d (the default d_ff) is larger than the limit %d", c->d_model,
                           (int)MAX_FF);
        c->d_ff = 4 * c->d_model;
    }
    CHECK_RANGE("d_ff", c->d_ff, MAX_FF);
#undef CHECK_RANGE
    /* the largest tensors: the embedding (and head), positions, qkv, the MLP matrices */
    int64_t C = c->d_model, fc = (c->family == FAMILY_LLAMA ? 2 : 1) * (int64_t)c->d_ff;
    int64_t qkv = q_dim + 2 * (int64_t)c->n_kv_head * c->head_dim;
    if ((int64_t)c->vocab_size * C > max_numel)
        return err_set("model.vocab_size: %d x d_model %d = %lld embedding elements, more than %lld",
                       c->vocab_size, c->d_model, (long long)c->vocab_size * C, (long long)max_numel);
    if (cfg_learned_pos(c) && (int64_t)c->max_seq_len * C > max_numel)
        return err_set("model.max_seq_len: %d x d_model %d = %lld position elements, more than %lld",
                       c->max_seq_len, c->d_model, (long long)c->max_seq_len * C, (long long)max_numel);
    if (qkv * C > max_numel || fc * C > max_numel)
        return err_set("model: the q/k/v (%lld x %d) or MLP (%lld x %d) matrix has more than %lld elements",
                       (long long)qkv, c->d_model, (long long)fc, c->d_model, (long long)max_numel);
    if (c->sub_norm && q_dim != C)
        return err_set("model: BitNet's attn_sub_norm needs n_head * head_dim (%lld) = d_model (%d)", (long long)q_dim,
                       c->d_model);
    if ((c->ternary || c->sub_norm) && c->moe_experts > 0)
        return err_set("model.ternary: BitNet layers with model.moe.experts %d are not supported yet", c->moe_experts);
    if (c->ternary && c->family != FAMILY_LLAMA)
        return err_set("model.ternary: BitLinear products need the llama or bitnet family (got gpt2)");
    if (c->family == FAMILY_LLAMA && !(c->rope_theta > 0))
        return err_set("model.rope_theta: must be positive, got %g", c->rope_theta);
    if (!(c->norm_eps > 0)) c->norm_eps = 1e-5f;
    if (moe_finish(c)) return -1;
    if (c->family != FAMILY_LLAMA && c->n_kv_head != c->n_head) /* their HF layouts have no grouped-query attention */
        return err_set("model.n_kv_head: the %s family has no grouped-query attention (n_kv_head %d, n_head %d): "
                       "leave it unset or equal to n_head", c->family == FAMILY_GPT2 ? "gpt2" : "bert", c->n_kv_head,
                       c->n_head);
    if (!c->hf_model_type[0] && c->moe_experts > 0) { /* Mixtral: experts on every layer, nothing else */
        int mixtral = !c->moe_shared_d_ff && !c->qkv_bias && c->moe_every == 1 && !cfg_moe_dense_count(c) &&
                      c->moe_norm_topk;
        snprintf(c->hf_model_type, sizeof(c->hf_model_type), "%s", mixtral ? "mixtral" : "qwen2_moe");
    }
    if (c->family == FAMILY_BERT) {
        if (c->type_vocab_size < 0 || c->type_vocab_size > MAX_VOCAB)
            return err_set("model.type_vocab_size: must be in 0..%d, got %d", (int)MAX_VOCAB, c->type_vocab_size);
        if (c->pos_offset < 0 || c->pos_offset >= c->max_seq_len)
            return err_set("model: the position offset %d leaves no position of %d", c->pos_offset, c->max_seq_len);
        if (!c->hf_model_type[0]) snprintf(c->hf_model_type, sizeof(c->hf_model_type), "%s", c->pos_offset ? "roberta" : "bert");
        if (!c->hf_arch[0])
            snprintf(c->hf_arch, sizeof(c->hf_arch), "%s",
                     !strcmp(c->hf_model_type, "roberta") ? (c->mlm_head ? "RobertaForMaskedLM" : "RobertaModel")
                                                          : (c->mlm_head ? "BertForMaskedLM" : "BertModel"));
    }
    if (!c->hf_model_type[0])
        snprintf(c->hf_model_type, sizeof(c->hf_model_type), "%s",
                 c->family == FAMILY_GPT2 ? "gpt2" : (c->qkv_bias ? "qwen2" : "llama"));
    if (!c->hf_arch[0]) {
        const char *a = "LlamaForCausalLM";
        if (!strcmp(c->hf_model_type, "gpt2")) a = "GPT2LMHeadModel";
        else if (!strcmp(c->hf_model_type, "qwen2")) a = "Qwen2ForCausalLM";
        else if (!strcmp(c->hf_model_type, "mistral")) a = "MistralForCausalLM";
        else if (!strcmp(c->hf_model_type, "mixtral")) a = "MixtralForCausalLM";
        else if (!strcmp(c->hf_model_type, "qwen2_moe")) a = "Qwen2MoeForCausalLM";
        else if (!strcmp(c->hf_model_type, "bitnet")) a = "BitNetForCausalLM";
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
    DIFF(moe_experts, "model.moe.experts");
    DIFF(moe_top_k, "model.moe.top_k");
    DIFF(moe_d_ff, "model.moe.d_ff");
    DIFF(moe_every, "model.moe.every");
    if (memcmp(a->moe_dense, b->moe_dense, sizeof(a->moe_dense))) return "model mlp_only_layers (dense layers by list)";
    DIFF(moe_shared_d_ff, "model.moe.shared_experts (shared expert width)");
    DIFF(moe_norm_topk, "model.moe.norm_topk_prob");
    DIFF(sub_norm, "model.family (BitNet sub-norms)");
    DIFF(mlp_relu2, "model.family (BitNet relu2 MLP)");
    DIFF(ternary, "model.ternary");
    DIFF(post_norm, "model post_norm");
    DIFF(gelu_erf, "model gelu_erf");
    DIFF(bidirectional, "model bidirectional");
    DIFF(type_vocab_size, "model type_vocab_size");
    DIFF(pos_offset, "model pos_offset (position ids offset)");
    DIFF(mlm_head, "model mlm_head");
#undef DIFF
    return NULL;
}
