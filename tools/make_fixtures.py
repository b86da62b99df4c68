#!/usr/bin/env python3
"""make_fixtures.py - PyTorch/transformers reference fixtures for anvil's tests.

Writes, under tests/fixtures/ (or --out):
  <name>/model/                  save_pretrained() of a tiny random-init model (fp32)
  <name>/reference.safetensors   input_ids, targets (I32, (B,T)), logits (B,T,V), loss (1),
                                 grad.<hf name> for every trainable parameter,
                                 adamw.<hf name> = the parameters after ONE torch.optim.AdamW step,
                                 greedy.prompt (I32 (1,P)), greedy.output (I32 (1,NEW))
  qwen2/model_bf16_sharded/      the qwen2 model in bf16, saved in several shards
  dtypes.safetensors             one tensor per dtype, written by the safetensors library,
                                 with torch's own fp32 conversion beside each float tensor

Models: gpt2 (GPT2LMHeadModel), llama (LlamaForCausalLM with GQA, untied head,
rope_theta 500000) and qwen2 (Qwen2ForCausalLM with q/k/v bias, tied head). The
initialization is larger than transformers' default (matrices N(0, 0.25), token
embeddings and head N(0, 0.05), biases N(0, 0.1), norm weights 1 + U(-0.5, 0.5)) so
that biases and norm weights matter and greedy decoding does not just repeat a token.

Targets are input_ids shifted by one; the positions listed in the metadata key
"ignored" are set to -100 (ignored), so the loss is the mean over the rest.

Deterministic and idempotent: every run with the same torch/transformers writes
the same bytes (the output folders are replaced). Run from the repository root:
    python3 tools/make_fixtures.py
"""
import argparse
import json
import os
import shutil
import struct
import sys

import safetensors
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import (GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

SEED = 1234
B, T = 2, 16                 # batch of the forward/backward reference
IGNORED = [(0, 3), (1, 15)]  # (row, position) of targets set to -100
PROMPT_LEN, NEW_TOKENS = 5, 12
ADAMW = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)  # decay on 2-D tensors only
INIT_STD_MATRIX, INIT_STD_EMBED, INIT_STD_BIAS, NORM_SPREAD = 0.25, 0.05, 0.1, 0.5
BOS, EOS = 0, 1


def canonical_metadata(path):
    """The safetensors library writes __metadata__ in hash order; sort it so that
    reruns write identical bytes (same header length, same data)."""
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    assert len(text) <= n, "canonical header is longer than the original"
    text += b" " * (n - len(text))
    with open(path, "wb") as f:
        f.write(raw[:8] + text + raw[8 + n:])


def models():
    """(name, model class, config) of each fixture."""
    gpt2 = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=32, n_inner=48, vocab_size=96,
                      activation_function="gelu_new", bos_token_id=BOS, eos_token_id=EOS,
                      attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)
    llama = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=96, max_position_embeddings=64,
                        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=BOS, eos_token_id=EOS,
                        rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    qwen2 = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=96, max_position_embeddings=64,
                        rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=BOS, eos_token_id=EOS,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    return [("gpt2", GPT2LMHeadModel, gpt2), ("llama", LlamaForCausalLM, llama), ("qwen2", Qwen2ForCausalLM, qwen2)]


def is_norm(name):
    return any(k in name for k in ("ln_", "layernorm", "norm.weight"))


@torch.no_grad()
def init_params(model, gen):
    for name, p in model.named_parameters():
        if is_norm(name) and name.endswith("weight"):
            p.copy_(1 + NORM_SPREAD * (2 * torch.rand(p.shape, generator=gen) - 1))
        elif any(k in name for k in ("wte", "embed_tokens", "lm_head")):
            # token embeddings / head smaller, so that greedy decoding does not just repeat a token
            p.copy_(INIT_STD_EMBED * torch.randn(p.shape, generator=gen))
        elif p.ndim == 1:
            p.copy_(INIT_STD_BIAS * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(INIT_STD_MATRIX * torch.randn(p.shape, generator=gen))


def greedy_by_hand(model, prompt, n):
    ids = prompt.clone()
    with torch.no_grad():
        for _ in range(n):
            nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    return ids[:, prompt.shape[1]:]


def make_model(out, name, cls, cfg, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = cls(cfg).float().eval()  # eval: no dropout
    init_params(model, gen)
    mdir = os.path.join(out, name, "model")
    model.save_pretrained(mdir)

    V = cfg.vocab_size
    seq = torch.randint(0, V, (B, T + 1), generator=gen)
    input_ids, targets = seq[:, :-1].contiguous(), seq[:, 1:].clone()
    for b, t in IGNORED:
        targets[b, t] = -100
    logits = model(input_ids).logits
    loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)
    loss.backward()

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    tensors = {
        "input_ids": input_ids.to(torch.int32),
        "targets": targets.to(torch.int32),
        "logits": logits.detach().contiguous(),
        "loss": loss.detach().reshape(1),
    }
    for n, p in named:
        tensors["grad." + n] = p.grad.detach().clone().contiguous()

    decay = [p for n, p in named if p.ndim == 2]
    no_decay = [p for n, p in named if p.ndim != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": ADAMW["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=ADAMW["lr"], betas=ADAMW["betas"], eps=ADAMW["eps"], foreach=False)
    # the stored moments start from these exact gradients
    params_before = {n: p.detach().clone() for n, p in named}
    opt.step()
    for n, p in named:
        tensors["adamw." + n] = p.detach().clone().contiguous()
    # restore (the greedy continuation uses the saved weights)
    with torch.no_grad():
        for n, p in named:
            p.copy_(params_before[n])

    prompt = torch.randint(0, V, (1, PROMPT_LEN), generator=gen)
    gcfg = GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=0,
                            eos_token_id=None, pad_token_id=BOS, bos_token_id=BOS)
    model.generation_config.eos_token_id = None  # never stop early (saved config keeps eos)
    with torch.no_grad():
        out_ids = model.generate(prompt, generation_config=gcfg, attention_mask=torch.ones_like(prompt))
    new = out_ids[:, PROMPT_LEN:]
    assert torch.equal(new, greedy_by_hand(model, prompt, NEW_TOKENS)), "generate() disagrees with argmax"
    tensors["greedy.prompt"] = prompt.to(torch.int32)
    tensors["greedy.output"] = new.to(torch.int32).contiguous()

    meta = {
        "format": "pt",
        "model": name,
        "architecture": cfg.architectures[0] if cfg.architectures else cls.__name__,
        "seed": str(seed),
        "B": str(B), "T": str(T),
        "ignored": json.dumps(IGNORED),
        "loss": "mean cross-entropy over targets != -100",
        "adamw": json.dumps({**ADAMW, "weight_decay_applies_to": "2-D tensors", "steps": 1}),
        "greedy": json.dumps({"max_new_tokens": NEW_TOKENS, "do_sample": False, "stops_at_eos": False}),
        "init": json.dumps({"matrix_std": INIT_STD_MATRIX, "embed_std": INIT_STD_EMBED, "bias_std": INIT_STD_BIAS,
                            "norm_weight": f"1 + U(-{NORM_SPREAD}, {NORM_SPREAD})"}),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
    }
    save_file(tensors, os.path.join(out, name, "reference.safetensors"), metadata=meta)
    canonical_metadata(os.path.join(out, name, "reference.safetensors"))
    return model


def make_dtypes(out):
    special = [0.0, -0.0, 1.0, -2.5, 3.14159265, 1e-7, 6e-8, 65504.0, 1e5, 1e-40, float("inf"),
               float("-inf"), float("nan"), 0.1, 1.0 / 3.0, 1e38, 1.00390625, 1.01171875]
    gen = torch.Generator().manual_seed(SEED)
    vals = torch.cat([torch.tensor(special, dtype=torch.float64),
                      10 * torch.randn(30, generator=gen, dtype=torch.float64)])
    t = {}
    for name, dt in [("F32", torch.float32), ("F16", torch.float16), ("BF16", torch.bfloat16),
                     ("F64", torch.float64)]:
        x = vals.to(dt)
        t["x." + name] = x
        t["expect." + name] = x.to(torch.float32).clone()
    k = torch.arange(6).reshape(2, 3)
    for name, dt in [("I64", torch.int64), ("I32", torch.int32), ("I16", torch.int16), ("I8", torch.int8)]:
        t["x." + name] = (k - 2).to(dt)
    t["x.U8"] = k.to(torch.uint8)
    t["x.BOOL"] = (k % 2).to(torch.bool)
    path = os.path.join(out, "dtypes.safetensors")
    save_file(t, path, metadata={"format": "pt", "torch": torch.__version__})
    canonical_metadata(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    for i, (name, cls, cfg) in enumerate(models()):
        shutil.rmtree(os.path.join(args.out, name), ignore_errors=True)
        model = make_model(args.out, name, cls, cfg, SEED + i)
        if name == "qwen2":
            model.to(torch.bfloat16).save_pretrained(os.path.join(args.out, name, "model_bf16_sharded"),
                                                     max_shard_size="20KB")
    make_dtypes(args.out)
    print(f"fixtures written to {args.out} (torch {torch.__version__}, transformers {transformers.__version__})")


if __name__ == "__main__":
    sys.exit(main())
