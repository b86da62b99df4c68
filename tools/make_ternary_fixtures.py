#!/usr/bin/env python3
"""make_ternary_fixtures.py - transformers references for anvil's BitNet b1.58 support (docs/ternary.md).

Writes under tests/fixtures/ternary/ (or --out):
  bitnet/model/          a tiny random-init BitNetForCausalLM (GQA, relu2, sub-norms, untied head), fp32
                         latent weights, config.json with quantization_config {quant_method: bitnet,
                         linear_class: autobitlinear, quantization_mode: online}: what anvil's QAT
                         checkpoints are
  bitnet/reference.safetensors
                         input_ids, targets (I32 (B,T)), logits (B,T,V), loss (1) and grad.<hf name> of
                         every parameter, from transformers' own AutoBitLinear (WeightQuant / ActQuant
                         with straight-through backward), loaded by from_pretrained from model/
  bitnet/model_packed/   the same weights as transformers' offline BitLinear layout: weight (out/4, in)
                         U8 from transformers.integrations.bitnet.pack_weights, weight_scale = 1/gamma
                         (F32 (1,)), quantization_config linear_class bitlinear, offline
  bitnet/reference_packed.safetensors
                         packed_logits: transformers' BitLinear forward of model_packed/ on input_ids

Run from the repository root:  /tmp/pyenv/bin/python tools/make_ternary_fixtures.py
"""
import argparse
import json
import os
import shutil

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, BitNetConfig, BitNetForCausalLM
from transformers.integrations.bitnet import pack_weights

SEED = 4321
B, T = 2, 8
IGNORED = [(1, 7)]
INIT_STD = 0.2         # matrices and embeddings: large enough that every quantizer level is used
NORM_SPREAD = 0.5      # norm weights 1 + U(-0.5, 0.5)
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def qconfig(packed):
    return {"quant_method": "bitnet", "linear_class": "bitlinear" if packed else "autobitlinear",
            "quantization_mode": "offline" if packed else "online", "modules_to_not_convert": ["lm_head"],
            "use_rms_norm": False}


def tiny_config():
    return BitNetConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=0,
                        eos_token_id=1, hidden_act="relu2")


def write_model(model, cfg, out, state, packed):
    os.makedirs(out, exist_ok=True)
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    c = cfg.to_dict()
    c["architectures"] = ["BitNetForCausalLM"]
    c["quantization_config"] = qconfig(packed)
    c["dtype"] = c["torch_dtype"] = "float32"
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/ternary")
    args = ap.parse_args()
    torch.manual_seed(SEED)
    cfg = tiny_config()
    base = BitNetForCausalLM(cfg).float()
    with torch.no_grad():
        for name, p in base.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + NORM_SPREAD * (2 * torch.rand_like(p) - 1))
            else:
                p.normal_(0, INIT_STD)
    state = {k: v.contiguous() for k, v in base.state_dict().items()}
    root = os.path.join(args.out, "bitnet")
    shutil.rmtree(root, ignore_errors=True)
    write_model(base, cfg, os.path.join(root, "model"), state, packed=False)

    # transformers' QAT model: every linear but lm_head an AutoBitLinear quantizing online
    qat = AutoModelForCausalLM.from_pretrained(os.path.join(root, "model"), dtype=torch.float32)
    n_bit = sum(type(m).__name__ == "AutoBitLinear" for m in qat.modules())
    assert n_bit == 7 * cfg.num_hidden_layers, f"expected {7 * cfg.num_hidden_layers} AutoBitLinear, got {n_bit}"
    g = torch.Generator().manual_seed(SEED + 1)
    ids = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g)
    inputs, targets = ids[:, :T].contiguous(), ids[:, 1:].contiguous()
    for r, t in IGNORED:
        targets[r, t] = -100
    qat.train()
    logits = qat(input_ids=inputs).logits
    loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), targets.reshape(-1), ignore_index=-100)
    loss.backward()
    ref = {"input_ids": inputs.to(torch.int32), "targets": targets.to(torch.int32),
           "logits": logits.detach().contiguous(), "loss": loss.detach().reshape(1)}
    for name, p in qat.named_parameters():
        ref["grad." + name] = p.grad.detach().contiguous()
    save_file(ref, os.path.join(root, "reference.safetensors"), metadata={"ignored": json.dumps(IGNORED)})

    # the offline layout of the same weights: packed trits + weight_scale = 1 / gamma per linear
    packed = {}
    for k, v in state.items():
        if any(f".{n}.weight" in k for n in LINEARS):
            scale = 1.0 / v.abs().mean().clamp(min=1e-5)
            t = (v * scale).round().clamp(-1, 1)
            packed[k] = pack_weights(t.clone())
            packed[k.replace(".weight", ".weight_scale")] = scale.reshape(1).float()
        else:
            packed[k] = v
    write_model(base, cfg, os.path.join(root, "model_packed"), packed, packed=True)
    off = AutoModelForCausalLM.from_pretrained(os.path.join(root, "model_packed"), dtype=torch.float32)
    n_bl = sum(type(m).__name__ == "BitLinear" for m in off.modules())
    assert n_bl == 7 * cfg.num_hidden_layers, f"expected {7 * cfg.num_hidden_layers} BitLinear, got {n_bl}"
    with torch.no_grad():
        plog = off(input_ids=inputs).logits
    save_file({"input_ids": inputs.to(torch.int32), "packed_logits": plog.contiguous()},
              os.path.join(root, "reference_packed.safetensors"))
    d = (plog - logits.detach()).abs().max().item() / logits.detach().abs().max().item()
    print(f"wrote {root}: loss {loss.item():.6f}; offline BitLinear vs online AutoBitLinear logits rel diff {d:.3g}")


if __name__ == "__main__":
    main()
