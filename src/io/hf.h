/* hf.h - Hugging Face model directories in and out (docs/formats.md).
 *
 * A model directory is config.json + model.safetensors (or shards with
 * model.safetensors.index.json) [+ generation_config.json]. Supported classes:
 * GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM.
 * Tensors are renamed and re-laid-out between HF and the parameter table of
 * config.h (GPT-2 Conv1D weights are stored (in, out) and transposed; LLaMA's
 * q/k/v and gate/up projections are stacked into qkv.w and fc.w).
 */
#ifndef ANVIL_IO_HF_H
#define ANVIL_IO_HF_H

#include <stdint.h>

#include "backend/backend.h"
#include "model/config.h"
#include "model/params.h"

struct Model;

/* Read "<dir>/config.json" into *cfg (finished with model_config_finish).
 * -1 with err_set("<dir>/config.json: <key>: <what>") on a missing or
 * mistyped key, or an unsupported architecture / activation / RoPE type. */
int hf_read_config(const char *dir, ModelConfig *cfg);

/* The dropout probabilities dir/config.json asks for, 0 where it has none: *hidden the largest of
 * hidden_dropout_prob, resid_pdrop, embd_pdrop, hidden_dropout; *attn the largest of
 * attention_probs_dropout_prob, attn_pdrop, attention_dropout. transformers applies them in train mode;
 * anvil never does (only model.dropout and model.attn_dropout turn dropout on): the trainer says so.
 * -1 with err_set() when config.json cannot be read. */
int hf_config_dropout(const char *dir, float *hidden, float *attn);

/* 1 when dir holds model.safetensors or model.safetensors.index.json. */
int hf_has_weights(const char *dir);
/* Check config (as read from dir/config.json) against the shapes in the safetensors
 * headers of dir, reading nothing but the headers: the embedding (width, vocabulary),
 * positions, layer 0's attention and MLP widths, and that the last layer exists and no
 * layer after it. -1 with err_set("<dir>/config.json: <key>: N does not match the
 * weights: ...") naming the config.json key. hf_read_config calls it when dir has weights,
 * so that nothing is allocated for a config that the weights contradict. */
int hf_check_shapes(const char *dir, const ModelConfig *cfg);

/* Fill host (pt->total floats, laid out as pt says) from the directory's
 * safetensors (F32, F16, BF16, F64). Every parameter must be present with the
 * right shape; buffers such as GPT-2's attn.bias, and lm_head.weight of a tied
 * model, are ignored. -1 with err_set() naming the tensor and the file.
 * With host NULL, only checks that every tensor is present and well-formed. */
int hf_read_weights(const char *dir, const ModelConfig *cfg, const ParamTable *pt, float *host);
/* The same, calling done(ctx, i) as soon as tensor i's values in host are complete (each tensor
 * once), so that a caller can upload it and release its part of host (a run streaming the weights
 * onto a sharded store: trainer.c). */
int hf_read_weights_each(const char *dir, const ModelConfig *cfg, const ParamTable *pt, float *host,
                         void (*done)(void *ctx, int i), void *ctx);

/* The same from one safetensors file whose tensors are named "<prefix><hf name>"
 * in HF layout (e.g. gradients or Adam moments written from hf_export), into
 * a buffer laid out like pt. */
int hf_import_file(const char *path, const char *prefix, const ModelConfig *cfg, const ParamTable *pt,
                   float *buf);

/* One tensor under its HF name, in HF layout (fp32, owned). */
typedef struct {
    char name[96];
    int ndim;
    int64_t shape[2];
    float *data;
} HfTensor;

/* Map any flat buffer laid out like the parameters (weights, gradients,
 * moments) to HF-named, HF-layout tensors. *out has *n entries; free with
 * hf_tensors_free. */
int hf_export(const ModelConfig *cfg, const ParamTable *pt, const float *buf, HfTensor **out, int *n);
void hf_tensors_free(HfTensor *t, int n);

/* The Hugging Face name of every tensor a directory of this config holds, with the index of the
 * parameter it belongs to (a fused parameter such as llama's qkv.w has several). free() *out. */
typedef struct {
    char name[96];
    int param;
    int64_t row0, rows; /* the parameter's rows it holds */
    int transpose;      /* stored (in, out) (GPT-2's Conv1D) */
} HfName;
int hf_names(const ModelConfig *cfg, const ParamTable *pt, HfName **out, int *n);

/* Write config.json, generation_config.json and model.safetensors (sharded
 * above ST_DEFAULT_MAX_SHARD) into the existing directory dir, each file
 * atomically. dtype is DTYPE_F32 or DTYPE_BF16 (the stored weights). */
int hf_write_files(const char *dir, const ModelConfig *cfg, const ParamTable *pt, const float *host,
                   int dtype);
/* The same into a fresh "<dir>.tmp.<pid>", then published as dir in one
 * rename (replacing an existing dir). */
int hf_save(const char *dir, const ModelConfig *cfg, const ParamTable *pt, const float *host, int dtype);
/* hf_save, with the tokenizer files of directory tokenizer_from (tokenizer.json,
 * tokenizer_config.json, special_tokens_map.json, vocab.json + merges.txt, ...) copied
 * unchanged into the new directory before it is published; NULL: none. */
int hf_save_with_tokenizer(const char *dir, const ModelConfig *cfg, const ParamTable *pt, const float *host,
                           int dtype, const char *tokenizer_from);
/* A BitNet model (model.ternary: bitnet) as transformers' offline BitLinear layout into dir: every
 * block linear packed (U8 (ceil(out/4), in), 2-bit trits) with its weight_scale (1 / gamma), the rest
 * F32, config.json with quantization_config {quant_method: bitnet, linear_class: bitlinear,
 * quantization_mode: offline}. hf_read_weights reads such directories back (docs/ternary.md). */
int hf_save_bitnet(const char *dir, const ModelConfig *cfg, const ParamTable *pt, const float *host);
/* config.json alone (used by hf_write_files; exposed for tests and tools). */
int hf_write_config(const char *dir, const ModelConfig *cfg, int dtype);

/* config + weights -> a Model on the backend: every tensor trainable, or (trainable 0) every
 * tensor frozen, as evaluation, generation and conversion want (no master, no gradients).
 * NULL with err_set() on failure. */
struct Model *hf_load_model(const char *dir, const Backend *be, int trainable);

#endif
