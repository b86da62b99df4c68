/* tbrun.c - metrics.jsonl -> an event file, and the check that event files equal metrics.jsonl. */
#include "report/tbrun.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"
#include "io/fsutil.h"
#include "report/metrics.h"
#include "report/tb.h"

/* Modification time of dir/name in unix seconds, 0 if it cannot be read. */
static double mtime_of(const char *dir, const char *name)
{
    char *p = fs_join(dir, name);
    struct stat st;
    double t = stat(p, &st) == 0 ? st.st_mtim.tv_sec + st.st_mtim.tv_nsec * 1e-9 : 0;
    free(p);
    return t;
}

/* Wall time of every line: its own, else start + the step times so far (see tbrun.h). */
static double *line_wall_times(const RunMetrics *r)
{
    double *t = xmalloc((size_t)r->n * sizeof(double));
    double total = 0;
    for (int i = 0; i < r->n; i++) {
        double ms = metrics_get(&r->lines[i], "ms_per_step");
        if (!isnan(ms) && ms > 0) total += ms * 1e-3;
    }
    double start = mtime_of(r->dir, "config.yaml");
    if (start <= 0) start = mtime_of(r->dir, "metrics.jsonl") - total;
    double acc = 0;
    for (int i = 0; i < r->n; i++) {
        double ms = metrics_get(&r->lines[i], "ms_per_step");
        if (!isnan(ms) && ms > 0) acc += ms * 1e-3;
        t[i] = !isnan(r->lines[i].wall_time) ? r->lines[i].wall_time : start + acc;
    }
    return t;
}

/* Names in dir that contain "tfevents" (not hidden). */
static int list_event_files(const char *dir, char ***names)
{
    *names = NULL;
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strstr(de->d_name, "tfevents") || de->d_name[0] == '.') continue;
        if (n == cap) *names = xrealloc(*names, (size_t)(cap = cap ? 2 * cap : 8) * sizeof(char *));
        (*names)[n++] = xstrdup(de->d_name);
    }
    closedir(d);
    return n;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* Every scalar of one line, as tb_log_metrics_json writes them. */
static int write_line(TbWriter *w, const MetricsLine *l, double wall, size_t *count)
{
    char tag[300];
    for (int k = 0; k < l->nv; k++) {
        if (tb_tag_for_key(l->v[k].key, tag, sizeof(tag))) continue;
        if (tb_scalar(w, tag, l->step, l->v[k].value, wall)) return -1;
        (*count)++;
    }
    if (l->expert_load) {
        if (tb_log_expert_load(w, l->step, wall, l->expert_load, l->n_layer, l->n_expert)) return -1;
        *count += (size_t)l->n_layer * (l->n_expert + 1);
    }
    return 0;
}

int tbrun_convert(const char *run_dir, const char *out_dir, char **path_out, size_t *n_scalars)
{
    if (path_out) *path_out = NULL;
    if (n_scalars) *n_scalars = 0;
    RunMetrics r;
    if (metrics_load_run(run_dir, &r)) return -1;
    const char *dir = out_dir ? out_dir : run_dir;
    char **names;
    int nn = list_event_files(dir, &names), rc = 0;
    for (int i = 0; i < nn && !rc; i++)
        if (!ends_with(names[i], TBRUN_SUFFIX))
            rc = err_set("%s/%s: the run already has event files from training (converting would show every "
                         "value twice); pass --out DIR to write elsewhere",
                         dir, names[i]);
    double *wall = line_wall_times(&r);
    char name[96];
    snprintf(name, sizeof(name), "events.out.tfevents.%010lld%s", (long long)(wall[0] > 0 ? wall[0] : 0),
             TBRUN_SUFFIX);
    size_t count = 0;
    TbWriter *w = NULL;
    if (!rc) {
        TbOptions o = {.offline = 1, .file_name = name, .start_wall_time = wall[0]};
        w = tb_open(dir, &o);
        if (!w) rc = -1;
    }
    for (int i = 0; i < r.n && !rc; i++) rc = write_line(w, &r.lines[i], wall[i], &count);
    if (w) {
        char *path = xstrdup(tb_path(w));
        if (tb_close(w)) rc = -1;
        else if (rc) remove(path);
        /* an earlier conversion under another start time is replaced, not kept beside */
        for (int i = 0; i < nn && !rc; i++)
            if (strcmp(names[i], name)) {
                char *old = fs_join(dir, names[i]);
                remove(old);
                free(old);
            }
        if (!rc && path_out) *path_out = path;
        else free(path);
    }
    for (int i = 0; i < nn; i++) free(names[i]);
    free(names);
    free(wall);
    if (n_scalars) *n_scalars = count;
    metrics_run_free(&r);
    return rc;
}

/* ---- the check ---- */

typedef struct {
    char *tag;
    long long step;
    float value;
} Expect;

static void expect_push(Expect **e, size_t *n, size_t *cap, const char *tag, long long step, double v)
{
    if (*n == *cap) *e = xrealloc(*e, (*cap = *cap ? 2 * *cap : 1024) * sizeof(Expect));
    (*e)[(*n)++] = (Expect){xstrdup(tag), step, (float)v};
}

static int cmp_expect(const void *a, const void *b)
{
    const Expect *x = a, *y = b;
    int c = strcmp(x->tag, y->tag);
    return c ? c : (x->step > y->step) - (x->step < y->step);
}

static int cmp_event(const void *a, const void *b)
{
    const TbScalar *x = a, *y = b;
    int c = strcmp(x->tag, y->tag);
    return c ? c : (x->step > y->step) - (x->step < y->step);
}

/* What the event files must hold for r, sorted by (tag, step). */
static size_t expected_scalars(const RunMetrics *r, Expect **out)
{
    Expect *e = NULL;
    size_t n = 0, cap = 0;
    char tag[300];
    for (int i = 0; i < r->n; i++) {
        const MetricsLine *l = &r->lines[i];
        for (int k = 0; k < l->nv; k++)
            if (!tb_tag_for_key(l->v[k].key, tag, sizeof(tag))) expect_push(&e, &n, &cap, tag, l->step, l->v[k].value);
        for (int a = 0; l->expert_load && a < l->n_layer; a++) {
            const float *row = l->expert_load + (size_t)a * l->n_expert;
            double sum = 0, mx = 0;
            for (int b = 0; b < l->n_expert; b++) {
                snprintf(tag, sizeof(tag), "moe/expert_load/layer%d/expert%d", a, b);
                expect_push(&e, &n, &cap, tag, l->step, row[b]);
                sum += row[b];
                mx = MAX(mx, (double)row[b]);
            }
            snprintf(tag, sizeof(tag), "moe/load_imbalance/layer%d", a);
            if (sum > 0) expect_push(&e, &n, &cap, tag, l->step, mx / (sum / l->n_expert));
        }
    }
    if (n) qsort(e, n, sizeof(Expect), cmp_expect);
    *out = e;
    return n;
}

int tbrun_check(const char *run_dir, const char *events_dir, size_t *n_checked)
{
    if (n_checked) *n_checked = 0;
    RunMetrics r;
    if (metrics_load_run(run_dir, &r)) return -1;
    TbEvents ev = {0};
    int rc = tb_read_dir(events_dir ? events_dir : run_dir, &ev);
    Expect *e = NULL;
    size_t ne = rc ? 0 : expected_scalars(&r, &e);
    if (!rc && ev.n) qsort(ev.v, ev.n, sizeof(TbScalar), cmp_event);
    size_t i = 0, j = 0, checked = 0;
    while (!rc && (i < ne || j < ev.n)) {
        int c = i == ne ? 1 : j == ev.n ? -1 : strcmp(e[i].tag, ev.v[j].tag);
        if (!c) c = (e[i].step > ev.v[j].step) - (e[i].step < ev.v[j].step);
        if (c < 0)
            rc = err_set("%s: %s at step %lld is in metrics.jsonl but not in the event files", r.dir, e[i].tag,
                         e[i].step);
        else if (c > 0)
            rc = err_set("%s: %s at step %lld is in the event files but not in metrics.jsonl", r.dir, ev.v[j].tag,
                         (long long)ev.v[j].step);
        else if (memcmp(&e[i].value, &ev.v[j].value, sizeof(float)) && !(e[i].value == ev.v[j].value))
            rc = err_set("%s: %s at step %lld: event file %.9g, metrics.jsonl %.9g (as float32)", r.dir, e[i].tag,
                         e[i].step, ev.v[j].value, e[i].value);
        else if (j + 1 < ev.n && !cmp_event(&ev.v[j], &ev.v[j + 1]))
            rc = err_set("%s: %s at step %lld is in the event files twice", r.dir, ev.v[j].tag,
                         (long long)ev.v[j].step);
        else {
            checked++;
            i++;
            j++;
        }
    }
    for (size_t k = 0; k < ne; k++) free(e[k].tag);
    free(e);
    tb_events_free(&ev);
    metrics_run_free(&r);
    if (n_checked) *n_checked = checked;
    return rc;
}
