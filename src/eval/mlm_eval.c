/* mlm_eval.c - masked-LM evaluation (mlm_eval.h). */
#include "eval/mlm_eval.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "data/textio.h"

void mlm_eval_batch(Model *m, const int32_t *inputs, const int32_t *labels, const int32_t *lengths, int B,
                    int T, MlmEvalResult *r)
{
    int V = m->cfg.vocab_size, n_valid = 0;
    model_forward_len(m, inputs, labels, lengths, B, T, 0.0f, &n_valid);
    r->rows += B;
    r->scored += n_valid;
    r->loss_sum += m->loss_sum;
    if (!n_valid) return;
    /* the head's logits of the scored rows, in row order (m->rows_host) */
    float *lg = xmalloc((size_t)n_valid * V * sizeof(float));
    m->be->download_act(lg, m->mlm_logits, (size_t)n_valid * V);
    for (int k = 0; k < n_valid; k++) {
        const float *row = lg + (size_t)k * V;
        int best = 0;
        for (int v = 1; v < V; v++)
            if (row[v] > row[best]) best = v;
        r->correct += best == labels[m->rows_host[k]];
    }
    free(lg);
}

static int pad_id(const Model *m)
{
    return m->cfg.pad_token_id >= 0 ? m->cfg.pad_token_id : 0;
}

int mlm_eval_text(Model *m, const MlmOptions *o, const int32_t *ids, size_t n, const MlmEvalOptions *opt,
                  MlmEvalResult *r)
{
    int T = opt->T, B = opt->batch, W = mlm_window_tokens(o, T);
    if (W < 1) return err_set("--seq: %d leaves no room for text inside the template's %d ids", T, T - W);
    if (!n) return err_set("no tokens to score");
    if (o->vocab > m->cfg.vocab_size)
        return err_set("the tokenizer knows %d ids, more than the model's %d", o->vocab, m->cfg.vocab_size);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= m->cfg.vocab_size)
            return err_set("token %zu: id %d is outside the model's vocabulary of %d", i, ids[i],
                           m->cfg.vocab_size);
    if (model_reserve(m, B, T, RECOMPUTE_NONE)) return -1;
    int32_t *in = xmalloc((size_t)B * T * sizeof(int32_t)), *tg = xmalloc((size_t)B * T * sizeof(int32_t));
    int32_t *len = xmalloc((size_t)B * sizeof(int32_t));
    size_t rows = (n + (size_t)W - 1) / (size_t)W;
    for (size_t k0 = 0; k0 < rows; k0 += (size_t)B) {
        int b = 0;
        for (; b < B && k0 + (size_t)b < rows; b++) {
            size_t k = k0 + (size_t)b, start = k * (size_t)W;
            int w = (int)(n - start < (size_t)W ? n - start : (size_t)W);
            int32_t *row = in + (size_t)b * T;
            memcpy(row, o->pre, (size_t)o->n_pre * sizeof(int32_t));
            memcpy(row + o->n_pre, ids + start, (size_t)w * sizeof(int32_t));
            memcpy(row + o->n_pre + w, o->post, (size_t)o->n_post * sizeof(int32_t));
            len[b] = o->n_pre + w + o->n_post;
            for (int t = len[b]; t < T; t++) row[t] = pad_id(m);
            mlm_mask_row(o, row, tg + (size_t)b * T, T, len[b], opt->seed, (uint64_t)k);
        }
        mlm_eval_batch(m, in, tg, len, b, T, r);
    }
    free(in), free(tg), free(len);
    return 0;
}

/* One JSONL record into row (T ids, padded), labels and its length. */
static int parse_record(const Model *m, const char *path, long line, json_t *j, int T, int32_t *row,
                        int32_t *lab, int32_t *len)
{
    if (!json_is_object(j)) return err_set("%s:%ld: expected a JSON object", path, line);
    json_t *ids = json_object_get(j, "input_ids"), *labels = json_object_get(j, "labels");
    json_t *mask = json_object_get(j, "attention_mask");
    if (!json_is_array(ids) || !json_array_size(ids))
        return err_set("%s:%ld: input_ids: expected a non-empty list of token ids", path, line);
    size_t n = json_array_size(ids);
    if (!json_is_array(labels) || json_array_size(labels) != n)
        return err_set("%s:%ld: labels: expected a list as long as input_ids (%zu)", path, line, n);
    if (mask && (!json_is_array(mask) || json_array_size(mask) != n))
        return err_set("%s:%ld: attention_mask: expected a list as long as input_ids (%zu)", path, line, n);
    int V = m->cfg.vocab_size, valid = (int)n;
    if (mask) { /* ones, then zeros */
        valid = 0;
        for (size_t i = 0; i < n; i++) {
            json_t *v = json_array_get(mask, i);
            if (!json_is_integer(v) || (json_integer_value(v) != 0 && json_integer_value(v) != 1))
                return err_set("%s:%ld: attention_mask[%zu]: expected 0 or 1", path, line, i);
            int one = json_integer_value(v) == 1;
            if (one && valid != (int)i)
                return err_set("%s:%ld: attention_mask[%zu]: a 1 after a 0 (only right padding is supported)",
                               path, line, i);
            valid += one;
        }
        if (!valid) return err_set("%s:%ld: attention_mask: no token is attended to", path, line);
    }
    if (valid > T)
        return err_set("%s:%ld: input_ids: %d tokens, more than the model's %d positions", path, line, valid,
                       T);
    for (int t = 0; t < T; t++) {
        row[t] = pad_id(m);
        lab[t] = -1;
    }
    for (int t = 0; t < valid; t++) {
        json_t *a = json_array_get(ids, (size_t)t), *b = json_array_get(labels, (size_t)t);
        if (!json_is_integer(a) || json_integer_value(a) < 0 || json_integer_value(a) >= V)
            return err_set("%s:%ld: input_ids[%d]: expected a token id below the vocabulary size %d", path,
                           line, t, V);
        if (!json_is_integer(b) || json_integer_value(b) >= V)
            return err_set(
                "%s:%ld: labels[%d]: expected a token id below %d or a negative number (not scored)", path,
                line, t, V);
        row[t] = (int32_t)json_integer_value(a);
        lab[t] = json_integer_value(b) < 0 ? -1 : (int32_t)json_integer_value(b);
    }
    for (size_t t = (size_t)valid; t < n; t++) {
        json_t *b = json_array_get(labels, t);
        if (!json_is_integer(b) || json_integer_value(b) >= 0)
            return err_set("%s:%ld: labels[%zu]: a scored label at a padded position", path, line, t);
    }
    *len = valid;
    return 0;
}

/* Score b parsed rows (stride T), cut to the longest of them (Tb), through the scratch in / tg. */
static void score_rows(Model *m, const int32_t *rows, const int32_t *labs, const int32_t *len, int b, int T,
                       int Tb, int32_t *in, int32_t *tg, MlmEvalResult *r)
{
    for (int i = 0; i < b; i++) {
        memcpy(in + (size_t)i * Tb, rows + (size_t)i * T, (size_t)Tb * sizeof(int32_t));
        memcpy(tg + (size_t)i * Tb, labs + (size_t)i * T, (size_t)Tb * sizeof(int32_t));
    }
    mlm_eval_batch(m, in, tg, len, b, Tb, r);
}

int mlm_eval_jsonl(Model *m, const char *path, const MlmEvalOptions *opt, MlmEvalResult *r)
{
    size_t size;
    char *text = text_read_file(path, &size);
    if (!text) return -1;
    int T = opt->T, B = opt->batch, rc = 0, b = 0, Tb = 0;
    if (model_reserve(m, B, T, RECOMPUTE_NONE)) {
        free(text);
        return -1;
    }
    int32_t *rows = xmalloc((size_t)B * T * sizeof(int32_t)),
            *labs = xmalloc((size_t)B * T * sizeof(int32_t));
    int32_t *in = xmalloc((size_t)B * T * sizeof(int32_t)), *tg = xmalloc((size_t)B * T * sizeof(int32_t));
    int32_t *len = xmalloc((size_t)B * sizeof(int32_t));
    long line = 0, records = 0;
    char *p = text;
    while (p < text + size && !rc) {
        char *e = memchr(p, '\n', (size_t)(text + size - p));
        size_t n = e ? (size_t)(e - p) : (size_t)(text + size - p);
        line++;
        char *q = p;
        p += n + 1;
        while (n && (q[n - 1] == '\r' || q[n - 1] == ' ' || q[n - 1] == '\t')) n--;
        if (!n) continue;
        json_error_t jerr;
        json_t *j = json_loadb(q, n, JSON_REJECT_DUPLICATES, &jerr);
        if (!j) {
            rc = err_set("%s:%ld: invalid JSON: %s", path, line, jerr.text);
            break;
        }
        rc = parse_record(m, path, line, j, T, rows + (size_t)b * T, labs + (size_t)b * T, &len[b]);
        json_decref(j);
        if (rc) break;
        records++;
        if (len[b] > Tb) Tb = len[b];
        if (++b < B) continue;
        score_rows(m, rows, labs, len, b, T, Tb, in, tg, r);
        b = Tb = 0;
    }
    if (!rc && b) score_rows(m, rows, labs, len, b, T, Tb, in, tg, r);
    if (!rc && !records) rc = err_set("%s: no records", path);
    free(rows), free(labs), free(in), free(tg), free(len), free(text);
    return rc;
}
