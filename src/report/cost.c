/* cost.c - price tables, measured throughput and the arithmetic of `anvil cost` (cost.h). */
#define _GNU_SOURCE /* strcasestr */
#include "report/cost.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "core/error.h"
#include "io/fsutil.h"
#include "report/metrics.h"
#include "report/report.h"

#define SECONDS_PER_HOUR 3600.0

static int parse_positive(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v) || v <= 0) return -1;
    *out = v;
    return 0;
}

/* ---- the YAML table ---- */

static yaml_node_t *map_get(yaml_document_t *d, yaml_node_t *m, const char *key)
{
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(d, p->key);
        if (k && k->type == YAML_SCALAR_NODE && !strcmp((char *)k->data.scalar.value, key))
            return yaml_document_get_node(d, p->value);
    }
    return NULL;
}

static const struct {
    const char *key;
    size_t off, size;
} PRICE_TEXT[] = {
    {"gpu", offsetof(Price, gpu), sizeof(((Price *)0)->gpu)},
    {"provider", offsetof(Price, provider), sizeof(((Price *)0)->provider)},
    {"product", offsetof(Price, product), sizeof(((Price *)0)->product)},
    {"as_of", offsetof(Price, as_of), sizeof(((Price *)0)->as_of)},
    {"source", offsetof(Price, source), sizeof(((Price *)0)->source)},
    {"via", offsetof(Price, via), sizeof(((Price *)0)->via)},
    {"note", offsetof(Price, note), sizeof(((Price *)0)->note)},
};

static int price_from_node(const char *path, yaml_document_t *d, yaml_node_t *m, Price *p)
{
    size_t line = m->start_mark.line + 1;
    memset(p, 0, sizeof(*p));
    if (m->type != YAML_MAPPING_NODE) return err_set("%s:%zu: prices: expected a mapping (gpu: ..., usd_per_gpu_hour: ...)", path, line);
    for (yaml_node_pair_t *pr = m->data.mapping.pairs.start; pr < m->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = yaml_document_get_node(d, pr->key), *v = yaml_document_get_node(d, pr->value);
        size_t kl = k->start_mark.line + 1;
        const char *key = k->type == YAML_SCALAR_NODE ? (char *)k->data.scalar.value : "?";
        if (v->type != YAML_SCALAR_NODE) return err_set("%s:%zu: prices: %s: expected a single value", path, kl, key);
        const char *val = (char *)v->data.scalar.value;
        if (!strcmp(key, "usd_per_gpu_hour")) {
            if (parse_positive(val, &p->usd_per_gpu_hour))
                return err_set("%s:%zu: prices: usd_per_gpu_hour: expected a positive number, got \"%s\"", path, kl, val);
            continue;
        }
        size_t i = 0;
        while (i < ARRAY_LEN(PRICE_TEXT) && strcmp(PRICE_TEXT[i].key, key)) i++;
        if (i == ARRAY_LEN(PRICE_TEXT))
            return err_set("%s:%zu: prices: unknown key \"%s\" (gpu, usd_per_gpu_hour, provider, product, source, "
                           "as_of, via, note)", path, kl, key);
        if (strlen(val) >= PRICE_TEXT[i].size) return err_set("%s:%zu: prices: %s: too long", path, kl, key);
        memcpy((char *)p + PRICE_TEXT[i].off, val, strlen(val) + 1);
    }
    if (!p->gpu[0]) return err_set("%s:%zu: prices: an entry without gpu", path, line);
    if (!(p->usd_per_gpu_hour > 0)) return err_set("%s:%zu: prices: %s: usd_per_gpu_hour is missing", path, line, p->gpu);
    return 0;
}

int cost_prices_load(const char *path, PriceTable *t)
{
    memset(t, 0, sizeof(*t));
    FILE *f = fopen(path, "rb");
    if (!f) return err_set("%s: cannot open: %s", path, strerror(errno));
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_file(&parser, f);
    int rc = 0;
    if (!yaml_parser_load(&parser, &doc)) {
        rc = err_set("%s:%zu: YAML syntax error: %s", path, parser.problem_mark.line + 1,
                     parser.problem ? parser.problem : "unknown");
        yaml_parser_delete(&parser);
        fclose(f);
        return rc;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    yaml_node_t *list = root && root->type == YAML_MAPPING_NODE ? map_get(&doc, root, "prices") : NULL;
    if (!list || list->type != YAML_SEQUENCE_NODE) {
        rc = err_set("%s: expected a top-level key \"prices\" holding a list of entries", path);
    } else {
        int n = (int)(list->data.sequence.items.top - list->data.sequence.items.start);
        t->p = xcalloc((size_t)(n ? n : 1), sizeof(Price));
        for (yaml_node_item_t *it = list->data.sequence.items.start; it < list->data.sequence.items.top && !rc; it++)
            rc = price_from_node(path, &doc, yaml_document_get_node(&doc, *it), &t->p[t->n++]);
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    fclose(f);
    if (rc) cost_prices_free(t);
    return rc;
}

int cost_price_arg(const char *arg, Price *p)
{
    memset(p, 0, sizeof(*p));
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg || (size_t)(eq - arg) >= sizeof(p->gpu))
        return err_set("cost: --price: expected GPU=USD_PER_HOUR (e.g. H100=2.99), got \"%s\"", arg);
    if (parse_positive(eq + 1, &p->usd_per_gpu_hour))
        return err_set("cost: --price %.*s: expected a positive number of dollars per GPU-hour, got \"%s\"",
                       (int)(eq - arg), arg, eq + 1);
    memcpy(p->gpu, arg, (size_t)(eq - arg));
    snprintf(p->provider, sizeof(p->provider), "--price");
    return 0;
}

void cost_prices_override(PriceTable *t, const Price *p)
{
    int k = 0;
    for (int i = 0; i < t->n; i++)
        if (strcasecmp(t->p[i].gpu, p->gpu) || !strcmp(t->p[i].provider, "--price")) t->p[k++] = t->p[i];
    t->p = xrealloc(t->p, (size_t)(k + 1) * sizeof(Price));
    t->p[k++] = *p;
    t->n = k;
}

void cost_prices_free(PriceTable *t)
{
    free(t->p);
    memset(t, 0, sizeof(*t));
}

int cost_price_matches(const Price *p, const char *device)
{
    return p->gpu[0] && strcasestr(device, p->gpu) != NULL;
}

/* ---- throughput ---- */

int cost_read_bench(const char *path, Throughput *t)
{
    memset(t, 0, sizeof(*t));
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) return err_set("%s:%d: not JSON: %s", path, je.line, je.text);
    int rc = 0;
    json_t *tps = json_object_get(j, "tokens_per_s"), *model = json_object_get(j, "model"),
           *dn = json_object_get(j, "device_name"), *dev = json_object_get(j, "device");
    if (!json_is_object(j)) rc = err_set("%s: expected a JSON object (from `anvil bench --json`)", path);
    else if (!json_is_number(tps) || !(json_number_value(tps) > 0))
        rc = err_set("%s: tokens_per_s: expected a positive number", path);
    if (!rc) {
        t->tokens_per_s = json_number_value(tps);
        snprintf(t->from, sizeof(t->from), "%s", path);
        snprintf(t->model, sizeof(t->model), "%s", json_is_string(model) ? json_string_value(model) : "?");
        snprintf(t->device, sizeof(t->device), "%s",
                 json_is_string(dn) ? json_string_value(dn) : json_is_string(dev) ? json_string_value(dev) : "?");
    }
    json_decref(j);
    return rc;
}

int cost_read_run(const char *dir, const char *device_name, Throughput *t)
{
    memset(t, 0, sizeof(*t));
    RunMetrics r;
    if (metrics_load_run(dir, &r)) return -1;
    RunSummary s;
    report_summarize(&r, &s);
    int rc = 0;
    if (isnan(s.tokens_per_s) || !(s.tokens_per_s > 0))
        rc = err_set("%s/metrics.jsonl: tokens_per_s: no step has a positive value", dir);
    else {
        t->tokens_per_s = s.tokens_per_s;
        snprintf(t->from, sizeof(t->from), "%s", dir);
        char buf[128] = "";
        if (!metrics_config_value(&r, "model.init", buf, sizeof(buf)) && buf[0]) snprintf(t->model, sizeof(t->model), "%s", buf);
        else if (!metrics_config_value(&r, "model.preset", buf, sizeof(buf)) && buf[0])
            snprintf(t->model, sizeof(t->model), "%s", buf);
        else snprintf(t->model, sizeof(t->model), "?");
        if (device_name) snprintf(t->device, sizeof(t->device), "%s", device_name);
        else if (!metrics_config_value(&r, "device", buf, sizeof(buf))) snprintf(t->device, sizeof(t->device), "%s", buf);
        else snprintf(t->device, sizeof(t->device), "?");
    }
    metrics_run_free(&r);
    return rc;
}

/* ---- arithmetic ---- */

double cost_seconds(double tokens, double tokens_per_s)
{
    return tokens / tokens_per_s;
}

double cost_usd(double tokens, double tokens_per_s, double usd_per_hour)
{
    return cost_seconds(tokens, tokens_per_s) / SECONDS_PER_HOUR * usd_per_hour;
}

int cost_parse_tokens(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    double scale = 1;
    if (end != s && *end && !end[1]) {
        switch (*end) {
        case 'k': case 'K': scale = 1e3; end++; break;
        case 'M': scale = 1e6; end++; break;
        case 'B': case 'G': scale = 1e9; end++; break;
        case 'T': scale = 1e12; end++; break;
        default: break;
        }
    }
    if (end == s || *end || errno || !isfinite(v) || v <= 0)
        return err_set("cost: --tokens: expected a positive count such as 1e9, 300M or 1B, got \"%s\"", s);
    *out = v * scale;
    return 0;
}
