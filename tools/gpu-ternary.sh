#!/usr/bin/env bash
# gpu-ternary.sh - the GPU side of issue 15 (docs/ternary.md), on a machine staged by tools/gpu-stage.sh:
#   cd .stage && bash tools/gpu-ternary.sh [OUT]
#   1. build/tests/test_cuda's ternary cases (quantizers, trit unpack, the integer update bit-exact,
#      BitNet and integer-ternary model parity against the CPU)
#   2. tools/ternary_compare.sh on the GPU at the seed's setting (B=4, T=33, 200 steps), bf16
#   3. the bitnet-2b shape (2.4B parameters) with train.optimizer: ternary (embeddings too, the update fused
#      into the backward) at B=1, T=512: state and peak
#   4. tools/ternary_compare.sh at the GPT-2 124M shape (12 x 768, B=16, T=1024, 200 steps), bf16
# Text: tests/data/sentences.txt (copy ../shared/data/text/sentences.txt there before staging).
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-ternary-out}}
mkdir -p "$out"
[ -f payload.tgz ] && [ ! -x anvil ] && tar xzf payload.tgz
. tools/gpu-env.sh
data=tests/data/sentences.txt
nvidia-smi -L | tee "$out/env.txt"
ANVIL_TEST_ONLY=ternary build/tests/test_cuda 2>&1 | tee "$out/test_cuda_ternary.txt" | tail -n 12
ANVIL_TEST_ONLY=bitnet build/tests/test_cuda 2>&1 | tee -a "$out/test_cuda_ternary.txt" | tail -n 4
bash tools/ternary_compare.sh --device cuda --data "$data" --out runs/tc-seed 2>&1 | tee "$out/compare_seed.md"
cat >runs/b2.yaml <<YAML
model:
  preset: bitnet-2b
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
out_dir: runs/b2
YAML
./anvil train runs/b2.yaml --overwrite 2>&1 | tee "$out/bitnet2b_ternary.txt" | tail -n 8
bash tools/ternary_compare.sh --device cuda --data "$data" --out runs/tc-124m --layers 12 --width 768 --heads 12 \
    --ff 2048 --batch 16 --seq 1024 --lr 1e-3 2>&1 | tee "$out/compare_124m.md"
