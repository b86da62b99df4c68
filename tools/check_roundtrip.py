#!/usr/bin/env python3
"""check_roundtrip.py - does a model directory that anvil wrote load in transformers
and compute what the original computes?

    python3 tools/check_roundtrip.py SAVED_DIR REFERENCE_DIR [SAVED_DIR REFERENCE_DIR ...] [--tol 1e-5]

Loads both directories with AutoModelForCausalLM (fp32 compute), requires that
transformers reports no missing, unexpected or mismatched weights for SAVED_DIR,
that both configs name the same class, and compares the logits of a fixed random
batch: max |saved - ref| / max |ref| <= tol. For a bf16 save use a looser tol
(e.g. 2e-2). Exit status 0 if all holds, 1 if not, 2 if torch/transformers are
missing.
"""
import argparse
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", metavar="SAVED_DIR REFERENCE_DIR")
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError as e:
        print(f"check_roundtrip: needs torch and transformers ({e})", file=sys.stderr)
        return 2
    transformers.logging.set_verbosity_error()
    if len(args.dirs) % 2:
        ap.error("directories come in pairs: SAVED_DIR REFERENCE_DIR")
    ok = True
    for i in range(0, len(args.dirs), 2):
        ok &= check_pair(args.dirs[i], args.dirs[i + 1], args.tol, args.seed)
    return 0 if ok else 1


def check_pair(saved_dir, ref_dir, tol, seed):
    import torch
    from transformers import AutoModelForCausalLM
    saved, info = AutoModelForCausalLM.from_pretrained(saved_dir, dtype=torch.float32, output_loading_info=True)
    ref = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32)
    ok = True
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info.get(k):
            print(f"check_roundtrip: {saved_dir}: {k}: {sorted(info[k])}", file=sys.stderr)
            ok = False
    if type(saved).__name__ != type(ref).__name__:
        print(f"check_roundtrip: class {type(saved).__name__} != {type(ref).__name__}", file=sys.stderr)
        ok = False
    V = ref.config.vocab_size
    T = min(16, getattr(ref.config, "max_position_embeddings", None) or getattr(ref.config, "n_positions", 16))
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (2, T), generator=gen)
    with torch.no_grad():
        a = saved.eval()(ids).logits.float()
        b = ref.eval()(ids).logits.float()
    err = ((a - b).abs().max() / b.abs().max()).item()
    print(f"check_roundtrip: {saved_dir}: {type(saved).__name__}: logits relative error {err:.3g} (tol {tol:g})")
    return ok and err <= tol


if __name__ == "__main__":
    sys.exit(main())
