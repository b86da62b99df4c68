#!/usr/bin/env bash
# gpu-lora-ab.sh - on the GPU machine, after tools/gpu-stage.sh with OLD_ANVIL=...: the LoRA / QLoRA
# shapes of issue 11 (llama2-7b, r 16 on all seven projections) with old/anvil and ./anvil interleaved
# (old, new, old, new), then one per-op profile of the new build. Prints a table last.
#   bash tools/gpu-lora-ab.sh [MODES]   (MODES: qlora_speed qlora_mem qlora_small bf16_speed bf16_mem)
set -u
OUT=${OUT:-gpu-lora-ab-out}
mkdir -p "$OUT"
[ -f payload.tgz ] && tar xzf payload.tgz
[ -f .stage/payload.tgz ] && tar xzf .stage/payload.tgz
. tools/gpu-env.sh
modes=${*:-qlora_speed qlora_small bf16_speed}
args() {
    case $1 in
    qlora_speed) echo "--quant nf4 --batch 4 --seq 2048 --recompute 1" ;;
    qlora_speed_k) echo "--quant nf4 --batch 4 --seq 2048 --recompute 1 --recompute-layers ${KLAYERS:-10}" ;;
    qlora_mem) echo "--quant nf4 --batch 4 --seq 2048 --recompute 2" ;;
    qlora_small) echo "--quant nf4 --batch 1 --seq 512 --recompute 2" ;;
    bf16_speed) echo "--batch 4 --seq 2048 --recompute 0" ;;
    bf16_mem) echo "--batch 4 --seq 2048 --recompute 2" ;;
    esac
}
rows=()
for m in $modes; do
    for rep in 1 2; do
        for which in old new; do
            bin=./anvil
            [ $which = old ] && bin=old/anvil
            [ $which = old ] && [ $m = qlora_speed_k ] && continue # a new switch: the new build only
            f="$OUT/${m}_${which}_$rep.log"
            timeout 200 $bin bench --device cuda --model llama2-7b --lora 16 --steps 6 --warmup 2 --ceiling-size 0 \
                $(args $m) >"$f" 2>&1
            rows+=("| $m | $which | $rep | $(grep -oE 'step [0-9.]+ ms' "$f") | $(grep -oE '[0-9]+ tokens/s' "$f" | head -1) | $(grep -oE 'peak memory [0-9.]+ GiB' "$f") |")
        done
    done
done
m=$(echo $modes | awk '{print $1}')
timeout 200 ./anvil bench --device cuda --model llama2-7b --lora 16 --steps 3 --warmup 1 --ceiling-size 0 $(args $m) \
    --profile >"$OUT/${m}_profile.log" 2>&1
sed -n '/per-op time/,/total (sum/p' "$OUT/${m}_profile.log" | head -30
echo "| mode | build | run | step | tokens/s | peak |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
