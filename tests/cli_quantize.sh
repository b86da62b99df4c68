#!/usr/bin/env bash
# cli_quantize.sh - `anvil quantize` (docs/finetuning.md): the bitsandbytes 4-bit layout.
#   - the llama fixture quantized to NF4 + double quant is byte for byte the model.safetensors
#     that transformers + bitsandbytes saved from the same model (tests/fixtures/bnb/llama_nf4,
#     tools/make_bnb_fixtures.py);
#   - read back, every dequantized weight is within the 4-bit error bound of the original
#     (--check --model), for llama/gpt2/qwen2, nf4/fp4, with and without double quant;
#   - bad arguments and inputs: one stderr line naming the file, exit 1; the output directory
#     is replaced whole or left alone;
#   - where $ANVIL_PYTHON (default python3) has torch + transformers + bitsandbytes,
#     tools/check_bnb_load.py loads the output in transformers (skipped otherwise, as in CI).
set -u
. "$(dirname "$0")/lib_cli.sh"
FIX=${ANVIL_FIXTURES:-tests/fixtures}
PY=${ANVIL_PYTHON:-python3}

if [ ! -d "$FIX/llama/model" ] || [ ! -d "$FIX/bnb/llama_nf4" ]; then
    echo "skip: $FIX/llama/model or $FIX/bnb/llama_nf4 not found" >&2
    echo "0 passed, 0 failed"
    exit 0
fi

q() { "$ANVIL" quantize "$@" >"$tmp/out" 2>"$tmp/err"; }

# ---- the same bytes as transformers + bitsandbytes ----
check "quantize llama nf4" q --model "$FIX/llama/model" --quant nf4 --out "$tmp/llama4"
check "llama nf4 = transformers' save" cmp -s "$tmp/llama4/model.safetensors" "$FIX/bnb/llama_nf4/model.safetensors"
check "config has quantization_config" grep -q '"quant_method": "bitsandbytes"' "$tmp/llama4/config.json"
check "generation_config copied" test -f "$tmp/llama4/generation_config.json"
check "no temp dir left" bash -c "! ls -d '$tmp'/llama4.tmp.* 2>/dev/null"

# ---- read back: within the 4-bit bound of the originals ----
check "check llama nf4" q --check "$tmp/llama4" --model "$FIX/llama/model"
check "check reports the bound" grep -q "largest error / 4-bit bound: 0\." "$tmp/out"
for spec in "gpt2 fp4 --no-double-quant" "gpt2 nf4" "qwen2 fp4" "qwen2 nf4 --blocksize 128" "llama fp4 --blocksize 32"; do
    set -- $spec
    name=$1 type=$2
    shift 2
    out="$tmp/${name}_${type}_$#"
    check "quantize $spec" q --model "$FIX/$name/model" --quant "$type" "$@" --out "$out"
    check "check $spec" q --check "$out" --model "$FIX/$name/model"
done
check "check transformers' llama_nf4" q --check "$FIX/bnb/llama_nf4" --model "$FIX/llama/model"
check "check transformers' gpt2_fp4" q --check "$FIX/bnb/gpt2_fp4" --model "$FIX/gpt2/model"
# anvil's dequantization is a plain model; quantized again (fp4 over nf4), it is no longer
# within one 4-bit bound of the original, and --check says so
check "dequantize" q --dequantize "$tmp/llama4" --out "$tmp/plain"
check "dequantized model reads" bash -c "'$ANVIL' inspect '$tmp/plain' >/dev/null"
check "quantize the dequantized" q --model "$tmp/plain" --quant fp4 --out "$tmp/twice"
expect_fail "twice-quantized is outside the bound" "$tmp/twice|outside the 4-bit error bound" quantize --check \
    "$tmp/twice" --model "$FIX/llama/model"

# ---- bad input ----
expect_fail "no --quant" "--quant nf4|fp4 is required" quantize --model "$FIX/llama/model" --out "$tmp/x"
expect_fail "bad --quant" "--quant: expected nf4 or fp4, got \"int4\"" quantize --model "$FIX/llama/model" \
    --quant int4 --out "$tmp/x"
expect_fail "bad --blocksize" "--blocksize: 48" quantize --model "$FIX/llama/model" --quant nf4 --blocksize 48 \
    --out "$tmp/x"
expect_fail "missing model" "$tmp/nope" quantize --model "$tmp/nope" --quant nf4 --out "$tmp/x"
expect_fail "already 4-bit" "already a bitsandbytes 4-bit directory" quantize --model "$tmp/llama4" --quant nf4 \
    --out "$tmp/x"
expect_fail "check a plain model" "no quantization_config" quantize --check "$FIX/llama/model"
cp -r "$tmp/llama4" "$tmp/broken4"
size=$(stat -c %s "$tmp/broken4/model.safetensors")
truncate -s $((size - 100)) "$tmp/broken4/model.safetensors"
expect_fail "truncated 4-bit file" "$tmp/broken4/model.safetensors|past the end" quantize --check "$tmp/broken4"
sed -i 's/"bnb_4bit_quant_type": "nf4"/"bnb_4bit_quant_type": "int4"/' "$tmp/llama4/config.json"
expect_fail "bad quant type in config" "$tmp/llama4/config.json|bnb_4bit_quant_type" quantize --check "$tmp/llama4"
# a failed quantize leaves an existing output alone
mkdir -p "$tmp/keep" && echo old >"$tmp/keep/marker"
expect_fail "failure keeps the old output" "$tmp/nope" quantize --model "$tmp/nope" --quant nf4 --out "$tmp/keep"
check "old output intact" grep -q old "$tmp/keep/marker"
# a successful one replaces it whole
check "replace output" q --model "$FIX/llama/model" --quant nf4 --out "$tmp/keep"
check "old file gone" test ! -e "$tmp/keep/marker"

# ---- transformers + bitsandbytes load it ----
if "$PY" -c "import torch, transformers, bitsandbytes" >/dev/null 2>&1; then
    for d in "$tmp/keep" "$tmp/gpt2_fp4_1" "$tmp/qwen2_fp4_0"; do
        if "$PY" tools/check_bnb_load.py "$d" --anvil "$ANVIL" --device cpu >"$tmp/py" 2>&1; then ok; else
            bad "check_bnb_load $d: $(tail -3 "$tmp/py")"
        fi
    done
else
    echo "skip: $PY has no torch/transformers/bitsandbytes; transformers load not checked" >&2
fi

cli_summary
