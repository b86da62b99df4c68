#!/usr/bin/env bash
# cli_bert.sh - encoders end to end: a tiny BERT trained with masked-LM rows on real text and a
# WordPiece tokenizer fixture (the loss falls, the checkpoint is a BertForMaskedLM), config errors.
set -u
. "$(dirname "$0")/lib_cli.sh"
TOK=tests/fixtures/tokenizers/wp_uncased/tokenizer.json
TEXT=${ANVIL_SHARED_DATA:-../shared/data}/text/sentences.txt
if [ ! -f "$TOK" ] || [ ! -f "$TEXT" ]; then
    echo "skip: $TOK or $TEXT not found (run from the repository root)" >&2
    echo "0 passed, 0 failed"
    exit 0
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
head -c 200000 "$TEXT" >"$tmp/train.txt"
tail -c 40000 "$TEXT" >"$tmp/val.txt"
cat >"$tmp/bert.yaml" <<EOF2
model:
  preset: bert-tiny
data:
  objective: mlm
  tokenizer: $TOK
  train: $tmp/train.txt
  val: $tmp/val.txt
train:
  seq_len: 64
  batch_size: 8
  steps: 40
  lr: 3e-3
  warmup_steps: 4
eval:
  every: 40
  steps: 4
EOF2

# ---- training: the MLM loss falls from ln(V) and only chosen tokens (~15%) are scored
"$ANVIL" train "$tmp/bert.yaml" --set out_dir="$tmp/run" --set checkpoint.every=20 >"$tmp/out" 2>"$tmp/err"
check "train bert-tiny mlm: exit 0 ($(tail -2 "$tmp/err"))" [ $? -eq 0 ]
M="$tmp/run/metrics.jsonl"
first=$(head -3 "$M" | sed 's/.*"loss": \([0-9.]*\).*/\1/' | awk '{s += $1} END {print s / NR}')
last=$(grep -v val_loss "$M" | tail -5 | sed 's/.*"loss": \([0-9.]*\).*/\1/' | awk '{s += $1} END {print s / NR}')
check "mlm loss falls: first steps $first, last steps $last" awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 0.5) }'
scored=$(head -1 "$M" | sed 's/.*"scored": \([0-9]*\).*/\1/')
# 8 rows of 62 text tokens: 15% of 496 = 74.4 expected (sd 8)
check "about 15% of the 496 text tokens scored ($scored)" test "$scored" -gt 40 -a "$scored" -lt 110
check "the checkpoint is a BertForMaskedLM" grep -q BertForMaskedLM "$tmp/run/final/config.json"
check "the checkpoint carries the tokenizer" cmp -s "$TOK" "$tmp/run/final/tokenizer.json"
check "a validation loss" grep -q val_loss "$M"

# ---- resume is exact: the masking follows the row, not the process
strip() { sed -E 's/"(tokens_per_s|ms_per_step|wall_time|mfu|peak_mem_gib)": [0-9.e+-]*(, )?//g' "$1"; }
cp -r "$tmp/run" "$tmp/resumed"
rm -rf "$tmp/resumed/step-0000040"
"$ANVIL" train "$tmp/bert.yaml" --resume "$tmp/resumed" >"$tmp/resume.log" 2>&1 || bad "resume: $(tail -3 "$tmp/resume.log")"
check "resumed mlm metrics identical" cmp -s <(strip "$tmp/run/metrics.jsonl") <(strip "$tmp/resumed/metrics.jsonl")
check "resumed weights identical" cmp -s "$tmp/run/step-0000040/model.safetensors" "$tmp/resumed/step-0000040/model.safetensors"

# ---- errors: one line naming the key
expect_fail mlm-on-decoder "data.objective|encoder with an MLM head" train "$tmp/bert.yaml" --set model.preset=gpt2-tiny \
    --set out_dir="$tmp/e1"
expect_fail causal-on-encoder "data.objective|is an encoder" train "$tmp/bert.yaml" --set data.objective=causal \
    --set out_dir="$tmp/e2"
expect_fail bad-objective "data.objective|causal or mlm" train "$tmp/bert.yaml" --set data.objective=mlmm \
    --set out_dir="$tmp/e3"
expect_fail bad-prob "data.mlm.prob" train "$tmp/bert.yaml" --set data.mlm.prob=1.5 --set out_dir="$tmp/e4"
expect_fail no-mask-token "no mask token" train "$tmp/bert.yaml" --set data.tokenizer=gpt2 --set out_dir="$tmp/e5"
cli_summary
