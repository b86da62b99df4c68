/* ppl.c - sliding-window perplexity (ppl.h). */
#include "eval/ppl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

/* One window of the procedure: ids[begin:end], labels valid for its last trg_len positions. */
typedef struct {
    size_t begin, end, trg_len;
} PplWindow;

int ppl_run(Model *m, const int32_t *ids, size_t n, const PplOptions *o, const Tokenizer *tok, PplResult *r)
{
    memset(r, 0, sizeof(*r));
    int W = m->cfg.max_seq_len, V = m->cfg.vocab_size;
    if (n < 2) return err_set("need at least 2 tokens to score, got %zu", n);
    if (o->ctx < 2 || o->ctx > W)
        return err_set("--seq: expected 2 .. %d (the model's window), got %d", W, o->ctx);
    if (o->stride < 1 || o->stride > o->ctx)
        return err_set("--stride: expected 1 .. %d (--seq), got %d", o->ctx, o->stride);
    if (o->batch < 1) return err_set("--batch: expected a number >= 1, got %d", o->batch);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return err_set("token %d at position %zu is outside the model's vocabulary of %d", ids[i], i, V);
    int B = o->batch, T = o->ctx;
    if (model_reserve(m, B, T, m->la ? m->recompute : RECOMPUTE_BLOCK)) return -1;
    int32_t *in = xmalloc((size_t)B * T * sizeof(int32_t)), *tg = xmalloc((size_t)B * T * sizeof(int32_t));
    PplWindow *win = xmalloc((size_t)B * sizeof(PplWindow));
    double hf_sum = 0;
    size_t begin = 0, prev_end = 0;
    int last = 0;
    while (!last) {
        /* the next (up to) B windows */
        int nb = 0, Tb = 0;
        while (nb < B && !last) {
            size_t end = MIN(begin + (size_t)T, n);
            PplWindow w = {begin, end, end - prev_end};
            int L = (int)(end - begin);
            int32_t *wi = in + (size_t)nb * T, *wt = tg + (size_t)nb * T;
            for (int t = 0; t < T; t++) {
                wi[t] = t < L ? ids[begin + t] : 0;
                /* input t predicts label t+1; labels before L - trg_len are ignored */
                int j = t + 1;
                wt[t] = (j < L && (size_t)j + w.trg_len >= (size_t)L) ? ids[begin + j] : -1;
            }
            win[nb++] = w;
            Tb = MAX(Tb, L);
            prev_end = end;
            begin += (size_t)o->stride;
            last = end == n;
        }
        /* pack the rows to Tb columns (the rows were filled T apart) */
        if (Tb < T)
            for (int b = 1; b < nb; b++) {
                memmove(in + (size_t)b * Tb, in + (size_t)b * T, (size_t)Tb * sizeof(int32_t));
                memmove(tg + (size_t)b * Tb, tg + (size_t)b * T, (size_t)Tb * sizeof(int32_t));
            }
        model_forward(m, in, tg, nb, Tb, 0.0f, NULL);
        for (int b = 0; b < nb; b++) {
            double s = 0;
            uint64_t cnt = 0;
            for (int t = 0; t < Tb; t++) {
                int32_t y = tg[(size_t)b * Tb + t];
                if (y < 0) continue;
                s += m->losses_host[(size_t)b * Tb + t];
                cnt++;
                if (tok) {
                    size_t len;
                    tokenizer_token_bytes(tok, y, &len);
                    r->bytes += len;
                }
            }
            r->nll_sum += s;
            r->tokens += cnt;
            r->windows++;
            /* the guide: nll_sum += loss * (num_valid_tokens - 1), loss = mean over the scored labels */
            if (cnt && win[b].trg_len > 1) {
                hf_sum += s / (double)cnt * (double)(win[b].trg_len - 1);
                r->hf_doc_tokens += win[b].trg_len - 1;
            }
        }
    }
    free(in);
    free(tg);
    free(win);
    if (!r->tokens) return err_set("no token was scored");
    r->nll = r->nll_sum / (double)r->tokens;
    r->ppl = exp(r->nll);
    if (!isfinite(r->nll) || !isfinite(r->ppl))
        return err_set("the result is not finite (nll %g, ppl %g): the model's weights or activations overflowed",
                       r->nll, r->ppl);
    r->hf_doc_nll = r->hf_doc_tokens ? hf_sum / (double)r->hf_doc_tokens : NAN;
    r->bpb = r->bytes ? r->nll_sum / log(2.0) / (double)r->bytes : NAN;
    return 0;
}
