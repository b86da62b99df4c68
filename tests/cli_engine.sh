#!/usr/bin/env bash
# cli_engine.sh - the engine's switches through `anvil train` and `anvil bench` on the CPU:
#   - model.freeze: the header's parameter counts, no optimizer state for frozen tensors in the
#     checkpoint, a pattern that matches nothing or part of a fused tensor is one clear error;
#   - backend.* keys and their ANVIL_* overrides are recorded in the run's config.yaml;
#   - resume compares the whole architecture and names the field that differs;
#   - the memory report and the scored-target count are printed / logged.
set -u
. "$(dirname "$0")/lib_cli.sh"

TRAIN=examples/sentences-train.txt
if [ ! -f "$TRAIN" ]; then
    echo "skip: $TRAIN not found (run from the repository root)" >&2
    echo "0 passed, 0 failed"
    exit 0
fi

cat >"$tmp/t.yaml" <<YAML
model:
  preset: gpt2-tiny
  vocab_size: 257
  max_seq_len: 32
  freeze: ["transformer.wte.*", "transformer.h.0.*"]
data:
  train: $TRAIN
  tokenizer: byte
train:
  steps: 3
  batch_size: 2
  seq_len: 32
  warmup_steps: 1
out_dir: $tmp/run
YAML

# ---- freezing ----
"$ANVIL" train "$tmp/t.yaml" >"$tmp/out" 2>"$tmp/err"
check "frozen run trains" test $? -eq 0
# wte 257x64 + block 0 (2*64 + 64*192 + 192 + 64*64 + 64 + 2*64 + 64*256 + 256 + 256*64 + 64)
check "header counts trainable and frozen parameters" grep -qE "parameters: [0-9.]+M trainable, 0\.07M frozen" "$tmp/out"
check "memory report after step 1" grep -q "memory after step 1: weights .* gradients .* optimizer .* peak" "$tmp/out"
check "metrics count scored targets" grep -q '"scored": 64' "$tmp/run/metrics.jsonl"
"$ANVIL" inspect "$tmp/run/step-0000003/optimizer.safetensors" >"$tmp/opt.txt" 2>&1
check "no optimizer state for frozen tensors" bash -c "! grep -qE '^(m|v)\.(wte|h\.0\.)' '$tmp/opt.txt'"
check "optimizer state for trainable tensors" grep -qE '^m\.h\.1\.qkv\.w' "$tmp/opt.txt"
check "config.yaml records model.freeze" grep -q 'freeze: \["transformer.wte.\*", "transformer.h.0.\*"\]' \
    "$tmp/run/config.yaml"
expect_fail freeze-nomatch "model.freeze|\"transformer.h.9.*\" matches no tensor" train "$tmp/t.yaml" \
    --set 'model.freeze=transformer.h.9.*' --set out_dir="$tmp/r2"
expect_fail freeze-all "model.freeze|every tensor is frozen" train "$tmp/t.yaml" --set 'model.freeze=*' \
    --set out_dir="$tmp/r3"
cat >"$tmp/llama.yaml" <<YAML
model:
  preset: llama-tiny
  vocab_size: 257
  max_seq_len: 32
data:
  train: $TRAIN
  tokenizer: byte
train:
  steps: 2
  batch_size: 2
  seq_len: 32
  warmup_steps: 1
out_dir: $tmp/llama
YAML
expect_fail freeze-part-of-fused "q_proj|k_proj|h.0.qkv.w" train "$tmp/llama.yaml" \
    --set 'model.freeze=model.layers.0.self_attn.q_proj.*'

# ---- backend switches: config keys, environment overrides, recorded ----
check "defaults recorded" grep -q 'attention: "auto"' "$tmp/run/config.yaml"
ANVIL_ATTENTION=anvil ANVIL_GEMM_TUNE=off "$ANVIL" train "$tmp/t.yaml" --set out_dir="$tmp/env" >"$tmp/out" 2>&1
check "env override runs" test $? -eq 0
check "env override noted" grep -q "ANVIL_ATTENTION sets backend.attention: anvil" "$tmp/out"
check "env override recorded (attention)" grep -q 'attention: "anvil"' "$tmp/env/config.yaml"
check "env override recorded (gemm_tune)" grep -q 'gemm_tune: "off"' "$tmp/env/config.yaml"
ANVIL_DETERMINISTIC=1 "$ANVIL" train "$tmp/t.yaml" --set out_dir="$tmp/det" >/dev/null 2>&1
check "env override recorded (deterministic)" grep -q 'deterministic: true' "$tmp/det/config.yaml"
expect_fail bad-attention "backend.attention|expected auto, cudnn or anvil" train "$tmp/t.yaml" \
    --set backend.attention=flash --set out_dir="$tmp/r4"
ANVIL_ATTENTION=flash "$ANVIL" train "$tmp/t.yaml" --set out_dir="$tmp/r5" >/dev/null 2>"$tmp/err"
check "bad env value refused" grep -q "ANVIL_ATTENTION: expected auto, cudnn or anvil" "$tmp/err"

# ---- resume compares the whole architecture ----
"$ANVIL" train "$tmp/llama.yaml" >/dev/null 2>&1
check "llama run" test -f "$tmp/llama/step-0000002/trainer_state.json"
expect_fail resume-arch "model.rope_theta|differs" train "$tmp/llama.yaml" --set train.steps=4 \
    --set model.rope_theta=5000 --resume "$tmp/llama"
"$ANVIL" train "$tmp/llama.yaml" --set train.steps=4 --resume "$tmp/llama" >/dev/null 2>&1
check "resume with the same architecture" test -f "$tmp/llama/step-0000004/trainer_state.json"

# ---- bench: frozen weights count 4 FLOPs, trainable 6 ----
"$ANVIL" bench --model gpt2-tiny --batch 2 --seq 32 --steps 1 --warmup 0 --ceiling-size 0 >"$tmp/b0" 2>&1
"$ANVIL" bench --model gpt2-tiny --batch 2 --seq 32 --steps 1 --warmup 0 --ceiling-size 0 \
    --freeze 'transformer.h.*' >"$tmp/b1" 2>&1
f0=$(grep -o '^[0-9.e+]* FLOP/token' "$tmp/b0" | cut -d' ' -f1)
f1=$(grep -o '^[0-9.e+]* FLOP/token' "$tmp/b1" | cut -d' ' -f1)
# the blocks of gpt2-tiny: 2 x 12 x 64^2 weights; freezing them removes 2 FLOPs per weight
check "bench FLOPs drop by 2 per frozen weight" awk -v a="$f0" -v b="$f1" \
    'BEGIN { d = a - b; want = 2 * 2 * 12 * 64 * 64; exit !(d > 0.999 * want && d < 1.001 * want) }'
check "bench prints the memory report" grep -q "^memory: weights" "$tmp/b1"

# ---- bench --ablate: every row measured in its own process, the same loss in each (the switches
# change speed and memory, not the arithmetic), less activation memory with recompute 2 and with
# accumulation; --head unfused alone gives the fused head's loss ----
"$ANVIL" bench --model gpt2-tiny --batch 8 --seq 32 --steps 1 --warmup 0 --ablate --json "$tmp/abl.json" \
    >"$tmp/abl" 2>&1
check "ablate: five rows measured" awk -F'|' '/^\| (full|recompute|LM head|accumulation)/ && $3 ~ /[0-9]/ {n++}
    END { exit n != 5 }' "$tmp/abl"
check "ablate: the same step-0 and final loss in every row" awk -F'|' '
    /^\| (full|recompute|LM head|accumulation)/ {l[$8]++; f[$9]++; n++}
    END { exit !(n == 5 && length(l) == 1 && length(f) == 1) }' "$tmp/abl"
check "ablate: recompute 2 and accumulation 8 hold fewer activations" awk -F'|' '
    /^\| full/ {f = $7} /^\| recompute 2/ {r = $7} /^\| accumulation 8/ {a = $7}
    END { exit !(f > 0 && r + 0 < f + 0 && a + 0 < f + 0) }' "$tmp/abl"
check "ablate --json lists the rows" grep -q '"variant": "accumulation 8' "$tmp/abl.json"
expect_fail bench-head "--head: expected fused or unfused" bench --model gpt2-tiny --head sideways

cli_summary
