#!/usr/bin/env bash
# gpu-attn.sh - the attention kernels alone, on a GPU machine: parity (test_cuda's attention tests,
# every variant) and the micro-benchmark (tests/bench_attention.c: forward, backward, TFLOP/s at the
# GPT-2 and llama-1b training shapes) for each kernel variant, beside PyTorch's SDPA (flash and cuDNN
# backends, tools/bench_attention_torch.py) in the same run. A short table is printed last.
#
#   bash tools/gpu-attn.sh [VARIANT...]     VARIANT = label:ENV=VALUE[,ENV=VALUE]  (default: the list below)
#   PARITY=0  skips the parity tests;  STEPS=1  adds whole training steps (anvil bench, GPT-2 124M B=64
#             T=1024 and llama-1b B=8 T=2048) with our attention kernels and with cuDNN's
#
# Run from the staged tree (tools/gpu-stage.sh). Logs and the table: $OUT (default gpu-attn-out/).
set -u
cd "$(dirname "$0")/.."
[ -f payload.tgz ] && [ ! -e anvil ] && tar xzf payload.tgz # binaries + libraries (tools/gpu-stage.sh)
OUT=${OUT:-gpu-attn-out}
mkdir -p "$OUT"
TEST_CUDA=${TEST_CUDA:-build/tests/test_cuda}
BENCH=${BENCH:-build/tests/bench_attention}
. tools/gpu-env.sh # library paths, cuDNN included
TABLE="$OUT/attn_table.md"
: >"$TABLE"
# our kernels (default choice among them), cuDNN's fused attention (cuda_cudnn.cu), our two-kernel
# deterministic backward; the fused backward's K/V layouts and the launch orders forced through
# bench_attention's own knobs (tests/bench_attention.c), e.g.
#   bwd-regs:ANVIL_ATTENTION=anvil,BENCH_ATTN_BWD=regs bwd-shared:ANVIL_ATTENTION=anvil,BENCH_ATTN_BWD=shared
#   z-order:ANVIL_ATTENTION=anvil,BENCH_ATTN_ORDER=z
variants=${*:-"anvil:ANVIL_ATTENTION=anvil cudnn:ANVIL_ATTENTION=cudnn two-kernel:ANVIL_DETERMINISTIC=1"}

if [ "${PARITY:-1}" = 1 ]; then # PARITY=0 skips it (when gpu-check's test_cuda runs in the same call)
    echo "== attention parity (test_cuda, ANVIL_TEST_ONLY=attention)"
    ANVIL_TEST_ONLY=attention timeout 300 "$TEST_CUDA" >"$OUT/test_attention.log" 2>&1
    echo "rc $?"
    grep -E "FAIL" "$OUT/test_attention.log" | head -20
    echo "| parity | test_cuda attention: $(tail -1 "$OUT/test_attention.log") |" >>"$TABLE"
fi

echo "== micro-benchmark (median of 20; bwd FLOPs = 2.5 x fwd, causal half)"
for v in $variants; do
    label=${v%%:*}
    envs=$(echo "${v#*:}" | tr ',' ' ')
    env $envs BENCH_LABEL="$label" timeout 120 "$BENCH" 20 2>&1 | tee -a "$OUT/bench_attention.log" |
        grep -E "^\|" >>"$TABLE"
done
echo "== PyTorch SDPA"
PYTHONUNBUFFERED=1 timeout 200 python3 tools/bench_attention_torch.py --reps 20 2>&1 | tee "$OUT/torch_attention.log" |
    grep -E "^\|" >>"$TABLE"
if [ "${STEPS:-0}" = 1 ]; then
    echo "== training steps: our attention kernels vs cuDNN's"
    for m in "gpt2-124m --batch 64 --seq 1024" "llama-1b --batch 8 --seq 2048"; do
        for v in "anvil:ANVIL_ATTENTION=anvil" "cudnn:ANVIL_ATTENTION=cudnn"; do
            label=${v%%:*}
            envs=$(echo "${v#*:}" | tr ',' ' ')
            row=$(env $envs timeout 120 ./anvil bench --device cuda --steps 10 --warmup 3 --ceiling-size 0 --model $m \
                2>&1 | tee -a "$OUT/steps.log" | grep -E "^\| anvil \|" | tail -1 | awk -F'|' '{print $3 "|" $8 "|" $9 "|" $11}')
            echo "| step $label | ${row:- failed} |" | tee -a "$TABLE"
        done
    done
fi
echo
echo "== attention table: impl | shape | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s | fwd+bwd ms"
cat "$TABLE"
