/* bnb_model.h - a bitsandbytes 4-bit directory as the base of a model (QLoRA on a pre-quantized
 * checkpoint): the 4-bit weights go into the parameter store as they are (no dequantize and
 * re-quantize), the plain tensors (embeddings, norms, biases, head) as dense frozen tensors. */
#ifndef ANVIL_IO_BNB_MODEL_H
#define ANVIL_IO_BNB_MODEL_H

#include "model/model.h"

/* The quantization of a directory's config.json: 1 and *q when it is a bitsandbytes 4-bit
 * directory, 0 when it is a plain one, -1 with err_set() otherwise (8-bit, other methods). */
int bnb_model_quant(const char *dir, Q4Spec *q);
/* Load every base tensor of m (created with the quant spec bnb_model_quant gave) from dir. Each
 * 4-bit part must be stored 4-bit and each dense tensor plain, with the shapes m expects. */
int bnb_model_load(Model *m, const char *dir);
/* The same walk for a table without a store (tensor parallel's whole model): each 4-bit part as the
 * directory stores it, and each dense tensor whole (fp32, our layout), handed to the sink; a nonzero
 * return of the sink (with err_set) ends the walk. */
typedef struct {
    int (*q4)(void *ctx, int i, int part, const Q4State *s);
    int (*dense)(void *ctx, int i, const float *values);
    void *ctx;
} BnbSink;
int bnb_model_read(const char *dir, const ModelConfig *cfg, const ParamTable *pt, const BnbSink *sink);

#endif
