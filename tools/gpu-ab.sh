#!/usr/bin/env bash
# gpu-ab.sh - A/B timings of the CUDA backend's switches in one run on a GPU machine: anvil bench
# for each variant (the switches anvil takes from the environment: ANVIL_ATTENTION, ANVIL_GEMM_TUNE,
# ANVIL_DETERMINISTIC; docs/cuda.md#switches), per-op profiles of the default, and the PyTorch peer
# in the same run. A short table is printed last.
#
#   bash tools/gpu-ab.sh [SECTION...]     default: test gpt2 llama torch
#
# Sections:
#   test      build/tests/test_cuda (GPU vs CPU, both modes)
#   gpt2      GPT-2 124M B=64 T=1024: the default, the previous round's, each of this round's changes
#             off alone (cuDNN attention, GEMM tuning), deterministic; a profile of the default
#   llama     llama-1b B=8 T=2048: the same variants; a profile
#   torch     tools/torch_baseline_gpt2.py (the PyTorch peer)
#   race      compute-sanitizer racecheck on the attention tests
# Run from the staged tree (tools/gpu-stage.sh); logs under $OUT (default gpu-ab-out/).
set -u
cd "$(dirname "$0")/.."
[ -f payload.tgz ] && [ ! -e anvil ] && tar xzf payload.tgz # binaries + libraries (tools/gpu-stage.sh)
OUT=${OUT:-gpu-ab-out}
mkdir -p "$OUT"
ANVIL=${ANVIL:-./anvil}
TEST_CUDA=${TEST_CUDA:-build/tests/test_cuda}
sections=${*:-test gpt2 llama torch}
has() { case " $sections " in *" $1 "*) return 0 ;; esac; return 1; }
. tools/gpu-env.sh # library paths, cuDNN included
TABLE="$OUT/table.md"
: >"$TABLE"

# the previous round's defaults: our attention kernels, cuBLASLt's first algorithm (no tuning)
PREV="ANVIL_ATTENTION=anvil ANVIL_GEMM_TUNE=0"

# bench NAME "ENV..." ARGS...: one anvil bench run with the given environment, its row in the table
bench() {
    local name=$1 envs=$2
    shift 2
    env $envs timeout 240 $ANVIL bench --device cuda --warmup 3 --ceiling-size 0 "$@" >"$OUT/$name.log" 2>&1
    local row
    row=$(grep -E "^\| anvil \|" "$OUT/$name.log" | tail -1 | awk -F'|' '{print $8 "|" $9 "|" $13}')
    [ -n "$row" ] || row=" failed: $(tail -2 "$OUT/$name.log" | tr '\n' ' ')"
    echo "| $name | ${envs:-default} |$row |" | tee -a "$TABLE"
}

if has test; then
    echo "== test_cuda"
    timeout 300 "$TEST_CUDA" >"$OUT/test_cuda.log" 2>&1
    echo "rc $?"
    grep -E "FAIL|SKIP|loss|worst|cuBLASLt" "$OUT/test_cuda.log" | head -60
    echo "| test_cuda | | $(tail -1 "$OUT/test_cuda.log") | | |" >>"$TABLE"
fi

# variants NAME LINES ARGS...: the same variants for one model (default, the previous round's, each
# change off alone, deterministic, default again), then a per-op profile of the default
variants() {
    local name=$1 lines=$2
    shift 2
    bench ${name}_default "" "$@"
    bench ${name}_prev "$PREV" "$@"
    bench ${name}_attn_anvil "ANVIL_ATTENTION=anvil" "$@"
    bench ${name}_no_gemm_tune "ANVIL_GEMM_TUNE=0" "$@"
    bench ${name}_deterministic "ANVIL_DETERMINISTIC=1" "$@"
    bench ${name}_default_again "" "$@"
    timeout 240 $ANVIL bench --device cuda --warmup 3 --ceiling-size 0 "$@" --steps 5 --profile \
        >"$OUT/${name}_profile.log" 2>&1
    sed -n '/per-op time/,/total (sum/p' "$OUT/${name}_profile.log" | head -"$lines"
}

if has gpt2; then
    echo "== GPT-2 124M, B=64 T=1024"
    variants gpt2 40 --model gpt2-124m --batch 64 --seq 1024 --steps 10
fi

if has llama; then
    echo "== llama-1b, B=8 T=2048"
    variants llama 24 --model llama-1b --batch 8 --seq 2048 --steps 10
fi

if has torch; then
    echo "== PyTorch baseline"
    PYTHONUNBUFFERED=1 timeout 400 python3 tools/torch_baseline_gpt2.py --batch 64 --seq 1024 --steps 20 \
        --json "$OUT/torch.json" >"$OUT/torch.log" 2>&1
    row=$(grep -E "^\| pytorch" "$OUT/torch.log" | tail -1 | awk -F'|' '{print $8 "|" $9 "|" $13}')
    echo "| pytorch | compile | ${row:- failed: $(tail -2 "$OUT/torch.log" | tr '\n' ' ')} |" | tee -a "$TABLE"
fi

if has race; then
    echo "== racecheck (attention)"
    ANVIL_TEST_ONLY=attention timeout 200 compute-sanitizer --tool racecheck --print-limit 5 "$TEST_CUDA" \
        >"$OUT/racecheck.log" 2>&1
    echo "| racecheck attention | | $(grep -E "RACECHECK SUMMARY|ERROR SUMMARY" "$OUT/racecheck.log" | tail -1) $(tail -1 "$OUT/racecheck.log") | | |" \
        >>"$TABLE"
fi

echo
echo "== table (step ms | tokens/s | peak GiB)"
echo "| run | switches | step ms | tokens/s | peak GiB |"
echo "|---|---|---|---|---|"
cat "$TABLE"
