#!/usr/bin/env bash
# resume-check.sh - `anvil train` on a device, interrupted and resumed, must give the same losses,
# weights and moments as the uninterrupted run; two runs with one seed must give identical losses.
# Both families, head_dim 64 (the CUDA flash-attention path), byte tokenizer on examples/.
#   DEVICE=cuda bash tools/resume-check.sh        (DEVICE: cpu, cuda, cuda-fp32; ANVIL: the binary)
# Prints "N passed, N failed" last.
set -u
cd "$(dirname "$0")/.."
ANVIL=${ANVIL:-./anvil}
DEVICE=${DEVICE:-cuda}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0
check() {
    local what=$1
    shift
    if "$@"; then pass=$((pass + 1)); else
        fail=$((fail + 1))
        echo "FAIL: $what"
    fi
}
strip() { # the fields that measure the machine, not the run
    sed -E 's/"(tokens_per_s|ms_per_step|wall_time|mfu|peak_mem_gib)": [0-9.e+-]*(, )?//g' "$1"
}

for preset in gpt2-tiny llama-tiny; do
    cat >"$tmp/$preset.yaml" <<YAML
model:
  preset: $preset
  d_model: 256
  vocab_size: 257
  max_seq_len: 128
data:
  train: examples/sentences-train.txt
  tokenizer: byte
train:
  steps: 60
  batch_size: 8
  seq_len: 128
  lr: 3e-3
  warmup_steps: 10
  log_every: 20
  deterministic: true
eval:
  every: 0
  steps: 0
checkpoint:
  every: 30
  keep: 0
device: $DEVICE
out_dir: $tmp/$preset/run
YAML
    "$ANVIL" train "$tmp/$preset.yaml" >"$tmp/$preset.log" 2>&1
    check "$preset: run" test -f "$tmp/$preset/run/step-0000060/model.safetensors"
    cp -r "$tmp/$preset/run" "$tmp/$preset/resumed"
    rm -rf "$tmp/$preset/resumed/step-0000060"
    "$ANVIL" train "$tmp/$preset.yaml" --resume "$tmp/$preset/resumed" >"$tmp/$preset.resume.log" 2>&1
    check "$preset: resumed metrics identical" cmp -s <(strip "$tmp/$preset/run/metrics.jsonl") \
        <(strip "$tmp/$preset/resumed/metrics.jsonl")
    check "$preset: resumed weights identical" cmp -s "$tmp/$preset/run/step-0000060/model.safetensors" \
        "$tmp/$preset/resumed/step-0000060/model.safetensors"
    check "$preset: resumed moments identical" cmp -s "$tmp/$preset/run/step-0000060/optimizer.safetensors" \
        "$tmp/$preset/resumed/step-0000060/optimizer.safetensors"
    "$ANVIL" train "$tmp/$preset.yaml" --set out_dir="$tmp/$preset/again" >/dev/null 2>&1
    check "$preset: same seed, identical losses" cmp -s <(strip "$tmp/$preset/run/metrics.jsonl") \
        <(strip "$tmp/$preset/again/metrics.jsonl")
    echo "$preset ($DEVICE): $(grep -o '"loss": [0-9.]*' "$tmp/$preset/run/metrics.jsonl" | sed -n '1p;$p' | tr '\n' ' ')"
    [ $fail -ne 0 ] && tail -n 5 "$tmp/$preset.log" "$tmp/$preset.resume.log"
done
echo "$pass passed, $fail failed"
