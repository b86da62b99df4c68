/* bnb.h - bitsandbytes 4-bit checkpoints: the layout transformers' save_pretrained
 * writes for a model loaded with BitsAndBytesConfig(load_in_4bit=True), the
 * "*-bnb-4bit" directories people download (docs/finetuning.md).
 *
 * config.json has "quantization_config": {"quant_method": "bitsandbytes",
 * "load_in_4bit": true, "bnb_4bit_quant_type": "nf4"|"fp4",
 * "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype",
 * "bnb_4bit_quant_storage", "llm_int8_skip_modules", ...}. Each quantized
 * linear weight W (HF name, e.g. model.layers.0.self_attn.q_proj.weight) is
 * stored as
 *   W                                   packed nibbles, U8 ((n+1)/2, 1) (another
 *                                       quant_storage dtype: the same bytes)
 *   W.absmax                            F32 (nblocks) | U8 (nblocks) when nested
 *   W.quant_map                         F32 (16): the 4-bit code
 *   W.nested_absmax                     F32 (ceil(nblocks / nested_blocksize))
 *   W.nested_quant_map                  F32 (256): the 8-bit dynamic map
 *   W.quant_state.bitsandbytes__nf4     U8: JSON {"quant_type", "blocksize",
 *     (or __fp4)                        "dtype", "shape", "nested_blocksize",
 *                                       "nested_dtype", "nested_offset"}
 * with shape (out, in) (GPT-2's Conv1D weights are transposed to that before
 * quantizing). Everything else (embeddings, norms, biases, lm_head) is a
 * plain tensor, usually BF16.
 *
 * Reading keeps the packed nibbles in the mapped file (nothing is
 * dequantized at open); every length, shape and key is validated first, and
 * errors name the file and the tensor:
 *   "DIR/model.safetensors: model.layers.0.mlp.up_proj.weight.absmax: 95 values, expected 96 (blocks of 64)"
 */
#ifndef ANVIL_IO_BNB_H
#define ANVIL_IO_BNB_H

#include <stdint.h>

#include "io/safetensors.h"
#include "model/quant4.h"

/* config.json's quantization_config (the keys anvil reads and writes). */
typedef struct {
    Q4Type quant_type;      /* bnb_4bit_quant_type */
    int double_quant;       /* bnb_4bit_use_double_quant */
    char compute_dtype[16]; /* bnb_4bit_compute_dtype: "bfloat16", "float32", ... */
    char quant_storage[16]; /* bnb_4bit_quant_storage: "uint8" (what anvil writes) */
} BnbConfig;

/* One 4-bit weight. q.packed (and q.qabsmax) point into the mapped file; the
 * fp32 arrays are aligned copies owned here. */
typedef struct {
    char *name; /* the weight's HF name */
    int ndim;
    int64_t shape[ST_MAX_DIM]; /* quant_state "shape": (out, in) for a linear */
    StDtype dtype;             /* quant_state "dtype": the weight's dtype before quantization */
    Q4State q;
    float *absmax, *nested_absmax, *map8;
    const StFile *file; /* where it is stored (for messages) */
} BnbTensor;

typedef struct {
    char *dir;
    BnbConfig cfg;
    StSet set;
    BnbTensor *t; /* in file order */
    int n;
} BnbDir;

/* Read DIR/config.json's quantization_config: 1 and *c filled for a
 * bitsandbytes 4-bit directory, 0 when there is no quantization_config,
 * -1 with err_set for anything else (8-bit, another quant_method, bad keys). */
int bnb_read_config(const char *dir, BnbConfig *c);

/* Open a bitsandbytes 4-bit directory: config, safetensors (one file or
 * shards), every 4-bit weight validated. On failure *d is closed. */
int bnb_open(BnbDir *d, const char *dir);
void bnb_close(BnbDir *d);
/* The 4-bit weight of that HF name, or NULL (a plain tensor, or absent). */
const BnbTensor *bnb_find(const BnbDir *d, const char *name);
/* Is this one of the companion tensors (W.absmax, W.quant_map, ...,
 * W.quant_state.*) rather than a weight? */
int bnb_is_state_name(const char *name);

/* All values of one weight, in its shape, fp32: code * absmax, what
 * bitsandbytes' gemm_4bit multiplies with at fp32 compute (dequantize_4bit
 * itself returns the state's dtype: q4_dequantize_bf16 gives that for BF16). */
void bnb_dequantize(const BnbTensor *t, float *out);

/* Is this HF tensor a GPT-2 Conv1D weight (stored (in, out) in a plain
 * directory, (out, in) once quantized)? model_type is config.json's. */
int bnb_hf_conv1d(const char *model_type, const char *name);

/* Write a plain HF directory (config.json without quantization_config,
 * generation_config.json if present, model.safetensors in F32) with every
 * weight dequantized and Conv1D weights transposed back: what
 * hf_load_model reads. Built as "<out>.tmp.<pid>" and renamed. */
int bnb_save_dequantized(const BnbDir *d, const char *out_dir);

/* ---- writing ---- */

/* One quantized weight to write. */
typedef struct {
    const char *name;   /* HF name of the weight */
    int64_t rows, cols; /* (out, in) */
    StDtype dtype;      /* the dtype it was quantized from: BF16 (what anvil writes), F16, F32 */
    const Q4Quant *q;
} BnbWriteQuant;

/* The JSON that QuantState.as_dict(packed=True) stores as
 * W.quant_state.bitsandbytes__<type>, byte for byte (Python's json.dumps).
 * Returns a new string. */
char *bnb_quant_state_json(const Q4State *s, StDtype dtype, int ndim, const int64_t *shape);

/* model.safetensors (sharded above 5 GB) in dir: the plain tensors and each
 * quantized weight with its companions, in the order the safetensors library
 * writes them (by dtype, then name), so that a model transformers would save
 * identically comes out byte for byte the same. */
int bnb_write_weights(const char *dir, const StWriteTensor *plain, int nplain, const BnbWriteQuant *q,
                      int nq);
/* dst_dir/config.json = src_dir/config.json with "quantization_config" set
 * from c and dtype bfloat16; generation_config.json copied when present. */
int bnb_write_config(const char *src_dir, const char *dst_dir, const BnbConfig *c);

#endif
