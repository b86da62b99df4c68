#!/usr/bin/env bash
# cli_moe.sh - mixture-of-experts training end to end on the CPU (docs/moe.md):
#   - a tiny Mixtral-style model (moe-tiny, byte tokens) trains a few steps on real text; every line
#     of metrics.jsonl has aux_loss, z_loss and per MoE layer expert_load (shares summing to 1),
#     load_balance and routing_entropy_bits within their ranges; the end of the run prints the
#     per-expert load table with bars; anvil report reads the run;
#   - the final checkpoint is a MixtralForCausalLM directory that anvil eval reads back;
#   - recompute 2 gives the same losses as recompute 0; a resumed run equals an uninterrupted one;
#     2 data-parallel ranks equal 2-fold accumulation (routing losses off); a Qwen2-MoE-style model (every 2nd layer,
#     a shared expert) trains too;
#   - LoRA: all-linear adapts attention (a note says the routed experts are left out); adapters on the experts
#     train, the checkpoint is a PEFT directory with the experts' fused keys (target_parameters), resume is exact,
#     recompute 2 = 0, anvil merge into the experts gives the adapted loss, PEFT loads it (where installed),
#     QLoRA experts take adapters, lora.init reads PEFT's own MoE adapter; the router, absent modules and
#     dropout on the experts are refused;
#   - bad model.moe.* keys are one clear line each.
set -u
. "$(dirname "$0")/lib_cli.sh"

TRAIN=examples/sentences-train.txt
if [ ! -f "$TRAIN" ]; then
    echo "skip: $TRAIN not found (run from the repository root)" >&2
    echo "0 passed, 0 failed"
    exit 0
fi
head -c 30000 "$TRAIN" >"$tmp/train.txt"

cat >"$tmp/moe.yaml" <<YAML
model:
  preset: moe-tiny
  vocab_size: 257
  max_seq_len: 32
  d_model: 32
  n_head: 4
  n_kv_head: 2
  moe:
    d_ff: 48
data:
  train: $tmp/train.txt
  tokenizer: byte
train:
  steps: 8
  batch_size: 4
  seq_len: 32
  lr: 3e-3
  warmup_steps: 2
eval:
  steps: 0
out_dir: $tmp/run
YAML

if ! "$ANVIL" train "$tmp/moe.yaml" >"$tmp/train.log" 2>&1; then
    bad "MoE training failed: $(tail -n 3 "$tmp/train.log")"
    cli_summary
    exit 1
fi
ok
check "8 metrics lines" [ "$(wc -l <"$tmp/run/metrics.jsonl")" -eq 8 ]
# every line: the routing keys with sane values (2 MoE layers x 4 experts)
check "routing metrics" python3 - "$tmp/run/metrics.jsonl" <<'PY'
import json, math, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
for d in lines:
    assert 0 < d["aux_loss"] <= 4 * 2, d["aux_loss"]  # E * sum_e f_e P_e with sum f = k = 2, sum P = 1
    assert d["z_loss"] > 0
    el, lb, en = d["expert_load"], d["load_balance"], d["routing_entropy_bits"]
    assert len(el) == 2 and all(len(r) == 4 for r in el) and len(lb) == 2 and len(en) == 2
    for r, b, h in zip(el, lb, en):
        assert abs(sum(r) - 1) < 1e-3 and min(r) >= 0
        assert abs(b - (1 / 4) / max(r)) < 1e-3, (b, r)
        assert abs(h + sum(p * math.log2(p) for p in r if p > 0)) < 1e-3 and 0 <= h <= 2 + 1e-9
PY
check "load table printed" grep -q "expert load over steps 1-8" "$tmp/train.log"
check "load table bars" grep -q "expert   0: .*%.*█" "$tmp/train.log"
check "balance line" grep -q "layer 1: load balance factor" "$tmp/train.log"
check "final is Mixtral" grep -q '"MixtralForCausalLM"' "$tmp/run/final/config.json"
check "final has experts" grep -q '"num_local_experts": 4' "$tmp/run/final/config.json"
check "eval reads it back" "$ANVIL" eval ppl --model "$tmp/run/final" --data "$tmp/train.txt" --tokenizer byte \
    --seq 32 --batch 2
check "report reads the run" "$ANVIL" report "$tmp/run" --out "$tmp/report"
check "expert-load figure" ls "$tmp/report"/expert_load_* 

# recompute 2 recomputes the routing and experts: the same losses
"$ANVIL" train "$tmp/moe.yaml" --set train.steps=3 --set train.recompute=2 --set out_dir="$tmp/rc2" >/dev/null 2>&1
"$ANVIL" train "$tmp/moe.yaml" --set train.steps=3 --set out_dir="$tmp/rc0" >/dev/null 2>&1
check "recompute 2 = recompute 0" cmp -s <(cut -d, -f2 "$tmp/rc0/metrics.jsonl") <(cut -d, -f2 "$tmp/rc2/metrics.jsonl")

# resume from a mid-run checkpoint: the same losses and routing statistics as the uninterrupted run
"$ANVIL" train "$tmp/moe.yaml" --set train.steps=4 --set checkpoint.every=2 --set out_dir="$tmp/full" >/dev/null 2>&1
"$ANVIL" train "$tmp/moe.yaml" --set train.steps=2 --set checkpoint.every=2 --set out_dir="$tmp/half" >/dev/null 2>&1
"$ANVIL" train --resume "$tmp/half" --set train.steps=4 >/dev/null 2>&1
strip_speed() { sed 's/"tokens_per_s.*"peak_mem_gib": [0-9.]*//' "$1"; }
check "resume = uninterrupted (loss, aux, z, loads)" cmp -s <(strip_speed "$tmp/full/metrics.jsonl") <(strip_speed "$tmp/half/metrics.jsonl")

# data parallel (2 CPU ranks) = 2-fold accumulation when the routing losses are off (with them on,
# aux depends on which rows share a forward: rank r reads windows r, r + 2, ..., a micro-batch
# consecutive ones: 6e-3 apart after 3 steps here, 2e-6 without them); a coefficient of 0 is written
# to config.json and read back
off="--set model.moe.aux_loss_coef=0 --set model.moe.z_loss_coef=0 --set train.steps=3 --set train.batch_size=2"
if timeout 120 "$ANVIL" launch --nproc 2 --device cpu -- train "$tmp/moe.yaml" $off --set out_dir="$tmp/dp2" >"$tmp/dp2.log" 2>&1 &&
    "$ANVIL" train "$tmp/moe.yaml" $off --set train.tokens_per_step=128 --set out_dir="$tmp/acc2" >/dev/null 2>&1; then
    "$ANVIL" inspect --diff "$tmp/dp2/final" "$tmp/acc2/final" --tol 1e-4 >"$tmp/dpdiff.log" 2>&1 && ok || bad "2 ranks = 2 micro-batches: $(cat "$tmp/dpdiff.log")"
else
    bad "data-parallel MoE run failed: $(tail -n 2 "$tmp/dp2.log")"
fi

# Qwen2-MoE style: every 2nd layer, a shared expert, q/k/v biases
if "$ANVIL" train "$tmp/moe.yaml" --set train.steps=3 --set model.moe.every=2 --set model.moe.shared_experts=1 \
    --set model.qkv_bias=true --set model.moe.norm_topk_prob=false --set out_dir="$tmp/qwen" >"$tmp/qwen.log" 2>&1; then
    ok
    check "qwen2_moe final" grep -q '"Qwen2MoeForCausalLM"' "$tmp/qwen/final/config.json"
    check "one MoE layer logged" python3 -c "import json,sys; d=json.loads(open(sys.argv[1]).readline()); assert len(d['expert_load'])==1" "$tmp/qwen/metrics.jsonl"
else
    bad "qwen2-moe-style training failed: $(tail -n 3 "$tmp/qwen.log")"
fi

# LoRA on the MoE model (docs/moe.md "Adapters on the experts"): all-linear adapts attention only (the
# routed experts are parameters, not linear modules) with a note; experts by name
base="--set model.init=$tmp/run/final --set model.preset= --set model.vocab_size=0 --set model.max_seq_len=0
    --set model.d_model=0 --set model.n_head=0 --set model.n_kv_head=0 --set model.moe.d_ff=0 --set lora.r=4"
if "$ANVIL" train "$tmp/moe.yaml" --set train.steps=2 $base --set out_dir="$tmp/lora" >"$tmp/lora.log" 2>&1; then
    ok
    check "all-linear note" grep -q "not the routed experts" "$tmp/lora.log"
    check "adapter config names attention only" python3 -c "import json,sys; d=json.load(open(sys.argv[1])); t=d['target_modules']; assert set(t) <= {'q_proj','k_proj','v_proj','o_proj'}, t; assert 'target_parameters' not in d" "$tmp/lora/final/adapter_config.json"
else
    bad "LoRA on the MoE model failed: $(tail -n 3 "$tmp/lora.log")"
fi
# safetensors keys and shapes with the standard library: the 8-byte header length, then the JSON header
st_keys() { python3 -c "import json,struct,sys; f=open(sys.argv[1],'rb'); n=struct.unpack('<Q',f.read(8))[0]; h=json.loads(f.read(n)); h.pop('__metadata__',None); print('\n'.join(f'{k} {h[k][\"shape\"]}' for k in sorted(h)))" "$1"; }
ex="--set lora.targets=q_proj,v_proj,experts --set checkpoint.every=2"
if "$ANVIL" train "$tmp/moe.yaml" --set train.steps=4 $base $ex --set out_dir="$tmp/lx" >"$tmp/lx.log" 2>&1; then
    ok
    st_keys "$tmp/lx/final/adapter_model.safetensors" >"$tmp/lx.keys"
    # moe-tiny: 4 experts, d_ff 48, C 32, r 4: gate_up_proj's pair nests under base_layer
    check "expert keys (PEFT layout)" grep -qx 'base_model.model.model.layers.1.mlp.experts.base_layer.lora_A.weight \[16, 32\]' "$tmp/lx.keys"
    check "expert B (2F, E r)" grep -qx 'base_model.model.model.layers.1.mlp.experts.base_layer.lora_B.weight \[96, 16\]' "$tmp/lx.keys"
    check "down_proj pair" grep -qx 'base_model.model.model.layers.0.mlp.experts.lora_B.weight \[32, 16\]' "$tmp/lx.keys"
    check "target_parameters" python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert sorted(d['target_parameters'])==['mlp.experts.down_proj','mlp.experts.gate_up_proj'], d; assert sorted(d['target_modules'])==['q_proj','v_proj'], d" "$tmp/lx/final/adapter_config.json"
    # resume from step 2: the same losses and the same adapter
    "$ANVIL" train "$tmp/moe.yaml" --set train.steps=2 $base $ex --set out_dir="$tmp/lxh" >/dev/null 2>&1
    "$ANVIL" train --resume "$tmp/lxh" --set train.steps=4 >/dev/null 2>&1
    check "expert adapters: resume = uninterrupted" cmp -s <(strip_speed "$tmp/lx/metrics.jsonl") <(strip_speed "$tmp/lxh/metrics.jsonl")
    check "expert adapters: resumed adapter identical" cmp -s "$tmp/lx/step-0000004/adapter_model.safetensors" "$tmp/lxh/step-0000004/adapter_model.safetensors"
    # recompute 2 gives the same losses
    "$ANVIL" train "$tmp/moe.yaml" --set train.steps=2 $base $ex --set train.recompute=2 --set out_dir="$tmp/lxr" >/dev/null 2>&1
    check "expert adapters: recompute 2 = recompute 0" cmp -s <(head -n 2 "$tmp/lx/metrics.jsonl" | cut -d, -f2) <(cut -d, -f2 "$tmp/lxr/metrics.jsonl")
    # merged into the experts: the adapted loss
    "$ANVIL" eval ppl --model "$tmp/run/final" --adapter "$tmp/lx/final" --data "$tmp/train.txt" --tokenizer byte --seq 32 --batch 2 >"$tmp/ppl_a" 2>&1
    "$ANVIL" merge --model "$tmp/run/final" --adapter "$tmp/lx/final" --out "$tmp/lxm" >/dev/null 2>&1
    "$ANVIL" eval ppl --model "$tmp/lxm" --data "$tmp/train.txt" --tokenizer byte --seq 32 --batch 2 >"$tmp/ppl_m" 2>&1
    nll() { grep -o 'nll [0-9.]*' "$1" | cut -d' ' -f2; }
    check "merged nll = adapted nll ($(nll "$tmp/ppl_a") vs $(nll "$tmp/ppl_m"))" test -n "$(nll "$tmp/ppl_a")" -a "$(nll "$tmp/ppl_a")" = "$(nll "$tmp/ppl_m")"
    "$ANVIL" eval ppl --model "$tmp/run/final" --data "$tmp/train.txt" --tokenizer byte --seq 32 --batch 2 >"$tmp/ppl_b" 2>&1
    check "the expert adapters change the loss" test "$(nll "$tmp/ppl_a")" != "$(nll "$tmp/ppl_b")"
    # PEFT loads anvil's expert adapters (where Python has torch, transformers 5 and peft)
    PY=${ANVIL_PYTHON:-python3}
    if "$PY" -c "import torch, transformers, peft" >/dev/null 2>&1; then
        "$PY" tools/check_peft_load.py "$tmp/run/final" "$tmp/lx/final" "$tmp/lxm" --tol 1e-4 >"$tmp/peft.log" 2>&1
        check "PEFT loads anvil's expert adapters ($(grep -o 'max rel err [0-9.e+-]*' "$tmp/peft.log" | head -1))" grep -q '^OK' "$tmp/peft.log"
    else
        echo "skip: $PY has no torch/transformers/peft; PEFT loading of expert adapters not checked" >&2
    fi
else
    bad "expert adapters failed: $(tail -n 3 "$tmp/lx.log")"
fi
# QLoRA: the experts 4-bit under expert adapters
check "QLoRA with expert adapters" "$ANVIL" train "$tmp/moe.yaml" --set train.steps=2 $base $ex --set model.quant=nf4 \
    --set out_dir="$tmp/lxq"
# lora.init from PEFT's own directory (tools/make_moe_peft_fixtures.py: experts, shared expert and its gate
# over the 96-id Qwen2-MoE fixture): a one-step run at lr 0 writes every tensor back unchanged. The data go
# through a 40-symbol tokenizer.json (upper-case letters, digits, space, ".", ",", newline), which fits 96 ids.
FX=tests/fixtures/moe_lora/qwen2_moe/adapter
if [ -d "$FX" ]; then
    tr 'a-z' 'A-Z' <"$tmp/train.txt" | tr -cd 'A-Z0-9 .,\n' >"$tmp/upper.txt"
    python3 - "$tmp/tok40.json" <<'PY'
import json, sys
chars = [chr(c) for c in range(ord("A"), ord("Z") + 1)] + list("0123456789 .,\n")
model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
         "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
         "vocab": {c: i for i, c in enumerate(chars)}, "merges": []}
json.dump({"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
           "pre_tokenizer": None, "post_processor": None, "decoder": None, "model": model}, open(sys.argv[1], "w"))
PY
    check "lora.init from a PEFT MoE adapter" "$ANVIL" train "$tmp/moe.yaml" --set train.steps=1 --set train.lr=0 \
        --set train.min_lr=0 --set train.weight_decay=0 --set train.warmup_steps=0 --set train.seq_len=16 \
        --set model.init=tests/fixtures/moe/qwen2_moe/model --set model.preset= --set model.vocab_size=0 \
        --set model.max_seq_len=0 --set model.d_model=0 --set model.n_head=0 --set model.n_kv_head=0 \
        --set model.moe.d_ff=0 --set data.tokenizer="$tmp/tok40.json" --set data.train="$tmp/upper.txt" \
        --set lora.init="$FX" --set out_dir="$tmp/li"
    check "lora.init: PEFT's tensors written back unchanged" python3 - "$FX/adapter_model.safetensors" \
        "$tmp/li/final/adapter_model.safetensors" <<'PY'
import json, struct, sys
def load(p):
    f = open(p, "rb")
    n = struct.unpack("<Q", f.read(8))[0]
    h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    data = f.read()
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in h.items()}
a, b = load(sys.argv[1]), load(sys.argv[2])
assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))[:4]
for k in a:
    assert a[k] == b[k], k
PY
fi
# QLoRA over pre-quantized bitsandbytes Mixtral directories (tools/make_bnb_fixtures.py): transformers 4's
# layout (experts 4-bit) and transformers 5's (experts plain, quantized on load); the same 4-bit base, so
# the same losses
if [ -d tests/fixtures/bnb/mixtral_nf4 ] && [ -f "$tmp/tok40.json" ]; then
    for v in mixtral_nf4 mixtral_nf4_experts; do
        "$ANVIL" train "$tmp/moe.yaml" --set train.steps=2 --set train.seq_len=16 --set model.init=tests/fixtures/bnb/$v \
            --set model.preset= --set model.vocab_size=0 --set model.max_seq_len=0 --set model.d_model=0 \
            --set model.n_head=0 --set model.n_kv_head=0 --set model.moe.d_ff=0 --set data.tokenizer="$tmp/tok40.json" \
            --set data.train="$tmp/upper.txt" --set lora.r=4 --set lora.targets=q_proj,v_proj,experts \
            --set out_dir="$tmp/bq_$v" >"$tmp/bq_$v.log" 2>&1
        check "QLoRA on the pre-quantized $v" test -f "$tmp/bq_$v/final/adapter_model.safetensors"
    done
    check "experts stored plain are quantized on load (said once)" grep -q "quantized to nf4 on load" "$tmp/bq_mixtral_nf4.log"
    losses() { python3 -c 'import json,sys; print(" ".join("%.6f" % json.loads(l)["loss"] for l in open(sys.argv[1]) if "loss" in l))' "$1"; }
    check "both layouts train alike ($(losses "$tmp/bq_mixtral_nf4/metrics.jsonl"))" \
        test "$(losses "$tmp/bq_mixtral_nf4/metrics.jsonl")" = "$(losses "$tmp/bq_mixtral_nf4_experts/metrics.jsonl")"
fi
# adapters on the router (PEFT's target_parameters "mlp.gate.weight")
check "router adapters train" "$ANVIL" train "$tmp/moe.yaml" --set train.steps=2 $base --set lora.targets=gate,q_proj \
    --set out_dir="$tmp/l2"
check "router adapters: PEFT's target_parameters" grep -q '"mlp.gate.weight"' "$tmp/l2/final/adapter_config.json"
check "router adapters: PEFT's keys" grep -q 'layers.0.mlp.gate.lora_A.weight' "$tmp/l2/final/adapter_model.safetensors"
PY=${ANVIL_PYTHON:-python3}
if "$PY" -c "import torch, transformers, peft" >/dev/null 2>&1; then
    "$ANVIL" merge --model "$tmp/run/final" --adapter "$tmp/l2/final" --out "$tmp/l2m" >/dev/null 2>&1
    "$PY" tools/check_peft_load.py "$tmp/run/final" "$tmp/l2/final" "$tmp/l2m" --tol 1e-4 >"$tmp/peft_router.log" 2>&1
    check "PEFT loads anvil's router adapters ($(grep -o 'max rel err [0-9.e+-]*' "$tmp/peft_router.log" | head -1))" grep -q '^OK' "$tmp/peft_router.log"
fi
expect_fail lora-router-dropout "lora.dropout|router" train "$tmp/moe.yaml" $base --set lora.targets=gate \
    --set lora.dropout=0.1 --set out_dir="$tmp/l2d"
expect_fail lora-no-module "lora.targets|gate_proj: the model has no such module" train "$tmp/moe.yaml" $base \
    --set lora.targets=gate_proj,q_proj --set out_dir="$tmp/l3"
expect_fail lora-expert-dropout "lora.dropout|routed experts" train "$tmp/moe.yaml" $base --set lora.targets=experts \
    --set lora.dropout=0.1 --set out_dir="$tmp/l4"
# transformers 4's per-expert Mixtral modules (w1/w3/w2, the router as the module gate): trained, written
# under transformers 4's names, read back by eval, continued with lora.init, merged
check "t4 expert adapters train" "$ANVIL" train "$tmp/moe.yaml" --set train.steps=2 $base \
    --set lora.targets=q_proj,w1,w3,w2,gate --set out_dir="$tmp/t4"
check "t4 adapters: target_modules w1/w3/w2 and gate, no target_parameters" python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))
assert {"w1", "w2", "w3", "gate", "q_proj"} == set(c["target_modules"]) and "target_parameters" not in c, c' \
    "$tmp/t4/final/adapter_config.json"
check "t4 adapters: per-expert keys" grep -q 'layers.0.block_sparse_moe.experts.3.w1.lora_A.weight' \
    "$tmp/t4/final/adapter_model.safetensors"
check "t4 adapters: the router's key" grep -q 'layers.0.block_sparse_moe.gate.lora_B.weight' \
    "$tmp/t4/final/adapter_model.safetensors"
"$ANVIL" eval ppl --model "$tmp/run/final" --adapter "$tmp/t4/final" --data "$TRAIN" --tokenizer byte --seq 16 \
    --json >"$tmp/t4_ppl.json" 2>"$tmp/t4_ppl.err"
"$ANVIL" merge --model "$tmp/run/final" --adapter "$tmp/t4/final" --out "$tmp/t4m" >/dev/null 2>&1
"$ANVIL" eval ppl --model "$tmp/t4m" --data "$TRAIN" --tokenizer byte --seq 16 --json >"$tmp/t4m_ppl.json" 2>/dev/null
check "t4 adapters: eval --adapter equals the merged model's perplexity" python3 -c '
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
assert abs(a["nll"] - b["nll"]) <= 1e-5 * abs(b["nll"]), (a["nll"], b["nll"])' "$tmp/t4_ppl.json" "$tmp/t4m_ppl.json"
check "t4 adapters continue with lora.init" "$ANVIL" train "$tmp/moe.yaml" --set train.steps=2 $base \
    --set lora.init="$tmp/t4/final" --set lora.r=0 --set out_dir="$tmp/t4b"
check "t4 adapters: lora.init keeps the layout" grep -q 'block_sparse_moe.experts.0.w2.lora_B.weight' \
    "$tmp/t4b/final/adapter_model.safetensors"
# one expert (top-1): its gate_up and down adapters sit next to each other in the table (both layouts)
check "expert adapters with a single expert" "$ANVIL" train "$tmp/moe.yaml" --set train.steps=2 --set model.moe.experts=1 \
    --set model.moe.top_k=1 --set lora.r=4 --set lora.targets=q_proj,experts --set out_dir="$tmp/e1x"
check "t4 expert adapters with a single expert" "$ANVIL" train "$tmp/moe.yaml" --set train.steps=2 --set model.moe.experts=1 \
    --set model.moe.top_k=1 --set lora.r=4 --set lora.targets=q_proj,w1,w3,w2 --set out_dir="$tmp/e1y"
expect_fail lora-t4-mixed "lora.targets|two layouts" train "$tmp/moe.yaml" $base --set lora.targets=w1,experts \
    --set out_dir="$tmp/t4x"
expect_fail lora-t4-dropout "lora.dropout|routed experts" train "$tmp/moe.yaml" $base --set lora.targets=w1 \
    --set lora.dropout=0.1 --set out_dir="$tmp/t4d"

# bad keys
expect_fail topk-range "model.moe.top_k|1 .. model.moe.experts (4)" train "$tmp/moe.yaml" --set model.moe.top_k=5 --set out_dir="$tmp/e1"
expect_fail every-range "model.moe.every" train "$tmp/moe.yaml" --set model.moe.every=3 --set out_dir="$tmp/e2"
expect_fail neg-experts "model.moe.experts|>= 0" train "$tmp/moe.yaml" --set model.moe.experts=-1 --set out_dir="$tmp/e3"
expect_fail aux-neg "model.moe.aux_loss_coef" train "$tmp/moe.yaml" --set model.moe.aux_loss_coef=-1 --set out_dir="$tmp/e4"
expect_fail gpt2-moe "model.moe.experts|llama family" train "$tmp/moe.yaml" --set model.preset=gpt2-tiny --set model.moe.experts=4 --set out_dir="$tmp/e5"
expect_fail dense-topk "model.moe.top_k|model.moe.experts is 0" train "$tmp/moe.yaml" --set model.preset=llama-tiny --set model.moe.top_k=2 --set model.moe.d_ff=0 --set out_dir="$tmp/e6"
# Mixtral's router jitter: trains (a different loss than without, the same at recompute 2), is written
# to config.json as router_jitter_noise, and is refused with a shared expert
"$ANVIL" train "$tmp/moe.yaml" --set train.steps=3 --set model.moe.router_jitter=0.1 --set out_dir="$tmp/jit" \
    >"$tmp/jit.log" 2>&1
"$ANVIL" train "$tmp/moe.yaml" --set train.steps=3 --set model.moe.router_jitter=0.1 --set train.recompute=2 \
    --set out_dir="$tmp/jit2" >/dev/null 2>&1
check "router jitter trains (said on the experts line)" grep -q "router_jitter 0.1" "$tmp/jit.log"
check "router jitter changes the loss" test "$(cut -d, -f2 "$tmp/jit/metrics.jsonl" | head -2 | tail -1)" != \
    "$(cut -d, -f2 "$tmp/rc0/metrics.jsonl" | head -2 | tail -1)"
check "router jitter: recompute 2 = recompute 0" cmp -s <(cut -d, -f2 "$tmp/jit/metrics.jsonl") <(cut -d, -f2 "$tmp/jit2/metrics.jsonl")
check "router jitter: config.json router_jitter_noise" grep -q '"router_jitter_noise": 0.1' "$tmp/jit/final/config.json"
"$ANVIL" train "$tmp/moe.yaml" --set train.steps=1 --set model.init="$tmp/jit/final" --set model.preset= \
    --set model.vocab_size=0 --set model.max_seq_len=0 --set model.d_model=0 --set model.n_head=0 \
    --set model.n_kv_head=0 --set model.moe.d_ff=0 --set out_dir="$tmp/jit3" >"$tmp/jit3.log" 2>&1
check "router jitter: a config.json's value is not applied (a note says so)" grep -q "router_jitter_noise 0.1 is not applied" "$tmp/jit3.log"
expect_fail jitter-shared "model.moe.router_jitter|shared expert" train "$tmp/moe.yaml" --set model.moe.router_jitter=0.1 \
    --set model.moe.shared_experts=1 --set out_dir="$tmp/e8"
expect_fail jitter-range "model.moe.router_jitter|[0, 1)" train "$tmp/moe.yaml" --set model.moe.router_jitter=1.5 \
    --set out_dir="$tmp/e9"
expect_fail init-clash "model.moe.experts: cannot be combined with model.init" train "$tmp/moe.yaml" --set model.init="$tmp/run/final" \
    --set model.preset= --set model.vocab_size=0 --set model.max_seq_len=0 --set model.d_model=0 --set model.n_head=0 --set model.n_kv_head=0 \
    --set model.moe.d_ff=0 --set model.moe.experts=8 --set out_dir="$tmp/e7"
cli_summary
