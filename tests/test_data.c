/* test_data.c - token shards and the batch loader.
 *
 * Streams are built so that every token says where it is (token = stream
 * position, 4-byte ids), so window contents, coverage and order are checked
 * against arithmetic, not against the loader's own earlier output.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "data/loader.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "test.h"

static char tmpdir[256];

static const char *tmp_path(const char *name)
{
    static char buf[8][512];
    static int k;
    char *p = buf[k++ & 7];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    return p;
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    fwrite(p, 1, n, f);
    fclose(f);
}

static size_t file_bytes(const char *path, uint8_t **out)
{
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *out = malloc((size_t)n + 1);
    size_t k = fread(*out, 1, (size_t)n, f);
    fclose(f);
    return k;
}

/* A shard of count tokens with values base, base+1, ... (vocab 2^20 -> 4-byte ids). */
#define POS_VOCAB (1 << 20)
static void write_pos_shard(const char *path, uint32_t base, uint32_t count)
{
    uint32_t *v = malloc(count * sizeof(uint32_t));
    for (uint32_t i = 0; i < count; i++) v[i] = base + i;
    CHECK(shard_write(path, v, count, POS_VOCAB, -1, "test", NULL) == 0);
    free(v);
}

static void test_shard_roundtrip(void)
{
    /* 2-byte tokens for a small vocabulary, 4-byte for a large one */
    uint16_t a[1000];
    for (int i = 0; i < 1000; i++) a[i] = (uint16_t)((i * 7919) % 50257);
    CHECK(shard_write(tmp_path("a.tok"), a, 1000, 50257, 50256, "gpt2", NULL) == 0);
    Shard s;
    CHECK(shard_open(&s, tmp_path("a.tok")) == 0);
    CHECK(s.width == 2 && s.count == 1000 && s.vocab_size == 50257 && s.eos_id == 50256);
    CHECK(!strcmp(s.identity, "gpt2"));
    int same = 1;
    for (int i = 0; i < 1000; i++) same &= shard_token(&s, (uint64_t)i) == a[i];
    CHECK(same);
    shard_close(&s);
    /* the file is header + tokens exactly */
    uint8_t *b;
    size_t n = file_bytes(tmp_path("a.tok"), &b);
    CHECK(n == SHARD_HEADER_BYTES + 2000);
    CHECK(!memcmp(b, "ANVILTOK", 8));
    free(b);

    uint32_t c[300];
    for (int i = 0; i < 300; i++) c[i] = (uint32_t)(i * 104729u) % 128256u;
    CHECK(shard_write(tmp_path("c.tok"), c, 300, 128256, -1, "hf:0123", NULL) == 0);
    CHECK(shard_open(&s, tmp_path("c.tok")) == 0);
    CHECK(s.width == 4 && s.count == 300 && s.eos_id == -1);
    same = 1;
    for (int i = 0; i < 300; i++) same &= shard_token(&s, (uint64_t)i) == c[i];
    CHECK(same);
    shard_close(&s);
    /* no temp file is left next to it */
    CHECK(access(tmp_path(".a.tok.tmp"), F_OK) != 0);
}

static void test_shard_bad(void)
{
    uint8_t *b;
    size_t n = file_bytes(tmp_path("a.tok"), &b);
    Shard s;
    /* truncated */
    write_bytes(tmp_path("trunc.tok"), b, n - 3);
    CHECK(shard_open(&s, tmp_path("trunc.tok")) == -1);
    CHECKF(strstr(err_get(), "trunc.tok") && strstr(err_get(), "truncated"), "%s", err_get());
    /* truncated inside the header */
    write_bytes(tmp_path("trunc2.tok"), b, 100);
    CHECK(shard_open(&s, tmp_path("trunc2.tok")) == -1);
    CHECKF(strstr(err_get(), "truncated"), "%s", err_get());
    /* a flipped header byte (token count) */
    b[25] ^= 1;
    write_bytes(tmp_path("corrupt.tok"), b, n);
    CHECK(shard_open(&s, tmp_path("corrupt.tok")) == -1);
    CHECKF(strstr(err_get(), "corrupt.tok") && strstr(err_get(), "corrupt header"), "%s", err_get());
    b[25] ^= 1;
    /* bad magic */
    b[0] = 'X';
    write_bytes(tmp_path("magic.tok"), b, n);
    CHECK(shard_open(&s, tmp_path("magic.tok")) == -1);
    CHECKF(strstr(err_get(), "not a token shard"), "%s", err_get());
    /* empty file */
    write_bytes(tmp_path("empty.tok"), b, 0);
    CHECK(shard_open(&s, tmp_path("empty.tok")) == -1);
    free(b);
    /* the loader reports the same, naming the shard */
    LoaderOptions o = {.B = 1, .T = 4, .world = 1};
    CHECK(loader_open(tmp_path("trunc.tok"), &o) == NULL);
    CHECKF(strstr(err_get(), "trunc.tok"), "%s", err_get());
    CHECK(loader_open(tmp_path("nonexistent.bin"), &o) == NULL);
    CHECKF(strstr(err_get(), "nonexistent.bin"), "%s", err_get());
}

/* llm.c's format, written here from its definition (not with shard_write). */
static void test_llmc_shard(void)
{
    int32_t header[256] = {0};
    header[0] = 20240520;
    header[1] = 1;
    header[2] = 5000;
    uint16_t tok[5000];
    for (int i = 0; i < 5000; i++) tok[i] = (uint16_t)(i % 50257);
    FILE *f = fopen(tmp_path("llmc_000.bin"), "wb");
    fwrite(header, 4, 256, f);
    fwrite(tok, 2, 5000, f);
    fclose(f);
    LoaderOptions o = {.B = 2, .T = 64, .world = 1, .shuffle = 0};
    DataLoader *dl = loader_open(tmp_path("llmc_000.bin"), &o);
    CHECKF(dl != NULL, "%s", err_get());
    if (!dl) return;
    CHECK(loader_num_tokens(dl) == 5000);
    CHECK(loader_windows_per_epoch(dl) == (5000 - 1) / 64);
    CHECK(loader_vocab_size(dl) == 50257);
    int32_t in[128], tg[128];
    CHECK(loader_next(dl, in, tg) == 0);
    int ok = 1;
    for (int b = 0; b < 2; b++)
        for (int t = 0; t < 64; t++) ok &= in[b * 64 + t] == b * 64 + t && tg[b * 64 + t] == b * 64 + t + 1;
    CHECK(ok);
    loader_close(dl);
    /* truncated llm.c shard */
    f = fopen(tmp_path("llmc_bad.bin"), "wb");
    fwrite(header, 4, 256, f);
    fwrite(tok, 2, 4000, f);
    fclose(f);
    CHECK(loader_open(tmp_path("llmc_bad.bin"), &o) == NULL);
    CHECKF(strstr(err_get(), "llmc_bad.bin") && strstr(err_get(), "truncated"), "%s", err_get());
}

/* Three shards of 1000, 1, 2000 tokens: one position-stream of 3001 tokens. */
static const char *make_pos_dir(void)
{
    static char dir[512];
    snprintf(dir, sizeof(dir), "%s/pos", tmpdir);
    mkdir(dir, 0755);
    char p[600];
    snprintf(p, sizeof(p), "%s/s_000.tok", dir);
    write_pos_shard(p, 0, 1000);
    snprintf(p, sizeof(p), "%s/s_001.tok", dir);
    write_pos_shard(p, 1000, 1);
    snprintf(p, sizeof(p), "%s/s_002.tok", dir);
    write_pos_shard(p, 1001, 2000);
    return dir;
}

static void test_loader_windows(void)
{
    const char *dir = make_pos_dir();
    enum { T = 16, B = 4 };
    LoaderOptions o = {.B = B, .T = T, .seed = 7, .shuffle = 1, .world = 1};
    DataLoader *dl = loader_open(dir, &o);
    CHECKF(dl != NULL, "%s", err_get());
    if (!dl) return;
    uint64_t W = (3001 - 1) / T;
    CHECK(loader_num_tokens(dl) == 3001);
    CHECK(loader_windows_per_epoch(dl) == W);
    CHECK(loader_vocab_size(dl) == POS_VOCAB);
    /* one epoch: every window exactly once, contents = stream positions */
    uint8_t *seen = calloc(W, 1);
    int32_t in[B * T], tg[B * T];
    int contents_ok = 1, once = 1, in_order = 1;
    uint64_t batches = (W + B - 1) / B, got = 0;
    for (uint64_t i = 0; i < batches; i++) {
        CHECK(loader_next(dl, in, tg) == 0);
        for (int b = 0; b < B && got < W; b++, got++) {
            int32_t s = in[b * T];
            contents_ok &= s % T == 0;
            for (int t = 0; t < T; t++) contents_ok &= in[b * T + t] == s + t && tg[b * T + t] == s + t + 1;
            uint64_t k = (uint64_t)s / T;
            once &= k < W && !seen[k];
            if (k < W) seen[k] = 1;
            in_order &= k == got;
        }
    }
    CHECK(contents_ok);
    CHECK(once);
    CHECK(!in_order); /* shuffled */
    free(seen);
    loader_close(dl);
}

/* Collect the window index sequence of n windows (B = 1). */
static void window_seq(DataLoader *dl, int T, uint64_t *out, size_t n)
{
    int32_t in[64], tg[64];
    for (size_t i = 0; i < n; i++) {
        loader_next(dl, in, tg);
        out[i] = (uint64_t)in[0] / (uint64_t)T;
    }
}

static void test_loader_determinism(void)
{
    const char *dir = make_pos_dir();
    enum { T = 16 };
    LoaderOptions o = {.B = 1, .T = T, .seed = 42, .shuffle = 1, .world = 1};
    size_t n = 400; /* more than two epochs of 187 windows */
    uint64_t *a = malloc(n * 8), *b = malloc(n * 8), *c = malloc(n * 8);
    DataLoader *x = loader_open(dir, &o), *y = loader_open(dir, &o);
    o.seed = 43;
    DataLoader *z = loader_open(dir, &o);
    if (!x || !y || !z) {
        CHECKF(0, "%s", err_get());
        return;
    }
    window_seq(x, T, a, n);
    window_seq(y, T, b, n);
    window_seq(z, T, c, n);
    CHECK(!memcmp(a, b, n * 8));
    CHECK(memcmp(a, c, n * 8) != 0);
    /* epochs differ in order */
    uint64_t W = loader_windows_per_epoch(x);
    CHECK(memcmp(a, a + W, W * 8) != 0);
    CHECK(loader_state(x).epoch == 2 && loader_state(x).pos == n - 2 * W);
    loader_close(x);
    loader_close(y);
    loader_close(z);
    free(a);
    free(b);
    free(c);
}

static void test_loader_resume(void)
{
    const char *dir = make_pos_dir();
    enum { T = 8, B = 5 };
    LoaderOptions o = {.B = B, .T = T, .seed = 3, .shuffle = 1, .world = 1};
    DataLoader *a = loader_open(dir, &o);
    if (!a) {
        CHECKF(0, "%s", err_get());
        return;
    }
    int32_t in[B * T], tg[B * T], in2[B * T], tg2[B * T];
    /* stop at several points, including right before and across an epoch end (375 windows) */
    int stops[] = {1, 74, 75, 76, 150};
    int step = 0, ok = 1;
    for (size_t k = 0; k < ARRAY_LEN(stops); k++) {
        while (step < stops[k]) {
            loader_next(a, in, tg);
            step++;
        }
        LoaderState st = loader_state(a);
        DataLoader *b = loader_open(dir, &o);
        CHECK(loader_set_state(b, st) == 0);
        loader_next(a, in, tg);
        step++;
        loader_next(b, in2, tg2);
        ok &= !memcmp(in, in2, sizeof(in)) && !memcmp(tg, tg2, sizeof(tg));
        loader_close(b);
    }
    CHECK(ok);
    LoaderState bad = {0, 1000000};
    CHECK(loader_set_state(a, bad) == -1);
    loader_close(a);
}

static void test_loader_ranks(void)
{
    const char *dir = make_pos_dir();
    enum { T = 16, WORLD = 3 };
    uint64_t W = (3001 - 1) / T, per = W / WORLD;
    for (int shuffle = 0; shuffle < 2; shuffle++) {
        uint8_t *seen = calloc(W, 1);
        int once = 1;
        for (int r = 0; r < WORLD; r++) {
            LoaderOptions o = {.B = 1, .T = T, .seed = 11, .shuffle = shuffle, .rank = r, .world = WORLD};
            DataLoader *dl = loader_open(dir, &o);
            if (!dl) {
                CHECKF(0, "%s", err_get());
                return;
            }
            CHECK(loader_windows_per_epoch(dl) == per);
            uint64_t *seq = malloc(per * 8);
            window_seq(dl, T, seq, per);
            for (uint64_t i = 0; i < per; i++) {
                once &= !seen[seq[i]];
                seen[seq[i]] = 1;
                if (!shuffle) once &= seq[i] == i * WORLD + (uint64_t)r; /* validation order: strided */
            }
            free(seq);
            loader_close(dl);
        }
        uint64_t covered = 0;
        for (uint64_t i = 0; i < W; i++) covered += seen[i];
        CHECK(once);
        CHECK(covered == per * WORLD);
        free(seen);
    }
}

static void test_loader_validation_order(void)
{
    const char *dir = make_pos_dir();
    enum { T = 32 };
    LoaderOptions o = {.B = 2, .T = T, .seed = 5, .shuffle = 0, .world = 1};
    DataLoader *dl = loader_open(dir, &o);
    if (!dl) {
        CHECKF(0, "%s", err_get());
        return;
    }
    int32_t in[2 * T], tg[2 * T];
    int ok = 1;
    for (int i = 0; i < 10; i++) {
        loader_next(dl, in, tg);
        ok &= in[0] == 2 * i * T && in[T] == (2 * i + 1) * T;
    }
    loader_reset(dl);
    loader_next(dl, in, tg);
    ok &= in[0] == 0 && in[T] == T && tg[T - 1] == T;
    CHECK(ok);
    loader_close(dl);
}

static void test_loader_specs(void)
{
    const char *dir = make_pos_dir();
    char g[600];
    snprintf(g, sizeof(g), "%s/s_00[02].tok", dir); /* a glob: shards 0 and 2 */
    LoaderOptions o = {.B = 1, .T = 10, .world = 1};
    DataLoader *dl = loader_open(g, &o);
    CHECKF(dl != NULL, "%s", err_get());
    if (dl) {
        CHECK(loader_num_tokens(dl) == 3000);
        loader_close(dl);
    }
    snprintf(g, sizeof(g), "%s/nomatch_*.tok", dir);
    CHECK(loader_open(g, &o) == NULL);
    CHECKF(strstr(err_get(), "no files match"), "%s", err_get());
    /* a directory without shards */
    CHECK(loader_open(tmpdir, &o) == NULL || 1); /* tmpdir has .tok files: ok either way */
    char empty[600];
    snprintf(empty, sizeof(empty), "%s/emptydir", tmpdir);
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "mkdir -p %s/train", empty);
    CHECK(system(cmd) == 0);
    CHECK(loader_open(empty, &o) == NULL);
    CHECKF(strstr(err_get(), "no shards") && strstr(err_get(), "DIR/train"), "%s", err_get());
    /* too few tokens for the window */
    o.T = 5000;
    CHECK(loader_open(dir, &o) == NULL);
    CHECKF(strstr(err_get(), "too few"), "%s", err_get());
    /* bad options */
    o.T = 10;
    o.rank = 2;
    o.world = 2;
    CHECK(loader_open(dir, &o) == NULL);
}

static void test_loader_bad_token(void)
{
    /* header says vocab 100; a token of 150 inside is reported with the shard's name */
    uint16_t v[64];
    for (int i = 0; i < 64; i++) v[i] = (uint16_t)(i == 40 ? 150 : i);
    CHECK(shard_write(tmp_path("badtok.tok"), v, 64, 100, -1, "test", NULL) == 0);
    LoaderOptions o = {.B = 1, .T = 8, .world = 1};
    DataLoader *dl = loader_open(tmp_path("badtok.tok"), &o);
    CHECKF(dl != NULL, "%s", err_get());
    if (!dl) return;
    int32_t in[8], tg[8];
    int rc = 0;
    for (int i = 0; i < 7 && !rc; i++) rc = loader_next(dl, in, tg);
    CHECK(rc == -1);
    CHECKF(strstr(err_get(), "badtok.tok") && strstr(err_get(), "150"), "%s", err_get());
    loader_close(dl);
}

static void test_loader_tokenizer_mismatch(void)
{
    uint16_t v[64] = {0};
    CHECK(shard_write(tmp_path("g.tok"), v, 64, 50257, 50256, "gpt2", NULL) == 0);
    LoaderOptions o = {.B = 1, .T = 8, .world = 1, .tokenizer = "byte"};
    CHECK(loader_open(tmp_path("g.tok"), &o) == NULL);
    CHECKF(strstr(err_get(), "g.tok") && strstr(err_get(), "gpt2") && strstr(err_get(), "byte"), "%s",
           err_get());
    o.tokenizer = "gpt2";
    DataLoader *dl = loader_open(tmp_path("g.tok"), &o);
    CHECKF(dl != NULL, "%s", err_get());
    loader_close(dl);
}

/* A .txt source with the byte tokenizer: ids are the bytes (independent reference). */
static void test_loader_text_byte(void)
{
    const char *text = "hello, loader! \xc3\xa9t\xc3\xa9\n";
    write_bytes(tmp_path("t.txt"), text, strlen(text));
    LoaderOptions o = {.B = 1, .T = 4, .world = 1, .tokenizer = "byte"};
    DataLoader *dl = loader_open(tmp_path("t.txt"), &o);
    CHECKF(dl != NULL, "%s", err_get());
    if (!dl) return;
    CHECK(loader_num_tokens(dl) == strlen(text));
    CHECK(loader_vocab_size(dl) == 257);
    int32_t in[4], tg[4];
    int ok = 1;
    for (int w = 0; w < 3; w++) {
        loader_next(dl, in, tg);
        for (int t = 0; t < 4; t++)
            ok &= in[t] == (uint8_t)text[w * 4 + t] && tg[t] == (uint8_t)text[w * 4 + t + 1];
    }
    CHECK(ok);
    loader_close(dl);
    /* invalid UTF-8: the error names the file and the byte offset */
    write_bytes(tmp_path("bad.txt"), "abc\xff\xfe", 5);
    CHECK(loader_open(tmp_path("bad.txt"), &o) == NULL);
    CHECKF(strstr(err_get(), "bad.txt") && strstr(err_get(), "byte offset 3"), "%s", err_get());
    /* no tokenizer */
    o.tokenizer = NULL;
    CHECK(loader_open(tmp_path("t.txt"), &o) == NULL);
    CHECKF(strstr(err_get(), "tokenizer"), "%s", err_get());
}

/* A .txt source with GPT-2: the reference ids of ../shared/data. */
static void test_loader_text_gpt2(void)
{
    char txt[512], ref[512];
    snprintf(txt, sizeof(txt), "%s/gpt2/sample.txt", test_shared_data());
    snprintf(ref, sizeof(ref), "%s/gpt2/sample.gpt2.u32", test_shared_data());
    uint8_t *r;
    size_t rn = file_bytes(ref, &r);
    if (!rn) {
        fprintf(stderr, "skip test_loader_text_gpt2: %s absent\n", ref);
        return;
    }
    size_t n = rn / 4;
    enum { T = 1024, B = 4 };
    LoaderOptions o = {.B = B, .T = T, .world = 1, .shuffle = 0, .tokenizer = "gpt2"};
    DataLoader *dl = loader_open(txt, &o);
    CHECKF(dl != NULL, "%s", err_get());
    if (!dl) {
        free(r);
        return;
    }
    CHECK(loader_num_tokens(dl) == n);
    CHECK(loader_vocab_size(dl) == 50257);
    static int32_t in[B * T], tg[B * T];
    int ok = 1;
    for (int i = 0; i < 3; i++) {
        loader_next(dl, in, tg);
        for (int k = 0; k < B * T; k++) {
            size_t pos = (size_t)i * B * T + (size_t)k;
            uint32_t want;
            memcpy(&want, r + 4 * pos, 4);
            uint32_t want_t;
            memcpy(&want_t, r + 4 * (pos + 1), 4);
            ok &= (uint32_t)in[k] == want && (uint32_t)tg[k] == want_t;
        }
    }
    CHECK(ok);
    loader_close(dl);
    free(r);
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/anvil_test_data_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_shard_roundtrip);
    RUN(test_shard_bad);
    RUN(test_llmc_shard);
    RUN(test_loader_windows);
    RUN(test_loader_determinism);
    RUN(test_loader_resume);
    RUN(test_loader_ranks);
    RUN(test_loader_validation_order);
    RUN(test_loader_specs);
    RUN(test_loader_bad_token);
    RUN(test_loader_tokenizer_mismatch);
    RUN(test_loader_text_byte);
    RUN(test_loader_text_gpt2);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_summary();
}
