"""PyTorch peer of tests/bench_attention.c: torch.nn.functional.scaled_dot_product_attention
(bf16, causal, head_dim 64) at the same shapes, forward and forward+backward, through the flash
backend (and cuDNN's where PyTorch offers it), CUDA events, medians. The backward alone is
(fwd+bwd) - fwd. Grouped-query heads: enable_gqa where the backend takes it, else K/V repeated
to every query head before the timed region (the same FLOPs). FLOPs as bench_attention.c.

  python3 tools/bench_attention_torch.py [--reps 20]
Prints Markdown rows: impl | shape | fwd ms | TFLOP/s | bwd ms | TFLOP/s | both ms."""
import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = [("gpt2 B64 T1024 h12/12", 64, 1024, 12, 12), ("llama B8 T2048 h32/4", 8, 2048, 32, 4)]
HD = 64


def timed(fn, reps, warmup=3):
    ts = []
    for i in range(warmup + reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        if i >= warmup:
            ts.append(e0.elapsed_time(e1))
    return statistics.median(ts)


def run(name, backend, shape, reps):
    label, B, T, nh, nkv = shape
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(B, nh, T, HD, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    k = torch.randn(B, nkv, T, HD, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(B, nkv, T, HD, device="cuda", dtype=torch.bfloat16, generator=g)
    do = torch.randn(B, nh, T, HD, device="cuda", dtype=torch.bfloat16, generator=g)
    gqa = nkv != nh
    how = ""
    with sdpa_kernel(backend):
        kw = {}
        if gqa:
            try:
                F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                kw = {"enable_gqa": True}
                how = " (enable_gqa)"
            except RuntimeError:
                k = k.repeat_interleave(nh // nkv, dim=1)
                v = v.repeat_interleave(nh // nkv, dim=1)
                how = " (K/V repeated)"
        k.requires_grad_()
        v.requires_grad_()

        def fwd():
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v, is_causal=True, **kw)

        def both():
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, **kw)
            o.backward(do)

        tf = timed(fwd, reps)
        tb = timed(both, reps)
    flop = 4.0 * B * nh * T * T * HD / 2
    bwd = tb - tf
    print(f"| torch {name}{how} | {label} | {tf:.3f} | {flop / tf * 1e-9:.1f} | {bwd:.3f} | "
          f"{2.5 * flop / bwd * 1e-9:.1f} | {tb:.3f} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    for name, backend in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)]:
        for shape in SHAPES:
            try:
                run(name, backend, shape, a.reps)
            except Exception as e:  # a backend PyTorch does not offer here
                print(f"| torch {name} | {shape[0]} | failed: {str(e).splitlines()[0][:100]} |", flush=True)


if __name__ == "__main__":
    main()
