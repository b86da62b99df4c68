#!/usr/bin/env bash
# cli_lora.sh - LoRA fine-tuning end to end on the CPU:
#   - a small byte-level base is pretrained, then fine-tuned with lora.r: the base stays frozen, the
#     checkpoints are PEFT adapter directories (no base weights copied), the held-out loss falls;
#   - resuming a LoRA run from a mid-run checkpoint gives the same adapter bytes;
#   - eval ppl --adapter, anvil merge and eval of the merged directory agree; generate --adapter runs;
#   - lora.init starts from an adapter; bad keys are one clear line;
#   - where Python has torch + transformers + peft (ANVIL_PYTHON, or python3), PEFT loads anvil's
#     adapter and computes what anvil's merge computes (tools/check_peft_load.py).
set -u
. "$(dirname "$0")/lib_cli.sh"

TRAIN=examples/sentences-train.txt
VAL=examples/sentences-val.txt
if [ ! -f "$TRAIN" ]; then
    echo "skip: $TRAIN not found (run from the repository root)" >&2
    echo "0 passed, 0 failed"
    exit 0
fi
head -c 20000 "$VAL" >"$tmp/val.txt"

cat >"$tmp/base.yaml" <<YAML
model:
  preset: gpt2-tiny
  vocab_size: 257
  max_seq_len: 64
data:
  train: $TRAIN
  tokenizer: byte
train:
  steps: 30
  batch_size: 4
  seq_len: 64
  lr: 3e-3
  warmup_steps: 5
eval:
  steps: 0
out_dir: $tmp/base
YAML
"$ANVIL" train "$tmp/base.yaml" >/dev/null 2>&1
check "base pretrained" test -f "$tmp/base/final/model.safetensors"

cat >"$tmp/lora.yaml" <<YAML
model:
  init: $tmp/base/final
lora:
  r: 4
  alpha: 8
  targets: [c_attn, c_proj, c_fc]
data:
  train: $TRAIN
  tokenizer: byte
train:
  steps: 20
  batch_size: 4
  seq_len: 64
  lr: 1e-2
  warmup_steps: 2
eval:
  steps: 0
checkpoint:
  every: 10
  keep: 0
out_dir: $tmp/lora
YAML
"$ANVIL" train "$tmp/lora.yaml" >"$tmp/out" 2>&1
check "lora run" test $? -eq 0
check "only the adapters train" grep -qE "parameters: 0\.01M trainable, 0\.12M frozen" "$tmp/out"
ck=$tmp/lora/step-0000020
check "checkpoint is a PEFT adapter directory" test -f "$ck/adapter_config.json" -a -f "$ck/adapter_model.safetensors"
check "no base weights in the checkpoint" test ! -e "$ck/model.safetensors"
check "adapter names its base" grep -q "\"base_model_name_or_path\": \"$(cd "$tmp/base" && pwd -P)/step-0000030\"" \
    "$ck/adapter_config.json"
check "adapter config: r, alpha, fan_in_fan_out" grep -qE '"r": 4' "$ck/adapter_config.json"
grep -q '"lora_alpha": 8' "$ck/adapter_config.json" && grep -q '"fan_in_fan_out": true' "$ck/adapter_config.json"
check "adapter config values" test $? -eq 0

# ---- resume is exact ----
cp -r "$tmp/lora" "$tmp/resumed"
rm -rf "$tmp/resumed/step-0000020"
"$ANVIL" train "$tmp/lora.yaml" --set out_dir="$tmp/resumed" --resume "$tmp/resumed" >/dev/null 2>&1
check "resumed adapter identical" cmp -s "$ck/adapter_model.safetensors" "$tmp/resumed/step-0000020/adapter_model.safetensors"
# a 4-bit base too: the resume keeps the base's NF4 bytes (it used to re-quantize their dequantized
# values, which double quantization does not map back to the same bytes)
"$ANVIL" train "$tmp/lora.yaml" --set out_dir="$tmp/qlora" --set model.quant=nf4 >/dev/null 2>&1
cp -r "$tmp/qlora" "$tmp/qresumed"
rm -rf "$tmp/qresumed/step-0000020"
"$ANVIL" train "$tmp/lora.yaml" --set out_dir="$tmp/qresumed" --set model.quant=nf4 --resume "$tmp/qresumed" >/dev/null 2>&1
check "QLoRA: resumed adapter identical" cmp -s "$tmp/qlora/step-0000020/adapter_model.safetensors" \
    "$tmp/qresumed/step-0000020/adapter_model.safetensors"

# ---- eval, merge, generate ----
"$ANVIL" eval ppl --model "$tmp/base/final" --adapter "$ck" --data "$tmp/val.txt" >"$tmp/ppl_a" 2>&1
check "eval ppl --adapter" grep -q "ppl " "$tmp/ppl_a"
"$ANVIL" merge --model "$tmp/base/final" --adapter "$ck" --out "$tmp/merged" >/dev/null 2>&1
check "merge writes a plain model" test -f "$tmp/merged/model.safetensors" -a -f "$tmp/merged/tokenizer.json"
check "merged has no adapter" test ! -e "$tmp/merged/adapter_config.json"
"$ANVIL" eval ppl --model "$tmp/merged" --data "$tmp/val.txt" >"$tmp/ppl_m" 2>&1
nll() { grep -o 'nll [0-9.]*' "$1" | cut -d' ' -f2; }
check "merged nll equals adapted nll ($(nll "$tmp/ppl_a") vs $(nll "$tmp/ppl_m"))" test "$(nll "$tmp/ppl_a")" = "$(nll "$tmp/ppl_m")"
"$ANVIL" eval ppl --model "$tmp/base/final" --data "$tmp/val.txt" >"$tmp/ppl_b" 2>&1
check "the adapter lowers the held-out loss ($(nll "$tmp/ppl_b") -> $(nll "$tmp/ppl_a"))" \
    awk -v b="$(nll "$tmp/ppl_b")" -v a="$(nll "$tmp/ppl_a")" 'BEGIN { exit !(a < b) }' 
"$ANVIL" generate --model "$tmp/base/final" --adapter "$ck" --prompt-ids 72,101 --max-tokens 5 --print-ids \
    --temperature 0 >"$tmp/gen" 2>&1
check "generate --adapter" test -s "$tmp/gen"
expect_fail merge-not-adapter "adapter_config.json" merge --model "$tmp/base/final" --adapter "$tmp/base/final" \
    --out "$tmp/m2"
check "failed merge leaves nothing" test ! -e "$tmp/m2"

# ---- lora.init, bad keys ----
"$ANVIL" train "$tmp/lora.yaml" --set lora.init="$ck" --set train.steps=2 --set out_dir="$tmp/init" >"$tmp/out" 2>&1
check "lora.init" test -f "$tmp/init/step-0000002/adapter_model.safetensors"
expect_fail lora-init-r "lora.r: 8 differs from lora.init's r 4" train "$tmp/lora.yaml" --set lora.init="$ck" \
    --set lora.r=8 --set out_dir="$tmp/r1"
expect_fail lora-target "lora.targets|\"q_proj\" is not a linear module of the gpt2 family" train "$tmp/lora.yaml" \
    --set lora.targets=q_proj --set out_dir="$tmp/r2"
expect_fail lora-freeze "model.freeze|with lora.r" train "$tmp/lora.yaml" --set 'model.freeze=transformer.wte.*' \
    --set out_dir="$tmp/r3"

# ---- PEFT loads what anvil wrote (where Python has torch, transformers, peft) ----
PY=${ANVIL_PYTHON:-python3}
if "$PY" -c "import torch, transformers, peft" >/dev/null 2>&1; then
    "$PY" tools/check_peft_load.py "$tmp/base/final" "$ck" "$tmp/merged" >"$tmp/peft.log" 2>&1
    check "PEFT loads anvil's adapter ($(grep -o 'max rel err [0-9.e+-]*' "$tmp/peft.log" | head -1))" \
        grep -q '^OK' "$tmp/peft.log"
else
    echo "skip: $PY has no torch/transformers/peft; PEFT loading not checked (set ANVIL_PYTHON)" >&2
fi

cli_summary
