#!/usr/bin/env python3
"""GPT-2 encoding speed: anvil vs tiktoken (and optionally HF tokenizers), same
text, same machine, same run. Prints a Markdown table for docs/data.md.

    python3 tools/bench_tokenizer.py [--anvil ./anvil] [--text ../shared/data/text/sentences.txt]
                                     [--threads N] [--repeat 5] [--hf] [--styles]

Rows:
  anvil tokenize      one string, one thread (timed inside the process, tokenizer load excluded)
  anvil prepare       the whole pipeline (read, tokenize, write shards) with 1 and N threads
  tiktoken            encode_ordinary(text), and encode_ordinary_batch over 1 MB pieces with N threads
  HF tokenizers       encode(text), and encode_batch over the pieces with N threads (--hf)
--styles adds a second table: anvil vs HF tokenizers (one thread, one string) for the
trained tokenizer.json fixtures of tests/fixtures/tokenizers (LLaMA-3, Qwen2, SmolLM,
sentencepiece styles), ids checked equal.
--wordpiece: the same for WordPiece (BERT) tokenizers: the wp_* fixtures, a legacy vocab.txt,
and a BERT-sized one (30,522 ids, uncased) that HF trains on the text at the start; plus
RoBERTa's byte-level BPE. HF is timed on the one string (1 thread) and with encode_batch
over the text's lines (--threads). anvil's time is also given as CPU time (the VM is shared).
tiktoken and HF are built from the repository's GPT-2 files (assets/gpt2), since
nothing can be downloaded here. Each number is the best of --repeat runs (the
machine may be shared). All implementations must produce the same ids; checked.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(ROOT, "assets", "gpt2")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def tiktoken_gpt2():
    import tiktoken
    enc = json.load(open(os.path.join(ASSETS, "encoder.json"), encoding="utf-8"))
    inv = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes(inv[ch] for ch in tok): i for tok, i in enc.items() if tok != "<|endoftext|>"}
    return tiktoken.Encoding("gpt2-local", pat_str=GPT2_PAT, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": enc["<|endoftext|>"]})


def hf_gpt2():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    tok = Tokenizer(models.BPE.from_file(os.path.join(ASSETS, "encoder.json"), os.path.join(ASSETS, "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def pieces(text, size=1 << 20):
    """~1 MB pieces cut after a newline (for the batch APIs)."""
    out, i = [], 0
    while i < len(text):
        j = text.find("\n", i + size)
        j = len(text) if j < 0 else j + 1
        out.append(text[i:j])
        i = j
    return out


def best(fn, repeat):
    t = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = fn()
        t.append(time.perf_counter() - t0)
    return min(t), r


def run_anvil_tokenize(anvil, path, out):
    r = subprocess.run([anvil, "tokenize", "--tokenizer", "gpt2", "--file", path, "--out", out, "--stats"],
                       capture_output=True, text=True, check=True)
    m = re.search(r"in ([0-9.]+) s", r.stderr)
    return float(m.group(1))


def run_anvil_prepare(anvil, path, threads):
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([anvil, "prepare", "--tokenizer", "gpt2", "--input", path, "--out", d, "--threads",
                            str(threads), "--no-progress"], capture_output=True, text=True, check=True)
    m = re.search(r"in ([0-9.]+) s \(", r.stderr)
    return float(m.group(1))


def hf_child(args):
    """Runs in a subprocess so that RAYON_NUM_THREADS takes effect."""
    text = open(args.text, encoding="utf-8").read()
    tok = hf_gpt2()
    if args.hf_child == 1:
        dt, ids = best(lambda: tok.encode(text).ids, args.repeat)
        n = len(ids)
    else:
        ps = pieces(text)
        dt, encs = best(lambda: tok.encode_batch(ps), args.repeat)
        n = sum(len(e.ids) for e in encs)
    print(json.dumps({"seconds": dt, "tokens": n}))


STYLES = ["gpt2_style", "llama3_style", "qwen2_style", "smollm_style", "sp_bpe", "sp_metaspace"]


def anvil_stats(anvil, spec, path, out, repeat):
    """Best wall and CPU seconds of `anvil tokenize --stats` (load excluded), and the ids."""
    import array
    walls, cpus = [], []
    for _ in range(repeat):
        r = subprocess.run([anvil, "tokenize", "--tokenizer", spec, "--file", path, "--out", out, "--stats"],
                           capture_output=True, text=True, check=True)
        m = re.search(r"in ([0-9.]+) s \(.*cpu ([0-9.]+) s\)", r.stderr)
        walls.append(float(m.group(1)))
        cpus.append(float(m.group(2)))
    ids = array.array("I")
    ids.frombytes(open(out, "rb").read())
    return min(walls), min(cpus), ids


def wordpiece(args):
    """anvil vs HF tokenizers on WordPiece (and RoBERTa) tokenizers, sentences.txt."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    raw = open(args.text, "rb").read()
    text = raw.decode("utf-8")
    lines = text.split("\n")
    mb = len(raw) / 1e6
    fx = os.path.join(ROOT, "tests", "fixtures", "tokenizers")
    with tempfile.TemporaryDirectory() as tmp:
        # a BERT-base-sized uncased WordPiece (bert-base-uncased has 30,522 ids), trained by HF here
        big = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        big.normalizer = normalizers.BertNormalizer(lowercase=True)
        big.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        big.decoder = decoders.WordPiece()
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        big.train_from_iterator(lines, trainers.WordPieceTrainer(vocab_size=30522, special_tokens=specials,
                                                                 show_progress=False))
        big.post_processor = processors.BertProcessing(("[SEP]", big.token_to_id("[SEP]")),
                                                       ("[CLS]", big.token_to_id("[CLS]")))
        os.makedirs(os.path.join(tmp, "bert30k"))
        big.save(os.path.join(tmp, "bert30k", "tokenizer.json"))
        rows = [("wp_uncased (2,000)", os.path.join(fx, "wp_uncased")),
                ("wp_cased (1,000)", os.path.join(fx, "wp_cased")),
                ("wp_vocab_txt (vocab.txt, 2,000)", os.path.join(fx, "wp_vocab_txt", "vocab.txt")),
                (f"BERT-sized uncased ({big.get_vocab_size()}, trained here)", os.path.join(tmp, "bert30k")),
                ("roberta_style (byte-level BPE, 1,001)", os.path.join(fx, "roberta_style"))]
        print("| tokenizer | anvil MB/s | HF `encode` MB/s, 1 thread | "
              f"HF `encode_batch` (lines) MB/s, {args.threads} threads | anvil / HF `encode` | "
              "anvil, CPU time | HF `encode`, CPU time | HF `encode_batch`, CPU time | anvil / HF batch, CPU | "
              "ids equal |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for name, spec in rows:
            wall, cpu, mine = anvil_stats(args.anvil, spec, args.text, os.path.join(tmp, "ids.u32"), args.repeat)
            r = subprocess.run([sys.executable, __file__, "--text", args.text, "--hf-wp-child", spec,
                                "--repeat", "1"], env=dict(os.environ, RAYON_NUM_THREADS="1"),
                               capture_output=True, text=True, check=True)
            one = json.loads(r.stdout.strip().splitlines()[-1])
            env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="true")
            r = subprocess.run([sys.executable, __file__, "--text", args.text, "--hf-wp-child", spec,
                                "--repeat", str(args.repeat), "--hf-child", "2"], env=env, capture_output=True,
                               text=True, check=True)
            batch = json.loads(r.stdout.strip().splitlines()[-1])
            same = list(mine) == one["ids"]
            print(f"| {name} | {mb / wall:.1f} | {mb / one['seconds']:.2f} | {mb / batch['seconds']:.2f} | "
                  f"{one['seconds'] / wall:.0f}x | {mb / cpu:.1f} | {mb / one['cpu']:.2f} | {mb / batch['cpu']:.2f} | "
                  f"{batch['cpu'] / cpu:.0f}x | {'yes' if same else 'NO'} |")
    print(f"\n{os.path.basename(args.text)} ({mb:.1f} MB), load average {os.getloadavg()[0]:.2f} at the end; "
          f"best of {args.repeat} (HF one string: 1 run); MB/s of wall time, and of CPU time (all threads)")


def hf_wp_child(args):
    """HF timing in its own process (RAYON_NUM_THREADS): one string, or encode_batch over lines."""
    from tokenizers import Tokenizer
    text = open(args.text, encoding="utf-8").read()
    spec = args.hf_wp_child
    if spec.endswith(".txt"):
        from transformers import BertTokenizer
        tok = BertTokenizer.from_pretrained(os.path.dirname(spec)).backend_tokenizer
    else:
        tok = Tokenizer.from_file(os.path.join(spec, "tokenizer.json"))
    lines = text.split("\n")
    fn = ((lambda: tok.encode_batch(lines, add_special_tokens=False)) if args.hf_child == 2 else
          (lambda: tok.encode(text, add_special_tokens=False).ids))
    walls, cpus = [], []
    for _ in range(args.repeat):  # wall and CPU seconds (all threads) of each run; the best of each
        c0, t0 = time.process_time(), time.perf_counter()
        r = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    out = {"seconds": min(walls), "cpu": min(cpus)}
    if args.hf_child != 2:
        out["ids"] = r
    print(json.dumps(out))


def styles(args):
    """anvil vs HF tokenizers on the trained fixture tokenizers (one thread, one string)."""
    import array
    from tokenizers import Tokenizer
    raw = open(args.text, "rb").read()
    text = raw.decode("utf-8")
    mb = len(raw) / 1e6
    fx = os.path.join(ROOT, "tests", "fixtures", "tokenizers")
    print("| tokenizer.json style | anvil MB/s | HF tokenizers MB/s | anvil / HF | ids equal |")
    print("|---|---:|---:|---:|---|")
    for name in STYLES:
        d = os.path.join(fx, name)
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "ids.u32")
            ts = []
            for _ in range(args.repeat):
                r = subprocess.run([args.anvil, "tokenize", "--tokenizer", d, "--file", args.text, "--out", out,
                                    "--stats"], capture_output=True, text=True, check=True)
                ts.append(float(re.search(r"in ([0-9.]+) s", r.stderr).group(1)))
            mine = array.array("I")
            mine.frombytes(open(out, "rb").read())
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        dt, ids = best(lambda: tok.encode(text, add_special_tokens=False).ids, 1)
        a, h = mb / min(ts), mb / dt
        print(f"| {name} | {a:.1f} | {h:.2f} | {a / h:.0f}x | {'yes' if list(mine) == ids else 'NO'} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anvil", default=os.path.join(ROOT, "anvil"))
    ap.add_argument("--text", default=os.path.join(ROOT, "..", "shared", "data", "text", "sentences.txt"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--hf", action="store_true", help="also time HF tokenizers")
    ap.add_argument("--styles", action="store_true", help="also time the tokenizer.json fixture styles")
    ap.add_argument("--wordpiece", action="store_true", help="time WordPiece (BERT) and RoBERTa tokenizers")
    ap.add_argument("--hf-child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--hf-wp-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hf_wp_child:
        return hf_wp_child(args)
    if args.hf_child:
        return hf_child(args)
    if args.styles:
        return styles(args)
    if args.wordpiece:
        return wordpiece(args)

    raw = open(args.text, "rb").read()
    text = raw.decode("utf-8")
    mb = len(raw) / 1e6
    N = args.threads
    rows = []

    enc = tiktoken_gpt2()
    dt, ref = best(lambda: enc.encode_ordinary(text), args.repeat)
    rows.append(("tiktoken 0.x `encode_ordinary`", 1, mb / dt))
    ps = pieces(text)
    dt, _ = best(lambda: enc.encode_ordinary_batch(ps, num_threads=N), args.repeat)
    rows.append((f"tiktoken `encode_ordinary_batch` (1 MB pieces)", N, mb / dt))
    tik1 = rows[0][2]

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "ids.u32")
        ts = [run_anvil_tokenize(args.anvil, args.text, out) for _ in range(args.repeat)]
        import array
        a = array.array("I")
        a.frombytes(open(out, "rb").read())
        if list(a) != ref:
            sys.exit("anvil and tiktoken ids differ")
    rows.append(("anvil `tokenize` (one string)", 1, mb / min(ts)))
    ths = sorted({1, N})
    ts = {th: [] for th in ths}
    for _ in range(args.repeat):  # interleaved, so that both see the same machine
        for th in ths:
            ts[th].append(run_anvil_prepare(args.anvil, args.text, th))
    for th in ths:
        rows.append(("anvil `prepare` (read + tokenize + write shards)", th, mb / min(ts[th])))

    if args.hf:
        for mode, th in ((1, 1), (2, N)):
            env = dict(os.environ, RAYON_NUM_THREADS=str(th), TOKENIZERS_PARALLELISM="true")
            r = subprocess.run([sys.executable, __file__, "--text", args.text, "--repeat", str(args.repeat),
                                "--hf-child", str(mode)], env=env, capture_output=True, text=True, check=True)
            res = json.loads(r.stdout)
            if res["tokens"] != len(ref):
                print(f"note: HF produced {res['tokens']} tokens vs {len(ref)}", file=sys.stderr)
            name = "HF tokenizers `encode`" if mode == 1 else "HF tokenizers `encode_batch` (1 MB pieces)"
            rows.append((name, th, mb / res["seconds"]))

    cpu = "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import tiktoken
    print(f"GPT-2 encoding of {os.path.basename(args.text)} ({mb:.1f} MB, {len(ref)} tokens); "
          f"{cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end; "
          f"tiktoken {tiktoken.__version__}; best of {args.repeat}\n")
    print("| implementation | threads | MB/s | vs tiktoken 1 thread |")
    print("|---|---:|---:|---:|")
    for name, th, v in rows:
        print(f"| {name.replace('0.x', tiktoken.__version__)} | {th} | {v:.1f} | {v / tik1:.2f}x |")


if __name__ == "__main__":
    main()
