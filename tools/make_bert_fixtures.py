#!/usr/bin/env python3
"""make_bert_fixtures.py - transformers reference fixtures for anvil's encoders (tests/test_bert.c).

Writes, under tests/fixtures/bert/ (or --out):
  bert/model/                 save_pretrained() of a tiny random-init BertForMaskedLM (fp32)
  bert/reference.safetensors  a padded batch: input_ids (I32 (B,T), padding = pad_token_id), lengths
                              (I32 (B)), labels (I32 (B,T), -100 = not scored), logits (B,T,V) with
                              attention_mask = positions < length, loss (1, mean over scored labels),
                              grad.<hf name> for every parameter
  roberta/...                 the same for RobertaForMaskedLM (position ids from padding_idx + 1)
  bertmodel/model/            a BertModel (with its pooler, which anvil ignores), and
  bertmodel/reference.safetensors  input_ids, lengths, hidden (B,T,C) last_hidden_state, and the
                              sentence embeddings mean (B,C) (over valid tokens) and cls (B,C)
  <bert|roberta>/premasked.jsonl   the batch as pre-masked JSONL records (input_ids, labels with -100,
                              attention_mask; one row without padding), premasked_reference.json the
                              loss and accuracy transformers gives it
  bertembed/                  a BertModel with the wp_cased WordPiece tokenizer, texts.txt, and the
                              mean / cls sentence embeddings of those texts

The initialization is larger than transformers' default (matrices N(0, 0.25), embeddings
N(0, 0.1), biases N(0, 0.1), norm weights 1 + U(-0.5, 0.5)) so that every tensor matters.
Valid tokens avoid the pad id (nn.Embedding's padding_idx row gets no lookup gradient in
transformers). Deterministic: reruns write the same values. Run from the repository root:
    /tmp/pyenv/bin/python tools/make_bert_fixtures.py
With --check DIR TYPE, loads an HF directory anvil wrote (TYPE bert or roberta) and prints the largest
logit difference from the fixture's on the reference batch.
"""
import argparse
import json
import os
import shutil
import sys

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForMaskedLM, BertModel, RobertaConfig, RobertaForMaskedLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import canonical_metadata  # noqa: E402  (reruns write the same bytes)

SEED = 4321
B, T = 3, 12
LENGTHS = [12, 7, 4]
MASKED = 0.3  # fraction of valid positions scored (anvil's loss is over whatever is scored)
STD_MATRIX, STD_EMBED, STD_BIAS, NORM_SPREAD = 0.25, 0.1, 0.1, 0.5


def configs():
    common = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                  hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                  layer_norm_eps=1e-12, attn_implementation="eager")
    bert = BertConfig(max_position_embeddings=32, type_vocab_size=2, pad_token_id=0, **common)
    roberta = RobertaConfig(max_position_embeddings=34, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                            eos_token_id=2, **common)
    return bert, roberta


@torch.no_grad()
def init_params(model, gen):
    for name, p in model.named_parameters():
        if "LayerNorm.weight" in name or "layer_norm.weight" in name:
            p.copy_(1 + NORM_SPREAD * (2 * torch.rand(p.shape, generator=gen) - 1))
        elif "embeddings" in name:
            p.copy_(STD_EMBED * torch.randn(p.shape, generator=gen))
        elif p.ndim == 1:
            p.copy_(STD_BIAS * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(STD_MATRIX * torch.randn(p.shape, generator=gen))


def batch(cfg, gen):
    pad = cfg.pad_token_id
    V = cfg.vocab_size
    ids = torch.randint(3, V, (B, T), generator=gen)
    ids[ids == pad] = pad + 3
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(LENGTHS):
        mask[b, :n] = 1
        ids[b, n:] = pad
    labels = torch.full((B, T), -100, dtype=torch.long)
    pick = (torch.rand(B, T, generator=gen) < MASKED) & (mask == 1)
    pick[0, 0] = True  # at least one scored position per row
    pick[1, 1] = True
    pick[2, 3] = True
    labels[pick] = torch.randint(3, V, (int(pick.sum()),), generator=gen)
    return ids, mask, labels


def write_premasked(out, name, ids, mask, labels, logits):
    """The batch as pre-masked JSONL (what `anvil eval mlm --data` scores as given), and
    transformers' loss and accuracy over it."""
    path = os.path.join(out, name, "premasked.jsonl")
    with open(path, "w") as f:
        for b in range(ids.shape[0]):
            n = int(mask[b].sum())
            rec = {"input_ids": ids[b].tolist(), "labels": labels[b].tolist(), "attention_mask": mask[b].tolist()}
            if b == 2:  # a row given without padding or mask: its length is its own
                rec = {"input_ids": ids[b, :n].tolist(), "labels": labels[b, :n].tolist()}
            f.write(json.dumps(rec) + "\n")
    V = logits.shape[-1]
    scored = labels.reshape(-1) != -100
    lg = logits.reshape(-1, V)[scored]
    lb = labels.reshape(-1)[scored]
    loss = F.cross_entropy(lg, lb).item()
    acc = (lg.argmax(-1) == lb).float().mean().item()
    with open(os.path.join(out, name, "premasked_reference.json"), "w") as f:
        json.dump({"loss": loss, "accuracy": acc, "scored": int(scored.sum())}, f)
        f.write("\n")


def reference_mlm(out, name, cls, cfg, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = cls(cfg).float().eval()
    init_params(model, gen)
    mdir = os.path.join(out, name, "model")
    model.save_pretrained(mdir)
    ids, mask, labels = batch(cfg, gen)
    logits = model(input_ids=ids, attention_mask=mask).logits
    # every other scored label is the model's own top guess, so that the accuracy of the
    # pre-masked reference is neither 0 nor 1
    where = (labels != -100).nonzero().tolist()
    for k, (b, t) in enumerate(where):
        if k % 2:
            labels[b, t] = logits[b, t].argmax().item()
    V = cfg.vocab_size
    loss = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    loss.backward()
    tensors = {
        "input_ids": ids.to(torch.int32),
        "lengths": torch.tensor(LENGTHS, dtype=torch.int32),
        "labels": labels.to(torch.int32),
        "logits": logits.detach().contiguous(),
        "loss": loss.detach().reshape(1),
    }
    write_premasked(out, name, ids, mask, labels, logits.detach())
    for n, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        tensors["grad." + n] = g.detach().clone().contiguous()
    meta = {"model": name, "architecture": cls.__name__, "seed": str(seed), "B": str(B), "T": str(T),
            "lengths": json.dumps(LENGTHS), "loss": "mean cross-entropy over labels != -100",
            "torch": torch.__version__, "transformers": transformers.__version__}
    save_file(tensors, os.path.join(out, name, "reference.safetensors"), metadata=meta)
    canonical_metadata(os.path.join(out, name, "reference.safetensors"))


@torch.no_grad()
def reference_bertmodel(out, cfg, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = BertModel(cfg).float().eval()
    init_params(model, gen)
    model.save_pretrained(os.path.join(out, "bertmodel", "model"))
    ids, mask, _ = batch(cfg, gen)
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).float()
    mean = (hidden * m).sum(1) / m.sum(1)
    tensors = {"input_ids": ids.to(torch.int32), "lengths": torch.tensor(LENGTHS, dtype=torch.int32),
               "hidden": hidden.contiguous(), "mean": mean.contiguous(), "cls": hidden[:, 0].contiguous()}
    save_file(tensors, os.path.join(out, "bertmodel", "reference.safetensors"),
              metadata={"model": "bertmodel", "seed": str(seed), "transformers": transformers.__version__})
    canonical_metadata(os.path.join(out, "bertmodel", "reference.safetensors"))


@torch.no_grad()
def check(out, directory, kind):
    ref = load_file(os.path.join(out, kind, "reference.safetensors"))
    cls = RobertaForMaskedLM if kind == "roberta" else BertForMaskedLM
    model = cls.from_pretrained(directory, attn_implementation="eager").float().eval()
    ids = ref["input_ids"].long()
    mask = (torch.arange(T)[None, :] < ref["lengths"][:, None].long()).long()
    logits = model(input_ids=ids, attention_mask=mask).logits
    diff = 0.0
    for b, n in enumerate(ref["lengths"].tolist()):
        diff = max(diff, (logits[b, :n] - ref["logits"][b, :n]).abs().max().item())
    print(f"{directory}: {cls.__name__} loads; largest logit difference at valid positions {diff:.3g}")
    return 0 if diff < 1e-4 else 1


TEXTS = ["Hello world!", "The quick brown fox jumps over the lazy dog.", "naïve café, résumé",
         "Encoders are what retrieval systems are built on; anvil trains them too."]


@torch.no_grad()
def reference_embed(out, seed):
    """A BertModel with a real WordPiece tokenizer (tests/fixtures/tokenizers/wp_cased): sentence
    embeddings of TEXTS as `anvil embed` computes them (the tokenizer's template, mean over the
    attention mask, or the [CLS] row)."""
    from transformers import PreTrainedTokenizerFast
    tdir = "tests/fixtures/tokenizers/wp_cased"
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(tdir, "tokenizer.json"), pad_token="[PAD]")
    cfg = BertConfig(vocab_size=tok.backend_tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=48, hidden_act="gelu", hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, max_position_embeddings=64, pad_token_id=0,
                     attn_implementation="eager")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = BertModel(cfg, add_pooling_layer=False).float().eval()
    init_params(model, gen)
    mdir = os.path.join(out, "bertembed", "model")
    model.save_pretrained(mdir)
    shutil.copy(os.path.join(tdir, "tokenizer.json"), os.path.join(mdir, "tokenizer.json"))
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    mean = (hidden * m).sum(1) / m.sum(1)
    save_file({"input_ids": enc["input_ids"].to(torch.int32).contiguous(),
               "lengths": enc["attention_mask"].sum(1).to(torch.int32), "mean": mean.contiguous(),
               "cls": hidden[:, 0].contiguous()},
              os.path.join(out, "bertembed", "reference.safetensors"),
              metadata={"texts": json.dumps(TEXTS), "transformers": transformers.__version__})
    canonical_metadata(os.path.join(out, "bertembed", "reference.safetensors"))
    with open(os.path.join(out, "bertembed", "texts.txt"), "w") as f:
        f.write("\n".join(TEXTS) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/bert")
    ap.add_argument("--check", nargs=2, metavar=("DIR", "TYPE"))
    a = ap.parse_args()
    if a.check:
        sys.exit(check(a.out, *a.check))
    if os.path.isdir(a.out):
        shutil.rmtree(a.out)
    bert, roberta = configs()
    reference_mlm(a.out, "bert", BertForMaskedLM, bert, SEED)
    reference_mlm(a.out, "roberta", RobertaForMaskedLM, roberta, SEED + 1)
    reference_bertmodel(a.out, bert, SEED + 2)
    reference_embed(a.out, SEED + 3)


if __name__ == "__main__":
    main()
