/* fsutil.c - atomic files and directories (see fsutil.h). */
#define _GNU_SOURCE /* renameat2, nftw */
#include "io/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"

/* Open file descriptors nftw may hold while walking a tree. */
#define RM_RF_MAX_FDS 32

char *fs_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    int slash = a > 0 && dir[a - 1] != '/';
    char *s = xmalloc(a + slash + b + 1);
    memcpy(s, dir, a);
    if (slash) s[a] = '/';
    memcpy(s + a + slash, name, b + 1);
    return s;
}

/* The directory containing path ("." when it has no slash). */
static char *parent_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash) return xstrdup(".");
    if (slash == path) return xstrdup("/");
    size_t n = (size_t)(slash - path);
    char *d = xmalloc(n + 1);
    memcpy(d, path, n);
    d[n] = '\0';
    return d;
}

int fs_sync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return err_set("%s: %s", path, strerror(errno));
    /* Some file systems do not support fsync on directories; that is not an error. */
    if (fsync(fd) != 0 && errno != EINVAL && errno != EROFS) {
        int e = errno;
        close(fd);
        return err_set("%s: fsync: %s", path, strerror(e));
    }
    close(fd);
    return 0;
}

struct FsAtomic {
    char *path, *tmp;
    int fd;
};

FsAtomic *fs_atomic_open(const char *path)
{
    FsAtomic *a = xcalloc(1, sizeof(*a));
    a->path = xstrdup(path);
    size_t n = strlen(path) + 32;
    a->tmp = xmalloc(n);
    snprintf(a->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    a->fd = open(a->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (a->fd < 0) {
        err_set("%s: cannot create: %s", path, strerror(errno));
        free(a->tmp);
        free(a->path);
        free(a);
        return NULL;
    }
    return a;
}

int fs_atomic_write(FsAtomic *a, const void *data, size_t n)
{
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(a->fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return err_set("%s: write: %s", a->path, strerror(errno));
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void atomic_free(FsAtomic *a)
{
    free(a->tmp);
    free(a->path);
    free(a);
}

void fs_atomic_abort(FsAtomic *a)
{
    if (!a) return;
    if (a->fd >= 0) close(a->fd);
    unlink(a->tmp);
    atomic_free(a);
}

int fs_atomic_commit(FsAtomic *a)
{
    int rc = 0;
    if (fsync(a->fd) != 0) rc = err_set("%s: fsync: %s", a->path, strerror(errno));
    if (close(a->fd) != 0 && rc == 0) rc = err_set("%s: close: %s", a->path, strerror(errno));
    a->fd = -1;
    if (rc == 0 && rename(a->tmp, a->path) != 0) rc = err_set("%s: rename: %s", a->path, strerror(errno));
    if (rc != 0) {
        unlink(a->tmp);
        atomic_free(a);
        return -1;
    }
    char *dir = parent_dir(a->path);
    rc = fs_sync_dir(dir);
    free(dir);
    atomic_free(a);
    return rc;
}

int fs_write_atomic(const char *path, const void *data, size_t n)
{
    FsAtomic *a = fs_atomic_open(path);
    if (!a) return -1;
    if (fs_atomic_write(a, data, n) != 0) {
        fs_atomic_abort(a);
        return -1;
    }
    return fs_atomic_commit(a);
}

int fs_read_file(const char *path, char **buf, size_t *n)
{
    *buf = NULL;
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return err_set("%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return err_set("%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    char *b = xmalloc(size + 1);
    size_t got = fread(b, 1, size, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || got != size) {
        free(b);
        return err_set("%s: read error", path);
    }
    b[size] = '\0';
    *buf = b;
    *n = size;
    return 0;
}

int fs_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

int fs_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int fs_mkdir_p(const char *path)
{
    char *p = xstrdup(path);
    size_t len = strlen(p);
    while (len > 1 && p[len - 1] == '/') p[--len] = '\0';
    for (char *s = p + 1;; s++) {
        int end = *s == '\0';
        if (*s == '/' || end) {
            *s = '\0';
            if (mkdir(p, 0755) != 0 && errno != EEXIST) {
                int e = errno;
                err_set("%s: cannot create directory: %s", p, strerror(e));
                free(p);
                return -1;
            }
            if (end) break;
            *s = '/';
        }
    }
    int ok = fs_is_dir(p);
    if (!ok) err_set("%s: exists and is not a directory", p);
    free(p);
    return ok ? 0 : -1;
}

static int rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    int rc = type == FTW_DP ? rmdir(path) : unlink(path);
    if (rc != 0 && errno != ENOENT) {
        err_set("%s: cannot remove: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

int fs_rm_rf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : err_set("%s: %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return unlink(path) == 0 ? 0 : err_set("%s: cannot remove: %s", path, strerror(errno));
    return nftw(path, rm_one, RM_RF_MAX_FDS, FTW_DEPTH | FTW_PHYS) == 0 ? 0 : -1;
}

int fs_publish_dir(const char *tmp_dir, const char *final_dir)
{
    if (!fs_is_dir(tmp_dir)) return err_set("%s: not a directory", tmp_dir);
    char *parent = parent_dir(final_dir);
    int rc = 0;
    if (!fs_exists(final_dir)) {
        if (rename(tmp_dir, final_dir) != 0) rc = err_set("%s: rename: %s", final_dir, strerror(errno));
        goto out;
    }
    /* Swap the two names in one step where the kernel can (Linux >= 3.15);
     * tmp_dir then holds the old directory, which we delete. */
    if (renameat2(AT_FDCWD, tmp_dir, AT_FDCWD, final_dir, RENAME_EXCHANGE) == 0) {
        rc = fs_rm_rf(tmp_dir);
        goto out;
    }
    /* Otherwise move the old one aside first. */
    size_t n = strlen(final_dir) + 32;
    char *old = xmalloc(n);
    snprintf(old, n, "%s.old.%ld", final_dir, (long)getpid());
    if (rename(final_dir, old) != 0) {
        rc = err_set("%s: cannot move aside: %s", final_dir, strerror(errno));
    } else if (rename(tmp_dir, final_dir) != 0) {
        rc = err_set("%s: rename: %s", final_dir, strerror(errno));
        rename(old, final_dir); /* put the old one back */
    } else {
        rc = fs_rm_rf(old);
    }
    free(old);
out:
    if (rc == 0) rc = fs_sync_dir(parent);
    free(parent);
    return rc;
}
