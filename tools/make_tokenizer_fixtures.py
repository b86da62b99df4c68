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


# add_special_tokens=True probes: (text, pair or None)
TEMPLATE_PROBES = [("probe", None), ("Hello world.", None), ("", None), ("Hello world.", "And a second one!"),
                   ("", ""), ("x", "")]


def bert_from_vocab_dir(d):
    """transformers' BertTokenizer (the fast one) for a directory with vocab.txt: what a user of a
    legacy BERT checkpoint gets; its tokenizers backend gives ids and decode."""
    from transformers import BertTokenizer
    return BertTokenizer.from_pretrained(d).backend_tokenizer


def write_fixture(out, name, tok, texts, extra=None, merges_as_strings=False, corpus_lines=None, vocab_txt=None,
                  templates=TEMPLATE_PROBES):
    """tok: a Tokenizer, saved as tokenizer.json; or with vocab_txt (the file's text) a legacy
    BERT directory (vocab.txt + extra files) whose reference is transformers' BertTokenizer."""
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    for fname, content in (extra or {}).items():
        with open(os.path.join(d, fname), "w", encoding="utf-8") as f:
            json.dump(content, f, ensure_ascii=False)
    if vocab_txt is not None:
        with open(os.path.join(d, "vocab.txt"), "w", encoding="utf-8", newline="") as f:
            f.write(vocab_txt)
        tok = bert_from_vocab_dir(d)
    else:
        js = json.loads(tok.to_str())
        js["model"]["vocab"] = dict(sorted(js["model"]["vocab"].items(), key=lambda kv: kv[1]))  # reproducible
        if merges_as_strings:
            js["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in js["model"]["merges"]]
        s = json.dumps(js, ensure_ascii=False, separators=(",", ":"))
        tok = Tokenizer.from_str(s)  # the reference comes from the exact file we commit
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(s)
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
    meta["templates"] = []
    for a, b in templates:
        e = tok.encode(a, b, add_special_tokens=True)
        meta["templates"].append({"a": a, "b": b, "ids": e.ids, "type_ids": e.type_ids})
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


# ---- WordPiece (BERT) and RoBERTa ------------------------------------------------------------

WP_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# characters the trained vocabularies know besides those of sentences.txt, so that CJK, Greek,
# accented... text gives pieces, not only [UNK]
WP_ALPHABET = list("日本語のテキスト中文字符测试标点漢字混じり한국어텍스트ΣΊΥΦΟΩμέγαλληνικάσςρусскийабвгд"
                   "éèêëàâäáãåçñóòôöõúùûüíìîïýÿøæœßÉÀÇÑÖÜÅ")

WP_EDGE_TEXTS = [
    # accents and case
    "Café naïve résumé façade Ångström ÉCOLE Straße İstanbul ΣΊΣΥΦΟΣ Ωμέγα", "e\u0301te\u0301 vs été",
    "ǅemal ǈ ǋ Ⅻ ｆｕｌｌ ﬁ", "İ i̇ I ı", "Ǆ ǅ ǆ ẞ ß", "한국어 텍스트 각",
    # CJK (handle_chinese_chars puts spaces around ideographs; kana and hangul are words)
    "日本語のテキスト", "中文字符测试，标点。", "漢字kanji混じり文", "\U00020000\U00020001 \U0002A700 \U0002B740 "
    "\U0002B820 \U0002B920 \U0002F800 \u2E80 \u3007 \u3400 \uF900",
    # punctuation, ASCII and Unicode (HF's tables predate Unicode 9: U+2E43 and U+2E5D are not punctuation)
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "¡¿«»„“”‘’‹› – — … ‰ § ¶ • ·", "「かっこ」『二重』【括弧】〈〉",
    "\u2E42\u2E43\u2E5D new punct \u061D\u0A76", "a.b,c;d:e!f?g", "don't can't won't I'm we're they've it's",
    " do not ", "x--y---z", "$100 +5 <3 =^.^= |pipe| ~tilde~ `tick`", "\u166D\u166E \U000111C9",
    # unknown words and characters
    "zqxj vvwxq qqqq", "\U0001F600 \U0001F680\U0001F525 👍🏽 👨‍👩‍👧‍👦 🇫🇷 1️⃣", "ᚠᛇᚻ᛫ᛒᛦᚦ ⠓⠑⠇⠇⠕ 𓀀𓀁",
    "Ελληνικά русский עברית العربية हिन्दी ไทย",
    # words around max_input_chars_per_word (100 characters by default)
    "a" * 99, "a" * 100, "a" * 101, "é" * 100, "é" * 101, "e\u0301" * 60, "x" + "y" * 150 + " short",
    "supercalifragilisticexpialidocious antidisestablishmentarianism", "abcdefghijklmnopqrstu abcdefghijklmnopqrst",
    # whitespace of every kind
    "  lead", "trail  ", "a\t\tb\n\nc\r\nd", "\u3000ideographic\u3000space\u00a0nbsp\u2002en\u2003em\u2009thin\u202f",
    "\u2028ls\u2029ps\u0085nel\u1680ogham\u205fmm", "\x0bvt\x0cff\x1cfs\x1fus",
    # control and format characters, private use, U+FFFD
    "nul\x00in\x01side\x7fdel", "zero\u200bwidth\u200djoiner\u200cnon\ufeffbom", "repl\ufffdchar",
    "private\ue000use\U000F0000", "bidi\u202eover\u202c ride\u2066iso\u2069", "soft\u00adhyphen",
    "tag\U000E0041s", "newer format \U000110CD\U00013430 \u0890", "\x96\x85\x97 C1",
    # marks HF's tables do not know (Unicode 9+), and decompositions they do not have
    "\u1734 \U00011938 a\u0898\u0899 b\u07fd c\u0301\u0316\u0300",
    "© ® ™ ° ± × ÷ ∞ ≠ ≤ √ ∑ €£¥ ½ ¼ ²³",
    # special tokens in text
    "[CLS] hello [SEP] world [SEP]", "[MASK]", "[mask] [Mask]", "a[SEP]b", "[UNK]", "[PAD][PAD]", "##ing ##",
    "#hash ##tag", "",
]


# atoms of random texts: every character class the BERT pipeline treats apart
WP_ATOMS = ["a", "Z", "the", " ", "  ", "\t", "\n", "\r\n", "'", "'s", ".", ",", "!?", "-", "_", "#", "##", "$",
            "0", "42", "é", "e\u0301", "\u0301", "\u0316\u0300", "\u0898", "İ", "ß", "Σ", "ς", "日", "本", "한",
            "の", "\u3000", "\u00a0", "\u2028", "\u0085", "\x00", "\x0b", "\x7f", "\u200b", "\u200d", "\ufeff",
            "\ufffd", "\ue000", "\U00020000", "\U0002B820", "😀", "👍🏽", "Ａ", "ﬁ", "½", "\u2e43", "\u166d", "«",
            "—", "…", "[CLS]", "[SEP]", "[MASK]", "[", "]", "supercalifragilistic", "x" * 30]


def random_texts(seed, n):
    rng = random.Random(seed)
    return ["".join(rng.choice(WP_ATOMS) for _ in range(rng.randrange(1, 25))) for _ in range(n)]


def wp_train(tok, corpus, vocab, prefix="##"):
    """Train, then number the vocabulary canonically: HF's WordPieceTrainer breaks ties between
    equally frequent pieces in hash order, so the same vocabulary comes out with ids in another
    order on each run (WordPiece's ids mean nothing beyond the set of strings). Specials keep
    their ids; the rest are sorted by (length after the prefix, continuation or not, text)."""
    tr = trainers.WordPieceTrainer(vocab_size=vocab, special_tokens=WP_SPECIALS, show_progress=False,
                                   initial_alphabet=WP_ALPHABET, continuing_subword_prefix=prefix, min_frequency=2)
    tok.train_from_iterator(corpus, tr)
    js = json.loads(tok.to_str())
    v = js["model"]["vocab"]
    rest = sorted((t for t in v if t not in WP_SPECIALS),
                  key=lambda t: (len(t) - len(prefix) if t.startswith(prefix) else len(t), t.startswith(prefix), t))
    new = {t: i for i, t in enumerate(WP_SPECIALS)}
    for t in rest:
        new[t] = len(new)
    assert all(v[t] == new[t] for t in WP_SPECIALS)
    js["model"]["vocab"] = new
    return Tokenizer.from_str(json.dumps(js, ensure_ascii=False))


def bert_template(tok):
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    return processors.TemplateProcessing(single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
                                         special_tokens=[("[CLS]", cls), ("[SEP]", sep)])


def vocab_txt(tok):
    v = tok.get_vocab(with_added_tokens=False)
    return "".join(t + "\n" for t, _ in sorted(v.items(), key=lambda kv: kv[1]))


def small_texts(lines, specials):
    """The edge cases, a few held-out sentences and specials in text (fixtures kept small)."""
    rng = random.Random(2)
    texts = WP_EDGE_TEXTS + [rng.choice(lines[90000:]) for _ in range(10)]
    for s in specials:
        texts += [f"Hello{s} world", f"{s}{s}x{s}"]
    return texts


def wordpiece_fixtures(out, data, lines, corpus):
    names = []
    texts = test_texts(data, lines, ["[CLS]", "[SEP]", "[MASK]"]) + WP_EDGE_TEXTS + random_texts(3, 120)
    small = small_texts(lines, ["[CLS]", "[SEP]", "[MASK]"]) + random_texts(4, 40)
    wp_templates = TEMPLATE_PROBES + [("Café 日本", "naïve [MASK] x"), ("a" * 101, "!"), ("[CLS]", "[SEP]")]
    variants = [
        # name, vocab, BertNormalizer options, max_input_chars_per_word, post-processor, cleanup, corpus check
        ("wp_uncased", 2000, dict(lowercase=True, strip_accents=None), 100, "template", True, True),
        ("wp_cased", 1000, dict(lowercase=False, strip_accents=None), 100, "template", True, True),
        ("wp_strip_cased", 500, dict(lowercase=False, strip_accents=True), 20, "bert", True, False),
        ("wp_lower_nostrip", 500, dict(lowercase=True, strip_accents=False, handle_chinese_chars=False,
                                       clean_text=False), 100, "template", False, False),
    ]
    trained = {}
    for name, vocab, nopts, max_chars, post, cleanup, check in variants:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=max_chars))
        tok.normalizer = normalizers.BertNormalizer(**nopts)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##", cleanup=cleanup)
        tok = wp_train(tok, corpus, vocab)
        # training resets the model's options; keep the ones asked for
        js = json.loads(tok.to_str())
        js["model"]["max_input_chars_per_word"] = max_chars
        tok = Tokenizer.from_str(json.dumps(js, ensure_ascii=False))
        tok.post_processor = (bert_template(tok) if post == "template" else
                              processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                        ("[CLS]", tok.token_to_id("[CLS]"))))
        trained[name] = tok
        names.append(write_fixture(out, name, tok, texts if name == "wp_uncased" else small,
                                   corpus_lines=lines if check else None, templates=wp_templates))

    # a custom prefix on another pipeline: Lowercase + Whitespace, "@@" continuation, no cleanup
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="@@"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="@@", cleanup=False)
    tok = wp_train(tok, corpus[:5000], 400, prefix="@@")
    names.append(write_fixture(out, "wp_custom_prefix", tok, WP_EDGE_TEXTS))

    # added tokens with "normalized": matched after the normalizer, decoded to their normalized content
    from tokenizers import AddedToken
    tok = Tokenizer.from_str(trained["wp_uncased"].to_str())
    tok.add_tokens([AddedToken("Café Noir", normalized=True), AddedToken("ÜBER", normalized=True, single_word=True),
                    AddedToken("ﬁne", normalized=True)])
    tok.add_special_tokens([AddedToken("<Mask2>", normalized=True, lstrip=True, special=True)])
    names.append(write_fixture(out, "wp_normalized_added", tok, [
        "café noir CAFÉ NOIR Cafe noir cafénoir", "über ÜBER überall xüber", "x <mask2> <MASK2>y  <Mask2>",
        "ﬁne fine FINE", "[unk] [UNK] [Unk]", "Café Noir<Mask2>ÜBER"] + WP_EDGE_TEXTS[:30]))

    # legacy vocab.txt directories (what transformers' BertTokenizer makes of them)
    names.append(write_fixture(out, "wp_vocab_txt", None, small, vocab_txt=vocab_txt(trained["wp_uncased"]),
                               corpus_lines=lines, templates=wp_templates))
    names.append(write_fixture(out, "wp_vocab_txt_cased", None, small, vocab_txt=vocab_txt(trained["wp_cased"]),
                               extra={"tokenizer_config.json": {"do_lower_case": False}}, templates=wp_templates))
    names.append(write_fixture(out, "wp_vocab_txt_opts", None, small,
                               vocab_txt=vocab_txt(trained["wp_lower_nostrip"]),
                               extra={"tokenizer_config.json": {
                                   "do_lower_case": True, "strip_accents": False, "tokenize_chinese_chars": False,
                                   "unk_token": {"__type": "AddedToken", "content": "[UNK]", "lstrip": False,
                                                 "normalized": True}}},
                               templates=wp_templates))
    return names


def roberta_fixtures(out, data, lines, corpus):
    """RoBERTa's tokenizer: byte-level BPE, <s> A </s> from RobertaProcessing, <mask> with lstrip."""
    from tokenizers import AddedToken
    names = []
    alpha = sorted(pre_tokenizers.ByteLevel.alphabet())
    small = small_texts(lines, ["<s>", "</s>", "<mask>"]) + ["Hello <mask> world", "x <mask>", "<mask>!"]
    for name, prefix, vocab in (("roberta_style", False, 1000), ("roberta_prefix", True, 600)):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix, trim_offsets=True)
        tok.decoder = decoders.ByteLevel()
        train(tok, corpus, vocab, ["<s>", "<pad>", "</s>", "<unk>"], alpha)
        tok.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False)])
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                          ("<s>", tok.token_to_id("<s>")), trim_offsets=True,
                                                          add_prefix_space=prefix)
        names.append(write_fixture(out, name, tok, small, corpus_lines=None if prefix else lines,
                                   extra={"tokenizer_config.json": {"bos_token": "<s>", "eos_token": "</s>",
                                                                    "mask_token": "<mask>"}}))
    return names


# ---- BERT's Unicode classes as HF tokenizers applies them --------------------------------------
#
# HF's BertNormalizer and BertPreTokenizer classify characters with the unicode_categories crate
# (Unicode 8.0 era tables: punctuation, nonspacing marks, "other" = Cc/Cf/Co), Rust's
# char::is_whitespace and to_lowercase (the Rust release's Unicode), and an NFD from older
# tables. anvil's tables (src/data/tok_unicode.c) are measured here, one code point at a time,
# and tests/fixtures/tokenizers/bert_unicode.json holds per-block CRC-32s of every output so that
# test_tokenizer checks all 1,112,064 code points against HF.

UNICODE_BLOCK = 4096  # code points per CRC block in bert_unicode.json


def bert_probe():
    """[(cp, clean, chinese, strip, lower, pretok)] for every scalar value: the output of
    BertNormalizer with only that option on, and the BertPreTokenizer class of the character
    between two letters: W (whitespace, removed), P (punctuation, isolated), O (other)."""
    opts = dict(clean_text=False, handle_chinese_chars=False, strip_accents=False, lowercase=False)
    norms = []
    for k in ("clean_text", "handle_chinese_chars", "strip_accents", "lowercase"):
        o = dict(opts)
        o[k] = True
        norms.append(normalizers.BertNormalizer(**o))
    pre = pre_tokenizers.BertPreTokenizer()
    out = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        res = [n.normalize_str(c) for n in norms]
        p = [w for w, _ in pre.pre_tokenize_str("a" + c + "a")]
        cls = "W" if p == ["a", "a"] else "P" if p == ["a", c, "a"] else "O" if p == ["a" + c + "a"] else None
        if cls is None:
            raise SystemExit(f"U+{cp:04X}: unexpected BertPreTokenizer split {p}")
        out.append((cp, *res, cls))
    return out


def unicode_fixture(out, probe):
    """Per-block CRC-32 of each output (UTF-8 of each code point's output followed by 0xFF)."""
    import zlib
    blocks = {}
    for cp, clean, chinese, strip, lower, cls in probe:
        b = blocks.setdefault(cp // UNICODE_BLOCK, [bytearray() for _ in range(5)])
        for i, s in enumerate((clean, chinese, strip, lower)):
            b[i] += s.encode("utf-8") + b"\xff"
        b[4] += cls.encode()
    meta = {"block": UNICODE_BLOCK, "fields": ["clean_text", "handle_chinese_chars", "strip_accents", "lowercase",
                                               "pretok_class"],
            "crc32": [[k] + [zlib.crc32(x) for x in blocks[k]] for k in sorted(blocks)]}
    with open(os.path.join(out, "bert_unicode.json"), "w") as f:
        json.dump(meta, f, separators=(",", ":"))
        f.write("\n")


def c_ranges(cps):
    r = []
    for cp in sorted(cps):
        if r and r[-1][1] == cp - 1:
            r[-1][1] = cp
        else:
            r.append([cp, cp])
    return r


def c_tables(probe, path):
    """Rewrite the generated region of src/data/tok_unicode.c from the probe."""
    import ctypes
    import ctypes.util
    lib = ctypes.CDLL(ctypes.util.find_library("utf8proc") or "libutf8proc.so")
    lib.utf8proc_tolower.restype = ctypes.c_int32
    lib.utf8proc_unicode_version.restype = ctypes.c_char_p
    control, punct, mark, space, lower = [], [], [], [], []
    for cp, clean, chinese, strip, low, cls in probe:
        c = chr(cp)
        if cp >= 0x80 and clean == "":
            control.append(cp)
        if cp >= 0x80 and cls == "P":
            punct.append(cp)
        if cp >= 0x80 and cls == "W":
            space.append(cp)
        if cp >= 0x80 and strip == "":
            mark.append(cp)
        if cp != 0x130 and low != c:  # U+0130 is the one two-character lowercase (SpecialCasing)
            if len(low) != 1:
                raise SystemExit(f"U+{cp:04X}: lowercase is {low!r}, not one character")
            if lib.utf8proc_tolower(cp) != ord(low):
                lower.append((cp, ord(low)))
    lines = [f"/* generated by tools/make_tokenizer_fixtures.py --c-tables (HF tokenizers {tokenizers_version()},"
             f" utf8proc {lib.utf8proc_unicode_version().decode()}) */"]
    for name, cps, what in (("bert_control", control, "removed by clean_text (HF is_control, and U+FFFD)"),
                            ("bert_punct", punct, "isolated by BertPreTokenizer (HF is_punctuation)"),
                            ("bert_space", space, "whitespace (Rust char::is_whitespace)"),
                            ("bert_mark", mark, "removed by strip_accents (HF is_mark_nonspacing)")):
        rs = c_ranges(cps)
        lines.append(f"/* {what}: {len(cps)} code points above U+007F */")
        lines.append(f"static const UniRange {name}[{len(rs)}] = {{")
        row = ""
        for a, b in rs:
            item = f"{{0x{a:X}, 0x{b:X}}}, "
            if len(row) + len(item) > 104:
                lines.append("    " + row.rstrip())
                row = ""
            row += item
        lines.append("    " + row.rstrip())
        lines.append("};")
    lines.append(f"/* lowercase mappings Rust has and utf8proc {lib.utf8proc_unicode_version().decode()} lacks */")
    lines.append(f"static const UniPair lower_extra[{max(len(lower), 1)}] = {{")
    row = ""
    for a, b in lower or [(0, 0)]:
        item = f"{{0x{a:X}, 0x{b:X}}}, "
        if len(row) + len(item) > 104:
            lines.append("    " + row.rstrip())
            row = ""
        row += item
    lines.append("    " + row.rstrip())
    lines.append("};")
    src = open(path, encoding="utf-8").read()
    a = src.index("/* BEGIN GENERATED */") + len("/* BEGIN GENERATED */\n")
    b = src.index("/* END GENERATED */")
    with open(path, "w", encoding="utf-8") as f:
        f.write(src[:a] + "\n".join(lines) + "\n" + src[b:])
    print(f"{path}: {len(control)} control, {len(punct)} punctuation, {len(space)} space, {len(mark)} marks, "
          f"{len(lower)} extra lowercase")


def tokenizers_version():
    import tokenizers
    return tokenizers.__version__


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="tests/fixtures/tokenizers")
    ap.add_argument("--c-tables", metavar="TOK_UNICODE_C",
                    help="only rewrite the generated tables of this file (src/data/tok_unicode.c)")
    a = ap.parse_args()
    if a.c_tables:
        return c_tables(bert_probe(), a.c_tables)
    lines = read_lines(a.data)
    corpus = lines[:20000]
    if os.path.isdir(a.out):
        shutil.rmtree(a.out)
    os.makedirs(a.out)
    names = bytelevel_fixtures(a.out, a.data, lines, corpus)
    names += sp_fixtures(a.out, a.data, lines, corpus)
    names += hand_fixtures(a.out, a.data, lines, corpus)
    names += wordpiece_fixtures(a.out, a.data, lines, corpus)
    names += roberta_fixtures(a.out, a.data, lines, corpus)
    unicode_fixture(a.out, bert_probe())
    with open(os.path.join(a.out, "index.txt"), "w") as f:
        f.write("# fixture directories, written by tools/make_tokenizer_fixtures.py\n")
        f.write("\n".join(names) + "\n")


if __name__ == "__main__":
    main()
