/* fsutil.h - files and directories that are never seen half-written.
 *
 * A file is written to "<path>.tmp.<pid>", flushed to disk (fsync) and renamed
 * over <path>, so a reader sees either the old file or the whole new one. A
 * directory (an HF model, a checkpoint) is built under a temporary name and
 * published with fs_publish_dir(). Every function returns 0 (or a pointer) on
 * success and -1 (NULL) with err_set("<path>: <what>") on failure.
 */
#ifndef ANVIL_IO_FSUTIL_H
#define ANVIL_IO_FSUTIL_H

#include <stddef.h>

/* Write n bytes to path atomically (temp file + fsync + rename). */
int fs_write_atomic(const char *path, const void *data, size_t n);

/* A streamed atomic write, for files too large to hold in memory twice:
 *   FsAtomic *a = fs_atomic_open(path);  fs_atomic_write(a, ..)...;  fs_atomic_commit(a);
 * commit fsyncs, renames and frees; abort removes the temp file and frees.
 * After a failed write, call fs_atomic_abort. */
typedef struct FsAtomic FsAtomic;
FsAtomic *fs_atomic_open(const char *path);
int fs_atomic_write(FsAtomic *a, const void *data, size_t n);
int fs_atomic_commit(FsAtomic *a);
void fs_atomic_abort(FsAtomic *a);

/* Read a whole file into a new buffer (NUL-terminated for convenience; the
 * terminator is not counted in *n). Free *buf with free(). */
int fs_read_file(const char *path, char **buf, size_t *n);

/* mkdir -p (mode 0755); fine if the directory exists. */
int fs_mkdir_p(const char *path);
/* rm -rf; fine if path does not exist. Symbolic links are removed, never followed. */
int fs_rm_rf(const char *path);
int fs_exists(const char *path);
int fs_is_dir(const char *path);
/* fsync a directory so that renames inside it are durable. */
int fs_sync_dir(const char *path);

/* Publish a finished directory: rename tmp_dir to final_dir. If final_dir
 * exists it is first moved aside to "<final_dir>.old.<pid>", then deleted
 * after the rename, so final_dir always names a complete directory. */
int fs_publish_dir(const char *tmp_dir, const char *final_dir);

/* "<dir>/<name>" into a new string (free with free()). */
char *fs_join(const char *dir, const char *name);

#endif
