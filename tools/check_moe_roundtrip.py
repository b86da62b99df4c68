#!/usr/bin/env python3
"""check_moe_roundtrip.py - does transformers load an MoE directory that anvil wrote, with the
reference logits? For each (written dir, reference.safetensors) pair: load with AutoModelForCausalLM,
run the fixture's input_ids, compare the logits with the fixture's (max |diff| / max |ref|).
    anvil inspect tests/fixtures/moe/mixtral/model --save /tmp/mx
    python3 tools/check_moe_roundtrip.py /tmp/mx tests/fixtures/moe/mixtral/reference.safetensors
"""
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    args = sys.argv[1:]
    if not args or len(args) % 2:
        sys.exit(__doc__)
    bad = 0
    for d, ref in zip(args[::2], args[1::2]):
        r = load_file(ref)
        m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        with torch.no_grad():
            out = m(r["input_ids"].long(), output_router_logits=True)
        err = ((out.logits - r["logits"]).abs().max() / r["logits"].abs().max()).item()
        print(f"{d}: {type(m).__name__}, logits relative error {err:.3g}")
        bad += not err < 1e-5
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
