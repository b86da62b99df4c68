#!/usr/bin/env python3
"""Generate tests/fixtures/chat/: one directory per chat-template family (a tokenizer that
transformers accepts, a tokenizer_config.json holding the family's real chat_template and its
bos/eos tokens) and cases.json, the reference that tests/test_sft.c compares anvil against:

    python3 tools/make_chat_fixtures.py [--out tests/fixtures/chat]

Needs transformers (>= 5), jinja2 and tokenizers (no torch). For every conversation:

  ids      tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"] with the REAL
           template (add_generation_prompt off, as for training);
  mask     apply_chat_template(..., return_assistant_tokens_mask=True)["assistant_masks"] with the
           same template annotated by hand with {% generation %} ... {% endgeneration %} around what
           anvil scores: the assistant content as the template emits it (after any strip/trim) and
           the end-of-turn marker the template writes right after it (<|im_end|>, </s>, <|eot_id|>,
           <end_of_turn>, <|end|>). The annotated template must render exactly the real one's text
           (checked here), so the mask is transformers' own token/character mapping of those spans;
  error    instead of ids: the message of the exception the real template raises;
  refused  (with ids) where the real template silently DROPS a message (the 2024-04 Phi-3 template
           renders no system turn): anvil refuses such a record instead of losing data unseen.

Rows {"prompt", "completion"} are rendered as one user turn and one assistant turn. The `plain_*`
fixtures have no template: there the reference is TRL's prompt-completion rule (SFTTrainer,
non-conversational): prompt_ids = tokenizer(prompt), ids = tokenizer(prompt + completion + eos)
(eos only when the completion does not already end with it), mask = 0 for the first
len(prompt_ids) ids, 1 after.

The tokenizers are the trained fixtures of tests/fixtures/tokenizers/ (tools/make_tokenizer_fixtures.py),
linked where a family needs nothing more, or extended with the family's special tokens:
  byte-level, Qwen2 style   qwen2_style (already has <|im_start|>, <|im_end|>, <|endoftext|>)
  byte-level, LLaMA-3 style llama3_style + <|start_header_id|>, <|end_header_id|>
  sentencepiece, LLaMA-2    sp_bpe (Prepend+Replace normalizer, byte fallback): llama2, mistral, zephyr
  sentencepiece, Metaspace  sp_metaspace (prepend_scheme first): mistral_v3
  Gemma style               sp_bpe's model with Gemma's normalizer (Replace " " -> "▁", no prepend)
                            and decoder, + <pad> <eos> <bos> <start_of_turn> <end_of_turn>
  Phi-3 style               sp_bpe + <|endoftext|>, and <|system|> <|user|> <|assistant|> <|end|>
                            with rstrip=True (Phi-3-mini's tokenizer.json marks its chat tokens
                            rstrip; it also exercises the whitespace an added token absorbs)

Where each real chat_template comes from (verbatim JSON strings below; the model each one belongs to
in parentheses):
  chatml_qwen2  huggingface/huggingface.js packages/ollama-utils/src/chat-template-automap.ts
                (fe42e68) entry "library/qwen2:0.5b": the template embedded from Qwen2-0.5B-Instruct
  chatml        EricLBuehler/mistral.rs chat_templates/chatml.json (0d14b68) (OpenHermes-2.5 ChatML)
  llama2        EricLBuehler/mistral.rs chat_templates/llama2.json (82b61bd) (Llama-2-7b-chat-hf)
  llama3        EricLBuehler/mistral.rs chat_templates/llama3.json (d3c3bbb) (Meta-Llama-3-8B-Instruct;
                the same string as huggingface.js chat-template-automap.ts "library/llama3:8b")
  mistral       EricLBuehler/mistral.rs chat_templates/mistral.json (8549316) (Mistral-7B-Instruct-v0.1)
  mistral_v3    mistralai/cookbook concept-deep-dive/tokenization/chat_templates.md, "Tokenizer V2/V3"
                JINJA_TEMPLATE (Mistral-7B-Instruct-v0.3 family, without tools)
  zephyr        huggingface/text-generation-inference router/src/infer/chat_template.rs (db931fc)
                "HuggingFaceH4/zephyr-7b-beta"
  gemma         huggingface/huggingface.js chat-template-automap.ts (fe42e68) "library/gemma2:2b"
                (gemma-2-2b-it)
  phi3          huggingface/huggingface.js chat-template-automap.ts (fe42e68) "library/phi3.5:3.8b"
                (Phi-3.5-mini-instruct; also mistral.rs chat_templates/phi3.5.json)
  phi3_2404     EricLBuehler/mistral.rs chat_templates/phi3.json (ddba24b) (Phi-3-mini-4k-instruct as
                first released, April 2024)
The generator is deterministic: running it again gives the same files. The links point into
tests/fixtures/tokenizers/: run this again after tools/make_tokenizer_fixtures.py changes those.
"""
import argparse
import json
import os
import shutil

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
TOKDIR = os.path.join(HERE, "..", "tests", "fixtures", "tokenizers")

# ---- the real templates, as the JSON strings of their tokenizer_config.json -------------------

def J(s):
    return json.loads(s)

QWEN2 = J(r'''"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"''')
CHATML = J(r'''"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"''')
LLAMA2 = J(r'''"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"''')
LLAMA3 = J(r'''"{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"''')
MISTRAL = J(r'''"{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"''')
MISTRAL_V3 = J(r'''"{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + '[/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"''')
ZEPHYR = J(r'''"{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"''')
GEMMA = J(r'''"{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"''')
PHI3 = J(r'''"{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"''')
PHI3_2404 = J(r'''"{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') %}{{'<|user|>' + '\n' + message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|end|>' + '\n'}}{% endif %}{% endfor %}"''')


def annotate(template, old, new):
    """The template with one hand-made edit that adds {% generation %} blocks."""
    assert template.count(old) == 1, old
    return template.replace(old, new)


GEN = "{% generation %}"
END = "{% endgeneration %}"
CHATML_TURN = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
CHATML_ANN = ("{% if message['role'] == 'assistant' %}{{'<|im_start|>' + message['role'] + '\n'}}" + GEN +
              "{{ message['content'] + '<|im_end|>' }}" + END + "{{ '\n' }}{% else %}" + CHATML_TURN + "{% endif %}")
LLAMA3_TURN = ("{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
               " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}")
LLAMA3_ANN = ("{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}{% if message['role'] == 'assistant' %}"
              "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}" + GEN +
              "{{ message['content'] | trim + '<|eot_id|>' }}" + END + "{% else %}"
              "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}"
              "{% endif %}")
GEMMA_TURN = "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
GEMMA_ANN = ("{% if message['role'] == 'assistant' %}{{ '<start_of_turn>' + role + '\n' }}" + GEN +
             "{{ message['content'] | trim + '<end_of_turn>' }}" + END + "{{ '\n' }}{% else %}" + GEMMA_TURN + "{% endif %}")

FAMILIES = [
    # name, template, annotated template, tokenizer, tokenizer_config extras
    ("chatml_qwen2", QWEN2, annotate(QWEN2, CHATML_TURN, CHATML_ANN), "qwen2_style",
     {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    ("chatml", CHATML, annotate(CHATML, CHATML_TURN, CHATML_ANN), "qwen2_style",
     {"bos_token": None, "eos_token": "<|im_end|>"}),
    ("llama2", LLAMA2, annotate(LLAMA2, "{{ ' '  + content.strip() + ' ' + eos_token }}",
                                "{{ ' ' }}" + GEN + "{{ content.strip() + ' ' + eos_token }}" + END), "sp_bpe",
     {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    ("llama3", LLAMA3, annotate(LLAMA3, LLAMA3_TURN, LLAMA3_ANN), "llama3_chat",
     {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    ("mistral", MISTRAL, annotate(MISTRAL, "{{ message['content'] + eos_token + ' ' }}",
                                  GEN + "{{ message['content'] + eos_token }}" + END + "{{ ' ' }}"), "sp_bpe",
     {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    ("mistral_v3", MISTRAL_V3, annotate(MISTRAL_V3, "{{ ' ' + message['content'] + eos_token}}",
                                        "{{ ' ' }}" + GEN + "{{ message['content'] + eos_token }}" + END), "sp_metaspace",
     {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    # (the newline after the turn moves into an expression: trim_blocks would drop it after endgeneration)
    ("zephyr", ZEPHYR, annotate(ZEPHYR, "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n",
                                "{{ '<|assistant|>\n' }}" + GEN + "{{ message['content'] + eos_token }}" + END +
                                "{{ '\\n' }}"), "sp_bpe",
     {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    ("gemma", GEMMA, annotate(GEMMA, GEMMA_TURN, GEMMA_ANN), "gemma_chat",
     {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}),
    ("phi3", PHI3, annotate(PHI3, "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}",
                            "{{'<|assistant|>\n'}}" + GEN + "{{ message['content'] + '<|end|>' }}" + END + "{{ '\n' }}"),
     "phi3_chat", {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>"}),
    ("phi3_2404", PHI3_2404, annotate(PHI3_2404, "{{message['content'] + '<|end|>' + '\n'}}",
                                      GEN + "{{ message['content'] + '<|end|>' }}" + END + "{{ '\n' }}"),
     "phi3_chat", {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>"}),
]
PLAIN = [("plain_sp", "sp_bpe", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
         ("plain_bytelevel", "gpt2_style", {"eos_token": "<|endoftext|>"})]


def M(*pairs):
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


# The conversations every family renders (one JSONL line each in cases.json's "row").
ROWS = [
    M(("system", "You are a helpful assistant that answers briefly."), ("user", "What is the capital of France?"),
      ("assistant", "The capital of France is Paris.")),
    M(("user", "Hello there!"), ("assistant", "Hi! How can I help you today?"), ("user", "  Tell me a joke.  "),
      ("assistant", "  Why did the chicken cross the road? To get to the other side.  ")),
    M(("user", "Say nothing."), ("assistant", "")),
    M(("user", ""), ("assistant", "You said nothing.")),
    M(("user", "Wie heißt du? 日本語のテキスト 🙂 e\u0301 café"),
      ("assistant", "Ich heiße Anvil. Ça va? ½ € 🚀 — “quotes” 한국어")),
    {"prompt": "Translate to French: cheese", "completion": "fromage"},
    M(("user", "First question?"), ("assistant", "First answer."), ("user", "A question left open")),
    M(("user", "Write a list:\nline one\n\n  indented"), ("assistant", "Sure:\n- a\n- b\n\nDone.\n")),
    M(("system", "Be terse."), ("user", "2+2?"), ("assistant", "4"), ("user", "3+3?"), ("assistant", " 6 ")),
    M(("system", ""), ("user", "Empty system prompt."), ("assistant", "Noted.")),
    M(("user", "Two"), ("user", "users in a row"), ("assistant", "ok")),
    M(("assistant", "I speak first."), ("user", "Fine.")),
    M(("user", "Tokens as text: </s> <s> [INST] <|im_end|> <end_of_turn> <|eot_id|>"), ("assistant", "Noted </s> ok.")),
]
PLAIN_ROWS = [
    {"prompt": "Translate to French: cheese", "completion": " fromage"},
    {"prompt": "Question: what is 2+2?\nAnswer:", "completion": " 4"},
    {"prompt": "", "completion": "Only a completion."},
    {"prompt": "Wie heißt du? 日本語", "completion": " Ich heiße Anvil 🙂"},
    {"prompt": "A prompt", "completion": ""},
]


def special(content, rstrip=False):
    return AddedToken(content, special=True, normalized=False, rstrip=rstrip, lstrip=False, single_word=False)


def build_tokenizers(out):
    """The extended tokenizers, in out/tokenizers/<name>.json; returns name -> path."""
    d = os.path.join(out, "tokenizers")
    os.makedirs(d, exist_ok=True)
    paths = {n: os.path.join(TOKDIR, n, "tokenizer.json") for n in ("qwen2_style", "sp_bpe", "sp_metaspace", "gpt2_style")}

    t = Tokenizer.from_file(os.path.join(TOKDIR, "llama3_style", "tokenizer.json"))
    t.add_special_tokens([special("<|start_header_id|>"), special("<|end_header_id|>")])
    paths["llama3_chat"] = os.path.join(d, "llama3_chat.json")
    t.save(paths["llama3_chat"])

    t = Tokenizer.from_file(os.path.join(TOKDIR, "sp_bpe", "tokenizer.json"))
    t.add_special_tokens([special("<|endoftext|>")] + [special(s, rstrip=True) for s in
                                                      ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")])
    paths["phi3_chat"] = os.path.join(d, "phi3_chat.json")
    t.save(paths["phi3_chat"])

    t = Tokenizer.from_file(os.path.join(TOKDIR, "sp_bpe", "tokenizer.json"))
    t.normalizer = normalizers.Replace(" ", "\u2581")
    t.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    t.add_special_tokens([special(s) for s in ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>")])
    t.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                     special_tokens=[("<bos>", t.token_to_id("<bos>"))])
    paths["gemma_chat"] = os.path.join(d, "gemma_chat.json")
    t.save(paths["gemma_chat"])
    for p in paths.values():  # reproducible files: sorted vocabulary, compact JSON
        js = json.load(open(p, encoding="utf-8"))
        if p.startswith(d):
            js["model"]["vocab"] = dict(sorted(js["model"]["vocab"].items(), key=lambda kv: kv[1]))
            with open(p, "w", encoding="utf-8") as f:
                f.write(json.dumps(js, ensure_ascii=False, separators=(",", ":")))
    return paths


def make_dir(out, name, tok_path, config):
    d = os.path.join(out, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    os.symlink(os.path.relpath(tok_path, d), os.path.join(d, "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096, **config}
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=2)
        f.write("\n")
    return d


def as_messages(row):
    if "messages" in row:
        return row["messages"]
    return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]


# Records the real template renders by dropping a message; anvil refuses them (see "refused").
DROPS = {"phi3_2404": lambda msgs: any(m["role"] == "system" for m in msgs)}


def chat_case(name, tok, template, annotated, row):
    msgs = as_messages(row)
    try:
        out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True)
    except Exception as e:  # the template's raise_exception: TemplateError
        return {"row": row, "error": str(e)}
    ids = list(out["input_ids"])
    text = tok.apply_chat_template(msgs, tokenize=False)
    text_ann = tok.apply_chat_template(msgs, tokenize=False, chat_template=annotated)
    assert text == text_ann, (text, text_ann)
    ann = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, chat_template=annotated,
                                  return_assistant_tokens_mask=True)
    assert list(ann["input_ids"]) == ids
    case = {"row": row, "text": text, "ids": ids, "mask": list(ann["assistant_masks"])}
    if name in DROPS and DROPS[name](msgs):
        case["refused"] = "a message the template drops"
    return case


def plain_case(tok, row):
    prompt, completion = row["prompt"], row["completion"]
    if not completion.endswith(tok.eos_token):
        completion += tok.eos_token
    prompt_ids = tok(text=prompt)["input_ids"]
    ids = tok(text=prompt + completion)["input_ids"]
    assert ids[:len(prompt_ids)] == prompt_ids
    return {"row": row, "ids": ids, "mask": [0] * len(prompt_ids) + [1] * (len(ids) - len(prompt_ids))}


def write_cases(d, family, tok, cases):
    meta = {"family": family, "bos_token": tok.bos_token, "eos_token": tok.eos_token,
            "bos_id": tok.bos_token_id, "eos_id": tok.eos_token_id, "cases": cases}
    with open(os.path.join(d, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    n_err = sum("error" in c for c in cases)
    print(f"{os.path.basename(d)}: {len(cases) - n_err} conversations, {n_err} template errors")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "fixtures", "chat"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    paths = build_tokenizers(a.out)
    names = []
    for name, template, annotated, tok_name, config in FAMILIES:
        d = make_dir(a.out, name, paths[tok_name], {**config, "chat_template": template})
        tok = AutoTokenizer.from_pretrained(d)
        assert tok.chat_template == template
        family = name.split("_")[0] if not name.startswith("mistral") else "mistral"
        write_cases(d, family, tok, [chat_case(name, tok, template, annotated, r) for r in ROWS])
        names.append(name)
    for name, tok_name, config in PLAIN:
        d = make_dir(a.out, name, paths[tok_name], config)
        tok = AutoTokenizer.from_pretrained(d)
        write_cases(d, "none", tok, [plain_case(tok, r) for r in PLAIN_ROWS])
        names.append(name)
    with open(os.path.join(a.out, "index.txt"), "w") as f:
        f.write("# fixture directories, written by tools/make_chat_fixtures.py\n" + "\n".join(names) + "\n")


if __name__ == "__main__":
    main()
