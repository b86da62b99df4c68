#!/usr/bin/env python3
"""Generate tests/fixtures/tokenizers/: tokenizer.json files and the ids that the
Hugging Face `tokenizers` library produces for them (the reference for
tests/test_tokenizer.c).

    python3 tools/make_tokenizer_fixtures.py [--data ../shared/data] [--out tests/fixtures/tokenizers]

Trained fixtures (small vocabularies, trained on a slice of text/sentences.txt):
  gpt2_style     ByteLevel pre-tokenizer (GPT-2 regex), <|endoftext|>
  llama3_style   Split(LLaMA-3 regex) + ByteLevel, ignore_merges, BOS template
  qwen2_style    NFC + Split(Qwen2 regex) + ByteLevel, ChatML specials, "a b" merges
  smollm_style   Digits(individual) + ByteLevel
  sp_bpe         sentencepiece style as LLaMA-2: Prepend+Replace normalizer,
                 byte_fallback <0xNN>, fuse_unk, Replace/ByteFallback/Fuse/Strip decoder
  sp_metaspace   Metaspace pre-tokenizer (prepend_scheme first) + Metaspace decoder
Hand-written or tiny fixtures for the edge cases:
  added_tokens   lstrip / rstrip / single_word / non-special added tokens
  ignore_merges  a word in the vocabulary that its merges would split differently
  byte_fallback  a few characters + <0xNN> + <unk> with fuse_unk
  split_*        Split behaviors (isolated, removed, merged_with_previous,
                 merged_with_next, contiguous, and inverted)
  normalizers    Lowercase + NFKC + Strip + Replace(regex)
  whitespace     Whitespace / Punctuation pre-tokenizers

Each fixture directory holds tokenizer.json and cases.json:
  {"vocab_size": N, "add_bos": bool, "bos_id": id|null, "eos_id": id|null,
   "cases": [{"text": s, "ids": [...], "decoded": s, "roundtrip": bool}]}
ids are encode(text, add_special_tokens=False).ids; decoded is
decode(ids, skip_special_tokens=False).
"""
import argparse
import json
import os
import random
import shutil
import sys

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers, Regex

GPT2_PAT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def read_lines(data):
    with open(os.path.join(data, "text/sentences.txt"), encoding="utf-8") as f:
        return f.read().split("\n")


def test_texts(data, lines, specials=()):
    """Held-out sentences, tricky.txt, non-ASCII, whitespace, specials in text."""
    rng = random.Random(1)
    held = lines[90000:]
    texts = [rng.choice(held) for _ in range(40)]
    texts.append("\n".join(held[:30]))  # one long multi-line text
    with open(os.path.join(data, "gpt2/tricky.txt"), encoding="utf-8") as f:
        tricky = f.read()
    texts.append(tricky)
    texts += tricky.split("\n")
    texts += [
        "", " ", "  ", "\n", "\n\n\n", " \t \n ", "a", " a", "a ", "  leading and trailing  ",
        "naïve café façade — “quotes” ½ € 日本語のテキスト 한국어 Ελληνικά русский",
        "emoji 🚀🔥👍🏽 👨‍👩‍👧‍👦 zwj", "digits 1234567 3.14159 1,000,000 x2y3", "CAPS Don'T WE'LL it'S",
        "tabs\tand\r\nwindows\rline ends", "e\u0301 vs \u00e9 (NFC)", "ﬁ ligature Ⅻ ① ｆｕｌｌ",
        "mixed: Über 100€ — ok?", "x" * 300, "ab" * 200 + " " * 50 + "end",
        "\u00a0nbsp\u00a0 \u3000ideo\u3000space \u2028 ls", "unicode\u0085nel",
    ]
    for s in specials:
        texts += [f"{s}", f"Hello{s} world", f"before {s} after", f"{s}{s}x{s}", f"a{s}\n{s} b"]
    return texts


CORPUS_FIRST, CORPUS_LINES = 50000, 5000  # a slice of text/sentences.txt checked by count + CRC-32


def write_fixture(out, name, tok, texts, extra=None, merges_as_strings=False, corpus_lines=None):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    js = json.loads(tok.to_str())
    js["model"]["vocab"] = dict(sorted(js["model"]["vocab"].items(), key=lambda kv: kv[1]))  # reproducible files
    if merges_as_strings:
        js["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in js["model"]["merges"]]
    s = json.dumps(js, ensure_ascii=False, separators=(",", ":"))
    tok = Tokenizer.from_str(s)  # the reference comes from the exact file we commit
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(s)
    for fname, content in (extra or {}).items():
        with open(os.path.join(d, fname), "w", encoding="utf-8") as f:
            json.dump(content, f, ensure_ascii=False)
    cases = []
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False).ids
        dec = tok.decode(ids, skip_special_tokens=False)
        cases.append({"text": t, "ids": ids, "decoded": dec, "roundtrip": dec == t})
    probe = tok.encode("probe", add_special_tokens=True).ids
    plain = tok.encode("probe", add_special_tokens=False).ids
    add_bos = len(probe) > len(plain) and probe[1:1 + len(plain)] == plain
    meta = {"vocab_size": tok.get_vocab_size(with_added_tokens=True), "add_bos": add_bos,
            "bos_id": probe[0] if add_bos else None}
    if extra and "tokenizer_config.json" in extra:
        cfg = extra["tokenizer_config.json"]
        for k in ("eos_token", "bos_token"):
            if k in cfg:
                meta[k.replace("_token", "_id")] = tok.token_to_id(cfg[k])
    if corpus_lines is not None:
        import array
        import zlib
        text = "\n".join(corpus_lines[CORPUS_FIRST:CORPUS_FIRST + CORPUS_LINES])
        ids = array.array("I", tok.encode(text, add_special_tokens=False).ids)
        if sys.byteorder != "little":
            ids.byteswap()
        meta["corpus"] = {"file": "text/sentences.txt", "first_line": CORPUS_FIRST, "lines": CORPUS_LINES,
                          "count": len(ids), "crc32": zlib.crc32(ids.tobytes())}
    meta["cases"] = cases
    with open(os.path.join(d, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False, separators=(",", ":"))
    print(f"{name}: vocab {meta['vocab_size']}, {len(cases)} cases, "
          f"{sum(c['roundtrip'] for c in cases)} round-trip, add_bos={add_bos}")
    return name


def train(tok, lines, vocab, specials, alphabet=None):
    tr = trainers.BpeTrainer(vocab_size=vocab, special_tokens=list(specials), show_progress=False,
                             initial_alphabet=alphabet or [], min_frequency=2)
    tok.train_from_iterator(lines, tr)
    return tok


def bytelevel_fixtures(out, data, lines, corpus):
    names = []
    alpha = sorted(pre_tokenizers.ByteLevel.alphabet())

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    train(tok, corpus, 1000, ["<|endoftext|>"], alpha)
    names.append(write_fixture(out, "gpt2_style", tok, test_texts(data, lines, ["<|endoftext|>"]), corpus_lines=lines))

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PAT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    train(tok, corpus, 1500, specials, alpha)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    names.append(write_fixture(out, "llama3_style", tok, test_texts(data, lines, specials), corpus_lines=lines,
                               extra={"tokenizer_config.json": {"bos_token": "<|begin_of_text|>",
                                                                "eos_token": "<|end_of_text|>"}}))

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PAT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    train(tok, corpus, 1200, specials, alpha)
    names.append(write_fixture(out, "qwen2_style", tok, test_texts(data, lines, specials), merges_as_strings=True,
                               corpus_lines=lines))

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    train(tok, corpus, 1000, ["<|endoftext|>", "<|im_start|>"], alpha)
    names.append(write_fixture(out, "smollm_style", tok, test_texts(data, lines, ["<|im_start|>"]), corpus_lines=lines))
    return names


def add_byte_tokens(tok, n_specials):
    """Insert <0x00>..<0xFF> into the model vocabulary right after the specials
    (LLaMA-2's layout: <unk> <s> </s> <0x00> ... <0xFF> pieces...)."""
    js = json.loads(tok.to_str())
    vocab = js["model"]["vocab"]
    order = sorted(vocab.items(), key=lambda kv: kv[1])
    specials, rest = order[:n_specials], order[n_specials:]
    new = {}
    for k, _ in specials:
        new[k] = len(new)
    for b in range(256):
        new[f"<0x{b:02X}>"] = len(new)
    for k, _ in rest:
        if k not in new:
            new[k] = len(new)
    js["model"]["vocab"] = new
    for a in js["added_tokens"]:
        a["id"] = new[a["content"]]
    return Tokenizer.from_str(json.dumps(js, ensure_ascii=False))


def sp_fixtures(out, data, lines, corpus):
    names = []
    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    # train on short pieces so merges stay inside words, as sentencepiece's do
    train(tok, [w for l in corpus for w in l.split(" ")], 1500, specials)
    tok = add_byte_tokens(tok, len(specials))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    names.append(write_fixture(out, "sp_bpe", tok, test_texts(data, lines, ["<s>", "</s>"]), corpus_lines=lines,
                               extra={"tokenizer_config.json": {"bos_token": "<s>", "eos_token": "</s>",
                                                                "unk_token": "<unk>"}}))

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="first"),
                                     decoders.ByteFallback(), decoders.Fuse()])
    train(tok, corpus, 1200, specials)
    tok = add_byte_tokens(tok, len(specials))
    names.append(write_fixture(out, "sp_metaspace", tok, test_texts(data, lines, ["<s>", "</s>"]), corpus_lines=lines))
    return names


def hand_fixtures(out, data, lines, corpus):
    names = []
    alpha = sorted(pre_tokenizers.ByteLevel.alphabet())
    base_texts = ["hello world", "the cat sat on the mat", " spaced  out ", "a-b--c---d", "x1y22z333",
                  "one, two; three!", "tab\there", "line\nbreak", "", "ünïcödé wörds", "aaa bbb aaa"]

    # added tokens with lstrip / rstrip / single_word / non-special
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    train(tok, corpus[:3000], 400, [], alpha)
    from tokenizers import AddedToken
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False),
                            AddedToken("<sep>", rstrip=True, normalized=False),
                            AddedToken("<|user|>", special=True, normalized=False)])
    tok.add_tokens([AddedToken("cat", single_word=True, normalized=False), AddedToken("hello world", normalized=False)])
    texts = base_texts + ["the <mask> is here", "x   <mask>y", "a <sep>   b", "a<sep>b", "concatenate cat cats",
                          "(cat) cat_ x-cat", "hello world, hello worlds", "<|user|>hi<|user|>", "<mask><sep><mask>",
                          "a \n<mask>\n b", "<mas", "cat"]
    names.append(write_fixture(out, "added_tokens", tok, texts))

    # ByteLevel with add_prefix_space (RoBERTa style), alone and after a Split
    for name, pre in (("bytelevel_prefix", pre_tokenizers.ByteLevel(add_prefix_space=True)),
                      ("split_bytelevel_prefix", pre_tokenizers.Sequence([
                          pre_tokenizers.Split(Regex(r"[,;]"), behavior="isolated"),
                          pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)]))):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre
        tok.decoder = decoders.ByteLevel()
        train(tok, corpus[:3000], 400, ["<|endoftext|>"], alpha)
        names.append(write_fixture(out, name, tok, base_texts + ["Hello", " Hello", "a,b;c , d", "<|endoftext|>x"]))

    # ignore_merges: vocabulary words kept whole even where merges disagree
    vocab = {c: i for i, c in enumerate(alpha)}
    for w in ["ab", "abc", "bc", "Ġab", "abcd", "cd"]:
        vocab[w] = len(vocab)
    merges = [("a", "b"), ("c", "d"), ("Ġ", "ab"), ("ab", "cd")]
    # "abc" is in the vocab but the merges make "ab"+"c"; "bc" is unreachable by merges
    for ignore in (True, False):
        tok = Tokenizer(models.BPE(vocab=dict(vocab), merges=list(merges), ignore_merges=ignore))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        names.append(write_fixture(out, "ignore_merges" if ignore else "no_ignore_merges", tok,
                                   ["abc", "abcd", " abc", "bc", "abc bc abcd", "xabcx", "ab"]))

    # byte fallback + unk fusing on a tiny character vocabulary
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for w in ["▁", "a", "b", "c", "é", "ab", "▁a", "▁ab", "日"]:
        vocab[w] = len(vocab)
    merges = [("a", "b"), ("▁", "a"), ("▁a", "b")]
    for fb, fuse, name in ((True, True, "byte_fallback"), (False, True, "unk_fuse"), (False, False, "unk_nofuse")):
        tok = Tokenizer(models.BPE(vocab=dict(vocab), merges=list(merges), unk_token="<unk>", byte_fallback=fb,
                                   fuse_unk=fuse))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
        tok.add_special_tokens(["<unk>", "<s>", "</s>"])
        names.append(write_fixture(out, name, tok, ["ab", "ab ab", "xyz", "aé日b", "a日本語b", "ñ", "🚀 ab", "abc \n\t",
                                                    "<s>ab</s>", "zz ab zz", "é"]))

    # Split behaviors on a vocabulary trained without pre-tokenization (merges cross spaces)
    tok0 = Tokenizer(models.BPE())
    tok0.pre_tokenizer = pre_tokenizers.Split(Regex("$^"), behavior="isolated")  # no-op split while training
    train(tok0, [l for l in corpus[:4000]], 600, [], [chr(c) for c in range(32, 127)])
    base = json.loads(tok0.to_str())
    split_texts = base_texts + ["a  b   c", "-a-", "--", "word-word", "  x  ", "a1b2c3"]
    for behavior in ("isolated", "removed", "merged_with_previous", "merged_with_next", "contiguous"):
        for invert in (False, True):
            for pat in ((" ", Regex(r"\d+|-")) if not invert else (Regex(r"[a-z]+"),)):
                tok = Tokenizer.from_str(json.dumps(base))
                tok.pre_tokenizer = pre_tokenizers.Split(pat, behavior=behavior, invert=invert)
                kind = "str" if isinstance(pat, str) else "re"
                names.append(write_fixture(out, f"split_{behavior}{'_inv' if invert else ''}_{kind}", tok,
                                           split_texts))

    # normalizers
    tok = Tokenizer.from_str(json.dumps(base))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.Strip(),
                                           normalizers.Replace(Regex(r"\s+"), " ")])
    names.append(write_fixture(out, "normalizers", tok,
                               base_texts + ["  HELLO   World  ", "ﬁne Ⅻ ｆｕｌｌ", "ÉCOLE Straße", "e\u0301"]))
    tok = Tokenizer.from_str(json.dumps(base))
    tok.normalizer = normalizers.NFD()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    names.append(write_fixture(out, "whitespace", tok, base_texts + ["don't stop!!", "a.b,c", "café ¿qué?"]))
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="tests/fixtures/tokenizers")
    a = ap.parse_args()
    lines = read_lines(a.data)
    corpus = lines[:20000]
    if os.path.isdir(a.out):
        shutil.rmtree(a.out)
    os.makedirs(a.out)
    names = bytelevel_fixtures(a.out, a.data, lines, corpus)
    names += sp_fixtures(a.out, a.data, lines, corpus)
    names += hand_fixtures(a.out, a.data, lines, corpus)
    with open(os.path.join(a.out, "index.txt"), "w") as f:
        f.write("# fixture directories, written by tools/make_tokenizer_fixtures.py\n")
        f.write("\n".join(names) + "\n")


if __name__ == "__main__":
    main()
