#!/usr/bin/env python3
"""make_peft_fixtures.py - PEFT LoRA reference fixtures for anvil's adapter tests.

For each base of tests/fixtures/ (llama: LlamaForCausalLM with GQA; gpt2: GPT2LMHeadModel, whose
Conv1D layers PEFT adapts with fan_in_fan_out), writes tests/fixtures/peft/<name>/:
  adapter/                 PeftModel.save_pretrained() of a LoRA with random NONZERO A and B
                           (r 4, lora_alpha 8, every linear module of the blocks; rsLoRA on gpt2)
  reference.safetensors    input_ids, targets (I32 (B,T), -100 = not scored), logits (B,T,V) and loss
                           (mean over scored targets) of the adapted model, grad.<PEFT name> of every
                           adapter weight for that loss, merged.<HF name> of every base weight after
                           merge_and_unload(), and merged_logits of the merged model
Deterministic for a torch/transformers/peft version; run from the repository root:
    python3 tools/make_peft_fixtures.py
"""
import os
import shutil

import peft
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file

SEED = 4321
B, T = 2, 8
IGNORED = [(0, 0), (0, 1), (0, 2), (1, 7)]
ADAPTER_STD = 0.2
CASES = {
    "llama": dict(base="tests/fixtures/llama/model", r=4, alpha=8.0, rslora=False,
                  targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "gpt2": dict(base="tests/fixtures/gpt2/model", r=4, alpha=8.0, rslora=True,
                 targets=["c_attn", "c_proj", "c_fc"]),
}


def make(name, spec, out_root):
    torch.manual_seed(SEED)
    base = transformers.AutoModelForCausalLM.from_pretrained(spec["base"], dtype=torch.float32)
    base.eval()
    cfg = peft.LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=0.0, use_rslora=spec["rslora"],
                          target_modules=spec["targets"], bias="none", task_type="CAUSAL_LM",
                          fan_in_fan_out=name == "gpt2")
    model = peft.get_peft_model(base, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn_like(p) * ADAPTER_STD)
    model.eval()
    V = model.config.vocab_size
    ids = torch.randint(0, V, (B, T + 1), generator=torch.Generator().manual_seed(SEED))
    inp, tgt = ids[:, :T].contiguous(), ids[:, 1:].contiguous().clone()
    for r, t in IGNORED:
        tgt[r, t] = -100
    logits = model(input_ids=inp).logits
    loss = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1), ignore_index=-100)
    loss.backward()
    ref = {"input_ids": inp.to(torch.int32), "targets": tgt.to(torch.int32),
           "logits": logits.detach().contiguous(), "loss": loss.detach().reshape(1)}
    for n, p in model.named_parameters():
        if p.grad is not None:
            key = n.replace(".default", "")
            ref["grad." + key] = p.grad.detach().contiguous()
    out = os.path.join(out_root, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    model.save_pretrained(os.path.join(out, "adapter"))
    merged = model.merge_and_unload()
    with torch.no_grad():
        ref["merged_logits"] = merged(input_ids=inp).logits.contiguous()
    for n, p in merged.state_dict().items():
        if n.endswith(".weight") and ("attn" in n or "mlp" in n) and p.dim() == 2:
            ref["merged." + n] = p.detach().contiguous()
    save_file(ref, os.path.join(out, "reference.safetensors"),
              metadata={"torch": torch.__version__, "transformers": transformers.__version__,
                        "peft": peft.__version__, "r": str(spec["r"]), "alpha": str(spec["alpha"])})
    print(f"{name}: loss {loss.item():.6f}, {sum(k.startswith('grad.') for k in ref)} adapter gradients")


if __name__ == "__main__":
    for name, spec in CASES.items():
        make(name, spec, "tests/fixtures/peft")
