#!/usr/bin/env bash
# cli_eval.sh - `anvil eval ppl`, `anvil eval mcq` and `anvil generate` end to end on the CPU,
# against the reference values of tests/fixtures/eval/cli_cases.txt (tools/make_eval_fixtures.py:
# transformers' greedy generate(), the HF guide's perplexity, lm-evaluation-harness accuracies):
#   - greedy text == the reference ids decoded by `anvil tokenize --decode`; with EOS, --stop;
#   - --prompt-ids / --print-ids on the tokenizer-less parity fixtures;
#   - ppl --json tokens and nll per (ctx, stride); .u32 input == text input;
#   - mcq --json acc / acc_norm / acc_bytes / truncated per task;
#   - seeded sampling reproducible; --batch;
#   - eval.mcq during training logs the accuracy `anvil eval mcq` gives on the checkpoint;
#   - bad input: one stderr line "anvil: ..." naming the file (and line), exit 1.
set -u
source "$(dirname "$0")/lib_cli.sh"
FX=tests/fixtures/eval
if [ ! -f "$FX/cli_cases.txt" ]; then
    echo "skip: $FX/cli_cases.txt not found (run from the repository root)" >&2
    echo "0 passed, 0 failed"
    exit 0
fi
# the tiny models run faster on one thread than on two busy ones
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# json_num FILE KEY: the number after "KEY": in a one-line JSON object
json_num() { sed -n "s/.*\"$2\": \([-0-9.eE+a-z]*\).*/\1/p" "$1"; }
# close A B TOL: |A - B| <= TOL
close() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d <= t) }'; }

# ---------------------------------------------------------------- generate
while IFS=$'\t' read -r kind model a b c rest; do
    case "$kind" in
    greedy | greedy_eos)
        # a: prompt, b: max tokens, c: reference ids
        extra=--ignore-eos
        [ "$kind" = greedy_eos ] && extra=
        "$ANVIL" generate --model "$FX/$model" --prompt "$a" --temperature 0 --max-tokens "$b" $extra \
            >"$tmp/gen" 2>"$tmp/err" || bad "$kind $model '$a': $(cat "$tmp/err")"
        ids=$c
        if [ "$kind" = greedy_eos ]; then # the EOS id ends the text and adds none
            eos=$(sed -n 's/.*"eos_token_id": \([0-9]*\).*/\1/p' "$FX/$model/config.json")
            ids=$(echo "$c" | awk -v e="$eos" '{ n = NF; if ($NF == e) n--; for (i = 1; i <= n; i++) printf "%s%s", (i > 1 ? " " : ""), $i }')
        fi
        if [ -n "$ids" ]; then
            "$ANVIL" tokenize --tokenizer "$FX/$model" --decode --text "$ids" >"$tmp/want"
        else
            : >"$tmp/want"
        fi
        printf '\n' >>"$tmp/want"
        if cmp -s "$tmp/gen" "$tmp/want"; then ok; else bad "$kind $model '$a': got '$(head -c 200 "$tmp/gen")' want '$(head -c 200 "$tmp/want")'"; fi
        # the same ids with --print-ids
        "$ANVIL" generate --model "$FX/$model" --prompt "$a" --temperature 0 --max-tokens "$b" $extra --print-ids \
            >"$tmp/gen_ids" 2>"$tmp/err"
        if [ "$(cat "$tmp/gen_ids")" = "$c" ]; then ok; else bad "$kind $model '$a' --print-ids: $(cat "$tmp/gen_ids") want $c"; fi
        ;;
    greedy_ids) # a tokenizer-less parity fixture: --prompt-ids, ids printed by default
        "$ANVIL" generate --model "tests/fixtures/$model/model" --prompt-ids "$a" --temperature 0 --max-tokens "$b" \
            >"$tmp/gen" 2>"$tmp/err"
        if [ "$(cat "$tmp/gen")" = "$c" ]; then ok; else bad "greedy_ids $model: '$(cat "$tmp/gen")' want '$c' $(cat "$tmp/err")"; fi
        ;;
    esac
done <"$FX/cli_cases.txt"

# --stop: the text ends right before the stop string's first occurrence
"$ANVIL" generate --model "$FX/gpt2" --prompt "The weather" --temperature 0 --max-tokens 30 --ignore-eos >"$tmp/full"
"$ANVIL" generate --model "$FX/gpt2" --prompt "The weather" --temperature 0 --max-tokens 30 --ignore-eos --stop "Prome" \
    --stop "nowhere" >"$tmp/stop"
want=$(sed 's/Prome.*//' "$tmp/full" | head -1)
if [ "$(cat "$tmp/stop")" = "$want" ] && [ -n "$want" ]; then ok; else bad "--stop: '$(cat "$tmp/stop")' want '$want'"; fi
# --echo prints the prompt first
"$ANVIL" generate --model "$FX/gpt2" --prompt "The weather" --temperature 0 --max-tokens 30 --ignore-eos --echo >"$tmp/echo"
if [ "$(cat "$tmp/echo")" = "The weather$(cat "$tmp/full")" ]; then ok; else bad "--echo: $(cat "$tmp/echo")"; fi

# seeded sampling: the same seed, the same text; --batch: sample 0 is the batch-1 output
s="--model $FX/llama --prompt-ids 0,40,41 --temperature 0.9 --top-k 40 --top-p 0.95 --max-tokens 40 --ignore-eos"
"$ANVIL" generate $s --seed 11 >"$tmp/s1"
"$ANVIL" generate $s --seed 11 >"$tmp/s2"
"$ANVIL" generate $s --seed 12 >"$tmp/s3"
"$ANVIL" generate $s --seed 11 --batch 3 --print-ids >"$tmp/sb"
"$ANVIL" generate $s --seed 11 --print-ids >"$tmp/s1ids"
if cmp -s "$tmp/s1" "$tmp/s2" && ! cmp -s "$tmp/s1" "$tmp/s3"; then ok; else bad "seeded sampling is not reproducible"; fi
if [ "$(sed -n 2p "$tmp/sb")" = "$(cat "$tmp/s1ids")" ] && [ "$(grep -c '^--- sample' "$tmp/sb")" = 3 ]; then ok; else
    bad "--batch 3: $(cat "$tmp/sb")"
fi
# --stats reports tokens/s on stderr
"$ANVIL" generate --model "$FX/gpt2" --prompt-ids 1,2 --max-tokens 8 --ignore-eos --stats >/dev/null 2>"$tmp/stats"
if grep -q "tokens/s decoding" "$tmp/stats"; then ok; else bad "--stats: $(cat "$tmp/stats")"; fi

# -------------------------------------------------------------------- ppl
while IFS=$'\t' read -r kind model ctx stride tokens nll; do
    [ "$kind" = ppl ] || continue
    "$ANVIL" eval ppl --model "$FX/$model" --data "$FX/ppl.txt" --ctx "$ctx" --stride "$stride" --batch 3 --json \
        >"$tmp/ppl.json" 2>"$tmp/err" || bad "ppl $model $ctx/$stride: $(cat "$tmp/err")"
    got_t=$(json_num "$tmp/ppl.json" tokens)
    got_n=$(json_num "$tmp/ppl.json" nll)
    got_b=$(json_num "$tmp/ppl.json" bpb)
    if [ "$got_t" = "$tokens" ] && close "$got_n" "$nll" 1e-4 && [ -n "$got_b" ]; then ok; else
        bad "ppl $model ctx $ctx stride $stride: $(cat "$tmp/ppl.json"), want tokens $tokens nll $nll"
    fi
done <"$FX/cli_cases.txt"
# a .u32 token file gives the text's numbers (gpt2 adds no BOS), without bits per byte
"$ANVIL" tokenize --tokenizer "$FX/gpt2" --file "$FX/ppl.txt" --out "$tmp/ppl.u32" 2>/dev/null
"$ANVIL" eval ppl --model "$FX/gpt2" --data "$tmp/ppl.u32" --json >"$tmp/u32.json"
"$ANVIL" eval ppl --model "$FX/gpt2" --data "$FX/ppl.txt" --json >"$tmp/txt.json"
if [ "$(json_num "$tmp/u32.json" nll)" = "$(json_num "$tmp/txt.json" nll)" ] && ! grep -q bpb "$tmp/u32.json"; then ok; else
    bad "ppl .u32: $(cat "$tmp/u32.json") vs text $(cat "$tmp/txt.json")"
fi
# a shard directory
if "$ANVIL" prepare --tokenizer "$FX/gpt2" --input "$FX/ppl.txt" --out "$tmp/shards" >/dev/null 2>&1; then
    "$ANVIL" eval ppl --model "$FX/gpt2" --data "$tmp/shards/train" --json >"$tmp/sh.json" 2>"$tmp/err"
    if [ "$(json_num "$tmp/sh.json" tokens)" -gt 300 ] 2>/dev/null; then ok; else bad "ppl on shards: $(cat "$tmp/sh.json" "$tmp/err")"; fi
fi
# the text output names the numbers
"$ANVIL" eval ppl --model "$FX/llama" --data "$FX/ppl.txt" --stride 32 >"$tmp/ppl.txt"
if grep -q "tokens scored" "$tmp/ppl.txt" && grep -q "bpb" "$tmp/ppl.txt" && grep -q "HF guide" "$tmp/ppl.txt"; then ok; else
    bad "ppl text output: $(cat "$tmp/ppl.txt")"
fi

# -------------------------------------------------------------------- mcq
while IFS=$'\t' read -r kind model task acc accn accb trunc; do
    [ "$kind" = mcq ] || continue
    "$ANVIL" eval mcq --model "$FX/$model" --task "$task" --data "$FX/$task.jsonl" --batch 2 --json \
        >"$tmp/mcq.json" 2>"$tmp/err" || bad "mcq $model $task: $(cat "$tmp/err")"
    g_acc=$(json_num "$tmp/mcq.json" acc)
    g_accn=$(json_num "$tmp/mcq.json" acc_norm)
    g_accb=$(json_num "$tmp/mcq.json" acc_bytes)
    g_tr=$(json_num "$tmp/mcq.json" truncated)
    good=1
    close "$g_acc" "$acc" 1e-6 || good=0
    if [ "$accn" = null ]; then [ "$g_accn" = null ] || good=0; else close "$g_accn" "$accn" 1e-6 || good=0; fi
    if [ "$accb" = null ]; then [ "$g_accb" = null ] || good=0; else close "$g_accb" "$accb" 1e-6 || good=0; fi
    [ "$g_tr" = "$trunc" ] || good=0
    if [ $good = 1 ]; then ok; else bad "mcq $model $task: $(cat "$tmp/mcq.json"), want acc $acc $accn $accb truncated $trunc"; fi
done <"$FX/cli_cases.txt"
"$ANVIL" eval mcq --model "$FX/gpt2" --task hellaswag --data "$FX/hellaswag.jsonl" --limit 2 >"$tmp/mcq.txt"
if grep -q "hellaswag: 2 items" "$tmp/mcq.txt" && grep -q "truncated" "$tmp/mcq.txt"; then ok; else bad "mcq text: $(cat "$tmp/mcq.txt")"; fi

# a malformed line: fatal with its line number, or skipped with --skip-bad
{ head -2 "$FX/piqa.jsonl"; echo '{"goal": "x", "sol1": '; sed -n 3p "$FX/piqa.jsonl"; } >"$tmp/bad.jsonl"
expect_fail "mcq malformed line" "$tmp/bad.jsonl:3:|invalid JSON" eval mcq --model "$FX/gpt2" --task piqa --data "$tmp/bad.jsonl"
"$ANVIL" eval mcq --model "$FX/gpt2" --task piqa --data "$tmp/bad.jsonl" --skip-bad --json >"$tmp/out" 2>"$tmp/err"
if [ $? = 0 ] && [ "$(json_num "$tmp/out" skipped)" = 1 ] && [ "$(json_num "$tmp/out" items)" = 3 ] && grep -q "bad.jsonl:3:" "$tmp/err"; then ok; else
    bad "--skip-bad: $(cat "$tmp/out" "$tmp/err")"
fi

# --------------------------------------------------------------- bad input
expect_fail "ppl missing data" "$tmp/none.txt" eval ppl --model "$FX/gpt2" --data "$tmp/none.txt"
expect_fail "ppl bad stride" "--stride" eval ppl --model "$FX/gpt2" --data "$FX/ppl.txt" --stride 100
expect_fail "ppl ctx too long" "--seq" eval ppl --model "$FX/gpt2" --data "$FX/ppl.txt" --ctx 65
printf 'abc' >"$tmp/odd.u32"
expect_fail "ppl odd .u32" "odd.u32|multiple of 4" eval ppl --model "$FX/gpt2" --data "$tmp/odd.u32"
expect_fail "ppl text without tokenizer" "ppl.txt|tokenizer" eval ppl --model tests/fixtures/gpt2/model --data "$FX/ppl.txt"
expect_fail "mcq unknown task" "--task|squad" eval mcq --model "$FX/gpt2" --task squad --data "$FX/piqa.jsonl"
expect_fail "mcq no such model" "$tmp/nomodel" eval mcq --model "$tmp/nomodel" --task piqa --data "$FX/piqa.jsonl"
expect_fail "eval unknown mode" "blah" eval blah --model "$FX/gpt2"
expect_fail "generate top-p" "--top-p" generate --model "$FX/gpt2" --prompt hi --top-p 0
expect_fail "generate temperature" "--temperature" generate --model "$FX/gpt2" --prompt hi --temperature -1
expect_fail "generate two prompts" "--prompt" generate --model "$FX/gpt2" --prompt hi --prompt-ids 1
expect_fail "generate text prompt without tokenizer" "--prompt" generate --model tests/fixtures/gpt2/model --prompt hi
expect_fail "generate id outside vocab" "vocabulary" generate --model "$FX/gpt2" --prompt-ids 1,100000
expect_fail "generate bad ids" "--prompt-ids" generate --model "$FX/gpt2" --prompt-ids 1,x
expect_fail "generate bad device" "--device" generate --model "$FX/gpt2" --prompt hi --device tpu
# a prompt longer than the window
long=$(seq -s, 1 70)
expect_fail "generate prompt too long" "window" generate --model "$FX/gpt2" --prompt-ids "$long"

# ------------------------------------------------------- eval.mcq in training
# fine-tune the eval model a few steps with a multiple-choice task every 2 steps; the last step's
# logged accuracy is what `anvil eval mcq` gives on the final checkpoint at the same window
cat >"$tmp/mcq.yaml" <<YAML
model:
  init: $FX/gpt2
data:
  train: examples/sentences-train.txt
train:
  batch_size: 2
  seq_len: 40
  steps: 4
  lr: 1e-3
  warmup_steps: 0
eval:
  steps: 0
  mcq:
    task: hellaswag
    data: $FX/hellaswag.jsonl
    every: 2
out_dir: $tmp/mcqrun
YAML
if "$ANVIL" train "$tmp/mcq.yaml" >"$tmp/train.log" 2>&1; then ok; else bad "train with eval.mcq: $(tail -3 "$tmp/train.log")"; fi
check "mcq logged at steps 2 and 4 only" test "$(grep -c '"mcq_acc"' "$tmp/mcqrun/metrics.jsonl")" = 2
check "mcq fields" grep -q '"step": 4, .*"mcq_task": "hellaswag", "mcq_items": [0-9], "mcq_acc": [0-9.]*, "mcq_acc_norm": [0-9.]*, "mcq_acc_bytes": [0-9.]*' \
    "$tmp/mcqrun/metrics.jsonl"
check "mcq in the progress line" grep -q '^step 2/4 .* | hellaswag acc [0-9.]* acc_norm' "$tmp/train.log"
"$ANVIL" eval mcq --model "$tmp/mcqrun/final" --task hellaswag --data "$FX/hellaswag.jsonl" --ctx 40 --json >"$tmp/final.json"
logged=$(grep '"step": 4,' "$tmp/mcqrun/metrics.jsonl" | sed 's/.*"mcq_acc_norm": \([0-9.]*\).*/\1/')
check "logged acc_norm == eval mcq on the checkpoint" close "$logged" "$(json_num "$tmp/final.json" acc_norm)" 1e-6
expect_fail "train mcq bad task" "eval.mcq.task|squad" train "$tmp/mcq.yaml" --set eval.mcq.task=squad \
    --set out_dir="$tmp/mcqbad"
expect_fail "train mcq bad data" "eval.mcq.data|$tmp/none.jsonl" train "$tmp/mcq.yaml" --set eval.mcq.data="$tmp/none.jsonl" \
    --set out_dir="$tmp/mcqbad"

cli_summary
