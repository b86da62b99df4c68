/* tokenizer.h - text <-> token ids.
 *
 * CONTRACT used by training, eval and generate. The data module owns the
 * implementation and may extend this header, but not change these meanings.
 */
#ifndef ANVIL_DATA_TOKENIZER_H
#define ANVIL_DATA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct Tokenizer Tokenizer;

/* spec: "gpt2" (bundled vocabulary), "byte", a tokenizer.json path, a BERT
 * vocab.txt path (a name ending in .txt), or a model directory (its
 * tokenizer.json, or vocab.json/merges.txt, or encoder.json/vocab.bpe, or
 * vocab.txt). NULL with err_set() naming the file on failure. */
Tokenizer *tokenizer_load(const char *spec);
void tokenizer_free(Tokenizer *tok);
/* Encode len bytes of text. Special tokens in the text (e.g. "<|endoftext|>")
 * map to their ids. Returns the number of ids (>= 0) written to a malloc'd
 * *ids (caller frees), or -1 with err_set(). */
long tokenizer_encode(const Tokenizer *tok, const char *text, size_t len, int32_t **ids);
/* Decode ids to bytes; returns a malloc'd NUL-terminated string (length in *len if not NULL).
 * Ids outside the vocabulary are skipped. Byte-level and byte-fallback tokens
 * give their raw bytes (no U+FFFD replacement), so decode(encode(x)) == x. */
char *tokenizer_decode(const Tokenizer *tok, const int32_t *ids, size_t n, size_t *len);
/* The bytes of one token (for streaming output); *len receives the length. */
const char *tokenizer_token_bytes(const Tokenizer *tok, int32_t id, size_t *len);
int tokenizer_vocab_size(const Tokenizer *tok);
/* End-of-text / end-of-sequence id, beginning-of-sequence id (-1 if none). */
int tokenizer_eos_id(const Tokenizer *tok);
int tokenizer_bos_id(const Tokenizer *tok);
/* A short identity string ("gpt2", "byte", "hf:<hash>") stored in shard headers. */
const char *tokenizer_identity(const Tokenizer *tok);
/* Copy the files that define this tokenizer into a model directory (so that a
 * checkpoint carries its tokenizer). -1 with err_set() on failure. */
int tokenizer_save(const Tokenizer *tok, const char *dir);

/* ---- additions by the data module (docs/data.md) ---------------------------
 * tokenizer_encode never adds BOS/EOS itself. tokenizer_add_bos says whether
 * the tokenizer's post-processor prepends BOS to a sequence (LLaMA: 1,
 * GPT-2: 0); callers that build model inputs prepend tokenizer_bos_id() then.
 * bos_id follows HF: GPT-2's is 50256 (= eos) even though it adds none. */
int tokenizer_add_bos(const Tokenizer *tok);
/* 1 if id is an added special token (<|endoftext|>, <s>, ...). */
int tokenizer_is_special(const Tokenizer *tok, int32_t id);
/* The id of an added token's content or a vocabulary entry (raw bytes for
 * byte-level vocabularies), -1 if none. */
int32_t tokenizer_token_to_id(const Tokenizer *tok, const char *s, size_t len);
/* 1 if id is a WordPiece continuation piece (its vocabulary entry starts with the model's
 * continuing_subword_prefix, "##"); 0 for every other id and every other model. Whole-word
 * masking (mlm.h) groups a word's pieces with it. */
int tokenizer_is_continuation(const Tokenizer *tok, int32_t id);

/* The post-processor's template (HF's encode(..., add_special_tokens=True)):
 * "[CLS] $A [SEP]" and "[CLS] $A [SEP] $B:1 [SEP]:1" for BERT, "<s> $A </s>"
 * and "<s> $A </s> </s> $B </s>" for RoBERTa, "<|begin_of_text|> $A" for
 * LLaMA-3; none (GPT-2): $A, and $A $B:1. tokenizer_encode never applies it;
 * these do. tokenizer_apply_template wraps already encoded sequences a (na ids)
 * and b (nb ids; b NULL: a single sequence), e.g. each window of MLM data;
 * tokenizer_encode_template encodes text (and text_b, NULL for none) first.
 * Both return the count of ids in a malloc'd *ids, and when type_ids is not
 * NULL, the token type ids in a malloc'd *type_ids (BERT: 0 up to the first
 * [SEP], 1 after). */
long tokenizer_apply_template(const Tokenizer *tok, const int32_t *a, size_t na, const int32_t *b, size_t nb,
                              int32_t **ids, int32_t **type_ids);
long tokenizer_encode_template(const Tokenizer *tok, const char *text, size_t len, const char *text_b,
                               size_t len_b, int32_t **ids, int32_t **type_ids);
/* How many ids the template adds to one sequence (pair 0) or a pair (pair 1):
 * BERT 2 and 3, RoBERTa 2 and 4, GPT-2 0, so a window of W ids fits
 * W - tokenizer_template_added(tok, 0) text tokens. */
int tokenizer_template_added(const Tokenizer *tok, int pair);

#endif
