/* shard.c - reading (mmap) and writing token shards; format in shard.h. */
#include "data/shard.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zlib.h>

#include "core/error.h"

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p)
{
    return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}
static void wr32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void wr64(uint8_t *p, uint64_t v)
{
    wr32(p, (uint32_t)v);
    wr32(p + 4, (uint32_t)(v >> 32));
}

static uint32_t header_crc(const uint8_t *h)
{
    uint8_t tmp[SHARD_HEADER_BYTES];
    memcpy(tmp, h, sizeof(tmp));
    memset(tmp + 36, 0, 4);
    return (uint32_t)crc32(0L, tmp, sizeof(tmp));
}

int shard_sniff(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    uint8_t b[8];
    size_t k = fread(b, 1, sizeof(b), f);
    fclose(f);
    if (k < 4) return 0;
    if (k == 8 && !memcmp(b, SHARD_MAGIC, 8)) return 1;
    return rd32(b) == LLMC_MAGIC;
}

void shard_close(Shard *s)
{
    if (s->map) munmap(s->map, s->map_len);
    free(s->path);
    memset(s, 0, sizeof(*s));
}

int shard_open(Shard *s, const char *path)
{
    memset(s, 0, sizeof(*s));
    int fd = open(path, O_RDONLY);
    if (fd < 0) return err_set("%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st)) {
        close(fd);
        return err_set("%s: %s", path, strerror(errno));
    }
    size_t size = (size_t)st.st_size;
    if (size < 8) {
        close(fd);
        return err_set("%s: not a token shard (%zu bytes)", path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return err_set("%s: mmap failed: %s", path, strerror(errno));
    const uint8_t *h = map;
    s->map = map;
    s->map_len = size;
    s->path = xstrdup(path);
    uint64_t header;
    if (!memcmp(h, SHARD_MAGIC, 8)) {
        if (size < SHARD_HEADER_BYTES) goto truncated_header;
        uint32_t version = rd32(h + 8), hbytes = rd32(h + 12), width = rd32(h + 16);
        if (version != SHARD_VERSION) goto bad_version;
        if (rd32(h + 36) != header_crc(h)) {
            err_set("%s: corrupt header (checksum mismatch)", path);
            goto fail;
        }
        if (hbytes != SHARD_HEADER_BYTES || (width != 2 && width != 4)) {
            err_set("%s: corrupt header (header size %u, token width %u)", path, hbytes, width);
            goto fail;
        }
        s->format = SHARD_ANVIL;
        s->width = (int)width;
        s->vocab_size = (int)rd32(h + 20);
        s->count = rd64(h + 24);
        s->eos_id = (int32_t)rd32(h + 32);
        memcpy(s->identity, h + 40, SHARD_IDENTITY_BYTES);
        s->identity[SHARD_IDENTITY_BYTES] = 0;
        header = SHARD_HEADER_BYTES;
        if (s->vocab_size <= 0 || (s->width == 2 && s->vocab_size > 65536)) {
            err_set("%s: corrupt header (vocab size %d with %d-byte tokens)", path, s->vocab_size, s->width);
            goto fail;
        }
    } else if (rd32(h) == LLMC_MAGIC) {
        if (size < LLMC_HEADER_INTS * 4) goto truncated_header;
        uint32_t version = rd32(h + 4);
        if (version != LLMC_VERSION_GPT2 && version != LLMC_VERSION_LLAMA3) goto bad_version;
        s->format = SHARD_LLMC;
        s->width = version == LLMC_VERSION_GPT2 ? 2 : 4;
        s->vocab_size = version == LLMC_VERSION_GPT2 ? LLMC_GPT2_VOCAB : LLMC_LLAMA3_VOCAB;
        s->eos_id = version == LLMC_VERSION_GPT2 ? LLMC_GPT2_VOCAB - 1 : -1;
        s->count = rd32(h + 8);
        header = LLMC_HEADER_INTS * 4;
    } else {
        err_set("%s: not a token shard (bad magic)", path);
        goto fail;
    }
    /* compare in tokens, not bytes: header + count * width wraps in 64 bits for
     * a count near 2^64 / width and would match a small file */
    uint64_t room = ((uint64_t)size - header) / (uint64_t)s->width;
    if (s->count > room) {
        err_set("%s: truncated: header says %llu tokens (%d bytes each), the file has room for %llu", path,
                (unsigned long long)s->count, s->width, (unsigned long long)room);
        goto fail;
    }
    uint64_t want = header + s->count * (uint64_t)s->width;
    if ((uint64_t)size != want) {
        err_set("%s: %s: header says %llu tokens (%llu bytes), the file has %zu bytes", path,
                (uint64_t)size < want ? "truncated" : "trailing bytes", (unsigned long long)s->count,
                (unsigned long long)want, size);
        goto fail;
    }
    s->tokens = h + header;
    return 0;
truncated_header:
    err_set("%s: truncated: %zu bytes, shorter than its header", path, size);
    goto fail;
bad_version:
    err_set("%s: unsupported shard version %u", path, rd32(h + (h[0] == 'A' ? 8 : 4)));
fail:
    shard_close(s);
    return -1;
}

int shard_write(const char *path, const void *tokens, uint64_t count, int vocab_size, int eos_id,
                const char *identity, char *tmp_path)
{
    int width = shard_width_for_vocab(vocab_size);
    uint8_t h[SHARD_HEADER_BYTES] = {0};
    memcpy(h, SHARD_MAGIC, 8);
    wr32(h + 8, SHARD_VERSION);
    wr32(h + 12, SHARD_HEADER_BYTES);
    wr32(h + 16, (uint32_t)width);
    wr32(h + 20, (uint32_t)vocab_size);
    wr64(h + 24, count);
    wr32(h + 32, (uint32_t)eos_id);
    snprintf((char *)h + 40, SHARD_IDENTITY_BYTES, "%s", identity ? identity : "");
    wr32(h + 36, header_crc(h));

    char tmp[4096];
    const char *slash = strrchr(path, '/');
    if (slash)
        snprintf(tmp, sizeof(tmp), "%.*s/.%s.tmp", (int)(slash - path), path, slash + 1);
    else
        snprintf(tmp, sizeof(tmp), ".%s.tmp", path);
    if (tmp_path) snprintf(tmp_path, 4096, "%s", tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        if (tmp_path) tmp_path[0] = 0;
        return err_set("%s: %s", tmp, strerror(errno));
    }
    int ok = 1;
    const uint8_t *parts[2] = {h, tokens};
    size_t lens[2] = {sizeof(h), (size_t)(count * (uint64_t)width)};
    for (int p = 0; p < 2 && ok; p++) {
        size_t done = 0;
        while (done < lens[p]) {
            ssize_t k = write(fd, parts[p] + done, lens[p] - done);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) {
                ok = 0;
                break;
            }
            done += (size_t)k;
        }
    }
    int e = errno;
    ok &= fsync(fd) == 0;
    ok &= close(fd) == 0;
    if (!ok || rename(tmp, path)) {
        if (ok) e = errno;
        unlink(tmp);
        if (tmp_path) tmp_path[0] = 0;
        return err_set("%s: write failed: %s", path, strerror(e));
    }
    if (tmp_path) tmp_path[0] = 0;
    return 0;
}
