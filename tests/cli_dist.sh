#!/usr/bin/env bash
# cli_dist.sh - data parallel training on CPU ranks, end to end (docs/distributed.md):
#   - 2 ranks (`anvil launch --nproc 2 --device cpu`, TCP comm; and `mpirun -np 2`, MPI comm) give
#     the losses and final weights of 1 rank with 2-fold accumulation: losses within 1e-5
#     relative, weights within 2e-5 absolute (`anvil inspect --diff --tol`; the gap is float
#     rounding of sums taken in another order, largest in the attention key bias, whose gradient
#     is zero up to rounding and which Adam's normalisation turns into lr-sized noise);
#   - ZeRO-1, ZeRO-2 and ZeRO-3 give the losses and weights of ZeRO-0 (same tolerances; bit for bit
#     on 2 CPU ranks, as measured), also with 2-fold accumulation (ZeRO-2/3 reduce every micro-step),
#     and write per-rank optimizer shards with a manifest; the memory line shows each stage's bytes
#     per trainable parameter (CPU: 8 + 8/N, 4 + 12/N, 16/N);
#   - resume from 2 ranks onto 1 and from 1 onto 2 continues the run, also across stages (ZeRO-3 ->
#     1 rank, 1 rank -> ZeRO-3, ZeRO-2 -> ZeRO-3, ZeRO-3 -> ZeRO-1);
#   - the other families: BitNet QAT (bitnet-tiny) and BERT MLM (bert-tiny; skipped without the WordPiece
#     fixture and ../shared/data) under ZeRO-1/2/3 give ZeRO-0's run (launch; mpirun ZeRO-3), which
#     gives 1 rank's with accumulation, BitNet also with block 0 frozen; resume BitNet ZeRO-3 -> ZeRO-1
#     and -> 1 rank, BERT ZeRO-2 -> 3; BERT's validation loss and a BERT LoRA run under ZeRO-3 equal ZeRO-0's;
#     MoE (moe-tiny, routing losses off) under ZeRO-1/2/3 equals ZeRO-0;
#   - a rank killed mid-run makes the job exit non-zero at once naming it (the launcher, or
#     mpirun); a rank that hangs
#     makes the others exit non-zero after dist.timeout_s naming the collective (launch and mpirun);
#   - dist.tp 2 in one process is refused with a clear error (tensor parallel itself: cli_tp.sh).
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
  preset: gpt2-tiny
  vocab_size: 257
  max_seq_len: 32
  d_model: 32
  n_head: 2
data:
  train: $TRAIN
  tokenizer: byte
train:
  steps: 6
  batch_size: 4
  seq_len: 32
  tokens_per_step: 256
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
out_dir: $tmp/one
YAML

run1() { "$ANVIL" train "$tmp/t.yaml" "$@" >"$tmp/run.log" 2>&1 || bad "train $*: $(tail -n 3 "$tmp/run.log")"; }
launch2() {
    "$ANVIL" launch --nproc 2 --device cpu -- train "$tmp/t.yaml" "$@" >"$tmp/run.log" 2>&1 ||
        bad "launch $*: $(tail -n 3 "$tmp/run.log")"
}

# ---- 1 rank x 2 micro-batches == 2 ranks x 1 ----
run1
launch2 --set out_dir="$tmp/two"
check "launch: header names the ranks and the comm" grep -q "^dist: 2 rank(s) (torchrun, comm tcp), dist.zero 0" "$tmp/run.log"
check "launch: global batch in the header" grep -q "4 x 32 tokens x 2 micro-steps = 256 tokens/step" "$tmp/run.log"
check "launch: one metrics line per step (rank 0 only)" test "$(wc -l <"$tmp/two/metrics.jsonl")" -eq 6
check "launch: per-rank metrics" grep -q '"ranks": 2, "tokens_per_s_per_rank": [0-9.]*, "comm_s": [0-9.]*, "peak_mem_gib_ranks": \[[0-9.]*, [0-9.]*\]' \
    "$tmp/two/metrics.jsonl"
same_losses "2 ranks vs 1 rank with accumulation" "$tmp/one" "$tmp/two"
same_weights "2 ranks vs 1 rank with accumulation" "$tmp/one" "$tmp/two"

if command -v mpirun >/dev/null 2>&1; then
    if mpirun_ -np 2 --oversubscribe "$ANVIL" train "$tmp/t.yaml" --set out_dir="$tmp/mpi" >"$tmp/mpi.log" 2>&1; then ok; else
        bad "mpirun: $(tail -n 3 "$tmp/mpi.log")"
    fi
    check "mpirun: the MPI comm" grep -q "^dist: 2 rank(s) (mpirun, comm mpi)" "$tmp/mpi.log"
    same_losses "mpirun vs 1 rank" "$tmp/one" "$tmp/mpi"
    same_weights "mpirun vs 1 rank" "$tmp/one" "$tmp/mpi"
    for z in 2 3; do # the per-layer hooks over MPI's collectives
        if mpirun_ -np 2 --oversubscribe "$ANVIL" train "$tmp/t.yaml" --set out_dir="$tmp/mpi$z" --set dist.zero=$z \
            >"$tmp/mpi.log" 2>&1; then ok; else
            bad "mpirun ZeRO-$z: $(tail -n 3 "$tmp/mpi.log")"
        fi
        same_losses "mpirun ZeRO-$z vs 1 rank" "$tmp/one" "$tmp/mpi$z"
        same_weights "mpirun ZeRO-$z vs 1 rank" "$tmp/one" "$tmp/mpi$z"
    done
else
    echo "note: mpirun not found (apt-get install openmpi-bin libopenmpi-dev): MPI checks skipped" >&2
fi

# ---- ZeRO-1, 2 and 3 == ZeRO-0 ----
# mem_line LOG: "total weights master gradients optimizer staging" of the memory-per-rank line
mem_line() {
    sed -n 's/^memory per rank .*: \([0-9.]*\) bytes per trainable parameter (weights \([0-9.]*\), master \([0-9.]*\), gradients \([0-9.]*\), optimizer \([0-9.]*\)) + staging \([0-9.]*\).*/\1 \2 \3 \4 \5 \6/p' "$1"
}
# near NAME GOT WANT: GOT within 3% of WANT (the segment pads each tensor to 64 elements: 1.7% here)
near() { check "$1 ($2, expected $3)" awk -v g="$2" -v w="$3" 'BEGIN { d = g - w; if (d < 0) d = -d; exit !(d <= 0.03 * w + 1e-9) }'; }
for z in 1 2 3; do
    launch2 --set out_dir="$tmp/z$z" --set dist.zero=$z
    same_losses "ZeRO-$z vs ZeRO-0" "$tmp/two" "$tmp/z$z"
    same_weights "ZeRO-$z vs ZeRO-0" "$tmp/two" "$tmp/z$z"
    check "ZeRO-$z: per-rank optimizer shards" test -f "$tmp/z$z/final/optimizer-rank-1-of-2.safetensors"
    check "ZeRO-$z: manifest" grep -q "\"zero\": $z" "$tmp/z$z/final/optimizer-manifest.json"
    check "ZeRO-$z: no whole optimizer file" test ! -e "$tmp/z$z/final/optimizer.safetensors"
    # bytes per trainable parameter on the CPU (fp32: the compute copy is the master), N = 2:
    # ZeRO-1 4 + 4 + 8/N; ZeRO-2 4 + (4 + 8)/N; ZeRO-3 (4 + 4 + 8)/N (docs/distributed.md)
    read -r tot w ma g o st <<<"$(mem_line "$tmp/run.log")"
    case $z in
    1) near "ZeRO-1 memory: total" "$tot" 12; near "ZeRO-1 memory: gradients (whole)" "$g" 4 ;;
    2) near "ZeRO-2 memory: total" "$tot" 10; near "ZeRO-2 memory: gradients (shard)" "$g" 2 ;;
    3) near "ZeRO-3 memory: total" "$tot" 8; near "ZeRO-3 memory: weights+master (shard)" "$ma" 2
       check "ZeRO-3: layer buffers reported ($st)" awk -v s="$st" 'BEGIN { exit !(s > 0) }' ;;
    esac
    near "ZeRO-$z memory: optimizer (shard)" "$o" 4
done
# validation under ZeRO-3: 3 batches over 2 ranks (rank 1 runs an uncounted forward so that the
# per-layer gathers stay in step); the loss equals ZeRO-0's
vals() { sed -n 's/.*"val_loss": \([0-9.]*\).*/\1/p' "$1/metrics.jsonl" | tr '\n' ' '; }
for z in 0 3; do
    launch2 --set out_dir="$tmp/val$z" --set dist.zero=$z --set data.val="$TRAIN" --set eval.steps=3 --set eval.every=3
done
check "ZeRO-3 validation loss = ZeRO-0's ($(vals "$tmp/val0")/ $(vals "$tmp/val3"))" \
    test -n "$(vals "$tmp/val0")" -a "$(vals "$tmp/val0")" = "$(vals "$tmp/val3")"
# ZeRO-3 shards frozen dense tensors too: a LoRA run (the base frozen) and a model.freeze run equal
# ZeRO-0's, with the frozen weights halved per rank; the LoRA run resumes
for z in 0 3; do
    launch2 --set out_dir="$tmp/lora$z" --set dist.zero=$z --set lora.r=4
    launch2 --set out_dir="$tmp/frz$z" --set dist.zero=$z --set 'model.freeze=["transformer.h.0.*","transformer.wte.weight"]'
    read -r tot w_frz$z rest <<<"$(mem_line "$tmp/run.log")"
done
same_losses "LoRA under ZeRO-3 vs ZeRO-0" "$tmp/lora0" "$tmp/lora3"
check "LoRA under ZeRO-3: the adapters of ZeRO-0" cmp "$tmp/lora0/final/adapter_model.safetensors" "$tmp/lora3/final/adapter_model.safetensors"
same_losses "model.freeze under ZeRO-3 vs ZeRO-0" "$tmp/frz0" "$tmp/frz3"
same_weights "model.freeze under ZeRO-3 vs ZeRO-0" "$tmp/frz0" "$tmp/frz3"
near "ZeRO-3: frozen and trainable weights per rank halved" "$w_frz3" "$(awk -v w="$w_frz0" 'BEGIN { print w / 2 }')"
cp -r "$tmp/lora3" "$tmp/lorar"
rm -rf "$tmp/lorar/step-0000006"
launch2 --resume "$tmp/lorar" --set dist.zero=3 --set lora.r=4
check "LoRA under ZeRO-3: resume" cmp "$tmp/lora3/final/adapter_model.safetensors" "$tmp/lorar/final/adapter_model.safetensors"
# ZeRO-3 shards a 4-bit base (QLoRA) too: the NF4 bytes of each layer split over the ranks and
# gathered before the layer runs; the same losses and adapters as ZeRO-0, the weights per rank
# halved; the run resumes on 2 ranks under ZeRO-3 and on 1 rank
for z in 0 3; do
    launch2 --set out_dir="$tmp/qlora$z" --set dist.zero=$z --set lora.r=4 --set model.quant=nf4
    read -r tot w_q$z rest <<<"$(mem_line "$tmp/run.log")"
done
same_losses "QLoRA under ZeRO-3 vs ZeRO-0" "$tmp/qlora0" "$tmp/qlora3"
check "QLoRA under ZeRO-3: the adapters of ZeRO-0" cmp "$tmp/qlora0/final/adapter_model.safetensors" "$tmp/qlora3/final/adapter_model.safetensors"
near "ZeRO-3: 4-bit and frozen weights per rank halved" "$w_q3" "$(awk -v w="$w_q0" 'BEGIN { print w / 2 }')"
for where in 2 1; do
    cp -r "$tmp/qlora3" "$tmp/qlorar$where"
    rm -rf "$tmp/qlorar$where/step-0000006"
    if [ $where = 2 ]; then launch2 --resume "$tmp/qlorar$where" --set dist.zero=3 --set lora.r=4 --set model.quant=nf4
    else run1 --resume "$tmp/qlorar$where" --set lora.r=4 --set model.quant=nf4; fi
    if [ $where = 2 ]; then
        check "QLoRA under ZeRO-3: resume on 2 ranks" cmp "$tmp/qlora3/final/adapter_model.safetensors" "$tmp/qlorar2/final/adapter_model.safetensors"
    else # 1 rank accumulates 2 micro-steps where 2 ranks reduced: the same to rounding
        same_losses "QLoRA under ZeRO-3: resume on 1 rank" "$tmp/qlora3" "$tmp/qlorar1"
    fi
done
# a ZeRO rank's store is allocated as its parts from the start: the whole model never exists on a
# rank, so the peak is what the rank holds while it trains (a 12-layer model, whose three gathered
# layers are a quarter of it; the peak used to include the whole store made before the sharding)
bytes_line() { sed -n 's/^memory bytes: weights \([0-9]*\) master \([0-9]*\) gradients \([0-9]*\) optimizer \([0-9]*\) activations \([0-9]*\) workspace \([0-9]*\) peak \([0-9]*\).*/\1 \2 \3 \4 \5 \6 \7/p' "$1"; }
DEEP="--set model.n_layer=12 --set model.d_model=128 --set train.batch_size=1 --set train.seq_len=8 --set train.tokens_per_step=16 --set train.steps=2 --set checkpoint.every=0"
for what in "" "--set lora.r=4"; do
    launch2 $DEEP $what --set dist.zero=3 --set out_dir="$tmp/deep3$(echo $what | tr -dc 0-9)"
    read -r w ma g o a ws pk <<<"$(bytes_line "$tmp/run.log")"
    check "ZeRO-3${what:+ (LoRA)}: peak $pk = what a rank holds ($w + $ma + $g + $o + $a + $ws)" \
        awk -v p="${pk:-0}" -v s="$(( ${w:-0} + ${ma:-0} + ${g:-0} + ${o:-0} + ${a:-0} + ${ws:-0} ))" 'BEGIN { exit !(p > 0 && p <= 1.01 * s) }'
done
# 2 ranks x 2 micro-steps: ZeRO-2/3 reduce-scatter every micro-step into the shard, ZeRO-0 once
launch2 --set out_dir="$tmp/acc0" --set train.tokens_per_step=512
for z in 2 3; do
    launch2 --set out_dir="$tmp/acc$z" --set train.tokens_per_step=512 --set dist.zero=$z
    same_losses "accumulation: ZeRO-$z vs ZeRO-0" "$tmp/acc0" "$tmp/acc$z"
    same_weights "accumulation: ZeRO-$z vs ZeRO-0" "$tmp/acc0" "$tmp/acc$z"
done

# ---- resume onto another world size: 2 ranks (ZeRO-1 shards) -> 1, 1 -> 2 ranks (ZeRO-2) ----
cp -r "$tmp/z1" "$tmp/r21"
rm -rf "$tmp/r21/step-0000006"
run1 --resume "$tmp/r21"
check "2 -> 1: resumed at step 3" grep -q "resuming from $tmp/r21/step-0000003 (step 3)" "$tmp/run.log"
same_losses "resume 2 -> 1" "$tmp/z1" "$tmp/r21"
same_weights "resume 2 -> 1" "$tmp/z1" "$tmp/r21"
cp -r "$tmp/one" "$tmp/r12"
rm -rf "$tmp/r12/step-0000006"
launch2 --resume "$tmp/r12" --set dist.zero=2
same_losses "resume 1 -> 2" "$tmp/one" "$tmp/r12"
same_weights "resume 1 -> 2" "$tmp/one" "$tmp/r12"
# across stages: ZeRO-3 shards -> 1 rank, 1 rank -> ZeRO-3, ZeRO-2 -> ZeRO-3, ZeRO-3 -> ZeRO-1
resume_as() { # NAME FROM REFERENCE RUNNER ARGS...
    local name=$1 from=$2 ref=$3
    shift 3
    cp -r "$from" "$tmp/$name"
    rm -rf "$tmp/$name/step-0000006"
    "$@" --resume "$tmp/$name"
    same_losses "resume $name" "$ref" "$tmp/$name"
    same_weights "resume $name" "$ref" "$tmp/$name"
}
resume_as r3to1 "$tmp/z3" "$tmp/z3" run1
resume_as r1to3 "$tmp/one" "$tmp/one" launch2 --set dist.zero=3
resume_as r2to3 "$tmp/z2" "$tmp/z2" launch2 --set dist.zero=3
resume_as r3to1z "$tmp/z3" "$tmp/z3" launch2 --set dist.zero=1

# ---- every family the trainer trains: BitNet QAT and BERT MLM under ZeRO-1/2/3 ----
# BitLinear ternarizes, under ZeRO, the compute copy every rank holds (ZeRO-3: the gathered layer): on
# the CPU that is the fp32 master's values, so each stage gives ZeRO-0's run (which gives 1 rank's with
# 2-fold accumulation); BERT's MLM head (dense, LayerNorm, decoder tied to wte, its bias) and token
# types go through the per-layer hooks. Resume across stages: BitNet ZeRO-3 -> ZeRO-1, BERT ZeRO-2 -> 3.
# fam_run NAME YAML RUNNER ARGS...: train YAML into $tmp/NAME (RUNNER: 1 rank, launch or mpi)
fam_run() {
    local name=$1 yaml=$2 how=$3
    shift 3
    case $how in
    1) "$ANVIL" train "$yaml" --set out_dir="$tmp/$name" "$@" ;;
    launch) "$ANVIL" launch --nproc 2 --device cpu -- train "$yaml" --set out_dir="$tmp/$name" "$@" ;;
    mpi) mpirun_ -np 2 --oversubscribe "$ANVIL" train "$yaml" --set out_dir="$tmp/$name" "$@" ;;
    esac >"$tmp/$name.log" 2>&1 || bad "$name: $(tail -n 3 "$tmp/$name.log")"
}
# fam_resume NAME FROM YAML RUNNER ARGS...: FROM's step-3 checkpoint continued into $tmp/NAME
fam_resume() {
    local name=$1 from=$2
    shift 2
    cp -r "$tmp/$from" "$tmp/$name"
    rm -rf "$tmp/$name/step-0000006" "$tmp/$name/final"
    fam_run "$name" "$@" --resume "$tmp/$name"
}
# fam_cases FAMILY YAML: 1 rank with accumulation, ZeRO 0-3 on 2 ranks, mpirun ZeRO-3
fam_cases() {
    local f=$1 yaml=$2 z
    fam_run "${f}1" "$yaml" 1
    fam_run "${f}z0" "$yaml" launch
    same_losses "$f: 2 ranks vs 1 rank with accumulation" "$tmp/${f}1" "$tmp/${f}z0"
    same_weights "$f: 2 ranks vs 1 rank with accumulation" "$tmp/${f}1" "$tmp/${f}z0"
    for z in 1 2 3; do
        fam_run "${f}z$z" "$yaml" launch --set dist.zero=$z
        same_losses "$f: ZeRO-$z vs ZeRO-0" "$tmp/${f}z0" "$tmp/${f}z$z"
        same_weights "$f: ZeRO-$z vs ZeRO-0" "$tmp/${f}z0" "$tmp/${f}z$z"
    done
    if command -v mpirun >/dev/null 2>&1; then
        fam_run "${f}mpi3" "$yaml" mpi --set dist.zero=3
        same_losses "$f: mpirun ZeRO-3 vs ZeRO-0" "$tmp/${f}z0" "$tmp/${f}mpi3"
        same_weights "$f: mpirun ZeRO-3 vs ZeRO-0" "$tmp/${f}z0" "$tmp/${f}mpi3"
    fi
}
sed -e 's/preset: gpt2-tiny/preset: bitnet-tiny/' -e '/d_model: 32/d' -e '/n_head: 2/d' "$tmp/t.yaml" \
    >"$tmp/bitnet.yaml"
fam_cases bitnet "$tmp/bitnet.yaml"
check "bitnet: a BitNetForCausalLM" grep -q BitNetForCausalLM "$tmp/bitnetz3/final/config.json"
# a frozen BitLinear (ternarized once, into the frozen segment, which ZeRO-3 shards)
for z in 0 3; do
    fam_run "bitnetfrz$z" "$tmp/bitnet.yaml" launch --set dist.zero=$z --set 'model.freeze=["model.layers.0.*"]'
done
same_losses "bitnet: model.freeze under ZeRO-3 vs ZeRO-0" "$tmp/bitnetfrz0" "$tmp/bitnetfrz3"
same_weights "bitnet: model.freeze under ZeRO-3 vs ZeRO-0" "$tmp/bitnetfrz0" "$tmp/bitnetfrz3"
fam_resume bitnet3to1 bitnetz3 "$tmp/bitnet.yaml" launch --set dist.zero=1
same_losses "bitnet: resume ZeRO-3 -> ZeRO-1" "$tmp/bitnetz3" "$tmp/bitnet3to1"
same_weights "bitnet: resume ZeRO-3 -> ZeRO-1" "$tmp/bitnetz3" "$tmp/bitnet3to1"
fam_resume bitnet3to1r bitnetz3 "$tmp/bitnet.yaml" 1
same_losses "bitnet: resume ZeRO-3 -> 1 rank" "$tmp/bitnetz3" "$tmp/bitnet3to1r"
same_weights "bitnet: resume ZeRO-3 -> 1 rank" "$tmp/bitnetz3" "$tmp/bitnet3to1r"
# MoE layers (moe-tiny; the routing losses off, as cli_moe.sh's data-parallel check): ZeRO-1/2/3 = ZeRO-0
sed -e 's/preset: bitnet-tiny/preset: moe-tiny/' "$tmp/bitnet.yaml" >"$tmp/moe.yaml"
for z in 0 1 2 3; do
    fam_run "moez$z" "$tmp/moe.yaml" launch --set dist.zero=$z --set model.moe.aux_loss_coef=0 \
        --set model.moe.z_loss_coef=0
    [ $z = 0 ] && continue
    same_losses "moe: ZeRO-$z vs ZeRO-0" "$tmp/moez0" "$tmp/moez$z"
    same_weights "moe: ZeRO-$z vs ZeRO-0" "$tmp/moez0" "$tmp/moez$z"
done
WP=tests/fixtures/tokenizers/wp_uncased/tokenizer.json
SENTENCES=${ANVIL_SHARED_DATA:-../shared/data}/text/sentences.txt
if [ -f "$WP" ] && [ -f "$SENTENCES" ]; then
    head -c 200000 "$SENTENCES" >"$tmp/mlm.txt"
    sed -e 's/preset: gpt2-tiny/preset: bert-tiny/' -e '/vocab_size: 257/d' -e '/max_seq_len: 32/d' \
        -e '/d_model: 32/d' -e '/n_head: 2/d' -e "s|train: .*|train: $tmp/mlm.txt|" \
        -e "s|tokenizer: byte|tokenizer: $WP\n  objective: mlm|" "$tmp/t.yaml" >"$tmp/bert.yaml"
    fam_cases bert "$tmp/bert.yaml"
    check "bert: a BertForMaskedLM" grep -q BertForMaskedLM "$tmp/bertz3/final/config.json"
    # the validation loss (3 batches over 2 ranks) and a LoRA run under ZeRO-3 equal ZeRO-0's
    tail -c 40000 "$SENTENCES" >"$tmp/mlmval.txt"
    for z in 0 3; do
        fam_run "bertval$z" "$tmp/bert.yaml" launch --set dist.zero=$z --set data.val="$tmp/mlmval.txt" \
            --set eval.steps=3 --set eval.every=3
        fam_run "bertlora$z" "$tmp/bert.yaml" launch --set dist.zero=$z --set lora.r=4
    done
    check "bert: ZeRO-3 validation loss = ZeRO-0's ($(vals "$tmp/bertval0")/ $(vals "$tmp/bertval3"))" \
        test -n "$(vals "$tmp/bertval0")" -a "$(vals "$tmp/bertval0")" = "$(vals "$tmp/bertval3")"
    same_losses "bert: LoRA under ZeRO-3 vs ZeRO-0" "$tmp/bertlora0" "$tmp/bertlora3"
    check "bert: LoRA under ZeRO-3: the adapters of ZeRO-0" \
        cmp "$tmp/bertlora0/final/adapter_model.safetensors" "$tmp/bertlora3/final/adapter_model.safetensors"
    fam_resume bert2to3 bertz2 "$tmp/bert.yaml" launch --set dist.zero=3
    same_losses "bert: resume ZeRO-2 -> ZeRO-3" "$tmp/bertz2" "$tmp/bert2to3"
    same_weights "bert: resume ZeRO-2 -> ZeRO-3" "$tmp/bertz2" "$tmp/bert2to3"
else
    echo "note: $WP or $SENTENCES not found: the bert cases skipped" >&2
fi

# ---- a rank that dies, a rank that hangs ----
# pid_of_rank LAUNCHER_PID VAR RANK: the child of the launcher whose environment has VAR=RANK
pid_of_rank() {
    local k
    for k in $(pgrep -P "$1"); do
        if tr '\0' '\n' <"/proc/$k/environ" 2>/dev/null | grep -qx "$2=$3"; then echo "$k"; return; fi
    done
}
# fault NAME SIGNAL TIMEOUT LAUNCHER...: start a long run, send SIGNAL to rank 1 after step 3, wait
fault() {
    local name=$1 sig=$2 to=$3 var=$4
    shift 4
    "$@" "$tmp/t.yaml" --set out_dir="$tmp/$name" --set train.steps=100000 --set dist.timeout_s="$to" \
        >"$tmp/$name.out" 2>"$tmp/$name.err" &
    local L=$! i r1=""
    for i in $(seq 300); do
        grep -qE "^step +3/" "$tmp/$name.out" 2>/dev/null && r1=$(pid_of_rank "$L" "$var" 1)
        [ -n "$r1" ] && break
        sleep 0.1
    done
    if [ -z "$r1" ]; then
        bad "$name: rank 1 not found"
        kill "$L" 2>/dev/null
        wait "$L"
        return
    fi
    local t0=$SECONDS
    kill "-$sig" "$r1"
    wait "$L"
    local rc=$?
    fault_s=$((SECONDS - t0))
    [ "$sig" = STOP ] && kill -KILL "$r1" 2>/dev/null
    check "$name: exit status non-zero ($rc)" test "$rc" -ne 0
    check "$name: within the timeout (${fault_s}s)" test "$fault_s" -le $((to + 12))
}
fault kill KILL 30 RANK "$ANVIL" launch --nproc 2 -- train
check "killed rank: at once" test "$fault_s" -le 12
check "killed rank: named" grep -q "rank 1 (pid [0-9]*) was killed by signal 9" "$tmp/kill.err"
fault hang STOP 3 RANK "$ANVIL" launch --nproc 2 -- train
check "hung rank: rank 0 names the collective and the timeout" \
    grep -q "^anvil: rank 0: .*collective .* timed out after 3 s (dist.timeout_s); a peer rank died or hangs? (waiting for rank 1)" \
    "$tmp/hang.err"
if command -v mpirun >/dev/null 2>&1; then
    fault mpikill KILL 30 OMPI_COMM_WORLD_RANK mpirun -np 2 --oversubscribe "$ANVIL" train
    check "mpirun, killed rank: at once" test "$fault_s" -le 12
    check "mpirun, killed rank: named" grep -q "process rank 1 .* exited on signal 9" "$tmp/mpikill.err"
    fault mpihang STOP 3 OMPI_COMM_WORLD_RANK mpirun -np 2 --oversubscribe "$ANVIL" train
    check "mpirun, hung rank: the watchdog names it" \
        grep -q "^anvil: rank 0: collective .* timed out after 3 s (dist.timeout_s)" "$tmp/mpihang.err"
fi

# ---- Ctrl-C: the launcher forwards SIGINT; the ranks stop after the same step with a checkpoint ----
"$ANVIL" launch --nproc 2 -- train "$tmp/t.yaml" --set out_dir="$tmp/int" --set train.steps=100000 \
    --set checkpoint.every=0 >"$tmp/int.out" 2>"$tmp/int.err" &
L=$!
for i in $(seq 300); do grep -qE "^step +3/" "$tmp/int.out" 2>/dev/null && break; sleep 0.1; done
kill -INT "$L"
wait "$L"
rc=$?
check "interrupt: exit 130 like the ranks ($rc: $(cat "$tmp/int.err"))" test $rc -eq 130
check "interrupt: no error printed" test ! -s "$tmp/int.err"
check "interrupt: checkpoint" grep -q "interrupted (SIGINT): saved a checkpoint at step" "$tmp/int.out"
check "interrupt: the checkpoint is complete" test -n "$(ls "$tmp"/int/step-*/trainer_state.json 2>/dev/null)"
check "interrupt: no 'final' for an unfinished run" test ! -e "$tmp/int/final"

# ---- errors ----
expect_fail zero4 "dist.zero: expected 0, 1, 2 or 3" train "$tmp/t.yaml" --set dist.zero=4
expect_fail tp2 "dist.tp: 2 needs a multiple of 2 ranks" train "$tmp/t.yaml" --set dist.tp=2 --set out_dir="$tmp/tp2"
expect_fail bad-comm "dist.comm|expected auto, tcp, mpi or nccl" train "$tmp/t.yaml" --set dist.comm=gloo
expect_fail launch-usage "launch: unknown option" launch --nope 2 -- train "$tmp/t.yaml"
if RANK=0 WORLD_SIZE=3 MASTER_ADDR=127.0.0.1 MASTER_PORT=1 "$ANVIL" train "$tmp/t.yaml" --set out_dir="$tmp/three" \
    >/dev/null 2>"$tmp/err"; then
    bad "tokens_per_step not divisible by the ranks: accepted"
else
    check "tokens_per_step names the ranks" grep -q "rank 0: train.tokens_per_step: 256 is not a multiple of batch_size\*seq_len\*ranks = 4\*32\*3" "$tmp/err"
fi
RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$((20000 + RANDOM % 20000)) "$ANVIL" train "$tmp/t.yaml" \
    --set dist.timeout_s=1 --set out_dir="$tmp/alone" >/dev/null 2>"$tmp/err"
check "a rank alone: rendezvous timeout" grep -q "rank 1: rendezvous: cannot reach rank 0 at 127.0.0.1:[0-9]* within 1 s" "$tmp/err"

cli_summary
