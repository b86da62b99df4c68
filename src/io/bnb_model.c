/* bnb_model.c - a bitsandbytes 4-bit directory as a model's base (bnb_model.h). */
#include "io/bnb_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "io/bnb.h"
#include "io/hf.h"

int bnb_model_quant(const char *dir, Q4Spec *q)
{
    BnbConfig c;
    int rc = bnb_read_config(dir, &c);
    if (rc != 1) return rc;
    *q = (Q4Spec){.type = c.quant_type, .blocksize = Q4_DEFAULT_BLOCKSIZE, .nested = c.double_quant};
    return 1;
}

/* A dense tensor's rows from a plain stored tensor (fp32 image of the parameter in `buf`). */
static int read_plain(const BnbDir *d, const HfName *h, const Param *p, float *buf)
{
    const StFile *f;
    const StTensor *t = st_set_find(&d->set, h->name, &f);
    if (!t) return err_set("%s: %s: missing", d->dir, h->name);
    int64_t K = p->ndim == 2 ? p->shape[1] : 1;
    if ((size_t)(h->rows * K) != t->numel)
        return err_set("%s: %s: %zu values, expected %lld", f->path, h->name, t->numel, (long long)(h->rows * K));
    float *tmp = xmalloc(t->numel * sizeof(float));
    if (st_to_f32(t, tmp)) {
        free(tmp);
        return err_set("%s: %s: dtype %s is not a floating type", f->path, h->name, st_dtype_name(t->dtype));
    }
    float *dst = buf + h->row0 * K;
    if (!h->transpose) memcpy(dst, tmp, t->numel * sizeof(float));
    else
        for (int64_t r = 0; r < h->rows; r++)
            for (int64_t k = 0; k < K; k++) dst[r * K + k] = tmp[k * h->rows + r];
    free(tmp);
    return 0;
}

/* A part anvil keeps 4-bit that the directory stores plain: its values rounded to bf16 (what a
 * bf16-loaded model holds, as bitsandbytes quantizes them) and quantized with the directory's quant
 * type, block size and double quantization: the bytes bitsandbytes' quantize_4bit gives. */
static int quantize_plain(const BnbDir *d, const HfName *h, const Param *p, float *buf, const BnbSink *sink, int i,
                          int part)
{
    if (read_plain(d, h, p, buf)) return -1;
    int64_t n = h->rows * p->shape[1];
    float *x = buf + h->row0 * p->shape[1];
    for (int64_t k = 0; k < n; k++) x[k] = st_bf16_to_f32(st_f32_to_bf16(x[k]));
    Q4Quant q;
    if (q4_quantize(x, n, d->cfg.quant_type, Q4_DEFAULT_BLOCKSIZE, d->cfg.double_quant, &q))
        return err_set("%s: %s: %s", d->dir, h->name, err_get());
    int rc = sink->q4(sink->ctx, i, part, &q.s);
    q4_quant_free(&q);
    return rc;
}

int bnb_model_read(const char *dir, const ModelConfig *cfg, const ParamTable *pt, const BnbSink *sink)
{
    BnbDir d;
    if (bnb_open(&d, dir)) return -1;
    HfName *names = NULL;
    int n = 0, rc = -1, nquant = 0;
    float *buf = NULL;
    if (hf_names(cfg, pt, &names, &n)) goto out;
    for (int i = 0; i < pt->n; i++) {
        const Param *p = &pt->p[i];
        if (p->site >= 0) continue; /* adapters come from elsewhere */
        int part = 0;
        buf = xrealloc(buf, p->numel * sizeof(float));
        for (int k = 0; k < n; k++) {
            if (names[k].param != i) continue;
            const BnbTensor *t = bnb_find(&d, names[k].name);
            if (p->kind == PARAM_NF4) {
                int64_t want = names[k].rows * p->shape[1];
                if (!t && st_set_find(&d.set, names[k].name, NULL)) {
                    /* stored plain (transformers 5 saves a Mixtral's experts so: they are not Linear
                     * modules for bitsandbytes): quantized here, once, with the directory's settings */
                    if (part >= p->nparts) {
                        err_set("%s: %s: more parts than anvil's %s has (internal error)", dir, names[k].name, p->name);
                        goto out;
                    }
                    if (quantize_plain(&d, &names[k], p, buf, sink, i, part++)) goto out;
                    nquant++;
                    continue;
                }
                if (!t) {
                    err_set("%s: %s: expected a 4-bit weight, found none", dir, names[k].name);
                    goto out;
                }
                if (t->q.n != want || t->shape[0] != names[k].rows) {
                    err_set("%s: %s: 4-bit shape (%lld, %lld), expected (%lld, %lld)", dir, names[k].name,
                            (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : 0),
                            (long long)names[k].rows, (long long)p->shape[1]);
                    goto out;
                }
                if (part >= p->nparts) {
                    err_set("%s: %s: more 4-bit parts than anvil's %s has (internal error)", dir, names[k].name, p->name);
                    goto out;
                }
                if (sink->q4(sink->ctx, i, part++, &t->q)) goto out;
            } else {
                if (t) {
                    err_set("%s: %s: 4-bit, but anvil keeps this tensor dense (only block linears are 4-bit)", dir,
                            names[k].name);
                    goto out;
                }
                if (read_plain(&d, &names[k], p, buf)) goto out;
            }
        }
        if (p->kind != PARAM_NF4 && sink->dense(sink->ctx, i, buf)) goto out;
    }
    if (nquant)
        fprintf(stderr,
                "anvil: %s: %d block linear weight%s stored plain (a Mixtral's experts, as transformers 5 saves "
                "them) quantized to %s on load\n",
                dir, nquant, nquant == 1 ? "" : "s", q4_type_name(d.cfg.quant_type));
    rc = 0;
out:
    free(buf);
    free(names);
    bnb_close(&d);
    return rc;
}

static int upload_q4(void *ctx, int i, int part, const Q4State *s)
{
    params_upload_q4(&((Model *)ctx)->ps, i, part, s);
    return 0;
}

static int upload_dense(void *ctx, int i, const float *values)
{
    params_upload(&((Model *)ctx)->ps, i, values);
    return 0;
}

int bnb_model_load(Model *m, const char *dir)
{
    BnbSink sink = {upload_q4, upload_dense, m};
    return bnb_model_read(dir, &m->cfg, &m->pt, &sink);
}
