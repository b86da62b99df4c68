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

/* spec: "gpt2" (bundled vocabulary), "byte", a tokenizer.json path, or a model
 * directory (its tokenizer.json, or vocab.json/merges.txt, or encoder.json/vocab.bpe).
 * NULL with err_set() naming the file on failure. */
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

#endif
