#!/usr/bin/env bash
# cli_tp.sh - tensor parallel (dist.tp) on CPU ranks, end to end (docs/distributed.md "Tensor parallel"):
#   - `anvil launch --nproc 2 --device cpu -- train ... --set dist.tp=2` gives the losses (within
#     1e-5 relative) and final weights (within 1e-4 absolute, below) of one rank, for a GPT-2-style model
#     (tied head, biases) and a LLaMA-style one (GQA 4 heads / 2 kv heads, untied head), both with an
#     odd vocabulary (257: the slices are 129 and 128 rows); the gap is float rounding of sums split
#     over the ranks;
#   - tp 4 (4 heads; vocabulary slices 65, 65, 65, 62) the same;
#   - tp 2 x dp 2 (4 ranks) gives the losses and weights of 1 rank with 2-fold accumulation, also
#     with ZeRO-1, 2 and 3 over the data-parallel group;
#   - the same under `mpirun -np 2` (MPI_Comm_split groups);
#   - the checkpoint is the whole model (config.json of the whole, one optimizer.safetensors):
#     resume tp 2 -> tp 1 and tp 1 -> tp 2 continue the run (same tolerances), also tp 2 x dp 2
#     ZeRO-3 -> 1 rank and 1 rank -> tp 2 x dp 2 ZeRO-2, and a tp 2 run loads
#     a tp 1 checkpoint through model.init (sliced on load);
#   - model.freeze (frozen slices), model.dropout and the validation loss give those of one rank;
#   - LoRA, and QLoRA (4-bit bases: random, quantized on load, pre-quantized; gpt2 and llama; with
#     tp 2 x dp 2 ZeRO-3; resumed on 1 rank) give the losses and adapters of one rank;
#   - mixture of experts (Mixtral-style; Qwen2-MoE-style with a shared expert and dense layers; 4-bit
#     experts under QLoRA; tp 2 x dp 2 ZeRO-2; resumed on 1 rank; adapters on the experts (either layout), the shared
#     expert and its gate) gives the losses, weights (adapters) and routing of one rank;
#   - encoders (bert-tiny and roberta-tiny MLM, and LoRA on bert-tiny) give the losses, validation
#     losses and weights of one rank;
#   - BitNet b1.58 QAT (bitnet-tiny: sub-norms, relu2-GLU, every block linear a BitLinear): tp 4 gives
#     the losses and weights of 1 rank within the tolerances above; tp 2, tp 2 x dp 2 (also ZeRO-2),
#     resume tp 2 -> 1 and model.freeze within looser ones (the
#     quantizers' steps, below); recompute 1 and 2 give recompute 0's weights bit for bit; the
#     checkpoint is the whole BitNetForCausalLM; integer ternary under tp is refused;
#   - `anvil plan --tp` predicts rank 0's bytes of a tp run exactly (full, LoRA, QLoRA, BitNet QAT; tp 1, 2 and 4);
#   - a tp rank killed mid-run makes the job exit non-zero at once, naming it;
#   - what tp does not support is refused with one line naming the key.
set -u
. "$(dirname "$0")/lib_cli.sh"

TRAIN=examples/sentences-train.txt
if [ ! -f "$TRAIN" ]; then
    echo "skip: $TRAIN not found (run from the repository root)" >&2
    echo "0 passed, 0 failed"
    exit 0
fi
. "$(dirname "$0")/lib_dist.sh"
# The weights of a split run: 1e-4 absolute (lr 3e-3 here; a missing or doubled reduction moves
# weights by about lr a step). Measured after 6 steps: the LLaMA GQA model 1.5e-5 on one machine,
# 2.1e-5 (2.3e-5 with model.freeze) on an AMD EPYC under OpenBLAS's Zen kernel, where lib_dist.sh's
# 2e-5 failed; Adam's normalisation turns rounding in a near-zero gradient into far larger steps.
WEIGHT_TOL=1e-4

# 128 tokens per step (one micro-batch of 4 x 32); 6 steps, a checkpoint every 3
write_config() { # FILE PRESET D_MODEL N_HEAD N_KV_HEAD OUT
    cat >"$1" <<YAML
model:
  preset: $2
  vocab_size: 257
  max_seq_len: 32
  d_model: $3
  n_head: $4
  n_kv_head: $5
data:
  train: $TRAIN
  tokenizer: byte
train:
  steps: 6
  batch_size: 4
  seq_len: 32
  tokens_per_step: 128
  warmup_steps: 2
  lr: 3e-3
eval:
  steps: 0
checkpoint:
  every: 3
  keep: 0
log:
  tensorboard: false
dist:
  timeout_s: 30
out_dir: $6
YAML
}
write_config "$tmp/g.yaml" gpt2-tiny 32 2 2 "$tmp/g1"
write_config "$tmp/l.yaml" llama-tiny 64 4 2 "$tmp/l1"

run1() { # CONFIG ARGS...
    local c=$1
    shift
    "$ANVIL" train "$c" "$@" >"$tmp/run.log" 2>&1 || bad "train $*: $(tail -n 3 "$tmp/run.log")"
}
launch() { # NPROC CONFIG ARGS...
    local n=$1 c=$2
    shift 2
    "$ANVIL" launch --nproc "$n" --device cpu -- train "$c" "$@" >"$tmp/run.log" 2>&1 ||
        bad "launch $n $*: $(tail -n 3 "$tmp/run.log")"
}

# ---- tp 2 == 1 rank: GPT-2 (tied head, biases) and LLaMA (GQA, untied head) ----
run1 "$tmp/g.yaml"
launch 2 "$tmp/g.yaml" --set dist.tp=2 --set out_dir="$tmp/g2"
check "header names tp x dp" grep -q "^dist: 2 rank(s) (torchrun, comm tcp), dist.tp 2 x 1 data-parallel" "$tmp/run.log"
check "header: the whole model and this rank's slice" grep -q "2 heads (2 kv); each tp rank 1 heads (1 kv)" "$tmp/run.log"
mem=$(sed -n 's/^memory per rank (rank 0, dist.tp 2, dist.zero 0 over 1 replicas): \([0-9.]*\) bytes per trainable parameter of the whole model.*/\1/p' "$tmp/run.log")
check "memory line: a rank holds about half of 16 bytes per parameter (got ${mem:-none})" \
    awk -v m="${mem:-0}" 'BEGIN { exit !(m > 8 && m < 9) }'
same_losses "gpt2 tp 2 vs 1 rank" "$tmp/g1" "$tmp/g2"
same_weights "gpt2 tp 2 vs 1 rank" "$tmp/g1" "$tmp/g2"
check "the checkpoint is the whole model" grep -q '"vocab_size": 257' "$tmp/g2/final/config.json"
check "one optimizer file" test -f "$tmp/g2/final/optimizer.safetensors"
run1 "$tmp/l.yaml"
launch 2 "$tmp/l.yaml" --set dist.tp=2 --set out_dir="$tmp/l2"
same_losses "llama GQA tp 2 vs 1 rank" "$tmp/l1" "$tmp/l2"
same_weights "llama GQA tp 2 vs 1 rank" "$tmp/l1" "$tmp/l2"

# ---- tp 4: 4 heads, vocabulary slices of 65, 65, 65 and 62 rows ----
run1 "$tmp/g.yaml" --set model.n_head=4 --set model.n_kv_head=4 --set out_dir="$tmp/g1h4"
launch 4 "$tmp/g.yaml" --set model.n_head=4 --set model.n_kv_head=4 --set dist.tp=4 --set out_dir="$tmp/g4"
same_losses "gpt2 tp 4 vs 1 rank" "$tmp/g1h4" "$tmp/g4"
same_weights "gpt2 tp 4 vs 1 rank" "$tmp/g1h4" "$tmp/g4"

# ---- tp 2 x dp 2 (4 ranks) == 1 rank with 2-fold accumulation ----
run1 "$tmp/g.yaml" --set train.tokens_per_step=256 --set out_dir="$tmp/g1acc"
launch 4 "$tmp/g.yaml" --set train.tokens_per_step=256 --set dist.tp=2 --set out_dir="$tmp/g22"
check "tp 2 x dp 2: header" grep -q "^dist: 4 rank(s) (torchrun, comm tcp), dist.tp 2 x 2 data-parallel" "$tmp/run.log"
check "tp 2 x dp 2: metrics of every rank" grep -q '"ranks": 4, .*"peak_mem_gib_ranks": \[[0-9.]*, [0-9.]*, [0-9.]*, [0-9.]*\]' \
    "$tmp/g22/metrics.jsonl"
same_losses "tp 2 x dp 2 vs 1 rank with accumulation" "$tmp/g1acc" "$tmp/g22"
same_weights "tp 2 x dp 2 vs 1 rank with accumulation" "$tmp/g1acc" "$tmp/g22"
# ZeRO over the data-parallel group: the same run
for z in 1 2 3; do
    launch 4 "$tmp/g.yaml" --set train.tokens_per_step=256 --set dist.tp=2 --set dist.zero=$z --set out_dir="$tmp/g22z$z"
    same_losses "tp 2 x dp 2, ZeRO-$z vs 1 rank" "$tmp/g1acc" "$tmp/g22z$z"
    same_weights "tp 2 x dp 2, ZeRO-$z vs 1 rank" "$tmp/g1acc" "$tmp/g22z$z"
done
check "ZeRO with tp: one optimizer file of the whole model" test -f "$tmp/g22z3/final/optimizer.safetensors"

# ---- mpirun ----
if command -v mpirun >/dev/null 2>&1; then
    if mpirun_ -np 2 --oversubscribe "$ANVIL" train "$tmp/l.yaml" --set dist.tp=2 --set out_dir="$tmp/lmpi" \
        >"$tmp/mpi.log" 2>&1; then ok; else
        bad "mpirun tp 2: $(tail -n 3 "$tmp/mpi.log")"
    fi
    check "mpirun: comm mpi" grep -q "^dist: 2 rank(s) (mpirun, comm mpi), dist.tp 2" "$tmp/mpi.log"
    same_losses "mpirun llama tp 2 vs 1 rank" "$tmp/l1" "$tmp/lmpi"
    same_weights "mpirun llama tp 2 vs 1 rank" "$tmp/l1" "$tmp/lmpi"
fi

# ---- resume across tp: 2 -> 1, 1 -> 2 (from the step-3 checkpoint) ----
cp -r "$tmp/g2" "$tmp/r21"
rm -rf "$tmp/r21/step-0000006"
run1 "$tmp/g.yaml" --resume "$tmp/r21" --set dist.tp=1
check "tp 2 -> 1: resumed at step 3" grep -q "resuming from $tmp/r21/step-0000003 (step 3)" "$tmp/run.log"
same_losses "resume tp 2 -> 1" "$tmp/g1" "$tmp/r21"
same_weights "resume tp 2 -> 1" "$tmp/g1" "$tmp/r21"
cp -r "$tmp/l1" "$tmp/r12"
rm -rf "$tmp/r12/step-0000006"
launch 2 "$tmp/l.yaml" --resume "$tmp/r12" --set dist.tp=2
check "tp 1 -> 2: resumed at step 3" grep -q "resuming from $tmp/r12/step-0000003 (step 3)" "$tmp/run.log"
same_losses "resume tp 1 -> 2 (llama)" "$tmp/l1" "$tmp/r12"
same_weights "resume tp 1 -> 2 (llama)" "$tmp/l1" "$tmp/r12"

# tp 2 x dp 2 with ZeRO-3 -> 1 rank, 1 rank -> tp 2 x dp 2 with ZeRO-2
cp -r "$tmp/g22z3" "$tmp/rz31"
rm -rf "$tmp/rz31/step-0000006"
run1 "$tmp/g.yaml" --resume "$tmp/rz31" --set dist.tp=1 --set dist.zero=0 --set train.tokens_per_step=256
same_losses "resume tp 2 x dp 2 ZeRO-3 -> 1 rank" "$tmp/g1acc" "$tmp/rz31"
same_weights "resume tp 2 x dp 2 ZeRO-3 -> 1 rank" "$tmp/g1acc" "$tmp/rz31"
cp -r "$tmp/g1acc" "$tmp/r1z2"
rm -rf "$tmp/r1z2/step-0000006"
launch 4 "$tmp/g.yaml" --resume "$tmp/r1z2" --set dist.tp=2 --set dist.zero=2 --set train.tokens_per_step=256
same_losses "resume 1 rank -> tp 2 x dp 2 ZeRO-2" "$tmp/g1acc" "$tmp/r1z2"
same_weights "resume 1 rank -> tp 2 x dp 2 ZeRO-2" "$tmp/g1acc" "$tmp/r1z2"

# ---- model.init: a whole HF directory sliced on load ----
sed -e '/^  preset:/,/^  n_kv_head:/d' -e "s|^model:|model:\n  init: $tmp/l1/step-0000003|" "$tmp/l.yaml" >"$tmp/i.yaml"
run1 "$tmp/i.yaml" --set train.steps=3 --set out_dir="$tmp/i1"
launch 2 "$tmp/i.yaml" --set train.steps=3 --set dist.tp=2 --set out_dir="$tmp/i2"
check "model.init under tp 2: the losses of tp 1 ($(losses "$tmp/i1") / $(losses "$tmp/i2"))" \
    awk -v a="$(losses "$tmp/i1")" -v b="$(losses "$tmp/i2")" -v t="$LOSS_RTOL" 'BEGIN {
        n = split(a, x, " "); m = split(b, y, " "); if (n != 3 || m != 3) exit 1
        for (i = 1; i <= n; i++) { d = x[i] - y[i]; if (d < 0) d = -d; if (d > t * x[i]) exit 1 }
        exit 0 }'

# ---- model.freeze (frozen slices) and the validation loss under tp 2 ----
run1 "$tmp/l.yaml" --set 'model.freeze=["model.layers.0.*"]' --set out_dir="$tmp/f1"
launch 2 "$tmp/l.yaml" --set 'model.freeze=["model.layers.0.*"]' --set dist.tp=2 --set out_dir="$tmp/f2"
same_losses "model.freeze: tp 2 vs 1 rank" "$tmp/f1" "$tmp/f2"
same_weights "model.freeze: tp 2 vs 1 rank" "$tmp/f1" "$tmp/f2"
# model.dropout (embedding, attention-out and MLP-out: whole tensors, the same masks as one rank's)
run1 "$tmp/g.yaml" --set model.dropout=0.1 --set out_dir="$tmp/d1"
launch 2 "$tmp/g.yaml" --set model.dropout=0.1 --set dist.tp=2 --set out_dir="$tmp/d2"
same_losses "model.dropout: tp 2 vs 1 rank" "$tmp/d1" "$tmp/d2"
same_weights "model.dropout: tp 2 vs 1 rank" "$tmp/d1" "$tmp/d2"
val() { grep -o '"val_loss": [0-9.]*' "$1/metrics.jsonl" | sed 's/.* //' | tr '\n' ' '; }
run1 "$tmp/g.yaml" --set data.val="$TRAIN" --set eval.steps=3 --set eval.every=3 --set out_dir="$tmp/v1"
launch 2 "$tmp/g.yaml" --set data.val="$TRAIN" --set eval.steps=3 --set eval.every=3 --set dist.tp=2 --set out_dir="$tmp/v2"
check "validation loss: tp 2 vs 1 rank ($(val "$tmp/v1") / $(val "$tmp/v2"))" awk -v a="$(val "$tmp/v1")" -v b="$(val "$tmp/v2")" \
    -v t="$LOSS_RTOL" 'BEGIN { n = split(a, x, " "); m = split(b, y, " "); if (n != 2 || m != 2) exit 1
        for (i = 1; i <= n; i++) { d = x[i] - y[i]; if (d < 0) d = -d; if (d > t * x[i]) exit 1 }
        exit 0 }'

# ---- LoRA under tp: each adapter split with its product (on a column-parallel one B by rows and A
# whole, on a row-parallel one A by columns and B whole); the checkpoint's PEFT directory whole ----
same_adapters() { # NAME DIR_A DIR_B: the final adapters within WEIGHT_TOL, tensor by tensor
    if "$ANVIL" inspect --diff "$2/final" "$3/final" --tol "$WEIGHT_TOL" >"$tmp/diff.out" 2>&1; then ok; else
        bad "$1: adapters: $(cat "$tmp/diff.out")"
    fi
}
LORA="--set lora.r=4 --set lora.alpha=8"
# vs1 NAME KIND NPROC CONFIG OUT1 OUT2 ARGS [TP_ARGS]: ARGS on one rank and with dist.tp=2 (plus TP_ARGS) on
# NPROC ranks; the losses, and the weights (KIND weights) or adapters (KIND adapters), alike
vs1() {
    run1 "$4" $7 --set out_dir="$5"
    launch "$3" "$4" $7 --set dist.tp=2 ${8:-} --set out_dir="$6"
    same_losses "$1" "$5" "$6"
    same_$2 "$1" "$5" "$6"
}
run1 "$tmp/l.yaml" $LORA --set out_dir="$tmp/la1" # llama with GQA, all-linear: q k v o gate up down
launch 2 "$tmp/l.yaml" $LORA --set dist.tp=2 --set out_dir="$tmp/la2"
same_losses "LoRA (llama, all-linear): tp 2 vs 1 rank" "$tmp/la1" "$tmp/la2"
same_adapters "LoRA (llama, all-linear): tp 2 vs 1 rank" "$tmp/la1" "$tmp/la2"
check "LoRA under tp: a PEFT directory of the whole model" grep -q '"r": 4' "$tmp/la2/final/adapter_config.json"
# lora.dropout on the column-parallel products' whole inputs draws one rank's masks (on a row-parallel
# product each rank draws its own slice's: equal in distribution only, docs/distributed.md)
DROP='--set lora.dropout=0.1 --set lora.targets=["c_attn","c_fc"]'
run1 "$tmp/g.yaml" $LORA $DROP --set out_dir="$tmp/gd1"
launch 2 "$tmp/g.yaml" $LORA $DROP --set dist.tp=2 --set out_dir="$tmp/gd2"
same_losses "LoRA (gpt2 c_attn, c_fc) with lora.dropout: tp 2 vs 1 rank" "$tmp/gd1" "$tmp/gd2"
same_adapters "LoRA (gpt2 c_attn, c_fc) with lora.dropout: tp 2 vs 1 rank" "$tmp/gd1" "$tmp/gd2"
run1 "$tmp/g.yaml" $LORA --set out_dir="$tmp/ga1"
launch 2 "$tmp/g.yaml" $LORA --set dist.tp=2 --set train.recompute=2 --set out_dir="$tmp/ga2"
same_losses "LoRA (gpt2), tp 2 at recompute 2 vs 1 rank" "$tmp/ga1" "$tmp/ga2"
same_adapters "LoRA (gpt2), tp 2 at recompute 2 vs 1 rank" "$tmp/ga1" "$tmp/ga2"
run1 "$tmp/l.yaml" $LORA --set train.tokens_per_step=256 --set out_dir="$tmp/la1acc"
launch 4 "$tmp/l.yaml" $LORA --set train.tokens_per_step=256 --set dist.tp=2 --set dist.zero=3 --set out_dir="$tmp/la22"
same_losses "LoRA: tp 2 x dp 2 ZeRO-3 vs 1 rank with accumulation" "$tmp/la1acc" "$tmp/la22"
same_adapters "LoRA: tp 2 x dp 2 ZeRO-3 vs 1 rank with accumulation" "$tmp/la1acc" "$tmp/la22"
cp -r "$tmp/la2" "$tmp/lar2"
rm -rf "$tmp/lar2/step-0000006"
launch 2 "$tmp/l.yaml" $LORA --set dist.tp=2 --resume "$tmp/lar2"
check "LoRA under tp 2: resume on tp 2 is exact" cmp "$tmp/la2/final/adapter_model.safetensors" "$tmp/lar2/final/adapter_model.safetensors"
cp -r "$tmp/la2" "$tmp/lar1"
rm -rf "$tmp/lar1/step-0000006"
run1 "$tmp/l.yaml" $LORA --resume "$tmp/lar1"
same_losses "LoRA: resume tp 2 -> 1" "$tmp/la1" "$tmp/lar1"
same_adapters "LoRA: resume tp 2 -> 1" "$tmp/la1" "$tmp/lar1"
run1 "$tmp/l.yaml" --set lora.init="$tmp/la1/step-0000003" --set train.steps=3 --set out_dir="$tmp/li1"
launch 2 "$tmp/l.yaml" --set lora.init="$tmp/la1/step-0000003" --set train.steps=3 --set dist.tp=2 --set out_dir="$tmp/li2"
check "lora.init under tp 2: the losses of tp 1 ($(losses "$tmp/li1") / $(losses "$tmp/li2"))" \
    awk -v a="$(losses "$tmp/li1")" -v b="$(losses "$tmp/li2")" -v t="$LOSS_RTOL" 'BEGIN {
        n = split(a, x, " "); m = split(b, y, " "); if (n != 3 || m != 3) exit 1
        for (i = 1; i <= n; i++) { d = x[i] - y[i]; if (d < 0) d = -d; if (d > t * x[i]) exit 1 }
        exit 0 }'

# ---- QLoRA under tp: each rank holds its rows (column-parallel) or columns (row-parallel) of the
# 4-bit codes of the whole tensor, quantized as one rank quantizes it, with fp32 block scales ----
Q="--set model.quant=nf4"
# a random 4-bit base (GPT-2's init, synthetic states)
vs1 "QLoRA (llama, random 4-bit base): tp 2 vs 1 rank" adapters 2 "$tmp/l.yaml" "$tmp/q1" "$tmp/q2" "$LORA $Q"
# from a bf16/fp32 directory, quantized on load (tp 1 quantizes each whole tensor; tp 2 slices it)
vs1 "QLoRA from model.init (nf4 on load): tp 2 vs 1 rank" adapters 2 "$tmp/i.yaml" "$tmp/qi1" "$tmp/qi2" "$LORA $Q"
# a pre-quantized bitsandbytes directory, its bytes sliced as they are stored (fp4 without double quant)
"$ANVIL" quantize --model "$tmp/l1/step-0000003" --quant fp4 --no-double-quant --out "$tmp/l1fp4" >/dev/null 2>&1 ||
    bad "quantize fp4"
vs1 "QLoRA on a pre-quantized fp4 directory: tp 2 vs 1 rank" adapters 2 "$tmp/i.yaml" "$tmp/qp1" "$tmp/qp2" "$LORA --set model.init=$tmp/l1fp4"
# gpt2: c_attn is one 4-bit tensor, of which a rank holds three row ranges (its q, k and v)
vs1 "QLoRA (gpt2): tp 2 vs 1 rank" adapters 2 "$tmp/g.yaml" "$tmp/qg1" "$tmp/qg2" "$LORA $Q"
# tp 2 x dp 2 with ZeRO-3 (each data-parallel rank keeps a shard of its tp slice's 4-bit bytes)
vs1 "QLoRA: tp 2 x dp 2 ZeRO-3 vs 1 rank with accumulation" adapters 4 "$tmp/i.yaml" "$tmp/qa1" "$tmp/qa22" "$LORA $Q --set train.tokens_per_step=256" "--set dist.zero=3"
cp -r "$tmp/q2" "$tmp/qr1"
rm -rf "$tmp/qr1/step-0000006"
run1 "$tmp/l.yaml" $LORA $Q --resume "$tmp/qr1"
same_losses "QLoRA: resume tp 2 -> 1" "$tmp/q1" "$tmp/qr1"
same_adapters "QLoRA: resume tp 2 -> 1" "$tmp/q1" "$tmp/qr1"
# a slice that would split the two 4-bit values of a byte: refused, naming the tensor
if "$ANVIL" launch --nproc 2 --device cpu -- train "$tmp/l.yaml" $LORA $Q --set model.d_ff=174 --set dist.tp=2 \
    --set out_dir="$tmp/bad4" >/dev/null 2>"$tmp/err"; then
    bad "4-bit slice inside a byte: accepted"
else
    check "4-bit slice inside a byte: named" grep -q "dist.tp 2: the 4-bit h.0.proj.w cannot be split into 87 columns per rank" "$tmp/err"
    check "4-bit slice inside a byte: nothing left behind" test ! -e "$tmp/bad4"
fi

# ---- mixture of experts under tp: each expert's units split as a dense MLP's, the router whole ----
sed 's/preset: llama-tiny/preset: moe-tiny/' "$tmp/l.yaml" >"$tmp/m.yaml" # 4 experts of 96 units, top 2
aux() { grep -o '"aux_loss": [0-9.e-]*' "$1/metrics.jsonl" | sed 's/.* //' | tr '\n' ' '; }
run1 "$tmp/m.yaml" --set out_dir="$tmp/m1"
launch 2 "$tmp/m.yaml" --set dist.tp=2 --set out_dir="$tmp/m2"
same_losses "MoE: tp 2 vs 1 rank" "$tmp/m1" "$tmp/m2"
same_weights "MoE: tp 2 vs 1 rank" "$tmp/m1" "$tmp/m2"
check "MoE: tp 2 routes as 1 rank (the same aux_loss every step)" test "$(aux "$tmp/m1")" = "$(aux "$tmp/m2")"
check "MoE under tp: the checkpoint is the whole model" grep -q '"num_local_experts": 4' "$tmp/m2/final/config.json"
# Qwen2-MoE-style: a shared expert and its gate, dense layers between (every 2), at recompute 2
QW="--set model.moe.shared_experts=1 --set model.qkv_bias=true --set model.moe.every=2 --set train.recompute=2"
vs1 "MoE with a shared expert and dense layers: tp 2 vs 1 rank" weights 2 "$tmp/m.yaml" "$tmp/mq1" "$tmp/mq2" "$QW"
# QLoRA on an MoE base (4-bit experts, sliced), adapters on the attention
MQ='--set lora.r=4 --set lora.targets=["q_proj","v_proj","o_proj"] --set model.quant=nf4'
vs1 "MoE QLoRA (4-bit experts): tp 2 vs 1 rank" adapters 2 "$tmp/m.yaml" "$tmp/mql1" "$tmp/mql2" "$MQ"
# a pre-quantized MoE directory as transformers 5 (and anvil quantize) writes it: attention 4-bit, experts
# plain, which every rank quantizes whole on load and then slices (bnb_model_read's sink)
"$ANVIL" quantize --model "$tmp/m1/final" --quant nf4 --out "$tmp/m1nf4" >/dev/null 2>&1 || bad "quantize the MoE run"
sed -e '/^  preset:/,/^  n_kv_head:/d' -e "s|^model:|model:\n  init: $tmp/m1nf4|" "$tmp/l.yaml" >"$tmp/mi.yaml"
vs1 "MoE QLoRA on a pre-quantized directory (experts quantized on load): tp 2 vs 1 rank" adapters 2 "$tmp/mi.yaml" \
    "$tmp/mqp1" "$tmp/mqp2" '--set lora.r=4 --set lora.targets=["q_proj","experts","gate"]'
# tp 2 x dp 2 with ZeRO-2 against accumulation: with the routing losses off (each forward's aux is of
# its own rows, which differ between ranks and micro-batches: docs/moe.md)
NOAUX="--set model.moe.aux_loss_coef=0 --set model.moe.z_loss_coef=0 --set train.tokens_per_step=256"
vs1 "MoE: tp 2 x dp 2 ZeRO-2 vs 1 rank with accumulation" weights 4 "$tmp/m.yaml" "$tmp/ma1" "$tmp/ma22" "$NOAUX" "--set dist.zero=2"
cp -r "$tmp/m2" "$tmp/mr1"
rm -rf "$tmp/mr1/step-0000006"
run1 "$tmp/m.yaml" --resume "$tmp/mr1"
same_losses "MoE: resume tp 2 -> 1" "$tmp/m1" "$tmp/mr1"
same_weights "MoE: resume tp 2 -> 1" "$tmp/m1" "$tmp/mr1"
# adapters on the routed experts (each expert's A whole and B by rows on w1/w3, A by columns on w2),
# on a shared expert and its gate and on the router (whole on every rank), at recompute 2; and under tp 2 x dp 2 ZeRO-3
EXP='--set lora.r=4 --set lora.targets=["q_proj","experts"]'
vs1 "MoE expert adapters: tp 2 vs 1 rank" adapters 2 "$tmp/m.yaml" "$tmp/me1" "$tmp/me2" "$EXP"
QWA='--set lora.r=4 --set lora.targets=["all-linear","experts","gate"]'
vs1 "Qwen2-MoE-style, adapters on everything: tp 2 vs 1 rank" adapters 2 "$tmp/m.yaml" "$tmp/mqa1" "$tmp/mqa2" "$QW $QWA"
vs1 "MoE expert adapters: tp 2 x dp 2 ZeRO-3 vs 1 rank with accumulation" adapters 4 "$tmp/m.yaml" "$tmp/mea1" "$tmp/mea22" "$EXP $NOAUX" "--set dist.zero=3"
# transformers 4's per-expert modules (w1 and w3: two adapters on each expert's fc, their B's by rows; w2's A
# by columns) and the router as a module
EX4='--set lora.r=4 --set lora.targets=["q_proj","w1","w3","w2","gate"]'
vs1 "MoE t4 expert adapters (w1/w3/w2): tp 2 vs 1 rank" adapters 2 "$tmp/m.yaml" "$tmp/m41" "$tmp/m42" "$EX4"

# ---- encoders (BERT, RoBERTa: MLM) under tp: the decoder (tied to wte) and its bias vocabulary-parallel ----
TOK=tests/fixtures/tokenizers/wp_uncased/tokenizer.json
if [ -f "$TOK" ] && [ -f examples/sentences-val.txt ]; then
    cat >"$tmp/b.yaml" <<YAML
model:
  preset: bert-tiny
data:
  objective: mlm
  tokenizer: $TOK
  train: $TRAIN
  val: examples/sentences-val.txt
train:
  seq_len: 64
  batch_size: 8
  steps: 6
  lr: 3e-3
  warmup_steps: 2
eval:
  every: 3
  steps: 2
checkpoint:
  every: 3
  keep: 0
log:
  tensorboard: false
dist:
  timeout_s: 30
YAML
    run1 "$tmp/b.yaml" --set out_dir="$tmp/b1"
    launch 2 "$tmp/b.yaml" --set dist.tp=2 --set out_dir="$tmp/b2"
    same_losses "BERT MLM: tp 2 vs 1 rank" "$tmp/b1" "$tmp/b2"
    same_weights "BERT MLM: tp 2 vs 1 rank" "$tmp/b1" "$tmp/b2"
    check "BERT MLM under tp: validation losses of 1 rank ($(val "$tmp/b1") / $(val "$tmp/b2"))" \
        test "$(val "$tmp/b1")" = "$(val "$tmp/b2")"
    check "BERT under tp: the checkpoint is the whole BertForMaskedLM" grep -q '"vocab_size": 2048' "$tmp/b2/final/config.json"
    ROB="--set model.preset=roberta-tiny --set data.tokenizer=tests/fixtures/tokenizers/roberta_style/tokenizer.json --set eval.every=0"
    run1 "$tmp/b.yaml" $ROB --set out_dir="$tmp/rb1"
    launch 2 "$tmp/b.yaml" $ROB --set dist.tp=2 --set out_dir="$tmp/rb2"
    same_losses "RoBERTa MLM: tp 2 vs 1 rank" "$tmp/rb1" "$tmp/rb2"
    # one position embedding element measured 1.0e-4 apart (the others below 2.1e-5): Adam's
    # normalisation of a near-zero gradient, as above; a missing reduction moves weights by ~3e-3
    if "$ANVIL" inspect --diff "$tmp/rb1/final" "$tmp/rb2/final" --tol 5e-4 >"$tmp/diff.out" 2>&1; then ok; else
        bad "RoBERTa MLM: tp 2 vs 1 rank: weights: $(cat "$tmp/diff.out")"
    fi
    vs1 "BERT LoRA: tp 2 vs 1 rank" adapters 2 "$tmp/b.yaml" "$tmp/bl1" "$tmp/bl2" "--set lora.r=4"
else
    echo "skip: the encoder cases need $TOK and examples/sentences-val.txt" >&2
fi

# ---- BitNet b1.58 QAT (model.ternary: bitnet, sub-norms, relu2-GLU) under tp: every BitLinear part's
# gamma from the ranks' sums of |W|, a row-parallel input's 8-bit scale from the ranks' row absmax, the
# sub-norms from the ranks' per-row sums (their weights split like the features) ----
# The quantizers are step functions: the float rounding of the row-parallel sums (above) moves a value
# across a rounding boundary now and then, and that step is larger than the rounding. tp 4 (4 kv heads)
# measured the existing tolerances (losses equal to 6 decimals, weights 2.2e-5); tp 2 measured losses
# 1.1e-5 (step 1, before any update) to 2.3e-4 apart and weights up to 1.0e-2 (3 seeds), so the tp 2
# cases use the tolerances below; the bug they guard against (a part's gamma of the slice alone, or
# latent weights ternarized before slicing) measured losses 2e-2 and weights 7.5e-2 apart.
BITNET_LOSS_RTOL=1e-3
BITNET_WEIGHT_TOL=3e-2
bitnet_close() { # NAME DIR_A DIR_B [STEPS]: the losses within BITNET_LOSS_RTOL, the weights within BITNET_WEIGHT_TOL
    check "$1: losses ($(losses "$2") / $(losses "$3"))" awk -v a="$(losses "$2")" -v b="$(losses "$3")" \
        -v t="$BITNET_LOSS_RTOL" -v s="${4:-6}" 'BEGIN { n = split(a, x, " "); m = split(b, y, " "); if (n != s || m != s) exit 1
        for (i = 1; i <= n; i++) { d = x[i] - y[i]; if (d < 0) d = -d; if (d > t * x[i]) exit 1 }
        exit 0 }'
    if "$ANVIL" inspect --diff "$2/final" "$3/final" --tol "$BITNET_WEIGHT_TOL" >"$tmp/diff.out" 2>&1; then ok; else
        bad "$1: weights: $(cat "$tmp/diff.out")"
    fi
}
sed 's/preset: llama-tiny/preset: bitnet-tiny/' "$tmp/l.yaml" >"$tmp/bn.yaml" # 4 heads (2 kv), d_ff 176
run1 "$tmp/bn.yaml" --set out_dir="$tmp/bn1"
launch 2 "$tmp/bn.yaml" --set dist.tp=2 --set out_dir="$tmp/bn2"
check "BitNet under tp: the header names the tp ranks' slice" grep -q "each tp rank 2 heads (1 kv)" "$tmp/run.log"
bitnet_close "BitNet QAT: tp 2 vs 1 rank" "$tmp/bn1" "$tmp/bn2"
check "BitNet QAT: tp 2 vs 1 rank, step 1 (before any update: rounding only) within 1e-4" awk -v a="$(losses "$tmp/bn1")" \
    -v b="$(losses "$tmp/bn2")" 'BEGIN { split(a, x, " "); split(b, y, " "); d = x[1] - y[1]; if (d < 0) d = -d; exit !(x[1] > 0 && d <= 1e-4 * x[1]) }'
check "BitNet under tp: the checkpoint is the whole BitNetForCausalLM" grep -q '"BitNetForCausalLM"' "$tmp/bn2/final/config.json"
"$ANVIL" inspect "$tmp/bn2/final/model.safetensors" >"$tmp/bn.txt" 2>&1
check "BitNet under tp: the whole attn_sub_norm in the checkpoint (64)" grep -qE 'attn_sub_norm.weight +F32 +\(64\)' "$tmp/bn.txt"
check "BitNet under tp: the whole ffn_sub_norm in the checkpoint (176)" grep -qE 'ffn_sub_norm.weight +F32 +\(176\)' "$tmp/bn.txt"
# recompute 1 and 2 redo the same collectives in the backward: the same bits as recompute 0
for rc in 1 2; do
    launch 2 "$tmp/bn.yaml" --set dist.tp=2 --set train.recompute=$rc --set out_dir="$tmp/bnr$rc"
    check "BitNet tp 2: recompute $rc gives recompute 0's weights bit for bit" \
        cmp -s "$tmp/bn2/final/model.safetensors" "$tmp/bnr$rc/final/model.safetensors"
done
# tp 4 (4 kv heads: one q, k and v head per rank; d_ff 44 units each): the existing tolerances
run1 "$tmp/bn.yaml" --set model.n_kv_head=4 --set out_dir="$tmp/bn1h4"
launch 4 "$tmp/bn.yaml" --set model.n_kv_head=4 --set dist.tp=4 --set out_dir="$tmp/bn4"
same_losses "BitNet QAT: tp 4 vs 1 rank" "$tmp/bn1h4" "$tmp/bn4"
same_weights "BitNet QAT: tp 4 vs 1 rank" "$tmp/bn1h4" "$tmp/bn4"
# tp 2 x dp 2 against 2-fold accumulation, also with ZeRO-2 over the data-parallel group (a BitLinear
# ternarizes the compute copy there: fp32 on the CPU, the same values)
run1 "$tmp/bn.yaml" --set train.tokens_per_step=256 --set out_dir="$tmp/bn1acc"
launch 4 "$tmp/bn.yaml" --set train.tokens_per_step=256 --set dist.tp=2 --set out_dir="$tmp/bn22"
bitnet_close "BitNet QAT: tp 2 x dp 2 vs 1 rank with accumulation" "$tmp/bn1acc" "$tmp/bn22"
launch 4 "$tmp/bn.yaml" --set train.tokens_per_step=256 --set dist.tp=2 --set dist.zero=2 --set out_dir="$tmp/bn22z2"
bitnet_close "BitNet QAT: tp 2 x dp 2 ZeRO-2 vs 1 rank with accumulation" "$tmp/bn1acc" "$tmp/bn22z2"
# resume tp 2 -> 1 (the whole model, sub-norms gathered). (model.init of a QAT checkpoint is refused at
# dist.tp 1 too: its quantization_config is BitNet's, not bitsandbytes')
cp -r "$tmp/bn2" "$tmp/bnr21"
rm -rf "$tmp/bnr21/step-0000006"
run1 "$tmp/bn.yaml" --resume "$tmp/bnr21" --set dist.tp=1
check "BitNet tp 2 -> 1: resumed at step 3" grep -q "resuming from $tmp/bnr21/step-0000003 (step 3)" "$tmp/run.log"
bitnet_close "BitNet QAT: resume tp 2 -> 1" "$tmp/bn1" "$tmp/bnr21"
# model.freeze: a frozen BitLinear is ternarized whole and then sliced (each part's gamma of the whole part)
launch 2 "$tmp/bn.yaml" --set 'model.freeze=["model.layers.0.*"]' --set dist.tp=2 --set out_dir="$tmp/bnf2"
run1 "$tmp/bn.yaml" --set 'model.freeze=["model.layers.0.*"]' --set out_dir="$tmp/bnf1"
bitnet_close "BitNet QAT with model.freeze (frozen BitLinears): tp 2 vs 1 rank" "$tmp/bnf1" "$tmp/bnf2"
# integer ternary (train.optimizer: ternary) stays refused under tp, with one line naming the key
expect_fail tp-integer-ternary "train.optimizer: ternary with dist.tp 2 is not supported|use dist.tp 1" train \
    "$tmp/bn.yaml" --set model.ternary=none --set train.optimizer=ternary --set dist.tp=2 --set out_dir="$tmp/bnx"

# ---- anvil plan --tp: rank 0's bytes, category by category, as a tp run allocates them ----
plan_vs_run() { # NAME PLAN_MODEL PLAN_ARGS CONFIG RUN_ARGS NPROC
    "$ANVIL" plan --model "$2" --device cpu --batch 4 --seq 32 $3 --json "$tmp/plan.json" >/dev/null 2>"$tmp/plan.err" ||
        bad "$1: plan: $(cat "$tmp/plan.err")"
    rm -rf "$tmp/pr"
    "$ANVIL" launch --nproc "$6" --device cpu -- train "$4" $5 --set train.steps=1 --set checkpoint.every=0 \
        --set out_dir="$tmp/pr" >"$tmp/pr.log" 2>&1 || bad "$1: run: $(tail -n 2 "$tmp/pr.log")"
    local real want
    real=$(sed -n 's/^memory bytes: \(weights [0-9]* master [0-9]* gradients [0-9]* optimizer [0-9]* activations [0-9]* workspace [0-9]*\) peak.*/\1/p' "$tmp/pr.log")
    want=$(python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(" ".join("%s %d" % (k, d[k]) for k in
        ["weights", "master", "gradients", "optimizer", "activations", "workspace"]))' "$tmp/plan.json")
    check "$1: plan ($want) = run ($real)" test -n "$real" -a "$want" = "$real"
}
plan_vs_run "plan --tp 2, llama full" "$tmp/l1/final" "--tp 2 --world 2" "$tmp/l.yaml" "--set dist.tp=2" 2
plan_vs_run "plan --tp 2, llama LoRA" "$tmp/l1/final" "--tp 2 --world 2 --method lora --lora-r 4" "$tmp/l.yaml" \
    "$LORA --set dist.tp=2" 2
plan_vs_run "plan --tp 2, llama QLoRA (sliced 4-bit scales)" "$tmp/l1/final" "--tp 2 --world 2 --method qlora --lora-r 4" \
    "$tmp/l.yaml" "$LORA --set model.quant=nf4 --set dist.tp=2" 2
plan_vs_run "plan --tp 4, gpt2 full" "$tmp/g1h4/final" "--tp 4 --world 4" "$tmp/g.yaml" \
    "--set model.n_head=4 --set model.n_kv_head=4 --set dist.tp=4" 4
# BitNet QAT: the 8-bit copy of a BitLinear's input (the widest input, B x T rows) and the tp statistics
plan_vs_run "plan, BitNet QAT (one rank)" "$tmp/bn1/final" "" "$tmp/bn.yaml" "" 1
plan_vs_run "plan --tp 2, BitNet QAT" "$tmp/bn1/final" "--tp 2 --world 2" "$tmp/bn.yaml" "--set dist.tp=2" 2
expect_fail plan-tp-world "plan: --tp 2 does not divide --world 3" plan --model "$tmp/l1/final" --tp 2 --world 3

# ---- a tp rank that dies: the job exits non-zero at once, naming it ----
"$ANVIL" launch --nproc 2 --device cpu -- train "$tmp/g.yaml" --set dist.tp=2 --set train.steps=100000 \
    --set checkpoint.every=0 --set out_dir="$tmp/kill" >"$tmp/kill.out" 2>"$tmp/kill.err" &
L=$!
r1=""
for i in $(seq 300); do # rank 1: the launcher's child with RANK=1 in its environment
    if grep -qE "^step +3/" "$tmp/kill.out" 2>/dev/null; then
        for k in $(pgrep -P "$L"); do
            tr '\0' '\n' <"/proc/$k/environ" 2>/dev/null | grep -qx "RANK=1" && r1=$k
        done
    fi
    [ -n "$r1" ] && break
    sleep 0.1
done
if [ -n "$r1" ]; then
    t0=$SECONDS
    kill -KILL "$r1"
    wait "$L"
    rc=$?
    check "killed tp rank: the job exits non-zero ($rc) at once ($((SECONDS - t0)) s)" test $rc -ne 0 -a $((SECONDS - t0)) -le 12
    check "killed tp rank: named" grep -q "rank 1 (pid [0-9]*) was killed by signal 9" "$tmp/kill.err"
else
    bad "killed tp rank: rank 1 not found"
    kill "$L" 2>/dev/null
    wait "$L"
fi

# ---- refusals ----
expect_fail tp-one-process "dist.tp: 2 needs a multiple of 2 ranks" train "$tmp/g.yaml" --set dist.tp=2 \
    --set out_dir="$tmp/x"
expect_fail tp-range "dist.tp: expected 1 .. 64" train "$tmp/g.yaml" --set dist.tp=0
if "$ANVIL" launch --nproc 2 --device cpu -- train "$tmp/l.yaml" --set dist.tp=2 --set model.n_kv_head=1 \
    --set out_dir="$tmp/bad" >/dev/null 2>"$tmp/err"; then
    bad "n_kv_head 1 with tp 2: accepted"
else
    check "n_kv_head not divisible: named" grep -q "rank 0: dist.tp: 2 does not divide model.n_kv_head 1" "$tmp/err"
fi

cli_summary
