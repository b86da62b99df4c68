/* peft.h - PEFT LoRA adapter directories in and out (docs/finetuning.md).
 *
 * A directory holds adapter_config.json (peft_type "LORA", r, lora_alpha, lora_dropout,
 * target_modules, use_rslora, fan_in_fan_out, bias, base_model_name_or_path, ...) and
 * adapter_model.safetensors with, per adapted module, "base_model.model.<module>.lora_A.weight"
 * (r, in) and "...lora_B.weight" (out, r) (also read with the adapter name: lora_A.default.weight).
 * `peft.PeftModel.from_pretrained(base, dir)` loads what peft_write writes, and anvil loads
 * what PEFT's save_pretrained writes. A mixture-of-experts model's routed experts are adapted as PEFT
 * adapts transformers 5's fused 3-D expert parameters: config target_parameters ["mlp.experts.gate_up_proj",
 * "mlp.experts.down_proj"], one tensor pair per layer and parameter, "...mlp.experts.lora_A.weight" (E r, in)
 * and "lora_B.weight" (out, E r) (gate_up_proj's under "mlp.experts.base_layer." when both are adapted: PEFT
 * nests the two wrappers), no dropout (PEFT refuses it there); peft.c scatters them to anvil's per-expert
 * adapters and back. Features anvil does not run (DoRA, rank or alpha patterns,
 * adapters on some layers only, trained biases, modules_to_save) are refused with a message
 * naming the key, never silently ignored.
 */
#ifndef ANVIL_IO_PEFT_H
#define ANVIL_IO_PEFT_H

#include <stddef.h>

#include "model/lora.h"
#include "model/model.h"

/* Read DIR/adapter_config.json for a model of config c: the spec, and the base model's path as
 * written there (base, n bytes; "" when absent). -1 with err_set() naming the file and the key. */
int peft_read_config(const char *dir, const ModelConfig *c, LoraSpec *spec, char *base, size_t n);
/* Load the adapter weights of DIR into m's adapter tensors (every one must be there with its
 * shape; tensors for modules m has no adapter on are an error). */
int peft_read_weights(const char *dir, Model *m);
/* The same into a host image of m's table (host + Param.offset) instead of m's store (host NULL: the
 * store); m then only names the tensors (cfg, pt, lora): a whole model's table under tensor parallel. */
int peft_read_weights_host(const char *dir, Model *m, float *host);
/* Write adapter_config.json and adapter_model.safetensors of m's adapters into the existing
 * directory dir (each file atomically). base_path goes to base_model_name_or_path. dtype:
 * DTYPE_F32 or DTYPE_BF16. */
int peft_write(const char *dir, const Model *m, const char *base_path, int dtype);
/* The same from a host image of m's table (host NULL: m's store). */
int peft_write_host(const char *dir, const Model *m, const float *host, const char *base_path, int dtype);
/* Whether dir holds an adapter_config.json. */
int peft_is_adapter_dir(const char *dir);

#endif
