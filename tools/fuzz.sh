#!/usr/bin/env bash
# Run every libFuzzer harness (tests/fuzz/) for SECONDS each, seeded from the
# repository's fixtures. Crashes are written to build-fuzz/crashes/.
#   make fuzz && tools/fuzz.sh 60
set -u
secs=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=build-fuzz/crashes
mkdir -p "$out"
seed() { # harness -> seed corpus dir
    local d=build-fuzz/corpus/$1
    mkdir -p "$d"
    case $1 in
    fuzz_safetensors) cp tests/fixtures/*/model/model.safetensors tests/fixtures/dtypes.safetensors "$d"/ 2>/dev/null
        for f in tests/fixtures/*/model/model.safetensors; do head -c 600 "$f" >"$d/head_$(basename "$(dirname "$(dirname "$f")")")"; done ;;
    fuzz_hf_config) for f in tests/fixtures/*/model/config.json; do cp "$f" "$d/$(basename "$(dirname "$(dirname "$f")")").json"; done ;;
    fuzz_train_yaml) cp configs/*.yaml "$d"/ ;;
    fuzz_tokenizer_json) find tests/fixtures/tokenizers -name '*.json' -size -200k -exec cp {} "$d"/ \; 2>/dev/null ;;
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
    fuzz_shard) # a small anvil shard (uint16 and uint32 tokens) and an llm.c-style header
        head -c 3000 examples/sentences-val.txt >"$d/text.txt"
        ./anvil prepare --tokenizer byte --input "$d/text.txt" --out "$d/p16" >/dev/null 2>&1
        ./anvil prepare --tokenizer gpt2 --input "$d/text.txt" --out "$d/p32" >/dev/null 2>&1
        cp "$d"/p16/train/*.tok "$d/s16.bin" 2>/dev/null; cp "$d"/p32/train/*.tok "$d/s32.bin" 2>/dev/null
        rm -rf "$d/p16" "$d/p32" "$d/text.txt"
        head -c 1200 tests/fixtures/data/*.bin >"$d/llmc.bin" 2>/dev/null || true ;;
    esac
    echo "$d"
}
status=0
for h in build-fuzz/fuzz/fuzz_*; do
    case $h in *.d) continue ;; esac
    name=$(basename "$h")
    corpus=$(seed "$name")
    echo "== $name (${secs}s)"
    if ! "$h" -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=4096 -artifact_prefix="$out/$name-" \
        -print_final_stats=1 "$corpus" 2>&1 | grep -E 'stat::number_of_executed_units|ERROR|SUMMARY|crash-|timeout-|oom-'; then
        :
    fi
    if ls "$out/$name-"* >/dev/null 2>&1; then status=1; echo "   FOUND: $(ls "$out/$name-"*)"; fi
done
exit $status
