#!/usr/bin/env bash
# cli_data.sh - `anvil tokenize` and `anvil prepare` end to end.
# References: ../shared/data/gpt2/*.gpt2.u32 (independent GPT-2 ids); byte
# tokenizer ids are the bytes themselves. Prints "N passed, N failed" last.
set -u
ANVIL=${ANVIL:-./anvil}
[[ "$ANVIL" == /* ]] || ANVIL="$(pwd)/$ANVIL"
SHARED=${ANVIL_SHARED_DATA:-../shared/data}
T=$(mktemp -d /tmp/anvil_cli_data.XXXXXX)
trap 'rm -rf "$T"' EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }
check() { if eval "$1"; then ok; else bad "$2"; fi; }
# expect_error "what" "message substring" cmd...: exit code 1, one line naming the thing
expect_error() {
    local what=$1 sub=$2
    shift 2
    local err rc
    err=$("$@" 2>&1 >/dev/null)
    rc=$?
    if [ $rc -eq 1 ] && [[ "$err" == *"$sub"* ]] && [ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ]; then ok
    else bad "$what: rc=$rc, stderr: $err"; fi
}
# tokens of a shard (after its 256-byte header) as one number per line
shard_tokens() {
    local w
    w=$(od -An -tu4 -j16 -N4 "$1" | tr -d ' ')
    od -An -tu"$w" -j256 -v "$1" | tr -s ' ' '\n' | sed '/^$/d'
}
no_temp_files() { [ -z "$(find "$1" -name '*.tmp*' 2>/dev/null)" ]; }

# ---- tokenize -------------------------------------------------------------
check '[ "$($ANVIL tokenize --tokenizer byte --text "hi<|endoftext|>")" = "104 105 256" ]' "byte tokenize"
check '[ "$($ANVIL tokenize --tokenizer byte --decode --text "104 105 256")" = "hi<|endoftext|>" ]' "byte decode"
ids=$($ANVIL tokenize --tokenizer gpt2 --text "Hello world<|endoftext|>")
check '[ "${ids##* }" = "50256" ]' "gpt2 special id"
check '[ "$($ANVIL tokenize --tokenizer gpt2 --decode --text "$ids")" = "Hello world<|endoftext|>" ]' "gpt2 decode"
if [ -f "$SHARED/gpt2/tricky.gpt2.u32" ]; then
    for f in tricky sample; do
        $ANVIL tokenize --tokenizer gpt2 --file "$SHARED/gpt2/$f.txt" --out "$T/$f.u32"
        check 'cmp -s "$T/$f.u32" "$SHARED/gpt2/$f.gpt2.u32"' "tokenize --out $f"
        $ANVIL tokenize --tokenizer gpt2 --decode --file "$SHARED/gpt2/$f.gpt2.u32" --out "$T/$f.txt"
        check 'cmp -s "$T/$f.txt" "$SHARED/gpt2/$f.txt"' "tokenize --decode $f"
    done
    # printed ids = the reference
    check '[ "$($ANVIL tokenize --tokenizer gpt2 --file "$SHARED/gpt2/tricky.txt")" = "$(od -An -tu4 -v "$SHARED/gpt2/tricky.gpt2.u32" | tr -s " " "\n" | sed "/^$/d" | paste -sd " ")" ]' "printed ids"
    # from any working directory (the vocabulary is inside the binary)
    check '[ "$(cd / && $ANVIL tokenize --tokenizer gpt2 --text "x y")" = "$($ANVIL tokenize --tokenizer gpt2 --text "x y")" ]' "cwd independent"
else
    echo "skip gpt2 reference checks: $SHARED absent" >&2
fi
printf 'ok \xff\xfe bad' >"$T/bad.txt"
expect_error "invalid utf-8" "bad.txt: invalid UTF-8 at byte offset 3" $ANVIL tokenize --tokenizer gpt2 --file "$T/bad.txt"
expect_error "missing tokenizer" "nope.json" $ANVIL tokenize --tokenizer "$T/nope.json" --text hi
echo '{"model": ' >"$T/broken.json"
expect_error "broken tokenizer.json" "broken.json" $ANVIL tokenize --tokenizer "$T/broken.json" --text hi
expect_error "bad id" "outside the vocabulary" $ANVIL tokenize --tokenizer byte --decode --text "1 2 999"
expect_error "bad id text" "expected a token id" $ANVIL tokenize --tokenizer byte --decode --text "1 x"

# ---- prepare: reference ids, threads, shard sizes --------------------------
if [ -f "$SHARED/gpt2/sample.gpt2.u32" ]; then
    # a whole file is one document: its ids are sample.gpt2.u32, then <|endoftext|>
    # (1 MB is cut into chunks at safe newlines: the ids must not change)
    for th in 1 2; do
        $ANVIL prepare --tokenizer gpt2 --input "$SHARED/gpt2/sample.txt" --out "$T/s$th" --threads $th --shard-tokens 100000 2>"$T/log"
        check '[ $? -eq 0 ] && grep -q "^prepare: 1 files, 1 documents" "$T/log"' "prepare summary line ($th threads)"
        cat "$T"/s$th/train/shard_*.tok >/dev/null
        for f in "$T"/s$th/train/shard_*.tok; do shard_tokens "$f"; done >"$T/s$th.ids"
        { od -An -tu4 -v "$SHARED/gpt2/sample.gpt2.u32" | tr -s ' ' '\n' | sed '/^$/d'; echo 50256; } >"$T/ref.ids"
        check 'cmp -s "$T/s$th.ids" "$T/ref.ids"' "prepare ids = reference ($th threads)"
    done
    check 'cmp -s "$T/s1/train/shard_000001.tok" "$T/s2/train/shard_000001.tok"' "1 vs 2 threads identical"
    check '[ "$(ls "$T"/s1/train | wc -l)" -eq 3 ]' "240589 tokens -> 3 shards of 100000"
    check '[ "$(shard_tokens "$T/s1/train/shard_000000.tok" | wc -l)" -eq 100000 ]' "fixed shard size"
    check '[ "$(od -An -tu2 -j16 -N2 "$T/s1/train/shard_000000.tok" | tr -d " ")" -eq 2 ]' "uint16 for gpt2"
    check 'grep -q "\"tokenizer\": \"gpt2\"" "$T/s1/manifest.json"' "manifest tokenizer"
    # a LLaMA-3 style tokenizer.json (BOS added, the hand-written split): the cut
    # chunks give the ids of encoding the whole file, between BOS and EOS
    L3=tests/fixtures/tokenizers/llama3_style
    if [ -d "$L3" ]; then
        $ANVIL prepare --tokenizer "$L3" --input "$SHARED/gpt2/sample.txt" --out "$T/l3s" --threads 2 2>/dev/null
        $ANVIL tokenize --tokenizer "$L3" --file "$SHARED/gpt2/sample.txt" --out "$T/l3.u32"
        bos=$(grep '"bos_id"' "$T/l3s/manifest.json" | tr -dc 0-9)
        eos=$(grep '"eos_id"' "$T/l3s/manifest.json" | tr -dc 0-9)
        { echo "$bos"; od -An -tu4 -v "$T/l3.u32" | tr -s ' ' '\n' | sed '/^$/d'; echo "$eos"; } >"$T/l3.want"
        shard_tokens "$T/l3s/train/shard_000000.tok" >"$T/l3.got"
        check 'cmp -s "$T/l3.got" "$T/l3.want"' "llama3-style prepare = BOS + ids + EOS"
    fi
    # lines as documents, with a validation split; deterministic and complete
    $ANVIL prepare --tokenizer gpt2 --input "$SHARED/gpt2/sample.txt" --out "$T/l1" --docs line --val-fraction 0.1 --threads 1 2>/dev/null
    $ANVIL prepare --tokenizer gpt2 --input "$SHARED/gpt2/sample.txt" --out "$T/l2" --docs line --val-fraction 0.1 --threads 2 2>/dev/null
    check 'cmp -s "$T/l1/train/shard_000000.tok" "$T/l2/train/shard_000000.tok" && cmp -s "$T/l1/val/shard_000000.tok" "$T/l2/val/shard_000000.tok"' "line docs: threads identical"
    ndocs=$(grep -c . "$SHARED/gpt2/sample.txt")
    neos=$( { shard_tokens "$T/l1/train/shard_000000.tok"; shard_tokens "$T/l1/val/shard_000000.tok"; } | grep -cx 50256)
    check '[ "$neos" -eq "$ndocs" ]' "one <|endoftext|> per document ($neos vs $ndocs)"
    nval=$(shard_tokens "$T/l1/val/shard_000000.tok" | grep -cx 50256)
    check '[ "$nval" -gt $((ndocs / 20)) ] && [ "$nval" -lt $((ndocs * 3 / 20)) ]' "val fraction ~0.1 ($nval of $ndocs)"
    $ANVIL prepare --tokenizer gpt2 --input "$SHARED/gpt2/sample.txt" --out "$T/l3" --docs line --val-fraction 0.1 --seed 7 2>/dev/null
    check '! cmp -s "$T/l1/val/shard_000000.tok" "$T/l3/val/shard_000000.tok"' "seed changes the split"
fi

# ---- prepare: formats, with the byte tokenizer (ids = bytes) ----------------
mkdir -p "$T/in/sub/deeper" "$T/in/.hidden"
printf 'alpha\n' >"$T/in/a.txt"
printf 'beta' | gzip >"$T/in/sub/b.txt.gz"
printf '{"text": "gamma"}\n\n{"text": "d\\u00e9lta", "id": 3}\n' >"$T/in/sub/deeper/c.jsonl"
printf 'ignored' >"$T/in/sub/notes.bin"
printf 'hidden' >"$T/in/.hidden/h.txt"
$ANVIL prepare --tokenizer byte --input "$T/in" --out "$T/fmt" 2>"$T/log"
check '[ $? -eq 0 ]' "prepare dir"
got=$(shard_tokens "$T/fmt/train/shard_000000.tok" | paste -sd ' ')
want="97 108 112 104 97 10 256 98 101 116 97 256 103 97 109 109 97 256 100 195 169 108 116 97 256"
check '[ "$got" = "$want" ]' "dir recursion, gzip, jsonl, order (got: $got)"
check 'grep -q "4 documents" "$T/log"' "document count"
# blank-line paragraphs
printf 'p1 line1\np1 line2\n\n  \np2\r\n\n' >"$T/para.txt"
$ANVIL prepare --tokenizer byte --input "$T/para.txt" --out "$T/para" --docs blank 2>/dev/null
got=$(shard_tokens "$T/para/train/shard_000000.tok" | paste -sd ' ')
want="112 49 32 108 105 110 101 49 10 112 49 32 108 105 110 101 50 256 112 50 256"
check '[ "$got" = "$want" ]' "blank-line documents (got: $got)"
# the loader reads prepare's output
check '[ -f "$T/fmt/manifest.json" ] && no_temp_files "$T/fmt"' "manifest, no temp files"

# ---- prepare: bad input -----------------------------------------------------
printf '{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n' >"$T/badjson.jsonl"
expect_error "jsonl not json" "badjson.jsonl:3: not valid JSON" $ANVIL prepare --tokenizer byte --input "$T/badjson.jsonl" --out "$T/e1"
printf '{"text": "ok"}\n{"body": "x"}\n' >"$T/nofield.jsonl"
expect_error "jsonl missing field" "nofield.jsonl:2: no \"text\" field" $ANVIL prepare --tokenizer byte --input "$T/nofield.jsonl" --out "$T/e2"
expect_error "jsonl other field" "nofield.jsonl:1: no \"body\" field" $ANVIL prepare --tokenizer byte --input "$T/nofield.jsonl" --out "$T/e2b" --jsonl-field body
printf '{"text": 5}\n' >"$T/num.jsonl"
expect_error "jsonl not string" "num.jsonl:1: field \"text\" is not a string" $ANVIL prepare --tokenizer byte --input "$T/num.jsonl" --out "$T/e3"
expect_error "invalid utf-8" "bad.txt: invalid UTF-8 at byte offset 3" $ANVIL prepare --tokenizer gpt2 --input "$T/bad.txt" --out "$T/e4"
printf 'x' >"$T/notgz.txt.gz"
expect_error "bad gzip" "notgz.txt.gz" $ANVIL prepare --tokenizer byte --input "$T/notgz.txt.gz" --out "$T/e5"
head -c 40 "$T/in/sub/b.txt.gz" >"$T/trunc.txt.gz"
printf 'some longer text that compresses %.0s' $(seq 1 50) | gzip | head -c 30 >"$T/trunc.txt.gz"
expect_error "truncated gzip" "trunc.txt.gz" $ANVIL prepare --tokenizer byte --input "$T/trunc.txt.gz" --out "$T/e5b"
expect_error "missing input" "missing.txt" $ANVIL prepare --tokenizer byte --input "$T/missing.txt" --out "$T/e6"
expect_error "bad tokenizer" "broken.json" $ANVIL prepare --tokenizer "$T/broken.json" --input "$T/in" --out "$T/e7"
# an error after some shards were written leaves no shard of the run behind
{ for i in $(seq 1 200); do echo '{"text": "0123456789"}'; done; echo 'not json'; } >"$T/late.jsonl"
expect_error "late error" "late.jsonl:201" $ANVIL prepare --tokenizer byte --input "$T/late.jsonl" --out "$T/e8" --shard-tokens 100
check '[ ! -e "$T/e8" ]' "a failed prepare leaves nothing (not even its directory)"
# failed commands create nothing (issue 10 item 6): a bad tokenizer, a bad JSONL line, a binary
# file, an empty input; a directory that existed keeps only what it held
for e in e1 e2 e3 e4 e5 e5b e6 e7; do check '[ ! -e "$T/$e" ]' "failed prepare left $e behind"; done
expect_error "bad tokenizer name" "gpt3" $ANVIL prepare --tokenizer gpt3 --input "$T/in" --out "$T/deep/e9"
check '[ ! -e "$T/deep" ]' "bad tokenizer: no directories created"
head -c 3000 /bin/sh >"$T/binary.dat"
expect_error "binary file" "binary.dat: invalid UTF-8" $ANVIL prepare --tokenizer byte --input "$T/binary.dat" --out "$T/e10"
check '[ ! -e "$T/e10" ]' "binary file: nothing created"
mkdir -p "$T/keep" && echo note >"$T/keep/README"
expect_error "late error in an existing dir" "late.jsonl:201" $ANVIL prepare --tokenizer byte --input "$T/late.jsonl" --out "$T/keep" --shard-tokens 100
check '[ "$(ls -A "$T/keep")" = "README" ]' "existing directory left as it was"
# an empty input is refused, not prepared into 0 tokens (training then had no train/)
: >"$T/empty.txt"
expect_error "empty input" "empty.txt: no text to prepare" $ANVIL prepare --tokenizer byte --input "$T/empty.txt" --out "$T/e11"
printf '\n\n  \n' >"$T/blank.txt"
expect_error "blank input" "no text to prepare" $ANVIL prepare --tokenizer byte --input "$T/blank.txt" --out "$T/e12" --docs blank
check '[ ! -e "$T/e11" ] && [ ! -e "$T/e12" ]' "empty input: nothing created"
# --val-fraction with one document (--docs file): refused with the fix, not an empty val/ (item 4)
printf 'one\n\ntwo\n\nthree\n\nfour\n\nfive\n\nsix\n\nseven\n\neight\n' >"$T/eight.txt"
expect_error "val fraction, one document" "--val-fraction 0.1: none of the 1 document went to validation; with --docs file every file is one document: use --docs blank" \
    $ANVIL prepare --tokenizer byte --input "$T/eight.txt" --out "$T/e13" --val-fraction 0.1
check '[ ! -e "$T/e13" ]' "val fraction refused: nothing created"
$ANVIL prepare --tokenizer byte --input "$T/eight.txt" --out "$T/v8" --val-fraction 0.5 --docs blank 2>/dev/null
check '[ -s "$T/v8/val/shard_000000.tok" ] && [ -s "$T/v8/train/shard_000000.tok" ]' "--docs blank gives both splits"
expect_error "val fraction, all to val" "none to training" \
    $ANVIL prepare --tokenizer byte --input "$T/eight.txt" --out "$T/e14" --val-fraction 0.999999 --docs blank
# .json inputs are read as JSON by content, not as text (item 5)
printf '[{"text": "ab"}, {"text": "c", "id": 2}, "de"]' >"$T/arr.json"
$ANVIL prepare --tokenizer byte --input "$T/arr.json" --out "$T/ja" --jsonl-field text 2>"$T/log"
got=$(shard_tokens "$T/ja/train/shard_000000.tok" | paste -sd ' ')
check '[ "$got" = "97 98 256 99 256 100 101 256" ]' "a JSON array: one document per element (got: $got)"
printf '{"body": "xy"}\n{"body": "z"}\n' >"$T/lines.json"
$ANVIL prepare --tokenizer byte --input "$T/lines.json" --out "$T/jl" --jsonl-field body 2>/dev/null
got=$(shard_tokens "$T/jl/train/shard_000000.tok" | paste -sd ' ')
check '[ "$got" = "120 121 256 122 256" ]' "JSONL content in a .json file (got: $got)"
printf '{\n  "text": "pretty"\n}\n' >"$T/pretty.json"
expect_error "pretty-printed object" "pretty.json:1: not valid JSON" $ANVIL prepare --tokenizer byte --input "$T/pretty.json" --out "$T/e15"
printf '[{"text": "a"}, {"txt": "b"}]' >"$T/arrbad.json"
expect_error "array element without the field" 'arrbad.json: [1]: no "text" field' $ANVIL prepare --tokenizer byte --input "$T/arrbad.json" --out "$T/e16"
expect_error "--jsonl-field with text inputs" "--jsonl-field body: no input is JSON" $ANVIL prepare --tokenizer byte --input "$T/eight.txt" --out "$T/e17" --jsonl-field body
check '[ ! -e "$T/e15" ] && [ ! -e "$T/e16" ] && [ ! -e "$T/e17" ]' "json errors: nothing created"
# interrupted (SIGINT) in the middle of writing shards: no temp file, every shard complete
if [ -f "$SHARED/gpt2/sample.txt" ]; then
    for i in $(seq 1 30); do cat "$SHARED/gpt2/sample.txt"; done >"$T/big.txt"
    $ANVIL prepare --tokenizer gpt2 --input "$T/big.txt" --out "$T/int" --shard-tokens 5000 --threads 2 2>/dev/null &
    pid=$!
    for i in $(seq 1 200); do # until the first shards are written (into the run's staging directory)
        [ -n "$(ls "$T"/int/.prepare.*/train 2>/dev/null)" ] && break
        sleep 0.02
    done
    kill -INT $pid 2>/dev/null
    wait $pid
    rc=$?
    # interrupted: killed by the signal (130), and the run removed everything it made
    check '[ $rc -eq 130 ] && [ ! -e "$T/int" ]' "SIGINT leaves nothing behind (rc $rc: $(ls -A "$T/int" 2>/dev/null | head -3))"
fi
# an earlier run's output is not mixed with a new one
expect_error "existing output" "already holds prepared data" $ANVIL prepare --tokenizer byte --input "$T/in" --out "$T/fmt"
$ANVIL prepare --tokenizer byte --input "$T/in/a.txt" --out "$T/fmt" --overwrite --shard-tokens 3 2>/dev/null
check '[ "$(ls "$T/fmt/train" | wc -l)" -eq 3 ]' "--overwrite replaces"

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
