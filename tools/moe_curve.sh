#!/usr/bin/env bash
# moe_curve.sh - issue 12's real-text comparison: a moe-1b-family model (8 experts, top-2) trained with
# the load-balancing loss, the same model without it, and a dense model of the same active size (its
# MLP as wide as two experts), on the same text, tokens and steps. Prints, per run, the loss at a few
# steps, the mean of the last 50 losses, and the routing statistics of the last step (per MoE layer:
# load balance = mean load / max load, routing entropy in bits, the largest expert share), then the
# final load table of each MoE run.
#   bash tools/moe_curve.sh [--device cuda|cpu] [--data FILE] [--steps N] [--layers L] [--width C]
#                           [--batch B] [--seq T] [--aux COEF] [--runs "moe-aux moe-noaux dense"] [--out DIR]
# Defaults: cuda, tests/data/sentences.txt (byte tokens), 400 steps, 8 layers of width 512, B 16, T 512,
# the load-balancing loss's coefficient 0.01 (transformers' default) in the moe-aux run, all three runs.
set -eu
dev=cuda data=tests/data/sentences.txt steps=400 layers=8 width=512 batch=16 seq=512 out=runs/moe-curve aux=0.01
runs="moe-aux moe-noaux dense"
while [ $# -gt 0 ]; do
    case $1 in
    --device) dev=$2 ;;
    --data) data=$2 ;;
    --steps) steps=$2 ;;
    --layers) layers=$2 ;;
    --width) width=$2 ;;
    --batch) batch=$2 ;;
    --seq) seq=$2 ;;
    --out) out=$2 ;;
    --aux) aux=$2 ;;
    --runs) runs=$2 ;;
    *) echo "moe_curve.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift 2
done
[ -f "$data" ] || { echo "moe_curve.sh: $data: no such file" >&2; exit 2; }
anvil=${ANVIL:-./anvil}
mkdir -p "$out"
eff=$((width * 11 / 4 / 64 * 64)) # an expert's width: about 2.75 x the model's, a multiple of 64
heads=$((width / 64))
[ "$heads" -ge 1 ] || heads=1
kv=$(((heads + 3) / 4))
conf() { # name, then the moe (or dense) lines of the model section
    local name=$1
    shift
    {
        echo "model:"
        echo "  family: llama"
        echo "  n_layer: $layers"
        echo "  d_model: $width"
        echo "  n_head: $heads"
        echo "  n_kv_head: $kv"
        echo "  vocab_size: 257"
        echo "  max_seq_len: $seq"
        for l in "$@"; do echo "  $l"; done
        cat <<YAML
data:
  train: $data
  tokenizer: byte
train:
  steps: $steps
  batch_size: $batch
  seq_len: $seq
  lr: 1e-3
  warmup_steps: $((steps / 10))
  log_every: 50
eval:
  every: 0
  steps: 0
checkpoint:
  every: 0
device: $dev
out_dir: $out/$name
YAML
    } >"$out/$name.yaml"
}
conf moe-aux "d_ff: $((2 * eff))" "moe:" "  experts: 8" "  top_k: 2" "  d_ff: $eff" "  aux_loss_coef: $aux"
conf moe-noaux "d_ff: $((2 * eff))" "moe:" "  experts: 8" "  top_k: 2" "  d_ff: $eff" "  aux_loss_coef: 0" \
    "  z_loss_coef: 0"
conf dense "d_ff: $((2 * eff))"
for r in $runs; do
    "$anvil" train "$out/$r.yaml" --overwrite >"$out/$r.log" 2>&1 || {
        echo "moe_curve.sh: $r failed: $(tail -n 2 "$out/$r.log")" >&2
        exit 1
    }
done
python3 - "$out" "$steps" $runs <<'PY'
import json, sys
out, steps, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
marks = sorted({1, steps // 4, steps // 2, steps})
print("| run | " + " | ".join("loss @%d" % s for s in marks) + " | mean of last 50 | last step: load balance per MoE layer | routing entropy (bits, max 3) | largest expert share |")
print("|---|" + "---:|" * len(marks) + "---:|---|---|---|")
for r in runs:
    rows = [json.loads(l) for l in open("%s/%s/metrics.jsonl" % (out, r)) if '"loss"' in l]
    by = {d["step"]: d for d in rows if "step" in d}
    last = [d["loss"] for d in rows][-50:]
    cells = ["%.4f" % by[s]["loss"] if s in by else "-" for s in marks]
    d = rows[-1]
    lb = " ".join("%.2f" % x for x in d.get("load_balance", [])) or "-"
    en = " ".join("%.2f" % x for x in d.get("routing_entropy_bits", [])) or "-"
    mx = " ".join("%.2f" % max(x) for x in d.get("expert_load", [])) or "-"
    print("| %s | %s | %.4f | %s | %s | %s |" % (r, " | ".join(cells), sum(last) / len(last), lb, en, mx))
PY
for r in $runs; do
    [ "$r" = dense ] && continue
    echo
    echo "$r: the end of the run"
    sed -n '/expert load/,$p' "$out/$r.log" | head -n 24
done
