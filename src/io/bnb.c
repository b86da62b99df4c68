/* bnb.c - bitsandbytes 4-bit directories in and out (see bnb.h).
 *
 * Names, dtypes and JSON keys as bitsandbytes 0.50.2 (QuantState.as_dict,
 * from_dict, pack_dict_to_tensor) and transformers 5.23 (Bnb4BitHfQuantizer,
 * BitsAndBytesConfig) write them. */
#include "io/bnb.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "io/fsutil.h"

#define QS_KEY ".quant_state.bitsandbytes__"
/* Companion suffixes of a 4-bit weight W (W + suffix). */
static const char *state_suffix[] = {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"};
/* QuantState.__eq__ compares the code with atol 1e-6; so do we (the 4-bit
 * kernels use their built-in table whatever the file holds). */
#define QUANT_MAP_ATOL 1e-6
/* transformers' default llm_int8_threshold, written for completeness. */
#define BNB_INT8_THRESHOLD 6.0

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

int bnb_is_state_name(const char *name)
{
    if (strstr(name, QS_KEY)) return 1;
    for (size_t i = 0; i < ARRAY_LEN(state_suffix); i++)
        if (ends_with(name, state_suffix[i])) return 1;
    return 0;
}

/* ---- config.json ---- */

static const char *dtype_json_name(StDtype t)
{
    return t == ST_BF16 ? "bfloat16" : t == ST_F16 ? "float16" : "float32";
}

static int dtype_from_json(const char *s, StDtype *t)
{
    if (!strcmp(s, "bfloat16"))
        *t = ST_BF16;
    else if (!strcmp(s, "float16"))
        *t = ST_F16;
    else if (!strcmp(s, "float32"))
        *t = ST_F32;
    else
        return -1;
    return 0;
}

static int qc_bool(json_t *qc, const char *key, int def)
{
    json_t *v = json_object_get(qc, key);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

static int qc_str(const char *path, json_t *qc, const char *key, const char *def, char *out, size_t n)
{
    json_t *v = json_object_get(qc, key);
    if (!v || json_is_null(v)) {
        snprintf(out, n, "%s", def);
        return 0;
    }
    if (!json_is_string(v)) return err_set("%s: quantization_config.%s: expected a string", path, key);
    snprintf(out, n, "%s", json_string_value(v));
    return 0;
}

int bnb_read_config(const char *dir, BnbConfig *c)
{
    char *path = fs_join(dir, "config.json"), *text = NULL;
    size_t n;
    json_t *root = NULL;
    int rc = -1;
    memset(c, 0, sizeof(*c));
    if (fs_read_file(path, &text, &n) != 0) goto out;
    json_error_t jerr;
    root = json_loadb(text, n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root || !json_is_object(root)) {
        err_set("%s: invalid JSON at line %d: %s", path, jerr.line, root ? "not an object" : jerr.text);
        goto out;
    }
    json_t *qc = json_object_get(root, "quantization_config");
    if (!qc || json_is_null(qc)) {
        rc = 0;
        goto out;
    }
    if (!json_is_object(qc)) {
        err_set("%s: quantization_config: expected an object", path);
        goto out;
    }
    json_t *m = json_object_get(qc, "quant_method");
    if (!json_is_string(m) || strcmp(json_string_value(m), "bitsandbytes")) {
        err_set("%s: quantization_config.quant_method: only \"bitsandbytes\" 4-bit is supported", path);
        goto out;
    }
    int in4 = qc_bool(qc, "load_in_4bit", qc_bool(qc, "_load_in_4bit", 0));
    int in8 = qc_bool(qc, "load_in_8bit", qc_bool(qc, "_load_in_8bit", 0));
    if (in8 || !in4) {
        err_set("%s: quantization_config: %s", path,
                in8 ? "8-bit (LLM.int8) checkpoints are not supported, only load_in_4bit"
                    : "load_in_4bit is not true");
        goto out;
    }
    char qt[16];
    if (qc_str(path, qc, "bnb_4bit_quant_type", "fp4", qt, sizeof(qt)) ||
        qc_str(path, qc, "bnb_4bit_compute_dtype", "float32", c->compute_dtype, sizeof(c->compute_dtype)) ||
        qc_str(path, qc, "bnb_4bit_quant_storage", "uint8", c->quant_storage, sizeof(c->quant_storage)))
        goto out;
    int t = q4_type_parse(qt);
    if (t < 0) {
        err_set("%s: quantization_config.bnb_4bit_quant_type: \"%s\" (expected nf4 or fp4)", path, qt);
        goto out;
    }
    c->quant_type = (Q4Type)t;
    c->double_quant = qc_bool(qc, "bnb_4bit_use_double_quant", 0);
    rc = 1;
out:
    json_decref(root);
    free(text);
    free(path);
    return rc;
}

/* ---- one 4-bit weight ---- */

static const StTensor *find_in(const BnbDir *d, const char *name, const StFile **f)
{
    return st_set_find(&d->set, name, f);
}

/* A companion tensor "<w><suffix>" of the given dtype and element count. */
static const StTensor *companion(const BnbDir *d, const BnbTensor *w, const char *suffix, StDtype dt,
                                 size_t numel, const char *why)
{
    char name[512];
    snprintf(name, sizeof(name), "%s%s", w->name, suffix);
    const StFile *f = NULL;
    const StTensor *t = find_in(d, name, &f);
    if (!t) {
        err_set("%s: %s: missing (needed by the 4-bit weight %s)", w->file->path, name, w->name);
        return NULL;
    }
    if (t->dtype != dt) {
        err_set("%s: %s: dtype %s, expected %s", f->path, name, st_dtype_name(t->dtype), st_dtype_name(dt));
        return NULL;
    }
    if (t->numel != numel) {
        err_set("%s: %s: %zu values, expected %zu (%s)", f->path, name, t->numel, numel, why);
        return NULL;
    }
    return t;
}

static float *copy_f32(const StTensor *t)
{
    float *x = xmalloc((t->numel ? t->numel : 1) * sizeof(float));
    memcpy(x, t->data, t->nbytes);
    return x;
}

/* Parse the quant_state JSON into w (type, blocksize, dtype, shape, nested keys). */
static int parse_quant_state(const char *path, const char *qs_name, const StTensor *qs, BnbTensor *w,
                             Q4Type key_type, int *nested)
{
    if (qs->dtype != ST_U8)
        return err_set("%s: %s: dtype %s, expected U8 (a JSON string)", path, qs_name,
                       st_dtype_name(qs->dtype));
    json_error_t jerr;
    json_t *j = json_loadb(qs->data, qs->nbytes, JSON_REJECT_DUPLICATES, &jerr);
    int rc = -1;
    if (!j || !json_is_object(j)) {
        err_set("%s: %s: invalid JSON: %s", path, qs_name, j ? "not an object" : jerr.text);
        goto out;
    }
    json_t *v = json_object_get(j, "quant_type");
    if (!json_is_string(v) || q4_type_parse(json_string_value(v)) != (int)key_type) {
        err_set("%s: %s: quant_type: expected \"%s\"", path, qs_name, q4_type_name(key_type));
        goto out;
    }
    w->q.type = key_type;
    v = json_object_get(j, "blocksize");
    if (!json_is_integer(v) || !q4_blocksize_valid(json_integer_value(v))) {
        err_set("%s: %s: blocksize: expected one of 32, 64, ..., 4096", path, qs_name);
        goto out;
    }
    w->q.blocksize = (int)json_integer_value(v);
    v = json_object_get(j, "dtype");
    if (!json_is_string(v) || dtype_from_json(json_string_value(v), &w->dtype)) {
        err_set("%s: %s: dtype: expected \"bfloat16\", \"float16\" or \"float32\"", path, qs_name);
        goto out;
    }
    v = json_object_get(j, "shape");
    size_t nd = json_is_array(v) ? json_array_size(v) : 0;
    if (nd < 1 || nd > ST_MAX_DIM) {
        err_set("%s: %s: shape: expected a list of 1 to %d sizes", path, qs_name, ST_MAX_DIM);
        goto out;
    }
    int64_t n = 1;
    for (size_t i = 0; i < nd; i++) {
        json_t *s = json_array_get(v, i);
        json_int_t x = json_is_integer(s) ? json_integer_value(s) : -1;
        if (x <= 0 || x > ((int64_t)1 << 40) || n > (((int64_t)1 << 50) / x)) {
            err_set("%s: %s: shape: sizes must be positive integers (and not absurdly large)", path, qs_name);
            goto out;
        }
        w->shape[i] = x;
        n *= x;
    }
    w->ndim = (int)nd;
    w->q.n = n;
    json_t *nb = json_object_get(j, "nested_blocksize");
    *nested = nb != NULL;
    if (*nested) {
        json_t *nd_ = json_object_get(j, "nested_dtype"), *off = json_object_get(j, "nested_offset");
        if (!json_is_integer(nb) || !q4_nested_blocksize_valid(json_integer_value(nb))) {
            err_set("%s: %s: nested_blocksize: expected one of 64, 128, ..., 4096", path, qs_name);
            goto out;
        }
        if (!json_is_string(nd_) || strcmp(json_string_value(nd_), "float32")) {
            err_set("%s: %s: nested_dtype: expected \"float32\"", path, qs_name);
            goto out;
        }
        if (!json_is_number(off) || !isfinite((float)json_number_value(off))) {
            err_set("%s: %s: nested_offset: expected a finite number", path, qs_name);
            goto out;
        }
        w->q.nested_blocksize = (int)json_integer_value(nb);
        w->q.nested_offset = (float)json_number_value(off);
    }
    rc = 0;
out:
    json_decref(j);
    return rc;
}

/* Fill w from the quant_state tensor qs named "<w>.quant_state.bitsandbytes__<t>". */
static int load_weight(const BnbDir *d, const StFile *f, const StTensor *qs, BnbTensor *w)
{
    const char *k = strstr(qs->name, QS_KEY);
    int t = q4_type_parse(k + strlen(QS_KEY));
    if (t < 0 || k[strlen(QS_KEY) + 3] != '\0')
        return err_set("%s: %s: unknown quant_state key (expected bitsandbytes__nf4 or __fp4)", f->path,
                       qs->name);
    w->name = xmalloc((size_t)(k - qs->name) + 1);
    memcpy(w->name, qs->name, (size_t)(k - qs->name));
    w->name[k - qs->name] = '\0';
    w->file = f;
    int nested = 0;
    if (parse_quant_state(f->path, qs->name, qs, w, (Q4Type)t, &nested)) return -1;
    const StFile *wf = NULL;
    const StTensor *wt = find_in(d, w->name, &wf);
    if (!wt) return err_set("%s: %s: missing (its quant_state is in %s)", f->path, w->name, f->path);
    size_t want = q4_packed_bytes(w->q.n);
    if (wt->nbytes != want)
        return err_set("%s: %s: %zu bytes of packed 4-bit data, but shape has %lld values (%zu bytes)",
                       wf->path, w->name, wt->nbytes, (long long)w->q.n, want);
    w->q.packed = wt->data;
    int64_t nblocks = q4_nblocks(w->q.n, w->q.blocksize);
    char why[64];
    snprintf(why, sizeof(why), "blocks of %d", w->q.blocksize);
    const StTensor *qm = companion(d, w, ".quant_map", ST_F32, 16, "the 16 codes");
    if (!qm) return -1;
    const float *code = q4_code(w->q.type);
    for (int i = 0; i < 16; i++) {
        float c;
        memcpy(&c, (const char *)qm->data + 4 * i, 4);
        if (!(fabs((double)c - code[i]) <= QUANT_MAP_ATOL))
            return err_set("%s: %s.quant_map: entry %d is %g, bitsandbytes' %s code has %g", w->file->path,
                           w->name, i, (double)c, q4_type_name(w->q.type), (double)code[i]);
    }
    if (!nested) {
        const StTensor *a = companion(d, w, ".absmax", ST_F32, (size_t)nblocks, why);
        if (!a) return -1;
        w->q.absmax = w->absmax = copy_f32(a);
        return q4_state_check(&w->q) ? err_prefix("%s: %s", w->file->path, w->name) : 0;
    }
    const StTensor *a = companion(d, w, ".absmax", ST_U8, (size_t)nblocks, why);
    snprintf(why, sizeof(why), "blocks of %d absmax values", w->q.nested_blocksize);
    const StTensor *na =
        a ? companion(d, w, ".nested_absmax", ST_F32, (size_t)q4_nblocks(nblocks, w->q.nested_blocksize), why)
          : NULL;
    const StTensor *nm =
        na ? companion(d, w, ".nested_quant_map", ST_F32, Q4_MAP8_SIZE, "the 8-bit map") : NULL;
    if (!nm) return -1;
    w->q.qabsmax = a->data;
    w->q.nested_absmax = w->nested_absmax = copy_f32(na);
    w->q.map8 = w->map8 = copy_f32(nm);
    return q4_state_check(&w->q) ? err_prefix("%s: %s", w->file->path, w->name) : 0;
}

/* Every companion must belong to a weight that has a quant_state. */
static int check_orphans(const BnbDir *d)
{
    for (int fi = 0; fi < d->set.nfiles; fi++) {
        const StFile *f = &d->set.files[fi];
        for (int i = 0; i < f->n; i++) {
            const char *name = f->t[i].name;
            for (size_t s = 0; s < ARRAY_LEN(state_suffix); s++) {
                if (!ends_with(name, state_suffix[s])) continue;
                char base[512];
                snprintf(base, sizeof(base), "%.*s", (int)(strlen(name) - strlen(state_suffix[s])), name);
                if (!bnb_find(d, base))
                    return err_set("%s: %s: no %s%snf4 or __fp4 for it", f->path, name, base, QS_KEY);
            }
        }
    }
    return 0;
}

int bnb_open(BnbDir *d, const char *dir)
{
    memset(d, 0, sizeof(*d));
    int q = bnb_read_config(dir, &d->cfg);
    if (q <= 0) {
        if (q == 0)
            err_set("%s/config.json: no quantization_config (not a bitsandbytes 4-bit directory)", dir);
        return -1;
    }
    if (st_set_open_dir(&d->set, dir, "model") != 0) return -1;
    d->dir = xstrdup(dir);
    int cap = 0;
    for (int fi = 0; fi < d->set.nfiles; fi++) {
        const StFile *f = &d->set.files[fi];
        for (int i = 0; i < f->n; i++) {
            if (!strstr(f->t[i].name, QS_KEY)) continue;
            if (d->n == cap) {
                cap = cap ? 2 * cap : 64;
                d->t = xrealloc(d->t, (size_t)cap * sizeof(BnbTensor));
            }
            BnbTensor *w = &d->t[d->n];
            memset(w, 0, sizeof(*w));
            d->n++;
            if (load_weight(d, f, &f->t[i], w) != 0) goto fail;
            for (int j = 0; j + 1 < d->n; j++)
                if (!strcmp(d->t[j].name, w->name)) {
                    err_set("%s: %s: two quant_state tensors", f->path, w->name);
                    goto fail;
                }
        }
    }
    if (check_orphans(d) != 0) goto fail;
    return 0;
fail:
    bnb_close(d);
    return -1;
}

void bnb_close(BnbDir *d)
{
    for (int i = 0; i < d->n; i++) {
        free(d->t[i].name);
        free(d->t[i].absmax);
        free(d->t[i].nested_absmax);
        free(d->t[i].map8);
    }
    free(d->t);
    free(d->dir);
    if (d->set.files) st_set_close(&d->set);
    memset(d, 0, sizeof(*d));
}

const BnbTensor *bnb_find(const BnbDir *d, const char *name)
{
    for (int i = 0; i < d->n; i++)
        if (!strcmp(d->t[i].name, name)) return &d->t[i];
    return NULL;
}

void bnb_dequantize(const BnbTensor *t, float *out)
{
    q4_dequantize(&t->q, out);
}

int bnb_hf_conv1d(const char *model_type, const char *name)
{
    static const char *conv1d[] = {".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight",
                                   ".mlp.c_proj.weight"};
    if (strcmp(model_type, "gpt2")) return 0;
    for (size_t i = 0; i < ARRAY_LEN(conv1d); i++)
        if (ends_with(name, conv1d[i])) return 1;
    return 0;
}

/* ---- JSON ---- */

/* Python's repr() of a double (what json.dumps writes for a float): the
 * shortest digits that read back the same, positional for exponents in
 * [-4, 16), else d.ddde+XX; always with a '.0' or an exponent. */
static void py_float_repr(double v, char *buf, size_t n)
{
    char e[40];
    if (v == 0) {
        snprintf(buf, n, "%s", signbit(v) ? "-0.0" : "0.0");
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(e, sizeof(e), "%.*e", p - 1, v);
        if (strtod(e, NULL) == v) break;
    }
    /* e = [-]d[.ddd]e[+-]XX */
    const char *s = e;
    int neg = *s == '-';
    if (neg) s++;
    char digits[24];
    int nd = 0;
    for (; *s && *s != 'e'; s++)
        if (*s != '.') digits[nd++] = *s;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = '\0';
    int decpt = atoi(s + 1) + 1; /* value = 0.DIGITS x 10^decpt */
    size_t o = (size_t)snprintf(buf, n, "%s", neg ? "-" : "");
    if (decpt <= -4 || decpt > 16) {
        snprintf(buf + o, n - o, "%c%s%s%se%c%02d", digits[0], nd > 1 ? "." : "", digits + 1, "",
                 decpt - 1 < 0 ? '-' : '+', abs(decpt - 1));
    } else if (decpt <= 0) {
        snprintf(buf + o, n - o, "0.%0*d%s", -decpt, 0, digits);
        if (decpt == 0) snprintf(buf + o, n - o, "0.%s", digits);
    } else if (decpt >= nd) {
        snprintf(buf + o, n - o, "%s%0*d.0", digits, decpt - nd, 0);
        if (decpt == nd) snprintf(buf + o, n - o, "%s.0", digits);
    } else {
        snprintf(buf + o, n - o, "%.*s.%s", decpt, digits, digits + decpt);
    }
}

char *bnb_quant_state_json(const Q4State *s, StDtype dtype, int ndim, const int64_t *shape)
{
    char shp[256], *p = shp, num[40];
    for (int i = 0; i < ndim; i++)
        p += snprintf(p, sizeof(shp) - (size_t)(p - shp), "%s%lld", i ? ", " : "", (long long)shape[i]);
    /* json.dumps of QuantState.as_dict's non-tensor items, in its order */
    char buf[640];
    int o = snprintf(buf, sizeof(buf),
                     "{\"quant_type\": \"%s\", \"blocksize\": %d, \"dtype\": \"%s\", \"shape\": [%s]",
                     q4_type_name(s->type), s->blocksize, dtype_json_name(dtype), shp);
    if (s->qabsmax) {
        py_float_repr((double)s->nested_offset, num, sizeof(num));
        o += snprintf(buf + o, sizeof(buf) - (size_t)o,
                      ", \"nested_blocksize\": %d, \"nested_dtype\": \"float32\", \"nested_offset\": %s",
                      s->nested_blocksize, num);
    }
    snprintf(buf + o, sizeof(buf) - (size_t)o, "}");
    return xstrdup(buf);
}

/* ---- writing ---- */

/* Names and JSON strings the write list points to. */
typedef struct {
    char **s;
    int n, cap;
} Strs;

static char *strs_add(Strs *s, char *str)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->s = xrealloc(s->s, (size_t)s->cap * sizeof(char *));
    }
    return s->s[s->n++] = str;
}

static char *cat(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 1;
    char *s = xmalloc(n);
    snprintf(s, n, "%s%s", a, b);
    return s;
}

static StWriteTensor wt1(const char *name, StDtype dt, int64_t n, const void *data)
{
    StWriteTensor t = {.name = name, .dtype = dt, .ndim = 1, .shape = {n}, .data = data};
    return t;
}

/* The order the safetensors library writes (and so transformers' save_pretrained):
 * by dtype, larger first in its enum order, then by name. */
static int st_dtype_rank(StDtype t)
{
    static const StDtype order[] = {ST_BOOL, ST_U8,  ST_I8,  ST_F8_E5M2, ST_F8_E4M3, ST_I16, ST_U16, ST_F16,
                                    ST_BF16, ST_I32, ST_U32, ST_F32,     ST_F64,     ST_I64, ST_U64};
    for (size_t i = 0; i < ARRAY_LEN(order); i++)
        if (order[i] == t) return (int)i;
    return 0;
}

static int cmp_write_order(const void *a, const void *b)
{
    const StWriteTensor *x = a, *y = b;
    int rx = st_dtype_rank(x->dtype), ry = st_dtype_rank(y->dtype);
    if (rx != ry) return ry - rx;
    return strcmp(x->name, y->name);
}

int bnb_write_weights(const char *dir, const StWriteTensor *plain, int nplain, const BnbWriteQuant *q, int nq)
{
    int cap = nplain + 6 * nq;
    StWriteTensor *t = xcalloc((size_t)(cap ? cap : 1), sizeof(StWriteTensor));
    Strs strs = {0};
    int n = 0;
    for (int i = 0; i < nplain; i++) t[n++] = plain[i];
    for (int i = 0; i < nq; i++) {
        const Q4State *s = &q[i].q->s;
        int64_t shape[2] = {q[i].rows, q[i].cols};
        const char *nm = q[i].name;
        int64_t nb = q4_nblocks(s->n, s->blocksize);
        if (q[i].rows * q[i].cols != s->n) {
            free(t);
            return err_set("%s: %s: shape (%lld, %lld) does not hold %lld values", dir, nm,
                           (long long)shape[0], (long long)shape[1], (long long)s->n);
        }
        StWriteTensor w = {.name = nm,
                           .dtype = ST_U8,
                           .ndim = 2,
                           .shape = {(int64_t)q4_packed_bytes(s->n), 1},
                           .data = s->packed};
        t[n++] = w;
        if (s->qabsmax) {
            t[n++] = wt1(strs_add(&strs, cat(nm, ".absmax")), ST_U8, nb, s->qabsmax);
            t[n++] = wt1(strs_add(&strs, cat(nm, ".nested_absmax")), ST_F32,
                         q4_nblocks(nb, s->nested_blocksize), s->nested_absmax);
            t[n++] = wt1(strs_add(&strs, cat(nm, ".nested_quant_map")), ST_F32, Q4_MAP8_SIZE, s->map8);
        } else {
            t[n++] = wt1(strs_add(&strs, cat(nm, ".absmax")), ST_F32, nb, s->absmax);
        }
        t[n++] = wt1(strs_add(&strs, cat(nm, ".quant_map")), ST_F32, 16, q4_code(s->type));
        char *js = strs_add(&strs, bnb_quant_state_json(s, q[i].dtype, 2, shape));
        char key[32];
        snprintf(key, sizeof(key), "%s%s", QS_KEY, q4_type_name(s->type));
        t[n++] = wt1(strs_add(&strs, cat(nm, key)), ST_U8, (int64_t)strlen(js), js);
    }
    qsort(t, (size_t)n, sizeof(StWriteTensor), cmp_write_order);
    StMeta meta[] = {{"format", "pt"}};
    int rc = st_write_dir(dir, "model", t, n, meta, 1, 0);
    for (int i = 0; i < strs.n; i++) free(strs.s[i]);
    free(strs.s);
    free(t);
    return rc;
}

/* Write j to dir/name atomically (2-space indent, sorted keys, as transformers). */
static int write_json(const char *dir, const char *name, json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(17));
    char *path = fs_join(dir, name);
    int rc;
    if (!s) {
        rc = err_set("%s: cannot encode JSON", path);
    } else {
        size_t n = strlen(s);
        s = xrealloc(s, n + 2);
        s[n] = '\n';
        rc = fs_write_atomic(path, s, n + 1);
    }
    free(s);
    free(path);
    return rc;
}

static json_t *read_json(const char *path)
{
    char *text;
    size_t n;
    if (fs_read_file(path, &text, &n) != 0) return NULL;
    json_error_t jerr;
    json_t *j = json_loadb(text, n, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!j || !json_is_object(j)) {
        err_set("%s: invalid JSON at line %d: %s", path, jerr.line, j ? "not an object" : jerr.text);
        json_decref(j);
        return NULL;
    }
    return j;
}

static int copy_if_present(const char *src_dir, const char *dst_dir, const char *name)
{
    char *src = fs_join(src_dir, name), *dst = fs_join(dst_dir, name), *text = NULL;
    size_t n;
    int rc = 0;
    if (fs_exists(src)) rc = fs_read_file(src, &text, &n) || fs_write_atomic(dst, text, n) ? -1 : 0;
    free(text);
    free(src);
    free(dst);
    return rc;
}

int bnb_write_config(const char *src_dir, const char *dst_dir, const BnbConfig *c)
{
    char *path = fs_join(src_dir, "config.json");
    json_t *j = read_json(path);
    free(path);
    if (!j) return -1;
    json_t *qc = json_object();
    json_object_set_new(qc, "quant_method", json_string("bitsandbytes"));
    json_object_set_new(qc, "_load_in_4bit", json_true());
    json_object_set_new(qc, "_load_in_8bit", json_false());
    json_object_set_new(qc, "load_in_4bit", json_true());
    json_object_set_new(qc, "load_in_8bit", json_false());
    json_object_set_new(qc, "bnb_4bit_quant_type", json_string(q4_type_name(c->quant_type)));
    json_object_set_new(qc, "bnb_4bit_use_double_quant", json_boolean(c->double_quant));
    json_object_set_new(qc, "bnb_4bit_compute_dtype",
                        json_string(c->compute_dtype[0] ? c->compute_dtype : "bfloat16"));
    json_object_set_new(qc, "bnb_4bit_quant_storage", json_string("uint8"));
    json_object_set_new(qc, "llm_int8_enable_fp32_cpu_offload", json_false());
    json_object_set_new(qc, "llm_int8_has_fp16_weight", json_false());
    json_object_set_new(qc, "llm_int8_skip_modules", json_null());
    json_object_set_new(qc, "llm_int8_threshold", json_real(BNB_INT8_THRESHOLD));
    json_object_set_new(j, "quantization_config", qc);
    json_object_set_new(j, "dtype", json_string("bfloat16"));
    json_object_set_new(j, "torch_dtype", json_string("bfloat16"));
    int rc = write_json(dst_dir, "config.json", j);
    json_decref(j);
    if (rc == 0) rc = copy_if_present(src_dir, dst_dir, "generation_config.json");
    return rc;
}

/* ---- a plain, dequantized copy ---- */

static int tmp_dir_for(const char *dir, char **tmp)
{
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') len--;
    *tmp = xmalloc(len + 32);
    snprintf(*tmp, len + 32, "%.*s.tmp.%ld", (int)len, dir, (long)getpid());
    if (fs_rm_rf(*tmp) != 0 || fs_mkdir_p(*tmp) != 0) return -1;
    return 0;
}

static int publish(char *tmp, const char *dir, int rc)
{
    if (rc == 0) rc = fs_publish_dir(tmp, dir);
    if (rc != 0) {
        char keep[ANVIL_ERR_MAX];
        snprintf(keep, sizeof(keep), "%s", err_get());
        fs_rm_rf(tmp);
        err_set("%s", keep);
    }
    free(tmp);
    return rc;
}

int bnb_save_dequantized(const BnbDir *d, const char *out_dir)
{
    char *cpath = fs_join(d->dir, "config.json"), *tmp = NULL;
    json_t *cfg = read_json(cpath);
    free(cpath);
    if (!cfg) return -1;
    json_object_del(cfg, "quantization_config");
    json_t *mt = json_object_get(cfg, "model_type");
    char model_type[64];
    snprintf(model_type, sizeof(model_type), "%s", json_is_string(mt) ? json_string_value(mt) : "");
    int total = 0;
    for (int fi = 0; fi < d->set.nfiles; fi++) total += d->set.files[fi].n;
    StWriteTensor *t = xcalloc((size_t)total + 1, sizeof(StWriteTensor));
    float **bufs = xcalloc((size_t)total + 1, sizeof(float *));
    int n = 0, rc = 0;
    for (int fi = 0; fi < d->set.nfiles && rc == 0; fi++) {
        const StFile *f = &d->set.files[fi];
        for (int i = 0; i < f->n && rc == 0; i++) {
            const StTensor *s = &f->t[i];
            const BnbTensor *w = bnb_find(d, s->name);
            if (!w && bnb_is_state_name(s->name)) continue;
            StWriteTensor *o = &t[n];
            o->name = s->name;
            o->dtype = ST_F32;
            o->src_f32 = 1;
            if (w) {
                float *x = xmalloc((size_t)w->q.n * sizeof(float));
                bnb_dequantize(w, x);
                o->ndim = w->ndim;
                memcpy(o->shape, w->shape, sizeof(o->shape));
                if (w->ndim == 2 && bnb_hf_conv1d(model_type, w->name)) { /* back to Conv1D's (in, out) */
                    float *y = xmalloc((size_t)w->q.n * sizeof(float));
                    for (int64_t r = 0; r < w->shape[0]; r++)
                        for (int64_t c = 0; c < w->shape[1]; c++)
                            y[c * w->shape[0] + r] = x[r * w->shape[1] + c];
                    free(x);
                    x = y;
                    o->shape[0] = w->shape[1];
                    o->shape[1] = w->shape[0];
                }
                bufs[n] = x;
            } else {
                float *x = xmalloc((s->numel ? s->numel : 1) * sizeof(float));
                if (st_to_f32(s, x) != 0) { /* an integer buffer: keep as it is */
                    free(x);
                    o->dtype = s->dtype;
                    o->src_f32 = 0;
                    o->data = s->data;
                    x = NULL;
                }
                o->ndim = s->ndim;
                memcpy(o->shape, s->shape, sizeof(o->shape));
                bufs[n] = x;
            }
            if (bufs[n]) o->data = bufs[n];
            n++;
        }
    }
    if (rc == 0) rc = tmp_dir_for(out_dir, &tmp);
    StMeta meta[] = {{"format", "pt"}};
    if (rc == 0) rc = st_write_dir(tmp, "model", t, n, meta, 1, 0);
    if (rc == 0) {
        json_object_set_new(cfg, "dtype", json_string("float32"));
        json_object_set_new(cfg, "torch_dtype", json_string("float32"));
        rc = write_json(tmp, "config.json", cfg);
    }
    if (rc == 0) rc = copy_if_present(d->dir, tmp, "generation_config.json");
    for (int i = 0; i < n; i++) free(bufs[i]);
    free(bufs);
    free(t);
    json_decref(cfg);
    return tmp ? publish(tmp, out_dir, rc) : rc;
}
