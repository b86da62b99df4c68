#!/usr/bin/env python3
"""moe_peer.py - the transformers peer of `anvil bench --model moe-1b` (issue 12, docs/moe.md).

transformers' MixtralForCausalLM at the moe-1b shape (d 1024, 16 layers, 16 heads, 4 kv heads,
8 experts top-2 of width 2816, vocabulary 32000, untied head), random init, uniform random tokens,
bf16 autocast over fp32 weights, router aux loss on (output_router_logits=True,
router_aux_loss_coef 0.01, as anvil's default), gradient clipping at 1.0, fused AdamW; optionally
torch.compile. One optimizer step = forward + loss + backward + clip + AdamW, as anvil bench times.

Prints the parameter counts, the step time, tokens/s, MFU on active FLOPs (6 x active parameters
per token for the products + causal attention 6 x n_layer x d x T, the formula of anvil's
model_flops_per_token for a fully trainable model; against 989 TFLOP/s) and the peak memory, and the
Markdown row of anvil bench:
    python3 tools/moe_peer.py --batch 8 --seq 2048 --steps 10 [--compile] [--json FILE]
"""
import argparse
import json
import statistics
import time

import torch
from transformers import MixtralConfig, MixtralForCausalLM

H100_BF16_PEAK = 989e12  # dense bf16, H100 / H200 SXM datasheet


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa, eager, flash_attention_2)")
    ap.add_argument("--experts-impl", default=None,
                    help="transformers' experts_implementation (eager loop by default; e.g. grouped_mm)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = MixtralConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
                        num_attention_heads=16, num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=2,
                        max_position_embeddings=a.seq, router_aux_loss_coef=0.01, output_router_logits=True,
                        tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    kw = {"attn_implementation": a.attn}
    if a.experts_impl:
        kw["experts_implementation"] = a.experts_impl
    model = MixtralForCausalLM._from_config(cfg, **kw).cuda().train()
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    active = total - experts + experts // cfg.num_local_experts * cfg.num_experts_per_tok
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    fwd = torch.compile(model) if a.compile else model
    B, T = a.batch, a.seq

    def step():
        x = torch.randint(0, cfg.vocab_size, (B, T), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fwd(input_ids=x, labels=x, output_router_logits=True)  # loss includes 0.01 * aux
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times)
    tok_s = B * T / ms
    fpt = 6.0 * (active - cfg.vocab_size * cfg.hidden_size) + 6.0 * cfg.num_hidden_layers * cfg.hidden_size * T
    mfu = fpt * tok_s / H100_BF16_PEAK
    peak = torch.cuda.max_memory_allocated() / 2**30
    impl = "transformers" + (" compile" if a.compile else " eager")
    print(f"MixtralForCausalLM moe-1b shape: {total / 1e6:.1f}M parameters, {active / 1e6:.1f}M active; "
          f"batch {B} x {T}, bf16 autocast, fused AdamW, aux loss on, {a.attn} attention, "
          f"experts {a.experts_impl or 'default'}; loss {loss.item():.4f}")
    print(f"step {ms * 1e3:.1f} ms (median of {a.steps}), {tok_s:.0f} tokens/s, {fpt:.4g} FLOP/token (active), "
          f"MFU {100 * mfu:.1f}%, peak {peak:.2f} GiB")
    print(f"| {impl} | moe-1b | {torch.cuda.get_device_name()} | {B} | {T} | - | {ms * 1e3:.1f} | {tok_s:.0f} | "
          f"{fpt * tok_s / 1e12:.2f} | {100 * mfu:.1f}% | - | {peak:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"impl": impl, "batch": B, "seq": T, "ms": ms * 1e3, "tokens_per_s": tok_s,
                       "flops_per_token": fpt, "mfu": mfu, "peak_gib": peak, "params": total, "active": active}, f)


if __name__ == "__main__":
    main()
