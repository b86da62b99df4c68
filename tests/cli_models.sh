#!/usr/bin/env bash
# cli_models.sh - inspect / generate / eval on model directories, presets and bad inputs
# (issue 10 items 7, 8, 12, 13, 14, 25): every failure is one line "anvil: <file>: <field>: ..."
# with exit 1; options mean the same in every subcommand and --help states every default.
set -u
. "$(dirname "$0")/lib_cli.sh"
FX=tests/fixtures/eval
if [ ! -d "$FX/gpt2" ]; then
    echo "skip: $FX/gpt2 not found (run from the repository root)" >&2
    echo "0 passed, 0 failed"
    exit 0
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# ---- item 7: a tokenizer smaller than the model: only ids it can decode are sampled
"$ANVIL" generate --model gpt2-tiny --tokenizer byte --prompt "Hi" --max-tokens 12 --seed 3 --ignore-eos \
    >"$tmp/gen" 2>"$tmp/err"
check "small tokenizer: exit 0" [ $? -eq 0 ]
check "small tokenizer: text is not empty ($(wc -c <"$tmp/gen") bytes)" [ "$(wc -c <"$tmp/gen")" -gt 1 ]
check "small tokenizer: a note says so" grep -q "the tokenizer knows 257 ids, the model has 50257" "$tmp/err"
"$ANVIL" generate --model gpt2-tiny --tokenizer byte --prompt "Hi" --max-tokens 12 --seed 3 --ignore-eos --print-ids \
    >"$tmp/ids" 2>/dev/null
check "small tokenizer: every id < 257 ($(cat "$tmp/ids"))" awk '{ for (i = 1; i <= NF; i++) if ($i >= 257) exit 1 }' "$tmp/ids"

# ---- item 8: inspect --save keeps the tokenizer; --dtype needs --save
"$ANVIL" inspect "$FX/gpt2" --save "$tmp/saved" >/dev/null 2>"$tmp/err" || bad "inspect --save: $(cat "$tmp/err")"
check "saved: tokenizer.json copied" cmp -s "$FX/gpt2/tokenizer.json" "$tmp/saved/tokenizer.json"
check "saved: tokenizer_config.json copied" cmp -s "$FX/gpt2/tokenizer_config.json" "$tmp/saved/tokenizer_config.json"
"$ANVIL" generate --model "$FX/gpt2" --prompt "The" --temperature 0 --max-tokens 8 >"$tmp/g1" 2>/dev/null
"$ANVIL" generate --model "$tmp/saved" --prompt "The" --temperature 0 --max-tokens 8 >"$tmp/g2" 2>"$tmp/err"
check "generate on the saved copy = on the original ($(cat "$tmp/err"))" cmp -s "$tmp/g1" "$tmp/g2"
expect_fail dtype-without-save "--dtype bf16|--save" inspect "$FX/gpt2" --dtype bf16

# ---- item 12: inspect of a non-safetensors file, of a preset; generate on a run directory
printf '{"format": "anvil-trainer-state", "step": 3}\n' >"$tmp/trainer_state.json"
expect_fail inspect-json "trainer_state.json: not a safetensors file" inspect "$tmp/trainer_state.json"
"$ANVIL" inspect gpt2-124m >"$tmp/out" 2>"$tmp/err"
check "inspect PRESET: exit 0 ($(cat "$tmp/err"))" [ $? -eq 0 ]
check "inspect PRESET: 124439808 parameters" grep -q "parameters   124439808" "$tmp/out"
expect_fail inspect-unknown "gpt5-tiny|not a preset" inspect gpt5-tiny
mkdir -p "$tmp/run/step-0000002"
ln -s step-0000002 "$tmp/run/final"
: >"$tmp/run/metrics.jsonl"
expect_fail generate-run-dir "$tmp/run: a training run directory|use $tmp/run/final" generate --model "$tmp/run" --prompt hi
expect_fail eval-run-dir "a training run directory|$tmp/run/final" eval ppl --model "$tmp/run/" --data "$FX/ppl.txt"

# ---- item 13: resuming names the checkpoint directory it skips
mkdir -p "$tmp/res/step-0000005" "$tmp/res/step-0000007"
printf '{"step": 5, "loader": {"epoch": "0", "pos": "5"}}\n' >"$tmp/res/step-0000005/trainer_state.json"
printf 'model:\n  preset: gpt2-tiny\ndata:\n  train: examples/sentences-val.txt\n  tokenizer: byte\n' >"$tmp/res.yaml"
"$ANVIL" train "$tmp/res.yaml" --resume "$tmp/res" >/dev/null 2>"$tmp/err"
check "resume: the skipped directory is named ($(head -c 300 "$tmp/err"))" \
    grep -q "note: skipping $tmp/res/step-0000007: no trainer_state.json" "$tmp/err"

# ---- item 14: the same option names everywhere; every default in --help
"$ANVIL" generate --help >"$tmp/h"
for d in "default 128" "default 1)" "default 0: off" "default 1: off" "default 1337" "--samples N" "default cpu"; do
    check "generate --help states '$d'" grep -qF -- "$d" "$tmp/h"
done
"$ANVIL" eval ppl --help >"$tmp/h"
for d in "--seq N" "--batch B        windows per forward (default 8" "default cpu" "--json [FILE]"; do
    check "eval ppl --help states '$d'" grep -qF -- "$d" "$tmp/h"
done
check "eval ppl --help shows only ppl's options" sh -c "! grep -q -- '--task' '$tmp/h'"
"$ANVIL" eval mcq --help >"$tmp/h"
check "eval mcq --help: batch default 16" grep -qF -- "(default 16" "$tmp/h"
check "eval mcq --help shows only mcq's options" sh -c "! grep -q -- '--stride' '$tmp/h'"
for c in prepare tokenize inspect; do
    "$ANVIL" $c --help >"$tmp/h" 2>&1
    check "$c --help exits 0 and names defaults" grep -q "default" "$tmp/h"
done
# --seq and its alias --ctx give the same result; --json FILE writes a file, --json alone prints
"$ANVIL" eval ppl --model "$FX/gpt2" --data "$FX/ppl.txt" --seq 32 --json >"$tmp/a.json" 2>/dev/null
"$ANVIL" eval ppl --model "$FX/gpt2" --data "$FX/ppl.txt" --ctx 32 --json - >"$tmp/b.json" 2>/dev/null
"$ANVIL" eval ppl --model "$FX/gpt2" --data "$FX/ppl.txt" --seq 32 --json "$tmp/c.json" >"$tmp/c.out" 2>/dev/null
norm() { sed 's/"seconds": [0-9.]*//' "$1"; }
check "--seq = --ctx" [ "$(norm "$tmp/a.json")" = "$(norm "$tmp/b.json")" ]
check "--json FILE = --json on stdout" [ "$(norm "$tmp/a.json")" = "$(norm "$tmp/c.json")" ]
check "--json FILE: the summary line on stdout" grep -q "^ppl: " "$tmp/c.out"
"$ANVIL" generate --model "$FX/gpt2" --prompt "A" --max-tokens 4 --samples 2 --seed 5 >"$tmp/s1" 2>/dev/null
"$ANVIL" generate --model "$FX/gpt2" --prompt "A" --max-tokens 4 --batch 2 --seed 5 >"$tmp/s2" 2>/dev/null
check "--samples = --batch" cmp -s "$tmp/s1" "$tmp/s2"
check "--samples 2: two samples" [ "$(grep -c '^--- sample' "$tmp/s1")" -eq 2 ]

# ---- item 25: non-finite weights are refused at load, naming the tensor; empty --prompt-ids entries
cp -r "$FX/gpt2" "$tmp/nan"
size=$(stat -c %s "$tmp/nan/model.safetensors")
printf '\000\000\300\177' | dd of="$tmp/nan/model.safetensors" bs=1 seek=$((size - 4)) conv=notrunc 2>/dev/null
expect_fail nan-eval "nan/model.safetensors: transformer.wte.weight: non-finite value" eval ppl --model "$tmp/nan" --data "$FX/ppl.txt"
expect_fail nan-generate "transformer.wte.weight: non-finite" generate --model "$tmp/nan" --prompt hi
expect_fail nan-inspect-save "transformer.wte.weight: non-finite" inspect "$tmp/nan" --save "$tmp/nan2"
check "nan: nothing saved" [ ! -e "$tmp/nan2" ]
expect_fail prompt-ids-empty "--prompt-ids|empty entry" generate --model "$FX/gpt2" --prompt-ids 1,,2
expect_fail prompt-ids-trailing "--prompt-ids|empty entry" generate --model "$FX/gpt2" --prompt-ids 1,2,
cli_summary
