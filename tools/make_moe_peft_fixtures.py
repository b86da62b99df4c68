#!/usr/bin/env python3
"""make_moe_peft_fixtures.py - PEFT reference fixtures for LoRA on mixture-of-experts models (docs/moe.md).

For the tiny random-init bases of tools/make_moe_hf_fixtures.py (tests/fixtures/moe/<name>/model),
writes under tests/fixtures/moe_lora/<name>/ (or --out):
  adapter/                       PeftModel.save_pretrained() of random NONZERO adapters (r 4, alpha 8) on
                                 q/k/v/o_proj, the routed experts' fused 3-D parameters through
                                 target_parameters (mlp.experts.gate_up_proj (E, 2F, C), mlp.experts.down_proj
                                 (E, C, F)) and, for qwen2_moe, gate_proj/up_proj/down_proj (the dense layers'
                                 MLP and the shared expert) and shared_expert_gate; mixtral_router: mixtral's
                                 adapters and the router's weight too (target_parameters "mlp.gate.weight":
                                 transformers 5's router is not an nn.Linear; PEFT 0.21's all-linear adds it)
  reference.safetensors          input_ids, targets (I32 (B,T)), logits (B,T,V) of the adapted model, loss (1:
                                 mean cross-entropy over the targets, no routing losses), grad.<key> of the
                                 loss for every adapter tensor, <key> as in adapter_model.safetensors, and
                                 greedy.prompt (I32 (1,P)), greedy.output (I32 (1,NEW)): generate() of the
                                 adapted model
The script also checks what anvil relies on: PeftModel.from_pretrained of the saved directory gives the
same logits, merge_and_unload() too, and the key names of one targeted parameter (no "base_layer").

Deterministic but for the order of target_modules in adapter_config.json (PEFT saves a set; fix
PYTHONHASHSEED for the same file); run from the repository root after tools/make_moe_hf_fixtures.py:
    python3 tools/make_moe_peft_fixtures.py
Made with torch 2.15.0, transformers 5.24.0, peft 0.21.2 (CPU).
"""
import argparse
import os
import shutil
import tempfile

import peft
import torch
import torch.nn.functional as F
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GenerationConfig

SEED = 8765
B, T = 2, 12
R, ALPHA = 4, 8
STD_A, STD_B = 0.3, 0.3  # large enough that every adapter moves the logits
PROMPT_LEN, NEW_TOKENS = 4, 8
EXPERT_PARAMS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
TARGETS = {
    "mixtral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2_moe": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                  "shared_expert_gate"],
    "mixtral_router": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
BASE = {"mixtral_router": "mixtral"}  # fixture -> base (default: the same name)
PARAMS = {"mixtral_router": EXPERT_PARAMS + ["mlp.gate.weight"]}  # default: EXPERT_PARAMS


def load_base(base):
    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()


def logits_of(model, ids):
    with torch.no_grad():
        return model(ids).logits


def adapted_reference(model, gen, adir):
    """The fixture of a PEFT model (tools/make_moe_peft_t4_fixture.py uses it too): its adapters set to
    random nonzero values from gen, one batch's logits, loss and adapter gradients, the adapter saved to
    adir, and the greedy continuation. Returns (the reference tensors, the saved adapter tensors, ids,
    logits)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_A" in n:
                p.copy_(STD_A * torch.randn(p.shape, generator=gen))
            elif "lora_B" in n:
                p.copy_(STD_B * torch.randn(p.shape, generator=gen))
    model.eval()
    V = model.config.vocab_size
    seq = torch.randint(0, V, (B, T + 1), generator=gen)
    ids, targets = seq[:, :-1].contiguous(), seq[:, 1:].clone()
    targets[0, 2] = -100
    logits = model(ids).logits
    loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)
    loss.backward()

    if os.path.isdir(adir):
        shutil.rmtree(adir)
    model.save_pretrained(adir)
    for extra in ("README.md",):  # PEFT's model card: not part of the fixture
        if os.path.exists(os.path.join(adir, extra)):
            os.remove(os.path.join(adir, extra))
    saved = load_file(os.path.join(adir, "adapter_model.safetensors"))
    tensors = {"input_ids": ids.to(torch.int32), "targets": targets.to(torch.int32),
               "logits": logits.detach().contiguous(), "loss": loss.detach().reshape(1)}
    for n, p in model.named_parameters():
        if "lora_" not in n:
            continue
        key = n.replace(".default.", ".")
        assert key in saved, (key, sorted(saved)[:4])
        assert torch.equal(saved[key], p.detach()), key
        tensors["grad." + key] = p.grad.detach().contiguous()
    assert len(tensors) - 4 == len(saved), "a saved tensor without a gradient"
    # greedy continuation of the adapted model (anvil's KV-cache path: generate_run)
    prompt = torch.randint(0, V, (1, PROMPT_LEN), generator=gen)
    gcfg = GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=0, eos_token_id=None,
                            pad_token_id=0)
    model.base_model.model.generation_config.eos_token_id = None  # the bases' own say EOS 1: run NEW_TOKENS
    with torch.no_grad():
        out_ids = model.generate(input_ids=prompt, generation_config=gcfg)
    tensors["greedy.prompt"] = prompt.to(torch.int32)
    tensors["greedy.output"] = out_ids[:, PROMPT_LEN:].to(torch.int32).contiguous()
    assert tensors["greedy.output"].shape[1] == NEW_TOKENS
    return tensors, saved, ids, logits


def make(out, root, name):
    base = os.path.join(root, BASE.get(name, name), "model")
    gen = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS[name],
                     target_parameters=PARAMS.get(name, EXPERT_PARAMS))
    model = get_peft_model(load_base(base), cfg)
    odir = os.path.join(out, name)
    adir = os.path.join(odir, "adapter")
    tensors, saved, ids, logits = adapted_reference(model, gen, adir)
    loss = tensors["loss"]
    experts = [k for k in saved if ".mlp.experts." in k]
    assert any(".mlp.experts.base_layer.lora_A" in k for k in experts), experts  # gate_up_proj nested in down_proj
    # the shapes: lora_A (E r, in), lora_B (out, E r)
    E, C = model.config.num_experts if name == "qwen2_moe" else model.config.num_local_experts, model.config.hidden_size
    Fd = model.config.moe_intermediate_size if name == "qwen2_moe" else model.config.intermediate_size
    li = [k for k in experts if "layers.1." in k]
    shapes = {k.split("mlp.experts.")[1]: tuple(saved[k].shape) for k in li}
    assert shapes == {"base_layer.lora_A.weight": (E * R, C), "base_layer.lora_B.weight": (2 * Fd, E * R),
                      "lora_A.weight": (E * R, Fd), "lora_B.weight": (C, E * R)}, shapes
    if "mlp.gate.weight" in PARAMS.get(name, []):  # the router's adapter: an ordinary LoRA pair, no nesting
        ra, rb = "base_model.model.model.layers.1.mlp.gate.lora_A.weight", "base_model.model.model.layers.1.mlp.gate.lora_B.weight"
        assert tuple(saved[ra].shape) == (R, C) and tuple(saved[rb].shape) == (E, R), (saved[ra].shape, saved[rb].shape)
    save_file(tensors, os.path.join(odir, "reference.safetensors"),
              metadata={"torch": torch.__version__, "transformers": transformers.__version__,
                        "peft": peft.__version__, "base": base})

    # PEFT loads what it saved with the same logits; merging gives them too
    loaded = PeftModel.from_pretrained(load_base(base), adir).eval()
    same = logits_of(loaded, ids)
    assert torch.allclose(same, logits.detach(), atol=1e-5), (same - logits).abs().max()
    merged = loaded.merge_and_unload()
    assert torch.allclose(logits_of(merged, ids), logits.detach(), atol=1e-4)
    # one targeted parameter: no nesting, the wrapper is mlp.experts itself
    one = get_peft_model(load_base(base), LoraConfig(r=R, lora_alpha=ALPHA, target_modules=[],
                                                     target_parameters=["mlp.experts.down_proj"]))
    with tempfile.TemporaryDirectory() as d:
        one.save_pretrained(d)
        keys = sorted(load_file(os.path.join(d, "adapter_model.safetensors")))
    assert all(".mlp.experts.lora_" in k for k in keys), keys
    print(f"{name}: {len(saved)} adapter tensors, loss {loss.item():.5f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bases", default="tests/fixtures/moe")
    ap.add_argument("--out", default="tests/fixtures/moe_lora")
    ap.add_argument("--only", nargs="*", help="these fixtures only (default: all)")
    a = ap.parse_args()
    for name in (a.only or TARGETS):
        make(a.out, a.bases, name)


if __name__ == "__main__":
    main()
