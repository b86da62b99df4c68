#!/usr/bin/env python3
"""bert_peer.py - the transformers peer of `anvil bench --model bert-base` (issue 16's target).

transformers' BertForMaskedLM (bert-base: 12 layers, 768 wide, 12 heads, vocab 30522; or bert-large)
from a random init, bf16 autocast, SDPA attention, fused AdamW, gradient clipping at 1.0, masked-LM
batches of B x T random tokens with 15% of the positions scored (labels -100 elsewhere; as the
bench, which scores a fixed random 15% and leaves the inputs as they are). Dropout is off by
default, as anvil's model.dropout / model.attn_dropout; --dropout P sets BERT's hidden and attention
dropout to P on this side (anvil bench --dropout P --attn-dropout P on the other), so both sides do the
same work per step: forward, loss over the scored rows (transformers' head computes the logits of every row, anvil's only of the scored ones,
which is one of the things measured), backward, global norm, AdamW.

Prints the same lines and Markdown row as `anvil bench`:
  python3 tools/bert_peer.py --model bert-base --batch 64 --seq 512 --steps 20            # eager
  python3 tools/bert_peer.py --model bert-base --batch 64 --seq 512 --steps 20 --compile  # torch.compile
  python3 tools/bert_peer.py --model bert-base --batch 64 --seq 512 --steps 20 --dropout 0.1  # BERT's recipe
The anvil side, in the same device call:
  ./anvil bench --model bert-base --device cuda --batch 64 --seq 512 --steps 20
"""
import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import BertConfig, BertForMaskedLM

H100_BF16_PEAK = 989e12  # dense bf16, H100/H200 SXM datasheet
MLM_PROB = 0.15
SHAPES = {"bert-base": (12, 768, 12, 3072), "bert-large": (24, 1024, 16, 4096)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(SHAPES), default="bert-base")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--dropout", type=float, default=0.0, help="hidden and attention-probability dropout")
    ap.add_argument("--json")
    a = ap.parse_args()

    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = "cuda"
    L, C, H, F = SHAPES[a.model]
    cfg = BertConfig(vocab_size=30522, hidden_size=C, num_hidden_layers=L, num_attention_heads=H, intermediate_size=F,
                     max_position_embeddings=512, hidden_dropout_prob=a.dropout, attention_probs_dropout_prob=a.dropout,
                     attn_implementation="sdpa")
    model = BertForMaskedLM(cfg).to(dev).train()
    nparams = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    step_fn = torch.compile(model) if a.compile else model
    B, T = a.batch, a.seq
    g = torch.Generator(device=dev).manual_seed(42)
    ids = torch.randint(0, cfg.vocab_size, (B, T), device=dev, generator=g)
    pick = torch.rand(B, T, device=dev, generator=g) < MLM_PROB
    labels = torch.where(pick, ids, torch.full_like(ids, -100))
    mask = torch.ones_like(ids)

    times, losses = [], []
    torch.cuda.reset_peak_memory_stats()
    for s in range(a.warmup + a.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_fn(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step = statistics.median(times[a.warmup:])
    tok_s = B * T / step
    # FLOPs as anvil counts them: 6 per weight of the blocks, bidirectional attention 12 * L * C * T,
    # the head's products (dense C x C, decoder V x C) over the scored share of the rows
    block = L * (4 * C * C + 2 * C * F)
    head = (C * C + cfg.vocab_size * C) * float(pick.float().mean())
    fpt = 6 * (block + head) + 12 * L * C * T
    rate = fpt * tok_s
    peak = torch.cuda.max_memory_allocated() / 2**30
    name = torch.cuda.get_device_name()
    impl = f"transformers {'compile' if a.compile else 'eager'}"
    print(f"model {a.model} (transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{nparams / 1e6:.1f}M params), device {name}, batch {B} x {T}, {100 * MLM_PROB:.0f}% of positions scored")
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps (random tokens)")
    print(f"step {step * 1e3:.2f} ms (median of {a.steps} after {a.warmup} warm-up), {tok_s:.0f} tokens/s")
    print(f"{fpt:.3g} FLOP/token (anvil's count), {rate / 1e12:.2f} TFLOP/s, MFU {100 * rate / H100_BF16_PEAK:.1f}% of 989")
    print(f"peak memory {peak:.2f} GiB (torch.cuda.max_memory_allocated)")
    print("| impl | model | device | B | T | recompute | step ms | tokens/s | TFLOP/s | MFU (989) | peak GiB |")
    print(f"| {impl} | {a.model} | {name} | {B} | {T} | - | {step * 1e3:.1f} | {tok_s:.0f} | {rate / 1e12:.2f} | "
          f"{100 * rate / H100_BF16_PEAK:.1f}% | {peak:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"impl": impl, "model": a.model, "B": B, "T": T, "step_ms": step * 1e3, "tokens_per_s": tok_s,
                       "tflops": rate / 1e12, "peak_gib": peak, "torch": torch.__version__,
                       "transformers": transformers.__version__, "losses": losses}, f, indent=2)


if __name__ == "__main__":
    main()
