/* textio.h - whole-file reading (gzip transparently), atomic writes, and the
 * UTF-8 check that every text input goes through.
 *
 * Policy: text inputs (tokenize --file, prepare, a .txt training source) must
 * be valid UTF-8; the first invalid byte is reported as "FILE: invalid UTF-8
 * at byte offset N" (offset into the decompressed text). The tokenizers
 * themselves accept any bytes (byte-level BPE round-trips them exactly).
 */
#ifndef ANVIL_DATA_TEXTIO_H
#define ANVIL_DATA_TEXTIO_H

#include <stddef.h>

/* Read a whole file (gunzipped when it ends in .gz); NUL-terminated, malloc'd.
 * NULL with err_set() naming the file. */
char *text_read_file(const char *path, size_t *len);
/* Write data to path via a temp file in the same directory + fsync + rename. */
int text_write_file_atomic(const char *path, const void *data, size_t len);
/* gzread() that also reports a gzip stream cut short (zlib returns 0 and sets
 * Z_BUF_ERROR) as an error: bytes read (0 at the end), or -1 with err_set(). */
struct gzFile_s;
int text_gzread(struct gzFile_s *g, const char *path, void *buf, unsigned len);
/* Offset of the first byte that is not valid UTF-8, or n if all valid. */
size_t text_utf8_check(const char *s, size_t n);

#endif
