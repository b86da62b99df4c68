/* test_moe.c - the mixture-of-experts MLP on the CPU backend (docs/moe.md).
 *
 * Against transformers (tools/make_moe_hf_fixtures.py: tiny random-init MixtralForCausalLM and
 * Qwen2MoeForCausalLM): logits, the loss, the load-balancing loss (load_balancing_loss_func),
 * transformers' loss with labels and output_router_logits=True, the router z-loss, every gradient
 * of loss + aux_coef * aux + z_coef * z (the router's included) at recompute levels 0, 1 and 2, and
 * the greedy continuation (full recomputation and the KV cache). The fused transformers-5 layout
 * loads the same weights; a written directory reads back bit for bit.
 * Finite differences: the routing op's gradient (top-k weights with and without renormalisation,
 * the per-expert term of the aux loss, the z term), the un-permute and the shared expert's gate,
 * and the whole model's routing-loss gradients with respect to the router weights. */
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
#include "io/safetensors.h"
#include "model/model.h"
#include "model/lora.h"
#include "model/moe.h"
#include "model/quant4.h"
#include "test.h"
#include "ref_tensor.h"

/* The bar of tests/test_parity.c: max |ours - ref| / max |ref| per tensor. */
#define PARITY_TOL 1e-4
/* make_moe_hf_fixtures.py's coefficients (also in the reference metadata). */
#define FIX_AUX_COEF 0.1f
#define FIX_Z_COEF 0.01f

typedef struct {
    StFile ref;
    Model *m;
    const char *name;
} Fix;

static float *ref_f32(Fix *fx, const char *name, size_t *numel)
{
    return ref_tensor_f32(&fx->ref, fx->name, name, numel);
}

static const int32_t *ref_i32(Fix *fx, const char *name, const StTensor **tt)
{
    const StTensor *t = st_find(&fx->ref, name);
    CHECKF(t && t->dtype == ST_I32, "%s: %s missing or not I32", fx->name, name);
    if (tt) *tt = t;
    return t ? t->data : NULL;
}

static double ref_scalar(Fix *fx, const char *name)
{
    float *x = ref_f32(fx, name, NULL);
    double v = x ? x[0] : NAN;
    free(x);
    return v;
}

static int fix_open(Fix *fx, const char *name, const char *sub)
{
    memset(fx, 0, sizeof(*fx));
    fx->name = name;
    char dir[512], ref[512];
    snprintf(dir, sizeof(dir), "%s/moe/%s/%s", test_fixtures(), name, sub);
    snprintf(ref, sizeof(ref), "%s/moe/%s/reference.safetensors", test_fixtures(), name);
    CHECKF(st_open(&fx->ref, ref) == 0, "%s", err_get());
    fx->m = hf_load_model(dir, backend_cpu(), 1);
    CHECKF(fx->m != NULL, "hf_load_model %s: %s", dir, err_get());
    if (!fx->m) return -1;
    fx->m->cfg.moe_z_coef = FIX_Z_COEF;
    CHECK_CLOSE(fx->m->cfg.moe_aux_coef, FIX_AUX_COEF, 1e-7); /* router_aux_loss_coef of config.json */
    return 0;
}

static void fix_close(Fix *fx)
{
    model_free(fx->m);
    st_close(&fx->ref);
}

static void compare_grads(Fix *fx, const float *grads, const char *pass)
{
    HfTensor *t;
    int n;
    CHECK(hf_export(&fx->m->cfg, &fx->m->pt, grads, &t, &n) == 0);
    int matched = 0, expected = 0;
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < n; i++) {
        char key[160];
        snprintf(key, sizeof(key), "grad.%s", t[i].name);
        size_t numel = 0;
        float *ref = ref_f32(fx, key, &numel);
        if (!ref) continue;
        size_t ours = (size_t)t[i].shape[0] * (size_t)(t[i].ndim == 2 ? t[i].shape[1] : 1);
        CHECKF(ours == numel, "%s: %s: %zu elements, reference %zu", fx->name, key, ours, numel);
        double e = ours == numel ? rel_err_max(t[i].data, ref, numel) : INFINITY;
        CHECKF(e <= PARITY_TOL, "%s [%s]: %s: relative error %.3g", fx->name, pass, key, e);
        if (e > worst) worst = e, worst_name = t[i].name;
        matched++;
        free(ref);
    }
    for (int i = 0; i < fx->ref.n; i++) expected += !strncmp(fx->ref.t[i].name, "grad.", 5);
    CHECKF(matched == expected, "%s: matched %d of %d gradients", fx->name, matched, expected);
    fprintf(stderr, "  %s [%s]: %d gradients, worst %.3g (%s)\n", fx->name, pass, matched, worst, worst_name);
    hf_tensors_free(t, n);
}

static void check_fixture(const char *name)
{
    Fix fx;
    if (fix_open(&fx, name, "model")) return;
    Model *m = fx.m;
    const StTensor *ti;
    const int32_t *inputs = ref_i32(&fx, "input_ids", &ti), *targets = ref_i32(&fx, "targets", NULL);
    if (!inputs || !targets) goto out;
    int B = (int)ti->shape[0], T = (int)ti->shape[1], V = m->cfg.vocab_size;
    for (int rc = 0; rc <= 2; rc++) {
        char pass[32];
        snprintf(pass, sizeof(pass), "recompute %d", rc);
        CHECK(model_reserve(m, B, T, rc) == 0);
        if (rc == 0) { /* logits */
            model_forward(m, inputs, NULL, B, T, 0.0f, NULL);
            float *logits = xmalloc((size_t)B * T * V * sizeof(float));
            m->be->download_act(logits, m->logits, (size_t)B * T * V);
            size_t n;
            float *ref = ref_f32(&fx, "logits", &n);
            if (ref) CHECKF(rel_err_max(logits, ref, n) <= PARITY_TOL, "%s: logits: %.3g", name, rel_err_max(logits, ref, n));
            free(ref);
            free(logits);
        }
        int valid = 0;
        for (int i = 0; i < B * T; i++) valid += targets[i] >= 0;
        model_zero_grad(m);
        float loss = model_forward(m, inputs, targets, B, T, 1.0f / (float)valid, NULL);
        double aux = m->moe->aux, z = m->moe->z;
        CHECK_CLOSE(loss, ref_scalar(&fx, "loss"), PARITY_TOL);
        CHECK_CLOSE(aux, ref_scalar(&fx, "aux"), PARITY_TOL);
        CHECK_CLOSE(z, ref_scalar(&fx, "z"), PARITY_TOL);
        CHECK_CLOSE(loss + m->cfg.moe_aux_coef * aux, ref_scalar(&fx, "loss_aux"), PARITY_TOL);
        CHECK_CLOSE(moe_loss(m), m->cfg.moe_aux_coef * aux + m->cfg.moe_z_coef * z, 1e-12);
        model_backward(m);
        float *grads = xmalloc(m->pt.total * sizeof(float));
        model_get_grads(m, grads);
        compare_grads(&fx, grads, pass);
        free(grads);
    }
    /* greedy: full recomputation, then the KV cache of generate_run */
    const StTensor *tp, *to;
    const int32_t *prompt = ref_i32(&fx, "greedy.prompt", &tp), *want = ref_i32(&fx, "greedy.output", &to);
    if (!prompt || !want) goto out;
    int P = (int)tp->shape[1], NEW = (int)to->shape[1];
    CHECK(model_reserve(m, 1, P + NEW, RECOMPUTE_NONE) == 0);
    int32_t *ids = xmalloc((size_t)(P + NEW) * sizeof(int32_t));
    float *row = xmalloc((size_t)V * sizeof(float));
    memcpy(ids, prompt, (size_t)P * sizeof(int32_t));
    int same = 1;
    for (int k = 0; k < NEW; k++) {
        model_forward(m, ids, NULL, 1, P + k, 0.0f, NULL);
        m->be->download_act(row, act_at(m->be, m->logits, (size_t)(P + k - 1) * V), (size_t)V);
        int best = 0;
        for (int v = 1; v < V; v++)
            if (row[v] > row[best]) best = v;
        ids[P + k] = best;
        same &= best == want[k];
    }
    CHECKF(same, "%s: greedy continuation (recomputed) differs from transformers' generate()", name);
    GenOptions go = {.max_tokens = NEW, .sampler = {.temperature = 0, .top_p = 1}, .batch = 1, .eos_id = -1, .ignore_eos = 1};
    GenResult gr;
    CHECKF(generate_run(m, prompt, P, &go, &gr) == 0, "%s", err_get());
    CHECKF(gr.n_ids[0] == NEW && !memcmp(gr.ids[0], want, (size_t)NEW * sizeof(int32_t)),
           "%s: greedy continuation with the KV cache differs from transformers' generate()", name);
    gen_result_free(&gr);
    free(ids);
    free(row);
out:
    fix_close(&fx);
}

static void test_mixtral(void) { check_fixture("mixtral"); }
static void test_qwen2_moe(void) { check_fixture("qwen2_moe"); }
static void test_qwen2_moe_dense(void) { check_fixture("qwen2_moe_dense"); }

/* transformers 5's in-memory layout (fused gate_up_proj / down_proj, "mlp" names) loads the same
 * weights; a directory we write reads back bit for bit. */
static void test_fused_and_roundtrip(void)
{
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/moe/mixtral/model", test_fixtures());
    Model *a = hf_load_model(dir, backend_cpu(), 0);
    snprintf(dir, sizeof(dir), "%s/moe/mixtral/model_fused", test_fixtures());
    Model *b = hf_load_model(dir, backend_cpu(), 0);
    CHECKF(a && b, "%s", err_get());
    if (!a || !b) return;
    size_t n = a->pt.total;
    float *pa = xmalloc(n * sizeof(float)), *pb = xmalloc(n * sizeof(float));
    model_get_params(a, pa);
    model_get_params(b, pb);
    CHECK(b->pt.total == n && !memcmp(pa, pb, n * sizeof(float)));
    const char *names[] = {"mixtral", "qwen2_moe", "qwen2_moe_dense"};
    for (int i = 0; i < 3; i++) {
        snprintf(dir, sizeof(dir), "%s/moe/%s/model", test_fixtures(), names[i]);
        Model *m = hf_load_model(dir, backend_cpu(), 0);
        CHECKF(m != NULL, "%s", err_get());
        if (!m) continue;
        char tmp[] = "/tmp/anvil_moe_XXXXXX";
        CHECK(mkdtemp(tmp) != NULL);
        char out[600];
        snprintf(out, sizeof(out), "%s/out", tmp);
        float *p = xmalloc(m->pt.total * sizeof(float)), *q = xmalloc(m->pt.total * sizeof(float));
        model_get_params(m, p);
        CHECKF(hf_save(out, &m->cfg, &m->pt, p, DTYPE_F32) == 0, "%s", err_get());
        Model *r = hf_load_model(out, backend_cpu(), 0);
        CHECKF(r != NULL, "%s", err_get());
        if (r) {
            CHECK(model_config_diff(&m->cfg, &r->cfg) == NULL);
            CHECK(!strcmp(r->cfg.hf_arch, m->cfg.hf_arch));
            model_get_params(r, q);
            CHECK(r->pt.total == m->pt.total && !memcmp(p, q, m->pt.total * sizeof(float)));
            model_free(r);
        }
        fs_rm_rf(tmp);
        free(p);
        free(q);
        model_free(m);
    }
    free(pa);
    free(pb);
    model_free(a);
    model_free(b);
}

/* QLoRA of an MoE model: the experts are stored 4-bit (one state per HF tensor: w1 and w3 apart),
 * the attention adapters learn over them exactly as over a dense base holding the dequantized
 * values: the same loss and bit-identical gradients. */
static void test_qlora_experts(void)
{
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/moe/mixtral/model", test_fixtures());
    ModelConfig c;
    CHECK(hf_read_config(dir, &c) == 0);
    LoraSpec ls = {.r = 4, .alpha = 8};
    const char *all = "all-linear";
    CHECK(lora_sites_parse(&all, 1, c.family, &ls.sites) == 0);
    CHECK(lora_sites_moe(&c, &ls.sites, 1) == 0);
    Q4Spec q = {.type = Q4_NF4, .blocksize = 64, .nested = 1};
    Model *a = model_create_lora(&c, backend_cpu(), &ls, 1, 5, &q), *b = model_create_lora(&c, backend_cpu(), &ls, 1, 5, NULL);
    int n4 = 0;
    for (int i = 0; i < a->pt.n; i++) {
        const Param *p = &a->pt.p[i];
        if (p->role == PROLE_EXP_FC_W || p->role == PROLE_EXP_PROJ_W) {
            CHECKF(p->kind == PARAM_NF4, "%s is not 4-bit", p->name);
            CHECK(p->nparts == (p->role == PROLE_EXP_FC_W ? 2 : 1));
            n4++;
        }
        if (p->role == PROLE_ROUTER_W) CHECK(p->kind == PARAM_FROZEN);
    }
    CHECK(n4 == 2 * c.n_layer * c.moe_experts);
    float *host = xmalloc(a->pt.total * sizeof(float));
    CHECK(hf_read_weights(dir, &c, &a->pt, host) == 0);
    model_set_params_base(a, host);
    model_get_params(a, host); /* the dequantized experts, and a's adapters */
    Rng r;
    rng_seed(&r, 9, 0);
    for (int i = 0; i < a->pt.n; i++)
        if (a->pt.p[i].role == PROLE_LORA_B)
            for (size_t j = 0; j < a->pt.p[i].numel; j++) host[a->pt.p[i].offset + j] = (float)(0.1 * rng_normal(&r));
    model_set_params(b, host);
    for (int i = 0; i < a->pt.n; i++)
        if (a->pt.p[i].site >= 0) params_upload(&a->ps, i, host + a->pt.p[i].offset);
    enum { B = 2, T = 8 };
    int32_t in[B * T], tg[B * T];
    for (int i = 0; i < B * T; i++) in[i] = (int32_t)rng_below(&r, 96), tg[i] = (int32_t)rng_below(&r, 96);
    float *ga = xmalloc(a->pt.total * sizeof(float)), *gb = xmalloc(a->pt.total * sizeof(float));
    Model *ms[2] = {a, b};
    float *gs[2] = {ga, gb}, loss[2];
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
    for (size_t i = 0; i < a->pt.total; i++) nz += ga[i] != 0;
    CHECK(nz > 0);
    /* gate_proj names no module of Mixtral (the experts are mlp.experts, test_moe_lora.c) */
    unsigned sites;
    const char *gate = "gate_proj";
    CHECK(lora_sites_parse(&gate, 1, c.family, &sites) == 0);
    CHECK(lora_sites_moe(&c, &sites, 0) == -1 && strstr(err_get(), "no such module"));
    free(host), free(ga), free(gb);
    model_free(a);
    model_free(b);
}

/* config.json of fixture `name` with `from` replaced by `to`, in a fresh directory (no weights):
 * hf_read_config's message, or "" when it accepts it. */
static const char *config_error(const char *name, const char *from, const char *to, char *tmp)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/moe/%s/model/config.json", test_fixtures(), name);
    char *text;
    size_t n;
    if (fs_read_file(path, &text, &n)) return "cannot read the fixture";
    char *at = strstr(text, from);
    CHECKF(at != NULL, "%s: %s not in config.json", name, from);
    if (!at) return free(text), "";
    size_t pre = (size_t)(at - text), fl = strlen(from), tl = strlen(to);
    char *out = xmalloc(n - fl + tl + 1);
    memcpy(out, text, pre);
    memcpy(out + pre, to, tl);
    memcpy(out + pre + tl, at + fl, n - pre - fl);
    strcpy(tmp, "/tmp/anvil_moecfg_XXXXXX");
    CHECK(mkdtemp(tmp) != NULL);
    snprintf(path, sizeof(path), "%s/config.json", tmp);
    CHECK(fs_write_atomic(path, out, n - fl + tl) == 0);
    free(text);
    free(out);
    ModelConfig c;
    int rc = hf_read_config(tmp, &c);
    fs_rm_rf(tmp);
    return rc ? err_get() : "";
}

/* Bad MoE keys in config.json: one message naming the file and the key. */
static void test_config_errors(void)
{
    char tmp[64];
    const char *e = config_error("qwen2_moe", "\"mlp_only_layers\": []", "\"mlp_only_layers\": [3]", tmp);
    CHECKF(strstr(e, "config.json") && strstr(e, "mlp_only_layers[0]") && strstr(e, "0 .. 2"), "got: %s", e);
    e = config_error("qwen2_moe", "\"mlp_only_layers\": []", "\"mlp_only_layers\": [1, \"2\"]", tmp);
    CHECKF(strstr(e, "config.json") && strstr(e, "mlp_only_layers[1]"), "got: %s", e);
    e = config_error("qwen2_moe", "\"mlp_only_layers\": []", "\"mlp_only_layers\": 1", tmp);
    CHECKF(strstr(e, "config.json") && strstr(e, "mlp_only_layers"), "got: %s", e);
    e = config_error("mixtral", "\"num_experts_per_tok\": 2", "\"num_experts_per_tok\": 9", tmp);
    CHECKF(strstr(e, "config.json") && strstr(e, "top_k"), "got: %s", e);
    e = config_error("mixtral", "\"num_local_experts\": 4", "\"num_local_experts\": \"four\"", tmp);
    CHECKF(strstr(e, "config.json") && strstr(e, "num_local_experts"), "got: %s", e);
    e = config_error("qwen2_moe", "\"router_aux_loss_coef\": 0.1", "\"router_aux_loss_coef\": -1", tmp);
    CHECKF(strstr(e, "router_aux_loss_coef") && strstr(e, ">= 0"), "got: %s", e);
    e = config_error("qwen2_moe", "\"router_aux_loss_coef\": 0.1", "\"router_aux_loss_coef\": 0", tmp);
    CHECKF(!e[0], "a coefficient of 0 is refused: %s", e);
    e = config_error("qwen2_moe", "\"decoder_sparse_step\": 2", "\"decoder_sparse_step\": 7", tmp);
    CHECKF(strstr(e, "config.json") && strstr(e, "every"), "got: %s", e);
}

/* ---- finite differences ---- */

/* The scalar J = sum c_rs topw_rs + sum_e a_e colsum_e(probs) + zc/2 sum_r lse_r^2 of the routing
 * op, and its gradient from moe_route_bwd (dtopw = c, dpe = a, zscale = zc). */
static double route_objective(const Backend *be, const float *logits, int N, int E, int k, int norm, const float *c,
                              const float *a, float zc, const int32_t *want_sel, int *same_sel)
{
    float *probs = xmalloc((size_t)N * E * 4), *lse = xmalloc((size_t)N * 4), *tw = xmalloc((size_t)N * k * 4);
    float *st = xmalloc(((size_t)E + 1) * 4);
    int32_t *ti = xmalloc((size_t)N * k * 4);
    be->moe_route_fwd(probs, lse, ti, tw, st, logits, N, E, k, norm);
    double J = 0;
    for (int i = 0; i < N * k; i++) J += (double)c[i] * tw[i];
    for (int e = 0; e < E; e++) J += (double)a[e] * st[e];
    J += 0.5 * zc * st[E];
    *same_sel &= !memcmp(ti, want_sel, (size_t)N * k * sizeof(int32_t));
    free(probs), free(lse), free(tw), free(st), free(ti);
    return J;
}

static void test_route_fd(void)
{
    const Backend *be = backend_cpu();
    enum { N = 5, E = 6 };
    Rng r;
    rng_seed(&r, 7, 0);
    for (int norm = 0; norm <= 1; norm++)
        for (int k = 1; k <= 3; k++) {
            float logits[N * E], c[N * 3], a[E], probs[N * E], lse[N], tw[N * 3], st[E + 1], dl[N * E];
            int32_t ti[N * 3];
            for (int i = 0; i < N * E; i++) logits[i] = (float)(2 * rng_normal(&r));
            for (int i = 0; i < N * k; i++) c[i] = (float)rng_normal(&r);
            for (int e = 0; e < E; e++) a[e] = (float)rng_normal(&r);
            float zc = 0.3f;
            be->moe_route_fwd(probs, lse, ti, tw, st, logits, N, E, k, norm);
            be->moe_route_bwd(dl, probs, lse, ti, c, a, zc, N, E, k, norm);
            double worst = 0;
            int checked = 0;
            for (int i = 0; i < N * E; i++) {
                const double h = 1e-3;
                float x0 = logits[i];
                int same = 1;
                logits[i] = (float)(x0 + h);
                double jp = route_objective(be, logits, N, E, k, norm, c, a, zc, ti, &same);
                logits[i] = (float)(x0 - h);
                double jm = route_objective(be, logits, N, E, k, norm, c, a, zc, ti, &same);
                logits[i] = x0;
                if (!same) continue; /* the selection changed inside +-h: not differentiable there */
                double fd = (jp - jm) / (2 * h), d = fabs(fd - dl[i]);
                if (d > worst) worst = d;
                checked++;
            }
            CHECKF(worst < 2e-3 && checked > N * E / 2, "route k %d norm %d: max |fd - analytic| %.3g over %d", k,
                   norm, worst, checked);
            /* the selection is the k largest, in descending order */
            for (int row = 0; row < N; row++)
                for (int s = 0; s + 1 < k; s++) CHECK(probs[row * E + ti[row * k + s]] >= probs[row * E + ti[row * k + s + 1]]);
        }
}

/* The sort, gather, weighted un-permute and the shared gate against direct loops and differences. */
static void test_permute_and_gate(void)
{
    const Backend *be = backend_cpu();
    enum { N = 7, E = 4, K = 2, C = 5 };
    Rng r;
    rng_seed(&r, 9, 0);
    int32_t topi[N * K], perm[N * K], pos[N * K];
    int counts[E];
    for (int i = 0; i < N; i++) {
        topi[i * K] = (int32_t)(rng_u64(&r) % E);
        topi[i * K + 1] = (topi[i * K] + 1 + (int32_t)(rng_u64(&r) % (E - 1))) % E;
    }
    be->moe_sort(perm, pos, counts, topi, N, E, K);
    int off = 0, ok = 1;
    for (int e = 0; e < E; e++) {
        for (int j = off; j < off + counts[e]; j++) {
            ok &= topi[perm[j]] == e && pos[perm[j]] == j;
            if (j > off) ok &= perm[j] > perm[j - 1]; /* stable */
        }
        off += counts[e];
    }
    CHECK(ok && off == N * K);
    float x[N * C], xp[N * K * C], y[N * K * C], w[N * K], out[N * C], dout[N * C], dy[N * K * C], dw[N * K];
    for (int i = 0; i < N * C; i++) x[i] = (float)rng_normal(&r), dout[i] = (float)rng_normal(&r);
    for (int i = 0; i < N * K * C; i++) y[i] = (float)rng_normal(&r);
    for (int i = 0; i < N * K; i++) w[i] = (float)rng_float(&r);
    be->moe_gather_fwd(xp, x, perm, N, C, K);
    for (int j = 0; j < N * K; j++) ok &= !memcmp(xp + j * C, x + (perm[j] / K) * C, C * sizeof(float));
    CHECK(ok);
    be->moe_combine_fwd(out, y, w, pos, N, C, K);
    be->moe_combine_bwd(dy, dw, dout, y, w, pos, N, C, K);
    double err = 0;
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) {
            double s = 0;
            for (int t = 0; t < K; t++) s += (double)w[i * K + t] * y[pos[i * K + t] * C + c];
            err = fmax(err, fabs(s - out[i * C + c]));
        }
    CHECKF(err < 1e-5, "combine: %.3g", err);
    /* d(sum dout . out)/dw = <dout, y>, /dy = w dout: linear, so the analytic forms are exact */
    err = 0;
    for (int i = 0; i < N * K; i++) {
        double d = 0;
        int rr = i / K;
        for (int c = 0; c < C; c++) {
            d += (double)dout[rr * C + c] * y[pos[i] * C + c];
            err = fmax(err, fabs(dy[pos[i] * C + c] - w[i] * dout[rr * C + c]));
        }
        err = fmax(err, fabs(d - dw[i]));
    }
    CHECKF(err < 1e-5, "combine backward: %.3g", err);
    /* the gate: J = sum dout . (base + sigmoid(g) y) by differences in g */
    float g[N], ys[N * C], base[N * C], dys[N * C], dg[N];
    for (int i = 0; i < N; i++) g[i] = (float)rng_normal(&r);
    for (int i = 0; i < N * C; i++) ys[i] = (float)rng_normal(&r), base[i] = 0;
    be->moe_gate_bwd(dys, dg, dout, ys, g, N, C);
    err = 0;
    for (int i = 0; i < N; i++) {
        const double h = 1e-3;
        double J[2];
        for (int sgn = 0; sgn < 2; sgn++) {
            float gg[N], o[N * C];
            memcpy(gg, g, sizeof(gg));
            memcpy(o, base, sizeof(o));
            gg[i] = (float)(g[i] + (sgn ? -h : h));
            be->moe_gate_fwd(o, ys, gg, N, C);
            J[sgn] = 0;
            for (int q = 0; q < N * C; q++) J[sgn] += (double)dout[q] * o[q];
        }
        err = fmax(err, fabs((J[0] - J[1]) / (2 * h) - dg[i]));
        double s = 1 / (1 + exp(-g[i]));
        for (int c = 0; c < C; c++) err = fmax(err, fabs(dys[i * C + c] - s * dout[i * C + c]));
    }
    CHECKF(err < 2e-3, "gate: %.3g", err);
}

/* The whole model: d(loss + aux_coef aux + z_coef z)/d(router weights) against central differences
 * of the objective (large coefficients, so that the routing losses dominate those weights' gradient). */
/* moe-tiny made smaller: 2 layers of width 16, 2 heads (1 kv), experts of width 24, 64 ids. */
static void small_moe(ModelConfig *c)
{
    CHECK(model_preset(c, "moe-tiny") == 0);
    c->n_layer = 2;
    c->d_model = 16;
    c->n_head = 2;
    c->n_kv_head = 1;
    c->moe_d_ff = c->d_ff = 24;
    c->vocab_size = 64;
    c->max_seq_len = 16;
}

static void test_model_fd(void)
{
    ModelConfig c;
    small_moe(&c);
    c.moe_shared_d_ff = 16; /* and a shared expert */
    c.qkv_bias = 1;
    c.moe_aux_coef = 1.0f;
    c.moe_z_coef = 0.1f;
    CHECKF(model_config_finish(&c) == 0, "%s", err_get());
    Model *m = model_create(&c, backend_cpu());
    model_init_gpt2(m, 5);
    /* larger router weights: a routing far from uniform */
    for (int l = 0; l < c.n_layer; l++) {
        int i = m->lp[l].router.w;
        float *w = xmalloc(m->pt.p[i].numel * sizeof(float));
        Rng r;
        rng_seed(&r, 11, (uint64_t)l);
        for (size_t q = 0; q < m->pt.p[i].numel; q++) w[q] = (float)(0.5 * rng_normal(&r));
        params_upload(&m->ps, i, w);
        free(w);
    }
    enum { B = 2, T = 8 };
    int32_t in[B * T], tg[B * T];
    Rng r;
    rng_seed(&r, 3, 0);
    for (int i = 0; i < B * T; i++) in[i] = (int32_t)(rng_u64(&r) % 64), tg[i] = (int32_t)(rng_u64(&r) % 64);
    CHECK(model_reserve(m, B, T, RECOMPUTE_NONE) == 0);
    model_zero_grad(m);
    model_forward(m, in, tg, B, T, 1.0f / (B * T), NULL);
    model_backward(m);
    float *grads = xmalloc(m->pt.total * sizeof(float)), *p = xmalloc(m->pt.total * sizeof(float));
    model_get_grads(m, grads);
    model_get_params(m, p);
    double worst = 0, gmax = 0;
    int checked = 0, flipped = 0;
    size_t nsel = (size_t)B * T * c.moe_top_k;
    int32_t *sel0 = xmalloc((size_t)c.n_layer * nsel * sizeof(int32_t));
    for (int l = 0; l < c.n_layer; l++) memcpy(sel0 + l * nsel, m->la[l].moe->topi, nsel * sizeof(int32_t));
    for (int l = 0; l < c.n_layer; l++) {
        const Param *pr = &m->pt.p[m->lp[l].router.w];
        for (size_t q = 0; q < pr->numel; q += 3) {
            size_t k = pr->offset + q;
            const double h = 2e-3;
            double J[2];
            int same = 1;
            for (int sgn = 0; sgn < 2; sgn++) {
                float x0 = p[k];
                p[k] = (float)(x0 + (sgn ? -h : h));
                model_set_params(m, p);
                double lm = model_forward(m, in, tg, B, T, 0.0f, NULL);
                J[sgn] = lm + moe_loss(m);
                for (int j = 0; j < c.n_layer; j++) /* the selection must not change inside +-h */
                    same &= !memcmp(m->la[j].moe->topi, sel0 + j * nsel, nsel * sizeof(int32_t));
                p[k] = x0;
            }
            if (!same) {
                flipped++;
                continue;
            }
            double fd = (J[0] - J[1]) / (2 * h), d = fabs(fd - grads[k]);
            CHECKF(d <= 0.02 * fabs(grads[k]) + 1e-3, "router %d weight %zu: fd %.6g, backward %.6g", l, q, fd,
                   (double)grads[k]);
            worst = fmax(worst, d);
            gmax = fmax(gmax, fabs(grads[k]));
            checked++;
        }
    }
    free(sel0);
    fprintf(stderr, "  model fd: %d router weights checked (%d skipped as flips), worst |diff| %.3g, max |grad| %.3g\n",
            checked, flipped, worst, gmax);
    CHECKF(checked > 20, "model fd: only %d router weights without a selection flip", checked);
    free(grads);
    free(p);
    model_free(m);
}

/* Mixtral's router jitter (model.moe.router_jitter): the op's draw (within [1 - eps, 1 + eps], mean 1,
 * variance eps^2 / 3, the same for a seed, in place alike); a model with it: the training loss differs
 * from the eval loss, which equals the model's without jitter bit for bit; recompute levels bit-identical;
 * every gradient against central differences of the training loss (the same draw: the seed is the
 * micro-step's) along a random direction of each tensor; jitter with a shared expert refused. */
static void test_jitter(void)
{
    const Backend *be = backend_cpu();
    enum { NJ = 200000 };
    float eps = 0.1f, *one = xmalloc(NJ * sizeof(float)), *y = xmalloc(NJ * sizeof(float)),
          *y2 = xmalloc(NJ * sizeof(float));
    for (int i = 0; i < NJ; i++) one[i] = 1.0f;
    be->jitter(y, one, NJ, eps, 77);
    double mean = 0, var = 0, lo = 2, hi = 0;
    for (int i = 0; i < NJ; i++) mean += y[i], lo = fmin(lo, y[i]), hi = fmax(hi, y[i]);
    mean /= NJ;
    for (int i = 0; i < NJ; i++) var += (y[i] - mean) * (y[i] - mean);
    var /= NJ;
    CHECKF(lo >= 1 - eps && hi <= 1 + eps && lo < 1 - 0.99 * eps && hi > 1 + 0.99 * eps, "jitter range %g .. %g", lo, hi);
    CHECKF(fabs(mean - 1) < 4 * eps / sqrt(3.0 * NJ), "jitter mean %.6f", mean);
    CHECKF(fabs(var / (eps * eps / 3) - 1) < 0.02, "jitter variance %.4g, want %.4g", var, eps * eps / 3);
    be->jitter(y2, one, NJ, eps, 77);
    CHECK(!memcmp(y, y2, NJ * sizeof(float)));
    be->jitter(y2, one, NJ, eps, 78);
    CHECK(memcmp(y, y2, NJ * sizeof(float)));
    memcpy(y2, one, NJ * sizeof(float));
    be->jitter(y2, y2, NJ, eps, 77);
    CHECK(!memcmp(y, y2, NJ * sizeof(float)));
    free(one), free(y), free(y2);

    ModelConfig c;
    small_moe(&c);
    c.moe_aux_coef = 0.1f;
    c.moe_z_coef = 0.01f;
    c.moe_jitter = 0.2f;
    ModelConfig bad = c;
    bad.moe_shared_d_ff = 16;
    CHECK(model_config_finish(&bad) == -1 && strstr(err_get(), "model.moe.router_jitter"));
    bad = c;
    bad.moe_jitter = 1.0f;
    CHECK(model_config_finish(&bad) == -1 && strstr(err_get(), "[0, 1)"));
    CHECKF(model_config_finish(&c) == 0, "%s", err_get());
    ModelConfig c0 = c;
    c0.moe_jitter = 0;
    Model *m = model_create(&c, be), *m0 = model_create(&c0, be);
    model_init_gpt2(m, 9);
    float *p = xmalloc(m->pt.total * sizeof(float));
    model_get_params(m, p);
    Rng r;
    rng_seed(&r, 4, 0);
    for (int l = 0; l < c.n_layer; l++) { /* a decisive routing: few selections flip inside +-h */
        const Param *pr = &m->pt.p[m->lp[l].router.w];
        for (size_t q = 0; q < pr->numel; q++) p[pr->offset + q] = (float)(2.0 * rng_normal(&r));
    }
    model_set_params(m, p);
    model_set_params(m0, p);
    enum { B = 2, T = 8 };
    int32_t in[B * T], tg[B * T];
    for (int i = 0; i < B * T; i++) in[i] = (int32_t)(rng_u64(&r) % 64), tg[i] = (int32_t)(rng_u64(&r) % 64);
    float scale = 1.0f / (B * T);
    CHECK(model_reserve(m, B, T, RECOMPUTE_NONE) == 0 && model_reserve(m0, B, T, RECOMPUTE_NONE) == 0);
    m->dropout_seed = m0->dropout_seed = 1234;
    float ev = model_forward(m, in, tg, B, T, 0.0f, NULL), ev0 = model_forward(m0, in, tg, B, T, 0.0f, NULL);
    CHECKF(ev == ev0, "eval loss with jitter %.7f, without %.7f", ev, ev0);
    float tr0 = model_forward(m0, in, tg, B, T, scale, NULL), tr = model_forward(m, in, tg, B, T, scale, NULL);
    CHECKF(tr0 == ev0 && tr != ev, "training loss with jitter %.7f, eval %.7f (without: %.7f)", tr, ev, tr0);
    /* the gradients at recompute 0, 1 and 2: bit-identical */
    float *g[3], loss[3];
    for (int rc = 0; rc <= 2; rc++) {
        CHECK(model_reserve(m, B, T, rc) == 0);
        m->dropout_seed = 1234;
        model_zero_grad(m);
        loss[rc] = model_forward(m, in, tg, B, T, scale, NULL) + (float)moe_loss(m);
        model_backward(m);
        g[rc] = xmalloc(m->pt.total * sizeof(float));
        model_get_grads(m, g[rc]);
    }
    for (int rc = 1; rc <= 2; rc++)
        CHECKF(loss[rc] == loss[0] && !memcmp(g[rc], g[0], m->pt.total * sizeof(float)),
               "jitter: recompute %d differs from recompute 0", rc);
    CHECK(model_reserve(m, B, T, RECOMPUTE_NONE) == 0);
    /* central differences of the training loss (+ routing losses) along a random +-1 direction per tensor */
    size_t nsel = (size_t)B * T * c.moe_top_k;
    int32_t *sel0 = xmalloc((size_t)c.n_layer * nsel * sizeof(int32_t));
    m->dropout_seed = 1234;
    model_forward(m, in, tg, B, T, scale, NULL);
    for (int l = 0; l < c.n_layer; l++) memcpy(sel0 + l * nsel, m->la[l].moe->topi, nsel * sizeof(int32_t));
    int checked = 0, bad_fd = 0, flipped = 0;
    float *x = xmalloc(m->pt.total * sizeof(float));
    for (int i = 0; i < m->pt.n; i++) {
        const Param *pa = &m->pt.p[i];
        float *v = xmalloc(pa->numel * sizeof(float));
        double gv = 0;
        for (size_t j = 0; j < pa->numel; j++) {
            v[j] = rng_below(&r, 2) ? 1.0f : -1.0f;
            gv += (double)g[0][pa->offset + j] * v[j];
        }
        const double h = 1e-2; /* the fp32 loss's rounding over 2h stays far below the gradients */
        double J[2];
        int same = 1;
        for (int sgn = 0; sgn < 2; sgn++) {
            memcpy(x, p, m->pt.total * sizeof(float));
            for (size_t j = 0; j < pa->numel; j++) x[pa->offset + j] = (float)(p[pa->offset + j] + (sgn ? -h : h) * v[j]);
            params_upload(&m->ps, i, x + pa->offset);
            m->dropout_seed = 1234;
            J[sgn] = model_forward(m, in, tg, B, T, scale, NULL) + moe_loss(m);
            for (int l = 0; l < c.n_layer; l++)
                same &= !memcmp(m->la[l].moe->topi, sel0 + l * nsel, nsel * sizeof(int32_t));
        }
        params_upload(&m->ps, i, p + pa->offset);
        free(v);
        if (!same) {
            flipped++;
            continue;
        }
        double fd = (J[0] - J[1]) / (2 * h);
        int ok = fabs(fd - gv) <= 2e-2 * fabs(gv) + 2e-4;
        if (!ok) fprintf(stderr, "  jitter: %s: fd %.6g, backward %.6g\n", pa->name, fd, gv);
        bad_fd += !ok;
        checked++;
    }
    fprintf(stderr, "  jitter: %d tensors against finite differences (%d skipped as flips); loss train %.6f eval %.6f\n",
            checked, flipped, tr, ev);
    CHECKF(bad_fd == 0 && checked >= m->pt.n - 4, "jitter: %d of %d tensors off their finite differences", bad_fd,
           checked);
    free(sel0), free(x), free(p);
    for (int rc = 0; rc <= 2; rc++) free(g[rc]);
    model_free(m);
    model_free(m0);
}

int main(void)
{
    RUN(test_route_fd);
    RUN(test_permute_and_gate);
    RUN(test_mixtral);
    RUN(test_qwen2_moe);
    RUN(test_qwen2_moe_dense);
    RUN(test_fused_and_roundtrip);
    RUN(test_config_errors);
    RUN(test_qlora_experts);
    RUN(test_model_fd);
    RUN(test_jitter);
    return test_summary();
}
