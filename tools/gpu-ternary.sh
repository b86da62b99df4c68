#!/usr/bin/env bash
# gpu-ternary.sh - the GPU side of issue 15 (docs/ternary.md), on a machine staged by tools/gpu-stage.sh:
#   cd .stage && bash tools/gpu-ternary.sh [OUT]          PARTS="test seed big 124m" by default
#   test   build/tests/test_cuda's ternary cases (quantizers, trit unpack, the integer update bit-exact,
#          BitNet and integer-ternary model parity against the CPU) and the chunked cross-entropy ops
#   seed   tools/ternary_compare.sh on the GPU at the seed's setting (B=4, T=33, 200 steps), bf16
#   big    the bitnet-2b shape (2.74B parameters) and the bitnet-3b shape (3.43B) with train.optimizer:
#          ternary (embeddings too, the update fused into the backward, the vocabulary tensors by row
#          chunks) at B=1, T=512: state and peak, recompute 0 and 1 (and bitnet-2b with whole vocabulary
#          tensors, train.ternary.chunk_rows -1, the earlier layout)
#   prof   the bitnet-3b step (B=1, T=512, recompute 1) with ANVIL_CUDA_PROFILE=1, integer ternary and
#          AdamW (fp32 master, plain products): the per-op tables (the time behind the step-time target)
#   stepab the bitnet-3b integer step (B=1, T=512, recompute 1) with old/anvil (OLD_ANVIL=... when staging)
#          and ./anvil interleaved twice, then AdamW with ./anvil: the step times before and after a change
#   chunk  a small untied model on the GPU trained with the vocabulary tensors whole and by 30-row chunks:
#          the same losses
#   124m   tools/ternary_compare.sh at the GPT-2 124M shape (12 x 768, B=16, T=1024, 200 steps), bf16
#   curve  AdamW (fp32) against BitNet QAT at the GPT-2 124M shape for CURVE_STEPS (600) steps, B=16, T=1024:
#          the loss curves at equal tokens (means over 50 steps) and BitNet's gap
#   decode a bitnet-3b integer-ternary checkpoint (one step) decoded by `anvil generate` with its ternary
#          tensors packed (the products read the trits: Backend.ternary_matmul_fwd) and read as bf16
#          floats, batch 1 and 8: tokens/s, peak, whether the greedy ids agree
#   kernels tests/bench_ternary.c: the packed product against unpack + cuBLASLt and the cuBLASLt bf16
#          product, bitnet-3b and llama2-7b block shapes, N = 1 .. 4096 rows
# Text: tests/data/sentences.txt (copy ../shared/data/text/sentences.txt there before staging).
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-ternary-out}}
mkdir -p "$out" runs
[ -f payload.tgz ] && [ ! -x anvil ] && tar xzf payload.tgz
. tools/gpu-env.sh
data=tests/data/sentences.txt
parts=" ${PARTS:-test seed big 124m} "
has() { case "$parts" in *" $1 "*) return 0 ;; esac; return 1; }
nvidia-smi -L | tee "$out/env.txt"
if has test; then
    ANVIL_TEST_ONLY=ternary build/tests/test_cuda 2>&1 | tee "$out/test_cuda_ternary.txt" | tail -n 12
    ANVIL_TEST_ONLY=bitnet build/tests/test_cuda 2>&1 | tee -a "$out/test_cuda_ternary.txt" | tail -n 4
    ANVIL_TEST_ONLY=xent_chunks build/tests/test_cuda 2>&1 | tee -a "$out/test_cuda_ternary.txt" | tail -n 4
fi
has seed && bash tools/ternary_compare.sh --device cuda --data "$data" --out runs/tc-seed 2>&1 | tee "$out/compare_seed.md"
big_yaml() { # preset -> the run's config
    cat <<YAML
model:
  preset: $1
  ternary: none
data:
  train: $data
  tokenizer: byte
train:
  optimizer: ternary
  ternary:
    embeddings: true
    fused: true
  batch_size: 1
  seq_len: 512
  steps: 4
  warmup_steps: 1
  log_every: 1
eval:
  every: 0
  steps: 0
checkpoint:
  every: 0
device: cuda
out_dir: runs/big
YAML
}
if has big; then
    for preset in bitnet-2b bitnet-3b; do
        big_yaml $preset >runs/$preset.yaml
        for r in 0 1; do
            echo "== $preset integer ternary, B 1 T 512, recompute $r"
            ./anvil train runs/$preset.yaml --overwrite --set train.recompute=$r 2>&1 |
                tee "$out/${preset}_ternary_r$r.txt" | grep -E "^(model|memory|step [34])"
        done
    done
    echo "== bitnet-2b, vocabulary tensors whole (train.ternary.chunk_rows -1), recompute 0"
    ./anvil train runs/bitnet-2b.yaml --overwrite --set train.ternary.chunk_rows=-1 2>&1 |
        tee "$out/bitnet-2b_ternary_whole.txt" | grep -E "^(memory|step [34])"
fi
if has prof; then
    big_yaml bitnet-3b >runs/prof.yaml
    echo "== bitnet-3b integer ternary, B 1 T 512, recompute 1, per-op profile"
    ANVIL_CUDA_PROFILE=1 ./anvil train runs/prof.yaml --overwrite --set train.recompute=1 --set train.steps=6 \
        --set out_dir=runs/prof-int >"$out/prof_integer.txt" 2>&1
    grep -E "^(memory|step [56])" "$out/prof_integer.txt"
    echo "== bitnet-3b AdamW (fp32 master, plain products), B 1 T 512, recompute 1, per-op profile"
    ANVIL_CUDA_PROFILE=1 ./anvil train runs/prof.yaml --overwrite --set train.recompute=1 --set train.steps=6 \
        --set train.optimizer=adamw --set train.ternary.embeddings=false --set train.ternary.fused=false \
        --set out_dir=runs/prof-adamw >"$out/prof_adamw.txt" 2>&1
    grep -E "^(memory|step [56])" "$out/prof_adamw.txt"
fi
if has decode; then
    # the product read from packed trits where it pays (decoding: a few rows of x), against the same
    # checkpoint read as bf16 floats (its directory without ternary.safetensors, linked)
    big_yaml bitnet-3b >runs/decode.yaml
    echo "== bitnet-3b integer ternary, one step, checkpoint (bf16 model.safetensors)"
    ./anvil train runs/decode.yaml --overwrite --set train.steps=1 --set train.ternary.embeddings=false \
        --set checkpoint.dtype=bf16 --set out_dir=runs/dec >"$out/decode_train.txt" 2>&1 ||
        echo "train failed: $(tail -n 3 "$out/decode_train.txt")"
    rm -rf runs/dec-float
    mkdir -p runs/dec-float
    for f in runs/dec/final/*; do
        [ "$(basename "$f")" = ternary.safetensors ] || ln -s "$(readlink -f "$f")" runs/dec-float/
    done
    for b in 1 8; do
        for m in runs/dec/final runs/dec-float; do
            echo "-- $m, batch $b"
            ./anvil generate --model $m --device cuda --prompt-ids 1,2,3,4,5,6,7,8 --max-tokens 128 --temperature 0 \
                --ignore-eos --samples $b --print-ids --stats 2>&1 >"$out/decode_ids_$(basename $m)_$b.txt" |
                grep -E "kept packed|^generate:"
        done
        cmp -s "$out/decode_ids_final_$b.txt" "$out/decode_ids_dec-float_$b.txt" && echo "batch $b: the same ids" ||
            echo "batch $b: the ids differ (fp32 sums in another order)"
    done
fi
if has kernels; then
    echo "== the packed product against unpack + cuBLASLt and the cuBLASLt bf16 product (tests/bench_ternary.c)"
    build/tests/bench_ternary 30 2>&1 | tee "$out/bench_ternary.md"
fi
if has stepab; then
    big_yaml bitnet-3b >runs/stepab.yaml
    for round in 1 2; do
        for bin in old/anvil ./anvil; do
            [ -x "$bin" ] || continue
            lab=new
            [ "$bin" = old/anvil ] && lab=old
            echo "== $bin: bitnet-3b integer ternary, B 1 T 512, recompute 1 (round $round)"
            "$bin" train runs/stepab.yaml --overwrite --set train.recompute=1 --set train.steps=8 \
                --set out_dir=runs/stepab >"$out/stepab_${round}_$lab.txt" 2>&1
            grep -E "^(memory after|step [78])" "$out/stepab_${round}_$lab.txt"
        done
    done
    echo "== ./anvil: bitnet-3b AdamW (fp32 master, plain products), B 1 T 512, recompute 1"
    ./anvil train runs/stepab.yaml --overwrite --set train.recompute=1 --set train.steps=8 --set train.optimizer=adamw \
        --set train.ternary.embeddings=false --set train.ternary.fused=false --set out_dir=runs/stepab \
        >"$out/stepab_adamw.txt" 2>&1
    grep -E "^(memory after|step [78])" "$out/stepab_adamw.txt"
fi
if has chunk; then
    cat >runs/chunk.yaml <<YAML
model:
  preset: llama-tiny
  vocab_size: 257
  max_seq_len: 64
  tie_embeddings: false
data:
  train: $data
  tokenizer: byte
train:
  optimizer: ternary
  ternary:
    embeddings: true
    fused: true
  batch_size: 4
  seq_len: 32
  steps: 8
  lr: 3e-3
  warmup_steps: 2
  log_every: 1
eval:
  every: 0
  steps: 0
checkpoint:
  every: 0
device: cuda
YAML
    for cr in -1 30; do
        ./anvil train runs/chunk.yaml --overwrite --set out_dir=runs/chunk$cr --set train.ternary.chunk_rows=$cr \
            >"$out/chunk$cr.txt" 2>&1 || echo "chunk_rows $cr failed: $(tail -n 2 "$out/chunk$cr.txt")"
    done
    losses() { sed -n 's/.*"step": \([0-9]*\), "loss": \([0-9.]*\).*/\1 \2/p' "$1/metrics.jsonl"; }
    paste <(losses runs/chunk-1) <(losses runs/chunk30) | tee "$out/chunk_losses.txt"
    if cmp -s <(losses runs/chunk-1) <(losses runs/chunk30); then echo "chunk: the same losses (cuda)"; else
        echo "chunk: the losses DIFFER (cuda)"; fi
fi
has curve && bash tools/ternary_compare.sh --device cuda --data "$data" --out runs/tc-curve --layers 12 --width 768 \
    --heads 12 --ff 2048 --batch 16 --seq 1024 --lr 1e-3 --steps ${CURVE_STEPS:-600} --methods "adamw bitnet" \
    --curve 50 2>&1 | tee "$out/compare_curve.md"
has 124m && bash tools/ternary_compare.sh --device cuda --data "$data" --out runs/tc-124m --layers 12 --width 768 \
    --heads 12 --ff 2048 --batch 16 --seq 1024 --lr 1e-3 2>&1 | tee "$out/compare_124m.md"
