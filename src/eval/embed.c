/* embed.c - sentence embeddings (embed.h). */
#include "eval/embed.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"

int pooling_parse(const char *s, Pooling *p)
{
    if (!strcmp(s, "mean"))
        *p = POOL_MEAN;
    else if (!strcmp(s, "cls"))
        *p = POOL_CLS;
    else
        return err_set("--pooling: expected mean or cls, got \"%s\"", s);
    return 0;
}

/* The ids of one text in the template, at most T of them (the text's last tokens cut). */
static long encode_row(const Tokenizer *tok, const char *text, int T, int32_t **ids)
{
    int32_t *a = NULL;
    long na = tokenizer_encode(tok, text, strlen(text), &a);
    if (na < 0) return -1;
    long room = T - tokenizer_template_added(tok, 0);
    if (room < 0) room = 0;
    if (na > room) na = room;
    long n = tokenizer_apply_template(tok, a, (size_t)na, NULL, 0, ids, NULL);
    free(a);
    return n;
}

int embed_texts(Model *m, const Tokenizer *tok, const char *const *texts, int n, Pooling pool, int batch,
                float *out)
{
    const ModelConfig *c = &m->cfg;
    if (!c->bidirectional)
        return err_set("%s is not an encoder: embeddings need the bert family", c->hf_arch);
    int T = c->max_seq_len - c->pos_offset, C = c->d_model, pad = c->pad_token_id >= 0 ? c->pad_token_id : 0;
    if (model_reserve(m, batch, T, RECOMPUTE_NONE)) return -1;
    int32_t **rows = xcalloc((size_t)batch, sizeof(int32_t *));
    int32_t *in = xmalloc((size_t)batch * T * sizeof(int32_t)),
            *len = xmalloc((size_t)batch * sizeof(int32_t));
    float *h = xmalloc((size_t)batch * T * C * sizeof(float));
    int rc = 0;
    m->hidden_only = 1;
    for (int i0 = 0; i0 < n && !rc; i0 += batch) {
        int B = n - i0 < batch ? n - i0 : batch, Tb = 1;
        for (int b = 0; b < B && !rc; b++) {
            long k = encode_row(tok, texts[i0 + b], T, &rows[b]);
            if (k < 1)
                rc = k < 0 ? err_prefix("text %d", i0 + b + 1) : err_set("text %d: no tokens", i0 + b + 1);
            else
                len[b] = (int32_t)k, Tb = k > Tb ? (int)k : Tb;
        }
        if (rc) break;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < Tb; t++) in[(size_t)b * Tb + t] = t < len[b] ? rows[b][t] : pad;
        model_forward_len(m, in, NULL, len, B, Tb, 0.0f, NULL);
        m->be->download_act(h, m->lnf, (size_t)B * Tb * C);
        for (int b = 0; b < B; b++) {
            float *o = out + (size_t)(i0 + b) * C;
            const float *hb = h + (size_t)b * Tb * C;
            for (int k = 0; k < C; k++) {
                if (pool == POOL_CLS) {
                    o[k] = hb[k];
                    continue;
                }
                double s = 0;
                for (int t = 0; t < len[b]; t++) s += hb[(size_t)t * C + k];
                o[k] = (float)(s / len[b]);
            }
        }
        for (int b = 0; b < B; b++) free(rows[b]), rows[b] = NULL;
    }
    m->hidden_only = 0;
    for (int b = 0; b < batch; b++) free(rows[b]);
    free(rows), free(in), free(len), free(h);
    return rc;
}
