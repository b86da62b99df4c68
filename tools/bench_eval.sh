#!/usr/bin/env bash
# bench_eval.sh - generation and multiple-choice speed of GPT-2 124M (random weights: speed does
# not depend on them) with `anvil generate --stats` and `anvil eval mcq --json` (docs/eval.md).
#
#   bash tools/bench_eval.sh [--device cpu|cuda|cuda-fp32] [--quick]
#
# Prints one markdown row per measurement:
#   generation: a 32-token prompt, greedy, --ignore-eos, N new tokens per sample; tokens/s counts the
#               decode steps only (every sample's tokens after the first, over the decode time);
#               prefill (the prompt pass) is reported beside it;
#   mcq:        HellaSwag-shaped items (the fixture's 5 items repeated) with the GPT-2 tokenizer;
#               items/s over scoring (tokenizing included, model loading excluded).
# Run it from the repository root after `make`. ANVIL=path overrides the binary.
set -u
cd "$(dirname "$0")/.."
ANVIL=${ANVIL:-./anvil}
device=cpu
quick=0
while [ $# -gt 0 ]; do
    case "$1" in
    --device) device=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "usage: bash tools/bench_eval.sh [--device cpu|cuda|cuda-fp32] [--quick]" >&2; exit 1 ;;
    esac
done
tmp=$(mktemp -d /tmp/anvil_bench_eval.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
MODEL=gpt2-124m
PROMPT=$(seq -s, 1000 1031) # 32 token ids

if [ "$device" = cpu ]; then
    gen_cases="1:64 8:32"   # batch:new tokens
    mcq_items=40
    mcq_batch=4
else
    gen_cases="1:256 8:256 64:256"
    mcq_items=2000
    mcq_batch=32
fi
[ $quick = 1 ] && gen_cases="1:16 4:8" && mcq_items=10

host=$(uname -n)
if [ "$device" = cpu ]; then
    what="$(nproc --all) CPU cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
else
    what=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
fi
echo "# bench_eval: $MODEL (random weights), device $device: $what, OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| what | device | batch | tokens/s | detail | command |"
echo "|---|---|---:|---:|---|---|"
for c in $gen_cases; do
    B=${c%%:*}
    N=${c##*:}
    cmd="anvil generate --model $MODEL --prompt-ids 1000..1031 --max-tokens $N --temperature 0 --ignore-eos --batch $B --device $device --stats"
    if "$ANVIL" generate --model $MODEL --prompt-ids "$PROMPT" --max-tokens "$N" --temperature 0 --ignore-eos \
        --batch "$B" --device "$device" --stats >/dev/null 2>"$tmp/gen.err"; then
        tps=$(sed -n 's/.*s: \([0-9.]*\) tokens\/s decoding.*/\1/p' "$tmp/gen.err")
        pre=$(sed -n 's/.*prefill \([0-9.]*\) ms.*/\1/p' "$tmp/gen.err")
        echo "| generation | $device | $B | $tps | $N new tokens per sample, prefill of 32 tokens x $B: $pre ms | \`$cmd\` |"
    else
        echo "| generation | $device | $B | failed | $(tail -1 "$tmp/gen.err") | \`$cmd\` |"
    fi
done

# HellaSwag-shaped items: the fixture's items repeated
n=0
while [ $n -lt $mcq_items ]; do
    cat tests/fixtures/eval/hellaswag.jsonl
    n=$((n + $(wc -l <tests/fixtures/eval/hellaswag.jsonl)))
done | head -n $mcq_items >"$tmp/hs.jsonl"
cmd="anvil eval mcq --model $MODEL --tokenizer gpt2 --task hellaswag --data HS.jsonl --batch $mcq_batch --device $device --json"
if "$ANVIL" eval mcq --model $MODEL --tokenizer gpt2 --task hellaswag --data "$tmp/hs.jsonl" --batch $mcq_batch \
    --device "$device" --json >"$tmp/mcq.json" 2>"$tmp/mcq.err"; then
    ips=$(sed -n 's/.*"items_per_s": \([0-9.]*\).*/\1/p' "$tmp/mcq.json")
    secs=$(sed -n 's/.*"seconds": \([0-9.]*\).*/\1/p' "$tmp/mcq.json")
    echo "| mcq items/s | $device | $mcq_batch | $ips | $mcq_items HellaSwag-shaped items (4 endings each) in $secs s | \`$cmd\` |"
else
    echo "| mcq items/s | $device | $mcq_batch | failed | $(tail -1 "$tmp/mcq.err") | \`$cmd\` |"
fi
