#!/usr/bin/env bash
# cli_offload.sh - train.offload_optimizer and train.offload_embeddings on the CPU (docs/finetuning.md):
#   - a QLoRA run and a model.freeze run with both switches compute what the same runs without them
#     compute, bit for bit: the same losses, the same adapter / model bytes, the same optimizer state;
#   - a run resumed with the switches from the other run's checkpoint ends on the same bytes;
#   - what cannot be offloaded is one clear line: a tied embedding, a trainable one.
# (On the CPU host memory is the backend's own memory; `ANVIL_TEST_DEVICE=cuda` runs the same
# comparison on a GPU, deterministic kernels, where the moments and the embedding then live in pinned
# host memory: tools/gpu-check.sh offload.)
set -u
. "$(dirname "$0")/lib_cli.sh"
DEVICE=${ANVIL_TEST_DEVICE:-cpu}

TRAIN=examples/sentences-train.txt
if [ ! -f "$TRAIN" ]; then
    echo "skip: $TRAIN not found (run from the repository root)" >&2
    echo "0 passed, 0 failed"
    exit 0
fi

cat >"$tmp/base.yaml" <<YAML
model:
  preset: llama-tiny
  vocab_size: 257
  max_seq_len: 64
data:
  train: $TRAIN
  tokenizer: byte
train:
  steps: 6
  batch_size: 2
  seq_len: 64
  lr: 3e-3
  warmup_steps: 2
device: $DEVICE
eval:
  steps: 0
out_dir: $tmp/base
YAML
"$ANVIL" train "$tmp/base.yaml" >/dev/null 2>&1
check "base pretrained" test -f "$tmp/base/final/model.safetensors"

cat >"$tmp/qlora.yaml" <<YAML
model:
  init: $tmp/base/final
  quant: nf4
lora:
  r: 4
  alpha: 8
data:
  train: $TRAIN
  tokenizer: byte
train:
  steps: 8
  batch_size: 2
  seq_len: 64
  lr: 1e-2
  warmup_steps: 2
  deterministic: true
device: $DEVICE
eval:
  steps: 0
checkpoint:
  every: 4
out_dir: $tmp/q0
YAML
losses() { grep -o '"loss": [^,]*' "$1/metrics.jsonl"; }
"$ANVIL" train "$tmp/qlora.yaml" >"$tmp/q0.log" 2>&1
"$ANVIL" train "$tmp/qlora.yaml" --set out_dir="$tmp/q1" --set train.offload_optimizer=true \
    --set train.offload_embeddings=true >"$tmp/q1.log" 2>&1
check "QLoRA offloaded: trained" test -f "$tmp/q1/step-0000008/adapter_model.safetensors"
check "QLoRA offloaded: the memory line names the host part" grep -q "in host memory" "$tmp/q1.log"
check "QLoRA offloaded: the same losses" cmp -s <(losses "$tmp/q0") <(losses "$tmp/q1")
check "QLoRA offloaded: the same adapter" cmp -s "$tmp/q0/step-0000008/adapter_model.safetensors" \
    "$tmp/q1/step-0000008/adapter_model.safetensors"
for f in "$tmp"/q0/step-0000008/*optim*; do
    [ -f "$f" ] || continue
    check "QLoRA offloaded: the same $(basename "$f")" cmp -s "$f" "$tmp/q1/step-0000008/$(basename "$f")"
done
check "QLoRA: the checkpoint holds optimizer state" test -n "$(ls "$tmp"/q0/step-0000008/ | grep -i optim)"
# resumed with the switches from the run without them: the same end
cp -r "$tmp/q0" "$tmp/q2"
rm -rf "$tmp/q2/step-0000008"
"$ANVIL" train "$tmp/qlora.yaml" --set out_dir="$tmp/q2" --set train.offload_optimizer=true \
    --set train.offload_embeddings=true --resume "$tmp/q2" >/dev/null 2>&1
check "QLoRA offloaded: resumed from a device-state checkpoint, the same adapter" \
    cmp -s "$tmp/q0/step-0000008/adapter_model.safetensors" "$tmp/q2/step-0000008/adapter_model.safetensors"

# a full fine-tune with the embedding frozen (model.freeze)
cat >"$tmp/freeze.yaml" <<YAML
model:
  init: $tmp/base/final
  freeze: [model.embed_tokens.weight]
data:
  train: $TRAIN
  tokenizer: byte
train:
  steps: 4
  batch_size: 2
  seq_len: 64
  lr: 3e-3
  warmup_steps: 1
  deterministic: true
device: $DEVICE
eval:
  steps: 0
out_dir: $tmp/f0
YAML
"$ANVIL" train "$tmp/freeze.yaml" >/dev/null 2>&1
"$ANVIL" train "$tmp/freeze.yaml" --set out_dir="$tmp/f1" --set train.offload_optimizer=true \
    --set train.offload_embeddings=true >/dev/null 2>&1
check "model.freeze offloaded: the same losses" cmp -s <(losses "$tmp/f0") <(losses "$tmp/f1")
check "model.freeze offloaded: the same model" cmp -s "$tmp/f0/final/model.safetensors" "$tmp/f1/final/model.safetensors"

# what cannot be offloaded
expect_fail "offload: a trainable embedding" "train.offload_embeddings|not frozen" \
    train "$tmp/freeze.yaml" --set out_dir="$tmp/x1" --set model.freeze=[] --set train.offload_embeddings=true
check "offload: a refused run leaves no directory" test ! -e "$tmp/x1"
cat >"$tmp/tied.yaml" <<YAML
model:
  preset: gpt2-tiny
  vocab_size: 257
  max_seq_len: 64
lora:
  r: 4
data:
  train: $TRAIN
  tokenizer: byte
train:
  steps: 2
  batch_size: 2
  seq_len: 64
  warmup_steps: 1
  offload_embeddings: true
eval:
  steps: 0
out_dir: $tmp/x2
YAML
expect_fail "offload: a tied embedding" "train.offload_embeddings|tied" train "$tmp/tied.yaml"
expect_fail "offload: not a boolean" "train.offload_optimizer" train "$tmp/tied.yaml" --set train.offload_optimizer=maybe
# anvil plan --offload: what leaves the peak is what the host then holds
"$ANVIL" plan --model llama-tiny --method qlora --device cpu --json "$tmp/p0.json" >/dev/null
"$ANVIL" plan --model llama-tiny --method qlora --device cpu --offload optimizer,embeddings --json "$tmp/p1.json" >/dev/null
field() { grep -o "\"$2\": [0-9]*" "$1" | head -1 | grep -o '[0-9]*$'; }
check "plan --offload: no optimizer state on the device" test "$(field "$tmp/p1.json" optimizer)" = 0
check "plan --offload: the host holds the moments and the embedding" test \
    "$(( $(field "$tmp/p0.json" optimizer) + $(field "$tmp/p0.json" weights) - $(field "$tmp/p1.json" weights) ))" \
    = "$(field "$tmp/p1.json" host)"
check "plan --offload: the peak falls by as much" test \
    "$(( $(field "$tmp/p0.json" peak) - $(field "$tmp/p1.json" peak) ))" = "$(field "$tmp/p1.json" host)"
check "plan: no host part without --offload" test "$(field "$tmp/p0.json" host)" = 0
expect_fail "plan --offload: a tied embedding" "--offload embeddings|untied" plan --model gpt2-tiny --method lora --offload embeddings
expect_fail "plan --offload: an unknown word" "--offload|bogus" plan --model llama-tiny --method lora --offload optimizer,bogus
expect_fail "bench --offload: an unknown word" "--offload|bogus" bench --model llama-tiny --lora 4 --offload bogus
cli_summary
