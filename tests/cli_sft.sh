#!/usr/bin/env bash
# cli_sft.sh - instruction data (data.format: sft) end to end on the CPU:
#   - anvil tokenize --chat prints transformers' ids and mask for the fixture conversations;
#   - bad records and settings: one stderr line naming the file, the line and the field, exit 1;
#   - a byte-level model fine-tunes on prompt/completion records: every step scores exactly the
#     completion tokens (+ EOS) of its rows, the completion loss falls, and a run resumed from a
#     mid-run checkpoint gives the same losses and weights;
#   - messages records through a fixture's own chat template (llama3) train.
set -u
. "$(dirname "$0")/lib_cli.sh"

FIX=${ANVIL_FIXTURES:-tests/fixtures}/chat
PY=${PYTHON:-python3}

# ---- tokenize --chat equals the reference (the fixtures' transformers ids, one record per line) ----
for fam in chatml_qwen2 llama2 mistral_v3 gemma phi3; do
    "$PY" -c 'import json, sys
c = json.load(open(sys.argv[1]))["cases"]
ok = [x for x in c if "ids" in x and "refused" not in x]
open(sys.argv[2], "w").write("".join(json.dumps(x["row"], ensure_ascii=False) + "\n" for x in ok))
open(sys.argv[3], "w").write("".join("ids:    " + " ".join(map(str, x["ids"])) + "\n" +
                                     "scored: " + " ".join(map(str, x["mask"])) + "\n" for x in ok))' \
        "$FIX/$fam/cases.json" "$tmp/$fam.jsonl" "$tmp/$fam.want"
    "$ANVIL" tokenize --tokenizer "$FIX/$fam" --chat "$tmp/$fam.jsonl" >"$tmp/$fam.out" 2>&1
    check "tokenize --chat $fam = transformers" cmp -s <(grep -E '^(ids|scored):' "$tmp/$fam.out") "$tmp/$fam.want"
done
check "tokenize --chat names the template" grep -q "chat template gemma, bos first (recognised in" "$tmp/gemma.out"
check "tokenize --chat marks the scored text" grep -qF '[[Hi! How can I help you today?<end_of_turn>]]' "$tmp/gemma.out"

# ---- bad input ----
printf '{"prompt": "a", "completion": "b"}\n{"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]}\n' \
    >"$tmp/badrole.jsonl"
expect_fail bad-role "badrole.jsonl:2: messages[1].role: expected \"user\", \"assistant\" or \"system\", got \"bot\"" \
    tokenize --tokenizer "$FIX/llama3" --chat "$tmp/badrole.jsonl"
printf '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]}\n' >"$tmp/sys.jsonl"
expect_fail gemma-system "sys.jsonl:1: messages[0].role: gemma has no system role|System role not supported" \
    tokenize --tokenizer "$FIX/gemma" --chat "$tmp/sys.jsonl"
expect_fail no-template "sys.jsonl:1: messages: no chat template|set data.chat_template" \
    tokenize --tokenizer "$FIX/plain_sp" --chat "$tmp/sys.jsonl"
mkdir -p "$tmp/odd"
cp "$FIX/plain_sp/tokenizer.json" "$tmp/odd/"
printf '{"eos_token": "</s>", "chat_template": "{%% for m in messages %%}### {{ m.content }}{%% endfor %%}"}\n' \
    >"$tmp/odd/tokenizer_config.json"
expect_fail unknown-template "odd/tokenizer_config.json: chat_template: not one of|data.chat_template: chatml|llama2" \
    tokenize --tokenizer "$tmp/odd" --chat "$tmp/sys.jsonl"
printf '{"prompt": "a", "completion": "b"\n' >"$tmp/trunc.jsonl"
expect_fail not-json "trunc.jsonl:1: not valid JSON" tokenize --tokenizer byte --chat "$tmp/trunc.jsonl"

# ---- training: records "Q: <k>" -> one of five fixed 6-byte answers, a byte-level GPT-2 ----
answers=(" alpha" " bravo" " charl" " delta" " echoo")
for f in train val; do
    n=$([ $f = train ] && echo 400 || echo 40)
    for ((i = 0; i < n; i++)); do
        k=$(((i * 7 + ${#f}) % 5))
        printf '{"prompt": "Q: item number %d?\\nA:", "completion": "%s"}\n' "$k" "${answers[$k]}"
    done >"$tmp/$f.jsonl"
done
cat >"$tmp/sft.yaml" <<YAML
model:
  preset: gpt2-tiny
  vocab_size: 257
  max_seq_len: 32
data:
  format: sft
  train: $tmp/train.jsonl
  val: $tmp/val.jsonl
  tokenizer: byte
train:
  steps: 40
  batch_size: 8
  seq_len: 32
  lr: 1e-2
  min_lr: 1e-3
  warmup_steps: 5
  log_every: 20
eval:
  every: 40
  steps: 5
checkpoint:
  every: 20
  keep: 0
out_dir: $tmp/run
YAML
expect_fail pack "data.pack: packing is not supported yet" train "$tmp/sft.yaml" --set data.pack=true
expect_fail format "data.format: expected text or sft, got \"chat\"" train "$tmp/sft.yaml" --set data.format=chat
expect_fail template-with-text "data.chat_template: is set but data.format is text" train "$tmp/sft.yaml" \
    --set data.format=text --set data.chat_template=chatml
expect_fail bad-template-name "data.chat_template: expected one of chatml|\"alpaca\"" train "$tmp/sft.yaml" \
    --set data.chat_template=alpaca
expect_fail bad-train-on "data.train_on: expected completion or all" train "$tmp/sft.yaml" --set data.train_on=prompt
printf '{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n' >"$tmp/bad.jsonl"
expect_fail bad-record "data.train: $tmp/bad.jsonl:2: completion: missing" train "$tmp/sft.yaml" \
    --set data.train="$tmp/bad.jsonl"

if ! "$ANVIL" train "$tmp/sft.yaml" >"$tmp/train.log" 2>&1; then
    bad "sft training failed: $(tail -n 3 "$tmp/train.log")"
    cli_summary
    exit 1
fi
ok
check "the sft line counts the examples" grep -q "^sft: $tmp/train.jsonl: 400 examples, no chat template (the tokenizer has none); .* 0 truncated .* 0 dropped" "$tmp/train.log"
# every row scores its 6 answer bytes + EOS, nothing of the prompt: 8 rows x 7 = 56 per step
check "each step scores exactly the completion tokens" test "$(grep -c '"scored": 56,' "$tmp/run/metrics.jsonl")" -eq 40
L1=$(sed -n '1s/.*"loss": \([0-9.]*\).*/\1/p' "$tmp/run/metrics.jsonl")
V=$(sed -n '40s/.*"val_loss": \([0-9.]*\).*/\1/p' "$tmp/run/metrics.jsonl")
echo "sft: first loss $L1, final completion val_loss $V nats" >&2
check "the completion loss falls ($L1 -> $V)" awk -v a="$L1" -v b="$V" 'BEGIN {exit !(b > 0 && b < a / 3)}'

strip() { sed 's/"tokens_per_s": [0-9.]*, //; s/"ms_per_step": [0-9.]*, //; s/, "wall_time": [0-9.]*//' "$1"; }
cp -r "$tmp/run" "$tmp/resumed"
rm -rf "$tmp/resumed/step-0000040"
if "$ANVIL" train "$tmp/sft.yaml" --resume "$tmp/resumed" >"$tmp/resume.log" 2>&1; then ok; else
    bad "sft resume failed: $(tail -n 3 "$tmp/resume.log")"
fi
check "resumed sft losses identical" cmp -s <(strip "$tmp/run/metrics.jsonl") <(strip "$tmp/resumed/metrics.jsonl")
check "resumed sft weights identical" cmp -s "$tmp/run/step-0000040/model.safetensors" \
    "$tmp/resumed/step-0000040/model.safetensors"

# train_on: all scores every token of the rows (prompt included): more than the completions
"$ANVIL" train "$tmp/sft.yaml" --set data.train_on=all --set train.steps=2 --set out_dir="$tmp/all" \
    --set eval.steps=0 >"$tmp/all.log" 2>&1
S=$(sed -n '1s/.*"scored": \([0-9]*\).*/\1/p' "$tmp/all/metrics.jsonl")
check "train_on all scores the prompts too ($S)" awk -v s="$S" 'BEGIN {exit !(s > 56 * 2)}'

# ---- messages through the fixture's llama3 template ----
printf '{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}]}\n{"prompt": "Say hi", "completion": "Hi there."}\n' \
    >"$tmp/chat.jsonl"
if "$ANVIL" train "$tmp/sft.yaml" --set data.train="$tmp/chat.jsonl" --set data.val= --set data.tokenizer="$FIX/llama3" \
    --set model.vocab_size=1502 --set train.steps=3 --set train.batch_size=2 --set model.max_seq_len=64 \
    --set train.seq_len=64 --set out_dir="$tmp/chat" >"$tmp/chat.log" 2>&1; then ok; else
    bad "llama3 template training: $(tail -n 2 "$tmp/chat.log")"
fi
check "the run names the recognised template" grep -q "^sft: .*chat.jsonl: 2 examples, chat template llama3, bos first (recognised in" "$tmp/chat.log"

cli_summary
