#!/usr/bin/env bash
# cli_report.sh - `anvil report` and `anvil cost` end to end on the CPU:
#   - two short real runs (different lr) -> report.md with the summary table, PNG and SVG figures;
#   - metrics.jsonl -> TensorBoard event file; anvil's reader finds every value equal; and
#     TensorBoard's own reader does too (tools/check_tensorboard.py) where Python has tensorboard;
#   - the MoE fixture draws the expert-load figures;
#   - cost arithmetic on fixed inputs; bad input: one stderr line "anvil: ..." and exit 1.
set -u
. "$(dirname "$0")/lib_cli.sh"

TRAIN=examples/sentences-train.txt
VAL=examples/sentences-val.txt
MOE=tests/fixtures/report/moe-run
if [ ! -f "$TRAIN" ] || [ ! -d "$MOE" ]; then
    echo "skip: $TRAIN or $MOE not found (run from the repository root)" >&2
    echo "0 passed, 0 failed"
    exit 0
fi
PY=${PYTHON:-python3}

# A byte-level GPT-2 small enough to train 24 steps in seconds.
cat >"$tmp/tiny.yaml" <<YAML
model:
  preset: gpt2-tiny
  n_layer: 1
  vocab_size: 257
  max_seq_len: 32
data:
  train: $TRAIN
  val: $VAL
  tokenizer: byte
train:
  steps: 24
  batch_size: 4
  seq_len: 32
  lr: 3e-3
  warmup_steps: 4
  log_every: 100
eval:
  every: 8
  steps: 2
checkpoint:
  every: 0
  keep: 1
log:
  tensorboard: false # these runs stand for ones made before training wrote event files
YAML
check train-a "$ANVIL" train "$tmp/tiny.yaml" --set out_dir="$tmp/lr3e-3" >/dev/null
check train-b "$ANVIL" train "$tmp/tiny.yaml" --set out_dir="$tmp/lr1e-3" --set train.lr=1e-3 >/dev/null

# ---- the report ----
check report "$ANVIL" report "$tmp/lr3e-3" "$tmp/lr1e-3" --out "$tmp/rep" >/dev/null
is_png() { [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ]; }
is_svg() { head -c 5 "$1" | grep -q '<?xml' && grep -q '</svg>' "$1"; }
for f in loss lr grad_norm tokens_per_s; do
    check "png-$f" is_png "$tmp/rep/$f.png"
    check "svg-$f" is_svg "$tmp/rep/$f.svg"
done
check no-moe-figures test ! -e "$tmp/rep/expert_load_lr3e-3.png"
md=$tmp/rep/report.md
check md-table-a grep -q '^| lr3e-3 | 24 | 3072 |' "$md"
check md-table-b grep -q '^| lr1e-3 | 24 | 3072 |' "$md"
check md-runs grep -q '| 0.003 (' "$md"
# the final losses in the table are metrics.jsonl's last line, rounded to 4 decimals
last_loss=$(tail -n 1 "$tmp/lr3e-3/metrics.jsonl" | sed 's/.*"loss": \([0-9.]*\).*/\1/')
check md-final-loss grep -q "| $(printf '%.4f' "$last_loss") |" "$md"
check md-figures grep -q '!\[Loss\](loss.png)' "$md"
check no-temp-files sh -c "! ls -a '$tmp/rep' | grep -q tmp"

# ---- MoE figures from the fixture ----
check report-moe "$ANVIL" report "$MOE" --out "$tmp/moe" >/dev/null
check moe-heatmap is_png "$tmp/moe/expert_load_moe-run.png"
check moe-bars is_svg "$tmp/moe/expert_final_moe-run.svg"
check moe-md grep -q 'mixture of experts' "$tmp/moe/report.md"

# ---- TensorBoard ----
check tb-convert "$ANVIL" report --tensorboard "$tmp/lr3e-3" >/dev/null
check tb-file sh -c "ls '$tmp/lr3e-3' | grep -q '^events.out.tfevents.'"
check tb-check "$ANVIL" report --check-tensorboard "$tmp/lr3e-3"
cp -r "$MOE" "$tmp/moe-run"
check tb-convert-moe "$ANVIL" report --tensorboard "$tmp/moe-run" --out "$tmp/moe-tb" >/dev/null
check tb-check-moe "$ANVIL" report --check-tensorboard "$tmp/moe-run" --events "$tmp/moe-tb" >/dev/null
if "$PY" -c "import tensorboard" 2>/dev/null; then
    check tb-python "$PY" tools/check_tensorboard.py "$tmp/lr3e-3"
    check tb-python-moe "$PY" tools/check_tensorboard.py "$tmp/moe-run" "$tmp/moe-tb"
else
    echo "skipped: TensorBoard's own reader ($PY has no tensorboard; PYTHON=... selects another)" >&2
fi
# a changed value is found
sed -i 's/"loss": [0-9.]*/"loss": 1.25/' "$tmp/moe-run/metrics.jsonl"
expect_fail tb-check-differs "moe-run|train/loss at step 1|event file" report --check-tensorboard "$tmp/moe-run" \
    --events "$tmp/moe-tb"

# ---- cost: fixed inputs ----
printf '{"model": "m1", "device_name": "NVIDIA H100 80GB HBM3", "tokens_per_s": 500000}\n' >"$tmp/b.json"
"$ANVIL" cost --bench "$tmp/b.json" --price H100=3.6 --prices /dev/null/none >"$tmp/c1" 2>&1
check cost-explicit-prices-missing grep -q 'cannot open' "$tmp/c1"
"$ANVIL" cost --bench "$tmp/b.json" --price H100=3.6 --prices configs/prices.yaml >"$tmp/c2"
# 1e9 tokens / 500,000 tokens/s = 2,000 s = 0.556 h (33 min); at $3.60/h = $2.00; the table's H100 rows are replaced
check cost-row grep -q '^| m1 | NVIDIA H100 80GB HBM3 | 500000 | .* | 0.556 h (33 min) | 3.6 | --price | - | \$2.00 |$' "$tmp/c2"
check cost-override test "$(grep -c '^| m1 ' "$tmp/c2")" -eq 1
"$ANVIL" cost --bench "$tmp/b.json" --tokens 300B --price H100=2 >"$tmp/c3"
# 3e11 / 5e5 = 600,000 s = 166.667 h = 6.9 days; at $2/h = $333.33
check cost-tokens grep -q '| 167 h (6.9 days) | 2 | --price | - | \$333.33 |' "$tmp/c3"
"$ANVIL" cost --bench "$tmp/lr3e-3" --price cpu=0.10 >"$tmp/c4"
check cost-run grep -q "^| gpt2-tiny | cpu | [0-9]* | $tmp/lr3e-3 |" "$tmp/c4"
"$ANVIL" cost --bench docs/bench/h100-llama-1b.json >"$tmp/c5"
check cost-table grep -q '| llama-1b | NVIDIA H100 80GB HBM3 | 75650 | docs/bench/h100-llama-1b.json | 3.67 h | 3.99 | Lambda' "$tmp/c5"

# ---- bad input ----
expect_fail report-no-dir "$tmp/none|not a run directory" report "$tmp/none"
expect_fail report-no-metrics "no metrics.jsonl" report "$tmp/rep"
mkdir -p "$tmp/bad"
printf '{"step": 1, "loss": 2}\nnot json\n' >"$tmp/bad/metrics.jsonl"
expect_fail report-bad-line "bad/metrics.jsonl:2|not JSON" report "$tmp/bad" --out "$tmp/rep-bad"
printf '{"step": 1, "expert_load": [[0.5, 0.5], [1]]}\n' >"$tmp/bad/metrics.jsonl"
expect_fail report-bad-moe "metrics.jsonl:1|expert_load: layer 1 has 1 experts" report "$tmp/bad" --out "$tmp/rep-bad"
expect_fail report-unknown-option "unknown option \"--outt\"" report "$tmp/lr3e-3" --outt x
expect_fail tb-two-dirs "--tensorboard takes one run directory" report --tensorboard "$tmp/lr3e-3" "$tmp/lr1e-3"
expect_fail tb-check-none "no event files" report --check-tensorboard "$tmp/lr1e-3"
expect_fail cost-no-bench "give a measurement" cost --price H100=2
expect_fail cost-bad-price "--price|GPU=USD_PER_HOUR" cost --bench "$tmp/b.json" --price H100
expect_fail cost-bad-tokens "--tokens|lots" cost --bench "$tmp/b.json" --tokens lots
printf '{"model": "x"}\n' >"$tmp/nots.json"
expect_fail cost-bench-field "nots.json: tokens_per_s" cost --bench "$tmp/nots.json" --price H100=2
printf 'prices:\n  - gpu: H100\n    usd: 3\n' >"$tmp/p.yaml"
expect_fail cost-price-table "p.yaml:3|unknown key \"usd\"" cost --bench "$tmp/b.json" --prices "$tmp/p.yaml"

cli_summary
