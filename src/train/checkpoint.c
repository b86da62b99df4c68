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
#include "model/ternary.h"
#include "io/fsutil.h"
#include "io/hf.h"
#include "io/peft.h"
#include "io/safetensors.h"

#define STEP_FMT "step-%07d"
#define STATE_FILE "trainer_state.json"
#define OPT_BASE "optimizer"
#define STATE_VERSION 1
#define MANIFEST_FILE "optimizer-manifest.json"
#define SHARD_FILE_FMT "optimizer-rank-%d-of-%d.safetensors"
#define SHARD_FORMAT "anvil-adamw-shards"
#define SHARD_VERSION 1

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
    StWriteTensor *t = xcalloc((size_t)pt->n * per + 1, sizeof(StWriteTensor));
    char **names = xcalloc((size_t)pt->n * per + 1, sizeof(char *));
    int n = 0;
    for (int i = 0; i < pt->n; i++) {
        const Param *p = &pt->p[i];
        if (p->kind != PARAM_TRAIN) continue; /* frozen: no optimizer state, the weights are in the model */
        const float *src[3] = {d->adam_m + p->seg, d->adam_v + p->seg, d->params + p->offset};
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
            w->data = src[k];
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

char *ckpt_tmp_dir(const char *out_dir, int step, int tag)
{
    char tmpname[64];
    snprintf(tmpname, sizeof(tmpname), ".step-%07d.tmp.%d", step, tag);
    return fs_join(out_dir, tmpname);
}

int ckpt_begin(const char *tmp)
{
    fs_rm_rf(tmp);
    return fs_mkdir_p(tmp);
}

void ckpt_abort(const char *tmp)
{
    fs_rm_rf(tmp);
}

/* optimizer-manifest.json: the layout of the shards, so that any world size can find its part. */
static int write_manifest(const char *dir, const CheckpointData *d)
{
    const ParamTable *pt = &d->m->pt;
    json_t *j = json_object(), *shards = json_array(), *tensors = json_array();
    json_object_set_new(j, "format", json_string(SHARD_FORMAT));
    json_object_set_new(j, "version", json_integer(SHARD_VERSION));
    json_object_set_new(j, "world", json_integer(d->world));
    json_object_set_new(j, "zero", json_integer(d->zero));
    json_object_set_new(j, "n_train", json_integer((json_int_t)pt->n_train));
    json_object_set_new(j, "master", json_boolean(d->bf16_weights));
    for (int r = 0; r < d->world; r++) {
        char name[64];
        snprintf(name, sizeof(name), SHARD_FILE_FMT, r, d->world);
        json_t *e = json_object();
        json_object_set_new(e, "file", json_string(name));
        json_object_set_new(e, "lo", json_integer((json_int_t)d->shard_lo[r]));
        json_object_set_new(e, "hi", json_integer((json_int_t)d->shard_hi[r]));
        json_array_append_new(shards, e);
    }
    for (int i = 0; i < pt->n; i++) {
        const Param *p = &pt->p[i];
        if (p->kind != PARAM_TRAIN) continue;
        json_t *e = json_object();
        json_object_set_new(e, "name", json_string(p->name));
        json_object_set_new(e, "seg", json_integer((json_int_t)p->seg));
        json_object_set_new(e, "numel", json_integer((json_int_t)p->numel));
        json_array_append_new(tensors, e);
    }
    json_object_set_new(j, "shards", shards);
    json_object_set_new(j, "tensors", tensors);
    char *text = json_dumps(j, JSON_INDENT(1));
    json_decref(j);
    char *path = fs_join(dir, MANIFEST_FILE);
    int rc = fs_write_atomic(path, text, strlen(text));
    free(path);
    free(text);
    return rc;
}

/* ---- integer-ternary state: TERN_BASE.safetensors ---- */

#define TERN_BASE "ternary"
#define TERN_ARRAYS 4

/* The four int8 arrays of a ternary tensor as (prefix, dtype, elements). */
static void tern_layout(const Param *p, int group, const char **prefix, StDtype *dt, size_t *len)
{
    static const char *const pre[TERN_ARRAYS] = {"trits.", "exp.", "tacc.", "eacc."};
    size_t ng = tern_groups(p->numel, group);
    size_t l[TERN_ARRAYS] = {trit_bytes(p->numel), ng, p->numel, ng};
    for (int k = 0; k < TERN_ARRAYS; k++) {
        prefix[k] = pre[k];
        dt[k] = k == 0 ? ST_U8 : ST_I8;
        len[k] = l[k];
    }
}

/* Every PARAM_TERNARY tensor's packed trits (U8), exponents and accumulators (I8), exactly as the store
 * holds them: nothing float. */
static int write_ternary(const char *dir, const Model *m)
{
    const ParamTable *pt = &m->pt;
    int nt = 0;
    for (int i = 0; i < pt->n; i++) nt += pt->p[i].kind == PARAM_TERNARY;
    if (!nt) return 0;
    StWriteTensor *t = xcalloc((size_t)nt * TERN_ARRAYS, sizeof(StWriteTensor));
    char **names = xcalloc((size_t)nt * TERN_ARRAYS, sizeof(char *));
    void **bufs = xcalloc((size_t)nt * TERN_ARRAYS, sizeof(void *));
    int n = 0;
    for (int i = 0; i < pt->n; i++) {
        const Param *p = &pt->p[i];
        if (p->kind != PARAM_TERNARY) continue;
        const char *prefix[TERN_ARRAYS];
        StDtype dt[TERN_ARRAYS];
        size_t len[TERN_ARRAYS];
        tern_layout(p, m->ps.tern[i].group, prefix, dt, len);
        for (int k = 0; k < TERN_ARRAYS; k++) bufs[n + k] = xmalloc(len[k] ? len[k] : 1);
        params_tern_download(&m->ps, i, bufs[n], bufs[n + 1], bufs[n + 2], bufs[n + 3]);
        for (int k = 0; k < TERN_ARRAYS; k++, n++) {
            size_t l = strlen(prefix[k]) + strlen(p->name) + 1;
            names[n] = xmalloc(l);
            snprintf(names[n], l, "%s%s", prefix[k], p->name);
            t[n] = (StWriteTensor){.name = names[n], .dtype = dt[k], .ndim = 1, .shape = {(int64_t)len[k]},
                                   .data = bufs[n]};
        }
    }
    char group[16];
    snprintf(group, sizeof(group), "%d", pt->tern_group);
    StMeta meta[2] = {{"format", "anvil-ternary"}, {"group", group}};
    int rc = st_write_dir(dir, TERN_BASE, t, n, meta, 2, 0);
    for (int k = 0; k < n; k++) free(names[k]), free(bufs[k]);
    free(names);
    free(bufs);
    free(t);
    return rc;
}

/* The "group" metadata of ternary.safetensors (the weights per exponent group, 1 .. 2^24); -1 with err_set()
 * naming the file when it is missing or not such a number. */
static int tern_file_group(const StSet *set, int *group)
{
    const StFile *f0 = &set->files[0];
    const char *gs = st_meta_get(f0, "group");
    char *end = NULL;
    long g = gs ? strtol(gs, &end, 10) : 0;
    if (!gs || end == gs || *end || g < 1 || g > (1L << 24))
        return err_set("%s: metadata \"group\": expected the weights per exponent group (1 .. 2^24), got %s%s%s",
                       f0->path, gs ? "\"" : "", gs ? gs : "none", gs ? "\"" : "");
    *group = (int)g;
    return 0;
}

/* The state of every PARAM_TERNARY tensor of m from dir's ternary.safetensors. resume: all four arrays of
 * each, required. init (model.init): the trits and exponents of those it holds (the accumulators zero; a
 * tensor it lacks keeps what its float values gave), its group m's. */
static int read_ternary(const char *dir, Model *m, int init)
{
    const ParamTable *pt = &m->pt;
    int nt = 0;
    for (int i = 0; i < pt->n; i++) nt += pt->p[i].kind == PARAM_TERNARY;
    if (!nt) return 0;
    StSet set;
    if (st_set_open_dir(&set, dir, TERN_BASE))
        return init ? -1
                    : err_set("%s: no %s.safetensors: the checkpoint was not trained with train.optimizer: ternary",
                              dir, TERN_BASE);
    int rc = -1, group = 0;
    if (init && tern_file_group(&set, &group)) goto out;
    if (init && group != pt->tern_group) {
        err_set("%s: metadata \"group\" is %d, but train.ternary.group is %d: its trits and exponents cannot be "
                "kept exactly (set train.ternary.group to the checkpoint's)",
                set.files[0].path, group, pt->tern_group);
        goto out;
    }
    for (int i = 0; i < pt->n; i++) {
        const Param *p = &pt->p[i];
        if (p->kind != PARAM_TERNARY) continue;
        const char *prefix[TERN_ARRAYS];
        StDtype dt[TERN_ARRAYS];
        size_t len[TERN_ARRAYS];
        const void *src[TERN_ARRAYS] = {NULL};
        tern_layout(p, m->ps.tern[i].group, prefix, dt, len);
        int want = init ? 2 : TERN_ARRAYS; /* init: trits and exponents */
        for (int k = 0; k < want; k++) {
            char name[96];
            snprintf(name, sizeof(name), "%s%s", prefix[k], p->name);
            const StFile *f;
            const StTensor *t = st_set_find(&set, name, &f);
            if (!t && init) continue; /* a tensor the checkpoint kept in float: quantized from its values */
            if (!t) {
                err_set("%s/%s.safetensors: %s: missing", dir, TERN_BASE, name);
                goto out;
            }
            if (t->dtype != dt[k] || t->numel != len[k]) {
                err_set("%s: %s: expected %s with %zu elements (train.ternary.group %d)", f->path, name,
                        dt[k] == ST_U8 ? "U8" : "I8", len[k], pt->tern_group);
                goto out;
            }
            src[k] = t->data;
        }
        if (init && !src[0] != !src[1]) {
            err_set("%s/%s.safetensors: %s has %s but not %s", dir, TERN_BASE, p->name, src[0] ? "trits" : "exponents",
                    src[0] ? "exponents" : "trits");
            goto out;
        }
        if (src[0]) params_tern_upload(&m->ps, i, src[0], src[1], src[2], src[3]);
    }
    rc = 0;
out:
    st_set_close(&set);
    return rc;
}

int ckpt_read_ternary(const char *ckpt_dir, Model *m) { return read_ternary(ckpt_dir, m, 0); }

int ckpt_init_ternary(const char *dir, Model *m) { return read_ternary(dir, m, 1); }

int ckpt_has_ternary(const char *dir)
{
    char name[] = TERN_BASE ".safetensors";
    char *path = fs_join(dir, name);
    int yes = fs_exists(path);
    free(path);
    return yes;
}

Model *ckpt_load_ternary_model(const char *dir, const Backend *be)
{
    ModelConfig c;
    if (hf_read_config(dir, &c)) return NULL;
    StSet set;
    if (st_set_open_dir(&set, dir, TERN_BASE)) return NULL;
    if (tern_file_group(&set, &c.tern_group)) {
        st_set_close(&set);
        return NULL;
    }
    c.tern_frozen = 1;
    c.tern_fused = 0;
    ParamTable pt;
    param_table_build(&pt, &c);
    ParamKind *kinds = xmalloc((size_t)pt.n * sizeof(ParamKind));
    int nt = 0, bad = 0;
    for (int i = 0; i < pt.n; i++) {
        char name[96];
        snprintf(name, sizeof(name), "trits.%s", pt.p[i].name);
        kinds[i] = st_set_find(&set, name, NULL) ? PARAM_TERNARY : PARAM_FROZEN;
        nt += kinds[i] == PARAM_TERNARY;
    }
    for (int k = 0; k < set.nfiles && !bad; k++) /* every tensor of the file is one of the model's */
        for (int j = 0; j < set.files[k].n && !bad; j++) {
            const char *tn = set.files[k].t[j].name, *dot = strchr(tn, '.');
            if (dot && param_find(&pt, dot + 1) >= 0) continue;
            err_set("%s: tensor %s: not the state of one of the model's tensors (config.json)", set.files[k].path, tn);
            bad = 1;
        }
    st_set_close(&set);
    param_table_free(&pt);
    if (!bad && !nt) err_set("%s/%s.safetensors: holds no trits.* tensor", dir, TERN_BASE), bad = 1;
    if (bad) {
        free(kinds);
        return NULL;
    }
    Model *m = model_create_kinds(&c, be, kinds);
    free(kinds);
    /* the float tensors from model.safetensors; the ternary ones (there as trit x 2^E) from their state only,
     * not quantized from those values first */
    float *host = xmalloc(m->pt.total * sizeof(float));
    int rc = hf_read_weights(dir, &m->cfg, &m->pt, host);
    for (int i = 0; !rc && i < m->pt.n; i++)
        if (m->pt.p[i].kind != PARAM_TERNARY) params_upload(&m->ps, i, host + m->pt.p[i].offset);
    free(host);
    if (rc || ckpt_read_ternary(dir, m)) {
        model_free(m);
        return NULL;
    }
    return m;
}

int ckpt_write_main(const char *tmp, const CheckpointData *d)
{
    int dtype = d->bf16_weights ? DTYPE_BF16 : DTYPE_F32;
    if (d->adapter_base ? peft_write_host(tmp, d->m, d->params, d->adapter_base, dtype)
                        : hf_write_files(tmp, &d->m->cfg, &d->m->pt, d->params, dtype))
        return -1;
    if (d->shard_lo ? write_manifest(tmp, d) : write_optimizer(tmp, d)) return -1;
    if (write_ternary(tmp, d->m)) return -1;
    if (d->tok && tokenizer_save(d->tok, tmp)) return -1;
    if (d->config_yaml) {
        char *p = fs_join(tmp, "config.yaml");
        int r = fs_write_atomic(p, d->config_yaml, strlen(d->config_yaml));
        free(p);
        if (r) return -1;
    }
    return 0;
}

int ckpt_write_shard(const char *tmp, const CheckpointShard *s)
{
    char name[64], lo[32], hi[32];
    snprintf(name, sizeof(name), SHARD_FILE_FMT, s->rank, s->world);
    snprintf(lo, sizeof(lo), "%zu", s->lo);
    snprintf(hi, sizeof(hi), "%zu", s->hi);
    const float *src[3] = {s->adam_m, s->adam_v, s->master};
    const char *names[3] = {"m", "v", "master"};
    StWriteTensor t[3];
    int n = 0;
    for (int k = 0; k < 3; k++) {
        if (!src[k]) continue;
        t[n] = (StWriteTensor){.name = names[k], .dtype = ST_F32, .ndim = 1, .data = src[k], .src_f32 = 1};
        t[n].shape[0] = (int64_t)(s->hi - s->lo);
        n++;
    }
    StMeta meta[3] = {{"format", "anvil-adamw-shard"}, {"lo", lo}, {"hi", hi}};
    char *path = fs_join(tmp, name);
    int rc = st_write(path, t, n, meta, 3);
    free(path);
    return rc;
}

int ckpt_publish(const char *out_dir, const char *tmp, const CheckpointData *d, int keep)
{
    char *final = ckpt_dir_name(out_dir, d->state->step);
    int rc = -1;
    /* the state file marks the checkpoint complete: written last */
    if (write_state(tmp, d) || fs_publish_dir(tmp, final) || (d->finished && point_final(out_dir, d->state->step)))
        goto out;
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
    free(final);
    return rc;
}

int ckpt_save(const char *out_dir, const CheckpointData *d, int keep)
{
    char *tmp = ckpt_tmp_dir(out_dir, d->state->step, (int)getpid()), *final = ckpt_dir_name(out_dir, d->state->step);
    int rc = ckpt_begin(tmp) || ckpt_write_main(tmp, d) || ckpt_publish(out_dir, tmp, d, keep) ? -1 : 0;
    if (rc) {
        err_prefix("checkpoint %s", final);
        ckpt_abort(tmp);
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
        if (pt->p[i].kind == PARAM_TRAIN && !st_set_find(&set, name, NULL)) have_master = 0;
    }
    /* every weight from the model directory first (an adapter checkpoint has none: the caller's image
     * holds its base and adapters); the fp32 masters then replace the trainable ones */
    if (!peft_is_adapter_dir(ckpt_dir) && hf_read_weights(ckpt_dir, &m->cfg, pt, params)) goto out;
    for (int i = 0; i < pt->n; i++) {
        const Param *p = &pt->p[i];
        if (p->kind != PARAM_TRAIN) continue;
        float *dst[3] = {adam_m + p->seg, adam_v + p->seg, params + p->offset};
        const char *prefix[3] = {"m.", "v.", "master."};
        for (int k = 0; k < (have_master ? 3 : 2); k++) {
            char name[96];
            snprintf(name, sizeof(name), "%s%s", prefix[k], p->name);
            const StFile *f;
            const StTensor *t = st_set_find(&set, name, &f);
            if (!t) {
                err_set("%s/%s.safetensors: %s: missing (was the tensor frozen in that run? compare model.freeze "
                        "with %s/config.yaml)",
                        ckpt_dir, OPT_BASE, name, ckpt_dir);
                goto out;
            }
            if (t->dtype != ST_F32 || t->numel != p->numel) {
                err_set("%s: %s: expected F32 with %zu elements", f->path, name, p->numel);
                goto out;
            }
            st_to_f32(t, dst[k]);
        }
    }
    rc = 0;
out:
    st_set_close(&set);
    return rc;
}

/* ---- the optimizer state of a part of the segment, from either layout ---- */

static int json_size(json_t *o, const char *key, size_t *out)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
    *out = (size_t)json_integer_value(v);
    return 0;
}

/* The manifest's tensor table must be this model's trainable segment. */
static int check_layout(const char *path, json_t *tensors, const ParamTable *pt, const char *ckpt_dir)
{
    size_t k = 0;
    for (int i = 0; i < pt->n; i++) {
        const Param *p = &pt->p[i];
        if (p->kind != PARAM_TRAIN) continue;
        json_t *e = json_array_get(tensors, k++);
        json_t *nm = json_object_get(e, "name");
        size_t seg, numel;
        if (!json_is_string(nm) || json_size(e, "seg", &seg) || json_size(e, "numel", &numel))
            return err_set("%s: tensors: %s is not in the shards (was it frozen there? compare model.freeze with "
                           "%s/config.yaml)",
                           path, p->name, ckpt_dir);
        if (strcmp(json_string_value(nm), p->name) || seg != p->seg || numel != p->numel)
            return err_set("%s: tensors: %s at %zu (%zu elements) where this run has %s at %zu (%zu); compare "
                           "model.freeze with %s/config.yaml",
                           path, json_string_value(nm), seg, numel, p->name, p->seg, p->numel, ckpt_dir);
    }
    if (k != json_array_size(tensors))
        return err_set("%s: tensors: %zu trainable tensors, this run has %zu (compare model.freeze with %s/config.yaml)",
                       path, json_array_size(tensors), k, ckpt_dir);
    return 0;
}

/* One shard file: copy its moments where they overlap [lo, hi), and its masters into params. */
static int read_shard(const char *ckpt_dir, const char *file, size_t slo, size_t shi, int master, const Model *m,
                      float *params, size_t lo, size_t hi, float *adam_m, float *adam_v)
{
    const ParamTable *pt = &m->pt;
    char *path = fs_join(ckpt_dir, file);
    StFile f;
    int rc = -1;
    if (st_open(&f, path)) goto out_nofile;
    const char *names[3] = {"m", "v", "master"};
    const StTensor *t[3] = {0};
    for (int k = 0; k < (master ? 3 : 2); k++) {
        t[k] = st_find(&f, names[k]);
        if (!t[k] || t[k]->dtype != ST_F32 || t[k]->numel != shi - slo) {
            err_set("%s: %s: expected F32 with %zu elements", path, names[k], shi - slo);
            goto out;
        }
    }
    size_t a = MAX(lo, slo), e = MIN(hi, shi);
    for (int k = 0; k < 2 && e > a; k++) {
        float *dst = (k ? adam_v : adam_m) + (a - lo);
        memcpy(dst, (const float *)t[k]->data + (a - slo), (e - a) * sizeof(float));
    }
    for (int i = 0; master && i < pt->n; i++) {
        const Param *p = &pt->p[i];
        if (p->kind != PARAM_TRAIN) continue;
        size_t pa = MAX(p->seg, slo), pe = MIN(p->seg + p->numel, shi);
        if (pe > pa)
            memcpy(params + p->offset + (pa - p->seg), (const float *)t[2]->data + (pa - slo), (pe - pa) * sizeof(float));
    }
    rc = 0;
out:
    st_close(&f);
out_nofile:
    free(path);
    return rc;
}

static int read_sharded(const char *ckpt_dir, const char *mpath, const Model *m, float *params, size_t lo, size_t hi,
                        float *adam_m, float *adam_v)
{
    const ParamTable *pt = &m->pt;
    json_error_t jerr;
    json_t *j = json_load_file(mpath, 0, &jerr);
    int rc = -1;
    if (!j) return err_set("%s: %s (line %d)", mpath, jerr.text, jerr.line);
    json_t *fmt = json_object_get(j, "format"), *shards = json_object_get(j, "shards"),
           *tensors = json_object_get(j, "tensors");
    size_t n_train;
    if (!json_is_string(fmt) || strcmp(json_string_value(fmt), SHARD_FORMAT) || !json_is_array(shards) ||
        !json_is_array(tensors) || json_size(j, "n_train", &n_train)) {
        err_set("%s: not an anvil optimizer manifest (format, n_train, shards, tensors)", mpath);
        goto out;
    }
    if (n_train != pt->n_train) {
        err_set("%s: n_train %zu, this run's trainable segment has %zu elements (compare model.freeze with %s/config.yaml)",
                mpath, n_train, pt->n_train, ckpt_dir);
        goto out;
    }
    if (check_layout(mpath, tensors, pt, ckpt_dir)) goto out;
    int master = json_is_true(json_object_get(j, "master"));
    if (!peft_is_adapter_dir(ckpt_dir) && hf_read_weights(ckpt_dir, &m->cfg, pt, params)) goto out;
    size_t covered = 0;
    for (size_t i = 0; i < json_array_size(shards); i++) {
        json_t *e = json_array_get(shards, i), *file = json_object_get(e, "file");
        size_t slo, shi;
        if (!json_is_string(file) || json_size(e, "lo", &slo) || json_size(e, "hi", &shi) || shi < slo || shi > n_train ||
            strchr(json_string_value(file), '/')) {
            err_set("%s: shards[%zu]: expected {file, lo, hi} inside the segment", mpath, i);
            goto out;
        }
        covered += shi - slo;
        if (!master && (shi <= lo || slo >= hi)) continue; /* nothing of ours in it */
        if (read_shard(ckpt_dir, json_string_value(file), slo, shi, master, m, params, lo, hi, adam_m, adam_v))
            goto out;
    }
    if (covered != n_train) {
        err_set("%s: the shards cover %zu of the %zu elements of the segment", mpath, covered, n_train);
        goto out;
    }
    rc = 0;
out:
    json_decref(j);
    return rc;
}

int ckpt_read_optimizer_range(const char *ckpt_dir, const Model *m, float *params, size_t lo, size_t hi,
                              float *adam_m, float *adam_v)
{
    char *mpath = fs_join(ckpt_dir, MANIFEST_FILE);
    int rc;
    if (fs_exists(mpath)) {
        rc = read_sharded(ckpt_dir, mpath, m, params, lo, hi, adam_m, adam_v);
    } else if (lo == 0 && hi == m->pt.n_train) {
        rc = ckpt_read_optimizer(ckpt_dir, m, params, adam_m, adam_v);
    } else {
        size_t n = m->pt.n_train ? m->pt.n_train : 1;
        float *fm = xmalloc(n * sizeof(float)), *fv = xmalloc(n * sizeof(float));
        rc = ckpt_read_optimizer(ckpt_dir, m, params, fm, fv);
        if (!rc && hi > lo) {
            memcpy(adam_m, fm + lo, (hi - lo) * sizeof(float));
            memcpy(adam_v, fv + lo, (hi - lo) * sizeof(float));
        }
        free(fm);
        free(fv);
    }
    free(mpath);
    return rc;
}
