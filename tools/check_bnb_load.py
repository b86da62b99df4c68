#!/usr/bin/env python3
"""check_bnb_load.py - does a 4-bit directory that `anvil quantize` wrote load in
transformers + bitsandbytes, and compute what anvil's dequantized model computes?

    python3 tools/check_bnb_load.py DIR4 [--anvil ./anvil] [--device cpu|cuda] [--tol T] [--native]

1. `anvil quantize --dequantize DIR4 --out TMP` writes anvil's dequantized weights as a plain
   fp32 directory.
2. DIR4 is loaded with AutoModelForCausalLM (bitsandbytes 4-bit from its quantization_config):
   transformers must report no missing, unexpected or mismatched weights, and every block
   linear must be a bnb Linear4bit.
3. Every 4-bit weight, dequantized by bitsandbytes (dequantize_4bit, fp32), must equal anvil's
   bit for bit.
4. The logits of a fixed random batch, fp32 compute, are compared with TMP's in plain
   transformers: max |a - b| / max |b| <= tol.

Step 4 runs each Linear4bit as dequantize_4bit + linear (bitsandbytes' default gemm_4bit), so
that it is exact on any device; --native uses bitsandbytes' own kernels instead (on a GPU;
on the CPU, bitsandbytes 0.50.2's AVX-512 gemm path is wrong for in_features not a multiple
of the block size). Exit status 0 if all holds, 1 if not, 2 if the libraries are missing.
"""
import argparse
import copy
import os
import shutil
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir4")
    ap.add_argument("--anvil", default=os.environ.get("ANVIL", "./anvil"))
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--tol", type=float, default=None, help="default 1e-5 (cpu), 1e-4 (cuda)")
    ap.add_argument("--native", action="store_true", help="bitsandbytes' own 4-bit matmul kernels")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        import torch
        import transformers
        import bitsandbytes as bnb
        import bitsandbytes.functional as F
    except ImportError as e:
        print(f"check_bnb_load: needs torch, transformers and bitsandbytes ({e})", file=sys.stderr)
        return 2
    from transformers import AutoModelForCausalLM
    transformers.logging.set_verbosity_error()
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tol = args.tol if args.tol is not None else (1e-5 if dev == "cpu" else 1e-4)
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    tmp = tempfile.mkdtemp(prefix="check_bnb_load.")
    plain_dir = os.path.join(tmp, "plain")
    ok = True
    try:
        r = subprocess.run([args.anvil, "quantize", "--dequantize", args.dir4, "--out", plain_dir],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"check_bnb_load: anvil quantize --dequantize failed: {r.stderr.strip()}", file=sys.stderr)
            return 1
        m, info = AutoModelForCausalLM.from_pretrained(args.dir4, dtype=torch.float32, device_map=dev,
                                                       output_loading_info=True)
        for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            if info.get(k):
                print(f"check_bnb_load: {args.dir4}: {k}: {sorted(info[k])}", file=sys.stderr)
                ok = False
        plain = AutoModelForCausalLM.from_pretrained(plain_dir, dtype=torch.float32).to(dev).eval()
        pw = dict(plain.named_parameters())
        pmods = dict(plain.named_modules())
        from transformers.pytorch_utils import Conv1D
        n4 = 0
        worst_w = 0.0
        for name, mod in m.named_modules():
            if not isinstance(mod, bnb.nn.Linear4bit):
                continue
            n4 += 1
            qs = copy.copy(mod.weight.quant_state)
            qs.shape, qs.dtype = torch.Size([qs.shape.numel()]), torch.float32  # flat: one row
            w = F.dequantize_4bit(mod.weight.data, qs).reshape(mod.out_features, mod.in_features)
            ref = pw[name + ".weight"]
            if isinstance(pmods.get(name), Conv1D):  # GPT-2's Conv1D keeps (in, out) in the plain model
                ref = ref.t()
            d = (w.float() - ref.float()).abs().max().item()
            worst_w = max(worst_w, d)
            if not args.native:
                bias = None if mod.bias is None else mod.bias.float()
                mod.forward = (lambda w, b: lambda x: torch.nn.functional.linear(x.float(), w, b))(w.float(), bias)
            else:
                mod.compute_dtype, mod.compute_type_is_set = torch.float32, True
                mod.support_avx512bf16_for_cpu = False  # its CPU repacking refuses in_features % 64 != 0
        for p in m.parameters():
            if not isinstance(p, bnb.nn.Params4bit) and p.dtype != torch.float32:
                p.data = p.data.float()
        if n4 == 0:
            print(f"check_bnb_load: {args.dir4}: no Linear4bit modules after loading", file=sys.stderr)
            ok = False
        if worst_w != 0:
            print(f"check_bnb_load: bitsandbytes' dequantize_4bit and anvil's differ by {worst_w:g}",
                  file=sys.stderr)
            ok = False
        cfg = plain.config
        V = cfg.vocab_size
        T = min(16, getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 16))
        g = torch.Generator().manual_seed(args.seed)
        ids = torch.randint(0, V, (2, T), generator=g).to(dev)
        with torch.no_grad():
            a = m.eval()(ids).logits.float()
            b = plain(ids).logits.float()
        err = ((a - b).abs().max() / b.abs().max()).item()
        ok &= err <= tol
        print(f"check_bnb_load: {args.dir4}: {type(m).__name__}, {n4} Linear4bit weights equal anvil's "
              f"dequantization{'' if worst_w == 0 else ' NOT'}; logits relative error {err:.3g} (tol {tol:g}, "
              f"{dev}{', native kernels' if args.native else ''})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
