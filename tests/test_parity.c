/* test_parity.c - the whole model on the CPU backend against PyTorch/transformers.
 *
 * For each fixture of tools/make_fixtures.py (gpt2, llama with GQA, qwen2 with
 * q/k/v bias and a tied head): load the HF directory, then compare
 *   logits, the mean loss, every parameter gradient (by HF name, via hf_export),
 *   the parameters after one AdamW step (torch.optim.AdamW), and the greedy
 *   continuation of transformers' generate()
 * with the reference. Tolerance: max|ours - ref| / max|ref| <= 1e-4 per tensor. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/error.h"
#include "io/fsutil.h"
#include "io/hf.h"
#include "train/optim.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "test.h"
#include "ref_tensor.h"

/* DESIGN.md asks for ~1e-5; the bar is 1e-4. We check the bar and print the worst. */
#define PARITY_TOL 1e-4
/* make_fixtures.py's AdamW settings (also in the reference metadata). */
#define ADAM_LR 1e-3f
#define ADAM_BETA1 0.9f
#define ADAM_BETA2 0.95f
#define ADAM_EPS 1e-8f
#define ADAM_WD 0.1f

typedef struct {
    StFile ref;
    Model *m;
    const char *name;
    const char *pass; /* which run, for the summary */
    /* largest relative error per kind of tensor, and where */
    double worst[5];
    char worst_name[5][128];
} Fixture;

static const char *kinds[5] = {"logits", "loss", "grad.", "adamw.", "adamw step"};

/* A reference tensor converted to fp32 (NULL with a failed check if absent). */
static float *ref_f32(Fixture *fx, const char *name, size_t *numel)
{
    return ref_tensor_f32(&fx->ref, fx->name, name, numel);
}

static const int32_t *ref_i32(Fixture *fx, const char *name, const StTensor **tt)
{
    const StTensor *t = st_find(&fx->ref, name);
    CHECKF(t && t->dtype == ST_I32, "%s: %s missing or not I32", fx->name, name);
    if (tt) *tt = t;
    return t ? t->data : NULL; /* the writer aligns data to 8 bytes */
}

static void compare(Fixture *fx, const char *what, const float *ours, const float *ref, size_t n)
{
    double e = rel_err_max(ours, ref, n);
    CHECKF(e <= PARITY_TOL, "%s: %s: relative error %.3g (max |diff| / max |ref|)", fx->name, what, e);
    for (int k = 0; k < 5; k++)
        if (!strncmp(what, kinds[k], strlen(kinds[k]))) {
            if (!fx->worst_name[k][0] || e > fx->worst[k] || isnan(e)) {
                fx->worst[k] = e;
                snprintf(fx->worst_name[k], sizeof(fx->worst_name[k]), "%s", what);
            }
            break;
        }
}

/* Compare a flat buffer laid out like the parameters with "<prefix><hf name>"
 * reference tensors; every reference tensor with that prefix must be matched. */
static void compare_by_hf_name(Fixture *fx, const float *buf, const char *prefix)
{
    HfTensor *t;
    int n;
    CHECK(hf_export(&fx->m->cfg, &fx->m->pt, buf, &t, &n) == 0);
    int matched = 0;
    for (int i = 0; i < n; i++) {
        char key[160];
        snprintf(key, sizeof(key), "%s%s", prefix, t[i].name);
        size_t numel = 0;
        float *ref = ref_f32(fx, key, &numel);
        if (!ref) continue;
        size_t ours = (size_t)t[i].shape[0] * (size_t)(t[i].ndim == 2 ? t[i].shape[1] : 1);
        CHECKF(ours == numel, "%s: %s: %zu elements, reference %zu", fx->name, key, ours, numel);
        if (ours == numel) compare(fx, key, t[i].data, ref, numel);
        matched++;
        free(ref);
    }
    int expected = 0;
    for (int i = 0; i < fx->ref.n; i++) expected += !strncmp(fx->ref.t[i].name, prefix, strlen(prefix));
    CHECKF(matched == expected, "%s: matched %d of %d %s* tensors", fx->name, matched, expected, prefix);
    hf_tensors_free(t, n);
}

static int fixture_open(Fixture *fx, const char *name)
{
    memset(fx, 0, sizeof(*fx));
    fx->name = name;
    char dir[512], ref[512];
    snprintf(dir, sizeof(dir), "%s/%s/model", test_fixtures(), name);
    snprintf(ref, sizeof(ref), "%s/%s/reference.safetensors", test_fixtures(), name);
    if (!fs_exists(ref)) {
        fprintf(stderr, "skip: %s not found\n", ref);
        return -1;
    }
    CHECKF(st_open(&fx->ref, ref) == 0, "%s", err_get());
    fx->m = hf_load_model(dir, backend_cpu(), 1);
    CHECKF(fx->m != NULL, "hf_load_model: %s", err_get());
    if (!fx->m) {
        st_close(&fx->ref);
        return -1;
    }
    return 0;
}

static void fixture_close(Fixture *fx)
{
    for (int k = 0; k < 5; k++)
        if (fx->worst_name[k][0])
            fprintf(stderr, "  %s [%s]: worst %-10s %.3g (%s)\n", fx->name, fx->pass, kinds[k], fx->worst[k],
                    fx->worst_name[k]);
    model_free(fx->m);
    st_close(&fx->ref);
}

static void check_forward_backward(Fixture *fx, int recompute)
{
    Model *m = fx->m;
    const Backend *be = m->be;
    const StTensor *ti;
    const int32_t *inputs = ref_i32(fx, "input_ids", &ti), *targets = ref_i32(fx, "targets", NULL);
    if (!inputs || !targets) return;
    int B = (int)ti->shape[0], T = (int)ti->shape[1], V = m->cfg.vocab_size;
    CHECK(model_reserve(m, B, T, recompute) == 0);

    /* logits: a forward without targets leaves them in m->logits */
    model_forward(m, inputs, NULL, B, T, 0.0f, NULL);
    float *logits = xmalloc((size_t)B * T * V * sizeof(float));
    be->download_act(logits, m->logits, (size_t)B * T * V);
    size_t n;
    float *ref = ref_f32(fx, "logits", &n);
    if (ref && n == (size_t)B * T * V) compare(fx, "logits", logits, ref, n);
    free(ref);
    free(logits);

    /* loss and gradients; loss_scale 1/valid gives the mean, as torch's cross_entropy */
    int valid = 0;
    for (int i = 0; i < B * T; i++) valid += targets[i] >= 0;
    model_zero_grad(m);
    int n_valid = 0;
    float loss = model_forward(m, inputs, targets, B, T, 1.0f / (float)valid, &n_valid);
    CHECK(n_valid == valid);
    ref = ref_f32(fx, "loss", NULL);
    if (ref) {
        CHECKF(fabs(loss - ref[0]) <= PARITY_TOL * fabs(ref[0]), "%s: loss %.7g, reference %.7g", fx->name,
               loss, ref[0]);
        compare(fx, "loss", &loss, ref, 1);
    }
    free(ref);
    model_backward(m);
    float *grads = xmalloc(m->pt.total * sizeof(float));
    model_get_grads(m, grads);
    compare_by_hf_name(fx, grads, "grad.");
    free(grads);
}

/* Adam's step lr * g / (|g| + eps) is ill-conditioned where |g| is near eps:
 * there the roundoff noise of a gradient that is zero in exact arithmetic (e.g.
 * GPT-2's key bias: softmax ignores a constant added to every score) decides
 * the step. Elements with a non-zero gradient below this are compared
 * only in the strict check that feeds both optimizers the same gradients. */
#define ADAM_ILL_COND (100 * ADAM_EPS)

static void adamw_step(Model *m, const float *p0, const float *g)
{
    Optimizer o;
    optim_init(&o, m, ADAM_WD);
    model_set_params(m, p0);
    model_set_grads(m, g);
    AdamHyper h = {.lr = ADAM_LR,
                   .beta1 = ADAM_BETA1,
                   .beta2 = ADAM_BETA2,
                   .eps = ADAM_EPS,
                   .step = 1,
                   .grad_scale = 1.0f};
    optim_step(&o, m, &h);
    optim_free(&o);
}

/* One AdamW step from zero moments: first with the reference gradients (the
 * optimizer alone, every element), then with our own gradients of the last
 * backward (the whole training step, well-conditioned elements). */
static void check_adamw(Fixture *fx, const char *ref_path)
{
    Model *m = fx->m;
    const ParamTable *pt = &m->pt;
    size_t bytes = pt->total * sizeof(float);
    float *p0 = xmalloc(bytes), *ours = xmalloc(bytes), *gref = xmalloc(bytes), *aref = xmalloc(bytes),
          *host = xmalloc(bytes);
    model_get_params(m, p0);
    model_get_grads(m, ours);
    CHECKF(hf_import_file(ref_path, "grad.", &m->cfg, pt, gref) == 0, "%s", err_get());
    CHECKF(hf_import_file(ref_path, "adamw.", &m->cfg, pt, aref) == 0, "%s", err_get());

    adamw_step(m, p0, gref);
    model_get_params(m, host);
    compare_by_hf_name(fx, host, "adamw.");

    adamw_step(m, p0, ours);
    model_get_params(m, host);
    size_t skipped = 0;
    for (int i = 0; i < pt->n; i++) {
        const Param *p = &pt->p[i];
        for (size_t k = p->offset; k < p->offset + p->numel; k++)
            if ((gref[k] != 0 && fabsf(gref[k]) < ADAM_ILL_COND) ||
                (ours[k] != 0 && fabsf(ours[k]) < ADAM_ILL_COND)) {
                host[k] = aref[k];
                skipped++;
            }
        char what[96];
        snprintf(what, sizeof(what), "adamw step with our gradients: %s", p->name);

        compare(fx, what, host + p->offset, aref + p->offset, p->numel);
    }
    fprintf(stderr,
            "  %s: AdamW with our gradients: %zu of %zu elements have 0 < |grad| < %g (not compared)\n",
            fx->name, skipped, pt->total, (double)ADAM_ILL_COND);
    free(p0);
    free(ours);
    free(gref);
    free(aref);
    free(host);
}

/* Greedy decoding by full recomputation (no KV cache): argmax of the last
 * position's logits, appended, P+NEW-1 times. */
static void check_greedy(Fixture *fx)
{
    Model *m = fx->m;
    const StTensor *tp, *to;
    const int32_t *prompt = ref_i32(fx, "greedy.prompt", &tp), *out = ref_i32(fx, "greedy.output", &to);
    if (!prompt || !out) return;
    int P = (int)tp->shape[1], NEW = (int)to->shape[1], V = m->cfg.vocab_size;
    CHECK(model_reserve(m, 1, P + NEW - 1, RECOMPUTE_NONE) == 0);
    int32_t *ids = xmalloc((size_t)(P + NEW) * sizeof(int32_t));
    memcpy(ids, prompt, (size_t)P * sizeof(int32_t));
    float *row = xmalloc((size_t)V * sizeof(float));
    int same = 1;
    for (int k = 0; k < NEW; k++) {
        int T = P + k;
        model_forward(m, ids, NULL, 1, T, 0.0f, NULL);
        m->be->download_act(row, act_at(m->be, m->logits, (size_t)(T - 1) * V), (size_t)V);
        int best = 0;
        for (int v = 1; v < V; v++)
            if (row[v] > row[best]) best = v;
        ids[T] = best;
        same &= best == out[k];
    }
    CHECKF(same, "%s: greedy continuation differs from transformers' generate()", fx->name);
    free(row);
    free(ids);
}

static void run_fixture(const char *name)
{
    Fixture fx;
    if (fixture_open(&fx, name) != 0) return;
    fx.pass = "recompute none";
    check_forward_backward(&fx, RECOMPUTE_NONE);
    char ref[512];
    snprintf(ref, sizeof(ref), "%s/%s/reference.safetensors", test_fixtures(), name);
    check_adamw(&fx, ref); /* uses the gradients just computed; changes the parameters */
    fixture_close(&fx);
    /* the recompute levels must give the same gradients; greedy on fresh weights */
    if (fixture_open(&fx, name) != 0) return;
    fx.pass = "recompute block";
    check_forward_backward(&fx, RECOMPUTE_BLOCK);
    check_greedy(&fx);
    fixture_close(&fx);
}

static void test_parity_gpt2(void)
{
    run_fixture("gpt2");
}
static void test_parity_llama(void)
{
    run_fixture("llama");
}
static void test_parity_qwen2(void)
{
    run_fixture("qwen2");
}

int main(void)
{
    RUN(test_parity_gpt2);
    RUN(test_parity_llama);
    RUN(test_parity_qwen2);
    return test_summary();
}
