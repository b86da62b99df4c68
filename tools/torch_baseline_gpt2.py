#!/usr/bin/env python3
"""PyTorch baseline for `anvil bench`: GPT-2 124M training steps on one GPU.

The model is the GPT-2 block of nanoGPT / llm.c's train_gpt2.py (pre-norm,
GELU-tanh MLP, tied head), trained with bf16 autocast, torch.compile,
scaled_dot_product_attention on the flash backend, gradient clipping at 1.0
and fused AdamW -- the same work per step as anvil's bench (forward, loss,
backward, global norm, AdamW). Tokens are uniform random.

Prints the same lines and Markdown row as `anvil bench`:
  python3 tools/torch_baseline_gpt2.py --batch 64 --seq 1024 --steps 20
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

H100_BF16_PEAK = 989e12  # dense bf16, H100 SXM datasheet


class Block(nn.Module):
    def __init__(self, d, nh):
        super().__init__()
        self.nh = nh
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.nh, C // self.nh).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab, ctx, n_layer, n_head, d):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(ctx, d)
        self.h = nn.ModuleList(Block(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("c_proj.weight", "mlp_proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for b in self.h:
            x = b(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))


def gemm_ceiling(n=8192, reps=20):
    a = torch.rand(n, n, device="cuda", dtype=torch.bfloat16) - 0.5
    b = torch.rand(n, n, device="cuda", dtype=torch.bfloat16) - 0.5
    for _ in range(3):
        a @ b.T
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b.T
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=50257, help="50304 = nanoGPT's padded vocabulary")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()

    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = "cuda"
    model = GPT(a.vocab, 1024, 12, 12, 768).to(dev)
    nparams = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    step_fn = model if a.no_compile else torch.compile(model)
    B, T = a.batch, a.seq
    data = torch.randint(0, 50257, (B, T + 1), device=dev)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()

    times, losses = [], []
    for s in range(a.warmup + a.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16), \
                torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            loss = step_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step = statistics.median(times[a.warmup:])
    tok_s = B * T / step
    fpt = 6 * nparams + 6 * 12 * 768 * T
    rate = fpt * tok_s
    peak = torch.cuda.max_memory_allocated() / 2**30
    ceiling = gemm_ceiling()
    name = torch.cuda.get_device_name()
    print(f"model gpt2-124m (pytorch {torch.__version__}, {nparams / 1e6:.1f}M params, vocab {a.vocab}), "
          f"device {name}, batch {B} x {T}")
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps (random tokens)")
    print(f"step {step * 1e3:.2f} ms (median of {a.steps} after {a.warmup} warm-up), {tok_s:.0f} tokens/s")
    print(f"{fpt:.3g} FLOP/token, {rate / 1e12:.2f} TFLOP/s achieved")
    print(f"matmul ceiling (torch bf16 8192^3): {ceiling / 1e12:.2f} TFLOP/s; step reaches {100 * rate / ceiling:.1f}%")
    print(f"MFU {100 * rate / H100_BF16_PEAK:.1f}% of 989 TFLOP/s (H100 SXM dense bf16)")
    print(f"peak memory {peak:.2f} GiB (torch.cuda.max_memory_allocated)")
    print("| impl | model | device | B | T | recompute | step ms | tokens/s | TFLOP/s | MFU (989) | of ceiling | peak GiB |")
    print(f"| pytorch{'' if not a.no_compile else ' eager'} | gpt2-124m | {name} | {B} | {T} | - | {step * 1e3:.1f} | "
          f"{tok_s:.0f} | {rate / 1e12:.2f} | {100 * rate / H100_BF16_PEAK:.1f}% | {100 * rate / ceiling:.1f}% | {peak:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"impl": "pytorch", "step_ms": step * 1e3, "tokens_per_s": tok_s, "tflops": rate / 1e12,
                       "ceiling_tflops": ceiling / 1e12, "peak_gib": peak, "torch": torch.__version__}, f, indent=2)


if __name__ == "__main__":
    main()
