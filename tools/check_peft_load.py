#!/usr/bin/env python3
"""check_peft_load.py - does an adapter directory that anvil wrote load in PEFT and compute what
anvil's merge of it computes?

    python3 tools/check_peft_load.py BASE_DIR ADAPTER_DIR MERGED_DIR [--tol 1e-5]

Loads BASE_DIR with transformers and ADAPTER_DIR over it with peft.PeftModel.from_pretrained;
requires that every tensor of the adapter file is a parameter of the PEFT model with the same
values (nothing missing, nothing ignored); loads MERGED_DIR (written by `anvil merge`) as a plain
model; compares the logits of the adapted model and of the merged one on a fixed random batch:
max |peft - merged| / max |peft| <= tol. Also checks merge_and_unload()'s weights against
MERGED_DIR's. Exit 0 if all holds, 1 if not, 2 if torch/transformers/peft are missing.
"""
import argparse
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("adapter")
    ap.add_argument("merged")
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args()
    try:
        import peft
        import torch
        import transformers
        from safetensors.torch import load_file
    except ImportError as e:
        print(f"check_peft_load: needs torch, transformers and peft ({e})", file=sys.stderr)
        return 2
    transformers.logging.set_verbosity_error()
    base = transformers.AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, args.adapter)
    model.eval()
    state = {k.replace(".default", ""): v for k, v in model.state_dict().items()}
    saved = load_file(f"{args.adapter}/adapter_model.safetensors")
    ok = True
    for k, v in saved.items():
        if k not in state:
            print(f"FAIL {k}: in the adapter file but not a parameter of the PEFT model")
            ok = False
        elif not torch.equal(state[k].to(v.dtype), v):
            print(f"FAIL {k}: PEFT holds other values than the file")
            ok = False
    n_lora = sum(1 for k in state if "lora_" in k)
    if n_lora != len(saved):
        print(f"FAIL the PEFT model has {n_lora} adapter tensors, the file {len(saved)}")
        ok = False
    merged = transformers.AutoModelForCausalLM.from_pretrained(args.merged, dtype=torch.float32)
    merged.eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, base.config.vocab_size, (2, min(16, base.config.max_position_embeddings)), generator=g)
    with torch.no_grad():
        a = model(input_ids=ids).logits
        b = merged(input_ids=ids).logits
    err = ((a - b).abs().max() / a.abs().max()).item()
    print(f"adapted (PEFT over anvil's adapter) vs anvil-merged logits: max rel err {err:.2e}")
    ok &= err <= args.tol
    ref = model.merge_and_unload().state_dict()
    worst = 0.0
    for k, v in merged.state_dict().items():
        if k in ref and v.dim() == 2:
            worst = max(worst, ((ref[k] - v).abs().max() / ref[k].abs().max().clamp_min(1e-30)).item())
    print(f"merge_and_unload() weights vs anvil merge: max rel err {worst:.2e}")
    ok &= worst <= args.tol
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
