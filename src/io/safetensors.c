/* safetensors.c - the safetensors reader and writer (see safetensors.h). */
#include "io/safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "io/fsutil.h"

/* The header length prefix: one little-endian u64. */
#define ST_PREFIX 8
/* The data starts at a multiple of this (the writer pads the header with spaces). */
#define ST_ALIGN 8
/* Elements converted per chunk when writing bf16. */
#define ST_CONVERT_CHUNK 65536
/* Digits in HF shard names: model-00001-of-00002.safetensors. */
#define ST_SHARD_DIGITS 5

static const struct {
    const char *name;
    size_t size;
} dtype_info[ST_NDTYPE] = {
    [ST_BOOL] = {"BOOL", 1}, [ST_U8] = {"U8", 1},           [ST_I8] = {"I8", 1},
    [ST_I16] = {"I16", 2},   [ST_U16] = {"U16", 2},         [ST_F16] = {"F16", 2},
    [ST_BF16] = {"BF16", 2}, [ST_I32] = {"I32", 4},         [ST_U32] = {"U32", 4},
    [ST_F32] = {"F32", 4},   [ST_F64] = {"F64", 8},         [ST_I64] = {"I64", 8},
    [ST_U64] = {"U64", 8},   [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char *st_dtype_name(StDtype t)
{
    return (unsigned)t < ST_NDTYPE ? dtype_info[t].name : "?";
}

size_t st_dtype_size(StDtype t)
{
    return (unsigned)t < ST_NDTYPE ? dtype_info[t].size : 0;
}

int st_dtype_parse(const char *name)
{
    for (int i = 0; i < ST_NDTYPE; i++)
        if (!strcmp(name, dtype_info[i].name)) return i;
    return -1;
}

/* ---- number conversions ---- */

uint16_t st_f32_to_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    /* round to nearest, ties to even: add 0x7fff plus the lowest kept bit */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float st_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

float st_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13); /* inf / NaN */
    } else if (exp != 0) {
        u = sign | ((exp + 112u) << 23) | (man << 13); /* rebias 15 -> 127 */
    } else if (man == 0) {
        u = sign;
    } else { /* subnormal: normalize */
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while (!(man & 0x400u));
        u = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float x;
    memcpy(&x, &u, 4);
    return x;
}

int st_to_f32(const StTensor *t, float *out)
{
    const unsigned char *p = t->data;
    switch (t->dtype) {
    case ST_F32:
        memcpy(out, p, t->numel * 4);
        return 0;
    case ST_BF16:
    case ST_F16:
        for (size_t i = 0; i < t->numel; i++) {
            uint16_t h = (uint16_t)(p[2 * i] | (p[2 * i + 1] << 8));
            out[i] = t->dtype == ST_BF16 ? st_bf16_to_f32(h) : st_f16_to_f32(h);
        }
        return 0;
    case ST_F64:
        for (size_t i = 0; i < t->numel; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            out[i] = (float)d;
        }
        return 0;
    default:
        return err_set("%s: dtype %s does not convert to F32", t->name, st_dtype_name(t->dtype));
    }
}

/* ---- reading ---- */

static void file_free_parsed(StFile *f)
{
    for (int i = 0; i < f->n; i++) free(f->t[i].name);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta[i].key);
        free(f->meta[i].value);
    }
    free(f->t);
    free(f->meta);
    f->t = NULL;
    f->meta = NULL;
    f->n = f->n_meta = 0;
}

void st_close(StFile *f)
{
    if (!f) return;
    file_free_parsed(f);
    if (f->map) munmap(f->map, f->map_size);
    free(f->path);
    memset(f, 0, sizeof(*f));
}

/* A JSON value, shortened, for messages. */
static void json_brief(const json_t *v, char *buf, size_t n)
{
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    snprintf(buf, n, "%.40s%s", s ? s : "?", s && strlen(s) > 40 ? "..." : "");
    free(s);
}

static int parse_meta(StFile *f, json_t *m)
{
    if (!json_is_object(m)) return err_set("%s: __metadata__: expected an object", f->path);
    f->meta = xcalloc(json_object_size(m) + 1, sizeof(StMeta));
    const char *k;
    json_t *v;
    json_object_foreach(m, k, v)
    {
        if (!json_is_string(v)) return err_set("%s: __metadata__: %s: expected a string", f->path, k);
        f->meta[f->n_meta].key = xstrdup(k);
        f->meta[f->n_meta].value = xstrdup(json_string_value(v));
        f->n_meta++;
    }
    return 0;
}

/* Parse one tensor entry; data_size is the number of bytes after the header. */
static int parse_tensor(StFile *f, const char *name, json_t *e, size_t data_size, StTensor *t, size_t *begin)
{
    char b[64];
    const char *path = f->path;
    if (!json_is_object(e)) return err_set("%s: %s: expected an object", path, name);
    json_t *dt = json_object_get(e, "dtype"), *sh = json_object_get(e, "shape"),
           *off = json_object_get(e, "data_offsets");
    if (!json_is_string(dt)) return err_set("%s: %s: dtype: missing or not a string", path, name);
    int d = st_dtype_parse(json_string_value(dt));
    if (d < 0) return err_set("%s: %s: dtype: unknown \"%s\"", path, name, json_string_value(dt));
    t->dtype = (StDtype)d;
    if (!json_is_array(sh)) return err_set("%s: %s: shape: missing or not an array", path, name);
    if (json_array_size(sh) > ST_MAX_DIM)
        return err_set("%s: %s: shape: %zu dimensions (at most %d)", path, name, json_array_size(sh),
                       ST_MAX_DIM);
    t->ndim = (int)json_array_size(sh);
    size_t numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        json_t *x = json_array_get(sh, (size_t)i);
        if (!json_is_integer(x) || json_integer_value(x) < 0) {
            json_brief(x, b, sizeof(b));
            return err_set("%s: %s: shape: expected non-negative integers, got %s", path, name, b);
        }
        t->shape[i] = json_integer_value(x);
        if (__builtin_mul_overflow(numel, (size_t)t->shape[i], &numel))
            return err_set("%s: %s: shape: too many elements", path, name);
    }
    t->numel = numel;
    if (__builtin_mul_overflow(numel, st_dtype_size(t->dtype), &t->nbytes))
        return err_set("%s: %s: shape: too many bytes", path, name);
    if (!json_is_array(off) || json_array_size(off) != 2)
        return err_set("%s: %s: data_offsets: expected [begin, end]", path, name);
    json_t *j0 = json_array_get(off, 0), *j1 = json_array_get(off, 1);
    if (!json_is_integer(j0) || !json_is_integer(j1) || json_integer_value(j0) < 0 ||
        json_integer_value(j1) < json_integer_value(j0))
        return err_set("%s: %s: data_offsets: expected integers 0 <= begin <= end", path, name);
    uint64_t o0 = (uint64_t)json_integer_value(j0), o1 = (uint64_t)json_integer_value(j1);
    if (o1 > data_size)
        return err_set("%s: %s: data_offsets: end %llu is past the end of the data (%zu bytes)", path, name,
                       (unsigned long long)o1, data_size);
    if (o1 - o0 != t->nbytes)
        return err_set("%s: %s: data_offsets: %llu bytes, but shape x %s needs %zu", path, name,
                       (unsigned long long)(o1 - o0), st_dtype_name(t->dtype), t->nbytes);
    *begin = (size_t)o0;
    t->name = xstrdup(name);
    return 0;
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = ((const size_t *)a)[0], y = ((const size_t *)b)[0];
    return x < y ? -1 : x > y;
}

static int parse_header(StFile *f, const char *hdr, size_t hlen, size_t data_size, const unsigned char *data)
{
    json_error_t jerr;
    json_t *root = json_loadb(hdr, hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return err_set("%s: header: invalid JSON: %s", f->path, jerr.text);
    int rc = 0;
    size_t *spans = NULL; /* (begin, end) pairs of non-empty tensors */
    if (!json_is_object(root)) {
        rc = err_set("%s: header: expected a JSON object", f->path);
        goto out;
    }
    size_t cap = json_object_size(root);
    f->t = xcalloc(cap + 1, sizeof(StTensor));
    spans = xcalloc(2 * cap + 2, sizeof(size_t));
    int nspan = 0;
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v)
    {
        if (!strcmp(k, "__metadata__")) {
            if ((rc = parse_meta(f, v)) != 0) goto out;
            continue;
        }
        size_t begin = 0;
        StTensor *t = &f->t[f->n];
        if ((rc = parse_tensor(f, k, v, data_size, t, &begin)) != 0) goto out;
        t->data = data + begin;
        f->n++;
        if (t->nbytes) {
            spans[2 * nspan] = begin;
            spans[2 * nspan + 1] = begin + t->nbytes;
            nspan++;
        }
    }
    qsort(spans, (size_t)nspan, 2 * sizeof(size_t), cmp_size);
    for (int i = 1; i < nspan; i++)
        if (spans[2 * i] < spans[2 * i - 1]) {
            rc = err_set("%s: header: data_offsets: tensors overlap at byte %zu", f->path, spans[2 * i]);
            goto out;
        }
out:
    free(spans);
    json_decref(root);
    return rc;
}

int st_open(StFile *f, const char *path)
{
    memset(f, 0, sizeof(*f));
    f->path = xstrdup(path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        err_set("%s: %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        err_set("%s: not a regular file", path);
        goto fail;
    }
    size_t size = (size_t)st.st_size;
    if (size < ST_PREFIX) {
        close(fd);
        err_set("%s: truncated: %zu bytes, shorter than the 8-byte header length", path, size);
        goto fail;
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        err_set("%s: mmap: %s", path, strerror(errno));
        goto fail;
    }
    f->map = map;
    f->map_size = size;
    const unsigned char *p = map;
    uint64_t hlen = 0;
    for (int i = 0; i < ST_PREFIX; i++) hlen |= (uint64_t)p[i] << (8 * i);
    if (hlen > ST_MAX_HEADER) {
        err_set("%s: not a safetensors file (its first 8 bytes give a header length of %llu, above the "
                "format's limit of %u)",
                path, (unsigned long long)hlen, ST_MAX_HEADER);
        goto fail;
    }
    if (hlen > size - ST_PREFIX) {
        err_set("%s: truncated: header needs %llu bytes, file has %zu after the length", path,
                (unsigned long long)hlen, size - ST_PREFIX);
        goto fail;
    }
    if (hlen < 2 || p[ST_PREFIX] != '{') {
        err_set("%s: header: does not start with '{' (not a safetensors file?)", path);
        goto fail;
    }
    size_t data_start = ST_PREFIX + (size_t)hlen;
    if (parse_header(f, (const char *)p + ST_PREFIX, (size_t)hlen, size - data_start, p + data_start) != 0)
        goto fail;
    return 0;
fail:
    st_close(f);
    return -1;
}

const StTensor *st_find(const StFile *f, const char *name)
{
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->t[i].name, name)) return &f->t[i];
    return NULL;
}

const char *st_meta_get(const StFile *f, const char *key)
{
    for (int i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta[i].key, key)) return f->meta[i].value;
    return NULL;
}

/* ---- several files ---- */

void st_set_close(StSet *s)
{
    if (!s) return;
    for (int i = 0; i < s->nfiles; i++) st_close(&s->files[i]);
    free(s->files);
    memset(s, 0, sizeof(*s));
}

/* Index of the open file with this path, or -1. */
static int set_find_file(const StSet *s, const char *path)
{
    for (int i = 0; i < s->nfiles; i++)
        if (!strcmp(s->files[i].path, path)) return i;
    return -1;
}

static int set_open_index(StSet *s, const char *dir, const char *index_path)
{
    char *text;
    size_t n;
    if (fs_read_file(index_path, &text, &n) != 0) return -1;
    json_error_t jerr;
    json_t *root = json_loadb(text, n, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root) return err_set("%s: invalid JSON: %s (line %d)", index_path, jerr.text, jerr.line);
    int rc = 0;
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm)) {
        rc = err_set("%s: weight_map: missing or not an object", index_path);
        goto out;
    }
    s->files = xcalloc(json_object_size(wm) + 1, sizeof(StFile));
    const char *k;
    json_t *v;
    json_object_foreach(wm, k, v)
    {
        const char *fname = json_is_string(v) ? json_string_value(v) : NULL;
        /* shard names are plain file names next to the index */
        if (!fname || !fname[0] || strchr(fname, '/')) {
            rc = err_set("%s: weight_map: %s: expected a file name in the same directory", index_path, k);
            goto out;
        }
        char *path = fs_join(dir, fname);
        int fi = set_find_file(s, path);
        if (fi < 0) {
            if (st_open(&s->files[s->nfiles], path) != 0) {
                free(path);
                rc = -1;
                goto out;
            }
            fi = s->nfiles++;
        }
        free(path);
        if (!st_find(&s->files[fi], k)) {
            rc = err_set("%s: weight_map: %s: not in %s", index_path, k, fname);
            goto out;
        }
    }
out:
    json_decref(root);
    return rc;
}

int st_set_open_dir(StSet *s, const char *dir, const char *base)
{
    memset(s, 0, sizeof(*s));
    char name[256];
    snprintf(name, sizeof(name), "%s.safetensors", base);
    char *single = fs_join(dir, name);
    snprintf(name, sizeof(name), "%s.safetensors.index.json", base);
    char *index = fs_join(dir, name);
    int rc = 0;
    if (fs_exists(single)) {
        s->files = xcalloc(1, sizeof(StFile));
        rc = st_open(&s->files[0], single);
        if (rc == 0) s->nfiles = 1;
    } else if (fs_exists(index)) {
        rc = set_open_index(s, dir, index);
    } else if (!fs_is_dir(dir)) {
        rc = err_set("%s: %s", dir, fs_exists(dir) ? "not a directory" : "no such directory");
    } else {
        rc = err_set("%s: no %s.safetensors or %s.safetensors.index.json", dir, base, base);
    }
    free(single);
    free(index);
    if (rc != 0) st_set_close(s);
    return rc;
}

const StTensor *st_set_find(const StSet *s, const char *name, const StFile **file)
{
    for (int i = 0; i < s->nfiles; i++) {
        const StTensor *t = st_find(&s->files[i], name);
        if (t) {
            if (file) *file = &s->files[i];
            return t;
        }
    }
    return NULL;
}

/* ---- writing ---- */

size_t st_write_nbytes(const StWriteTensor *t)
{
    size_t n = st_dtype_size(t->dtype);
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] < 0 || __builtin_mul_overflow(n, (size_t)t->shape[i], &n)) return 0;
    return n;
}

static int write_data(FsAtomic *a, const StWriteTensor *t, size_t nbytes)
{
    if (!t->src_f32 || t->dtype == ST_F32) return fs_atomic_write(a, t->data, nbytes);
    /* BF16 from fp32, in chunks */
    size_t numel = nbytes / 2;
    const float *src = t->data;
    unsigned char buf[2 * ST_CONVERT_CHUNK];
    for (size_t i = 0; i < numel; i += ST_CONVERT_CHUNK) {
        size_t m = MIN((size_t)ST_CONVERT_CHUNK, numel - i);
        for (size_t j = 0; j < m; j++) {
            uint16_t h = st_f32_to_bf16(src[i + j]);
            buf[2 * j] = (unsigned char)(h & 0xff);
            buf[2 * j + 1] = (unsigned char)(h >> 8);
        }
        if (fs_atomic_write(a, buf, 2 * m) != 0) return -1;
    }
    return 0;
}

/* The header JSON for tensors t[0..n), padded with spaces to ST_ALIGN. */
static char *build_header(const char *path, const StWriteTensor *t, int n, const StMeta *meta, int n_meta,
                          size_t *hlen)
{
    json_t *root = json_object();
    char *out = NULL;
    if (n_meta > 0) {
        json_t *m = json_object();
        for (int i = 0; i < n_meta; i++) json_object_set_new(m, meta[i].key, json_string(meta[i].value));
        json_object_set_new(root, "__metadata__", m);
    }
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        size_t nb = st_write_nbytes(&t[i]);
        if ((unsigned)t[i].dtype >= ST_NDTYPE || t[i].ndim < 0 || t[i].ndim > ST_MAX_DIM) {
            err_set("%s: %s: bad dtype or rank", path, t[i].name);
            goto out;
        }
        if (t[i].src_f32 && t[i].dtype != ST_F32 && t[i].dtype != ST_BF16) {
            err_set("%s: %s: cannot convert F32 to %s", path, t[i].name, st_dtype_name(t[i].dtype));
            goto out;
        }
        if (nb == 0 && t[i].ndim > 0) {
            int empty = 0;
            for (int d = 0; d < t[i].ndim; d++) empty |= t[i].shape[d] == 0;
            if (!empty) {
                err_set("%s: %s: shape too large", path, t[i].name);
                goto out;
            }
        }
        if (!strcmp(t[i].name, "__metadata__") || json_object_get(root, t[i].name)) {
            err_set("%s: %s: duplicate or reserved tensor name", path, t[i].name);
            goto out;
        }
        json_t *e = json_object(), *shape = json_array();
        json_object_set_new(e, "dtype", json_string(st_dtype_name(t[i].dtype)));
        for (int d = 0; d < t[i].ndim; d++) json_array_append_new(shape, json_integer(t[i].shape[d]));
        json_object_set_new(e, "shape", shape);
        json_object_set_new(e, "data_offsets", json_pack("[II]", (json_int_t)off, (json_int_t)(off + nb)));
        json_object_set_new(root, t[i].name, e);
        off += nb;
    }
    char *s = json_dumps(root, JSON_COMPACT);
    if (!s) {
        err_set("%s: cannot encode the header", path);
        goto out;
    }
    size_t len = strlen(s), padded = (len + ST_ALIGN - 1) / ST_ALIGN * ST_ALIGN;
    out = xmalloc(padded + 1);
    memcpy(out, s, len);
    memset(out + len, ' ', padded - len);
    out[padded] = '\0';
    free(s);
    *hlen = padded;
out:
    json_decref(root);
    return out;
}

int st_write(const char *path, const StWriteTensor *t, int n, const StMeta *meta, int n_meta)
{
    size_t hlen;
    char *hdr = build_header(path, t, n, meta, n_meta, &hlen);
    if (!hdr) return -1;
    unsigned char prefix[ST_PREFIX];
    for (int i = 0; i < ST_PREFIX; i++) prefix[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    FsAtomic *a = fs_atomic_open(path);
    if (!a) {
        free(hdr);
        return -1;
    }
    int rc = fs_atomic_write(a, prefix, ST_PREFIX);
    if (rc == 0) rc = fs_atomic_write(a, hdr, hlen);
    for (int i = 0; i < n && rc == 0; i++) rc = write_data(a, &t[i], st_write_nbytes(&t[i]));
    free(hdr);
    if (rc != 0) {
        fs_atomic_abort(a);
        return -1;
    }
    return fs_atomic_commit(a);
}

/* Is name "<base>-NNNNN-of-NNNNN.safetensors" (an HF shard of base)? */
static int is_shard_name(const char *name, const char *base)
{
    size_t b = strlen(base);
    if (strncmp(name, base, b) != 0 || name[b] != '-') return 0;
    const char *p = name + b + 1;
    for (int part = 0; part < 2; part++) {
        int digits = 0;
        while (*p >= '0' && *p <= '9') p++, digits++;
        if (digits == 0) return 0;
        if (part == 0) {
            if (strncmp(p, "-of-", 4) != 0) return 0;
            p += 4;
        }
    }
    return !strcmp(p, ".safetensors");
}

/* Remove files of the other layout (or an older shard count) left in dir. */
static int remove_stale(const char *dir, const char *base, char **keep, int nkeep)
{
    DIR *d = opendir(dir);
    if (!d) return err_set("%s: %s", dir, strerror(errno));
    char single[256], index[256];
    snprintf(single, sizeof(single), "%s.safetensors", base);
    snprintf(index, sizeof(index), "%s.safetensors.index.json", base);
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *nm = e->d_name;
        if (strcmp(nm, single) && strcmp(nm, index) && !is_shard_name(nm, base)) continue;
        int kept = 0;
        for (int i = 0; i < nkeep; i++) kept |= !strcmp(keep[i], nm);
        if (kept) continue;
        char *p = fs_join(dir, nm);
        if (unlink(p) != 0 && errno != ENOENT) rc = err_set("%s: cannot remove: %s", p, strerror(errno));
        free(p);
    }
    closedir(d);
    return rc;
}

static int write_index(const char *dir, const char *base, const StWriteTensor *t, int n, const int *shard_of,
                       char **names, uint64_t total)
{
    json_t *root = json_object(), *wm = json_object();
    json_object_set_new(root, "metadata", json_pack("{sI}", "total_size", (json_int_t)total));
    for (int i = 0; i < n; i++) json_object_set_new(wm, t[i].name, json_string(names[shard_of[i]]));
    json_object_set_new(root, "weight_map", wm);
    char *s = json_dumps(root, JSON_INDENT(2));
    json_decref(root);
    char fname[256];
    snprintf(fname, sizeof(fname), "%s.safetensors.index.json", base);
    char *path = fs_join(dir, fname);
    size_t len = strlen(s);
    s = xrealloc(s, len + 2);
    s[len] = '\n';
    int rc = fs_write_atomic(path, s, len + 1);
    free(s);
    free(path);
    return rc;
}

int st_write_dir(const char *dir, const char *base, const StWriteTensor *t, int n, const StMeta *meta,
                 int n_meta, uint64_t max_shard)
{
    if (max_shard == 0) max_shard = ST_DEFAULT_MAX_SHARD;
    int *shard_of = xcalloc((size_t)n + 1, sizeof(int));
    uint64_t total = 0, cur = 0;
    int nshard = 1;
    for (int i = 0; i < n; i++) {
        uint64_t nb = st_write_nbytes(&t[i]);
        /* greedy, in order, as transformers does: a tensor larger than the
         * limit gets a shard of its own */
        if (cur > 0 && cur + nb > max_shard) {
            nshard++;
            cur = 0;
        }
        shard_of[i] = nshard - 1;
        cur += nb;
        total += nb;
    }
    char **names = xcalloc((size_t)nshard + 1, sizeof(char *));
    int rc = 0;
    if (nshard == 1) {
        names[0] = xmalloc(strlen(base) + 16);
        sprintf(names[0], "%s.safetensors", base);
        char *path = fs_join(dir, names[0]);
        rc = st_write(path, t, n, meta, n_meta);
        free(path);
        if (rc == 0) rc = remove_stale(dir, base, names, 1);
        goto out;
    }
    StWriteTensor *sub = xcalloc((size_t)n + 1, sizeof(StWriteTensor));
    for (int s = 0; s < nshard && rc == 0; s++) {
        names[s] = xmalloc(strlen(base) + 48);
        sprintf(names[s], "%s-%0*d-of-%0*d.safetensors", base, ST_SHARD_DIGITS, s + 1, ST_SHARD_DIGITS,
                nshard);
        int m = 0;
        for (int i = 0; i < n; i++)
            if (shard_of[i] == s) sub[m++] = t[i];
        char *path = fs_join(dir, names[s]);
        rc = st_write(path, sub, m, meta, n_meta);
        free(path);
    }
    free(sub);
    if (rc == 0) rc = write_index(dir, base, t, n, shard_of, names, total);
    if (rc == 0) {
        names[nshard] = xmalloc(strlen(base) + 32);
        sprintf(names[nshard], "%s.safetensors.index.json", base);
        rc = remove_stale(dir, base, names, nshard + 1);
    }
out:
    for (int s = 0; s <= nshard; s++) free(names[s]);
    free(names);
    free(shard_of);
    return rc;
}
