#!/usr/bin/env bash
# gpu-dist.sh - the distributed path on a GPU machine: NCCL, the comm stream, ZeRO (docs/distributed.md).
#
#   bash tools/gpu-dist.sh            (on the GPU machine, from the repository root or a staged payload)
#
# 1. equal: a small GPT-2 in fp32 (device cuda-fp32, train.deterministic) trained by `anvil train`
#    (1 process, 8-fold accumulation) and by `anvil launch --nproc 1 --device cuda-fp32` (the NCCL
#    path on one GPU, 8-fold accumulation, ZeRO 0 and 3: ZeRO-3's per-layer hooks, gathers into
#    the layer buffers and reduce-scatters into staging run over NCCL even with one rank); then for
#    N = 2, 4, 8 GPUs (as many as there are) with dist.zero 0, 1, 2 and 3 (8/N-fold accumulation):
#    losses within 1e-4 relative and final weights within WTOL (1e-3) absolute of the single process
#    (`anvil inspect --diff --tol`);
# 2. bf16: the same model in bf16 (device cuda) on every GPU count, ZeRO 0, 2 and 3: runs, and the
#    final losses agree to 2e-2; the memory-per-rank line of each (bytes per trainable parameter:
#    18, 6 + 12/N, 2 + 16/N, 18/N, docs/distributed.md);
# 3. speed: GPT-2 124M (B=16, T=1024) for 30 steps on 1 and on all GPUs, ZeRO 0/1/2/3: global and
#    per-GPU tokens/s, exposed communication (comm_s) and per-rank peak memory from metrics.jsonl;
# 4. fault: on 2+ GPUs, rank 1 killed mid-run: the launcher exits non-zero at once naming it;
# 5. tensor parallel (2+ GPUs): a small llama (GQA), the same with QLoRA and an MoE model, in fp32 for 20
#    steps at tp 2 and 4 against tp 1 (losses within 1e-4 relative); llama-1b (B=8, T=2048) and
#    bert-base (MLM, B=64, T=512) at tp 1/2/4: tokens/s, last loss, per-rank peak and memory line.
# NCCL_DEBUG=INFO output of the first 1-GPU launch goes to $OUT/nccl-1.log (transport, version).
# Logs: $OUT (default gpu-dist-out/); the summary table is printed last.
set -u
cd "$(dirname "$0")/.."
[ -f payload.tgz ] && [ ! -e anvil ] && tar xzf payload.tgz # binaries + libraries (tools/gpu-stage.sh)
OUT=${OUT:-gpu-dist-out}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"
: >"$SUMMARY"
ANVIL=${ANVIL:-./anvil}
. tools/gpu-env.sh
# weights: absolute tolerance; the attention key bias has a zero gradient up to rounding, which Adam
# turns into lr-sized noise, so it is the tensor that differs most (docs/distributed.md)
WTOL=${WTOL:-1e-3}
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
note() { echo "$*" | tee -a "$SUMMARY"; }
note "| gpus | $NGPU x $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1) |"
ldd "$ANVIL" | grep -E "nccl|mpi|not found" >"$OUT/ldd.log"

cfg="$OUT/small.yaml"
cat >"$cfg" <<YAML
model:
  preset: gpt2-tiny
  d_model: 256
  n_layer: 4
  n_head: 4
  max_seq_len: 128
data:
  train: examples/sentences-train.txt
  tokenizer: gpt2
train:
  steps: 20
  batch_size: 4
  seq_len: 128
  tokens_per_step: 4096
  warmup_steps: 5
  lr: 1e-3
  deterministic: true
eval:
  steps: 0
checkpoint:
  every: 0
  keep: 1
log:
  tensorboard: false
dist:
  timeout_s: 120
YAML
losses() { sed 's/.*"loss": \([0-9.]*\).*/\1/' "$1/metrics.jsonl" | tr '\n' ' '; }
close() { # close A B RTOL: the loss lists agree
    awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { n = split(a, x, " "); m = split(b, y, " "); if (n != m || n == 0) exit 1
        for (i = 1; i <= n; i++) { d = x[i] - y[i]; if (d < 0) d = -d; if (d > t * x[i]) exit 1 }; exit 0 }'
}
verdict() { if [ "$1" -eq 0 ]; then echo ok; else echo FAIL; fi; }

echo "== 1. fp32 equality"
"$ANVIL" train "$cfg" --set device=cuda-fp32 --set out_dir="$OUT/ref" >"$OUT/ref.log" 2>&1
note "| single process, cuda-fp32, 8 x accumulation | rc $? | $(tail -1 "$OUT/ref.log" | cut -c1-80) |"
REF=$(losses "$OUT/ref")
for n in 1 2 4 8; do
    [ "$n" -le "$NGPU" ] || continue
    for z in 0 1 2 3; do
        [ "$n" -eq 1 ] && [ "$z" -gt 0 ] && [ "$z" -lt 3 ] && continue
        run="$OUT/fp32-n$n-z$z"
        extra=()
        [ "$n" -eq 1 ] && extra=(env NCCL_DEBUG=INFO)
        "${extra[@]}" "$ANVIL" launch --nproc "$n" --device cuda-fp32 -- train "$cfg" --set out_dir="$run" \
            --set dist.zero=$z >"$run.log" 2>&1
        rc=$?
        [ "$n" -eq 1 ] && grep NCCL "$run.log" >"$OUT/nccl-1.log"
        close "$REF" "$(losses "$run")" 1e-4
        lrc=$?
        diff=$("$ANVIL" inspect --diff "$OUT/ref/final" "$run/final" --tol "$WTOL" 2>&1)
        wrc=$?
        note "| fp32 $n GPU(s) zero $z vs single | rc $rc | losses $(verdict $lrc) | weights $(verdict $wrc): $(echo "$diff" | head -1) |"
    done
done

echo "== 2. bf16"
for n in 1 2 4 8; do
    [ "$n" -le "$NGPU" ] || continue
    for z in 0 2 3; do
        run="$OUT/bf16-n$n-z$z"
        "$ANVIL" launch --nproc "$n" --device cuda -- train "$cfg" --set out_dir="$run" --set dist.zero=$z \
            --set train.deterministic=false >"$run.log" 2>&1
        rc=$?
        last=$(losses "$run" | awk '{print $NF}')
        [ "$n" -eq 1 ] && [ "$z" -eq 0 ] && B1=$last
        close "$B1" "$last" 2e-2
        note "| bf16 $n GPU(s) zero $z | rc $rc | final loss $last (1 GPU: $B1) $(verdict $?) | $(grep '^memory per rank' "$run.log" | cut -d: -f2) |"
    done
done

echo "== 3. speed (GPT-2 124M, B=16 T=1024)"
big="$OUT/big.yaml"
sed -e 's/preset: gpt2-tiny/preset: gpt2-124m/' -e '/d_model:/d' -e '/n_layer:/d' -e '/n_head:/d' \
    -e 's/max_seq_len: 128/max_seq_len: 1024/' -e 's/batch_size: 4/batch_size: 16/' -e 's/seq_len: 128/seq_len: 1024/' \
    -e 's/steps: 20/steps: 30/' -e 's/tokens_per_step: 4096/tokens_per_step: 0/' -e 's/deterministic: true/deterministic: false/' \
    "$cfg" >"$big"
for n in $(printf "1\n%s\n" "$NGPU" | sort -un); do
    for z in 0 1 2 3; do
        [ "$n" -eq 1 ] && [ "$z" -gt 0 ] && [ "$z" -lt 3 ] && continue
        run="$OUT/speed-n$n-z$z"
        "$ANVIL" launch --nproc "$n" --device cuda -- train "$big" --set out_dir="$run" --set dist.zero=$z >"$run.log" 2>&1
        rc=$?
        row=$(tail -n 10 "$run/metrics.jsonl" | python3 -c '
import json, sys
r = [json.loads(l) for l in sys.stdin]
tps = sum(x["tokens_per_s"] for x in r) / len(r)
pr = sum(x.get("tokens_per_s_per_rank", x["tokens_per_s"]) for x in r) / len(r)
comm = sum(x.get("comm_s", 0) for x in r) / len(r) * 1e3
ms = sum(x["ms_per_step"] for x in r) / len(r)
peak = r[-1].get("peak_mem_gib_ranks", r[-1]["peak_mem_gib"])
print(f"{tps:,.0f} tok/s global | {pr:,.0f} per GPU | {ms:.1f} ms/step | comm {comm:.1f} ms | peak {peak} GiB")' 2>&1)
        note "| speed $n GPU(s) zero $z | rc $rc | $row | $(grep '^memory per rank' "$run.log" | cut -d: -f2) |"
    done
done

if [ "$NGPU" -ge 2 ]; then
    echo "== 4. fault"
    "$ANVIL" launch --nproc 2 --device cuda -- train "$cfg" --set out_dir="$OUT/fault" --set train.steps=100000 \
        --set dist.timeout_s=30 >"$OUT/fault.out" 2>"$OUT/fault.err" &
    L=$!
    for i in $(seq 600); do grep -qE "^step +5/" "$OUT/fault.out" && break; sleep 0.1; done
    for k in $(pgrep -P $L); do tr '\0' '\n' <"/proc/$k/environ" | grep -qx RANK=1 && kill -KILL "$k"; done
    t0=$SECONDS
    wait $L
    rc=$?
    note "| rank 1 killed | rc $rc after $((SECONDS - t0)) s | $(grep -c 'rank 1' "$OUT/fault.err") line(s) naming rank 1 |"
fi
if [ "$NGPU" -ge 2 ]; then
    echo "== 5. tensor parallel (issue 14, item 3)"
    # equality: a small llama (GQA) in fp32, 20 steps, tp 2 (and 4) against the single process; then the
    # same with QLoRA (4-bit base sliced) and with an MoE model (experts split)
    lcfg="$OUT/tp-small.yaml"
    sed -e 's/preset: gpt2-tiny/preset: llama-tiny/' -e 's/n_head: 4/n_head: 8\n  n_kv_head: 4/' "$cfg" >"$lcfg"
    for what in dense qlora moe; do
        a=""
        [ $what = qlora ] && a="--set lora.r=8 --set model.quant=nf4"
        [ $what = moe ] && a="--set model.preset=moe-tiny --set model.moe.aux_loss_coef=0 --set model.moe.z_loss_coef=0"
        # shellcheck disable=SC2086
        "$ANVIL" train "$lcfg" --set device=cuda-fp32 $a --set out_dir="$OUT/tp-$what-1" >"$OUT/tp-$what-1.log" 2>&1
        for p in 2 4; do
            [ "$p" -le "$NGPU" ] || continue
            run="$OUT/tp-$what-$p"
            # shellcheck disable=SC2086
            "$ANVIL" launch --nproc "$p" --device cuda-fp32 -- train "$lcfg" $a --set dist.tp=$p --set out_dir="$run" \
                >"$run.log" 2>&1
            rc=$?
            close "$(losses "$OUT/tp-$what-1")" "$(losses "$run")" 1e-4
            note "| tp $p $what (cuda-fp32, 20 steps) vs tp 1 | rc $rc | losses $(verdict $?) | $(tail -1 "$run.log" | cut -c1-60) |"
        done
    done
    # speed and memory: llama-1b B=8 T=2048 and bert-base B=64 T=512 (MLM) at tp 1, 2, 4
    for m in llama-1b bert-base; do
        for p in 1 2 4; do
            [ "$p" -le "$NGPU" ] || continue
            run="$OUT/tp-speed-$m-$p"
            if [ $m = llama-1b ]; then
                a="--set model.preset=llama-1b --set model.max_seq_len=2048 --set train.batch_size=8 --set train.seq_len=2048"
            else
                a="--set model.preset=bert-base --set data.objective=mlm --set data.tokenizer=tests/fixtures/tokenizers/wp_uncased/tokenizer.json"
                a="$a --set train.batch_size=64 --set train.seq_len=512"
            fi
            # shellcheck disable=SC2086
            "$ANVIL" launch --nproc "$p" --device cuda -- train "$big" $a --set train.tokens_per_step=0 \
                --set train.steps=20 --set dist.tp=$p --set out_dir="$run" >"$run.log" 2>&1
            rc=$?
            row=$(tail -n 10 "$run/metrics.jsonl" 2>/dev/null | python3 -c '
import json, sys
r = [json.loads(l) for l in sys.stdin]
tps = sum(x["tokens_per_s"] for x in r) / len(r)
peak = r[-1].get("peak_mem_gib_ranks", r[-1]["peak_mem_gib"])
print("%s tok/s | loss %.4f | peak %s GiB" % (format(round(tps), ","), r[-1]["loss"], peak))' 2>&1)
            note "| tp $p speed $m | rc $rc | $row | $(grep '^memory per rank' "$run.log" | cut -d: -f2 | cut -c1-90) |"
        done
    done
fi
echo
cat "$SUMMARY"
