#!/usr/bin/env python3
"""make_eval_fixtures.py - references for anvil's evaluation and generation tests
(tests/test_eval.c, tests/cli_eval.sh), computed with transformers + tokenizers.

Writes tests/fixtures/eval/ (or --out):
  gpt2/, llama/        two tiny models WITH a tokenizer (save_pretrained + tokenizer.json +
                       tokenizer_config.json), briefly trained on examples/sentences-train.txt
                       so that their preferences are clear (large margins between choices):
                         gpt2:  byte-level BPE, <|endoftext|> = bos = eos, no BOS added
                         llama: byte-level BPE, <s> added as BOS by the post-processor, </s> = eos,
                                GQA (4 heads, 2 kv heads), untied head
  ppl.txt              text for perplexity (lines of examples/sentences-val.txt)
  hellaswag.jsonl, piqa.jsonl, arc.jsonl, winogrande.jsonl, generic.jsonl
                       small samples in each dataset's public JSONL layout (texts written here)
  cli_cases.txt        the same numbers as tab-separated lines for tests/cli_eval.sh (no JSON parser
                       needed there), plus the greedy ids of tests/fixtures/{gpt2,llama,qwen2} (made by
                       tools/make_fixtures.py) for `anvil generate --prompt-ids`
  expected.json        per model:
    "ppl":  ids of ppl.txt (tokenizer(text), so with BOS for llama) and, per (ctx, stride),
            the Hugging Face documented loop's result ("hf_doc_nll"), the mean NLL over exactly
            the tokens that loop scores ("nll", "tokens"), and the per-position NLLs of every
            window ("windows": [{begin, end, nll[L-1]}]) for the tests' own window arithmetic
    "mcq":  per task, per item: lm-evaluation-harness' requests (context, continuation), the
            continuation token count, log-likelihoods, gold, the predictions of acc, acc_norm
            (ll / characters of the choice), acc_bytes (ll / UTF-8 bytes), whether the context
            was truncated, and the task's acc / acc_norm / acc_bytes
    "generate": prompts, their ids, transformers' greedy generate() without EOS stopping
            ("greedy", max_new_tokens up to the window), and with EOS stopping ("greedy_eos")

lm-evaluation-harness 0.4.13 conventions reproduced here (no lm_eval install needed; see
docs/eval.md; tools/check_eval_lmeval.py runs the real harness on the same files and compares):
  request = (context, " " + choice); HellaSwag query = preprocess(activity_label + ": " + ctx_a +
  " " + ctx_b.capitalize()), choices = preprocess(ending); PIQA / ARC "Question: {q}\\nAnswer:";
  WinoGrande partial scoring: context = sentence[:blank] + option, continuation =
  " " + sentence[blank+1:].strip(); _encode_pair moves the context's trailing whitespace to the
  continuation, then cont = encode(context + continuation)[len(encode(context)):]; encode uses the
  tokenizer's special tokens (HFLM add_bos_token=None: the llama tokenizer's BOS) unless the text
  starts with the BOS text; inputs = (ctx + cont)[-(max_length + 1):][:-1].

Deterministic (fixed seeds, single thread). Run from the repository root:
    python3 tools/make_eval_fixtures.py
"""
import argparse
import json
import math
import os
import re
import shutil

import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

SEED = 4321
VOCAB = 384        # 256 byte symbols + merges + specials
CTX = 64           # the models' window (n_positions / max_position_embeddings)
TRAIN_STEPS, TRAIN_B, TRAIN_LR = 500, 32, 3e-3
PPL_LINES = 4      # lines of sentences-val.txt in ppl.txt
PPL_CASES = [(64, 64), (64, 24), (20, 7), (33, 33)]  # (ctx, stride)
MARGIN = 2e-3      # smallest accepted gap between the best and second-best score (nats)
GEN_PROMPTS = ["The weather", "I think that", "What is the", "He said"]

# ---------------------------------------------------------------- mcq samples (written here)

HELLASWAG = [
    {"ind": 1, "activity_label": "Making a sandwich", "ctx_a": "A man takes two slices of bread out of a bag.",
     "ctx_b": "he", "endings": ["spreads butter on one slice and puts cheese on top.",
                                "throws the bread into the river and swims away.",
                                "paints the kitchen wall a bright shade of blue.",
                                "starts the car and drives to the airport."], "label": 0},
    {"ind": 2, "activity_label": "Personal Care and Style",
     "ctx_a": "[header] How to wash your hair [title] Wet your hair with warm water. [step] Stand under the shower",
     "ctx_b": "for a minute or two.",
     "endings": ["[substeps] Make sure all of your hair is wet before you add shampoo.",
                 "The dog barks at the mailman every single day.",
                 "[title] Sell your house. [step] Call an agent.",
                 "Water   boils at one hundred degrees."], "label": "0"},
    {"ind": 3, "activity_label": "Playing guitar", "ctx_a": "A woman sits on a chair holding a guitar.",
     "ctx_b": "She", "endings": ["tunes the strings and begins to play a song.",
                                 "eats the guitar for dinner.",
                                 "the guitar flies to the moon.",
                                 "swims across the ocean with the chair."], "label": 0},
    {"ind": 4, "activity_label": "Running a marathon",
     "ctx_a": ("The runners gather at the start line early in the morning. The crowd cheers as the "
               "announcer counts down from ten. A loud horn sounds and hundreds of people start to run "
               "down the long road through the middle of the old city, past the market and the river."),
     "ctx_b": "then", "endings": ["they keep running for many hours until they reach the finish line.",
                                  "they sit down and read a book about cooking.",
                                  "the road turns into a large cake.",
                                  "everyone goes home to sleep."], "label": 0},
    {"ind": 5, "activity_label": "Cleaning", "ctx_a": "A person holds a mop next to a bucket of water.",
     "ctx_b": "THE PERSON", "endings": ["mops the floor until it is clean.",
                                        "sings to the bucket.",
                                        "throws the mop out of the window.",
                                        "falls asleep on the floor."], "label": 0},
]
for d in HELLASWAG:  # the public files carry ctx = ctx_a + " " + ctx_b too
    d["ctx"] = d["ctx_a"] + " " + d["ctx_b"]
    d.update({"split": "val", "split_type": "indomain", "source_id": "anvil~%d" % d["ind"]})

PIQA = [
    {"goal": "How do I keep my coffee warm?", "sol1": "Put it in a thermos with a lid.",
     "sol2": "Put it in the freezer for an hour.", "label": 0},
    {"goal": "To dry wet clothes quickly,", "sol1": "hang them in the sun on a windy day.",
     "sol2": "fold them and leave them in a closed bag.", "label": 0},
    {"goal": "How can I make my room darker at night?", "sol1": "Turn on every lamp in the house.",
     "sol2": "Close the curtains.", "label": 1},
    {"goal": "Remove a stain from a shirt", "sol1": "wash it with soap and cold water.",
     "sol2": "write on it with a black marker.", "label": 0},
]

ARC = [
    {"id": "anvil-1", "question": "Which of these is a source of light?",
     "choices": {"text": ["the sun", "a rock", "a shoe", "a table"], "label": ["A", "B", "C", "D"]},
     "answerKey": "A"},
    {"id": "anvil-2", "question": "What do plants need to grow?",
     "choices": {"text": ["water and light", "plastic", "sand only"], "label": ["A", "B", "C"]},
     "answerKey": "A"},
    {"id": "anvil-3", "question": "Which animal can fly?",
     "choices": {"text": ["a fish", "a bird", "a cow", "a snail"], "label": ["1", "2", "3", "4"]},
     "answerKey": "2"},
    {"id": "anvil-4", "question": "What happens to ice when it gets warm?",
     "choices": {"text": ["It melts.", "It turns into wood.", "It gets colder.", "It sings."],
                 "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
]

WINOGRANDE = [
    {"sentence": "The cup did not fit in the bag because the _ was too big.", "option1": "cup",
     "option2": "bag", "answer": "1"},
    {"sentence": "Sarah gave the book to Maria because _ had already read it.", "option1": "Sarah",
     "option2": "Maria", "answer": "1"},
    {"sentence": "The man could not lift the box because the _ was too heavy.", "option1": "man",
     "option2": "box", "answer": "2"},
    {"sentence": "We moved the plant from the window to the table since the _ got more sun.",
     "option1": "window", "option2": "table", "answer": "1"},
]

GENERIC = [
    {"context": "The capital of France is", "choices": ["Paris.", "a banana.", "very loud."], "answer": 0},
    {"context": "She opened the door and", "choices": ["walked in.", "the door opened the cat."], "answer": 0},
    {"context": "Two plus two is", "choices": ["four.", "a river.", "purple."], "answer": 0},
    {"context": "I went to the store to buy ", "choices": ["some milk.", "the moon."], "answer": 0},
    {"context": "", "choices": ["It was a good day.", "Day good a was it"], "answer": 0},
]

# ------------------------------------------------------------------------- helpers


def train_tokenizer(lines, llama):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>"] if llama else ["<|endoftext|>"]
    tr = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials, show_progress=False,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(lines, tr)
    if llama:
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", bos)])
    # the reference comes from the exact file we commit
    return Tokenizer.from_str(json.dumps(json.loads(tok.to_str()), ensure_ascii=False, separators=(",", ":")))


def make_model(llama, tok):
    V = tok.get_vocab_size()
    if llama:
        bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
        cfg = LlamaConfig(vocab_size=V, hidden_size=48, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=12, max_position_embeddings=CTX,
                          rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=bos,
                          eos_token_id=eos, attention_bias=False, mlp_bias=False)
        return LlamaForCausalLM(cfg).float(), bos, eos
    e = tok.token_to_id("<|endoftext|>")
    cfg = GPT2Config(vocab_size=V, n_embd=48, n_layer=2, n_head=4, n_positions=CTX, n_inner=192,
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=e, eos_token_id=e, tie_word_embeddings=True)
    return GPT2LMHeadModel(cfg).float(), e, e


def train_model(model, tok, lines, llama, bos, eos, gen):
    stream = []
    for ln in lines:
        ids = tok.encode(ln, add_special_tokens=False).ids
        stream += ([bos] if llama else []) + ids + [eos]
    data = torch.tensor(stream)
    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN_LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / TRAIN_STEPS)))
    model.train()
    for step in range(TRAIN_STEPS):
        starts = torch.randint(0, len(data) - CTX - 1, (TRAIN_B,), generator=gen)
        x = torch.stack([data[s:s + CTX] for s in starts])
        y = torch.stack([data[s + 1:s + CTX + 1] for s in starts])
        loss = F.cross_entropy(model(x).logits.reshape(-1, model.config.vocab_size), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    print(f"  trained {TRAIN_STEPS} steps, last batch loss {loss.item():.3f}")


def save_model(model, tok, out, llama, bos, eos):
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tok.to_str())
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast",
           "bos_token": "<s>" if llama else "<|endoftext|>",
           "eos_token": "</s>" if llama else "<|endoftext|>"}
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=1)


@torch.no_grad()
def token_nlls(model, ids):
    """NLL of ids[1:] given the prefix (float64 log-softmax of fp32 logits)."""
    logits = model(torch.tensor([ids])).logits[0].double()
    lp = F.log_softmax(logits, -1)
    return [-lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]


@torch.no_grad()
def ppl_reference(model, ids, ctx, stride):
    """The loop of https://huggingface.co/docs/transformers/perplexity, verbatim in its
    arithmetic, plus the per-window NLLs and the exact mean over the tokens it scores."""
    enc = torch.tensor([ids])
    seq_len = enc.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    windows, scored_sum, scored_n = [], 0.0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + ctx, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = enc[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        outputs = model(input_ids, labels=target_ids)
        neg_log_likelihood = outputs.loss
        num_valid_tokens = (target_ids != -100).sum().item()
        num_loss_tokens = num_valid_tokens - target_ids.size(0)
        nll_sum += neg_log_likelihood.item() * num_loss_tokens
        n_tokens += num_loss_tokens
        # what the model's loss actually averaged: labels 1..L-1 that are not -100
        per = token_nlls(model, ids[begin_loc:end_loc])
        windows.append({"begin": begin_loc, "end": end_loc, "nll": per})
        for j, v in enumerate(per):
            if target_ids[0, j + 1] != -100:
                scored_sum += v
                scored_n += 1
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return {"ctx": ctx, "stride": stride, "hf_doc_nll": nll_sum / n_tokens, "hf_doc_tokens": n_tokens,
            "nll": scored_sum / scored_n, "tokens": scored_n, "ppl": math.exp(scored_sum / scored_n),
            "windows": windows}


def hellaswag_preprocess(text):
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def build_requests(task, doc):
    """(requests [(context, continuation)], choice strings used for normalization, gold)."""
    if task == "hellaswag":
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        query = hellaswag_preprocess(doc["activity_label"] + ": " + ctx)
        choices = [hellaswag_preprocess(e) for e in doc["endings"]]
        return [(query, " " + c) for c in choices], choices, int(doc["label"])
    if task == "piqa":
        query = "Question: " + doc["goal"] + "\nAnswer:"
        choices = [doc["sol1"], doc["sol2"]]
        return [(query, " " + c) for c in choices], choices, int(doc["label"])
    if task == "arc":
        query = "Question: " + doc["question"] + "\nAnswer:"
        choices = doc["choices"]["text"]
        return [(query, " " + c) for c in choices], choices, doc["choices"]["label"].index(doc["answerKey"])
    if task == "winogrande":
        blank = doc["sentence"].index("_")
        target = doc["sentence"][blank + 1:].strip()
        ctxs = [doc["sentence"][:blank] + o for o in (doc["option1"], doc["option2"])]
        return [(c, " " + target) for c in ctxs], ctxs, {"1": 0, "2": 1}[doc["answer"]]
    if task == "generic":
        return [(doc["context"], " " + c) for c in doc["choices"]], doc["choices"], int(doc["answer"])
    raise ValueError(task)


def tok_encode(tok, s, special, bos_text):
    """HFLM.tok_encode: the tokenizer's special tokens, unless the text starts with the BOS text."""
    if special and bos_text and s.startswith(bos_text):
        special = False
    return tok.encode(s, add_special_tokens=special).ids


def encode_pair(tok, context, continuation, special, bos_text):
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok_encode(tok, context + continuation, special, bos_text)
    ctx = tok_encode(tok, context, special, bos_text)
    return ctx, whole[len(ctx):]


@torch.no_grad()
def loglikelihood(model, tok, context, continuation, prefix_id, max_length, special=True):
    """special: False for HFLM's add_bos_token=False; True is its default (None)."""
    bos_text = tok.id_to_token(prefix_id)
    if context == "":
        cont_enc = tok.encode(continuation, add_special_tokens=False).ids
        ctx_enc, cont_enc = ([prefix_id], cont_enc) if cont_enc[0] != prefix_id else (cont_enc[:1], cont_enc[1:])
    else:
        ctx_enc, cont_enc = encode_pair(tok, context, continuation, special, bos_text)
    full = (ctx_enc + cont_enc)[-(max_length + 1):]
    inp = full[:-1]
    logits = F.log_softmax(model(torch.tensor([inp])).logits[0], dim=-1)  # fp32, as lm-eval
    cl = logits[len(inp) - len(cont_enc):]
    ll = sum(cl[i, t].item() for i, t in enumerate(cont_enc))
    return ll, len(cont_enc), len(ctx_enc) + len(cont_enc) > max_length + 1


def string_cases():
    """Python's own results for the text helpers anvil reimplements."""
    pre = ["  A man [title] is here. [step] He  walks [header] x  ", "a [b\nc] d [e] f", "x   y    z",
           "[unclosed bracket", "nested [a [b] c] d", "[title] starts", "tab\t[x]\tend"]
    cap = ["THE PERSON", "hello World", "\u00e9lan VITAL", "\u01c6emal", "", "1st PLACE"]
    strip = ["\u00a0 hi \u3000", "\x1c x \x1f", "   ", "\u2003a b\u2029"]
    return {"hellaswag_preprocess": [[x, hellaswag_preprocess(x)] for x in pre],
            "capitalize": [[x, x.capitalize()] for x in cap],
            "strip": [[x, x.strip()] for x in strip]}


def argmax(xs):
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def second_gap(xs):
    s = sorted(xs, reverse=True)
    return s[0] - s[1] if len(s) > 1 else float("inf")


def mcq_reference(model, tok, task, docs, prefix_id, special=True):
    items, acc, acc_norm, acc_bytes = [], 0, 0, 0
    for doc in docs:
        reqs, choices, gold = build_requests(task, doc)
        res = [loglikelihood(model, tok, c, k, prefix_id, CTX, special) for c, k in reqs]
        lls = [r[0] for r in res]
        nchars = [len(c) for c in choices]
        nbytes = [len(c.encode("utf-8")) for c in choices]
        norm = [ll / n for ll, n in zip(lls, nchars)]
        byt = [ll / n for ll, n in zip(lls, nbytes)]
        it = {"requests": reqs, "cont_tokens": [r[1] for r in res], "lls": lls, "gold": gold,
              "pred": argmax(lls), "pred_norm": argmax(norm), "pred_bytes": argmax(byt),
              "truncated": any(r[2] for r in res)}
        gaps = [second_gap(lls)] + ([] if task == "winogrande" else [second_gap(norm), second_gap(byt)])
        if min(gaps) < MARGIN:
            print(f"  WARNING {task} item {len(items)}: score gap {min(gaps):.2e} < {MARGIN} (fragile)")
        acc += it["pred"] == gold
        acc_norm += it["pred_norm"] == gold
        acc_bytes += it["pred_bytes"] == gold
        items.append(it)
    n = len(items)
    out = {"items": items, "acc": acc / n, "truncated": sum(i["truncated"] for i in items)}
    if task != "winogrande":  # lm-eval reports acc only for WinoGrande
        out.update({"acc_norm": acc_norm / n, "acc_bytes": acc_bytes / n})
    return out


@torch.no_grad()
def generate_reference(model, tok, prompt, eos):
    ids = tok.encode(prompt).ids  # with the tokenizer's BOS, as tokenizer(prompt) in transformers
    x = torch.tensor([ids])
    room = CTX - len(ids)
    out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=room,
                         eos_token_id=None, pad_token_id=eos)[0, len(ids):].tolist()
    # each greedy step must have a clear winner, or float noise could flip it
    seq, gaps = list(ids), []
    for t in out:
        logits = model(torch.tensor([seq])).logits[0, -1]
        top = torch.topk(logits, 2).values
        gaps.append((top[0] - top[1]).item())
        assert logits.argmax().item() == t
        seq.append(t)
    if min(gaps) < MARGIN:
        print(f"  WARNING prompt {prompt!r}: greedy logit gap {min(gaps):.2e} < {MARGIN}")
    stop = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=room,
                          eos_token_id=eos, pad_token_id=eos)[0, len(ids):].tolist()
    return {"prompt": prompt, "prompt_ids": ids, "greedy": out, "greedy_text": tok.decode(out),
            "greedy_eos": stop, "min_gap": min(gaps)}


def write_cli_cases(out, expected):
    rows = []
    for name, ref in expected["models"].items():
        for g in ref["generate"]:
            rows.append(["greedy", name, g["prompt"], len(g["greedy"]), " ".join(map(str, g["greedy"]))])
            rows.append(["greedy_eos", name, g["prompt"], len(g["greedy"]), " ".join(map(str, g["greedy_eos"]))])
        for c in ref["ppl"]["cases"]:
            rows.append(["ppl", name, c["ctx"], c["stride"], c["tokens"], repr(c["nll"])])
        for t, r in ref["mcq"].items():
            rows.append(["mcq", name, t, repr(r["acc"]), repr(r.get("acc_norm", "null")),
                         repr(r.get("acc_bytes", "null")), r["truncated"]])
    from safetensors.numpy import load_file
    for name in ("gpt2", "llama", "qwen2"):
        ref = load_file(os.path.join(os.path.dirname(out), name, "reference.safetensors"))
        p, o = ref["greedy.prompt"][0].tolist(), ref["greedy.output"][0].tolist()
        rows.append(["greedy_ids", name, ",".join(map(str, p)), len(o), " ".join(map(str, o))])
    with open(os.path.join(out, "cli_cases.txt"), "w", encoding="utf-8") as f:
        f.write("# tools/make_eval_fixtures.py: tab-separated reference values for tests/cli_eval.sh\n")
        for r in rows:
            assert all("\t" not in str(x) and "\n" not in str(x) for x in r)
            f.write("\t".join(str(x).strip("'") for x in r) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/eval")
    ap.add_argument("--train", default="examples/sentences-train.txt")
    ap.add_argument("--val", default="examples/sentences-val.txt")
    args = ap.parse_args()
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    with open(args.train, encoding="utf-8") as f:
        train_lines = f.read().split("\n")
    with open(args.val, encoding="utf-8") as f:
        val_lines = f.read().split("\n")

    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    ppl_text = "\n".join(val_lines[:PPL_LINES]) + "\n"
    with open(os.path.join(args.out, "ppl.txt"), "w", encoding="utf-8") as f:
        f.write(ppl_text)
    tasks = {"hellaswag": HELLASWAG, "piqa": PIQA, "arc": ARC, "winogrande": WINOGRANDE, "generic": GENERIC}
    for task, docs in tasks.items():
        with open(os.path.join(args.out, task + ".jsonl"), "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")

    expected = {"transformers": transformers.__version__, "torch": torch.__version__, "ctx": CTX, "models": {},
                "strings": string_cases()}
    for name in ("gpt2", "llama"):
        llama = name == "llama"
        print(name)
        gen = torch.Generator().manual_seed(SEED + llama)
        torch.manual_seed(SEED + llama)
        tok = train_tokenizer(train_lines, llama)
        model, bos, eos = make_model(llama, tok)
        train_model(model, tok, train_lines, llama, bos, eos, gen)
        mdir = os.path.join(args.out, name)
        save_model(model, tok, mdir, llama, bos, eos)
        # everything below uses the saved files, as anvil will
        model = (LlamaForCausalLM if llama else GPT2LMHeadModel).from_pretrained(mdir).float().eval()
        tok = Tokenizer.from_file(os.path.join(mdir, "tokenizer.json"))
        ids = tok.encode(ppl_text).ids
        ref = {"bos": bos, "eos": eos, "ppl": {"ids": ids, "cases": [ppl_reference(model, ids, c, s)
                                                                      for c, s in PPL_CASES]}}
        for c in ref["ppl"]["cases"]:
            print(f"  ppl ctx {c['ctx']} stride {c['stride']}: {c['tokens']} tokens, nll {c['nll']:.6f} "
                  f"(HF doc loop {c['hf_doc_nll']:.6f} over {c['hf_doc_tokens']})")
        ref["mcq"] = {t: mcq_reference(model, tok, t, d, bos) for t, d in tasks.items()}
        ref["mcq_nobos"] = {"generic": mcq_reference(model, tok, "generic", GENERIC, bos, special=False)}
        for t, r in ref["mcq"].items():
            print(f"  mcq {t}: acc {r['acc']:.3f} acc_norm {r.get('acc_norm', float('nan')):.3f} "
                  f"truncated {r['truncated']}")
        ref["generate"] = [generate_reference(model, tok, p, eos) for p in GEN_PROMPTS]
        for g in ref["generate"]:
            print(f"  greedy {g['prompt']!r} -> {g['greedy_text'][:60]!r} (gap {g['min_gap']:.3f}, "
                  f"eos stop after {len(g['greedy_eos'])})")
        expected["models"][name] = ref
    write_cli_cases(args.out, expected)
    with open(os.path.join(args.out, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=None, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
