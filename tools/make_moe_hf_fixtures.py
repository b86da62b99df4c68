#!/usr/bin/env python3
"""make_moe_hf_fixtures.py - transformers reference fixtures for anvil's mixture-of-experts tests.

Writes, under tests/fixtures/moe/ (or --out):
  <name>/model/                  save_pretrained() of a tiny random-init model (fp32)
  mixtral/model_fused/           the same weights under transformers 5's in-memory names and layout
                                 (experts.gate_up_proj (E, 2F, C), experts.down_proj (E, C, F)):
                                 what a state_dict() saved by hand holds
  <name>/reference.safetensors   input_ids, targets (I32 (B,T)), labels (I32, HF's unshifted labels
                                 giving the same targets), logits (B,T,V), loss (1: mean cross-entropy),
                                 loss_aux (1: transformers' own loss with labels and
                                 output_router_logits=True = loss + router_aux_loss_coef * aux),
                                 aux (1: load_balancing_loss_func), z (1: ST-MoE router z-loss, the mean
                                 of logsumexp^2 over the router logits of every MoE layer),
                                 router_logits.<l> (N, E) per MoE layer,
                                 grad.<hf name> of loss_aux + Z_COEF * z for every parameter
                                 (checkpoint names and layout),
                                 greedy.prompt (I32 (1,P)), greedy.output (I32 (1,NEW))

Models: mixtral (MixtralForCausalLM: 4 experts top-2 on both layers, renormalised weights, GQA)
and qwen2_moe (Qwen2MoeForCausalLM: 3 layers, experts on layer 1 only (decoder_sparse_step 2),
a shared expert behind its sigmoid gate, norm_topk_prob false, q/k/v biases), and qwen2_moe_dense
(the same family, 4 layers, decoder_sparse_step 1 with layers 0 and 2 dense by mlp_only_layers,
renormalised top-k). Initialization as
tools/make_fixtures.py (larger than transformers' default so that routing and biases matter).

Deterministic; run from the repository root:  python3 tools/make_moe_hf_fixtures.py
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file
from transformers import (GenerationConfig, MixtralConfig, MixtralForCausalLM, Qwen2MoeConfig,
                          Qwen2MoeForCausalLM)

SEED = 4321
B, T = 2, 16
IGNORED = [(0, 3), (1, 7)]  # (row, position) of targets set to -100 (besides the last position)
PROMPT_LEN, NEW_TOKENS = 5, 10
AUX_COEF, Z_COEF = 0.1, 0.01  # large, so that the routing losses' gradients are visible
INIT_STD_MATRIX, INIT_STD_EMBED, INIT_STD_BIAS, NORM_SPREAD = 0.25, 0.05, 0.1, 0.5
BOS, EOS = 0, 1


def models():
    mixtral = MixtralConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                            num_experts_per_tok=2, max_position_embeddings=64, rms_norm_eps=1e-5,
                            router_aux_loss_coef=AUX_COEF, tie_word_embeddings=False, bos_token_id=BOS,
                            eos_token_id=EOS, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    qwen = Qwen2MoeConfig(vocab_size=96, hidden_size=32, intermediate_size=40, moe_intermediate_size=24,
                          shared_expert_intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=2,
                          norm_topk_prob=False, max_position_embeddings=64, rms_norm_eps=1e-6,
                          router_aux_loss_coef=AUX_COEF, tie_word_embeddings=False, bos_token_id=BOS,
                          eos_token_id=EOS, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    # experts on every layer (decoder_sparse_step 1) but layers 0 and 2 dense by list (mlp_only_layers)
    dense = Qwen2MoeConfig(vocab_size=96, hidden_size=32, intermediate_size=40, moe_intermediate_size=24,
                           shared_expert_intermediate_size=32, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1,
                           mlp_only_layers=[0, 2], norm_topk_prob=True, max_position_embeddings=64,
                           rms_norm_eps=1e-6, router_aux_loss_coef=AUX_COEF, tie_word_embeddings=False,
                           bos_token_id=BOS, eos_token_id=EOS,
                           rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    return [("mixtral", MixtralForCausalLM, mixtral), ("qwen2_moe", Qwen2MoeForCausalLM, qwen),
            ("qwen2_moe_dense", Qwen2MoeForCausalLM, dense)]


def is_norm(name):
    return "layernorm" in name or "norm.weight" in name


@torch.no_grad()
def init_params(model, gen):
    for name, p in model.named_parameters():
        if is_norm(name) and name.endswith("weight"):
            p.copy_(1 + NORM_SPREAD * (2 * torch.rand(p.shape, generator=gen) - 1))
        elif "embed_tokens" in name or "lm_head" in name:
            p.copy_(INIT_STD_EMBED * torch.randn(p.shape, generator=gen))
        elif p.ndim == 1:
            p.copy_(INIT_STD_BIAS * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(INIT_STD_MATRIX * torch.randn(p.shape, generator=gen))


def saved_layout(model, values):
    """values (name -> tensor, in-memory names) under the checkpoint's names and layout, by
    letting save_pretrained convert them (the same conversion the weights went through)."""
    with torch.no_grad():
        keep = {n: p.detach().clone() for n, p in model.named_parameters()}
        for n, p in model.named_parameters():
            p.copy_(values[n])
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            out = load_file(os.path.join(d, "model.safetensors"))
        for n, p in model.named_parameters():
            p.copy_(keep[n])
    return out


def make_model(out, name, cls, cfg, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = cls(cfg).float().eval()
    init_params(model, gen)
    mdir = os.path.join(out, name, "model")
    model.save_pretrained(mdir)
    # the fused in-memory layout, as a state_dict saved by hand (one model: the reader's path is shared)
    if name == "mixtral":
        fdir = os.path.join(out, name, "model_fused")
        os.makedirs(fdir, exist_ok=True)
        shutil.copy(os.path.join(mdir, "config.json"), fdir)
        save_file({n: p.detach().contiguous() for n, p in model.state_dict().items()},
                  os.path.join(fdir, "model.safetensors"), metadata={"format": "pt"})

    V = cfg.vocab_size
    seq = torch.randint(0, V, (B, T + 1), generator=gen)
    input_ids, targets = seq[:, :-1].contiguous(), seq[:, 1:].clone()
    targets[:, -1] = -100  # HF's shifted labels score no target at the last position
    for b, t in IGNORED:
        targets[b, t] = -100
    labels = torch.full_like(input_ids, -100)
    labels[:, 1:] = targets[:, :-1]  # HF scores logits[t] against labels[t + 1]

    out_nl = model(input_ids, output_router_logits=True)
    logits = out_nl.logits
    loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)
    res = model(input_ids, labels=labels, output_router_logits=True)
    router = [r.float() for r in res.router_logits]
    z = torch.cat(router, 0).logsumexp(-1).pow(2).mean()
    total = res.loss + Z_COEF * z
    total.backward()
    assert abs(res.loss.item() - (loss.item() + AUX_COEF * res.aux_loss.item())) < 1e-5

    tensors = {
        "input_ids": input_ids.to(torch.int32),
        "targets": targets.to(torch.int32),
        "labels": labels.to(torch.int32),
        "logits": logits.detach().contiguous(),
        "loss": loss.detach().reshape(1),
        "loss_aux": res.loss.detach().reshape(1),
        "aux": res.aux_loss.detach().reshape(1),
        "z": z.detach().reshape(1),
    }
    for i, r in enumerate(router):
        tensors[f"router_logits.{i}"] = r.detach().contiguous()
    grads = saved_layout(model, {n: p.grad for n, p in model.named_parameters()})
    for n, g in grads.items():
        tensors["grad." + n] = g.contiguous()

    prompt = torch.randint(0, V, (1, PROMPT_LEN), generator=gen)
    gcfg = GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=0, eos_token_id=None,
                            pad_token_id=BOS, bos_token_id=BOS)
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        ids = model.generate(prompt, generation_config=gcfg, attention_mask=torch.ones_like(prompt))
    tensors["greedy.prompt"] = prompt.to(torch.int32)
    tensors["greedy.output"] = ids[:, PROMPT_LEN:].to(torch.int32).contiguous()
    meta = {
        "format": "pt", "model": name, "architecture": cls.__name__, "seed": str(seed),
        "aux_coef": str(AUX_COEF), "z_coef": str(Z_COEF),
        "grad": "of loss_aux + z_coef * z", "torch": torch.__version__, "transformers": transformers.__version__,
    }
    save_file(tensors, os.path.join(out, name, "reference.safetensors"), metadata=meta)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/moe")
    ap.add_argument("--only", help="write this fixture only (the others stay as they are)")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    for i, (name, cls, cfg) in enumerate(models()):
        if args.only and name != args.only:
            continue
        shutil.rmtree(os.path.join(args.out, name), ignore_errors=True)
        make_model(args.out, name, cls, cfg, SEED + i)
    print(f"fixtures written to {args.out} (torch {torch.__version__}, transformers {transformers.__version__})")


if __name__ == "__main__":
    sys.exit(main())
