#!/usr/bin/env bash
# cli_io.sh - `anvil inspect` on good and bad model files: every bad input is
# one stderr line "anvil: <file>: <what>" naming the file (and field), exit 1.
# Uses $ANVIL (the binary) and tests/fixtures; the transformers round trip runs
# only where python3 has torch + transformers (skipped otherwise, e.g. in CI).
set -u
. "$(dirname "$0")/lib_cli.sh"
FIX=${ANVIL_FIXTURES:-tests/fixtures}

# A copy of a fixture model directory to break.
copy_model() {
    rm -rf "$tmp/$2"
    cp -r "$FIX/$1/model" "$tmp/$2"
}

# Raw safetensors: 8-byte little-endian header length, header, N zero data bytes.
write_st() {
    local path=$1 header=$2 ndata=$3
    local len=${#header}
    printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x\\x00\\x00\\x00\\x00' $((len & 255)) $(((len >> 8) & 255)) \
        $(((len >> 16) & 255)) $(((len >> 24) & 255)))" >"$path"
    printf '%s' "$header" >>"$path"
    head -c "$ndata" /dev/zero >>"$path"
}

if [ ! -d "$FIX/gpt2/model" ]; then
    echo "skip: $FIX/gpt2/model not found" >&2
    echo "0 passed, 0 failed"
    exit 0
fi

# ---- bad input ----
expect_fail "missing path" "$tmp/nope|no such file" inspect "$tmp/nope"
mkdir -p "$tmp/empty"
expect_fail "no config.json" "$tmp/empty/config.json" inspect "$tmp/empty"

copy_model gpt2 trunc
size=$(stat -c %s "$tmp/trunc/model.safetensors")
truncate -s $((size / 2)) "$tmp/trunc/model.safetensors"
expect_fail "truncated model.safetensors" "$tmp/trunc/model.safetensors|past the end" inspect "$tmp/trunc"
truncate -s 5 "$tmp/trunc/model.safetensors"
expect_fail "truncated to 5 bytes" "$tmp/trunc/model.safetensors|truncated" inspect "$tmp/trunc"
head -c 100 "$FIX/gpt2/model/model.safetensors" >"$tmp/trunc/model.safetensors"
expect_fail "truncated inside the header" "$tmp/trunc/model.safetensors|truncated" inspect "$tmp/trunc"

write_st "$tmp/past.safetensors" '{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}' 8
expect_fail "offsets past the end (file)" "$tmp/past.safetensors|w: data_offsets|past the end" \
    inspect "$tmp/past.safetensors"
copy_model gpt2 past
write_st "$tmp/past/model.safetensors" \
    '{"transformer.wte.weight":{"dtype":"F32","shape":[96,64],"data_offsets":[0,24576]}}' 100
expect_fail "offsets past the end (model)" "$tmp/past/model.safetensors|transformer.wte.weight|past the end" \
    inspect "$tmp/past"
write_st "$tmp/overlap.safetensors" \
    '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}' 12
expect_fail "overlapping tensors" "$tmp/overlap.safetensors|overlap" inspect "$tmp/overlap.safetensors"
write_st "$tmp/json.safetensors" '{"a":{"dtype":"F32",' 0
expect_fail "broken header JSON" "$tmp/json.safetensors|invalid JSON" inspect "$tmp/json.safetensors"

copy_model gpt2 wrongtype
sed -i 's/"n_layer": 2/"n_layer": "two"/' "$tmp/wrongtype/config.json"
expect_fail "config.json wrong type" "$tmp/wrongtype/config.json: n_layer: expected an integer, got \"two\"" \
    inspect "$tmp/wrongtype"
copy_model llama wrongtype2
sed -i 's/"rms_norm_eps": [0-9.e-]*/"rms_norm_eps": [1]/' "$tmp/wrongtype2/config.json"
expect_fail "config.json wrong type (llama)" "$tmp/wrongtype2/config.json: rms_norm_eps: expected a number" \
    inspect "$tmp/wrongtype2"
copy_model gpt2 badjson
echo '{"model_type": "gpt2",' >"$tmp/badjson/config.json"
expect_fail "config.json syntax" "$tmp/badjson/config.json|invalid JSON" inspect "$tmp/badjson"

copy_model gpt2 arch
sed -i 's/GPT2LMHeadModel/T5ForConditionalGeneration/' "$tmp/arch/config.json"
expect_fail "unknown architecture" "$tmp/arch/config.json: architectures: unsupported \"T5ForConditionalGeneration\"" \
    inspect "$tmp/arch"
copy_model llama rope
sed -i 's/"rope_type": "default"/"rope_type": "yarn"/' "$tmp/rope/config.json"
expect_fail "unsupported rope_type" "$tmp/rope/config.json: rope_parameters.rope_type: unsupported \"yarn\"" \
    inspect "$tmp/rope"

copy_model llama missing
python_free_rename() { # rename one tensor in place (same length keeps offsets valid)
    sed -i "s/$2/$3/" "$1"
}
python_free_rename "$tmp/missing/model.safetensors" "model.norm.weight" "model.norm.weighX"
expect_fail "missing tensor" "$tmp/missing/model.safetensors: model.norm.weight: missing" inspect "$tmp/missing"

expect_fail "bad option" "unknown option" inspect "$FIX/gpt2/model" --frobnicate
expect_fail "bad dtype" "--dtype" inspect "$FIX/gpt2/model" --save "$tmp/x" --dtype f8

# ---- success ----
for m in gpt2 llama qwen2; do
    if "$ANVIL" inspect "$FIX/$m/model" >"$tmp/out" 2>"$tmp/err" && grep -q "parameters" "$tmp/out" &&
        [ ! -s "$tmp/err" ]; then ok; else bad "inspect $m: $(cat "$tmp/err")"; fi
done
grep -q "GPT2LMHeadModel" <("$ANVIL" inspect "$FIX/gpt2/model") && ok || bad "inspect gpt2: class"
grep -q "parameters   54624" <("$ANVIL" inspect "$FIX/gpt2/model") && ok || bad "inspect gpt2: count"
grep -q "kv heads 2" <("$ANVIL" inspect "$FIX/llama/model") && ok || bad "inspect llama: GQA"
grep -q "3 files" <("$ANVIL" inspect "$FIX/qwen2/model_bf16_sharded") && ok || bad "inspect sharded"
out=$("$ANVIL" inspect "$FIX/gpt2/reference.safetensors")
if [ $? -eq 0 ] && echo "$out" | grep -qE '^input_ids +I32 +\(2, 16\)' &&
    echo "$out" | grep -q "metadata transformers"; then ok; else bad "inspect reference.safetensors: $out"; fi

# ---- save, re-read, and (where transformers is installed) load in transformers ----
have_tf=0
if python3 -c "import torch, transformers" >/dev/null 2>&1; then have_tf=1; else
    echo "skip: python3 has no torch/transformers; transformers round trip not checked" >&2
fi
for dt in f32 bf16; do
    pairs=()
    for m in gpt2 llama qwen2; do
        out_dir="$tmp/saved_${m}_$dt"
        if ! "$ANVIL" inspect "$FIX/$m/model" --save "$out_dir" --dtype $dt >/dev/null 2>"$tmp/err"; then
            bad "save $m $dt: $(cat "$tmp/err")"
            continue
        fi
        leftover=$(ls -d "$out_dir".tmp.* 2>/dev/null | wc -l)
        if "$ANVIL" inspect "$out_dir" >/dev/null 2>&1 && [ "$leftover" -eq 0 ]; then ok; else bad "reinspect $m $dt"; fi
        pairs+=("$out_dir" "$FIX/$m/model")
    done
    # fp32 must give the same logits; bf16 within bf16 rounding of the weights
    tol=1e-6
    [ $dt = bf16 ] && tol=5e-2
    if [ $have_tf -eq 1 ] && [ ${#pairs[@]} -gt 0 ]; then
        if python3 tools/check_roundtrip.py "${pairs[@]}" --tol $tol >"$tmp/py" 2>&1; then ok; else
            bad "transformers round trip ($dt): $(grep -v 'Loading weights' "$tmp/py" | tail -4)"
        fi
    fi
done
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
