/* test_io.c - files, safetensors and Hugging Face directories (src/io/).
 *
 * References are independent of the code under test: values hand-checked
 * against the bf16/fp16 bit layouts, files written by the Python safetensors
 * library and transformers' save_pretrained (tests/fixtures, made by
 * tools/make_fixtures.py), and transformers' own config.json output. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "core/rng.h"
#include "io/fsutil.h"
#include "io/hf.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "test.h"

static char tmp_root[256];

/* A fresh directory under the test's temp root. */
static char *tmp_path(const char *name)
{
    return fs_join(tmp_root, name);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
}

static int fixtures_present(const char *name)
{
    char *p = fs_join(test_fixtures(), name);
    int ok = fs_exists(p);
    if (!ok) fprintf(stderr, "skip: %s not found\n", p);
    free(p);
    return ok;
}

/* ---- fsutil ---- */

static void test_fs_basics(void)
{
    char *d = tmp_path("fs/a/b/c");
    CHECK(fs_mkdir_p(d) == 0);
    CHECK(fs_is_dir(d));
    CHECK(fs_mkdir_p(d) == 0); /* exists: fine */
    char *f = fs_join(d, "x.bin");
    const char msg[] = "hello\0world";
    CHECK(fs_write_atomic(f, msg, sizeof(msg)) == 0);
    char *buf;
    size_t n;
    CHECK(fs_read_file(f, &buf, &n) == 0);
    CHECK(n == sizeof(msg) && !memcmp(buf, msg, n));
    free(buf);
    /* no temp file left behind */
    char tmp[512];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", f, (long)getpid());
    CHECK(!fs_exists(tmp));
    /* overwrite */
    CHECK(fs_write_atomic(f, "new", 3) == 0);
    CHECK(fs_read_file(f, &buf, &n) == 0 && n == 3 && !memcmp(buf, "new", 3));
    free(buf);
    /* errors name the path */
    CHECK(fs_read_file("/nonexistent/zzz", &buf, &n) == -1);
    CHECK(strstr(err_get(), "/nonexistent/zzz") != NULL);
    CHECK(fs_write_atomic("/nonexistent/dir/zzz", "x", 1) == -1);
    CHECK(strstr(err_get(), "/nonexistent/dir/zzz") != NULL);
    /* a file in the way of mkdir -p */
    char *blocked = fs_join(f, "sub");
    CHECK(fs_mkdir_p(blocked) == -1);
    free(blocked);
    char *top = tmp_path("fs");
    CHECK(fs_rm_rf(top) == 0);
    CHECK(!fs_exists(top));
    CHECK(fs_rm_rf(top) == 0); /* absent: fine */
    free(top);
    free(f);
    free(d);
}

static void test_fs_publish(void)
{
    char *a = tmp_path("pub.tmp"), *final = tmp_path("pub");
    char *fa = fs_join(a, "v");
    CHECK(fs_mkdir_p(a) == 0);
    CHECK(fs_write_atomic(fa, "1", 1) == 0);
    CHECK(fs_publish_dir(a, final) == 0);
    CHECK(!fs_exists(a));
    char *ff = fs_join(final, "v"), *buf;
    size_t n;
    CHECK(fs_read_file(ff, &buf, &n) == 0 && n == 1 && buf[0] == '1');
    free(buf);
    /* replace an existing directory */
    CHECK(fs_mkdir_p(a) == 0);
    CHECK(fs_write_atomic(fa, "2", 1) == 0);
    CHECK(fs_publish_dir(a, final) == 0);
    CHECK(!fs_exists(a));
    CHECK(fs_read_file(ff, &buf, &n) == 0 && n == 1 && buf[0] == '2');
    free(buf);
    /* nothing left beside it */
    char old[512];
    snprintf(old, sizeof(old), "%s.old.%ld", final, (long)getpid());
    CHECK(!fs_exists(old));
    CHECK(fs_publish_dir(a, final) == -1); /* tmp gone */
    fs_rm_rf(final);
    free(ff);
    free(fa);
    free(a);
    free(final);
}

/* ---- safetensors ---- */

/* Hand-checked bf16 rounding: the 16 dropped bits decide, ties go to even. */
static void test_bf16_rounding(void)
{
    struct {
        uint32_t f32;
        uint16_t bf16;
    } cases[] = {
        {0x3F800000u, 0x3F80}, /* 1.0 exact */
        {0x3F808000u, 0x3F80}, /* 1 + 2^-8: halfway, lower 0x3F80 is even -> down */
        {0x3F818000u, 0x3F82}, /* halfway, lower 0x3F81 is odd -> up */
        {0x3F808001u, 0x3F81}, /* just above halfway -> up */
        {0x3F807FFFu, 0x3F80}, /* just below halfway -> down */
        {0x40490FDBu, 0x4049}, /* pi -> 3.140625 */
        {0xC0490FDBu, 0xC049}, /* -pi */
        {0x7F7FFFFFu, 0x7F80}, /* FLT_MAX rounds to +inf (as torch does) */
        {0x7F800000u, 0x7F80}, /* +inf */
        {0x00000001u, 0x0000}, /* smallest subnormal -> +0 */
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        float x;
        memcpy(&x, &cases[i].f32, 4);
        uint16_t h = st_f32_to_bf16(x);
        CHECKF(h == cases[i].bf16, "0x%08x -> 0x%04x, want 0x%04x", cases[i].f32, h, cases[i].bf16);
    }
    float nan = NAN;
    uint16_t hn = st_f32_to_bf16(nan);
    CHECK(isnan(st_bf16_to_f32(hn)));
    CHECK(st_bf16_to_f32(0x4049) == 3.140625f);
    /* fp16: hand-checked bit patterns */
    CHECK(st_f16_to_f32(0x3C00) == 1.0f);
    CHECK(st_f16_to_f32(0xC000) == -2.0f);
    CHECK(st_f16_to_f32(0x7BFF) == 65504.0f);
    CHECK(st_f16_to_f32(0x0001) == ldexpf(1.0f, -24)); /* smallest subnormal */
    CHECK(st_f16_to_f32(0x03FF) == ldexpf(1023.0f, -24));
    CHECK(isinf(st_f16_to_f32(0x7C00)));
    CHECK(isnan(st_f16_to_f32(0x7E00)));
}

static void test_st_roundtrip(void)
{
    enum { R = 3, K = 5 };
    float a[R * K];
    for (int i = 0; i < R * K; i++) a[i] = (float)(i - 7) * 0.3141592f;
    int32_t ids[4] = {1, -2, 300000, 7};
    int64_t ids64[2] = {-5, (int64_t)1 << 40};
    uint8_t bytes[3] = {0, 255, 7};
    StWriteTensor t[] = {
        {.name = "a.f32", .dtype = ST_F32, .ndim = 2, .shape = {R, K}, .data = a, .src_f32 = 1},
        {.name = "a.bf16", .dtype = ST_BF16, .ndim = 2, .shape = {R, K}, .data = a, .src_f32 = 1},
        {.name = "ids", .dtype = ST_I32, .ndim = 2, .shape = {2, 2}, .data = ids},
        {.name = "ids64", .dtype = ST_I64, .ndim = 1, .shape = {2}, .data = ids64},
        {.name = "u8", .dtype = ST_U8, .ndim = 1, .shape = {3}, .data = bytes},
        {.name = "scalar", .dtype = ST_F32, .ndim = 0, .data = a, .src_f32 = 1},
        {.name = "empty", .dtype = ST_F32, .ndim = 2, .shape = {0, 4}, .data = a, .src_f32 = 1},
        {.name = "name \"quoted\"/é", .dtype = ST_F32, .ndim = 1, .shape = {1}, .data = a, .src_f32 = 1},
    };
    StMeta meta[] = {{"format", "pt"}, {"note", "x"}};
    char *p = tmp_path("rt.safetensors");
    CHECK(st_write(p, t, ARRAY_LEN(t), meta, 2) == 0);

    /* header length and space padding, read back by hand */
    char *raw;
    size_t n;
    CHECK(fs_read_file(p, &raw, &n) == 0);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)(unsigned char)raw[i] << (8 * i);
    CHECK(hlen % 8 == 0);
    CHECK(raw[8] == '{');
    size_t last = 8 + hlen - 1;
    while (raw[last] == ' ') last--;
    CHECK(raw[last] == '}');
    free(raw);

    StFile f;
    CHECK(st_open(&f, p) == 0);
    CHECK(f.n == (int)ARRAY_LEN(t));
    CHECK(st_meta_get(&f, "format") && !strcmp(st_meta_get(&f, "format"), "pt"));
    CHECK(st_meta_get(&f, "missing") == NULL);
    const StTensor *x = st_find(&f, "a.f32");
    CHECK(x && x->dtype == ST_F32 && x->ndim == 2 && x->shape[0] == R && x->shape[1] == K);
    float back[R * K];
    CHECK(x && st_to_f32(x, back) == 0 && !memcmp(back, a, sizeof(a)));
    x = st_find(&f, "a.bf16");
    CHECK(x && x->dtype == ST_BF16 && x->nbytes == R * K * 2);
    if (x) {
        CHECK(st_to_f32(x, back) == 0);
        int ok = 1;
        for (int i = 0; i < R * K; i++) ok &= back[i] == st_bf16_to_f32(st_f32_to_bf16(a[i]));
        CHECK(ok);
        CHECK(rel_err_max(back, a, R * K) < 1.0 / 256);
    }
    x = st_find(&f, "ids");
    CHECK(x && x->dtype == ST_I32 && !memcmp(x->data, ids, sizeof(ids)));
    CHECK(x && st_to_f32(x, back) == -1); /* integers do not convert */
    x = st_find(&f, "ids64");
    CHECK(x && x->dtype == ST_I64 && !memcmp(x->data, ids64, sizeof(ids64)));
    x = st_find(&f, "u8");
    CHECK(x && x->dtype == ST_U8 && !memcmp(x->data, bytes, 3));
    x = st_find(&f, "scalar");
    CHECK(x && x->ndim == 0 && x->numel == 1);
    x = st_find(&f, "empty");
    CHECK(x && x->numel == 0 && x->nbytes == 0);
    CHECK(st_find(&f, "name \"quoted\"/é") != NULL);
    st_close(&f);

    /* duplicate names are refused, and nothing is written */
    char *q = tmp_path("dup.safetensors");
    StWriteTensor dup[2] = {t[0], t[0]};
    CHECK(st_write(q, dup, 2, NULL, 0) == -1);
    CHECK(!fs_exists(q));
    free(q);
    free(p);
}

/* Reading what the Python safetensors library wrote (tests/fixtures/dtypes.safetensors):
 * each "x.<DTYPE>" has a matching "expect.<DTYPE>" (F32), torch's own conversion. */
static void test_st_python_dtypes(void)
{
    if (!fixtures_present("dtypes.safetensors")) return;
    char *p = fs_join(test_fixtures(), "dtypes.safetensors");
    StFile f;
    CHECK(st_open(&f, p) == 0);
    const char *floats[] = {"F32", "F16", "BF16", "F64"};
    for (size_t i = 0; i < ARRAY_LEN(floats); i++) {
        char a[32], b[32];
        snprintf(a, sizeof(a), "x.%s", floats[i]);
        snprintf(b, sizeof(b), "expect.%s", floats[i]);
        const StTensor *x = st_find(&f, a), *e = st_find(&f, b);
        CHECKF(x && e && x->numel == e->numel, "%s", a);
        if (!x || !e) continue;
        CHECK(!strcmp(st_dtype_name(x->dtype), floats[i]));
        float *u = xmalloc(x->numel * 4), *v = xmalloc(e->numel * 4);
        CHECK(st_to_f32(x, u) == 0 && st_to_f32(e, v) == 0);
        size_t bad = 0;
        for (size_t k = 0; k < x->numel; k++)
            bad += memcmp(&u[k], &v[k], 4) != 0 && !(isnan(u[k]) && isnan(v[k]));
        CHECKF(bad == 0, "%s: %zu values differ from torch", a, bad);
        free(u);
        free(v);
    }
    /* integer and bool tensors read through with their shapes */
    const char *ints[] = {"I64", "I32", "I16", "I8", "U8", "BOOL"};
    for (size_t i = 0; i < ARRAY_LEN(ints); i++) {
        char a[32];
        snprintf(a, sizeof(a), "x.%s", ints[i]);
        const StTensor *x = st_find(&f, a);
        CHECKF(x != NULL, "%s", a);
        if (!x) continue;
        CHECK(!strcmp(st_dtype_name(x->dtype), ints[i]));
        CHECK(x->ndim == 2 && x->shape[0] == 2 && x->shape[1] == 3);
        /* values were -2..3 (BOOL: i % 2) */
        int ok = 1;
        for (int k = 0; k < 6; k++) {
            const unsigned char *d = (const unsigned char *)x->data + k * st_dtype_size(x->dtype);
            int64_t v = 0;
            switch (x->dtype) {
            case ST_I64:
                memcpy(&v, d, 8);
                break;
            case ST_I32: {
                int32_t w;
                memcpy(&w, d, 4);
                v = w;
            } break;
            case ST_I16: {
                int16_t w;
                memcpy(&w, d, 2);
                v = w;
            } break;
            case ST_I8:
                v = (int8_t)d[0];
                break;
            default:
                v = d[0];
                break;
            }
            int64_t want = x->dtype == ST_BOOL ? k % 2 : x->dtype == ST_U8 ? k : k - 2;
            ok &= v == want;
        }
        CHECKF(ok, "%s values", a);
    }
    st_close(&f);
    free(p);
}

/* Sharded write + read back. */
static void test_st_sharded(void)
{
    enum { NT = 5, EL = 100 };
    float data[NT][EL];
    StWriteTensor t[NT];
    char names[NT][16];
    for (int i = 0; i < NT; i++) {
        for (int k = 0; k < EL; k++) data[i][k] = (float)(i * 1000 + k);
        snprintf(names[i], sizeof(names[i]), "t%d", i);
        t[i] = (StWriteTensor){
            .name = names[i], .dtype = ST_F32, .ndim = 1, .shape = {EL}, .data = data[i], .src_f32 = 1};
    }
    char *d = tmp_path("shards");
    CHECK(fs_mkdir_p(d) == 0);
    StMeta meta[] = {{"format", "pt"}};
    /* a single file first, then shards of at most 2 tensors: the single file must go */
    CHECK(st_write_dir(d, "model", t, NT, meta, 1, 0) == 0);
    char *single = fs_join(d, "model.safetensors");
    CHECK(fs_exists(single));
    CHECK(st_write_dir(d, "model", t, NT, meta, 1, 2 * EL * 4) == 0);
    CHECK(!fs_exists(single));
    char *s1 = fs_join(d, "model-00001-of-00003.safetensors"),
         *s3 = fs_join(d, "model-00003-of-00003.safetensors"),
         *ix = fs_join(d, "model.safetensors.index.json");
    CHECK(fs_exists(s1) && fs_exists(s3) && fs_exists(ix));
    StSet s;
    CHECK(st_set_open_dir(&s, d, "model") == 0);
    CHECK(s.nfiles == 3);
    for (int i = 0; i < NT; i++) {
        const StFile *file;
        const StTensor *x = st_set_find(&s, names[i], &file);
        CHECK(x && x->numel == EL && !memcmp(x->data, data[i], sizeof(data[i])));
    }
    CHECK(st_set_find(&s, "nope", NULL) == NULL);
    st_set_close(&s);
    /* back to one file: the shards and index go */
    CHECK(st_write_dir(d, "model", t, NT, meta, 1, 0) == 0);
    CHECK(fs_exists(single) && !fs_exists(s1) && !fs_exists(ix));
    /* an index naming a missing tensor */
    CHECK(st_write_dir(d, "model", t, NT, meta, 1, 2 * EL * 4) == 0);
    write_text(ix, "{\"weight_map\": {\"t0\": \"model-00001-of-00003.safetensors\", \"ghost\": "
                   "\"model-00001-of-00003.safetensors\"}}");
    CHECK(st_set_open_dir(&s, d, "model") == -1);
    CHECK(strstr(err_get(), "ghost") && strstr(err_get(), "index.json"));
    write_text(ix, "{\"weight_map\": {\"t0\": \"../evil.safetensors\"}}");
    CHECK(st_set_open_dir(&s, d, "model") == -1);
    fs_rm_rf(d);
    CHECK(st_set_open_dir(&s, d, "model") == -1);
    CHECK(strstr(err_get(), d) != NULL);
    free(single);
    free(s1);
    free(s3);
    free(ix);
    free(d);
}

/* Write raw bytes: an 8-byte length + header text + n_data zero bytes. */
static void write_st_raw(const char *path, const char *header, size_t n_data, int64_t len_override)
{
    FILE *f = fopen(path, "wb");
    uint64_t len = len_override >= 0 ? (uint64_t)len_override : strlen(header);
    for (int i = 0; i < 8; i++) fputc((int)((len >> (8 * i)) & 0xff), f);
    fputs(header, f);
    for (size_t i = 0; i < n_data; i++) fputc(0, f);
    fclose(f);
}

static void expect_open_error(const char *path, const char *needle)
{
    StFile f;
    int rc = st_open(&f, path);
    CHECKF(rc == -1, "opened %s", path);
    CHECKF(strstr(err_get(), needle) != NULL, "message \"%s\" lacks \"%s\"", err_get(), needle);
    CHECKF(strstr(err_get(), path) != NULL, "message \"%s\" lacks the path", err_get());
    if (rc == 0) st_close(&f);
}

static void test_st_bad_headers(void)
{
    char *p = tmp_path("bad.safetensors");
    write_st_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, -1);
    StFile f;
    CHECK(st_open(&f, p) == 0);
    st_close(&f);
    write_st_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, -1);
    expect_open_error(p, "past the end");
    write_st_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, -1);
    expect_open_error(p, "shape");
    write_st_raw(p, "{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, -1);
    expect_open_error(p, "dtype");
    write_st_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, -1);
    expect_open_error(p, "data_offsets");
    write_st_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, -1);
    expect_open_error(p, "shape");
    write_st_raw(p,
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                 12, -1);
    expect_open_error(p, "overlap");
    write_st_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, -1);
    expect_open_error(p, "JSON");
    write_st_raw(p, "[1,2]", 0, -1);
    expect_open_error(p, "header");
    write_st_raw(p, "{}", 0, 1000);
    expect_open_error(p, "truncated");
    write_st_raw(p, "{}", 0, (int64_t)1 << 40);
    expect_open_error(p, "header length");
    write_st_raw(p, "{\"__metadata__\":{\"k\":3}}", 0, -1);
    expect_open_error(p, "__metadata__");
    write_st_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,8],\"data_offsets\":[0,8]}}", 8,
                 -1);
    expect_open_error(p, "shape");
    write_text(p, "1234");
    expect_open_error(p, "truncated");
    expect_open_error("/nonexistent/x.safetensors", "No such file");
    free(p);
}

/* Random truncations and byte flips of a valid file: st_open must return
 * 0 or -1, never crash, and a successful open must keep every tensor inside
 * the mapping (checked by touching every byte). */
static void test_st_fuzz(void)
{
    enum { EL = 24, ITERS = 3000 };
    float a[EL];
    for (int i = 0; i < EL; i++) a[i] = (float)i;
    StWriteTensor t[] = {
        {.name = "w", .dtype = ST_F32, .ndim = 2, .shape = {4, 6}, .data = a, .src_f32 = 1},
        {.name = "b", .dtype = ST_BF16, .ndim = 1, .shape = {6}, .data = a, .src_f32 = 1},
        {.name = "i", .dtype = ST_I32, .ndim = 1, .shape = {3}, .data = a},
    };
    StMeta meta[] = {{"format", "pt"}};
    char *p = tmp_path("fuzz_src.safetensors"), *q = tmp_path("fuzz.safetensors");
    CHECK(st_write(p, t, 3, meta, 1) == 0);
    char *orig;
    size_t n;
    CHECK(fs_read_file(p, &orig, &n) == 0);
    Rng rng;
    rng_seed(&rng, 1234, 0);
    int opened = 0, failed = 0, msg_ok = 1;
    unsigned long touch = 0;
    int inside = 1;
    char *buf = xmalloc(n);
    for (int it = 0; it < ITERS; it++) {
        memcpy(buf, orig, n);
        size_t len = n;
        uint32_t mode = rng_below(&rng, 3);
        if (mode == 0) len = rng_below(&rng, n); /* truncate */
        int flips = mode == 0 ? 0 : 1 + (int)rng_below(&rng, 4);
        for (int k = 0; k < flips; k++) {
            /* flip mostly in the length prefix and header, where parsing happens */
            size_t pos = rng_below(&rng, mode == 1 ? MIN(n, (size_t)96) : n);
            buf[pos] ^= (char)(1u << rng_below(&rng, 8));
        }
        FILE *f = fopen(q, "wb");
        fwrite(buf, 1, len, f);
        fclose(f);
        StFile sf;
        if (st_open(&sf, q) == 0) {
            opened++;
            for (int k = 0; k < sf.n; k++) {
                const unsigned char *d = sf.t[k].data;
                inside &= d >= (const unsigned char *)sf.map &&
                          d + sf.t[k].nbytes <= (const unsigned char *)sf.map + sf.map_size;
                for (size_t b = 0; b < sf.t[k].nbytes; b++) touch += d[b];
            }
            st_close(&sf);
        } else {
            failed++;
            msg_ok &= strstr(err_get(), q) != NULL;
        }
    }
    CHECK(inside);
    CHECK(failed > ITERS / 2);
    CHECK(opened > 0);
    CHECKF(msg_ok, "every error names the file");
    fprintf(stderr, "  fuzz: %d opened, %d rejected (checksum %lu)\n", opened, failed, touch);
    free(buf);
    free(orig);
    free(p);
    free(q);
}

/* ---- config.json ---- */

static int read_config_text(const char *text, ModelConfig *c)
{
    char *d = tmp_path("cfg");
    fs_rm_rf(d);
    fs_mkdir_p(d);
    char *p = fs_join(d, "config.json");
    write_text(p, text);
    int rc = hf_read_config(d, c);
    free(p);
    free(d);
    return rc;
}

#define LLAMA_BASE                                                                                           \
    "\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 64,"             \
    "\"intermediate_size\": 96, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"                       \
    "\"num_key_value_heads\": 2, \"vocab_size\": 256, \"max_position_embeddings\": 128, \"rms_norm_eps\": "  \
    "1e-05"

static void test_config_rope(void)
{
    ModelConfig c;
    /* old style: rope_theta at the top */
    CHECK(read_config_text("{" LLAMA_BASE ", \"rope_theta\": 500000.0, \"rope_scaling\": null}", &c) == 0);
    CHECK(c.family == FAMILY_LLAMA && c.rope_theta == 500000.0f && c.rope_scale_factor == 0);
    CHECK(c.n_kv_head == 2 && c.head_dim == 16 && c.d_ff == 96 && c.max_seq_len == 128 && !c.tie_embeddings);
    CHECK(c.norm_eps == 1e-5f && !c.qkv_bias && !c.o_bias && !c.mlp_bias);
    CHECK(!strcmp(c.hf_arch, "LlamaForCausalLM") && !strcmp(c.hf_model_type, "llama"));
    /* new style: rope_parameters (transformers 5) */
    CHECK(read_config_text("{" LLAMA_BASE
                           ", \"rope_parameters\": {\"rope_theta\": 250000, \"rope_type\": \"default\"}}",
                           &c) == 0);
    CHECK(c.rope_theta == 250000.0f && c.rope_scale_factor == 0);
    /* both: rope_parameters wins */
    CHECK(read_config_text("{" LLAMA_BASE
                           ", \"rope_theta\": 10000.0, \"rope_parameters\": {\"rope_theta\": 1000000.0, "
                           "\"rope_type\": \"default\"}}",
                           &c) == 0);
    CHECK(c.rope_theta == 1000000.0f);
    /* neither: the class default */
    CHECK(read_config_text("{" LLAMA_BASE "}", &c) == 0);
    CHECK(c.rope_theta == 10000.0f);
    /* llama3 scaling, both spellings */
    const char *l3 = "\"rope_type\": \"llama3\", \"factor\": 32.0, \"low_freq_factor\": 1.0, "
                     "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192";
    char buf[2048];
    snprintf(buf, sizeof(buf), "{" LLAMA_BASE ", \"rope_parameters\": {\"rope_theta\": 500000.0, %s}}", l3);
    CHECK(read_config_text(buf, &c) == 0);
    CHECK(c.rope_theta == 500000.0f && c.rope_scale_factor == 32.0f && c.rope_low_freq_factor == 1.0f &&
          c.rope_high_freq_factor == 4.0f && c.rope_orig_max_pos == 8192);
    snprintf(buf, sizeof(buf), "{" LLAMA_BASE ", \"rope_theta\": 500000.0, \"rope_scaling\": {%s}}", l3);
    CHECK(read_config_text(buf, &c) == 0);
    CHECK(c.rope_scale_factor == 32.0f && c.rope_orig_max_pos == 8192);
    /* unsupported type: named */
    CHECK(read_config_text("{" LLAMA_BASE
                           ", \"rope_parameters\": {\"rope_theta\": 1e4, \"rope_type\": \"yarn\"}}",
                           &c) == -1);
    CHECK(strstr(err_get(), "rope_parameters.rope_type") && strstr(err_get(), "yarn"));
    CHECK(read_config_text("{" LLAMA_BASE ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}}",
                           &c) == -1);
    CHECK(strstr(err_get(), "rope_scaling.type") && strstr(err_get(), "linear"));
    CHECK(read_config_text("{" LLAMA_BASE
                           ", \"rope_parameters\": {\"rope_type\": \"llama3\", \"factor\": 8.0}}",
                           &c) == -1);
    CHECK(strstr(err_get(), "rope_parameters.low_freq_factor: missing") != NULL);
    CHECK(read_config_text("{" LLAMA_BASE ", \"rope_theta\": \"big\"}", &c) == -1);
    CHECK(strstr(err_get(), "rope_theta: expected a number, got \"big\"") != NULL);
}

static void test_config_families(void)
{
    ModelConfig c;
    /* GPT-2 as transformers writes it (n_inner null -> 4*n_embd) */
    CHECK(read_config_text(
              "{\"activation_function\": \"gelu_new\", \"architectures\": [\"GPT2LMHeadModel\"],"
              "\"bos_token_id\": 50256, \"eos_token_id\": 50256, \"layer_norm_epsilon\": 1e-05,"
              "\"model_type\": \"gpt2\", \"n_embd\": 64, \"n_head\": 4, \"n_inner\": null, \"n_layer\": 2,"
              "\"n_positions\": 64, \"vocab_size\": 256, \"tie_word_embeddings\": true}",
              &c) == 0);
    CHECK(c.family == FAMILY_GPT2 && c.d_model == 64 && c.n_head == 4 && c.n_kv_head == 4 && c.n_layer == 2);
    CHECK(c.d_ff == 256 && c.max_seq_len == 64 && c.vocab_size == 256 && c.tie_embeddings);
    CHECK(c.qkv_bias && c.o_bias && c.mlp_bias && c.norm_eps == 1e-5f);
    CHECK(c.bos_token_id == 50256 && c.eos_token_id == 50256);
    CHECK(!strcmp(c.hf_arch, "GPT2LMHeadModel"));
    /* model_type alone */
    CHECK(read_config_text(
              "{\"model_type\": \"gpt2\", \"n_embd\": 32, \"n_head\": 2, \"n_inner\": 40, \"n_layer\": 1,"
              "\"vocab_size\": 10}",
              &c) == 0);
    CHECK(c.d_ff == 40 && c.max_seq_len == 1024);
    /* Qwen2: q/k/v bias on, o/mlp bias off, whatever attention_bias says */
    CHECK(read_config_text(
              "{\"architectures\": [\"Qwen2ForCausalLM\"], \"model_type\": \"qwen2\", \"hidden_size\": 32,"
              "\"intermediate_size\": 64, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
              "\"num_key_value_heads\": 2, \"vocab_size\": 128, \"tie_word_embeddings\": true,"
              "\"sliding_window\": 16, \"use_sliding_window\": false, \"max_position_embeddings\": 64,"
              "\"bos_token_id\": null, \"eos_token_id\": [5, 6]}",
              &c) == 0);
    CHECK(c.qkv_bias && !c.o_bias && !c.mlp_bias && c.tie_embeddings && c.max_seq_len == 64);
    CHECK(!strcmp(c.hf_arch, "Qwen2ForCausalLM") && !strcmp(c.hf_model_type, "qwen2"));
    CHECK(c.bos_token_id == -1 && c.eos_token_id == 5);
    /* LLaMA attention_bias: q, k, v and o; mlp_bias; explicit head_dim */
    CHECK(read_config_text("{" LLAMA_BASE ", \"attention_bias\": true, \"mlp_bias\": true, \"head_dim\": 32}",
                           &c) == 0);
    CHECK(c.qkv_bias && c.o_bias && c.mlp_bias && c.head_dim == 32);
    /* Mistral: null window is fine; a short window caps the context (with a warning) */
    CHECK(
        read_config_text(
            "{\"architectures\": [\"MistralForCausalLM\"], \"model_type\": \"mistral\", \"hidden_size\": 64,"
            "\"intermediate_size\": 96, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
            "\"vocab_size\": 256, \"sliding_window\": null, \"max_position_embeddings\": 512}",
            &c) == 0);
    CHECK(c.max_seq_len == 512 && !strcmp(c.hf_arch, "MistralForCausalLM") && c.n_kv_head == 4);
    CHECK(read_config_text("{\"architectures\": [\"MistralForCausalLM\"], \"hidden_size\": 64,"
                           "\"intermediate_size\": 96, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                           "\"vocab_size\": 256, \"sliding_window\": 128, \"max_position_embeddings\": 512}",
                           &c) == 0);
    CHECK(c.max_seq_len == 128);
}

static void test_config_errors(void)
{
    ModelConfig c;
    struct {
        const char *text, *needle;
    } cases[] = {
        {"{\"model_type\": \"gpt2\", \"n_embd\": 64, \"n_head\": 4, \"n_layer\": \"twelve\", \"vocab_size\": "
         "10}",
         "config.json: n_layer: expected an integer, got \"twelve\""},
        {"{\"model_type\": \"gpt2\", \"n_embd\": 64.5, \"n_head\": 4, \"n_layer\": 2, \"vocab_size\": 10}",
         "config.json: n_embd: expected an integer, got 64.5"},
        {"{\"model_type\": \"gpt2\", \"n_head\": 4, \"n_layer\": 2, \"vocab_size\": 10}",
         "config.json: n_embd: missing"},
        {"{\"model_type\": \"gpt2\", \"n_embd\": 64, \"n_head\": 4, \"n_layer\": 0, \"vocab_size\": 10}",
         "config.json: n_layer: 0 is out of range"},
        {"{\"model_type\": \"gpt2\", \"n_embd\": 64, \"n_head\": 5, \"n_layer\": 2, \"vocab_size\": 10}",
         "n_head"},
        {"{\"model_type\": \"gpt2\", \"n_embd\": 64, \"n_head\": 4, \"n_layer\": 2, \"vocab_size\": 10,"
         "\"activation_function\": \"relu\"}",
         "config.json: activation_function: unsupported \"relu\""},
        {"{\"model_type\": \"gpt2\", \"n_embd\": 64, \"n_head\": 4, \"n_layer\": 2, \"vocab_size\": 10,"
         "\"tie_word_embeddings\": \"yes\"}",
         "config.json: tie_word_embeddings: expected true or false"},
        {"{\"architectures\": [\"T5ForConditionalGeneration\"], \"model_type\": \"t5\"}",
         "config.json: architectures: unsupported \"T5ForConditionalGeneration\""},
        {"{\"architectures\": [\"BertForMaskedLM\"], \"model_type\": \"bert\"}", "config.json: hidden_size: missing"},
        {"{\"architectures\": [\"BertForMaskedLM\"], \"hidden_size\": 64, \"num_hidden_layers\": 2, "
         "\"num_attention_heads\": 4, \"intermediate_size\": 96, \"vocab_size\": 10, \"hidden_act\": \"relu\"}",
         "config.json: hidden_act: unsupported \"relu\""},
        {"{\"model_type\": \"t5\"}", "config.json: model_type: unsupported \"t5\""},
        {"{\"hidden_size\": 64}", "config.json: architectures: missing"},
        {"{\"architectures\": \"LlamaForCausalLM\"}", "config.json: architectures: expected a list"},
        {"{" LLAMA_BASE ", \"hidden_act\": \"gelu\"}", "config.json: hidden_act: unsupported \"gelu\""},
        {"{\"model_type\": \"llama\", \"hidden_size\": 64, \"intermediate_size\": 96, \"num_hidden_layers\": "
         "2,"
         "\"num_attention_heads\": 4, \"num_key_value_heads\": 3, \"vocab_size\": 256}",
         "config.json: model.n_kv_head: 3 does not divide n_head 4"},
        {"{" LLAMA_BASE ", \"rope_parameters\": [1]}", "config.json: rope_parameters: expected an object"},
        {"{" LLAMA_BASE ", \"eos_token_id\": \"x\"}", "config.json: eos_token_id: expected a token id"},
        {"[1, 2]", "config.json: expected a JSON object"},
        {"{\"model_type\": ", "config.json: invalid JSON"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        int rc = read_config_text(cases[i].text, &c);
        CHECKF(rc == -1 && strstr(err_get(), cases[i].needle), "case %zu: rc %d, message \"%s\", want \"%s\"",
               i, rc, err_get(), cases[i].needle);
    }
    char *d = tmp_path("no_such_model");
    CHECK(hf_read_config(d, &c) == -1 && strstr(err_get(), "no_such_model"));
    fs_mkdir_p(d);
    CHECK(hf_read_config(d, &c) == -1 && strstr(err_get(), "config.json"));
    fs_rm_rf(d);
    free(d);
}

/* ---- Hugging Face directories ---- */

/* Load a fixture's config and weights into a fresh buffer. */
static float *load_dir(const char *dir, ModelConfig *c, ParamTable *pt)
{
    if (hf_read_config(dir, c) != 0) {
        CHECKF(0, "%s", err_get());
        return NULL;
    }
    param_table_build(pt, c);
    float *buf = xmalloc(pt->total * sizeof(float));
    if (hf_read_weights(dir, c, pt, buf) != 0) {
        CHECKF(0, "%s", err_get());
        free(buf);
        param_table_free(pt);
        return NULL;
    }
    return buf;
}

/* Every tensor of a's model.safetensors (other than skipped buffers) is in b
 * with the same dtype, shape and bytes, and b has nothing else. */
static void check_same_tensors(const char *a, const char *b, int tied)
{
    StSet sa, sb;
    CHECK(st_set_open_dir(&sa, a, "model") == 0);
    CHECK(st_set_open_dir(&sb, b, "model") == 0);
    int na = 0, nb = 0, bad = 0;
    for (int f = 0; f < sa.nfiles; f++)
        for (int i = 0; i < sa.files[f].n; i++) {
            const StTensor *x = &sa.files[f].t[i];
            size_t len = strlen(x->name);
            if ((len >= 10 && !strcmp(x->name + len - 10, ".attn.bias")) || strstr(x->name, "masked_bias"))
                continue;
            if (tied && !strcmp(x->name, "lm_head.weight")) continue;
            na++;
            const StTensor *y = st_set_find(&sb, x->name, NULL);
            int same = y && y->dtype == x->dtype && y->ndim == x->ndim && x->nbytes == y->nbytes &&
                       !memcmp(x->shape, y->shape, sizeof(int64_t) * (size_t)x->ndim) &&
                       !memcmp(x->data, y->data, x->nbytes);
            if (!same) {
                bad++;
                fprintf(stderr, "  %s: differs or missing in %s\n", x->name, b);
            }
        }
    for (int f = 0; f < sb.nfiles; f++) nb += sb.files[f].n;
    CHECKF(bad == 0, "%d tensors differ", bad);
    CHECKF(na == nb && na > 0, "%d tensors in %s, %d in %s", na, a, nb, b);
    st_set_close(&sa);
    st_set_close(&sb);
}

static int same_config(const ModelConfig *a, const ModelConfig *b)
{
    return a->family == b->family && a->n_layer == b->n_layer && a->n_head == b->n_head &&
           a->n_kv_head == b->n_kv_head && a->d_model == b->d_model && a->head_dim == b->head_dim &&
           a->d_ff == b->d_ff && a->max_seq_len == b->max_seq_len && a->vocab_size == b->vocab_size &&
           a->rope_theta == b->rope_theta && a->norm_eps == b->norm_eps &&
           a->tie_embeddings == b->tie_embeddings && a->qkv_bias == b->qkv_bias && a->o_bias == b->o_bias &&
           a->mlp_bias == b->mlp_bias && a->bos_token_id == b->bos_token_id &&
           a->eos_token_id == b->eos_token_id && !strcmp(a->hf_arch, b->hf_arch) &&
           !strcmp(a->hf_model_type, b->hf_model_type) && a->rope_scale_factor == b->rope_scale_factor;
}

/* HF dir -> anvil buffer -> hf_save -> re-read: identical config, buffer and tensors. */
static void roundtrip_one(const char *name)
{
    char src[512];
    snprintf(src, sizeof(src), "%s/%s/model", test_fixtures(), name);
    ModelConfig c, c2;
    ParamTable pt, pt2;
    float *buf = load_dir(src, &c, &pt);
    if (!buf) return;
    char *out = tmp_path(name);
    CHECKF(hf_save(out, &c, &pt, buf, DTYPE_F32) == 0, "%s", err_get());
    float *buf2 = load_dir(out, &c2, &pt2);
    if (buf2) {
        CHECKF(same_config(&c, &c2), "%s: config changed in the round trip", name);
        CHECK(pt2.total == pt.total && !memcmp(buf, buf2, pt.total * sizeof(float)));
        check_same_tensors(src, out, c.tie_embeddings);
        free(buf2);
        param_table_free(&pt2);
    }
    /* saving again over it replaces the directory, leaving no temp behind */
    CHECK(hf_save(out, &c, &pt, buf, DTYPE_F32) == 0);
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", out, (long)getpid());
    CHECK(!fs_exists(tmp));

    /* bf16 output: each value is the round-to-nearest-even of the fp32 one */
    CHECK(hf_save(out, &c, &pt, buf, DTYPE_BF16) == 0);
    buf2 = load_dir(out, &c2, &pt2);
    if (buf2) {
        size_t bad = 0;
        for (size_t i = 0; i < pt.total; i++) bad += buf2[i] != st_bf16_to_f32(st_f32_to_bf16(buf[i]));
        CHECKF(bad == 0, "%s: %zu bf16 values differ", name, bad);
        free(buf2);
        param_table_free(&pt2);
    }
    fs_rm_rf(out);
    free(out);
    free(buf);
    param_table_free(&pt);
}

static void test_hf_roundtrip(void)
{
    const char *names[] = {"gpt2", "llama", "qwen2"};
    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        char p[64];
        snprintf(p, sizeof(p), "%s/model", names[i]);
        if (fixtures_present(p)) roundtrip_one(names[i]);
    }
}

/* transformers' sharded bf16 save of the qwen2 fixture: the index is followed
 * and torch's bf16 rounding equals ours. */
static void test_hf_sharded_bf16(void)
{
    if (!fixtures_present("qwen2/model_bf16_sharded") || !fixtures_present("qwen2/model")) return;
    char a[512], b[512];
    snprintf(a, sizeof(a), "%s/qwen2/model", test_fixtures());
    snprintf(b, sizeof(b), "%s/qwen2/model_bf16_sharded", test_fixtures());
    StSet s;
    CHECK(st_set_open_dir(&s, b, "model") == 0);
    CHECKF(s.nfiles > 1, "expected several shards, got %d", s.nfiles);
    st_set_close(&s);
    ModelConfig c, c2;
    ParamTable pt, pt2;
    float *x = load_dir(a, &c, &pt), *y = load_dir(b, &c2, &pt2);
    if (x && y) {
        CHECK(pt.total == pt2.total);
        size_t bad = 0;
        for (size_t i = 0; i < pt.total; i++) bad += y[i] != st_bf16_to_f32(st_f32_to_bf16(x[i]));
        CHECKF(bad == 0, "%zu values differ from torch's bf16 rounding", bad);
        param_table_free(&pt);
        param_table_free(&pt2);
    }
    free(x);
    free(y);
}

/* Copy the gpt2 fixture with every tensor renamed (optionally without the
 * "transformer." prefix), with extra buffers a checkpoint may carry. */
static char *gpt2_variant(const char *dirname, int strip_prefix, const char *drop, int64_t bad_rows)
{
    char src[512];
    snprintf(src, sizeof(src), "%s/gpt2/model", test_fixtures());
    char *dir = tmp_path(dirname);
    fs_rm_rf(dir);
    fs_mkdir_p(dir);
    char *cs = fs_join(src, "config.json"), *cd = fs_join(dir, "config.json"), *text;
    size_t n;
    if (fs_read_file(cs, &text, &n) == 0) {
        fs_write_atomic(cd, text, n);
        free(text);
    }
    StSet s;
    CHECK(st_set_open_dir(&s, src, "model") == 0);
    const StFile *f = &s.files[0];
    StWriteTensor *t = xcalloc((size_t)f->n + 4, sizeof(StWriteTensor));
    char(*names)[96] = xcalloc((size_t)f->n + 4, 96);
    int m = 0;
    static const float zeros[64 * 64 * 4];
    for (int i = 0; i < f->n; i++) {
        const StTensor *x = &f->t[i];
        if (drop && !strcmp(x->name, drop)) continue;
        const char *nm = x->name;
        if (strip_prefix && !strncmp(nm, "transformer.", 12)) nm += 12;
        snprintf(names[m], 96, "%s", nm);
        t[m] = (StWriteTensor){.name = names[m], .dtype = x->dtype, .ndim = x->ndim, .data = x->data};
        memcpy(t[m].shape, x->shape, sizeof(x->shape));
        if (bad_rows && !strcmp(x->name, "transformer.wpe.weight")) t[m].shape[0] = bad_rows;
        m++;
    }
    /* the causal-mask buffer of older checkpoints, and a head tied to wte */
    snprintf(names[m], 96, "%sh.0.attn.bias", strip_prefix ? "" : "transformer.");
    t[m] =
        (StWriteTensor){.name = names[m], .dtype = ST_F32, .ndim = 4, .shape = {1, 1, 8, 8}, .data = zeros};
    m++;
    snprintf(names[m], 96, "lm_head.weight");
    const StTensor *wte = st_find(f, "transformer.wte.weight");
    if (wte) {
        t[m] = (StWriteTensor){.name = names[m], .dtype = ST_F32, .ndim = 2, .data = zeros};
        t[m].shape[0] = 1; /* wrong on purpose: a tied head is ignored whatever it holds */
        t[m].shape[1] = 64;
        m++;
    }
    char *path = fs_join(dir, "model.safetensors");
    CHECK(st_write(path, t, m, NULL, 0) == 0);
    free(path);
    st_set_close(&s);
    free(names);
    free(t);
    free(cs);
    free(cd);
    return dir;
}

static void test_hf_gpt2_names(void)
{
    if (!fixtures_present("gpt2/model")) return;
    char src[512];
    snprintf(src, sizeof(src), "%s/gpt2/model", test_fixtures());
    ModelConfig c, c2;
    ParamTable pt, pt2;
    float *ref = load_dir(src, &c, &pt);
    if (!ref) return;
    for (int strip = 0; strip <= 1; strip++) {
        char *dir = gpt2_variant(strip ? "gpt2_plain" : "gpt2_prefixed", strip, NULL, 0);
        float *x = load_dir(dir, &c2, &pt2);
        CHECKF(x && pt2.total == pt.total && !memcmp(x, ref, pt.total * sizeof(float)), "strip %d", strip);
        if (x) param_table_free(&pt2);
        free(x);
        fs_rm_rf(dir);
        free(dir);
    }
    /* a missing tensor and a wrong shape name the tensor and the file */
    float *buf = xmalloc(pt.total * sizeof(float));
    char *dir = gpt2_variant("gpt2_missing", 1, "transformer.h.1.mlp.c_fc.weight", 0);
    CHECK(hf_read_weights(dir, &c, &pt, buf) == -1);
    CHECKF(strstr(err_get(), "model.safetensors: transformer.h.1.mlp.c_fc.weight: missing") != NULL, "%s",
           err_get());
    fs_rm_rf(dir);
    free(dir);
    dir = gpt2_variant("gpt2_shape", 0, NULL, 7);
    CHECK(hf_read_weights(dir, &c, &pt, buf) == -1);
    CHECKF(strstr(err_get(), "model.safetensors: transformer.wpe.weight: shape (7, 64), expected (32, 64)") !=
               NULL,
           "%s", err_get());
    fs_rm_rf(dir);
    free(dir);
    free(buf);
    free(ref);
    param_table_free(&pt);
}

/* Gradients by HF name: hf_export then hf_import_file give back the buffer. */
static void test_hf_export_import(void)
{
    if (!fixtures_present("llama/model")) return;
    char src[512];
    snprintf(src, sizeof(src), "%s/llama/model", test_fixtures());
    ModelConfig c;
    ParamTable pt;
    float *buf = load_dir(src, &c, &pt);
    if (!buf) return;
    HfTensor *t;
    int n;
    CHECK(hf_export(&c, &pt, buf, &t, &n) == 0);
    /* LLaMA: q/k/v and gate/up are separate HF tensors */
    int found = 0;
    for (int i = 0; i < n; i++) {
        if (!strcmp(t[i].name, "model.layers.1.self_attn.k_proj.weight"))
            found += t[i].ndim == 2 && t[i].shape[0] == 32 && t[i].shape[1] == 64;
        if (!strcmp(t[i].name, "model.layers.0.mlp.up_proj.weight"))
            found += t[i].ndim == 2 && t[i].shape[0] == 96 && t[i].shape[1] == 64;
    }
    CHECK(found == 2);
    StWriteTensor *w = xcalloc((size_t)n, sizeof(StWriteTensor));
    char(*names)[128] = xcalloc((size_t)n, 128);
    for (int i = 0; i < n; i++) {
        snprintf(names[i], 128, "exp_avg.%s", t[i].name);
        w[i] = (StWriteTensor){
            .name = names[i], .dtype = ST_F32, .ndim = t[i].ndim, .data = t[i].data, .src_f32 = 1};
        w[i].shape[0] = t[i].shape[0];
        w[i].shape[1] = t[i].shape[1];
    }
    char *p = tmp_path("moments.safetensors");
    CHECK(st_write(p, w, n, NULL, 0) == 0);
    float *back = xcalloc(pt.total, sizeof(float));
    CHECK(hf_import_file(p, "exp_avg.", &c, &pt, back) == 0);
    CHECK(!memcmp(back, buf, pt.total * sizeof(float)));
    CHECK(hf_import_file(p, "exp_avg_sq.", &c, &pt, back) == -1);
    CHECK(strstr(err_get(), "exp_avg_sq.model.embed_tokens.weight: missing") != NULL);
    free(p);
    free(back);
    free(names);
    free(w);
    hf_tensors_free(t, n);
    free(buf);
    param_table_free(&pt);
}

/* config.json that anvil writes reads back the same, for every preset. */
static void test_hf_config_write(void)
{
    const char *presets[] = {"gpt2-124m", "gpt2-tiny", "llama-1b", "llama-tiny"};
    char *d = tmp_path("cfgw");
    fs_mkdir_p(d);
    for (size_t i = 0; i < ARRAY_LEN(presets); i++) {
        ModelConfig c, c2;
        CHECK(model_preset(&c, presets[i]) == 0 && model_config_finish(&c) == 0);
        CHECKF(hf_write_config(d, &c, DTYPE_BF16) == 0, "%s", err_get());
        CHECKF(hf_read_config(d, &c2) == 0, "%s", err_get());
        CHECKF(same_config(&c, &c2), "%s", presets[i]);
    }
    /* llama3 RoPE scaling and Mistral survive too */
    ModelConfig c, c2;
    model_preset(&c, "llama-tiny");
    c.rope_theta = 500000.0f;
    c.rope_scale_factor = 32;
    c.rope_low_freq_factor = 1;
    c.rope_high_freq_factor = 4;
    c.rope_orig_max_pos = 8192;
    c.norm_eps = 1e-6f;
    model_config_finish(&c);
    CHECK(hf_write_config(d, &c, DTYPE_F32) == 0 && hf_read_config(d, &c2) == 0);
    CHECK(same_config(&c, &c2) && c2.rope_orig_max_pos == 8192 && c2.rope_high_freq_factor == 4);
    /* eps written as the shortest decimal */
    char *p = fs_join(d, "config.json"), *text;
    size_t n;
    CHECK(fs_read_file(p, &text, &n) == 0 && strstr(text, "\"rms_norm_eps\": 1e-6,") != NULL);
    free(text);
    free(p);
    model_preset(&c, "llama-tiny");
    snprintf(c.hf_arch, sizeof(c.hf_arch), "MistralForCausalLM");
    snprintf(c.hf_model_type, sizeof(c.hf_model_type), "mistral");
    model_config_finish(&c);
    CHECK(hf_write_config(d, &c, DTYPE_F32) == 0 && hf_read_config(d, &c2) == 0 && same_config(&c, &c2));
    /* a config the class cannot express is refused */
    c.qkv_bias = 1;
    CHECK(hf_write_config(d, &c, DTYPE_F32) == -1 && strstr(err_get(), "MistralForCausalLM"));
    fs_rm_rf(d);
    free(d);
}

int main(void)
{
    snprintf(tmp_root, sizeof(tmp_root), "/tmp/anvil_test_io.%ld", (long)getpid());
    fs_rm_rf(tmp_root);
    if (fs_mkdir_p(tmp_root) != 0) fatal_err();
    RUN(test_fs_basics);
    RUN(test_fs_publish);
    RUN(test_bf16_rounding);
    RUN(test_st_roundtrip);
    RUN(test_st_python_dtypes);
    RUN(test_st_sharded);
    RUN(test_st_bad_headers);
    RUN(test_st_fuzz);
    RUN(test_config_rope);
    RUN(test_config_families);
    RUN(test_config_errors);
    RUN(test_hf_roundtrip);
    RUN(test_hf_sharded_bf16);
    RUN(test_hf_gpt2_names);
    RUN(test_hf_export_import);
    RUN(test_hf_config_write);
    fs_rm_rf(tmp_root);
    return test_summary();
}
