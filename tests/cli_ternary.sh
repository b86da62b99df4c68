#!/usr/bin/env bash
# cli_ternary.sh - ternary training end to end on the CPU (docs/ternary.md):
#   - train.optimizer: ternary on a tiny byte-level llama: the loss falls; a checkpoint holds the ternary
#     tensors only as U8/I8 (ternary.safetensors) and no optimizer entry for them; resuming from the
#     mid-run checkpoint reproduces the losses, the weights and the integer state bit for bit;
#   - model.family: bitnet (QAT) trains, resumes exactly, and `anvil quantize --quant bitnet` packs its
#     checkpoint into a directory anvil loads back;
#   - bad ternary keys: one-line errors.
set -u
. "$(dirname "$0")/lib_cli.sh"

TRAIN=examples/sentences-train.txt
if [ ! -f "$TRAIN" ]; then
    echo "skip: $TRAIN not found (run from the repository root)" >&2
    echo "0 passed, 0 failed"
    exit 0
fi
cat >"$tmp/tern.yaml" <<YAML
model:
  preset: llama-tiny
  vocab_size: 257
  max_seq_len: 64
data:
  train: $TRAIN
  tokenizer: byte
train:
  optimizer: ternary
  batch_size: 4
  seq_len: 32
  steps: 8
  lr: 3e-3
  warmup_steps: 2
  log_every: 4
  ternary:
    scale_every: 2
eval:
  every: 0
  steps: 0
checkpoint:
  every: 4
  keep: 0
out_dir: $tmp/run
YAML
strip() { sed -E 's/"(tokens_per_s|ms_per_step|wall_time|mfu|peak_mem_gib)": [0-9.e+-]*(, )?//g' "$1"; }
loss_at() { grep "\"step\": $2," "$1/metrics.jsonl" | sed 's/.*"loss": \([0-9.]*\).*/\1/'; }

if "$ANVIL" train "$tmp/tern.yaml" >"$tmp/t.log" 2>&1; then ok; else bad "ternary train: $(tail -n 3 "$tmp/t.log")"; fi
check "summary counts integer-ternary weights" grep -q "integer-ternary" "$tmp/t.log"
L1=$(loss_at "$tmp/run" 1)
L8=$(loss_at "$tmp/run" 8)
check "ternary loss falls ($L1 -> $L8)" awk -v a="$L1" -v b="$L8" 'BEGIN {exit !(b > 0 && b < a - 0.5)}'
ck=$tmp/run/step-0000008
"$ANVIL" inspect "$ck/ternary.safetensors" >"$tmp/tern.txt" 2>&1
check "ternary.safetensors lists the 4 block linears' state x 2 layers" test "$(grep -c '\.w ' "$tmp/tern.txt")" -eq 32
check "ternary.safetensors holds no float tensor" test "$(grep '\.w ' "$tmp/tern.txt" | awk '$2 != "U8" && $2 != "I8"' | wc -l)" -eq 0
"$ANVIL" inspect "$ck/optimizer.safetensors" >"$tmp/opt.txt" 2>&1
check "no optimizer state for ternary tensors" test "$(grep -cE '\.(qkv|o|fc|proj)\.w' "$tmp/opt.txt")" -eq 0
check "the norms still have AdamW moments" grep -q "^m.h.0.ln1.w" "$tmp/opt.txt"

cp -r "$tmp/run" "$tmp/resumed"
rm -rf "$tmp/resumed/step-0000008"
if "$ANVIL" train "$tmp/tern.yaml" --resume "$tmp/resumed" >"$tmp/r.log" 2>&1; then ok; else
    bad "ternary resume: $(tail -n 3 "$tmp/r.log")"
fi
check "resume says where" grep -q "step-0000004 (step 4)" "$tmp/r.log"
check "resumed metrics identical" cmp -s <(strip "$tmp/run/metrics.jsonl") <(strip "$tmp/resumed/metrics.jsonl")
for f in ternary.safetensors model.safetensors optimizer.safetensors; do
    check "resumed $f identical" cmp -s "$ck/$f" "$tmp/resumed/step-0000008/$f"
done
check "the trits moved in training" differs "$tmp/run/step-0000004/ternary.safetensors" "$ck/ternary.safetensors"

# ---- train.ternary.fused: each tensor updated inside the backward gives the same bits, with one
# tensor's gradient in memory instead of all of them ----
for f in false true; do
    "$ANVIL" train "$tmp/tern.yaml" --set out_dir="$tmp/fz-$f" --set train.ternary.fused=$f \
        --set train.ternary.embeddings=true --set checkpoint.every=0 >"$tmp/fz-$f.log" 2>&1 ||
        bad "fused=$f: $(tail -n 2 "$tmp/fz-$f.log")"
done
check "fused update: the same ternary state" cmp -s "$tmp/fz-false/final/ternary.safetensors" \
    "$tmp/fz-true/final/ternary.safetensors"
check "fused update: the same weights" cmp -s "$tmp/fz-false/final/model.safetensors" "$tmp/fz-true/final/model.safetensors"
gb() { sed -n 's/^memory bytes: .* gradients \([0-9]*\) .*/\1/p' "$1"; }
GF=$(gb "$tmp/fz-false.log")
GT=$(gb "$tmp/fz-true.log")
check "fused update: gradient memory $GT < $GF / 4" test "$GT" -lt $((GF / 4))
# ---- train.ternary.chunk_rows: an untied ternary embedding and head read, differentiated and updated
# 30 rows at a time (9 chunks of the 257) train as the whole tensors do: the same losses and validation
# losses to the digits printed, the vocabulary tensors' integer state identical; elsewhere the dinp of
# the head (an fp32 sum over the chunks instead of one product) may move a norm weight by a rounding ----
for cr in -1 30; do
    "$ANVIL" train "$tmp/tern.yaml" --set out_dir="$tmp/ck$cr" --set train.ternary.fused=true \
        --set train.ternary.embeddings=true --set model.tie_embeddings=false --set checkpoint.every=0 \
        --set train.ternary.chunk_rows=$cr --set data.val=examples/sentences-val.txt --set eval.every=4 \
        --set eval.steps=2 >"$tmp/ck$cr.log" 2>&1 || bad "chunk_rows=$cr: $(tail -n 2 "$tmp/ck$cr.log")"
done
check "chunked vocabulary tensors: the same losses" cmp -s <(strip "$tmp/ck-1/metrics.jsonl") <(strip "$tmp/ck30/metrics.jsonl")
check "chunked vocabulary tensors: validation ran" grep -q "val_loss" "$tmp/ck30.log"
check "chunked vocabulary tensors: the same trits, exponents and accumulators of wte and lm_head" python3 - \
    "$tmp/ck-1/final/ternary.safetensors" "$tmp/ck30/final/ternary.safetensors" <<'PY'
import sys
sys.path.insert(0, "tests")
from st_raw import tensors
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
names = [k for k in a if k.endswith(".wte") or k.endswith(".lm_head")]
assert len(names) == 8, names
for k in names:
    assert a[k] == b[k], k
PY
expect_fail chunk-rows "train.ternary.chunk_rows" train "$tmp/tern.yaml" --set train.ternary.chunk_rows=-2 \
    --set out_dir="$tmp/e6"
expect_fail fused-accum "train.ternary.fused|one micro-batch" train "$tmp/tern.yaml" --set train.ternary.fused=true \
    --set train.tokens_per_step=256 --set out_dir="$tmp/e5"

# ---- model.init from an integer-ternary checkpoint: a new run starts from its trits and exponents exactly
# (ternary.safetensors; at lr 0 the integer state does not move, so the new checkpoint's equals it), also
# from the float copy `anvil inspect --save` writes (values trit x 2^E: the same trits); another group
# than the checkpoint's is refused ----
tern_state_cmp() { # A B [trits]: the trits (and exponents unless "trits") of every tensor equal
    python3 - "$1" "$2" "${3:-all}" <<'PY'
import sys
sys.path.insert(0, "tests")
from st_raw import tensors
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
pre = ("trits.",) if sys.argv[3] == "trits" else ("trits.", "exp.")
names = [k for k in a if k.startswith(pre)]
assert names and all(a[k] == b[k] for k in names), [k for k in names if a[k] != b[k]]
PY
}
init_run() { # SRC OUT: one step at lr 0 from SRC
    "$ANVIL" train "$tmp/tern.yaml" --set model.preset= --set model.vocab_size= --set model.max_seq_len= \
        --set model.init="$1" --set train.steps=1 --set train.lr=0 --set train.min_lr=0 --set train.warmup_steps=0 \
        --set checkpoint.every=0 --set out_dir="$2" >"$2.log" 2>&1
}
if init_run "$ck" "$tmp/init"; then ok; else bad "model.init from a ternary checkpoint: $(tail -n 2 "$tmp/init.log")"; fi
check "model.init: the checkpoint's trits and exponents exactly" tern_state_cmp "$ck/ternary.safetensors" "$tmp/init/final/ternary.safetensors"
"$ANVIL" inspect "$ck" --save "$tmp/floatcopy" >/dev/null 2>&1 || bad "inspect --save of a ternary checkpoint"
if init_run "$tmp/floatcopy" "$tmp/initf"; then ok; else bad "model.init from the float copy: $(tail -n 2 "$tmp/initf.log")"; fi
check "model.init from the float copy: the same trits" tern_state_cmp "$ck/ternary.safetensors" "$tmp/initf/final/ternary.safetensors" trits
expect_fail init-group 'metadata "group" is 128, but train.ternary.group is 64' train "$tmp/tern.yaml" --set model.preset= \
    --set model.vocab_size= --set model.max_seq_len= --set model.init="$ck" --set train.ternary.group=64 --set out_dir="$tmp/ig"

# ---- an integer-ternary checkpoint in eval and generate: the tensors ternary.safetensors holds stay
# packed (5 trits a byte, an exponent per group; no accumulators) and on the CPU give the numbers of the
# same weights read as floats from model.safetensors (the directory without ternary.safetensors): block
# linears only, and with the embedding and an untied head ternary too ----
head -c 3000 "$TRAIN" >"$tmp/pk.txt"
for d in "$tmp/run/final" "$tmp/ck30/final"; do
    rm -rf "$tmp/dense"
    mkdir "$tmp/dense"
    cp "$d"/* "$tmp/dense/"
    rm "$tmp/dense/ternary.safetensors"
    "$ANVIL" eval ppl --model "$d" --data "$tmp/pk.txt" --seq 32 >"$tmp/pk.log" 2>&1 || bad "packed eval ppl: $(tail -n 2 "$tmp/pk.log")"
    "$ANVIL" eval ppl --model "$tmp/dense" --data "$tmp/pk.txt" --seq 32 >"$tmp/dn.log" 2>&1 || bad "dense eval ppl: $(tail -n 2 "$tmp/dn.log")"
    check "packed load says so ($(basename "$(dirname "$d")"))" grep -q "integer-ternary tensors .* kept packed" "$tmp/pk.log"
    check "packed eval ppl = float eval ppl ($(basename "$(dirname "$d")"))" cmp -s <(grep '^ppl' "$tmp/pk.log" | sed 's/ | [0-9.]* s$//') \
        <(grep '^ppl' "$tmp/dn.log" | sed 's/ | [0-9.]* s$//')
    # 5 samples: every product has more rows than TERN_MM_SMALL_N, so the packed model unpacks and multiplies
    # as the float one does: the same ids. One sample reads the trits in the product itself (fp32 sums in
    # another order than the BLAS's: checked against a double reference in test_ternary).
    for m in "$d" "$tmp/dense"; do
        "$ANVIL" generate --model "$m" --prompt "The " --max-tokens 24 --temperature 0 --samples 5 --print-ids \
            >"$tmp/g-$(basename "$m").txt" 2>/dev/null || bad "generate --model $m"
    done
    check "packed greedy ids = float greedy ids ($(basename "$(dirname "$d")"))" cmp -s "$tmp/g-final.txt" "$tmp/g-dense.txt"
    check "packed greedy ids are not empty" test "$(wc -c <"$tmp/g-final.txt")" -gt 20
    "$ANVIL" generate --model "$d" --prompt "The " --max-tokens 24 --temperature 0 --print-ids >"$tmp/g1.txt" 2>"$tmp/g1.err" ||
        bad "generate, one sample: $(cat "$tmp/g1.err")"
    check "packed, one sample (the trits read in the product): 24 ids" test "$(wc -w <"$tmp/g1.txt")" -eq 24
done
# a ternary.safetensors that does not fit its model: one line naming the file and the field or tensor
tern_edit() { # src dst python-expression-on-header h (the dict)
    python3 - "$1" "$2" "$3" <<'PY'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
exec(sys.argv[3])
t = json.dumps(h).encode()
t += b" " * (-len(t) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(t)) + t + b[8 + n:])
PY
}
for c in group:'h["__metadata__"]["group"] = "12x"' nogroup:'del h["__metadata__"]["group"]' \
    name:'h["trits.h.9.qkv.w"] = h.pop("trits.h.0.qkv.w")' size:'h["__metadata__"]["group"] = "64"'; do
    rm -rf "$tmp/badt"
    mkdir "$tmp/badt"
    cp "$tmp/run/final"/* "$tmp/badt/"
    tern_edit "$tmp/run/final/ternary.safetensors" "$tmp/badt/ternary.safetensors" "${c#*:}"
    case ${c%%:*} in
    group | nogroup) want='ternary.safetensors: metadata "group"' ;;
    name) want="ternary.safetensors: tensor trits.h.9.qkv.w" ;;
    size) want="ternary.safetensors: exp.h.0.qkv.w: expected I8" ;;
    esac
    expect_fail "packed-${c%%:*}" "$want" eval ppl --model "$tmp/badt" --data "$tmp/pk.txt" --seq 32
done

# ---- BitNet b1.58 QAT ----
cat >"$tmp/qat.yaml" <<YAML
model:
  preset: bitnet-tiny
  vocab_size: 257
  max_seq_len: 64
data:
  train: $TRAIN
  tokenizer: byte
train:
  batch_size: 4
  seq_len: 32
  steps: 6
  lr: 3e-3
  warmup_steps: 2
  log_every: 3
eval:
  every: 0
  steps: 0
checkpoint:
  every: 3
  keep: 0
out_dir: $tmp/qat
YAML
if "$ANVIL" train "$tmp/qat.yaml" >"$tmp/q.log" 2>&1; then ok; else bad "bitnet train: $(tail -n 3 "$tmp/q.log")"; fi
check "QAT checkpoint is a BitNetForCausalLM" grep -q '"BitNetForCausalLM"' "$tmp/qat/step-0000006/config.json"
check "QAT checkpoint quantizes online" grep -q '"online"' "$tmp/qat/step-0000006/config.json"
cp -r "$tmp/qat" "$tmp/qat_r"
rm -rf "$tmp/qat_r/step-0000006"
if "$ANVIL" train "$tmp/qat.yaml" --resume "$tmp/qat_r" >"$tmp/qr.log" 2>&1; then ok; else
    bad "bitnet resume: $(tail -n 3 "$tmp/qr.log")"
fi
check "QAT resumed weights identical" cmp -s "$tmp/qat/step-0000006/model.safetensors" "$tmp/qat_r/step-0000006/model.safetensors"
head -c 2000 "$TRAIN" >"$tmp/small.txt"
if "$ANVIL" quantize --model "$tmp/qat/final" --quant bitnet --out "$tmp/packed" >"$tmp/p.log" 2>&1; then ok; else
    bad "quantize --quant bitnet: $(cat "$tmp/p.log")"
fi
"$ANVIL" inspect "$tmp/packed/model.safetensors" >"$tmp/packed.txt" 2>&1
check "packed: 7 U8 linears per layer" test "$(grep -c ' U8 ' "$tmp/packed.txt")" -eq 14
check "packed: a weight_scale per linear" test "$(grep -c 'weight_scale' "$tmp/packed.txt")" -eq 14
check "packed directory loads (eval ppl)" "$ANVIL" eval ppl --model "$tmp/packed" --data "$tmp/small.txt" --seq 32 --tokenizer byte

# ---- bad input ----
expect_fail bad-optimizer "train.optimizer|adamw or ternary" train "$tmp/tern.yaml" --set train.optimizer=sgd \
    --set out_dir="$tmp/e1"
expect_fail bad-threshold "train.ternary.threshold" train "$tmp/tern.yaml" --set train.ternary.threshold=200 \
    --set out_dir="$tmp/e2"
expect_fail both-methods "choose one" train "$tmp/tern.yaml" --set model.ternary=bitnet --set out_dir="$tmp/e3"
expect_fail bad-ternary "model.ternary|none or bitnet" train "$tmp/tern.yaml" --set model.ternary=yes \
    --set out_dir="$tmp/e4"
expect_fail quantize-not-bitnet "not a BitNet model" quantize --model "$tmp/run/final" --quant bitnet --out "$tmp/x"
cli_summary
