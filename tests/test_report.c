/* test_report.c - src/report: TensorBoard event files, metrics.jsonl, plots, cost arithmetic.
 *
 * References that do not come from our code:
 *   - CRC-32C check values of RFC 3720 (iSCSI), appendix B.4, and the common "123456789" one;
 *   - tests/fixtures/tb/: an event file written by TensorBoard's own RecordWriter and the
 *     protobuf library, and what TensorBoard's EventAccumulator reads from it
 *     (tools/make_tb_fixture.py): our writer must give the same bytes, our reader the same values;
 *   - cost arithmetic worked by hand in the comments. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "io/fsutil.h"
#include "report/metrics.h"
#include "report/tb.h"
#include "test.h"

static char tmpdir[256];

static char *tmp_path(const char *name)
{
    return fs_join(tmpdir, name);
}

static int write_text(const char *path, const char *s)
{
    return fs_write_atomic(path, s, strlen(s));
}

/* ---- CRC-32C ---- */

static void test_crc32c_vectors(void)
{
    unsigned char b[32];
    memset(b, 0, sizeof(b));
    CHECKF(tb_crc32c(b, 32) == 0x8a9136aau, "%08x", tb_crc32c(b, 32)); /* RFC 3720 B.4: 32 zeros */
    memset(b, 0xff, sizeof(b));
    CHECKF(tb_crc32c(b, 32) == 0x62a8ab43u, "%08x", tb_crc32c(b, 32)); /* 32 bytes of 0xff */
    for (int i = 0; i < 32; i++) b[i] = (unsigned char)i;
    CHECKF(tb_crc32c(b, 32) == 0x46dd794eu, "%08x", tb_crc32c(b, 32)); /* 0x00..0x1f */
    for (int i = 0; i < 32; i++) b[i] = (unsigned char)(31 - i);
    CHECKF(tb_crc32c(b, 32) == 0x113fdb5cu, "%08x", tb_crc32c(b, 32)); /* 0x1f..0x00 */
    CHECK(tb_crc32c("123456789", 9) == 0xe3069283u);
    CHECK(tb_crc32c("", 0) == 0);
    /* the mask: rotate right by 15, add 0xa282ead8 */
    uint32_t c = tb_crc32c("123456789", 9);
    CHECK(tb_masked_crc("123456789", 9) == ((c >> 15 | c << 17) + 0xa282ead8u));
}

/* ---- the golden file written by TensorBoard's code ---- */

typedef struct {
    char kind[16], tag[128];
    long long step;
    double wall, value;
} GoldenRow;

/* Split a TSV file into rows of up to max_cols fields (modifies buf). */
static int split_tsv(char *buf, char ***rows_out, int max_cols)
{
    int nrow = 0, cap = 0;
    char **cells = NULL;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        if (nrow == cap) cells = xrealloc(cells, (size_t)(cap = cap ? 2 * cap : 32) * max_cols * sizeof(char *));
        int c = 0;
        char *p = line;
        while (c < max_cols) {
            cells[nrow * max_cols + c++] = p;
            char *t = strchr(p, '\t');
            if (!t) break;
            *t = 0;
            p = t + 1;
        }
        while (c < max_cols) cells[nrow * max_cols + c++] = "";
        nrow++;
    }
    *rows_out = cells;
    return nrow;
}

static int golden_present(void)
{
    char *p = fs_join(test_fixtures(), "tb/golden.tsv");
    int ok = fs_exists(p);
    free(p);
    if (!ok) fprintf(stderr, "skip: tests/fixtures/tb not found (tools/make_tb_fixture.py makes it)\n");
    return ok;
}

static void test_writer_matches_tensorboard_bytes(void)
{
    if (!golden_present()) return;
    char *tsv_path = fs_join(test_fixtures(), "tb/golden.tsv");
    char *golden_path = fs_join(test_fixtures(), "tb/events.out.tfevents.golden");
    char *tsv, *golden;
    size_t ntsv, ngolden;
    CHECK(fs_read_file(tsv_path, &tsv, &ntsv) == 0);
    CHECK(fs_read_file(golden_path, &golden, &ngolden) == 0);
    char **cells;
    int n = split_tsv(tsv, &cells, 5);
    CHECK(n > 3 && !strcmp(cells[0], "version"));
    TbOptions o = {.offline = 1, .file_name = "events.out.tfevents.ours", .start_wall_time = strtod(cells[2], NULL)};
    TbWriter *w = tb_open(tmpdir, &o);
    CHECKF(w != NULL, "%s", err_get());
    for (int i = 1; i < n && w; i++) {
        char **r = cells + i * 5;
        long long step = strtoll(r[1], NULL, 10);
        double wall = strtod(r[2], NULL);
        if (!strcmp(r[0], "scalar")) CHECK(tb_scalar(w, r[3], step, strtod(r[4], NULL), wall) == 0);
        else if (!strcmp(r[0], "start")) CHECK(tb_restart(w, step, wall) == 0);
        else CHECKF(0, "unknown kind %s", r[0]);
    }
    char *ours_path = tmp_path("events.out.tfevents.ours");
    CHECK(tb_close(w) == 0);
    char *ours;
    size_t nours;
    CHECK(fs_read_file(ours_path, &ours, &nours) == 0);
    CHECKF(nours == ngolden && !memcmp(ours, golden, ngolden), "ours %zu bytes, tensorboard's %zu", nours, ngolden);
    if (nours == ngolden)
        for (size_t i = 0; i < ngolden; i++)
            if (ours[i] != golden[i]) {
                fprintf(stderr, "  first difference at byte %zu\n", i);
                break;
            }
    /* no temporary file left behind */
    char tmpname[64];
    snprintf(tmpname, sizeof(tmpname), ".anvil-events.tmp.%d", (int)getpid());
    char *tmpf = tmp_path(tmpname);
    CHECK(!fs_exists(tmpf));
    free(tmpf);
    remove(ours_path);
    free(ours_path), free(ours), free(cells), free(tsv), free(golden), free(tsv_path), free(golden_path);
}

static int cmp_scalar(const void *a, const void *b)
{
    const TbScalar *x = a, *y = b;
    int c = strcmp(x->tag, y->tag);
    return c ? c : (x->step > y->step) - (x->step < y->step);
}

static void test_reader_matches_event_accumulator(void)
{
    if (!golden_present()) return;
    char *golden_path = fs_join(test_fixtures(), "tb/events.out.tfevents.golden");
    char *exp_path = fs_join(test_fixtures(), "tb/expected.tsv");
    TbEvents ev = {0};
    CHECKF(tb_read_file(golden_path, &ev, NULL) == 0, "%s", err_get());
    qsort(ev.v, ev.n, sizeof(TbScalar), cmp_scalar);
    char *buf;
    size_t nb;
    CHECK(fs_read_file(exp_path, &buf, &nb) == 0);
    char **cells;
    int n = split_tsv(buf, &cells, 5);
    CHECKF((size_t)n == ev.n, "expected %d scalars, read %zu", n, ev.n);
    CHECK(ev.n_purged == 3); /* the START at step 3 drops steps 3 and 4 of the first pass */
    for (int i = 0; i < n && (size_t)i < ev.n; i++) {
        char **r = cells + i * 5;
        const TbScalar *s = &ev.v[i];
        uint32_t bits;
        memcpy(&bits, &s->value, 4);
        CHECKF(!strcmp(s->tag, r[0]) && s->step == strtoll(r[1], NULL, 10) && s->wall_time == strtod(r[2], NULL) &&
                   bits == (uint32_t)strtoul(r[4], NULL, 16),
               "row %d: ours %s %lld %.17g %08x, tensorboard's %s %s %s %s", i, s->tag, (long long)s->step,
               s->wall_time, bits, r[0], r[1], r[2], r[4]);
    }
    tb_events_free(&ev);
    free(cells), free(buf), free(golden_path), free(exp_path);
}

/* ---- live writing, restart, damage ---- */

static void test_live_writer_flushes(void)
{
    char *dir = tmp_path("live");
    TbOptions o = {.flush_s = 0.1};
    TbWriter *w = tb_open(dir, &o);
    CHECKF(w != NULL, "%s", err_get());
    if (!w) return;
    CHECK(strstr(tb_path(w), "/events.out.tfevents.") != NULL);
    CHECK(tb_scalar(w, "train/loss", 1, 3.5, 0) == 0);
    usleep(400 * 1000); /* four flush periods: the flush thread must have pushed the record */
    TbEvents ev = {0};
    CHECKF(tb_read_file(tb_path(w), &ev, NULL) == 0, "%s", err_get());
    CHECK(ev.n == 1 && ev.n && !strcmp(ev.v[0].tag, "train/loss") && ev.v[0].value == 3.5f && ev.v[0].step == 1);
    tb_events_free(&ev);
    CHECK(tb_close(w) == 0);
    fs_rm_rf(dir);
    free(dir);
}

static void test_resume_purges(void)
{
    char *dir = tmp_path("resume");
    TbWriter *w = tb_open(dir, &(TbOptions){.start_wall_time = 1000});
    for (int s = 1; s <= 5; s++) CHECK(tb_scalar(w, "train/loss", s, 10 - s, 1000 + s) == 0);
    CHECK(tb_close(w) == 0);
    /* resumed from a checkpoint at step 3: steps 4 and 5 are rewritten with new values */
    w = tb_open(dir, &(TbOptions){.start_wall_time = 2000, .resume_step = 3});
    for (int s = 4; s <= 6; s++) CHECK(tb_scalar(w, "train/loss", s, 100 + s, 2000 + s) == 0);
    CHECK(tb_close(w) == 0);
    TbEvents ev = {0};
    CHECKF(tb_read_dir(dir, &ev) == 0, "%s", err_get());
    CHECK(ev.n_files == 2 && ev.n_purged == 2 && ev.n == 6);
    for (size_t i = 0; i < ev.n && ev.n == 6; i++) {
        int s = (int)i + 1;
        CHECKF(ev.v[i].step == s && ev.v[i].value == (s <= 3 ? 10 - s : 100 + s), "%zu: step %lld value %g", i,
               (long long)ev.v[i].step, ev.v[i].value);
    }
    tb_events_free(&ev);
    fs_rm_rf(dir);
    free(dir);
}

static void test_damaged_files(void)
{
    char *dir = tmp_path("damage");
    TbWriter *w = tb_open(dir, &(TbOptions){.offline = 1, .file_name = "events.out.tfevents.x"});
    CHECK(tb_scalar(w, "train/loss", 1, 2.0, 5) == 0);
    CHECK(tb_close(w) == 0);
    char *path = fs_join(dir, "events.out.tfevents.x");
    char *buf;
    size_t n;
    CHECK(fs_read_file(path, &buf, &n) == 0);
    TbEvents ev = {0};
    /* a flipped byte inside the last record's data */
    buf[n - 6] ^= 0x40;
    fs_write_atomic(path, buf, n);
    CHECK(tb_read_file(path, &ev, NULL) == -1 && strstr(err_get(), "data checksum mismatch") &&
          strstr(err_get(), "events.out.tfevents.x"));
    tb_events_free(&ev);
    buf[n - 6] ^= 0x40;
    /* cut short: the last record lacks its final checksum */
    fs_write_atomic(path, buf, n - 2);
    CHECK(tb_read_file(path, &ev, NULL) == -1 && strstr(err_get(), "truncated"));
    tb_events_free(&ev);
    /* a reader that tolerates a growing file keeps the complete records */
    size_t tail = 0;
    CHECK(tb_read_file(path, &ev, &tail) == 0 && ev.n == 0 && tail > 0);
    tb_events_free(&ev);
    fs_write_atomic(path, "", 0);
    CHECK(tb_read_file(path, &ev, NULL) == -1 && strstr(err_get(), "empty"));
    tb_events_free(&ev);
    free(buf), free(path);
    fs_rm_rf(dir);
    free(dir);
}

static void test_tag_for_key(void)
{
    char t[64];
    static const char *pairs[][2] = {{"loss", "train/loss"},          {"lr", "train/lr"},
                                     {"grad_norm", "train/grad_norm"}, {"tokens_per_s", "train/tokens_per_s"},
                                     {"mfu", "train/mfu"},             {"peak_mem_gib", "train/peak_mem_gib"},
                                     {"val_loss", "val/loss"},         {"aux_loss", "moe/aux_loss"},
                                     {"z_loss", "moe/z_loss"},         {"mcq_acc", "mcq/acc"},
                                     {"mcq_acc_norm", "mcq/acc_norm"}, {"something", "train/something"}};
    for (size_t i = 0; i < ARRAY_LEN(pairs); i++)
        CHECKF(tb_tag_for_key(pairs[i][0], t, sizeof(t)) == 0 && !strcmp(t, pairs[i][1]), "%s -> %s", pairs[i][0], t);
    CHECK(tb_tag_for_key("step", t, sizeof(t)) == -1);
    CHECK(tb_tag_for_key("wall_time", t, sizeof(t)) == -1);
    CHECK(tb_tag_for_key("mcq_task", t, sizeof(t)) == -1);
}

/* An MoE line through tb_log_metrics_json: every scalar and every expert share comes back. */
static void test_metrics_line_to_events(void)
{
    const char *line = "{\"step\": 7, \"loss\": 4.25, \"lr\": 3e-4, \"aux_loss\": 0.0125, \"mcq_task\": \"piqa\", "
                       "\"mcq_acc\": 0.5, \"expert_load\": [[0.5, 0.25, 0.125, 0.125], [0.25, 0.25, 0.25, 0.25]], "
                       "\"wall_time\": 1234.5, \"tokens_seen\": 3584}";
    char *dir = tmp_path("moe");
    TbWriter *w = tb_open(dir, &(TbOptions){.offline = 1, .file_name = "events.out.tfevents.m"});
    CHECKF(tb_log_metrics_json(w, line, strlen(line), 99) == 0, "%s", err_get());
    CHECK(tb_close(w) == 0);
    TbEvents ev = {0};
    CHECKF(tb_read_dir(dir, &ev) == 0, "%s", err_get());
    static const struct {
        const char *tag;
        float v;
    } want[] = {{"train/loss", 4.25f},
                {"train/lr", 3e-4f},
                {"moe/aux_loss", 0.0125f},
                {"mcq/acc", 0.5f},
                {"train/tokens_seen", 3584},
                {"moe/expert_load/layer0/expert0", 0.5f},
                {"moe/expert_load/layer0/expert3", 0.125f},
                {"moe/expert_load/layer1/expert2", 0.25f},
                {"moe/load_imbalance/layer0", 2.0f}, /* max 0.5 / mean 0.25 */
                {"moe/load_imbalance/layer1", 1.0f}};
    for (size_t k = 0; k < ARRAY_LEN(want); k++) {
        int found = 0;
        for (size_t i = 0; i < ev.n; i++)
            if (!strcmp(ev.v[i].tag, want[k].tag)) {
                found = 1;
                CHECKF(ev.v[i].value == want[k].v && ev.v[i].step == 7 && ev.v[i].wall_time == 1234.5, "%s: %g",
                       want[k].tag, ev.v[i].value);
            }
        CHECKF(found, "%s missing", want[k].tag);
    }
    CHECK(ev.n == 5 + 8 + 2); /* 5 scalars, 2x4 shares, 2 imbalances */
    tb_events_free(&ev);
    /* a bad line names the field */
    w = tb_open(dir, &(TbOptions){.offline = 1, .file_name = "events.out.tfevents.bad"});
    const char *bad = "{\"step\": 2, \"expert_load\": [[0.5, 0.5], [1.0]]}";
    CHECK(tb_log_metrics_json(w, bad, strlen(bad), 0) == -1 && strstr(err_get(), "layer 1 has 1 experts"));
    tb_close(w);
    fs_rm_rf(dir);
    free(dir);
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/anvil_test_report.%d", (int)getpid());
    fs_mkdir_p(tmpdir);
    RUN(test_crc32c_vectors);
    RUN(test_writer_matches_tensorboard_bytes);
    RUN(test_reader_matches_event_accumulator);
    RUN(test_live_writer_flushes);
    RUN(test_resume_purges);
    RUN(test_damaged_files);
    RUN(test_tag_for_key);
    RUN(test_metrics_line_to_events);
    fs_rm_rf(tmpdir);
    return test_summary();
}
