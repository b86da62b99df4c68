/* metrics.c - reading metrics.jsonl, config.yaml and trainer_state.json of a run directory. */
#include "report/metrics.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "core/error.h"
#include "io/fsutil.h"
#include "train/checkpoint.h"

/* Largest expert_load accepted: layers x experts (a bound against nonsense input). */
#define EXPERT_LOAD_MAX_LAYERS 4096
#define EXPERT_LOAD_MAX_EXPERTS 4096

static int parse_expert_load(json_t *a, MetricsLine *l)
{
    if (!json_is_array(a) || json_array_size(a) == 0) return err_set("expert_load: expected an array of layers");
    size_t nl = json_array_size(a);
    json_t *first = json_array_get(a, 0);
    if (!json_is_array(first) || json_array_size(first) == 0)
        return err_set("expert_load: layer 0: expected an array of expert shares");
    size_t ne = json_array_size(first);
    if (nl > EXPERT_LOAD_MAX_LAYERS || ne > EXPERT_LOAD_MAX_EXPERTS)
        return err_set("expert_load: %zu layers x %zu experts is more than this reader takes", nl, ne);
    l->expert_load = xmalloc(nl * ne * sizeof(float));
    l->n_layer = (int)nl;
    l->n_expert = (int)ne;
    for (size_t i = 0; i < nl; i++) {
        json_t *row = json_array_get(a, i);
        if (!json_is_array(row)) return err_set("expert_load: layer %zu: expected an array of expert shares", i);
        if (json_array_size(row) != ne)
            return err_set("expert_load: layer %zu has %zu experts, layer 0 has %zu", i, json_array_size(row), ne);
        for (size_t e = 0; e < ne; e++) {
            json_t *x = json_array_get(row, e);
            if (!json_is_number(x)) return err_set("expert_load: layer %zu expert %zu: expected a number", i, e);
            l->expert_load[i * ne + e] = (float)json_number_value(x);
        }
    }
    return 0;
}

int metrics_parse_line(const char *text, size_t len, MetricsLine *out)
{
    memset(out, 0, sizeof(*out));
    out->wall_time = NAN;
    json_error_t je;
    json_t *j = json_loadb(text, len, 0, &je);
    if (!j) return err_set("not JSON: %s", je.text);
    int rc = 0;
    if (!json_is_object(j)) {
        rc = err_set("expected a JSON object");
        goto out;
    }
    json_t *st = json_object_get(j, "step");
    if (!json_is_integer(st) || json_integer_value(st) < 1) {
        rc = err_set("step: expected an integer >= 1");
        goto out;
    }
    out->step = (int64_t)json_integer_value(st);
    out->v = xmalloc(json_object_size(j) * sizeof(MetricValue));
    const char *key;
    json_t *val;
    json_object_foreach(j, key, val) {
        if (!strcmp(key, "step")) continue;
        if (!strcmp(key, "wall_time")) {
            if (!json_is_number(val)) {
                rc = err_set("wall_time: expected a number (unix seconds)");
                goto out;
            }
            out->wall_time = json_number_value(val);
        } else if (!strcmp(key, "expert_load")) {
            if ((rc = parse_expert_load(val, out))) goto out;
        } else if (!strcmp(key, "mcq_task") && json_is_string(val)) {
            snprintf(out->mcq_task, sizeof(out->mcq_task), "%s", json_string_value(val));
        } else if (json_is_number(val)) {
            if (strlen(key) >= METRICS_KEY_MAX) {
                rc = err_set("%.40s...: key longer than %d characters", key, METRICS_KEY_MAX - 1);
                goto out;
            }
            MetricValue *m = &out->v[out->nv++];
            snprintf(m->key, sizeof(m->key), "%s", key);
            m->value = json_number_value(val);
        } /* other types (strings, nested objects) carry no scalar to plot */
    }
out:
    json_decref(j);
    if (rc) metrics_line_free(out);
    return rc;
}

void metrics_line_free(MetricsLine *l)
{
    free(l->v);
    free(l->expert_load);
    memset(l, 0, sizeof(*l));
}

double metrics_get(const MetricsLine *l, const char *key)
{
    for (int i = 0; i < l->nv; i++)
        if (!strcmp(l->v[i].key, key)) return l->v[i].value;
    return NAN;
}

/* The last path component of dir, without trailing slashes (malloc'd). */
static char *base_name(const char *dir)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    size_t s = n;
    while (s > 0 && dir[s - 1] != '/') s--;
    char *b = xmalloc(n - s + 1);
    memcpy(b, dir + s, n - s);
    b[n - s] = 0;
    return b;
}

static int load_lines(const char *path, RunMetrics *r)
{
    char *buf;
    size_t n;
    if (fs_read_file(path, &buf, &n)) return -1;
    int cap = 0, lineno = 0, rc = 0;
    for (char *p = buf; p < buf + n;) {
        char *nl = memchr(p, '\n', (size_t)(buf + n - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(buf + n - p);
        lineno++;
        size_t k = 0;
        while (k < len && (p[k] == ' ' || p[k] == '\t' || p[k] == '\r')) k++;
        if (k < len) {
            if (r->n == cap) {
                cap = cap ? 2 * cap : 256;
                r->lines = xrealloc(r->lines, (size_t)cap * sizeof(MetricsLine));
            }
            if (metrics_parse_line(p, len, &r->lines[r->n])) {
                rc = err_prefix("%s:%d", path, lineno);
                break;
            }
            r->n++;
        }
        p += len + (nl ? 1 : 0);
    }
    free(buf);
    if (!rc && r->n == 0) rc = err_set("%s: no metrics (the file is empty)", path);
    return rc;
}

int metrics_load_run(const char *dir, RunMetrics *r)
{
    memset(r, 0, sizeof(*r));
    r->elapsed_s = NAN;
    if (!fs_is_dir(dir)) return err_set("%s: not a run directory", dir);
    r->dir = xstrdup(dir);
    r->name = base_name(dir);
    char *path = fs_join(dir, "metrics.jsonl");
    int rc = 0;
    if (!fs_exists(path)) rc = err_set("%s: no metrics.jsonl (is this an `anvil train` output directory?)", dir);
    else rc = load_lines(path, r);
    free(path);
    if (rc) {
        metrics_run_free(r);
        return -1;
    }
    char *cfg = fs_join(dir, "config.yaml");
    size_t n;
    if (fs_exists(cfg) && fs_read_file(cfg, &r->config_yaml, &n)) r->config_yaml = NULL;
    free(cfg);
    /* elapsed_s: the newest checkpoint's trainer_state.json (a run without one has none) */
    char *ck = ckpt_find_latest(dir);
    TrainerState st;
    if (ck && !ckpt_read_state(ck, &st)) r->elapsed_s = st.elapsed_s;
    free(ck);
    err_clear();
    return 0;
}

void metrics_run_free(RunMetrics *r)
{
    for (int i = 0; i < r->n; i++) metrics_line_free(&r->lines[i]);
    free(r->lines);
    free(r->dir);
    free(r->name);
    free(r->config_yaml);
    memset(r, 0, sizeof(*r));
}

int metrics_series(const RunMetrics *r, const char *key, double **step, double **tokens, double **value)
{
    *step = xmalloc((size_t)(r->n + 1) * sizeof(double));
    *tokens = xmalloc((size_t)(r->n + 1) * sizeof(double));
    *value = xmalloc((size_t)(r->n + 1) * sizeof(double));
    int k = 0;
    for (int i = 0; i < r->n; i++) {
        double v = metrics_get(&r->lines[i], key);
        if (isnan(v)) continue;
        (*step)[k] = (double)r->lines[i].step;
        (*tokens)[k] = metrics_get(&r->lines[i], "tokens_seen");
        (*value)[k] = v;
        k++;
    }
    return k;
}

int metrics_has(const RunMetrics *r, const char *key)
{
    for (int i = 0; i < r->n; i++)
        if (!isnan(metrics_get(&r->lines[i], key))) return 1;
    return 0;
}

/* Nesting depth of config.yaml that the lookup follows (anvil writes three: eval.mcq.task). */
#define CONFIG_MAX_DEPTH 8

int metrics_config_value(const RunMetrics *r, const char *dotted, char *buf, size_t n)
{
    if (!r->config_yaml) return -1;
    yaml_parser_t p;
    yaml_event_t ev;
    yaml_parser_initialize(&p);
    yaml_parser_set_input_string(&p, (const unsigned char *)r->config_yaml, strlen(r->config_yaml));
    char path[CONFIG_MAX_DEPTH][METRICS_KEY_MAX];
    int expect_key[CONFIG_MAX_DEPTH + 1] = {0};
    char pending[METRICS_KEY_MAX] = "";
    int depth = 0, found = -1, done = 0;
    while (!done && found < 0 && yaml_parser_parse(&p, &ev)) {
        switch (ev.type) {
        case YAML_STREAM_END_EVENT: done = 1; break;
        case YAML_MAPPING_START_EVENT:
            if (depth > 0 && depth <= CONFIG_MAX_DEPTH) {
                snprintf(path[depth - 1], METRICS_KEY_MAX, "%s", pending);
                expect_key[depth] = 1;
            }
            depth++;
            if (depth <= CONFIG_MAX_DEPTH) expect_key[depth] = 1;
            break;
        case YAML_MAPPING_END_EVENT: depth--; break;
        case YAML_SCALAR_EVENT: {
            const char *v = (const char *)ev.data.scalar.value;
            if (depth < 1 || depth > CONFIG_MAX_DEPTH) break;
            if (expect_key[depth]) {
                snprintf(pending, sizeof(pending), "%s", v);
                expect_key[depth] = 0;
                break;
            }
            char full[CONFIG_MAX_DEPTH * METRICS_KEY_MAX + 1] = "";
            for (int d = 1; d < depth; d++) {
                strcat(full, path[d - 1]);
                strcat(full, ".");
            }
            strcat(full, pending);
            if (!strcmp(full, dotted)) {
                snprintf(buf, n, "%s", v);
                found = 0;
            }
            expect_key[depth] = 1;
            break;
        }
        default: break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p);
    return found;
}
