/* test_plan.c - the planner (src/report/plan.h) against what the CPU backend really allocates:
 * the same bytes, category by category, for full training, LoRA and QLoRA at every recompute
 * level; the largest batch that fits; the rule of thumb's arithmetic. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "model/model.h"
#include "report/plan.h"
#include "train/freeze.h"
#include "train/optim.h"
#include "test.h"

static ModelConfig cfg(Family f)
{
    ModelConfig c;
    model_config_defaults(&c, f);
    c.n_layer = 2, c.n_head = 4, c.n_kv_head = f == FAMILY_LLAMA ? 2 : 4, c.d_model = 64;
    c.d_ff = f == FAMILY_LLAMA ? 128 : 0, c.vocab_size = 300, c.max_seq_len = 64;
    if (model_config_finish(&c)) fatal_err();
    return c;
}

/* The real thing on the CPU backend: create, load (4-bit states are allocated when uploaded),
 * reserve, optimizer; the report of what it holds. */
static MemReport real(const ModelConfig *c, const PlanSpec *s)
{
    const Backend *be = backend_cpu();
    size_t before;
    be->mem_stats(&before, NULL);
    Model *m;
    if (s->method == PLAN_FULL) {
        m = model_create(c, be);
    } else if (s->method == PLAN_TERNARY) {
        ModelConfig tc = *c;
        tc.tern_fused = s->tern_fused;
        ParamKind *kinds = ternary_kinds(&tc, NULL, s->tern_embeddings);
        m = model_create_kinds(&tc, be, kinds);
        free(kinds);
    } else {
        LoraSpec ls = {.r = s->lora_r, .alpha = 32};
        const char *all = "all-linear";
        if (lora_sites_parse(&all, 1, c->family, &ls.sites)) fatal_err();
        Q4Spec q = {.type = s->method == PLAN_QLORA ? Q4_NF4 : -1, .blocksize = 64, .nested = 1};
        m = model_create_lora(c, be, &ls, 1, 1, &q);
    }
    model_init_gpt2(m, 1);
    if (model_reserve(m, s->B, s->T, s->recompute)) fatal_err();
    Optimizer o;
    optim_init(&o, m, 0.0f);
    MemReport r;
    model_mem_report(m, optim_bytes(&o), &r);
    r.workspace -= before; /* what earlier tests still hold is not this model's */
    optim_free(&o);
    model_free(m);
    return r;
}

static void check_spec(Family f, PlanMethod method, int recompute, int tern_embeddings, int tern_fused)
{
    ModelConfig c = cfg(f);
    PlanSpec s = {.method = method, .B = 3, .T = 32, .recompute = recompute, .lora_r = 8, .act_size = 4,
                  .tern_embeddings = tern_embeddings, .tern_fused = tern_fused};
    PlanResult p;
    CHECKF(plan_memory(&c, &s, &p) == 0, "%s", err_get());
    MemReport r = real(&c, &s);
    CHECKF(p.mem.weights == r.weights && p.mem.master == r.master && p.mem.grads == r.grads &&
               p.mem.optim == r.optim && p.mem.acts == r.acts && p.mem.workspace == r.workspace,
           "%s %s r%d: plan %zu/%zu/%zu/%zu/%zu/%zu, real %zu/%zu/%zu/%zu/%zu/%zu", model_family_name(f),
           plan_method_name(method), recompute, p.mem.weights, p.mem.master, p.mem.grads, p.mem.optim, p.mem.acts,
           p.mem.workspace, r.weights, r.master, r.grads, r.optim, r.acts, r.workspace);
    CHECK(p.mem.peak == p.mem.weights + p.mem.master + p.mem.grads + p.mem.optim + p.mem.acts + p.mem.workspace);
}

static void check(Family f, PlanMethod method, int recompute) { check_spec(f, method, recompute, 0, 0); }

static void test_exact_full(void)
{
    for (int f = 0; f < 2; f++)
        for (int r = 0; r <= 2; r++) check((Family)f, PLAN_FULL, r);
}
static void test_exact_lora(void)
{
    for (int f = 0; f < 2; f++)
        for (int r = 0; r <= 2; r++) check((Family)f, PLAN_LORA, r);
}
static void test_exact_qlora(void)
{
    for (int r = 0; r <= 2; r++) check(FAMILY_LLAMA, PLAN_QLORA, r);
}
/* integer ternary (train.optimizer: ternary): packed trits, exponents and accumulators counted exactly */
static void test_exact_ternary(void)
{
    for (int r = 0; r <= 2; r++) check(FAMILY_LLAMA, PLAN_TERNARY, r);
    check_spec(FAMILY_LLAMA, PLAN_TERNARY, 0, 1, 0); /* embeddings and head ternary too */
    check_spec(FAMILY_LLAMA, PLAN_TERNARY, 1, 1, 1); /* and the update fused into the backward */
}

/* The largest batch that fits is the last whose plan is within the bytes, and a divisor when asked. */
static void test_max_batch(void)
{
    ModelConfig c = cfg(FAMILY_GPT2);
    PlanSpec s = {.method = PLAN_FULL, .B = 1, .T = 32, .act_size = 4};
    PlanResult p5, p6;
    s.B = 5;
    CHECK(plan_memory(&c, &s, &p5) == 0);
    s.B = 6;
    CHECK(plan_memory(&c, &s, &p6) == 0);
    size_t bytes = (p5.mem.peak + p6.mem.peak) / 2;
    CHECK(plan_max_batch(&c, &s, bytes, 64, 0) == 5);
    CHECK(plan_max_batch(&c, &s, bytes, 64, 8) == 4); /* 5 does not divide 8 */
    CHECK(plan_max_batch(&c, &s, 1, 64, 0) == 0);
    /* the rule of thumb: parameters x 18 bytes x 1.2 for full training */
    ModelConfig big;
    CHECK(model_preset(&big, "llama-1b") == 0 && model_config_finish(&big) == 0);
    PlanSpec sb = {.method = PLAN_FULL, .B = 1, .T = 128, .act_size = 2, .gpu = 1};
    PlanResult pb;
    CHECK(plan_memory(&big, &sb, &pb) == 0);
    CHECK_CLOSE(pb.rule_gib, 1100048384.0 * 18 * 1.2 / 1073741824.0, 1e-9);
    CHECK(pb.mem.master == (size_t)pb.mem.grads && pb.mem.optim == 2 * pb.mem.master);
    CHECK(plan_gpu_find("h100") && plan_gpu_find("H200") && !plan_gpu_find("tpu"));
}

int main(void)
{
    RUN(test_exact_full);
    RUN(test_exact_lora);
    RUN(test_exact_qlora);
    RUN(test_exact_ternary);
    RUN(test_max_batch);
    return test_summary();
}
