#!/usr/bin/env python3
"""bert_curve.py - anvil's masked-LM training beside transformers' on the same start, text and
held-out masked tokens (issue 16: "loss falls like the transformers peer's on the same tokens").

Both trainers start from one random BertForMaskedLM (made here by transformers, dropout 0 since
anvil trains encoders without dropout), read the same text through the same WordPiece tokenizer in
[CLS] window [SEP] rows of --seq tokens, mask 15% (80/10/10, specials never), and run AdamW with the
same hyperparameters (constant lr after a linear warmup, no weight decay, clip 1.0). Their row order
and mask draws are their own (anvil's loader and masking are its own code); what is shared is the
start, the text, the recipe and the evaluation: every --every steps both save a checkpoint, and
`anvil eval mlm` scores each on one pre-masked held-out JSONL made here from the end of the text
(transformers scores the last two as well, to show the evaluator agrees).

    python3 tools/bert_curve.py [--anvil ./anvil] [--text FILE] [--steps 300] [--every 50] [--out DIR]

Needs torch, transformers, tokenizers (CPU is enough at the default size: bert-tiny's shape).
"""
import argparse
import json
import math
import os
import random
import subprocess
import sys

import torch
from tokenizers import Tokenizer
from transformers import BertConfig, BertForMaskedLM

TOK = "tests/fixtures/tokenizers/wp_uncased/tokenizer.json"


def rows_of(ids, seq, cls, sep):
    w = seq - 2
    return [[cls] + ids[i:i + w] + [sep] for i in range(0, len(ids) - w + 1, w)]


def mask_rows(rows, vocab, mask_id, specials, prob, g):
    """BERT's masking: chosen with prob, then 80% [MASK], 10% random, 10% kept; labels -100 elsewhere."""
    x = torch.tensor(rows)
    labels = x.clone()
    p = torch.full(x.shape, prob)
    for s in specials:
        p[x == s] = 0
    chosen = torch.bernoulli(p, generator=g).bool()
    labels[~chosen] = -100
    r = torch.rand(x.shape, generator=g)
    x[chosen & (r < 0.8)] = mask_id
    rnd = chosen & (r >= 0.8) & (r < 0.9)
    x[rnd] = torch.randint(vocab, x.shape, generator=g)[rnd]
    return x, labels


def anvil_eval(anvil, model, data):
    out = subprocess.run([anvil, "eval", "mlm", "--model", model, "--data", data, "--json"], capture_output=True,
                         text=True)
    if out.returncode:
        sys.exit(f"bert_curve: anvil eval mlm {model}: {out.stderr.strip()}")
    j = json.loads(out.stdout.strip().splitlines()[-1])
    return j["loss"], j["accuracy"]


def torch_eval(model, data):
    model.eval()
    loss_sum, n, hit = 0.0, 0, 0
    with torch.no_grad():
        for line in open(data):
            r = json.loads(line)
            x = torch.tensor([r["input_ids"]])
            y = torch.tensor([r["labels"]])
            logits = model(input_ids=x).logits
            keep = y >= 0
            loss_sum += torch.nn.functional.cross_entropy(logits[keep], y[keep], reduction="sum").item()
            hit += (logits[keep].argmax(-1) == y[keep]).sum().item()
            n += keep.sum().item()
    model.train()
    return loss_sum / n, hit / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--anvil", default="./anvil")
    ap.add_argument("--text", default=os.environ.get("ANVIL_SHARED_DATA", "../shared/data") + "/text/sentences.txt")
    ap.add_argument("--train-bytes", type=int, default=2_000_000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--heldout-rows", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="runs/bert-curve")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(a.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    raw = open(a.text, "rb").read()
    train_txt, held_txt = raw[:a.train_bytes], raw[-200_000:]
    train_path = os.path.join(a.out, "train.txt")
    open(train_path, "wb").write(train_txt)
    tok = Tokenizer.from_file(TOK)
    V = tok.get_vocab_size()
    cls, sep, pad, mask = (tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]"))
    specials = [cls, sep, pad]

    # the common start
    cfg = BertConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                     max_position_embeddings=128, type_vocab_size=2, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    init = os.path.join(a.out, "init")
    BertForMaskedLM(cfg).save_pretrained(init)
    tok.save(os.path.join(init, "tokenizer.json"))

    # the held-out masked tokens, shared by every evaluation
    g = torch.Generator().manual_seed(a.seed + 7)
    hids = tok.encode(held_txt.decode("utf-8", "replace"), add_special_tokens=False).ids
    hrows = rows_of(hids, a.seq, cls, sep)[:a.heldout_rows]
    hx, hy = mask_rows(hrows, V, mask, specials, 0.15, g)
    held = os.path.join(a.out, "heldout.jsonl")
    with open(held, "w") as f:
        for x, y in zip(hx.tolist(), hy.tolist()):
            f.write(json.dumps({"input_ids": x, "labels": y}) + "\n")

    # anvil
    yaml = os.path.join(a.out, "anvil.yaml")
    open(yaml, "w").write(f"""model:
  init: {init}
data:
  objective: mlm
  tokenizer: {TOK}
  train: {train_path}
  val: ""
train:
  seq_len: {a.seq}
  batch_size: {a.batch}
  steps: {a.steps}
  lr: {a.lr}
  warmup_steps: {a.warmup}
  schedule: constant
  weight_decay: 0
  grad_clip: 1.0
  seed: {a.seed}
eval:
  every: 0
checkpoint:
  every: {a.every}
  keep: 0
device: cpu
out_dir: {os.path.join(a.out, "anvil")}
""")
    r = subprocess.run([a.anvil, "train", yaml, "--overwrite"], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"bert_curve: anvil train: {r.stderr.strip()[-500:]}")

    # the peer: same start, same text and recipe, its own order and masks
    model = BertForMaskedLM.from_pretrained(init)
    ids = tok.encode(train_txt.decode("utf-8", "replace"), add_special_tokens=False).ids
    rows = rows_of(ids, a.seq, cls, sep)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / a.warmup))
    rng = random.Random(a.seed)
    order = []
    gm = torch.Generator().manual_seed(a.seed + 1)
    peer_dir = os.path.join(a.out, "peer")
    for step in range(1, a.steps + 1):
        if len(order) < a.batch:
            order += rng.sample(range(len(rows)), len(rows))
        batch = [rows[order.pop()] for _ in range(a.batch)]
        x, y = mask_rows(batch, V, mask, specials, 0.15, gm)
        loss = model(input_ids=x, labels=y).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % a.every == 0 or step == a.steps:
            d = os.path.join(peer_dir, f"step-{step:07d}")
            model.save_pretrained(d)
            tok.save(os.path.join(d, "tokenizer.json"))

    # the curves on the held-out masked tokens
    l0, a0 = anvil_eval(a.anvil, init, held)
    print(f"bert_curve: bert-tiny shape ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M), vocab {V}, "
          f"{a.steps} steps of {a.batch} x {a.seq}, lr {a.lr}; held-out: {len(hrows)} rows, "
          f"{int((hy >= 0).sum())} masked tokens; scored by anvil eval mlm")
    print("\n| step | anvil loss | anvil accuracy | transformers loss | transformers accuracy |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| 0 | {l0:.4f} | {a0:.4f} | {l0:.4f} | {a0:.4f} |")
    steps = sorted({s for s in range(a.every, a.steps + 1, a.every)} | {a.steps})
    for s in steps:
        la, aa = anvil_eval(a.anvil, os.path.join(a.out, "anvil", f"step-{s:07d}"), held)
        lp, ap_ = anvil_eval(a.anvil, os.path.join(peer_dir, f"step-{s:07d}"), held)
        print(f"| {s} | {la:.4f} | {aa:.4f} | {lp:.4f} | {ap_:.4f} |")
    tl, ta = torch_eval(model, held)
    al, aa = anvil_eval(a.anvil, os.path.join(peer_dir, f"step-{a.steps:07d}"), held)
    print(f"\nthe peer's last checkpoint scored by transformers: loss {tl:.4f}, accuracy {ta:.4f} "
          f"(anvil eval mlm: {al:.4f}, {aa:.4f})")


if __name__ == "__main__":
    main()
