#include "train/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "data/tokenizer.h"
#include "io/fsutil.h"
#include "io/hf.h"
#include "io/safetensors.h"

#define STEP_FMT "step-%07d"
#define STATE_FILE "trainer_state.json"
#define OPT_BASE "optimizer"
#define STATE_VERSION 1

char *ckpt_dir_name(const char *out_dir, int step)
{
    char name[32];
    snprintf(name, sizeof(name), STEP_FMT, step);
    return fs_join(out_dir, name);
}

static int write_state(const char *dir, const CheckpointData *d)
{
    const TrainerState *s = d->state;
    json_t *j = json_object();
    json_object_set_new(j, "format", json_string("anvil-trainer-state"));
    json_object_set_new(j, "version", json_integer(STATE_VERSION));
    json_object_set_new(j, "step", json_integer(s->step));
    json_object_set_new(j, "tokens_seen", json_integer((json_int_t)s->tokens_seen));
    json_object_set_new(j, "elapsed_s", json_real(s->elapsed_s));
    json_t *ld = json_object();
    /* 64-bit values as strings: JSON numbers lose precision past 2^53 */
    char buf[32];
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)s->loader.epoch);
    json_object_set_new(ld, "epoch", json_string(buf));
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)s->loader.pos);
    json_object_set_new(ld, "pos", json_string(buf));
    json_object_set_new(j, "loader", ld);
    json_object_set_new(j, "config", json_string(d->config_yaml ? d->config_yaml : ""));
    char *text = json_dumps(j, JSON_INDENT(2));
    json_decref(j);
    char *path = fs_join(dir, STATE_FILE);
    size_t len = strlen(text);
    text = xrealloc(text, len + 2);
    text[len] = '\n';
    text[len + 1] = '\0';
    int rc = fs_write_atomic(path, text, len + 1);
    free(path);
    free(text);
    return rc;
}

static int write_optimizer(const char *dir, const CheckpointData *d)
{
    const ParamTable *pt = &d->m->pt;
    int per = d->bf16_weights ? 3 : 2;
    StWriteTensor *t = xcalloc((size_t)pt->n * per, sizeof(StWriteTensor));
    char **names = xcalloc((size_t)pt->n * per, sizeof(char *));
    int n = 0;
    for (int i = 0; i < pt->n; i++) {
        const Param *p = &pt->p[i];
        const float *src[3] = {d->adam_m, d->adam_v, d->params};
        const char *prefix[3] = {"m.", "v.", "master."};
        for (int k = 0; k < per; k++) {
            size_t len = strlen(prefix[k]) + strlen(p->name) + 1;
            names[n] = xmalloc(len);
            snprintf(names[n], len, "%s%s", prefix[k], p->name);
            StWriteTensor *w = &t[n];
            w->name = names[n];
            w->dtype = ST_F32;
            w->ndim = p->ndim;
            w->shape[0] = p->shape[0];
            w->shape[1] = p->shape[1];
            w->data = src[k] + p->offset;
            w->src_f32 = 1;
            n++;
        }
    }
    StMeta meta[1] = {{"format", "anvil-adamw"}};
    int rc = st_write_dir(dir, OPT_BASE, t, n, meta, 1, 0);
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    free(t);
    return rc;
}

static int step_of(const char *name)
{
    int s;
    char tail;
    if (strncmp(name, "step-", 5) || sscanf(name + 5, "%d%c", &s, &tail) != 1) return -1;
    return s;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Steps of the complete checkpoints in out_dir, ascending. With note, a step
 * directory without trainer_state.json (incomplete) is named on stderr. */
static int list_steps(const char *out_dir, int **steps, int note)
{
    DIR *dir = opendir(out_dir);
    int n = 0, cap = 16;
    *steps = xmalloc(sizeof(int) * cap);
    if (!dir) return 0;
    struct dirent *e;
    while ((e = readdir(dir))) {
        int s = step_of(e->d_name);
        if (s < 0) continue;
        char *sub = fs_join(out_dir, e->d_name);
        char *st = fs_join(sub, STATE_FILE);
        int ok = fs_exists(st);
        if (!ok && note)
            fprintf(stderr, "anvil: note: skipping %s: no %s (an incomplete checkpoint)\n", sub, STATE_FILE);
        free(sub);
        free(st);
        if (!ok) continue;
        if (n == cap) *steps = xrealloc(*steps, sizeof(int) * (cap *= 2));
        (*steps)[n++] = s;
    }
    closedir(dir);
    qsort(*steps, n, sizeof(int), cmp_int);
    return n;
}

static int point_final(const char *out_dir, int step)
{
    char target[32], tmpname[64];
    snprintf(target, sizeof(target), STEP_FMT, step);
    snprintf(tmpname, sizeof(tmpname), ".final.tmp.%d", (int)getpid());
    char *tmp = fs_join(out_dir, tmpname), *final = fs_join(out_dir, "final");
    unlink(tmp);
    int rc = 0;
    if (symlink(target, tmp) || rename(tmp, final)) {
        rc = err_set("%s: cannot update the 'final' link: %s", final, strerror(errno));
        unlink(tmp);
    }
    free(tmp);
    free(final);
    return rc;
}

int ckpt_save(const char *out_dir, const CheckpointData *d, int keep)
{
    char tmpname[64];
    snprintf(tmpname, sizeof(tmpname), ".step-%07d.tmp.%d", d->state->step, (int)getpid());
    char *tmp = fs_join(out_dir, tmpname), *final = ckpt_dir_name(out_dir, d->state->step);
    int rc = -1;
    fs_rm_rf(tmp);
    if (fs_mkdir_p(tmp)) goto out;
    if (hf_write_files(tmp, &d->m->cfg, &d->m->pt, d->params, d->bf16_weights ? DTYPE_BF16 : DTYPE_F32)) goto out;
    if (write_optimizer(tmp, d)) goto out;
    if (d->tok && tokenizer_save(d->tok, tmp)) goto out;
    if (d->config_yaml) {
        char *p = fs_join(tmp, "config.yaml");
        int r = fs_write_atomic(p, d->config_yaml, strlen(d->config_yaml));
        free(p);
        if (r) goto out;
    }
    /* the state file marks the checkpoint complete: written last */
    if (write_state(tmp, d)) goto out;
    if (fs_publish_dir(tmp, final)) goto out;
    if (point_final(out_dir, d->state->step)) goto out;
    rc = 0;
    if (keep > 0) {
        int *steps, n = list_steps(out_dir, &steps, 0);
        for (int i = 0; i < n - keep; i++) {
            char *old = ckpt_dir_name(out_dir, steps[i]);
            fs_rm_rf(old);
            free(old);
        }
        free(steps);
    }
out:
    if (rc) {
        err_prefix("checkpoint %s", final);
        fs_rm_rf(tmp);
    }
    free(tmp);
    free(final);
    return rc;
}

char *ckpt_find_latest(const char *run_dir)
{
    char *st = fs_join(run_dir, STATE_FILE);
    int direct = fs_exists(st);
    free(st);
    if (direct) return xstrdup(run_dir);
    if (!fs_is_dir(run_dir)) {
        err_set("%s: no such run directory", run_dir);
        return NULL;
    }
    int *steps, n = list_steps(run_dir, &steps, 1);
    char *path = n ? ckpt_dir_name(run_dir, steps[n - 1]) : NULL;
    free(steps);
    if (!path) err_set("%s: no checkpoint (step-NNNNNNN/ with %s) to resume from", run_dir, STATE_FILE);
    return path;
}

static int get_u64_string(json_t *obj, const char *key, uint64_t *out, const char *path)
{
    json_t *v = json_object_get(obj, key);
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        *out = (uint64_t)json_integer_value(v);
        return 0;
    }
    char *end;
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;
    if (!s || *s < '0' || *s > '9')
        return err_set("%s: loader.%s: expected a non-negative integer", path, key);
    errno = 0;
    *out = strtoull(s, &end, 10);
    if (*end || errno == ERANGE) return err_set("%s: loader.%s: expected a non-negative integer below 2^64", path, key);
    return 0;
}

int ckpt_read_state(const char *ckpt_dir, TrainerState *st)
{
    char *path = fs_join(ckpt_dir, STATE_FILE);
    json_error_t jerr;
    json_t *j = json_load_file(path, 0, &jerr);
    int rc = -1;
    memset(st, 0, sizeof(*st));
    if (!j) {
        err_set("%s: %s (line %d)", path, jerr.text, jerr.line);
        goto out;
    }
    if (!json_is_object(j)) {
        err_set("%s: expected a JSON object", path);
        goto out;
    }
    json_t *step = json_object_get(j, "step"), *ld = json_object_get(j, "loader");
    /* the step counter is an int: refuse what does not fit rather than wrap */
    if (!json_is_integer(step) || json_integer_value(step) < 0 || json_integer_value(step) > INT_MAX) {
        err_set("%s: step: expected an integer in [0, %d]", path, INT_MAX);
        goto out;
    }
    if (!json_is_object(ld)) {
        err_set("%s: loader: expected an object", path);
        goto out;
    }
    st->step = (int)json_integer_value(step);
    if (get_u64_string(ld, "epoch", &st->loader.epoch, path) || get_u64_string(ld, "pos", &st->loader.pos, path))
        goto out;
    json_t *tok = json_object_get(j, "tokens_seen"), *el = json_object_get(j, "elapsed_s");
    if (tok && !(json_is_integer(tok) && json_integer_value(tok) >= 0)) {
        err_set("%s: tokens_seen: expected a non-negative integer", path);
        goto out;
    }
    if (el && !(json_is_number(el) && isfinite(json_number_value(el)) && json_number_value(el) >= 0)) {
        err_set("%s: elapsed_s: expected a finite number of seconds >= 0", path);
        goto out;
    }
    st->tokens_seen = tok ? (uint64_t)json_integer_value(tok) : 0;
    st->elapsed_s = el ? json_number_value(el) : 0;
    rc = 0;
out:
    json_decref(j);
    free(path);
    return rc;
}

int ckpt_read_optimizer(const char *ckpt_dir, const Model *m, float *params, float *adam_m, float *adam_v)
{
    const ParamTable *pt = &m->pt;
    StSet set;
    if (st_set_open_dir(&set, ckpt_dir, OPT_BASE)) return -1;
    int rc = -1, have_master = 1;
    for (int i = 0; i < pt->n && have_master; i++) {
        char name[96];
        snprintf(name, sizeof(name), "master.%s", pt->p[i].name);
        if (!st_set_find(&set, name, NULL)) have_master = 0;
    }
    for (int i = 0; i < pt->n; i++) {
        const Param *p = &pt->p[i];
        float *dst[3] = {adam_m, adam_v, params};
        const char *prefix[3] = {"m.", "v.", "master."};
        for (int k = 0; k < (have_master ? 3 : 2); k++) {
            char name[96];
            snprintf(name, sizeof(name), "%s%s", prefix[k], p->name);
            const StFile *f;
            const StTensor *t = st_set_find(&set, name, &f);
            if (!t) {
                err_set("%s/%s.safetensors: %s: missing", ckpt_dir, OPT_BASE, name);
                goto out;
            }
            if (t->dtype != ST_F32 || t->numel != p->numel) {
                err_set("%s: %s: expected F32 with %zu elements", f->path, name, p->numel);
                goto out;
            }
            st_to_f32(t, dst[k] + p->offset);
        }
    }
    if (!have_master && hf_read_weights(ckpt_dir, &m->cfg, pt, params)) goto out;
    rc = 0;
out:
    st_set_close(&set);
    return rc;
}
