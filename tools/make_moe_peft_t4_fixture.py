#!/usr/bin/env python3
"""make_moe_peft_t4_fixture.py - a PEFT adapter made with transformers 4 on a Mixtral base (docs/moe.md).

Before transformers 5 fused them, Mixtral's routed experts were nn.Linear modules of their own
(model.layers.L.block_sparse_moe.experts.N.w1 / w3 / w2) and the router an nn.Linear
(block_sparse_moe.gate), so PEFT adapted them through target_modules, an adapter pair per expert and
module. Many adapters on the hub have that layout. This script makes one, under transformers 4 + PEFT,
over the tiny random-init base tests/fixtures/moe/mixtral/model (which transformers 5 wrote in the
per-expert layout that transformers 4 reads too), and writes tests/fixtures/moe_lora/mixtral_t4/:
  adapter/                 PeftModel.save_pretrained() of random NONZERO adapters (r 4, alpha 8) on
                           q/k/v/o_proj, w1, w3, w2 and gate
  reference.safetensors    as tools/make_moe_peft_fixtures.py's: input_ids, targets, logits, loss (the
                           cross-entropy alone), grad.<key> of every adapter tensor, greedy.prompt and
                           greedy.output
It checks first that transformers 4 reads the base as transformers 5 does (the logits of
tests/fixtures/moe/mixtral/reference.safetensors), then that PEFT loads what it saved with the same
logits. Run from the repository root in an environment with transformers 4 and PEFT, e.g.
    python3 -m venv --system-site-packages /tmp/venv4
    /tmp/venv4/bin/pip install "transformers==4.57.*" "peft==0.17.*"
    /tmp/venv4/bin/python tools/make_moe_peft_t4_fixture.py
Made with torch 2.15.0, transformers 4.57.6, peft 0.17.1 (CPU).
"""
import argparse
import json
import os
import sys

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import MixtralConfig, MixtralForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_moe_peft_fixtures import ALPHA, R, adapted_reference  # noqa: E402  (the same adapters and reference)

SEED = 4321
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "w1", "w3", "w2", "gate"]


def load_base(base):
    """The base under transformers 4: its config written by transformers 5 names RoPE's theta in
    rope_parameters, which transformers 4 does not read (its Mixtral default is 1e6)."""
    raw = json.load(open(os.path.join(base, "config.json")))
    cfg = MixtralConfig(**{k: v for k, v in raw.items() if k not in ("rope_parameters", "dtype")})
    cfg.rope_theta = raw["rope_parameters"]["rope_theta"]
    assert raw["rope_parameters"]["rope_type"] == "default"
    model = MixtralForCausalLM(cfg)
    state = load_file(os.path.join(base, "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return model.float().eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="tests/fixtures/moe/mixtral")
    ap.add_argument("--out", default="tests/fixtures/moe_lora/mixtral_t4")
    a = ap.parse_args()
    assert transformers.__version__.startswith("4."), transformers.__version__
    base = os.path.join(a.base, "model")

    # transformers 4 reads the base as transformers 5 did
    ref5 = load_file(os.path.join(a.base, "reference.safetensors"))
    plain = load_base(base)
    with torch.no_grad():
        l5 = plain(ref5["input_ids"].long()).logits
    err = ((l5 - ref5["logits"]).abs().max() / ref5["logits"].abs().max()).item()
    assert err < 1e-5, err

    gen = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS)
    model = get_peft_model(load_base(base), cfg)
    adir = os.path.join(a.out, "adapter")
    tensors, saved, ids, logits = adapted_reference(model, gen, adir)
    loss = tensors["loss"]
    # the per-expert layout: a pair per expert and module, and the router as a module
    E, C, Fd = model.config.num_local_experts, model.config.hidden_size, model.config.intermediate_size
    pre = "base_model.model.model.layers.1.block_sparse_moe."
    shapes = {k[len(pre):]: tuple(v.shape) for k, v in saved.items() if k.startswith(pre + "experts.3.") or
              k.startswith(pre + "gate.")}
    assert shapes == {"experts.3.w1.lora_A.weight": (R, C), "experts.3.w1.lora_B.weight": (Fd, R),
                      "experts.3.w3.lora_A.weight": (R, C), "experts.3.w3.lora_B.weight": (Fd, R),
                      "experts.3.w2.lora_A.weight": (R, Fd), "experts.3.w2.lora_B.weight": (C, R),
                      "gate.lora_A.weight": (R, C), "gate.lora_B.weight": (E, R)}, shapes

    save_file(tensors, os.path.join(a.out, "reference.safetensors"),
              metadata={"torch": torch.__version__, "transformers": transformers.__version__,
                        "peft": peft.__version__, "base": base})

    loaded = PeftModel.from_pretrained(load_base(base), adir).eval()
    with torch.no_grad():
        same = loaded(ids).logits
    assert torch.allclose(same, logits.detach(), atol=1e-5), (same - logits).abs().max()
    print(f"mixtral_t4: {len(saved)} adapter tensors, loss {loss.item():.5f}, base logits vs transformers 5 {err:.2g}")


if __name__ == "__main__":
    main()
