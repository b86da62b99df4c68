/* textio.c - see textio.h. */
#include "data/textio.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zlib.h>

#include "core/error.h"
#include "io/fsutil.h"
#include "data/utf8.h"

#define READ_CHUNK (1 << 20)

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

int text_gzread(gzFile g, const char *path, void *buf, unsigned len)
{
    int k = gzread(g, buf, len), e = Z_OK;
    const char *msg = gzerror(g, &e);
    if (k < 0 || (k == 0 && e == Z_BUF_ERROR))
        return err_set("%s: %s", path, e == Z_BUF_ERROR ? "truncated gzip data" : msg);
    return k;
}

char *text_read_file(const char *path, size_t *len)
{
    size_t cap = READ_CHUNK, n = 0;
    char *buf;
    if (ends_with(path, ".gz")) {
        gzFile g = gzopen(path, "rb");
        if (!g) {
            err_set("%s: %s", path, errno ? strerror(errno) : "cannot open");
            return NULL;
        }
        gzbuffer(g, 1 << 17);
        if (gzdirect(g)) {
            err_set("%s: not gzip data", path);
            gzclose(g);
            return NULL;
        }
        buf = xmalloc(cap + 1);
        for (;;) {
            if (cap - n < READ_CHUNK) buf = xrealloc(buf, (cap *= 2) + 1);
            int k = text_gzread(g, path, buf + n, READ_CHUNK);
            if (k < 0) {
                gzclose(g);
                free(buf);
                return NULL;
            }
            if (k == 0) break;
            n += (size_t)k;
        }
        gzclose(g);
    } else {
        FILE *f = fopen(path, "rb");
        if (!f) {
            err_set("%s: %s", path, strerror(errno));
            return NULL;
        }
        buf = xmalloc(cap + 1);
        size_t k;
        for (;;) {
            if (cap - n < READ_CHUNK) buf = xrealloc(buf, (cap *= 2) + 1);
            k = fread(buf + n, 1, READ_CHUNK, f);
            n += k;
            if (k < READ_CHUNK) break;
        }
        if (ferror(f)) {
            err_set("%s: read error: %s", path, strerror(errno));
            fclose(f);
            free(buf);
            return NULL;
        }
        fclose(f);
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

/* /dev/null, a pipe or a terminal: written in place (renaming over it would replace it). */
static int write_special(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return err_set("%s: %s", path, strerror(errno));
    int ok = fwrite(data, 1, len, f) == len;
    ok &= fclose(f) == 0;
    return ok ? 0 : err_set("%s: write failed", path);
}

int text_write_file_atomic(const char *path, const void *data, size_t len)
{
    struct stat st;
    if (!stat(path, &st) && !S_ISREG(st.st_mode)) return write_special(path, data, len);
    return fs_write_atomic(path, data, len);
}

size_t text_utf8_check(const char *s, size_t n)
{
    return utf8_validate((const uint8_t *)s, n);
}
