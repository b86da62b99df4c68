/* test_moe_lora.c - LoRA adapters on mixture-of-experts models (lora.h, docs/moe.md) on the CPU backend.
 *
 * Against PEFT (tools/make_moe_peft_fixtures.py: random nonzero adapters on attention, the routed experts'
 * fused 3-D parameters through target_parameters, the shared expert and its gate, over the tiny Mixtral
 * and Qwen2-MoE bases of tests/fixtures/moe): the adapted logits, the loss and every adapter gradient in
 * PEFT's layout (lora_A (E r, in), lora_B (out, E r)) at recompute 0, 1 and 2; the adapter directory reads
 * back and writes out byte for byte in PEFT's names; merging equals the adapted logits; the greedy
 * continuation with the KV cache equals PEFT's generate(). Finite differences
 * of the loss with the routing losses on, along a random direction of every adapter tensor. QLoRA: NF4
 * experts under expert adapters give the loss and gradients of a dense base holding the dequantized
 * values. transformers 4's per-expert adapters (w1/w3/w2, made with transformers 4 + PEFT 0.17) likewise.
 * Bad input: a fused tensor of the wrong shape, the router, unknown targets, dropout. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "core/error.h"
#include "core/rng.h"
#include "eval/generate.h"
#include "io/fsutil.h"
#include "io/hf.h"
#include "io/peft.h"
#include "io/safetensors.h"
#include "model/lora.h"
#include "model/model.h"
#include "model/moe.h"
#include "test.h"
#include "ref_tensor.h"

/* The bar of tests/test_parity.c: max |ours - ref| / max |ref| per tensor. */
#define PARITY_TOL 1e-4
/* Finite differences in fp32: central step along a random +-1 direction, relative agreement. */
#define FD_EPS 1e-3
#define FD_TOL 2e-2

/* A base of tests/fixtures/moe with the adapter directory dir over it (trainable adapters, frozen base). */
static Model *load_adapted(const char *name, const char *adir, const Q4Spec *q)
{
    char base[512];
    /* fixture -> base: mixtral_router and mixtral_t4 adapt tests/fixtures/moe/mixtral */
    snprintf(base, sizeof(base), "%s/moe/%s/model", test_fixtures(), !strncmp(name, "mixtral", 7) ? "mixtral" : name);
    ModelConfig c;
    LoraSpec ls;
    if (hf_read_config(base, &c) || peft_read_config(adir, &c, &ls, NULL, 0)) {
        CHECKF(0, "%s: %s", name, err_get());
        return NULL;
    }
    Model *m = model_create_lora(&c, backend_cpu(), &ls, 1, 3, q);
    float *host = xmalloc(m->pt.total * sizeof(float));
    CHECKF(hf_read_weights(base, &c, &m->pt, host) == 0, "%s", err_get());
    model_set_params_base(m, host);
    free(host);
    CHECKF(peft_read_weights(adir, m) == 0, "%s", err_get());
    m->cfg.moe_aux_coef = m->cfg.moe_z_coef = 0; /* the fixture's loss is the cross-entropy alone */
    return m;
}

/* Tensor `key` of a safetensors file in dir (adapter_model.safetensors) as fp32. */
static float *dir_tensor(const char *dir, const char *key, size_t *n)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
    StFile f;
    if (st_open(&f, path)) return NULL;
    float *x = ref_tensor_f32(&f, path, key, n);
    st_close(&f);
    return x;
}

/* Every grad.<key> of the reference against the adapter gradients of m in PEFT's layout (written with
 * peft_write_host from the gradient image, which also checks the writer's names and layout). */
static void compare_adapter_grads(const char *name, StFile *ref, Model *m, const char *pass)
{
    float *g = xmalloc(m->pt.total * sizeof(float));
    model_get_grads(m, g);
    char tmp[] = "/tmp/anvil_moelora_XXXXXX";
    CHECK(mkdtemp(tmp) != NULL);
    CHECKF(peft_write_host(tmp, m, g, NULL, DTYPE_F32) == 0, "%s", err_get());
    int matched = 0, expected = 0;
    double worst = 0;
    for (int i = 0; i < ref->n; i++) {
        const char *key = ref->t[i].name;
        if (strncmp(key, "grad.", 5)) continue;
        expected++;
        size_t n = 0, nr = 0;
        float *ours = dir_tensor(tmp, key + 5, &n), *want = ref_tensor_f32(ref, name, key, &nr);
        if (ours && want && n == nr) {
            double e = rel_err_max(ours, want, n);
            CHECKF(e <= PARITY_TOL, "%s [%s]: %s: relative error %.3g", name, pass, key, e);
            worst = e > worst ? e : worst;
            matched++;
        }
        free(ours);
        free(want);
    }
    CHECKF(matched == expected && expected > 0, "%s: matched %d of %d gradients", name, matched, expected);
    fprintf(stderr, "  %s [%s]: %d adapter gradients, worst %.3g\n", name, pass, matched, worst);
    fs_rm_rf(tmp);
    free(g);
}

static void check_fixture(const char *name)
{
    char adir[512], rpath[512];
    snprintf(adir, sizeof(adir), "%s/moe_lora/%s/adapter", test_fixtures(), name);
    snprintf(rpath, sizeof(rpath), "%s/moe_lora/%s/reference.safetensors", test_fixtures(), name);
    StFile ref;
    CHECKF(st_open(&ref, rpath) == 0, "%s", err_get());
    Model *m = load_adapted(name, adir, NULL);
    if (!m) return;
    int n_exp = 0, t4 = lora_t4_layout(m->lora.sites);
    for (int i = 0; i < m->pt.n; i++) n_exp += lora_site_is_expert((LoraSite)m->pt.p[i].site);
    /* a pair per expert on gate_up and down (transformers 5), on w1, w3 and w2 (transformers 4) */
    CHECKF(n_exp == (t4 ? 6 : 4) * m->cfg.moe_experts * cfg_moe_layers(&m->cfg), "%s: %d expert adapter tensors",
           name, n_exp);
    const StTensor *ti = st_find(&ref, "input_ids"), *tt = st_find(&ref, "targets");
    CHECK(ti && tt);
    if (!ti || !tt) goto out;
    const int32_t *in = ti->data, *tg = tt->data;
    int B = (int)ti->shape[0], T = (int)ti->shape[1], V = m->cfg.vocab_size, valid = 0;
    for (int i = 0; i < B * T; i++) valid += tg[i] >= 0;
    size_t n = 0;
    float *want = ref_tensor_f32(&ref, name, "logits", &n),
          *logits = xmalloc((size_t)B * T * V * sizeof(float));
    for (int rc = 0; rc <= 2; rc++) {
        char pass[32];
        snprintf(pass, sizeof(pass), "recompute %d", rc);
        CHECK(model_reserve(m, B, T, rc) == 0);
        if (rc == 0 && want) {
            model_forward(m, in, NULL, B, T, 0.0f, NULL);
            m->be->download_act(logits, m->logits, (size_t)B * T * V);
            CHECKF(rel_err_max(logits, want, n) <= PARITY_TOL, "%s: adapted logits: %.3g", name,
                   rel_err_max(logits, want, n));
        }
        model_zero_grad(m);
        float *lr = ref_tensor_f32(&ref, name, "loss", NULL);
        float loss = model_forward(m, in, tg, B, T, 1.0f / (float)valid, NULL);
        if (lr) CHECK_CLOSE(loss, lr[0], PARITY_TOL);
        free(lr);
        model_backward(m);
        compare_adapter_grads(name, &ref, m, pass);
    }
    /* greedy continuation with the KV cache (generate_run: one layer's adapter products reused) */
    const StTensor *tp = st_find(&ref, "greedy.prompt"), *to = st_find(&ref, "greedy.output");
    CHECK(tp && to);
    if (tp && to) {
        int P = (int)tp->shape[1], NEW = (int)to->shape[1];
        GenOptions go = {.max_tokens = NEW,
                         .sampler = {.temperature = 0, .top_p = 1},
                         .batch = 1,
                         .eos_id = -1,
                         .ignore_eos = 1};
        GenResult gr;
        CHECKF(generate_run(m, tp->data, P, &go, &gr) == 0, "%s", err_get());
        CHECKF(gr.n_ids[0] == NEW && !memcmp(gr.ids[0], to->data, (size_t)NEW * sizeof(int32_t)),
               "%s: greedy continuation of the adapted model differs from PEFT's generate()", name);
        gen_result_free(&gr);
        CHECK(model_reserve(m, B, T, 0) == 0);
    }
    /* merged into the base: a plain model with the adapted logits (anvil merge) */
    float *host = xmalloc(m->pt.total * sizeof(float));
    model_get_params(m, host);
    model_merge_adapters(m, host);
    Model *plain = model_create(&m->cfg, backend_cpu());
    float *ph = xcalloc(plain->pt.total, sizeof(float));
    for (int i = 0; i < plain->pt.n; i++) { /* the base tensors by name: the tables differ by the adapters */
        int j = param_find(&m->pt, plain->pt.p[i].name);
        CHECK(j >= 0);
        if (j >= 0)
            memcpy(ph + plain->pt.p[i].offset, host + m->pt.p[j].offset,
                   plain->pt.p[i].numel * sizeof(float));
    }
    model_set_params(plain, ph);
    CHECK(model_reserve(plain, B, T, 0) == 0);
    model_forward(plain, in, NULL, B, T, 0.0f, NULL);
    plain->be->download_act(logits, plain->logits, (size_t)B * T * V);
    if (want)
        CHECKF(rel_err_max(logits, want, n) <= PARITY_TOL, "%s: merged logits: %.3g", name,
               rel_err_max(logits, want, n));
    model_free(plain);
    free(ph);
    /* written back: PEFT's names and values, tensor for tensor */
    char tmp[] = "/tmp/anvil_moelora_XXXXXX";
    CHECK(mkdtemp(tmp) != NULL);
    CHECKF(peft_write(tmp, m, "base", DTYPE_F32) == 0, "%s", err_get());
    char path[600];
    snprintf(path, sizeof(path), "%s/adapter_model.safetensors", adir);
    StFile orig;
    CHECK(st_open(&orig, path) == 0);
    for (int i = 0; i < orig.n; i++) {
        size_t a = 0, b = 0;
        float *x = dir_tensor(tmp, orig.t[i].name, &a), *y = ref_tensor_f32(&orig, name, orig.t[i].name, &b);
        CHECKF(x && y && a == b && !memcmp(x, y, a * sizeof(float)), "%s: %s written back differs", name,
               orig.t[i].name);
        free(x), free(y);
    }
    ModelConfig c = m->cfg;
    LoraSpec back;
    CHECKF(peft_read_config(tmp, &c, &back, NULL, 0) == 0, "%s", err_get());
    CHECK(back.sites == m->lora.sites && back.r == m->lora.r);
    char *cfgtext;
    size_t len;
    snprintf(path, sizeof(path), "%s/adapter_config.json", tmp);
    CHECK(fs_read_file(path, &cfgtext, &len) == 0);
    if (t4) /* transformers 4's modules: target_modules only */
        CHECKF(!strstr(cfgtext, "\"target_parameters\"") && strstr(cfgtext, "\"w1\"") && strstr(cfgtext, "\"w3\"") &&
                   strstr(cfgtext, "\"w2\"") && strstr(cfgtext, "\"gate\""),
               "%s", cfgtext);
    else
        CHECK(strstr(cfgtext, "\"target_parameters\"") && strstr(cfgtext, "mlp.experts.gate_up_proj") &&
              strstr(cfgtext, "mlp.experts.down_proj"));
    free(cfgtext);
    st_close(&orig);
    fs_rm_rf(tmp);
    free(host);
    free(want);
    free(logits);
out:
    model_free(m);
    st_close(&ref);
}

static void test_mixtral(void)
{
    check_fixture("mixtral");
}
static void test_qwen2_moe(void)
{
    check_fixture("qwen2_moe");
}
/* The router adapted too (PEFT's target_parameters "mlp.gate.weight"): logits, loss, every gradient (the
 * router's adapters included), the directory read back and written out, merge, greedy continuation. */
static void test_mixtral_router(void)
{
    check_fixture("mixtral_router");
    char adir[512];
    snprintf(adir, sizeof(adir), "%s/moe_lora/mixtral_router/adapter", test_fixtures());
    Model *m = load_adapted("mixtral_router", adir, NULL);
    if (!m) return;
    int n_router = 0;
    for (int i = 0; i < m->pt.n; i++) n_router += m->pt.p[i].site == LORA_ROUTER;
    CHECKF(n_router == 2 * cfg_moe_layers(&m->cfg), "%d router adapter tensors", n_router);
    model_free(m);
}

/* transformers 4's per-expert modules (PEFT target_modules w1, w3, w2 and the router gate, made with
 * transformers 4 + PEFT 0.17: tools/make_moe_peft_t4_fixture.py): logits, loss and every gradient, the
 * directory written back under transformers 4's names, merge, greedy continuation; w1 and w3 are two
 * adapters with their own A's on each expert's fused [gate | up], the router's named block_sparse_moe.gate. */
static void test_mixtral_t4(void)
{
    check_fixture("mixtral_t4");
    char adir[512];
    snprintf(adir, sizeof(adir), "%s/moe_lora/mixtral_t4/adapter", test_fixtures());
    Model *m = load_adapted("mixtral_t4", adir, NULL);
    if (!m) return;
    CHECK(lora_t4_layout(m->lora.sites));
    CHECK(m->lora.sites == ((1u << LORA_Q) | (1u << LORA_K) | (1u << LORA_V) | (1u << LORA_O) | (1u << LORA_EXP_W1) |
                            (1u << LORA_EXP_W3) | (1u << LORA_EXP_W2) | (1u << LORA_ROUTER)));
    /* each expert's fc carries two adapters (w1 on rows [0, F), w3 on [F, 2F)), its proj one */
    const LayerParams *p = &m->lp[1];
    int F = m->cfg.moe_d_ff;
    for (int e = 0; e < m->cfg.moe_experts; e++) {
        const Linear *fc = &p->exp_fc[e], *pj = &p->exp_proj[e];
        CHECKF(fc->n_adapters == 2 && fc->adapters[0].site == LORA_EXP_W1 && fc->adapters[0].row0 == 0 &&
                   fc->adapters[0].rows == F && fc->adapters[1].site == LORA_EXP_W3 && fc->adapters[1].row0 == F &&
                   fc->adapters[1].rows == F,
               "expert %d: fc adapters", e);
        CHECKF(pj->n_adapters == 1 && pj->adapters[0].site == LORA_EXP_W2, "expert %d: proj adapters", e);
    }
    model_free(m);
    /* the two layouts at once are refused; so are w1/w3/w2 on a model whose experts are not Mixtral's */
    const char *mixed[] = {"w1", "experts.down_proj"}, *w1 = "w1";
    unsigned sites;
    CHECK(lora_sites_parse(mixed, 2, FAMILY_LLAMA, &sites) == -1 && strstr(err_get(), "two layouts"));
    char qbase[512];
    snprintf(qbase, sizeof(qbase), "%s/moe/qwen2_moe/model", test_fixtures());
    ModelConfig qc;
    CHECK(hf_read_config(qbase, &qc) == 0);
    CHECK(lora_sites_parse(&w1, 1, FAMILY_LLAMA, &sites) == 0);
    CHECKF(lora_sites_moe(&qc, &sites, 0) == -1 && strstr(err_get(), "Mixtral's per-expert modules"), "%s", err_get());
}

/* The loss with the routing losses on (their gradients reach the adapters through the router's input)
 * against central differences along a random direction of each adapter tensor. */
static void test_fd(void)
{
    char adir[512];
    /* mixtral_router: the router's adapters, which the routing losses reach directly */
    const char *names[] = {"mixtral", "qwen2_moe", "mixtral_router", "mixtral_t4"};
    for (int f = 0; f < 4; f++) {
        snprintf(adir, sizeof(adir), "%s/moe_lora/%s/adapter", test_fixtures(), names[f]);
        Model *m = load_adapted(names[f], adir, NULL);
        if (!m) continue;
        m->cfg.moe_aux_coef = 0.1f, m->cfg.moe_z_coef = 0.01f;
        enum { B = 2, T = 6 };
        int32_t in[B * T], tg[B * T];
        Rng r;
        rng_seed(&r, 11, (uint64_t)f);
        for (int i = 0; i < B * T; i++)
            in[i] = (int32_t)rng_below(&r, 96), tg[i] = (int32_t)rng_below(&r, 96);
        CHECK(model_reserve(m, B, T, 0) == 0);
        model_zero_grad(m);
        model_forward(m, in, tg, B, T, 1.0f / (B * T), NULL);
        model_backward(m);
        float *g = xmalloc(m->pt.total * sizeof(float)), *p = xmalloc(m->pt.total * sizeof(float));
        model_get_grads(m, g);
        model_get_params(m, p);
        int checked = 0, bad = 0;
        for (int i = 0; i < m->pt.n; i++) {
            const Param *pa = &m->pt.p[i];
            if (pa->site < 0) continue;
            if (f == 2 && pa->site != LORA_ROUTER) continue; /* the others are mixtral's, checked above */
            if (f == 3 && !lora_site_is_expert((LoraSite)pa->site)) continue; /* transformers 4's w1/w3/w2 */
            float *x = xmalloc(pa->numel * sizeof(float)), *v = xmalloc(pa->numel * sizeof(float));
            double gv = 0;
            for (size_t j = 0; j < pa->numel; j++) {
                v[j] = rng_below(&r, 2) ? 1.0f : -1.0f;
                gv += (double)g[pa->offset + j] * v[j];
            }
            double loss[2];
            for (int s = 0; s < 2; s++) {
                for (size_t j = 0; j < pa->numel; j++)
                    x[j] = p[pa->offset + j] + (float)((s ? -1 : 1) * FD_EPS * v[j]);
                params_upload(&m->ps, i, x);
                float l = model_forward(m, in, tg, B, T, 1.0f / (B * T), NULL);
                loss[s] = l + moe_loss(m);
            }
            params_upload(&m->ps, i, p + pa->offset);
            double fd = (loss[0] - loss[1]) / (2 * FD_EPS);
            int ok = fabs(fd - gv) <= FD_TOL * fmax(fabs(gv), 1e-2);
            if (!ok) fprintf(stderr, "  %s: %s: fd %.6g, analytic %.6g\n", names[f], pa->name, fd, gv);
            bad += !ok;
            checked++;
            free(x), free(v);
        }
        CHECKF(bad == 0 && checked > 0, "%s: %d of %d adapter tensors off their finite differences", names[f],
               bad, checked);
        fprintf(stderr, "  %s: %d adapter tensors against finite differences\n", names[f], checked);
        free(g), free(p);
        model_free(m);
    }
}

/* QLoRA: the experts (and every block linear) 4-bit under expert adapters learn exactly as over a dense
 * base holding the dequantized values. */
static void test_qlora(void)
{
    char adir[512];
    snprintf(adir, sizeof(adir), "%s/moe_lora/qwen2_moe/adapter", test_fixtures());
    Q4Spec q = {.type = Q4_NF4, .blocksize = 64, .nested = 1};
    Model *a = load_adapted("qwen2_moe", adir, &q), *b = load_adapted("qwen2_moe", adir, NULL);
    if (!a || !b) return;
    int n4 = 0;
    for (int i = 0; i < a->pt.n; i++) n4 += a->pt.p[i].kind == PARAM_NF4 && a->pt.p[i].role == PROLE_EXP_FC_W;
    CHECK(n4 == a->cfg.moe_experts);
    float *host = xmalloc(a->pt.total * sizeof(float));
    model_get_params(a, host); /* the dequantized base and the adapters */
    model_set_params(b, host);
    enum { B = 2, T = 8 };
    int32_t in[B * T], tg[B * T];
    Rng r;
    rng_seed(&r, 5, 0);
    for (int i = 0; i < B * T; i++) in[i] = (int32_t)rng_below(&r, 96), tg[i] = (int32_t)rng_below(&r, 96);
    float *ga = xmalloc(a->pt.total * sizeof(float)), *gb = xmalloc(a->pt.total * sizeof(float)), loss[2];
    Model *ms[2] = {a, b};
    float *gs[2] = {ga, gb};
    for (int k = 0; k < 2; k++) {
        CHECK(model_reserve(ms[k], B, T, 0) == 0);
        model_zero_grad(ms[k]);
        loss[k] = model_forward(ms[k], in, tg, B, T, 1.0f / (B * T), NULL);
        model_backward(ms[k]);
        model_get_grads(ms[k], gs[k]);
    }
    CHECK(loss[0] == loss[1]);
    CHECK(!memcmp(ga, gb, a->pt.total * sizeof(float)));
    size_t nz = 0;
    for (int i = 0; i < a->pt.n; i++)
        if (a->pt.p[i].site == LORA_EXP_FC)
            for (size_t j = 0; j < a->pt.p[i].numel; j++) nz += ga[a->pt.p[i].offset + j] != 0;
    CHECK(nz > 0);
    free(host), free(ga), free(gb);
    model_free(a);
    model_free(b);
}

/* A copy of fixture adapter dir `name` in tmp with one tensor of adapter_model.safetensors replaced. */
static void copy_adapter(const char *name, char *tmp, const char *drop, int64_t d0, int64_t d1)
{
    char src[512], path[600];
    snprintf(src, sizeof(src), "%s/moe_lora/%s/adapter", test_fixtures(), name);
    strcpy(tmp, "/tmp/anvil_moelora_XXXXXX");
    CHECK(mkdtemp(tmp) != NULL);
    char *text;
    size_t n;
    snprintf(path, sizeof(path), "%s/adapter_config.json", src);
    CHECK(fs_read_file(path, &text, &n) == 0);
    snprintf(path, sizeof(path), "%s/adapter_config.json", tmp);
    CHECK(fs_write_atomic(path, text, n) == 0);
    free(text);
    snprintf(path, sizeof(path), "%s/adapter_model.safetensors", src);
    StFile f;
    CHECK(st_open(&f, path) == 0);
    StWriteTensor *t = xcalloc((size_t)f.n, sizeof(StWriteTensor));
    float **data = xcalloc((size_t)f.n, sizeof(float *));
    for (int i = 0; i < f.n; i++) {
        size_t k;
        data[i] = ref_tensor_f32(&f, name, f.t[i].name, &k);
        t[i] = (StWriteTensor){.name = f.t[i].name,
                               .dtype = ST_F32,
                               .ndim = 2,
                               .shape = {f.t[i].shape[0], f.t[i].shape[1]},
                               .data = data[i],
                               .src_f32 = 1};
        if (!strcmp(f.t[i].name, drop)) t[i].shape[0] = d0, t[i].shape[1] = d1; /* fewer elements: a prefix */
    }
    StMeta meta[] = {{"format", "pt"}};
    CHECK(st_write_dir(tmp, "adapter_model", t, f.n, meta, 1, 0) == 0);
    for (int i = 0; i < f.n; i++) free(data[i]);
    free(data), free(t);
    st_close(&f);
}

static void test_errors(void)
{
    char tmp[64];
    /* an expert tensor of the wrong shape (r rows instead of E r): the file, the key and both shapes */
    copy_adapter("mixtral", tmp, "base_model.model.model.layers.0.mlp.experts.lora_A.weight", 4, 48);
    char base[512];
    snprintf(base, sizeof(base), "%s/moe/mixtral/model", test_fixtures());
    ModelConfig c;
    LoraSpec ls;
    CHECK(hf_read_config(base, &c) == 0);
    CHECK(peft_read_config(tmp, &c, &ls, NULL, 0) == 0);
    Model *m = model_create_lora(&c, backend_cpu(), &ls, 1, 3, NULL);
    CHECK(peft_read_weights(tmp, m) == -1);
    CHECKF(strstr(err_get(), "adapter_model.safetensors") &&
               strstr(err_get(), "layers.0.mlp.experts.lora_A") &&
               strstr(err_get(), "(4, 48), expected (16, 48)"),
           "%s", err_get());
    model_free(m);
    fs_rm_rf(tmp);
    /* lora.targets: the router by each of its names; names the model has no module for; all-linear leaves
     * out the routed experts and the router */
    unsigned sites;
    const char *gate = "gate_proj", *sh = "shared_expert_gate", *all = "all-linear";
    const char *routers[] = {"gate", "mlp.gate", "gate.weight", "mlp.gate.weight", "router"};
    for (int k = 0; k < 5; k++) {
        CHECK(lora_sites_parse(&routers[k], 1, c.family, &sites) == 0);
        CHECKF(sites == (1u << LORA_ROUTER), "%s", routers[k]);
    }
    CHECK(lora_sites_parse(&gate, 1, c.family, &sites) == 0);
    CHECK(lora_sites_moe(&c, &sites, 0) == -1 &&
          strstr(err_get(), "gate_proj: the model has no such module"));
    CHECK(lora_sites_parse(&sh, 1, c.family, &sites) == 0);
    CHECK(lora_sites_moe(&c, &sites, 0) == -1 && strstr(err_get(), "no shared expert"));
    CHECK(lora_sites_parse(&all, 1, c.family, &sites) == 0);
    CHECK(lora_sites_moe(&c, &sites, 1) == 0);
    CHECK(sites == ((1u << LORA_Q) | (1u << LORA_K) | (1u << LORA_V) | (1u << LORA_O)));
    const char *ex = "experts";
    CHECK(lora_sites_parse(&ex, 1, c.family, &sites) == 0);
    CHECK(sites == ((1u << LORA_EXP_FC) | (1u << LORA_EXP_PROJ)));
    ModelConfig dense;
    if (model_preset(&dense, "llama-tiny") == 0) {
        CHECK(lora_sites_moe(&dense, &sites, 0) == -1 && strstr(err_get(), "no routed experts"));
        sites = 1u << LORA_ROUTER;
        CHECK(lora_sites_moe(&dense, &sites, 0) == -1 && strstr(err_get(), "gate (the router)"));
    }
    /* adapter_config.json: a parameter anvil does not adapt, dropout with expert parameters */
    const char *bad[][2] = {{"\"mlp.experts.down_proj\"", "\"mlp.gate.bias\""},
                            {"\"lora_dropout\": 0.0", "\"lora_dropout\": 0.1"},
                            {"\"mlp.experts.down_proj\"", "\"mlp.experts.w9\""}};
    const char *want[] = {"target_parameters: \"mlp.gate.bias\": anvil adapts",
                          "lora_dropout: adapters on expert parameters", "\"mlp.experts.w9\""};
    for (int k = 0; k < 3; k++) {
        copy_adapter("mixtral", tmp, "", 0, 0);
        char path[600], *text;
        size_t n;
        snprintf(path, sizeof(path), "%s/adapter_config.json", tmp);
        CHECK(fs_read_file(path, &text, &n) == 0);
        char *at = strstr(text, bad[k][0]);
        CHECKF(at != NULL, "%s not in the fixture's adapter_config.json", bad[k][0]);
        if (at) {
            size_t pre = (size_t)(at - text), fl = strlen(bad[k][0]), tl = strlen(bad[k][1]);
            char *out = xmalloc(n - fl + tl + 1);
            memcpy(out, text, pre);
            memcpy(out + pre, bad[k][1], tl);
            memcpy(out + pre + tl, at + fl, n - pre - fl);
            CHECK(fs_write_atomic(path, out, n - fl + tl) == 0);
            free(out);
            CHECK(peft_read_config(tmp, &c, &ls, NULL, 0) == -1);
            CHECKF(strstr(err_get(), "adapter_config.json") && strstr(err_get(), want[k]), "%s", err_get());
        }
        free(text);
        fs_rm_rf(tmp);
    }
}

/* adapter_config.json with a regular expression as target_modules (PEFT full-matches module paths): a site
 * counts over the layers that have it (Qwen2-MoE: gate_proj in the dense layers 0 and 2, the shared
 * expert's in layer 1). */
static void test_regex_targets(void)
{
    char base[512], tmp[] = "/tmp/anvil_moelora_XXXXXX", path[600];
    snprintf(base, sizeof(base), "%s/moe/qwen2_moe/model", test_fixtures());
    ModelConfig c;
    LoraSpec ls;
    CHECK(hf_read_config(base, &c) == 0);
    CHECK(mkdtemp(tmp) != NULL);
    snprintf(path, sizeof(path), "%s/adapter_config.json", tmp);
    const char *cfg[] = {"{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": "
                         "\"model\\\\.layers\\\\.\\\\d+\\\\.mlp\\\\.(shared_expert\\\\.)?gate_proj\", "
                         "\"target_parameters\": [\"mlp.experts.down_proj\"]}\n",
                         "{\"peft_type\": \"LORA\", \"r\": 4, \"target_modules\": "
                         "\"model\\\\.layers\\\\.0\\\\.mlp\\\\.gate_proj\"}\n"};
    CHECK(fs_write_atomic(path, cfg[0], strlen(cfg[0])) == 0);
    CHECKF(peft_read_config(tmp, &c, &ls, NULL, 0) == 0, "%s", err_get());
    CHECK(ls.sites == ((1u << LORA_GATE) | (1u << LORA_SH_GATE) | (1u << LORA_EXP_PROJ)));
    CHECK(fs_write_atomic(path, cfg[1], strlen(cfg[1])) == 0);
    CHECK(peft_read_config(tmp, &c, &ls, NULL, 0) == -1);
    CHECKF(strstr(err_get(), "adapts gate in 1 of 2 layers"), "%s", err_get());
    fs_rm_rf(tmp);
}

int main(void)
{
    RUN(test_mixtral);
    RUN(test_qwen2_moe);
    RUN(test_mixtral_router);
    RUN(test_mixtral_t4);
    RUN(test_fd);
    RUN(test_qlora);
    RUN(test_errors);
    RUN(test_regex_targets);
    return test_summary();
}
