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
#include "report/cost.h"
#include "report/metrics.h"
#include "report/report.h"
#include "report/tb.h"
#include "report/tbrun.h"
#include "test.h"

/* The figure size plot.h promises, restated: a test of the files, not of the constant. */
#define PLOT_W_TEST 720
#define PLOT_H_TEST 405

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
    /* no tb_flush here: the flush thread must push the record within a few periods (polled for
     * up to 10 s, so that a loaded machine does not fail the test) */
    TbEvents ev = {0};
    for (int tries = 0; tries < 100; tries++) {
        usleep(100 * 1000);
        tb_events_free(&ev);
        size_t tail;
        if (tb_read_file(tb_path(w), &ev, &tail) == 0 && ev.n == 1) break;
    }
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


/* ---- run summaries, figures, conversion (on the synthetic MoE run of tools/make_moe_fixture.py) ---- */

static char *moe_fixture(void)
{
    char *p = fs_join(test_fixtures(), "report/moe-run");
    if (!fs_is_dir(p)) {
        fprintf(stderr, "skip: %s not found (tools/make_moe_fixture.py makes it)\n", p);
        free(p);
        return NULL;
    }
    return p;
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void test_summary_of_moe_fixture(void)
{
    char *dir = moe_fixture();
    if (!dir) return;
    RunMetrics r;
    CHECKF(metrics_load_run(dir, &r) == 0, "%s", err_get());
    RunSummary s;
    report_summarize(&r, &s);
    /* the fixture's formulas (tools/make_moe_fixture.py), evaluated here independently */
    CHECK(s.steps == 40 && s.tokens == 40 * 4096.0 && s.moe == 1);
    CHECK_CLOSE(s.final_loss, 6.0 + 4.5 * exp(-40.0 / 12), 1e-6);
    CHECK_CLOSE(s.final_val, 6.0 + 4.5 * exp(-40.0 / 12) + 0.3, 1e-6);
    CHECK(s.best_val_step == 40);
    CHECK_CLOSE(s.train_s, 40 * 0.01638, 1e-9);
    CHECK_CLOSE(s.wall_s, 0.02 * 39 + 0.01638, 1e-6); /* last - first wall_time + the first step */
    CHECK_CLOSE(s.peak_mem_gib, 30.9, 1e-9);
    double tps[40];
    for (int k = 1; k <= 40; k++) tps[k - 1] = round((250000.0 + 1000 * sin(k)) * 10) / 10;
    qsort(tps, 40, sizeof(double), cmp_dbl);
    CHECK_CLOSE(s.tokens_per_s, 0.5 * (tps[19] + tps[20]), 1e-9);
    CHECK(r.lines[0].n_layer == 3 && r.lines[0].n_expert == 4);
    char buf[32];
    CHECK(metrics_config_value(&r, "train.lr", buf, sizeof(buf)) == -1); /* the fixture has no config.yaml */
    metrics_run_free(&r);
    free(dir);
}

/* A PNG of the expected size: signature, then the IHDR chunk's width and height (PNG spec 11.2.2). */
static int png_ok(const char *path, unsigned w, unsigned h)
{
    char *b;
    size_t n;
    if (fs_read_file(path, &b, &n)) return 0;
    const unsigned char *u = (const unsigned char *)b;
    static const unsigned char SIG[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    int ok = n > 33 && !memcmp(u, SIG, 8) && !memcmp(u + 12, "IHDR", 4) &&
             (unsigned)(u[16] << 24 | u[17] << 16 | u[18] << 8 | u[19]) == w &&
             (unsigned)(u[20] << 24 | u[21] << 16 | u[22] << 8 | u[23]) == h && !memcmp(u + n - 8, "IEND", 4);
    free(b);
    return ok;
}

static int svg_ok(const char *path)
{
    char *b;
    size_t n;
    if (fs_read_file(path, &b, &n)) return 0;
    int ok = !strncmp(b, "<?xml", 5) && strstr(b, "<svg") && strstr(b, "</svg>");
    free(b);
    return ok;
}

static void test_report_files(void)
{
    char *dir = moe_fixture();
    if (!dir) return;
    char *out = tmp_path("rep");
    const char *dirs[] = {dir};
    ReportOptions o = {out, "anvil report test", "2026-12-01", 0};
    CHECKF(report_write(dirs, 1, &o) == 0, "%s", err_get());
    static const char *figs[] = {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "peak_mem_gib", "aux_loss",
                                 "expert_load_moe-run", "expert_final_moe-run"};
    for (size_t i = 0; i < ARRAY_LEN(figs); i++) {
        char name[128];
        snprintf(name, sizeof(name), "%s.png", figs[i]);
        char *p = fs_join(out, name);
        CHECKF(png_ok(p, PLOT_W_TEST, PLOT_H_TEST), "%s", p);
        free(p);
        snprintf(name, sizeof(name), "%s.svg", figs[i]);
        p = fs_join(out, name);
        CHECKF(svg_ok(p), "%s", p);
        free(p);
    }
    char *md_path = fs_join(out, "report.md"), *md;
    size_t n;
    CHECK(fs_read_file(md_path, &md, &n) == 0);
    CHECK(strstr(md, "| moe-run | 40 | 164k |") != NULL);
    CHECK(strstr(md, "30.90 GiB") && strstr(md, "made on 2026-12-01 by") && strstr(md, "![Loss](loss.png)"));
    CHECK(strstr(md, "expert_load_moe-run.png") != NULL);
    free(md), free(md_path);
    /* a run directory without metrics */
    const char *bad[] = {out};
    CHECK(report_write(bad, 1, &o) == -1 && strstr(err_get(), "no metrics.jsonl"));
    fs_rm_rf(out);
    free(out), free(dir);
}

static void test_convert_and_check(void)
{
    char *src = moe_fixture();
    if (!src) return;
    char *dir = tmp_path("conv");
    fs_mkdir_p(dir);
    char *from = fs_join(src, "metrics.jsonl"), *to = fs_join(dir, "metrics.jsonl"), *buf;
    size_t n;
    CHECK(fs_read_file(from, &buf, &n) == 0 && fs_write_atomic(to, buf, n) == 0);
    char *path;
    size_t ns, nc;
    CHECKF(tbrun_convert(dir, NULL, &path, &ns) == 0, "%s", err_get());
    /* 10 numeric keys a step (wall_time is not a scalar), 3 layers x (4 shares + imbalance), 4 val_loss, 3 mcq */
    CHECK(ns == 40 * 10 + 40 * 3 * 5 + 4 + 3);
    CHECKF(tbrun_check(dir, NULL, &nc) == 0 && nc == ns, "%s (%zu of %zu)", err_get(), nc, ns);
    /* converting again replaces the file */
    CHECK(tbrun_convert(dir, NULL, NULL, NULL) == 0);
    TbEvents ev = {0};
    CHECK(tb_read_dir(dir, &ev) == 0 && ev.n_files == 1 && ev.n == ns);
    tb_events_free(&ev);
    /* one more line in metrics.jsonl: the check names it */
    const char *extra = "{\"step\": 41, \"loss\": 6.1}\n";
    char *more = xmalloc(n + strlen(extra) + 1);
    memcpy(more, buf, n);
    memcpy(more + n, extra, strlen(extra) + 1);
    CHECK(fs_write_atomic(to, more, strlen(more)) == 0);
    CHECK(tbrun_check(dir, NULL, &nc) == -1 && strstr(err_get(), "train/loss at step 41 is in metrics.jsonl"));
    /* an event file from training beside it: conversion refuses */
    TbWriter *w = tb_open(dir, NULL);
    CHECK(tb_close(w) == 0);
    CHECK(tbrun_convert(dir, NULL, NULL, NULL) == -1 && strstr(err_get(), "already has event files"));
    free(path), free(more), free(buf), free(from), free(to), free(src);
    fs_rm_rf(dir);
    free(dir);
}

/* ---- cost ---- */

static void test_cost_arithmetic(void)
{
    /* 1e9 tokens at 500,000 tokens/s = 2,000 s; at $3.60 per hour = $2.00 */
    CHECK_CLOSE(cost_seconds(1e9, 5e5), 2000.0, 1e-12);
    CHECK_CLOSE(cost_usd(1e9, 5e5, 3.6), 2.0, 1e-12);
    /* docs/benchmarks.md's llama-1b row: 75,650 tokens/s -> 13,218.8 s = 3.6719 h; at $3.99: $14.651 */
    CHECK_CLOSE(cost_seconds(1e9, 75650), 13218.771, 1e-6);
    CHECK_CLOSE(cost_usd(1e9, 75650, 3.99), 14.6508, 1e-4);
    double t;
    CHECK(cost_parse_tokens("1B", &t) == 0 && t == 1e9);
    CHECK(cost_parse_tokens("300M", &t) == 0 && t == 3e8);
    CHECK(cost_parse_tokens("2.5e9", &t) == 0 && t == 2.5e9);
    CHECK(cost_parse_tokens("1.5k", &t) == 0 && t == 1500);
    CHECK(cost_parse_tokens("2T", &t) == 0 && t == 2e12);
    CHECK(cost_parse_tokens("x", &t) == -1 && strstr(err_get(), "--tokens"));
    CHECK(cost_parse_tokens("-1", &t) == -1);
    CHECK(cost_parse_tokens("1Q", &t) == -1);
    Price p;
    CHECK(cost_price_arg("H100=2.5", &p) == 0 && !strcmp(p.gpu, "H100") && p.usd_per_gpu_hour == 2.5);
    CHECK(cost_price_arg("H100", &p) == -1 && strstr(err_get(), "GPU=USD_PER_HOUR"));
    CHECK(cost_price_arg("H100=free", &p) == -1);
    CHECK(cost_price_arg("=3", &p) == -1);
}

static void test_price_table(void)
{
    char *path = tmp_path("prices.yaml");
    write_text(path, "prices:\n  - gpu: H100\n    usd_per_gpu_hour: 3.99\n    provider: A\n"
                     "  - gpu: H100\n    usd_per_gpu_hour: 6.88\n    provider: B\n"
                     "  - gpu: RTX 4090\n    usd_per_gpu_hour: 0.5\n    as_of: 2026-01-01\n");
    PriceTable t;
    CHECKF(cost_prices_load(path, &t) == 0, "%s", err_get());
    CHECK(t.n == 3 && t.p[1].usd_per_gpu_hour == 6.88 && !strcmp(t.p[2].as_of, "2026-01-01"));
    CHECK(cost_price_matches(&t.p[0], "NVIDIA H100 80GB HBM3"));
    CHECK(!cost_price_matches(&t.p[0], "NVIDIA H200"));
    CHECK(cost_price_matches(&t.p[2], "NVIDIA GeForce RTX 4090"));
    Price p;
    cost_price_arg("h100=2", &p);
    cost_prices_override(&t, &p);
    CHECK(t.n == 2 && !strcmp(t.p[1].gpu, "h100") && t.p[1].usd_per_gpu_hour == 2);
    cost_prices_free(&t);
    write_text(path, "prices:\n  - gpu: H100\n    usd_per_gpu_hr: 3\n");
    CHECK(cost_prices_load(path, &t) == -1 && strstr(err_get(), "prices.yaml:3") && strstr(err_get(), "usd_per_gpu_hr"));
    write_text(path, "prices:\n  - gpu: H100\n    usd_per_gpu_hour: -3\n");
    CHECK(cost_prices_load(path, &t) == -1 && strstr(err_get(), "positive"));
    write_text(path, "prices:\n  - provider: X\n    usd_per_gpu_hour: 3\n");
    CHECK(cost_prices_load(path, &t) == -1 && strstr(err_get(), "without gpu"));
    write_text(path, "price: []\n");
    CHECK(cost_prices_load(path, &t) == -1 && strstr(err_get(), "\"prices\""));
    free(path);
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
    RUN(test_summary_of_moe_fixture);
    RUN(test_report_files);
    RUN(test_convert_and_check);
    RUN(test_cost_arithmetic);
    RUN(test_price_table);
    fs_rm_rf(tmpdir);
    return test_summary();
}
