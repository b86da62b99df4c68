#!/usr/bin/env python3
"""check_bitnet_export.py - does transformers load an `anvil quantize --quant bitnet` export (packed
trits + weight_scale, offline BitLinear) and compute what the latent model computes?

    python3 tools/check_bitnet_export.py EXPORT_DIR --latent LATENT_DIR [--device cuda] [--tol 1e-4]

LATENT_DIR is the model before packing (an anvil QAT checkpoint: fp32 latent weights with
quantization_config online AutoBitLinear). Both are loaded with AutoModelForCausalLM; the logits of
random token ids are compared (max |diff| / max |ref|). Exit status 1 above --tol.
"""
import argparse
import sys

import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("export")
    ap.add_argument("--latent", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    packed = AutoModelForCausalLM.from_pretrained(args.export, dtype=torch.float32).to(args.device).eval()
    latent = AutoModelForCausalLM.from_pretrained(args.latent, dtype=torch.float32).to(args.device).eval()
    kinds = {type(m).__name__ for m in packed.modules()}
    if "BitLinear" not in kinds:
        print(f"{args.export}: transformers built no BitLinear module (got {sorted(kinds)})")
        return 1
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, packed.config.vocab_size, (2, args.tokens), generator=g).to(args.device)
    with torch.no_grad():
        a = packed(input_ids=ids).logits.float()
        b = latent(input_ids=ids).logits.float()
    err = ((a - b).abs().max() / b.abs().max()).item()
    ok = err <= args.tol
    print(f"{args.export}: offline BitLinear vs latent AutoBitLinear logits: relative error {err:.3g} "
          f"({'ok' if ok else 'FAIL'}, tol {args.tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
