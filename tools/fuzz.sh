#!/usr/bin/env bash
# Run every libFuzzer harness (tests/fuzz/) for SECONDS each, seeded from the
# repository's fixtures and the regression inputs in tests/fuzz/regress/<harness>/.
# Crashes are written to build-fuzz/crashes/. Seed files get names unique per
# source (tokenizer.json files of different fixtures no longer overwrite each other).
#   make fuzz && tools/fuzz.sh 60 [HARNESS...]      (FUZZ_ARGS="-runs=N" adds libFuzzer flags;
#   FUZZ_JOBS=N runs N processes per harness on its one corpus and sums their executions;
#   FUZZ_MAX_LEN=BYTES caps the input length, 65536 unless set: the harnesses that run a model per
#   input slow down several times as libFuzzer grows inputs past a few KB)
# Each process runs one OpenMP thread unless OMP_NUM_THREADS says otherwise: the fuzzed code is
# the parsing, and two jobs of two spinning threads each on two cores only wait on each other.
set -u
secs=${1:-60}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=build-fuzz/crashes
mkdir -p "$out"
# path -> a seed file name: the path with / replaced, so that seeds never collide
seed_name() { printf '%s' "$1" | tr '/' '_'; }
seed() { # harness -> seed corpus dir
    local d=build-fuzz/corpus/$1 f
    mkdir -p "$d"
    case $1 in
    fuzz_safetensors)
        for f in tests/fixtures/*/model/model.safetensors tests/fixtures/eval/*/model.safetensors tests/fixtures/dtypes.safetensors; do
            [ -f "$f" ] || continue
            cp "$f" "$d/$(seed_name "$f")"
            head -c 600 "$f" >"$d/head_$(seed_name "$f")"
        done ;;
    fuzz_hf_config)
        for f in tests/fixtures/*/model/config.json tests/fixtures/eval/*/config.json tests/fixtures/*/*/model*/config.json; do
            [ -f "$f" ] && cp "$f" "$d/$(seed_name "$f")"
        done ;;
    fuzz_hf_model) # config.json, a NUL byte, model.safetensors (tests/fuzz/fuzz_common.h)
        for f in tests/fixtures/*/model tests/fixtures/eval/gpt2 tests/fixtures/eval/llama tests/fixtures/*/*/model*; do
            [ -f "$f/config.json" ] && [ -f "$f/model.safetensors" ] || continue
            { cat "$f/config.json"; printf '\0'; cat "$f/model.safetensors"; } >"$d/$(seed_name "$f")"
        done ;;
    fuzz_train_yaml) for f in configs/*.yaml; do cp "$f" "$d/$(seed_name "$f")"; done ;;
    fuzz_peft) # the selector of the adapter's base (tests/fuzz/fuzz_peft.c), adapter_config.json, NUL, the weights
        for pair in 0:tests/fixtures/peft/llama/adapter 1:tests/fixtures/peft/gpt2/adapter \
            2:tests/fixtures/moe_lora/mixtral/adapter 2:tests/fixtures/moe_lora/mixtral_router/adapter \
            2:tests/fixtures/moe_lora/mixtral_t4/adapter 3:tests/fixtures/moe_lora/qwen2_moe/adapter; do
            sel=${pair%%:*} f=${pair#*:}
            [ -f "$f/adapter_config.json" ] || continue
            { printf "\\$(printf '%03o' "$sel")"; cat "$f/adapter_config.json"; printf '\0'; cat "$f/adapter_model.safetensors"; } \
                >"$d/$(seed_name "$f")"
        done ;;
    fuzz_ternary_ckpt) # the fixture checkpoint's own ternary.safetensors (tests/fuzz/fuzz_ternary_ckpt.c) and its head
        cp tests/fixtures/ternary/ckpt/ternary.safetensors "$d/ckpt_ternary"
        head -c 700 tests/fixtures/ternary/ckpt/ternary.safetensors >"$d/head_ckpt_ternary" ;;
    fuzz_trainer_state)
        printf '{"format": "anvil-trainer-state", "version": 1, "step": 200, "tokens_seen": 102400, "elapsed_s": 38.2, "loader": {"epoch": "1", "pos": "17"}, "config": "model:\\n  preset: gpt2-tiny\\n"}\n' >"$d/written_by_anvil.json" ;;
    fuzz_tokenizer_json)
        while IFS= read -r f; do cp "$f" "$d/$(seed_name "$f")"; done \
            < <(find tests/fixtures/tokenizers tests/fixtures/eval -name '*.json' -size -200k 2>/dev/null) ;;
    fuzz_gpt2_roundtrip) head -c 2000 examples/sentences-val.txt >"$d/text" ;;
    fuzz_sft) # each fixture conversation as a record (after a selector byte), and the real templates
        python3 - "$d" <<'PY'
import glob, json, os, sys
d = sys.argv[1]
for n, path in enumerate(sorted(glob.glob("tests/fixtures/chat/*/cases.json"))):
    rows = [json.dumps(c["row"], ensure_ascii=False) for c in json.load(open(path))["cases"]]
    for sel in range(0, 72, 5):
        open(os.path.join(d, "rec%d_%d" % (n, sel)), "wb").write(bytes([sel]) + "\n".join(rows).encode())
    cfg = json.load(open(os.path.join(os.path.dirname(path), "tokenizer_config.json")))
    if "chat_template" in cfg:
        open(os.path.join(d, "tpl%d" % n), "wb").write(b"\0" + cfg["chat_template"].encode())
PY
        ;;
    fuzz_mlm_jsonl) # the pre-masked fixtures (ids fit bert-tiny's 2048 after % 2048), and a padded record
        python3 - "$d" <<'PY'
import glob, json, os, sys
d = sys.argv[1]
for n, path in enumerate(sorted(glob.glob("tests/fixtures/bert/*/premasked.jsonl"))):
    out = []
    for line in open(path):
        r = json.loads(line)
        r["input_ids"] = [i % 2048 for i in r["input_ids"]]
        r["labels"] = [i % 2048 if i >= 0 else i for i in r["labels"]]
        out.append(json.dumps(r))
    open(os.path.join(d, "premasked%d" % n), "w").write("\n".join(out) + "\n")
open(os.path.join(d, "padded"), "w").write(json.dumps({"input_ids": [2, 5, 6, 3, 0, 0], "labels": [-100, 5, -100, -100, -100, -100],
                                                    "attention_mask": [1, 1, 1, 1, 0, 0]}) + "\n")
PY
        ;;
    fuzz_shard) # a small anvil shard (uint16 and uint32 tokens) and an llm.c-style header
        head -c 3000 examples/sentences-val.txt >"$d/text.txt"
        ./anvil prepare --tokenizer byte --input "$d/text.txt" --out "$d/p16" >/dev/null 2>&1
        ./anvil prepare --tokenizer gpt2 --input "$d/text.txt" --out "$d/p32" >/dev/null 2>&1
        cp "$d"/p16/train/*.tok "$d/s16.bin" 2>/dev/null; cp "$d"/p32/train/*.tok "$d/s32.bin" 2>/dev/null
        rm -rf "$d/p16" "$d/p32" "$d/text.txt"
        { printf '\x88\xd8\x34\x01\x01\x00\x00\x00\x10\x00\x00\x00'; head -c 1012 /dev/zero; head -c 32 examples/sentences-val.txt; } >"$d/llmc.bin" ;;
    esac
    if [ -d "tests/fuzz/regress/$1" ]; then
        for f in "tests/fuzz/regress/$1"/*; do cp "$f" "$d/regress_$(basename "$f")"; done
    fi
    echo "$d"
}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
maxlen=${FUZZ_MAX_LEN:-65536}
status=0
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=($(ls build-fuzz/fuzz/ | grep -v '\.d$'))
for name in "${harnesses[@]}"; do
    h=build-fuzz/fuzz/$name
    [ -x "$h" ] || { echo "== $name: not built (make fuzz)"; status=1; continue; }
    corpus=$(seed "$name")
    jobs=${FUZZ_JOBS:-1}
    echo "== $name (${secs}s${FUZZ_JOBS:+, $jobs jobs on one corpus}, inputs up to $maxlen bytes)"
    if [ "$jobs" -le 1 ]; then
        "$h" -max_total_time="$secs" -max_len="$maxlen" -timeout=10 -rss_limit_mb=4096 -artifact_prefix="$out/$name-" \
            -print_final_stats=1 ${FUZZ_ARGS:-} "$corpus" 2>&1 | grep -E 'stat::number_of_executed_units|stat::average_exec_per_sec|ERROR|SUMMARY|crash-|timeout-|oom-'
    else # FUZZ_JOBS=N: N processes (seeds 1..N) sharing the corpus; the executions summed over them
        logs=build-fuzz/logs
        mkdir -p "$logs"
        for j in $(seq 1 "$jobs"); do
            "$h" -seed="$j" -max_total_time="$secs" -max_len="$maxlen" -timeout=10 -rss_limit_mb=4096 \
                -artifact_prefix="$out/$name-" -print_final_stats=1 ${FUZZ_ARGS:-} "$corpus" >"$logs/$name.$j.log" 2>&1 &
        done
        wait
        grep -hE 'ERROR|SUMMARY|crash-|timeout-|oom-' "$logs/$name".*.log
        awk '/stat::number_of_executed_units/ {n += $2; k++} /stat::average_exec_per_sec/ {r += $2}
             END {printf "stat::number_of_executed_units: %d (sum of %d jobs)\nstat::average_exec_per_sec: %d (sum)\n", n, k, r}' \
            "$logs/$name".*.log
    fi
    if ls "$out/$name-"* >/dev/null 2>&1; then status=1; echo "   FOUND: $(ls "$out/$name-"*)"; fi
done
exit $status
