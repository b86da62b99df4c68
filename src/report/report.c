/* report.c - summary numbers, figures and the Markdown page of `anvil report` (report.h). */
#include "report/report.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"
#include "io/fsutil.h"
#include "report/plot.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median of the run's values of key (NAN if none). */
static double median_of(const RunMetrics *r, const char *key)
{
    double *st, *tk, *v;
    int n = metrics_series(r, key, &st, &tk, &v);
    double m = NAN;
    if (n) {
        qsort(v, (size_t)n, sizeof(double), cmp_double);
        m = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    }
    free(st), free(tk), free(v);
    return m;
}

void report_summarize(const RunMetrics *r, RunSummary *s)
{
    memset(s, 0, sizeof(*s));
    s->final_val = s->best_val = s->peak_mem_gib = s->wall_s = NAN;
    const MetricsLine *last = &r->lines[r->n - 1];
    s->steps = last->step;
    s->tokens = metrics_get(last, "tokens_seen");
    s->final_loss = metrics_get(last, "loss");
    for (int i = 0; i < r->n; i++) {
        const MetricsLine *l = &r->lines[i];
        double ms = metrics_get(l, "ms_per_step"), vl = metrics_get(l, "val_loss"),
               pm = metrics_get(l, "peak_mem_gib");
        if (!isnan(ms)) s->train_s += ms * 1e-3;
        if (!isnan(vl)) {
            s->final_val = vl;
            if (isnan(s->best_val) || vl < s->best_val) {
                s->best_val = vl;
                s->best_val_step = l->step;
            }
        }
        if (!isnan(pm) && (isnan(s->peak_mem_gib) || pm > s->peak_mem_gib)) s->peak_mem_gib = pm;
        if (l->expert_load) s->moe = 1;
    }
    s->tokens_per_s = median_of(r, "tokens_per_s");
    s->mfu = median_of(r, "mfu");
    if (!isnan(r->elapsed_s)) s->wall_s = r->elapsed_s;
    else if (!isnan(r->lines[0].wall_time) && !isnan(last->wall_time)) {
        double first_ms = metrics_get(&r->lines[0], "ms_per_step");
        s->wall_s = last->wall_time - r->lines[0].wall_time + (isnan(first_ms) ? 0 : first_ms * 1e-3);
    }
}

/* ---- text formatting ---- */

static void fmt_duration(double s, char *buf, size_t n)
{
    if (isnan(s)) {
        snprintf(buf, n, "-");
        return;
    }
    long t = (long)(s + 0.5);
    if (s < 60) snprintf(buf, n, "%.1f s", s);
    else if (t < 3600) snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, n, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
}

static void fmt_count(double v, char *buf, size_t n)
{
    if (isnan(v)) snprintf(buf, n, "-");
    else if (v >= 1e9) snprintf(buf, n, "%.3gB", v / 1e9);
    else if (v >= 1e6) snprintf(buf, n, "%.3gM", v / 1e6);
    else if (v >= 1e4) snprintf(buf, n, "%.3gk", v / 1e3);
    else snprintf(buf, n, "%.0f", v);
}

static void fmt_num(double v, const char *fmt, char *buf, size_t n)
{
    if (isnan(v)) snprintf(buf, n, "-");
    else snprintf(buf, n, fmt, v);
}

/* A run name usable in a file name: letters, digits, '-', '_', '.'; others become '_'. */
static void file_safe(const char *name, char *buf, size_t n)
{
    size_t k = 0;
    for (const char *c = name; *c && k + 1 < n; c++)
        buf[k++] = isalnum((unsigned char)*c) || *c == '-' || *c == '_' || *c == '.' ? *c : '_';
    buf[k] = 0;
}

/* ---- figures ---- */

typedef struct {
    double *st, *tk, *v;
    int n;
} Series;

static void series_load(const RunMetrics *r, const char *key, Series *s)
{
    s->n = metrics_series(r, key, &s->st, &s->tk, &s->v);
}

static void series_free(Series *s)
{
    free(s->st), free(s->tk), free(s->v);
}

/* x of a series: tokens when every point has them, else steps. */
static const double *series_x(const Series *s, int *use_tokens)
{
    for (int i = 0; i < s->n; i++)
        if (isnan(s->tk[i])) {
            *use_tokens = 0;
            return s->st;
        }
    return s->tk;
}

/* One figure of key against tokens for every run that has it; val_key (may be NULL) adds a
 * dotted series per run. Returns 1 if drawn, 0 if no run has key, -1 on error. */
static int figure_metric(RunMetrics *runs, int n_runs, const char *key, const char *val_key, const char *title,
                         const char *ylabel, const char *out_dir, const char *file, int formats)
{
    Series *s = xcalloc((size_t)n_runs * 2, sizeof(Series));
    PlotLine *lines = xcalloc((size_t)n_runs * 2, sizeof(PlotLine));
    char **labels = xcalloc((size_t)n_runs * 2, sizeof(char *));
    int nl = 0, use_tokens = 1;
    for (int i = 0; i < n_runs; i++) {
        for (int v = 0; v < 2; v++) {
            const char *k = v ? val_key : key;
            if (!k) continue;
            Series *q = &s[2 * i + v];
            series_load(&runs[i], k, q);
            if (!q->n) continue;
            const double *x = series_x(q, &use_tokens);
            labels[nl] = xmalloc(strlen(runs[i].name) + 16);
            sprintf(labels[nl], "%s%s", runs[i].name, val_key ? (v ? " (val)" : " (train)") : "");
            lines[nl] = (PlotLine){x, q->v, q->n, labels[nl], i, v, v || q->n <= 2};
            nl++;
        }
    }
    int rc = 0;
    if (nl) {
        /* a run without token counts puts every series on steps */
        for (int i = 0; i < nl && !use_tokens; i++) {
            int r = lines[i].color, v = lines[i].dashed;
            lines[i].x = s[2 * r + v].st;
        }
        LinePlot p = {title, use_tokens ? "tokens" : "step", ylabel, lines, nl, 1, !strcmp(key, "loss")};
        char *base = fs_join(out_dir, file);
        rc = plot_lines(&p, base, formats) ? -1 : 1;
        free(base);
    }
    for (int i = 0; i < 2 * n_runs; i++) series_free(&s[i]);
    for (int i = 0; i < nl; i++) free(labels[i]);
    free(s), free(lines), free(labels);
    return rc;
}

/* The MoE figures of one run (report.h). */
static int figure_moe(const RunMetrics *r, const char *out_dir, int formats, char *heat_file, char *bars_file,
                      size_t n)
{
    int L = 0, E = 0, cols = 0;
    for (int i = 0; i < r->n; i++)
        if (r->lines[i].expert_load) {
            if (!cols) L = r->lines[i].n_layer, E = r->lines[i].n_expert;
            if (r->lines[i].n_layer != L || r->lines[i].n_expert != E)
                return err_set("%s/metrics.jsonl: step %lld: expert_load is %d x %d, earlier steps %d x %d", r->dir,
                               (long long)r->lines[i].step, r->lines[i].n_layer, r->lines[i].n_expert, L, E);
            cols++;
        }
    if (!cols) return 0;
    double *x = xmalloc((size_t)cols * sizeof(double));
    float *ratio = xmalloc((size_t)L * E * cols * sizeof(float));
    const float *final = NULL;
    int c = 0;
    for (int i = 0; i < r->n; i++) {
        const MetricsLine *l = &r->lines[i];
        if (!l->expert_load) continue;
        x[c] = (double)l->step;
        for (int a = 0; a < L; a++) {
            double sum = 0;
            for (int e = 0; e < E; e++) sum += l->expert_load[a * E + e];
            for (int e = 0; e < E; e++)
                ratio[(size_t)(a * E + e) * cols + c] = sum > 0 ? (float)(l->expert_load[a * E + e] * E / sum) : 0;
        }
        final = l->expert_load;
        c++;
    }
    char safe[128], title[256];
    file_safe(r->name, safe, sizeof(safe));
    snprintf(heat_file, n, "expert_load_%s", safe);
    snprintf(bars_file, n, "expert_final_%s", safe);
    snprintf(title, sizeof(title), "%s: expert load per layer (%d layers x %d experts)", r->name, L, E);
    HeatPlot hp = {title, "step", "layer ", "share / uniform share", x, cols, L * E, E, ratio};
    char *base = fs_join(out_dir, heat_file);
    int rc = plot_heatmap(&hp, base, formats);
    free(base);
    double *mean = xcalloc((size_t)E, sizeof(double)), *lo = xmalloc((size_t)E * sizeof(double)),
           *hi = xmalloc((size_t)E * sizeof(double));
    for (int e = 0; e < E; e++) lo[e] = INFINITY, hi[e] = -INFINITY;
    for (int a = 0; a < L; a++) {
        double sum = 0;
        for (int e = 0; e < E; e++) sum += final[a * E + e];
        for (int e = 0; e < E; e++) {
            double share = sum > 0 ? final[a * E + e] / sum : 0;
            mean[e] += share / L;
            lo[e] = MIN(lo[e], share);
            hi[e] = MAX(hi[e], share);
        }
    }
    snprintf(title, sizeof(title), "%s: expert load at step %lld", r->name, (long long)x[cols - 1]);
    BarPlot bp = {title, "expert", "share of routed tokens (mean over layers)", "uniform", E, mean, lo, hi, 1.0 / E};
    if (!rc) {
        base = fs_join(out_dir, bars_file);
        rc = plot_bars(&bp, base, formats);
        free(base);
    }
    free(mean), free(lo), free(hi), free(x), free(ratio);
    return rc ? -1 : 1;
}

/* ---- the page ---- */

static void page_runs(FILE *f, const RunMetrics *runs, int n_runs)
{
    fprintf(f, "## Runs\n\n| run | directory | model | device | steps | batch x seq | lr (min) | schedule |\n"
               "|---|---|---|---|---:|---|---|---|\n");
    for (int i = 0; i < n_runs; i++) {
        const RunMetrics *r = &runs[i];
        char preset[64] = "-", init[256] = "", dev[32] = "-", steps[32] = "-", b[32] = "?", t[32] = "?",
             lr[32] = "-", mlr[32] = "-", sch[32] = "-";
        metrics_config_value(r, "model.preset", preset, sizeof(preset));
        metrics_config_value(r, "model.init", init, sizeof(init));
        metrics_config_value(r, "device", dev, sizeof(dev));
        metrics_config_value(r, "train.steps", steps, sizeof(steps));
        metrics_config_value(r, "train.batch_size", b, sizeof(b));
        metrics_config_value(r, "train.seq_len", t, sizeof(t));
        metrics_config_value(r, "train.schedule", sch, sizeof(sch));
        if (!metrics_config_value(r, "train.lr", lr, sizeof(lr))) snprintf(lr, sizeof(lr), "%.3g", atof(lr));
        if (!metrics_config_value(r, "train.min_lr", mlr, sizeof(mlr))) snprintf(mlr, sizeof(mlr), "%.3g", atof(mlr));
        fprintf(f, "| %s | `%s` | %s | %s | %s | %s x %s | %s (%s) | %s |\n", r->name, r->dir,
                init[0] ? init : preset[0] ? preset : "-", dev, steps, b, t, lr, mlr, sch);
    }
    fprintf(f, "\n");
}

static void page_summary(FILE *f, const RunMetrics *runs, int n_runs)
{
    int any_mfu = 0;
    RunSummary *s = xmalloc((size_t)n_runs * sizeof(RunSummary));
    for (int i = 0; i < n_runs; i++) {
        report_summarize(&runs[i], &s[i]);
        any_mfu |= !isnan(s[i].mfu);
    }
    fprintf(f, "## Summary\n\n| run | steps | tokens | wall time | train time | final loss | final val loss | "
               "best val loss (step) | tokens/s (median) | peak memory |%s\n"
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|%s\n",
            any_mfu ? " MFU (median) |" : "", any_mfu ? "---:|" : "");
    for (int i = 0; i < n_runs; i++) {
        char tok[32], wall[32], tr[32], fl[32], fv[32], bv[48], tps[32], pm[32], mfu[32];
        fmt_count(s[i].tokens, tok, sizeof(tok));
        fmt_duration(s[i].wall_s, wall, sizeof(wall));
        fmt_duration(s[i].train_s, tr, sizeof(tr));
        fmt_num(s[i].final_loss, "%.4f", fl, sizeof(fl));
        fmt_num(s[i].final_val, "%.4f", fv, sizeof(fv));
        if (isnan(s[i].best_val)) snprintf(bv, sizeof(bv), "-");
        else snprintf(bv, sizeof(bv), "%.4f (%lld)", s[i].best_val, (long long)s[i].best_val_step);
        fmt_num(s[i].tokens_per_s, "%.0f", tps, sizeof(tps));
        fmt_num(s[i].peak_mem_gib, "%.2f GiB", pm, sizeof(pm));
        fmt_num(100 * s[i].mfu, "%.1f%%", mfu, sizeof(mfu));
        fprintf(f, "| %s | %lld | %s | %s | %s | %s | %s | %s | %s | %s |", runs[i].name, (long long)s[i].steps,
                tok, wall, tr, fl, fv, bv, tps, pm);
        if (any_mfu) fprintf(f, " %s |", mfu);
        fprintf(f, "\n");
    }
    fprintf(f, "\nWall time: the newest checkpoint's `elapsed_s` (training and evaluation); train time: the sum "
               "of `ms_per_step` (training steps only).\n\n");
    free(s);
}

static void page_figure(FILE *f, const char *file, const char *caption, int formats)
{
    fprintf(f, "![%s](%s.png)\n\n", caption, file);
    if (formats & PLOT_SVG) fprintf(f, "[SVG](%s.svg)\n\n", file);
}

int report_write(const char *const *run_dirs, int n_runs, const ReportOptions *o)
{
    if (n_runs < 1) return err_set("report: give at least one run directory");
    RunMetrics *runs = xcalloc((size_t)n_runs, sizeof(RunMetrics));
    int rc = 0, loaded = 0;
    for (int i = 0; i < n_runs && !rc; i++, loaded++) rc = metrics_load_run(run_dirs[i], &runs[i]);
    if (rc) loaded--;
    if (!rc) rc = fs_mkdir_p(o->out_dir);
    char *page = NULL;
    size_t page_n = 0;
    int formats = PLOT_PNG | (o->no_svg ? 0 : PLOT_SVG);
    FILE *f = rc ? NULL : open_memstream(&page, &page_n);
    if (f) {
        char today[32];
        if (o->date) snprintf(today, sizeof(today), "%s", o->date);
        else {
            time_t now = time(NULL);
            strftime(today, sizeof(today), "%Y-%m-%d", gmtime(&now));
        }
        fprintf(f, "# Training report\n\n%d run%s, made on %s", n_runs, n_runs > 1 ? "s" : "", today);
        if (o->command) fprintf(f, " by\n\n    %s\n\n", o->command);
        else fprintf(f, ".\n\n");
        page_summary(f, runs, n_runs);
        page_runs(f, runs, n_runs);
        fprintf(f, "## Figures\n\n");
        static const struct {
            const char *key, *val, *title, *ylabel, *file;
        } FIGS[] = {
            {"loss", "val_loss", "Loss", "cross-entropy (nats/token)", "loss"},
            {"lr", NULL, "Learning rate", "learning rate", "lr"},
            {"grad_norm", NULL, "Gradient norm (before clipping)", "global gradient norm", "grad_norm"},
            {"tokens_per_s", NULL, "Throughput", "tokens/s", "tokens_per_s"},
            {"mfu", NULL, "Model FLOPs utilization", "MFU", "mfu"},
            {"peak_mem_gib", NULL, "Peak memory", "GiB", "peak_mem_gib"},
            {"aux_loss", NULL, "MoE load-balancing loss", "aux loss", "aux_loss"},
        };
        for (size_t k = 0; k < ARRAY_LEN(FIGS) && !rc; k++) {
            int drawn = figure_metric(runs, n_runs, FIGS[k].key, FIGS[k].val, FIGS[k].title, FIGS[k].ylabel,
                                      o->out_dir, FIGS[k].file, formats);
            if (drawn < 0) rc = -1;
            else if (drawn) page_figure(f, FIGS[k].file, FIGS[k].title, formats);
        }
        for (int i = 0; i < n_runs && !rc; i++) {
            char heat[160], bars[160];
            int drawn = figure_moe(&runs[i], o->out_dir, formats, heat, bars, sizeof(heat));
            if (drawn < 0) rc = -1;
            else if (drawn) {
                fprintf(f, "### %s: mixture of experts\n\nEach row is one expert of one layer; colour: its share of "
                           "the layer's routed tokens over the uniform share (white = balanced, red = overloaded, "
                           "blue = starved).\n\n", runs[i].name);
                page_figure(f, heat, "expert load over steps", formats);
                page_figure(f, bars, "final expert load", formats);
            }
        }
        fclose(f);
        if (!rc) {
            char *path = fs_join(o->out_dir, "report.md");
            rc = fs_write_atomic(path, page, page_n);
            free(path);
        }
        free(page);
    } else if (!rc) {
        rc = err_set("report: cannot allocate the page");
    }
    for (int i = 0; i < loaded; i++) metrics_run_free(&runs[i]);
    free(runs);
    plot_release();
    return rc;
}
