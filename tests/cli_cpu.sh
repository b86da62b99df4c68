#!/usr/bin/env bash
# cli_cpu.sh - the CPU backend gives bit-identical training for any OpenMP
# thread count: a few steps of a tiny byte-level GPT-2 and LLaMA with 1, 2 and 3
# threads must write the same weights and log the same losses (docs/testing.md).
# Also: the GPU test programs say "skipped: no GPU" on a machine without one.
set -u
. "$(dirname "$0")/lib_cli.sh"

TRAIN=examples/sentences-train.txt
if [ ! -f "$TRAIN" ]; then
    echo "skip: $TRAIN not found (run from the repository root)" >&2
    echo "0 passed, 0 failed"
    exit 0
fi
# rows per step (5 x 48 = 240) are not a multiple of any chunk size, so the last
# chunk of every product is a partial one
for preset in gpt2-tiny llama-tiny; do
    cat >"$tmp/$preset.yaml" <<YAML
model:
  preset: $preset
  d_model: 96
  vocab_size: 257
  max_seq_len: 48
data:
  train: $TRAIN
  tokenizer: byte
train:
  steps: 3
  batch_size: 5
  seq_len: 48
  lr: 1e-2
  warmup_steps: 1
  log_every: 1
checkpoint:
  every: 0
out_dir: $tmp/run
YAML
    for th in 1 2 3; do
        OMP_NUM_THREADS=$th "$ANVIL" train "$tmp/$preset.yaml" --set out_dir="$tmp/$preset-t$th" >"$tmp/log" 2>&1 ||
            bad "$preset train with $th threads: $(tail -3 "$tmp/log")"
        grep -o '"loss": *[-0-9.e]*' "$tmp/$preset-t$th/metrics.jsonl" >"$tmp/$preset-t$th.loss" 2>/dev/null
    done
    for th in 2 3; do
        check "$preset: weights with $th threads = 1 thread" \
            cmp -s "$tmp/$preset-t1/final/model.safetensors" "$tmp/$preset-t$th/final/model.safetensors"
        check "$preset: losses with $th threads = 1 thread" \
            cmp -s "$tmp/$preset-t1.loss" "$tmp/$preset-t$th.loss"
    done
    check "$preset: losses logged" test -s "$tmp/$preset-t1.loss"
done
# the GPU test programs on a machine without a GPU say "skipped: no GPU", not "0 passed"
build=${ANVIL_TEST_BUILD:-build}
for t in test_cuda test_cuda_kv; do
    [ -x "$build/tests/$t" ] || continue
    "$build/tests/$t" >"$tmp/$t.out" 2>&1
    rc=$?
    if grep -q "^0 passed, 0 failed$" "$tmp/$t.out" || ! grep -q "passed" "$tmp/$t.out"; then
        bad "$t reports no test and no skip: $(tail -2 "$tmp/$t.out")"
    elif grep -q "skipped: no GPU" "$tmp/$t.out"; then
        check "$t: skipped, exit 0" [ $rc -eq 0 ]
        check "$t: closing line counts the skip" grep -q "^0 passed, 0 failed, 1 skipped$" "$tmp/$t.out"
    else
        ok # a GPU is here: the program ran its tests (its own pass/fail is counted by run_all)
    fi
done
cli_summary
