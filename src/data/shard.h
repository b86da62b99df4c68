/* shard.h - token shards on disk: anvil's own format (written by `anvil
 * prepare`) and llm.c's .bin shards (read only).
 *
 * anvil shard (.tok), all integers little-endian, header of 256 bytes:
 *   off  size  field
 *     0     8  magic "ANVILTOK"
 *     8     4  version (1)
 *    12     4  header size in bytes (256)
 *    16     4  token width in bytes: 2 when vocab_size <= 65536, else 4
 *    20     4  vocab size (every token id is < this)
 *    24     8  token count
 *    32     4  end-of-text id (-1: none)
 *    36     4  CRC-32 (zlib) of the 256 header bytes with this field zeroed
 *    40    64  tokenizer identity, NUL padded ("gpt2", "byte", "hf:<hash>")
 *   104   152  zero
 *   256        the tokens (count * width bytes); the file size is exactly this
 * llm.c shard (.bin): 256 int32 header: [0] magic 20240520, [1] version
 *   (1: uint16 tokens, GPT-2; 2: uint32 tokens, LLaMA-3), [2] token count;
 *   tokens from byte 1024.
 */
#ifndef ANVIL_DATA_SHARD_H
#define ANVIL_DATA_SHARD_H

#include <stddef.h>
#include <stdint.h>

#define SHARD_MAGIC "ANVILTOK"
#define SHARD_VERSION 1
#define SHARD_HEADER_BYTES 256
#define SHARD_IDENTITY_BYTES 64
#define LLMC_MAGIC 20240520
#define LLMC_HEADER_INTS 256
/* llm.c's versions: 1 = GPT-2 (uint16 tokens), 2 = LLaMA-3 (uint32 tokens) */
#define LLMC_VERSION_GPT2 1
#define LLMC_VERSION_LLAMA3 2
#define LLMC_GPT2_VOCAB 50257
#define LLMC_LLAMA3_VOCAB 128256

enum { SHARD_ANVIL, SHARD_LLMC };

typedef struct {
    char *path;
    int format;     /* SHARD_ANVIL or SHARD_LLMC */
    int width;      /* bytes per token: 2 or 4 */
    int vocab_size; /* from the header; llm.c: implied by its version */
    int eos_id;
    uint64_t count;
    char identity[SHARD_IDENTITY_BYTES + 1]; /* "" for llm.c shards */
    const uint8_t *tokens;
    void *map;
    size_t map_len;
} Shard;

/* mmap and validate (magic, version, width, exact size); -1 with err_set()
 * naming the file ("truncated", "not a token shard", ...). */
int shard_open(Shard *s, const char *path);
void shard_close(Shard *s);
/* 1 if the file starts with either magic (used to tell shards from text). */
int shard_sniff(const char *path);
static inline uint32_t shard_token(const Shard *s, uint64_t i)
{
    const uint8_t *p = s->tokens + i * (uint64_t)s->width;
    if (s->width == 2) return (uint32_t)p[0] | (uint32_t)p[1] << 8;
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
/* Token width for a vocabulary: uint16 when every id fits. */
static inline int shard_width_for_vocab(int vocab_size)
{
    return vocab_size <= 65536 ? 2 : 4;
}
/* Write a shard atomically (temp file in the same directory, fsync, rename).
 * tokens holds count little-endian values of shard_width_for_vocab(vocab_size)
 * bytes. tmp_path (optional, >= 4096 bytes) receives the temp name while it
 * exists, so a signal handler can remove it. */
int shard_write(const char *path, const void *tokens, uint64_t count, int vocab_size, int eos_id,
                const char *identity, char *tmp_path);

#endif
