#!/usr/bin/env bash
# ternary_compare.sh - the head-to-head of issue 15 (docs/ternary.md): one small byte-level model trained
# three ways on the same bytes, and the seed's table for each:
#   adamw     every tensor fp32 (master + two Adam moments), plain products
#   bitnet    BitNet b1.58 QAT (model.ternary: bitnet): fp32 latent weights + Adam, ternary in the forward
#   integer   train.optimizer: ternary: block linears are packed trits + int8 exponents and accumulators
#             (no float weights or optimizer state for them); norms and embeddings/head AdamW
#   integer-emb  the same with train.ternary.embeddings: the embeddings and head ternary too (only the
#             norm weights float)
# The model is the BitNet architecture (model.family: bitnet: RMSNorm, sub-norms, relu2 MLP, RoPE) for
# all three, so that only the training method differs.
#
#   bash tools/ternary_compare.sh [--device cpu|cuda|cuda-fp32] [--steps 200] [--batch 4] [--seq 33]
#        [--layers 4] [--width 256] [--heads 4] [--ff 688] [--lr 2e-3] [--data FILE] [--out DIR]
#        [--methods "adamw bitnet integer integer-emb"] [--curve N]
#
# Columns: float params = trainable fp32 tensors' elements; weights MB = the weights as stored (fp32
# master and any compute copy, packed trits + exponents); optimizer MB = Adam moments + ternary
# accumulators; persistent = weights + optimizer (what a checkpoint must hold to resume; gradients are
# transient within a step); peak = the backend's high-water mark after step 1; step ms = median over
# steps 2..N; final = the last step's loss, last-20 = the mean of the last 20 steps' losses, min = the
# smallest. Losses are training losses on the step's own batch (nats per byte). --curve N adds the loss
# curves at equal tokens: each method's mean loss over every block of N steps, and BitNet's gap to AdamW.
set -eu
cd "$(dirname "$0")/.."
ANVIL=${ANVIL:-./anvil}
device=cpu steps=200 batch=4 seq=33 layers=4 width=256 heads=4 ff=688 lr=2e-3
data=${ANVIL_SHARED_DATA:-../shared/data}/text/sentences.txt out=runs/ternary-compare
methods="adamw bitnet integer integer-emb" curve=0
while [ $# -gt 0 ]; do
    case $1 in
    --device) device=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --seq) seq=$2; shift 2 ;;
    --layers) layers=$2; shift 2 ;;
    --width) width=$2; shift 2 ;;
    --heads) heads=$2; shift 2 ;;
    --ff) ff=$2; shift 2 ;;
    --lr) lr=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --methods) methods=$2; shift 2 ;;
    --curve) curve=$2; shift 2 ;;
    *) echo "ternary_compare.sh: unknown option $1" >&2; exit 1 ;;
    esac
done
[ -f "$data" ] || { echo "ternary_compare.sh: $data: no such file (--data)" >&2; exit 1; }
mkdir -p "$out"
cat >"$out/base.yaml" <<YAML
model:
  family: bitnet
  n_layer: $layers
  d_model: $width
  n_head: $heads
  d_ff: $ff
  vocab_size: 257
  max_seq_len: $((seq > 64 ? seq : 64))
  tie_embeddings: false
data:
  train: $data
  tokenizer: byte
train:
  steps: $steps
  batch_size: $batch
  seq_len: $seq
  lr: $lr
  min_lr: $(awk -v l="$lr" 'BEGIN {print l / 10}')
  warmup_steps: $((steps / 10))
  log_every: $((steps / 4 > 0 ? steps / 4 : 1))
eval:
  every: 0
  steps: 0
checkpoint:
  every: 0
device: $device
YAML
declare -A extra=(
    [adamw]="--set model.ternary=none"
    [bitnet]="--set model.ternary=bitnet"
    [integer]="--set model.ternary=none --set train.optimizer=ternary"
    [integer-emb]="--set model.ternary=none --set train.optimizer=ternary --set train.ternary.embeddings=true"
)
row() { # method -> one Markdown row
    local m=$1 log=$out/$1.log
    # shellcheck disable=SC2086
    "$ANVIL" train "$out/base.yaml" --overwrite --set out_dir="$out/$m" ${extra[$m]} >"$log" 2>&1 ||
        { echo "ternary_compare.sh: $m failed: $(tail -n 2 "$log")" >&2; exit 1; }
    local mem med
    mem=$(grep '^memory bytes:' "$log")
    med=$(sed -n 's/.*"ms_per_step": \([0-9.]*\).*/\1/p' "$out/$m/metrics.jsonl" | tail -n +2 | sort -g |
        awk '{a[NR] = $1} END {print NR ? (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) : 0}')
    awk -v m="$m" -v mem="$mem" -v med="$med" '
        BEGIN { n = split(mem, f, " "); for (i = 1; i < n; i++) v[f[i]] = f[i + 1] }
        /"step": / { match($0, /"loss": [0-9.]+/); l = substr($0, RSTART + 8, RLENGTH - 8) + 0
                     k++; loss[k] = l; if (min == "" || l < min) min = l }
        END {
            mb = 1024 * 1024 # MiB
            w = (v["weights"] + v["master"]) / mb; o = v["optimizer"] / mb
            s = 0; c = 0; for (i = (k > 20 ? k - 19 : 1); i <= k; i++) { s += loss[i]; c++ }
            printf "| %s | %d | %d | %.3f | %.3f | %.3f | %.2f | %.1f | %.4f | %.4f | %.4f |\n", m, v["trainable"],
                   v["integer-ternary"], w, o, w + o, v["peak"] / mb, med, loss[k], s / c, min
        }' "$out/$m/metrics.jsonl"
}
echo "ternary_compare: family bitnet, $layers layers, width $width, $heads heads, d_ff $ff, bytes (257), B=$batch T=$seq, $steps steps, lr $lr, device $device, data $data ($(date -u +%Y-%m-%d))"
echo
echo "| method | float params | ternary params | weights MiB | optimizer MiB | persistent MiB | peak MiB | step ms | final loss | last-20 loss | min loss |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for m in $methods; do
    [ -n "${extra[$m]:-}" ] || { echo "ternary_compare.sh: --methods: unknown method $m" >&2; exit 1; }
    row "$m"
done
[ "$curve" -gt 0 ] || exit 0
# the curves: mean training loss over steps (k-1)N+1 .. kN of each method, at equal tokens
echo
set -- $methods
printf '| steps | tokens |'
for m in "$@"; do printf ' %s |' "$m"; done
both=0
case " $methods " in *" adamw "*) case " $methods " in *" bitnet "*) both=1 ;; esac ;; esac
[ $both = 1 ] && printf ' bitnet / adamw |'
echo
printf '|---:|---:|'
for m in "$@"; do printf -- '---:|'; done
[ $both = 1 ] && printf -- '---:|'
echo
for m in "$@"; do
    sed -n 's/.*"step": \([0-9]*\), "loss": \([0-9.]*\).*/\1 \2/p' "$out/$m/metrics.jsonl" >"$out/$m.losses"
done
awk -v N="$curve" -v tok=$((batch * seq)) -v methods="$methods" '
    BEGIN { nm = split(methods, ms, " "); for (i = 1; i <= nm; i++) col[ms[i]] = i }
    FNR == 1 { f++ }
    { b = int(($1 - 1) / N); s[f, b] += $2; c[f, b]++; if (b > nb) nb = b }
    END {
        for (b = 0; b <= nb; b++) {
            if (c[1, b] < N) continue
            printf "| %d-%d | %.2fM |", b * N + 1, (b + 1) * N, (b + 1) * N * tok / 1e6
            for (i = 1; i <= nm; i++) printf " %.4f |", s[i, b] / c[i, b]
            if (("adamw" in col) && ("bitnet" in col)) {
                a = s[col["adamw"], b] / c[col["adamw"], b]; q = s[col["bitnet"], b] / c[col["bitnet"], b]
                printf " %+.1f%% |", 100 * (q / a - 1)
            }
            printf "\n"
        }
    }' $(for m in "$@"; do echo "$out/$m.losses"; done)
