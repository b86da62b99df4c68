/* test_tp.c - tensor parallel (model/tp.h, docs/distributed.md "Tensor parallel"):
 *   - the vocabulary-parallel cross-entropy (backend xent_vp_stats / xent_vp_finish over 3 uneven
 *     slices) against xent_fwd_bwd of the whole rows: losses and the logits' gradient;
 *   - tp_slice: every rank's slices of a whole host image (and of the trainable segment) put back
 *     together give the image bit for bit (gpt2 and llama with GQA, an odd vocabulary);
 *   - the column- and row-parallel products, the vocabulary-parallel embedding and loss in a whole
 *     model: 2 forked ranks over the TCP comm, each with its slice of a GPT-2 (tied head) and a LLaMA
 *     (GQA, untied head) model, give the loss and every gradient (this rank's slice of it) of the
 *     unsplit model computed in the same process (float rounding of split sums: 1e-5), also with
 *     train.recompute 1 (GPT-2) and 2 (LLaMA), which rerun split products in the backward.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/error.h"
#include "core/rng.h"
#include "dist/comm.h"
#include "dist/net.h"
#include "model/model.h"
#include "model/tp.h"
#include "test.h"
#include "ranks.h"

/* ---- the vocabulary-parallel loss against the whole rows ---- */

static void test_vp_xent(void)
{
    const Backend *be = backend_cpu();
    enum { N = 7, V = 23, P = 3 };
    float logits[N * V], whole[N * V], stats[P * N * 3], losses[N], wl[N], grad[N * V];
    int32_t tg[N] = {0, 22, 5, -1, 8, 16, 15}; /* slices [0,8) [8,16) [16,23): both ends of each */
    Rng r;
    rng_seed(&r, 7, 0);
    for (int i = 0; i < N * V; i++) logits[i] = (float)(4.0 * rng_normal(&r));
    memcpy(whole, logits, sizeof(whole));
    be->xent_fwd_bwd(wl, whole, tg, N, V, 0.5f);
    float *part[P];
    for (int k = 0; k < P; k++) {
        int v0, vn;
        tp_vocab_part(V, P, k, &v0, &vn);
        part[k] = xmalloc(sizeof(float) * N * (size_t)vn);
        for (int i = 0; i < N; i++) memcpy(part[k] + i * vn, logits + i * V + v0, sizeof(float) * (size_t)vn);
        be->xent_vp_stats(stats + k * N * 3, part[k], tg, N, vn, v0);
    }
    for (int k = 0; k < P; k++) {
        int v0, vn;
        tp_vocab_part(V, P, k, &v0, &vn);
        be->xent_vp_finish(losses, part[k], tg, stats, P, N, vn, v0, 0.5f);
        for (int i = 0; i < N; i++) {
            CHECK_CLOSE(losses[i], wl[i], 1e-6);
            memcpy(grad + i * V + v0, part[k] + i * vn, sizeof(float) * (size_t)vn);
        }
        free(part[k]);
    }
    CHECK(losses[3] == 0);
    double worst = 0;
    for (int i = 0; i < N * V; i++) worst = fmax(worst, fabs(grad[i] - whole[i]));
    CHECKF(worst < 1e-7, "gradient differs by %g", worst);
    /* the losses alone (evaluation): the logits stay as they were */
    float keep[V];
    memcpy(keep, logits, sizeof(keep));
    be->xent_vp_finish(losses, logits, tg, stats, P, 1, V, 0, 0.0f); /* one row, P slices of stats */
    CHECK(!memcmp(keep, logits, sizeof(keep)));
}

/* ---- the slices put back together ---- */

static void tiny_config(ModelConfig *c, int llama)
{
    model_preset(c, llama ? "llama-tiny" : "gpt2-tiny");
    c->vocab_size = 257; /* odd: the last rank's slice is shorter */
    c->max_seq_len = 16;
    c->d_model = llama ? 64 : 32;
    c->n_head = llama ? 4 : 2;
    c->n_kv_head = llama ? 2 : 2;
    c->head_dim = 0;
    c->d_ff = llama ? 96 : 0;
    model_config_finish(c);
}

static void test_slice_roundtrip(void)
{
    for (int llama = 0; llama < 2; llama++) {
        ModelConfig c;
        tiny_config(&c, llama);
        ParamTable w;
        param_table_build(&w, &c);
        param_table_set_kinds(&w, NULL);
        float *img = xmalloc(w.total * sizeof(float)), *back = xcalloc(w.total, sizeof(float));
        float *seg = xcalloc(w.n_train, sizeof(float)), *segb = xcalloc(w.n_train, sizeof(float));
        for (size_t i = 0; i < w.total; i++) img[i] = (float)i;
        for (int i = 0; i < w.n; i++)
            for (size_t j = 0; j < w.p[i].numel; j++) seg[w.p[i].seg + j] = img[w.p[i].offset + j];
        const int P = 2;
        for (int r = 0; r < P; r++) {
            ModelConfig lc;
            CHECK(tp_config_local(&c, P, r, &lc) == 0);
            CHECK(lc.n_head == c.n_head / P && lc.n_kv_head == c.n_kv_head / P && lc.d_ff == c.d_ff / P);
            ParamTable l;
            param_table_build(&l, &lc);
            param_table_set_kinds(&l, NULL);
            float *loc = xcalloc(l.total, sizeof(float)), *lseg = xcalloc(l.n_train, sizeof(float));
            tp_slice(&c, P, r, &w, &l, img, loc, 1, 0);
            tp_slice(&c, P, r, &w, &l, seg, lseg, 1, 1);
            /* rank r's q heads: the rows r * q_dim / P .. of the whole qkv */
            int qkv = param_find_role(&l, PROLE_QKV_W, 0);
            size_t row0 = (size_t)r * cfg_q_dim(&c) / P * c.d_model;
            CHECK(loc[l.p[qkv].offset] == img[w.p[qkv].offset + row0]);
            tp_slice(&c, P, r, &w, &l, back, loc, 0, 0);
            tp_slice(&c, P, r, &w, &l, segb, lseg, 0, 1);
            free(loc), free(lseg);
            param_table_free(&l);
        }
        CHECKF(!memcmp(img, back, w.total * sizeof(float)), "%s: host image", llama ? "llama" : "gpt2");
        CHECKF(!memcmp(seg, segb, w.n_train * sizeof(float)), "%s: segment", llama ? "llama" : "gpt2");
        free(img), free(back), free(seg), free(segb);
        param_table_free(&w);
    }
    ModelConfig c, lc;
    tiny_config(&c, 1);
    CHECK(tp_config_local(&c, 4, 0, &lc) == -1 && strstr(err_get(), "model.n_kv_head 2"));
    CHECK(tp_config_local(&c, 3, 0, &lc) == -1 && strstr(err_get(), "model.n_head 4"));
}

/* ---- a split model against the whole one, on 2 forked ranks ---- */

enum { TP = 2, TB = 2, TT = 8 };

static void comm_reduce(void *ctx, void *buf, size_t n)
{
    Comm *c = ctx;
    if (c->all_reduce_sum(c, buf, n, COMM_F32)) fatal_err();
}
static void comm_gather(void *ctx, float *buf, size_t n)
{
    Comm *c = ctx;
    size_t counts[TP] = {n, n};
    if (c->all_gather(c, buf, counts, sizeof(float))) fatal_err();
}

/* Rank `rank`'s checks for one family; the number of failures. */
static int split_vs_whole(Comm *comm, int rank, int llama, int recompute)
{
    const Backend *be = backend_cpu();
    ModelConfig c, lc;
    tiny_config(&c, llama);
    int bad = 0, N = TB * TT;
    int32_t in[TB * TT], tg[TB * TT];
    for (int i = 0; i < N; i++)
        in[i] = (i * 37 + 11) % c.vocab_size, tg[i] = i == 5 ? -1 : (i * 53 + 200) % c.vocab_size;
    /* the whole model */
    Model *w = model_create(&c, be);
    model_init_gpt2(w, 42);
    model_reserve(w, TB, TT, recompute);
    float *img = xmalloc(w->pt.total * sizeof(float)), *gw = xmalloc(w->pt.total * sizeof(float));
    model_get_params(w, img);
    model_zero_grad(w);
    float lw = model_forward(w, in, tg, TB, TT, 1.0f / (N - 1), NULL);
    model_backward(w);
    model_get_grads(w, gw);
    /* this rank's slice */
    if (tp_config_local(&c, TP, rank, &lc)) return 1;
    Model *m = model_create(&lc, be);
    float *loc = xcalloc(m->pt.total, sizeof(float)), *gl = xmalloc(m->pt.total * sizeof(float));
    float *want = xcalloc(m->pt.total, sizeof(float));
    tp_slice(&c, TP, rank, &w->pt, &m->pt, img, loc, 1, 0);
    tp_slice(&c, TP, rank, &w->pt, &m->pt, gw, want, 1, 0);
    model_set_params(m, loc);
    model_reserve(m, TB, TT, recompute);
    ModelTp tp = {.rank = rank,
                  .size = TP,
                  .full = c,
                  .ctx = comm,
                  .all_reduce_act = comm_reduce,
                  .all_gather_f32 = comm_gather};
    tp_vocab_part(c.vocab_size, TP, rank, &tp.v0, &tp.vn);
    tp_attach(m, &tp);
    model_zero_grad(m);
    float ll = model_forward(m, in, tg, TB, TT, 1.0f / (N - 1), NULL);
    model_backward(m);
    model_get_grads(m, gl);
    if (fabsf(ll - lw) > 1e-5f * fabsf(lw)) {
        fprintf(stderr, "rank %d %s: loss %.7f, whole %.7f\n", rank, llama ? "llama" : "gpt2", ll, lw);
        bad++;
    }
    for (int i = 0; i < m->pt.n; i++) {
        const Param *p = &m->pt.p[i];
        double worst = 0, scale = 1e-30;
        for (size_t j = 0; j < p->numel; j++) {
            worst = fmax(worst, fabs(gl[p->offset + j] - want[p->offset + j]));
            scale = fmax(scale, fabs(want[p->offset + j]));
        }
        if (worst > 1e-5 * fmax(scale, 1e-3)) {
            fprintf(stderr, "rank %d %s: gradient of %s differs by %g (largest %g)\n", rank,
                    llama ? "llama" : "gpt2", p->name, worst, scale);
            bad++;
        }
    }
    model_free(m);
    model_free(w);
    free(img), free(gw), free(loc), free(gl), free(want);
    return bad;
}

static int tp_rank_main(int rank, int port)
{
    CommSetup s = {.rank = rank, .world = TP, .master_port = port, .timeout_s = 30};
    snprintf(s.master_addr, sizeof(s.master_addr), "127.0.0.1");
    Comm *c = comm_tcp_create(&s);
    if (!c) {
        fprintf(stderr, "rank %d: %s\n", rank, err_get());
        return 1;
    }
    int bad = split_vs_whole(c, rank, 0, RECOMPUTE_NONE) + split_vs_whole(c, rank, 0, RECOMPUTE_CHEAP) +
              split_vs_whole(c, rank, 1, RECOMPUTE_NONE) + split_vs_whole(c, rank, 1, RECOMPUTE_BLOCK);
    c->free(c);
    return bad ? 1 : 0;
}

static void test_split_model(void) { run_ranks(TP, tp_rank_main, "test_split_model"); }

int main(void)
{
    RUN(test_split_model); /* first: forked before this process starts OpenMP's threads (libgomp after fork
                              hangs) */
    RUN(test_vp_xent);
    RUN(test_slice_roundtrip);
    return test_summary();
}
