#!/usr/bin/env bash
# cli_bert.sh - encoders end to end: a tiny BERT trained with masked-LM rows on real text and a
# WordPiece tokenizer fixture (the loss falls, resume is exact, the checkpoint is a BertForMaskedLM),
# anvil eval mlm (pre-masked JSONL equal to transformers, seeded text masking), anvil embed, errors.
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

# ---- RoBERTa from scratch: a byte-level BPE tokenizer's <s> ... </s> template and <mask>, positions
# after the pad id; the checkpoint is a RobertaForMaskedLM
"$ANVIL" train "$tmp/bert.yaml" --set model.preset=roberta-tiny --set data.tokenizer=tests/fixtures/tokenizers/roberta_style/tokenizer.json \
    --set train.steps=6 --set eval.every=0 --set out_dir="$tmp/rob" >"$tmp/rob.log" 2>&1
check "train roberta-tiny mlm: exit 0 ($(tail -2 "$tmp/rob.log"))" [ $? -eq 0 ]
check "roberta checkpoint: RobertaForMaskedLM" grep -q RobertaForMaskedLM "$tmp/rob/final/config.json"
check "roberta checkpoint: pad id 1" grep -q '"pad_token_id": 1,' "$tmp/rob/final/config.json"
check "roberta checkpoint: 130 positions" grep -q '"max_position_embeddings": 130' "$tmp/rob/final/config.json"

# ---- resume is exact: the masking follows the row, not the process
strip() { sed -E 's/"(tokens_per_s|ms_per_step|wall_time|mfu|peak_mem_gib)": [0-9.e+-]*(, )?//g' "$1"; }
cp -r "$tmp/run" "$tmp/resumed"
rm -rf "$tmp/resumed/step-0000040"
"$ANVIL" train "$tmp/bert.yaml" --resume "$tmp/resumed" >"$tmp/resume.log" 2>&1 || bad "resume: $(tail -3 "$tmp/resume.log")"
check "resumed mlm metrics identical" cmp -s <(strip "$tmp/run/metrics.jsonl") <(strip "$tmp/resumed/metrics.jsonl")
check "resumed weights identical" cmp -s "$tmp/run/step-0000040/model.safetensors" "$tmp/resumed/step-0000040/model.safetensors"

# ---- eval mlm: pre-masked JSONL as transformers scores it; seeded masking of held-out text
FXB=tests/fixtures/bert
for k in bert roberta; do
    "$ANVIL" eval mlm --model $FXB/$k/model --data $FXB/$k/premasked.jsonl --json >"$tmp/ev.json" 2>"$tmp/err"
    got=$(sed 's/.*"loss": \([0-9.]*\).*/\1/' "$tmp/ev.json")
    want=$(sed 's/.*"loss": \([0-9.]*\).*/\1/' $FXB/$k/premasked_reference.json)
    check "eval mlm $k: loss $got = transformers' $want ($(cat "$tmp/err"))" \
        awk -v a="$got" -v b="$want" 'BEGIN { d = a - b; exit !(a > 0 && d < 1e-5 * b && -d < 1e-5 * b) }'
done
"$ANVIL" eval mlm --model "$tmp/run/final" --data "$tmp/val.txt" --seq 64 --seed 3 --json >"$tmp/e1.json" 2>"$tmp/err"
check "eval mlm on text: exit 0 ($(cat "$tmp/err"))" grep -q '"masking": "seeded"' "$tmp/e1.json"
"$ANVIL" eval mlm --model "$tmp/run/final" --data "$tmp/val.txt" --seq 64 --seed 3 --batch 5 --json >"$tmp/e2.json"
field() { sed "s/.*\"$1\": \([0-9.]*\).*/\1/" "$2"; }
check "eval mlm: the batch size changes nothing" awk -v a="$(field loss "$tmp/e1.json")" -v b="$(field loss "$tmp/e2.json")" \
    -v s="$(field scored "$tmp/e1.json")" -v t="$(field scored "$tmp/e2.json")" \
    -v c="$(field accuracy "$tmp/e1.json")" -v d="$(field accuracy "$tmp/e2.json")" \
    'BEGIN { x = a - b; exit !(s == t && c == d && x < 1e-6 && -x < 1e-6) }'
"$ANVIL" eval mlm --model "$tmp/run/final" --data "$tmp/val.txt" --seq 64 --seed 4 --json >"$tmp/e3.json"
check "eval mlm: another seed masks other tokens" differs <(sed 's/"seconds.*//' "$tmp/e1.json") <(sed 's/"seconds.*//' "$tmp/e3.json")
trained=$(sed 's/.*"loss": \([0-9.]*\).*/\1/' "$tmp/e1.json")
check "eval mlm: the trained model beats ln(2048) = 7.62 ($trained)" awk -v a="$trained" 'BEGIN { exit !(a < 7.2) }'
printf '{"input_ids": [1, 2], "labels": [5]}\n' >"$tmp/bad.jsonl"
expect_fail eval-mlm-bad-labels "bad.jsonl:1: labels" eval mlm --model $FXB/bert/model --data "$tmp/bad.jsonl"
expect_fail eval-mlm-no-head "BertModel|no MLM head" eval mlm --model $FXB/bertmodel/model --data $FXB/bert/premasked.jsonl

# ---- embed: JSON with one vector per text (values checked against transformers in test_bert)
"$ANVIL" embed --model $FXB/bertembed/model --file $FXB/bertembed/texts.txt >"$tmp/emb.json" 2>"$tmp/err"
check "embed --file: 4 vectors of 32 ($(cat "$tmp/err"))" grep -q '"dim": 32, "count": 4' "$tmp/emb.json"
check "embed: valid JSON" /usr/bin/env python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert len(d['embeddings'])==4 and all(len(e)==32 for e in d['embeddings'])" "$tmp/emb.json"
"$ANVIL" embed --model $FXB/bertembed/model --text "Hello world!" --pooling cls >"$tmp/cls.json"
check "embed --text --pooling cls" grep -q '"pooling": "cls", "dim": 32, "count": 1' "$tmp/cls.json"
expect_fail embed-pooling "--pooling|mean or cls" embed --model $FXB/bertembed/model --text hi --pooling max
expect_fail embed-decoder "not an encoder" embed --model tests/fixtures/gpt2/model --tokenizer gpt2 --text hi
expect_fail embed-no-text "--text or --file" embed --model $FXB/bertembed/model

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
