/* test_lora.c - LoRA adapters against PEFT (tests/fixtures/peft, made by tools/make_peft_fixtures.py
 * with transformers + PEFT): the adapted logits and loss, every adapter gradient, the merged
 * weights and logits of merge_and_unload; adapter directories round-trip; gradients with dropout
 * against finite differences; PEFT's initialisation. CPU backend. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"
#include "io/fsutil.h"
#include "io/hf.h"
#include "io/peft.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "test.h"

#define PARITY_TOL 2e-5

typedef struct {
    StFile ref;
    Model *m;
    int B, T;
    int32_t *in, *tg;
} PeftCase;

static const StTensor *ref_tensor(PeftCase *pc, const char *name)
{
    const StTensor *t = st_find(&pc->ref, name);
    CHECKF(t != NULL, "reference lacks %s", name);
    return t;
}

static float *ref_f32(PeftCase *pc, const char *name)
{
    const StTensor *t = ref_tensor(pc, name);
    if (!t) return NULL;
    float *x = xmalloc(t->numel * sizeof(float));
    st_to_f32(t, x);
    return x;
}

/* Base model + PEFT adapter of a fixture into a LoRA model on the CPU. */
static int load_case(PeftCase *pc, const char *name)
{
    char base[512], adapter[512], ref[512], cfg_base[512];
    snprintf(base, sizeof(base), "%s/%s/model", test_fixtures(), name);
    snprintf(adapter, sizeof(adapter), "%s/peft/%s/adapter", test_fixtures(), name);
    snprintf(ref, sizeof(ref), "%s/peft/%s/reference.safetensors", test_fixtures(), name);
    memset(pc, 0, sizeof(*pc));
    if (!fs_exists(ref)) return -1;
    ModelConfig c;
    LoraSpec ls;
    CHECKF(hf_read_config(base, &c) == 0, "%s", err_get());
    CHECKF(peft_read_config(adapter, &c, &ls, cfg_base, sizeof(cfg_base)) == 0, "%s", err_get());
    CHECK(strstr(cfg_base, name) != NULL);
    pc->m = model_create_lora(&c, backend_cpu(), &ls, 1, 1, NULL);
    float *host = xcalloc(pc->m->pt.total, sizeof(float));
    CHECKF(hf_read_weights(base, &c, &pc->m->pt, host) == 0, "%s", err_get());
    model_set_params_base(pc->m, host);
    free(host);
    CHECKF(peft_read_weights(adapter, pc->m) == 0, "%s", err_get());
    CHECK(st_open(&pc->ref, ref) == 0);
    const StTensor *ids = ref_tensor(pc, "input_ids");
    pc->B = (int)ids->shape[0];
    pc->T = (int)ids->shape[1];
    pc->in = xmalloc(ids->nbytes);
    pc->tg = xmalloc(ids->nbytes);
    memcpy(pc->in, ids->data, ids->nbytes);
    memcpy(pc->tg, ref_tensor(pc, "targets")->data, ids->nbytes);
    CHECK(model_reserve(pc->m, pc->B, pc->T, 0) == 0);
    return 0;
}

static void free_case(PeftCase *pc)
{
    model_free(pc->m);
    st_close(&pc->ref);
    free(pc->in);
    free(pc->tg);
}

/* PEFT's name of adapter tensor i (what the reference's grad.* keys use). */
static void peft_key(const Model *m, int i, char *buf, size_t n)
{
    const Param *p = &m->pt.p[i];
    char mod[128];
    lora_module_path(&m->cfg, p->layer, (LoraSite)p->site, p->expert, 0, mod, sizeof(mod));
    snprintf(buf, n, "base_model.model.%s.%s.weight", mod, p->role == PROLE_LORA_A ? "lora_A" : "lora_B");
}

static void check_parity(const char *name)
{
    PeftCase pc;
    if (load_case(&pc, name)) {
        fprintf(stderr, "  skip: no PEFT fixture for %s (tools/make_peft_fixtures.py)\n", name);
        return;
    }
    Model *m = pc.m;
    int N = pc.B * pc.T, V = m->cfg.vocab_size;
    /* logits without targets */
    model_forward(m, pc.in, NULL, pc.B, pc.T, 0, NULL);
    float *ref = ref_f32(&pc, "logits");
    double e = rel_err_max(m->logits, ref, (size_t)N * V);
    CHECKF(e < PARITY_TOL, "%s: adapted logits rel err %.3g", name, e);
    free(ref);
    /* loss and gradients: the mean over scored targets, as PEFT's cross_entropy(ignore_index=-100) */
    int valid = 0;
    for (int i = 0; i < N; i++) valid += pc.tg[i] >= 0;
    model_zero_grad(m);
    float loss = model_forward(m, pc.in, pc.tg, pc.B, pc.T, 1.0f / valid, NULL);
    model_backward(m);
    ref = ref_f32(&pc, "loss");
    CHECK_CLOSE(loss, ref[0], PARITY_TOL);
    free(ref);
    float *g = xmalloc(m->pt.total * sizeof(float));
    model_get_grads(m, g);
    int compared = 0;
    double worst = 0;
    for (int i = 0; i < m->pt.n; i++) {
        const Param *p = &m->pt.p[i];
        if (p->site < 0) {
            CHECK(params_g(&m->ps, i) == NULL); /* the base is frozen */
            continue;
        }
        char key[256], gk[300];
        peft_key(m, i, key, sizeof(key));
        snprintf(gk, sizeof(gk), "grad.%s", key);
        float *r = ref_f32(&pc, gk);
        if (!r) continue;
        double err = rel_err_max(g + p->offset, r, p->numel);
        worst = fmax(worst, err);
        CHECKF(err < 1e-4, "%s: %s: gradient rel err %.3g", name, key, err);
        compared++;
        free(r);
    }
    int refs = 0;
    for (int i = 0; i < pc.ref.n; i++) refs += !strncmp(pc.ref.t[i].name, "grad.", 5);
    CHECKF(compared == refs, "%s: %d adapter gradients compared, the reference has %d", name, compared, refs);
    fprintf(stderr, "  %s: %d adapter gradients, worst rel err %.2e\n", name, compared, worst);
    free(g);
    free_case(&pc);
}

static void test_peft_llama(void) { check_parity("llama"); }
static void test_peft_gpt2(void) { check_parity("gpt2"); }

/* merge_and_unload: the merged base weights and the merged model's logits. */
static void check_merge(const char *name)
{
    PeftCase pc;
    if (load_case(&pc, name)) return;
    Model *m = pc.m;
    float *host = xmalloc(m->pt.total * sizeof(float));
    model_get_params(m, host);
    model_merge_adapters(m, host);
    HfTensor *t;
    int n;
    CHECK(hf_export(&m->cfg, &m->pt, host, &t, &n) == 0);
    int compared = 0;
    for (int i = 0; i < n; i++) {
        char key[160];
        snprintf(key, sizeof(key), "merged.%s", t[i].name);
        const StTensor *rt = st_find(&pc.ref, key);
        if (!rt) continue;
        float *r = xmalloc(rt->numel * sizeof(float));
        st_to_f32(rt, r);
        double e = rel_err_max(t[i].data, r, rt->numel);
        CHECKF(e < 1e-6, "%s: merged %s rel err %.3g", name, t[i].name, e);
        compared++;
        free(r);
    }
    CHECKF(compared >= 4 * m->cfg.n_layer, "%s: only %d merged weights compared", name, compared);
    hf_tensors_free(t, n);
    /* the merged weights in a plain model give the merged logits */
    Model *plain = model_create_frozen(&m->cfg, backend_cpu());
    float *ph = xcalloc(plain->pt.total, sizeof(float));
    for (int i = 0; i < plain->pt.n; i++) {
        int j = param_find(&m->pt, plain->pt.p[i].name);
        memcpy(ph + plain->pt.p[i].offset, host + m->pt.p[j].offset, plain->pt.p[i].numel * sizeof(float));
    }
    model_set_params(plain, ph);
    CHECK(model_reserve(plain, pc.B, pc.T, 0) == 0);
    model_forward(plain, pc.in, NULL, pc.B, pc.T, 0, NULL);
    float *ref = ref_f32(&pc, "merged_logits");
    double e = rel_err_max(plain->logits, ref, (size_t)pc.B * pc.T * m->cfg.vocab_size);
    CHECKF(e < PARITY_TOL, "%s: merged logits rel err %.3g", name, e);
    free(ref), free(ph), free(host);
    model_free(plain);
    free_case(&pc);
}
static void test_merge_llama(void) { check_merge("llama"); }
static void test_merge_gpt2(void) { check_merge("gpt2"); }

/* anvil writes what it reads: adapter_config.json and the weights under PEFT's names. */
static void test_roundtrip(void)
{
    PeftCase pc;
    if (load_case(&pc, "llama")) return;
    char dir[] = "/tmp/anvil_peft_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    CHECKF(peft_write(dir, pc.m, "tests/fixtures/llama/model", DTYPE_F32) == 0, "%s", err_get());
    LoraSpec ls;
    char base[256];
    CHECKF(peft_read_config(dir, &pc.m->cfg, &ls, base, sizeof(base)) == 0, "%s", err_get());
    CHECK(ls.r == pc.m->lora.r && ls.alpha == pc.m->lora.alpha && ls.sites == pc.m->lora.sites &&
          !strcmp(base, "tests/fixtures/llama/model"));
    Model *m2 = model_create_lora(&pc.m->cfg, backend_cpu(), &ls, 1, 99, NULL);
    CHECKF(peft_read_weights(dir, m2) == 0, "%s", err_get());
    float *a = xmalloc(pc.m->pt.total * sizeof(float)), *b = xmalloc(pc.m->pt.total * sizeof(float));
    model_get_params(pc.m, a);
    model_get_params(m2, b);
    int same = 1;
    for (int i = 0; i < pc.m->pt.n; i++) {
        const Param *p = &pc.m->pt.p[i];
        if (p->site >= 0) same &= !memcmp(a + p->offset, b + p->offset, p->numel * sizeof(float));
    }
    CHECK(same);
    free(a), free(b);
    model_free(m2);
    fs_rm_rf(dir);
    free_case(&pc);
}

/* PEFT-style configs anvil does not run are refused, naming the key. */
static void test_refused_configs(void)
{
    ModelConfig c;
    char base[512];
    snprintf(base, sizeof(base), "%s/llama/model", test_fixtures());
    CHECK(hf_read_config(base, &c) == 0);
    char dir[] = "/tmp/anvil_peftcfg_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char *path = fs_join(dir, "adapter_config.json");
    struct {
        const char *json, *needle;
    } cases[] = {
        {"{\"peft_type\": \"LORA\", \"r\": 8, \"target_modules\": [\"q_proj\"], \"use_dora\": true}", "use_dora"},
        {"{\"peft_type\": \"LORA\", \"r\": 8, \"target_modules\": [\"q_proj\"], \"rank_pattern\": {\"q\": 4}}",
         "rank_pattern"},
        {"{\"peft_type\": \"LORA\", \"r\": 8, \"target_modules\": [\"c_attn\"]}", "c_attn"},
        {"{\"peft_type\": \"LORA\", \"r\": 8, \"target_modules\": \".*layers\\\\.0\\\\..*q_proj\"}", "1 of 2 layers"},
        {"{\"peft_type\": \"IA3\", \"r\": 8}", "peft_type"},
        {"{\"peft_type\": \"LORA\", \"r\": 0, \"target_modules\": [\"q_proj\"]}", "r:"},
        {"{\"peft_type\": \"LORA\", \"r\": 8, \"target_modules\": [\"q_proj\"], \"bias\": \"all\"}", "bias"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        CHECK(fs_write_atomic(path, cases[i].json, strlen(cases[i].json)) == 0);
        LoraSpec ls;
        int rc = peft_read_config(dir, &c, &ls, NULL, 0);
        CHECKF(rc == -1 && strstr(err_get(), cases[i].needle), "case %zu: rc %d: %s", i, rc, err_get());
    }
    /* a regex over every layer is fine */
    const char *ok = "{\"peft_type\": \"LORA\", \"r\": 8, \"lora_alpha\": 16, \"target_modules\": \".*\\\\.(q_proj|v_proj)\"}";
    CHECK(fs_write_atomic(path, ok, strlen(ok)) == 0);
    LoraSpec ls;
    CHECKF(peft_read_config(dir, &c, &ls, NULL, 0) == 0, "%s", err_get());
    CHECK(ls.sites == ((1u << LORA_Q) | (1u << LORA_V)) && ls.r == 8 && ls.alpha == 16);
    free(path);
    fs_rm_rf(dir);
}

/* Adapter gradients with dropout on, against central finite differences of the loss at the same
 * dropout masks (the seed fixes them). */
static void check_fd(Family f)
{
    ModelConfig c;
    model_config_defaults(&c, f);
    c.n_layer = 2, c.n_head = 4, c.n_kv_head = f == FAMILY_LLAMA ? 2 : 4, c.d_model = 16;
    c.d_ff = f == FAMILY_LLAMA ? 24 : 0, c.vocab_size = 29, c.max_seq_len = 16;
    if (model_config_finish(&c)) fatal_err();
    LoraSpec ls = {.r = 3, .alpha = 5.0f, .dropout = 0.3f};
    const char *all = "all-linear";
    CHECK(lora_sites_parse(&all, 1, f, &ls.sites) == 0);
    Model *m = model_create_lora(&c, backend_cpu(), &ls, 1, 3, NULL);
    float *p = xmalloc(m->pt.total * sizeof(float));
    Rng r;
    rng_seed(&r, 5, 1);
    for (size_t i = 0; i < m->pt.total; i++) p[i] = (float)(0.4 * rng_normal(&r));
    model_set_params(m, p); /* B nonzero too, so every path carries gradient */
    int B = 2, T = 6, N = B * T;
    int32_t in[12], tg[12];
    for (int i = 0; i < N; i++) in[i] = (int32_t)rng_below(&r, 29), tg[i] = (int32_t)rng_below(&r, 29);
    CHECK(model_reserve(m, B, T, 0) == 0);
    m->dropout_seed = 77;
    model_zero_grad(m);
    model_forward(m, in, tg, B, T, 1.0f, NULL); /* gradients of the SUM of losses */
    model_backward(m);
    float *g = xmalloc(m->pt.total * sizeof(float));
    model_get_grads(m, g);
    /* the loss at perturbed weights, training mode (dropout on, same masks): a forward with
     * loss_scale != 0 whose gradients we do not use */
    int bad = 0, checked = 0;
    for (int i = 0; i < m->pt.n; i++) {
        const Param *pp = &m->pt.p[i];
        if (pp->site < 0) continue;
        for (int s = 0; s < 2; s++) {
            size_t j = pp->offset + rng_below(&r, pp->numel);
            float x0 = p[j];
            double h = 1e-2, L[2];
            for (int k = 0; k < 2; k++) {
                p[j] = x0 + (float)(k ? -h : h);
                model_set_params(m, p);
                m->dropout_seed = 77;
                model_forward(m, in, tg, B, T, 1.0f, NULL);
                L[k] = m->loss_sum;
            }
            p[j] = x0;
            double fd = (L[0] - L[1]) / (2 * h), err = fabs(fd - g[j]) / fmax(5e-2, fabs(fd));
            checked++;
            if (err > 2e-2) {
                bad++;
                fprintf(stderr, "  %s[%zu]: fd %g analytic %g\n", pp->name, j - pp->offset, fd, g[j]);
            }
        }
    }
    model_set_params(m, p);
    CHECKF(bad == 0, "%s: %d of %d sampled adapter gradients disagree", model_family_name(f), bad, checked);
    /* the masks drop about the expected share: a forward in eval mode differs from training mode */
    m->dropout_seed = 77;
    float lt = model_forward(m, in, tg, B, T, 1.0f, NULL), le = model_forward(m, in, tg, B, T, 0.0f, NULL);
    CHECK(lt != le);
    free(p), free(g);
    model_free(m);
}
/* The adapters' gradients at recompute 1 and 2 equal recompute 0's bit for bit, with and without adapter
 * dropout (recompute 2 reruns the block's products; its adapters' saved products are the first forward's). */
static void check_recompute(Family f, float dropout)
{
    ModelConfig c;
    model_config_defaults(&c, f);
    c.n_layer = 3, c.n_head = 4, c.n_kv_head = f == FAMILY_LLAMA ? 2 : 4, c.d_model = 16;
    c.d_ff = f == FAMILY_LLAMA ? 24 : 0, c.vocab_size = 29, c.max_seq_len = 16;
    if (model_config_finish(&c)) fatal_err();
    LoraSpec ls = {.r = 3, .alpha = 5.0f, .dropout = dropout};
    const char *all = "all-linear";
    CHECK(lora_sites_parse(&all, 1, f, &ls.sites) == 0);
    Model *m = model_create_lora(&c, backend_cpu(), &ls, 1, 3, NULL);
    float *p = xmalloc(m->pt.total * sizeof(float)), *g[3];
    Rng r;
    rng_seed(&r, 9, 1);
    for (size_t i = 0; i < m->pt.total; i++) p[i] = (float)(0.4 * rng_normal(&r));
    model_set_params(m, p);
    int B = 2, T = 6, N = B * T;
    int32_t in[12], tg[12];
    for (int i = 0; i < N; i++) in[i] = (int32_t)rng_below(&r, 29), tg[i] = (int32_t)rng_below(&r, 29);
    double loss[3];
    for (int rc = 0; rc < 3; rc++) {
        CHECK(model_reserve(m, B, T, rc) == 0);
        m->dropout_seed = 41;
        model_zero_grad(m);
        loss[rc] = model_forward(m, in, tg, B, T, 1.0f, NULL);
        model_backward(m);
        g[rc] = xmalloc(m->pt.total * sizeof(float));
        model_get_grads(m, g[rc]);
    }
    for (int rc = 1; rc < 3; rc++) {
        CHECKF(loss[rc] == loss[0], "%s dropout %g: loss at recompute %d %.9g, at 0 %.9g", model_family_name(f),
               dropout, rc, loss[rc], loss[0]);
        int diff = 0;
        for (int i = 0; i < m->pt.n; i++) {
            const Param *pp = &m->pt.p[i];
            if (pp->site >= 0 && memcmp(g[rc] + pp->offset, g[0] + pp->offset, pp->numel * sizeof(float))) diff++;
        }
        CHECKF(diff == 0, "%s dropout %g: %d adapter gradients at recompute %d differ from recompute 0's",
               model_family_name(f), dropout, diff, rc);
    }
    /* train.recompute_layers: the first k blocks at level rc, the others keeping everything */
    for (int rc = 1; rc < 3; rc++)
        for (int k = 0; k <= c.n_layer; k++) {
            model_set_recompute_layers(m, k);
            CHECK(model_reserve(m, B, T, rc) == 0);
            CHECK(model_layer_recompute(m, 0) == (k > 0 ? rc : RECOMPUTE_NONE));
            CHECK(model_layer_recompute(m, c.n_layer - 1) == (k == c.n_layer ? rc : RECOMPUTE_NONE));
            m->dropout_seed = 41;
            model_zero_grad(m);
            double l = model_forward(m, in, tg, B, T, 1.0f, NULL);
            model_backward(m);
            float *gk = xmalloc(m->pt.total * sizeof(float));
            model_get_grads(m, gk);
            int diff = 0;
            for (int i = 0; i < m->pt.n; i++) {
                const Param *pp = &m->pt.p[i];
                if (pp->site >= 0 && memcmp(gk + pp->offset, g[0] + pp->offset, pp->numel * sizeof(float))) diff++;
            }
            CHECKF(l == loss[0] && diff == 0, "%s dropout %g: recompute %d of the first %d blocks: loss %.9g vs %.9g, "
                   "%d adapter gradients differ", model_family_name(f), dropout, rc, k, l, loss[0], diff);
            free(gk);
        }
    model_set_recompute_layers(m, -1);
    for (int rc = 0; rc < 3; rc++) free(g[rc]);
    free(p);
    model_free(m);
}
static void test_recompute_levels(void)
{
    check_recompute(FAMILY_LLAMA, 0.0f);
    check_recompute(FAMILY_LLAMA, 0.3f);
    check_recompute(FAMILY_GPT2, 0.0f);
    check_recompute(FAMILY_GPT2, 0.3f);
}

static void test_fd_dropout_llama(void) { check_fd(FAMILY_LLAMA); }
static void test_fd_dropout_gpt2(void) { check_fd(FAMILY_GPT2); }

/* PEFT's init: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform_, a = sqrt(5)), B = 0: the adapted
 * model starts equal to its base. */
static void test_init(void)
{
    ModelConfig c;
    CHECK(model_preset(&c, "llama-tiny") == 0 && model_config_finish(&c) == 0);
    LoraSpec ls = {.r = 8, .alpha = 16};
    const char *t[] = {"q_proj", "down_proj"};
    CHECK(lora_sites_parse(t, 2, c.family, &ls.sites) == 0);
    Model *m = model_create_lora(&c, backend_cpu(), &ls, 1, 1, NULL);
    float *h = xmalloc(m->pt.total * sizeof(float));
    model_get_params(m, h);
    int nA = 0, nB = 0;
    for (int i = 0; i < m->pt.n; i++) {
        const Param *p = &m->pt.p[i];
        if (p->site < 0) continue;
        double bound = 1.0 / sqrt((double)p->shape[1]), mx = 0, sum = 0;
        for (size_t j = 0; j < p->numel; j++) {
            mx = fmax(mx, fabs(h[p->offset + j]));
            sum += h[p->offset + j];
        }
        if (p->role == PROLE_LORA_A) {
            nA++;
            CHECKF(mx <= bound && mx > 0.9 * bound, "%s: max |A| %g, bound %g", p->name, mx, bound);
            CHECK(fabs(sum / p->numel) < 0.1 * bound);
        } else {
            nB++;
            CHECK(mx == 0);
        }
    }
    CHECK(nA == 2 * c.n_layer && nB == 2 * c.n_layer);
    /* trainable: only the adapters */
    size_t ad = 0;
    for (int i = 0; i < m->pt.n; i++)
        if (m->pt.p[i].site >= 0) ad += m->pt.p[i].numel;
    CHECK(param_count(&m->pt) == ad);
    free(h);
    model_free(m);
}

int main(void)
{
    RUN(test_peft_llama);
    RUN(test_peft_gpt2);
    RUN(test_merge_llama);
    RUN(test_merge_gpt2);
    RUN(test_roundtrip);
    RUN(test_refused_configs);
    RUN(test_fd_dropout_llama);
    RUN(test_fd_dropout_gpt2);
    RUN(test_recompute_levels);
    RUN(test_init);
    return test_summary();
}
