#!/usr/bin/env bash
# cli_ternary_dist.sh - train.optimizer: ternary under data parallel on CPU ranks (docs/ternary.md "Data
# parallel"): a tiny byte-level llama with every linear, the embedding and the untied head integer-ternary
# (only the norms are float), 6 steps of 256 tokens:
#   - 2 ranks (`anvil launch --nproc 2 --device cpu`, TCP; `mpirun -np 2`, MPI) x 1 micro-batch give the
#     losses (within 1e-6 relative; measured: the same 6 printed decimals) and the integer state (ternary.safetensors: trits, exponents,
#     both accumulators, byte for byte) of 1 rank with 2-fold accumulation, unfused, fused (whole tensors)
#     and fused with the vocabulary tensors by row chunks (9 chunks of 30 rows); the norm weights within
#     lib_dist.sh's WEIGHT_TOL (AdamW on float sums taken in another order);
#   - fused on 1 rank with one micro-batch of 8 rows gives the 2-rank state too (measured: the gradients
#     differ by rounding, no vote changes);
#   - GPT-2 with a tied ternary embedding (unfused beside fused block linears) and biases: the losses, and
#     the integer state but for at most 4 bytes (measured 1; why: at the test below);
#   - every multi-rank checkpoint checks that each rank holds rank 0's weights and integer state (trainer.c
#     check_same_weights): the runs above write 3 of them;
#   - resume from 2 ranks onto 1 and from 1 onto 2 continues the run (state byte for byte);
#   - ZeRO-1, 2 and 3 (the float tensors sharded, the integer state replicated) give the same run, also with a
#     float embedding and head (AdamW, sharded) and fused by row chunks; ZeRO-3 on 2 ranks resumes on 1;
#   - dist.tp > 1 is refused with one line naming the key.
set -u
. "$(dirname "$0")/lib_cli.sh"

TRAIN=examples/sentences-train.txt
if [ ! -f "$TRAIN" ]; then
    echo "skip: $TRAIN not found (run from the repository root)" >&2
    echo "0 passed, 0 failed"
    exit 0
fi
. "$(dirname "$0")/lib_dist.sh"

# 256 tokens per step: 1 rank x 2 micro-batches of 4 x 32, or 2 ranks x 1
cat >"$tmp/t.yaml" <<YAML
model:
  preset: llama-tiny
  vocab_size: 257
  max_seq_len: 64
  tie_embeddings: false
data:
  train: $TRAIN
  tokenizer: byte
train:
  optimizer: ternary
  batch_size: 4
  seq_len: 32
  tokens_per_step: 256
  steps: 6
  lr: 3e-3
  warmup_steps: 2
  ternary:
    scale_every: 2
    embeddings: true
eval:
  every: 0
  steps: 0
checkpoint:
  every: 3
  keep: 0
log:
  tensorboard: false
dist:
  timeout_s: 30
out_dir: $tmp/one
YAML
FUSED="--set train.ternary.fused=true --set train.ternary.chunk_rows=-1"
CHUNKED="--set train.ternary.fused=true --set train.ternary.chunk_rows=30"

run1() {
    local out=$1
    shift
    "$ANVIL" train "$tmp/t.yaml" --set out_dir="$tmp/$out" "$@" >"$tmp/$out.log" 2>&1 ||
        bad "train $out: $(tail -n 3 "$tmp/$out.log")"
}
launch2() {
    local out=$1
    shift
    "$ANVIL" launch --nproc 2 --device cpu -- train "$tmp/t.yaml" --set out_dir="$tmp/$out" "$@" >"$tmp/$out.log" 2>&1 ||
        bad "launch $out: $(tail -n 3 "$tmp/$out.log")"
}
loss6() { sed 's/.*"loss": \([0-9.]*\).*/\1/' "$1/metrics.jsonl" | tr '\n' ' '; }
# same6 A B: two lists of 6 losses within 1e-6 relative (measured: the same 6 printed decimals; the slack
# is for a rounding of the norm weights tipping the 6th decimal on another BLAS kernel)
same6() {
    awk -v a="$1" -v b="$2" 'BEGIN { n = split(a, x, " "); m = split(b, y, " "); if (n != 6 || m != 6) exit 1
        for (i = 1; i <= n; i++) { d = x[i] - y[i]; if (d < 0) d = -d; if (d > 1e-6 * x[i]) exit 1 }
        exit 0 }'
}
# same_run NAME DIR: DIR's losses (6 decimals), integer state and norms against the 1-rank run's
same_run() {
    local a b
    a=$(loss6 "$tmp/one")
    b=$(loss6 "$2")
    check "$1: the same losses ($b)" same6 "$a" "$b"
    check "$1: 6 steps" test "$(wc -l <"$2/metrics.jsonl")" -eq 6
    check "$1: the same trits, exponents and accumulators" cmp -s "$tmp/one/final/ternary.safetensors" \
        "$2/final/ternary.safetensors"
    same_weights "$1" "$tmp/one" "$2"
}

run1 one
check "1 rank: every vocabulary tensor and linear integer-ternary" grep -q "0.00M trainable, 0.13M integer-ternary" \
    "$tmp/one.log"
launch2 two
check "launch: 2 ranks over tcp" grep -q "^dist: 2 rank(s) (torchrun, comm tcp), dist.zero 0" "$tmp/two.log"
same_run "2 ranks, unfused" "$tmp/two"
launch2 twof $FUSED
same_run "2 ranks, fused" "$tmp/twof"
launch2 twoc $CHUNKED
same_run "2 ranks, fused by row chunks" "$tmp/twoc"
run1 onef8 $FUSED --set train.batch_size=8
check "1 rank fused, 8 rows: the 2-rank state" cmp -s "$tmp/twof/final/ternary.safetensors" \
    "$tmp/onef8/final/ternary.safetensors"

# ---- GPT-2 (tied ternary embedding: it keeps the unfused path beside the fused block linears; biases):
# the losses to the 6 printed decimals, the integer state but for a few accumulator bytes (measured: 1 of
# 39,879, tacc of h.0.fc.w). Its attention biases, whose gradients are zero up to rounding, move by
# lr-sized amounts under AdamW (docs/distributed.md), so the forward of later steps differs in its last
# bits and a weight near its dead zone votes differently ----
G="--set model.preset=gpt2-tiny --set model.d_model=32 --set model.n_head=2 --set model.max_seq_len=32"
G="$G --set model.tie_embeddings=true"
run1 g1 $G
launch2 g2 $G $FUSED
check "gpt2: the same losses" same6 "$(loss6 "$tmp/g1")" "$(loss6 "$tmp/g2")"
check "gpt2: at most 4 bytes of the integer state differ" python3 - "$tmp/g1/final/ternary.safetensors" \
    "$tmp/g2/final/ternary.safetensors" <<'PY'
import sys
sys.path.insert(0, "tests")
from st_raw import tensors
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
assert sorted(a) == sorted(b) and any(k.endswith(".wte") for k in a)
diff = sum(x != y for k in a for x, y in zip(a[k], b[k]))
total = sum(len(v) for v in a.values())
print("gpt2: %d of %d integer-state bytes differ" % (diff, total), file=sys.stderr)
sys.exit(0 if diff <= 4 else 1)
PY

if command -v mpirun >/dev/null 2>&1; then
    for v in plain chunked; do
        x=""
        [ $v = chunked ] && x=$CHUNKED
        # shellcheck disable=SC2086
        if mpirun_ -np 2 --oversubscribe "$ANVIL" train "$tmp/t.yaml" --set out_dir="$tmp/mpi-$v" $x \
            >"$tmp/mpi-$v.log" 2>&1; then ok; else
            bad "mpirun $v: $(tail -n 3 "$tmp/mpi-$v.log")"
        fi
        check "mpirun $v: the MPI comm" grep -q "^dist: 2 rank(s) (mpirun, comm mpi)" "$tmp/mpi-$v.log"
        same_run "mpirun $v" "$tmp/mpi-$v"
    done
else
    echo "note: mpirun not found; the MPI half is skipped" >&2
fi

# ---- resume: 2 ranks (fused by chunks) -> 1 rank (unfused, 2-fold accumulation); 1 rank -> 2 ranks (fused) ----
cp -r "$tmp/twoc" "$tmp/r21"
rm -rf "$tmp/r21/step-0000006" "$tmp/r21/final"
run1 r21 --resume "$tmp/r21"
check "resume 2 -> 1: from step 3" grep -q "step-0000003 (step 3)" "$tmp/r21.log"
same_run "resume 2 -> 1" "$tmp/r21"
cp -r "$tmp/one" "$tmp/r12"
rm -rf "$tmp/r12/step-0000006" "$tmp/r12/final"
launch2 r12 $CHUNKED --resume "$tmp/r12"
check "resume 1 -> 2: from step 3" grep -q "step-0000003 (step 3)" "$tmp/r12.log"
same_run "resume 1 -> 2" "$tmp/r12"

# ---- ZeRO: the float tensors (here the norms, and with train.ternary.embeddings false the embedding
# and head under AdamW) sharded as in any run, the integer state replicated: the same run ----
for z in 1 2 3; do
    launch2 z$z --set dist.zero=$z
    same_run "ZeRO-$z" "$tmp/z$z"
done
check "ZeRO: the optimizer shards and one integer-state file" test -f "$tmp/z3/final/optimizer-manifest.json" \
    -a -f "$tmp/z3/final/ternary.safetensors"
EMB="--set train.ternary.embeddings=false"
run1 emb $EMB
launch2 embz3 $EMB --set dist.zero=3
check "float embedding and head, ZeRO-3: the same losses" same6 "$(loss6 "$tmp/emb")" "$(loss6 "$tmp/embz3")"
check "float embedding and head, ZeRO-3: the same integer state" cmp -s "$tmp/emb/final/ternary.safetensors" \
    "$tmp/embz3/final/ternary.safetensors"
same_weights "float embedding and head, ZeRO-3" "$tmp/emb" "$tmp/embz3"
launch2 zc2 $CHUNKED --set dist.zero=2
check "fused by row chunks, ZeRO-2: the state of ZeRO-0" cmp -s "$tmp/twoc/final/ternary.safetensors" \
    "$tmp/zc2/final/ternary.safetensors"
cp -r "$tmp/embz3" "$tmp/rz"
rm -rf "$tmp/rz/step-0000006" "$tmp/rz/final"
run1 rz $EMB --resume "$tmp/rz"
check "resume ZeRO-3 on 2 ranks -> 1 rank: the same losses" same6 "$(loss6 "$tmp/emb")" "$(loss6 "$tmp/rz")"
check "resume ZeRO-3 on 2 ranks -> 1 rank: the same integer state" cmp -s "$tmp/emb/final/ternary.safetensors" \
    "$tmp/rz/final/ternary.safetensors"

# ---- refusals: one line naming the key (under the launcher, every rank's line is that line) ----
expect_fail tp2 "dist.tp 2|train.optimizer: ternary|use dist.tp 1" train "$tmp/t.yaml" --set dist.tp=2 \
    --set out_dir="$tmp/e2"
for key in dist.tp=2; do
    "$ANVIL" launch --nproc 2 --device cpu -- train "$tmp/t.yaml" --set $key --set out_dir="$tmp/e3" >"$tmp/e3.out" 2>"$tmp/e3.err"
    rc=$?
    ranks=$(grep -v '^anvil: launch: ' "$tmp/e3.err" | sort -u)
    check "launch $key: refused (exit $rc)" test $rc -ne 0
    check "launch $key: every rank prints the one line naming ${key%=*} ($ranks)" \
        test "$(printf '%s\n' "$ranks" | sed 's/^anvil: rank [0-9]*: /anvil: /' | sort -u | grep -c "${key%=*}")" -eq 1 \
        -a "$(printf '%s\n' "$ranks" | sed 's/^anvil: rank [0-9]*: /anvil: /' | sort -u | wc -l)" -eq 1
done
cli_summary
