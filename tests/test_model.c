/* test_model.c - whole-model checks on the CPU backend that need no fixtures:
 * loss at init, finite differences of the loss w.r.t. sampled parameters,
 * recompute levels giving identical gradients, batch independence.
 * (Parity with PyTorch lives in test_parity.c.) */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"
#include "eval/load.h"
#include "model/model.h"
#include "test.h"

static ModelConfig tiny(Family f)
{
    ModelConfig c;
    model_config_defaults(&c, f);
    c.n_layer = 2;
    c.n_head = 4;
    c.n_kv_head = f == FAMILY_LLAMA ? 2 : 4;
    c.d_model = 16;
    c.d_ff = f == FAMILY_LLAMA ? 24 : 0;
    c.vocab_size = 37;
    c.max_seq_len = 16;
    if (f == FAMILY_LLAMA) c.qkv_bias = 1; /* exercise the Qwen2 path too */
    if (model_config_finish(&c)) fatal_err();
    return c;
}

static void make_batch(int32_t *in, int32_t *tg, int n, int V, uint64_t seed)
{
    Rng r;
    rng_seed(&r, seed, 0);
    for (int i = 0; i < n; i++) in[i] = (int32_t)rng_below(&r, V);
    for (int i = 0; i < n; i++) tg[i] = (int32_t)rng_below(&r, V);
}

/* Randomize every parameter (including norm weights and biases) so that all
 * gradient paths are exercised. */
static void randomize(Model *m, uint64_t seed)
{
    float *p = xmalloc(m->pt.total * sizeof(float));
    Rng r;
    rng_seed(&r, seed, 7);
    for (size_t i = 0; i < m->pt.total; i++) p[i] = (float)(0.3 * rng_normal(&r));
    for (int k = 0; k < m->pt.n; k++) {
        int role = m->pt.p[k].role;
        if (role == PROLE_LN1_W || role == PROLE_LN2_W || role == PROLE_LNF_W)
            for (size_t j = 0; j < m->pt.p[k].numel; j++) p[m->pt.p[k].offset + j] += 1.0f;
    }
    model_set_params(m, p);
    free(p);
}

static void test_init_loss(void)
{
    ModelConfig c = tiny(FAMILY_GPT2);
    c.vocab_size = 500;
    Model *m = model_create(&c, backend_cpu());
    model_init_gpt2(m, 42);
    CHECK(model_reserve(m, 2, 8, RECOMPUTE_NONE) == 0);
    int32_t in[16], tg[16];
    make_batch(in, tg, 16, c.vocab_size, 1);
    float loss = model_forward(m, in, tg, 2, 8, 0, NULL);
    /* small random init: predictions are near uniform, loss near ln(V) */
    CHECKF(fabsf(loss - logf(500.0f)) < 0.05f, "loss %g vs ln V %g", loss, logf(500.0f));
    model_free(m);
}

static void fd_check(Family f)
{
    ModelConfig c = tiny(f);
    Model *m = model_create(&c, backend_cpu());
    randomize(m, 5);
    int B = 2, T = 6, N = B * T;
    CHECK(model_reserve(m, B, T, RECOMPUTE_NONE) == 0);
    int32_t in[12], tg[12];
    make_batch(in, tg, N, c.vocab_size, 3);
    tg[4] = -1; /* an ignored target */
    model_zero_grad(m);
    int nv;
    model_forward(m, in, tg, B, T, 1.0f, &nv);
    CHECK(nv == N - 1);
    /* loss_scale 1 per token => grads of the SUM of losses */
    model_backward(m);
    float *g = xmalloc(m->pt.total * 4), *p = xmalloc(m->pt.total * 4);
    model_get_grads(m, g);
    model_get_params(m, p);
    Rng r;
    rng_seed(&r, 9, 0);
    int bad = 0, checked = 0;
    for (int k = 0; k < m->pt.n; k++) {
        const Param *pp = &m->pt.p[k];
        for (int s = 0; s < 3; s++) {
            size_t j = pp->offset + rng_below(&r, pp->numel);
            float x0 = p[j];
            double h = 1e-2;
            p[j] = x0 + (float)h;
            model_set_params(m, p);
            double lp = (double)model_forward(m, in, tg, B, T, 0, NULL) * nv;
            p[j] = x0 - (float)h;
            model_set_params(m, p);
            double lm = (double)model_forward(m, in, tg, B, T, 0, NULL) * nv;
            p[j] = x0;
            double fd = (lp - lm) / (2 * h);
            double err = fabs(fd - g[j]) / fmax(5e-2, fabs(fd)) /* fp32 noise floor of the summed loss */;
            checked++;
            if (err > 2e-2) {
                bad++;
                fprintf(stderr, "  %s[%zu]: fd %g analytic %g\n", pp->name, j - pp->offset, fd, g[j]);
            }
        }
    }
    CHECKF(bad == 0, "%s: %d of %d sampled gradients disagree", model_family_name(f), bad, checked);
    free(g), free(p);
    model_free(m);
}
static void test_fd_gpt2(void) { fd_check(FAMILY_GPT2); }
static void test_fd_llama(void) { fd_check(FAMILY_LLAMA); }

static void test_recompute_levels(void)
{
    for (int f = 0; f < 2; f++) {
        ModelConfig c = tiny((Family)f);
        Model *m = model_create(&c, backend_cpu());
        randomize(m, 11);
        int B = 2, T = 8;
        int32_t in[16], tg[16];
        make_batch(in, tg, 16, c.vocab_size, 4);
        float *g0 = xmalloc(m->pt.total * 4), *g1 = xmalloc(m->pt.total * 4);
        float loss0 = 0;
        for (int level = 0; level <= 2; level++) {
            CHECK(model_reserve(m, B, T, level) == 0);
            model_zero_grad(m);
            float loss = model_forward(m, in, tg, B, T, 1.0f / 16, NULL);
            model_backward(m);
            if (level == 0) {
                model_get_grads(m, g0);
                loss0 = loss;
            } else {
                model_get_grads(m, g1);
                CHECKF(loss == loss0, "family %d level %d loss differs", f, level);
                CHECKF(memcmp(g0, g1, m->pt.total * 4) == 0, "family %d level %d grads differ", f, level);
            }
        }
        free(g0);
        free(g1);
        model_free(m);
    }
}

static void test_batch_independence(void)
{
    ModelConfig c = tiny(FAMILY_LLAMA);
    Model *m = model_create(&c, backend_cpu());
    randomize(m, 2);
    int32_t in[16], tg[16];
    make_batch(in, tg, 16, c.vocab_size, 8);
    CHECK(model_reserve(m, 2, 8, RECOMPUTE_NONE) == 0);
    model_forward(m, in, NULL, 2, 8, 0, NULL);
    float *both = xmalloc(16 * c.vocab_size * 4);
    memcpy(both, m->logits, 16 * c.vocab_size * 4);
    model_forward(m, in + 8, NULL, 1, 8, 0, NULL);
    CHECK(rel_err_max(m->logits, both + 8 * c.vocab_size, 8 * c.vocab_size) < 1e-6);
    /* causality: the first 4 positions do not depend on later tokens */
    int32_t in2[8];
    memcpy(in2, in, sizeof(in2));
    in2[6] = (in2[6] + 1) % c.vocab_size;
    model_forward(m, in2, NULL, 1, 8, 0, NULL);
    CHECK(rel_err_max(m->logits, both, 4 * c.vocab_size) < 1e-6);
    free(both);
    model_free(m);
}

/* A preset loaded by name (eval, generate, bench) is a complete model: its MLP
 * and heads have their derived sizes (a bug once gave d_ff = 0). */
static void test_preset_by_name(void)
{
    Model *m = eval_load_model("gpt2-tiny", NULL, backend_cpu());
    CHECK(m && m->cfg.d_ff == 4 * m->cfg.d_model && m->cfg.head_dim == m->cfg.d_model / m->cfg.n_head);
    ModelConfig c;
    model_preset(&c, "gpt2-tiny");
    model_config_finish(&c);
    ParamTable pt;
    param_table_build(&pt, &c);
    CHECK(m && m->pt.total == pt.total);
    param_table_free(&pt);
    if (m) model_free(m);
}

int main(void)
{
    RUN(test_preset_by_name);
    RUN(test_init_loss);
    RUN(test_fd_gpt2);
    RUN(test_fd_llama);
    RUN(test_recompute_levels);
    RUN(test_batch_independence);
    return test_summary();
}
