/* test_qlora.c - 4-bit bases in the parameter store (PARAM_NF4): a bitsandbytes-saved directory
 * loads as it is and gives transformers + bitsandbytes' logits and loss; model.quant nf4 stores
 * exactly the bytes bitsandbytes stores for the same bf16 weights; QLoRA's adapter gradients equal
 * those over a dense base holding the dequantized weights; the 4-bit tensors hold no gradient and
 * take a quarter of the bytes. Fixtures: tests/fixtures/bnb (tools/make_bnb_fixtures.py). CPU. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"
#include "eval/load.h"
#include "io/bnb.h"
#include "io/bnb_model.h"
#include "io/fsutil.h"
#include "io/hf.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "test.h"

static char *fixture(const char *rel)
{
    size_t n = strlen(test_fixtures()) + strlen(rel) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", test_fixtures(), rel);
    return p;
}

/* A bitsandbytes directory loads 4-bit (nq_layer 4-bit tensors a layer) and computes the logits and loss
 * of reference (transformers + bitsandbytes, or the directory's model with its 4-bit weights dequantized). */
static void check_bnb_forward(const char *rel, const char *ref_rel, int nq_layer)
{
    char *dir = fixture(rel), *ref = fixture(ref_rel);
    if (!fs_exists(ref)) {
        fprintf(stderr, "  skip: %s absent\n", ref);
        free(dir), free(ref);
        return;
    }
    Model *m = eval_load_model(dir, NULL, backend_cpu());
    CHECKF(m != NULL, "%s: %s", rel, err_get());
    if (!m) return;
    int nq = 0;
    for (int i = 0; i < m->pt.n; i++) nq += m->pt.p[i].kind == PARAM_NF4;
    CHECKF(nq == nq_layer * m->cfg.n_layer, "%s: %d 4-bit tensors", rel, nq);
    StFile f;
    CHECK(st_open(&f, ref) == 0);
    const StTensor *ids = st_find(&f, "input_ids"), *tg = st_find(&f, "targets");
    int B = (int)ids->shape[0], T = (int)ids->shape[1], V = m->cfg.vocab_size;
    int32_t *in = xmalloc(ids->nbytes), *tt = xmalloc(tg->nbytes);
    memcpy(in, ids->data, ids->nbytes);
    memcpy(tt, tg->data, tg->nbytes);
    CHECK(model_reserve(m, B, T, 0) == 0);
    model_forward(m, in, NULL, B, T, 0, NULL);
    float *lr = xmalloc((size_t)B * T * V * sizeof(float)), loss_ref;
    st_to_f32(st_find(&f, "logits"), lr);
    st_to_f32(st_find(&f, "loss"), &loss_ref);
    double e = rel_err_max(m->logits, lr, (size_t)B * T * V);
    CHECKF(e < 2e-5, "%s: logits rel err %.3g against %s", rel, e, ref_rel);
    float loss = model_forward(m, in, tt, B, T, 0, NULL);
    CHECK_CLOSE(loss, loss_ref, 2e-5);
    st_close(&f);
    free(in), free(tt), free(lr), free(dir), free(ref);
    model_free(m);
}

/* The directory transformers + bitsandbytes saved loads 4-bit and computes their logits and loss. */
static void test_bnb_dir_forward(void) { check_bnb_forward("bnb/llama_nf4", "bnb/llama_nf4/reference.safetensors", 4); }

/* Mixtral: a transformers-4 style directory (every expert's w1/w2/w3 4-bit) loads as it is: qkv, o and each
 * of the 4 experts' [w1; w3] and w2 4-bit, 10 tensors a layer, and gives the logits of its model with the
 * experts dequantized. A transformers-5 directory (experts stored plain, attention 4-bit) loads with the
 * experts quantized on load: then the same 4-bit model, so the same logits. */
static void test_bnb_moe_forward(void)
{
    check_bnb_forward("bnb/mixtral_nf4_experts", "bnb/mixtral_nf4_experts/reference.safetensors", 10);
    check_bnb_forward("bnb/mixtral_nf4", "bnb/mixtral_nf4_experts/reference.safetensors", 10);
}

/* Quantizing the plain experts on load gives bitsandbytes' bytes: the 4-bit states loaded from mixtral_nf4
 * (experts plain) equal those of mixtral_nf4_experts (experts quantized by bitsandbytes) part by part. */
static void test_bnb_moe_quantize_on_load(void)
{
    char *a = fixture("bnb/mixtral_nf4"), *b = fixture("bnb/mixtral_nf4_experts");
    if (!fs_is_dir(a) || !fs_is_dir(b)) {
        fprintf(stderr, "  skip: %s absent\n", b);
        free(a), free(b);
        return;
    }
    Model *ma = eval_load_model(a, NULL, backend_cpu()), *mb = eval_load_model(b, NULL, backend_cpu());
    CHECKF(ma && mb, "%s", err_get());
    int compared = 0;
    for (int i = 0; ma && mb && i < ma->pt.n; i++) {
        const Param *p = &ma->pt.p[i];
        CHECK(p->kind == mb->pt.p[i].kind);
        if (p->kind != PARAM_NF4) continue;
        for (int k = 0; k < p->nparts; k++) {
            const Q4State *x = &ma->ps.q4[i][k].s, *y = &mb->ps.q4[i][k].s;
            int64_t nb = q4_nblocks(x->n, x->blocksize);
            int same = x->n == y->n && !memcmp(x->packed, y->packed, q4_packed_bytes(x->n)) && x->qabsmax &&
                       y->qabsmax && !memcmp(x->qabsmax, y->qabsmax, (size_t)nb) &&
                       x->nested_offset == y->nested_offset;
            CHECKF(same, "%s part %d: quantized on load differs from bitsandbytes' stored bytes", p->name, k);
            compared++;
        }
    }
    /* every layer: qkv (3 parts), o, and 4 experts of [w1; w3] (2 parts) and w2 */
    CHECKF(!ma || compared == ma->cfg.n_layer * (3 + 1 + 4 * 3), "%d parts compared", compared);
    if (ma) model_free(ma);
    if (mb) model_free(mb);
    free(a), free(b);
}

/* model.quant nf4 over the plain base gives bitsandbytes' bytes for every part of every weight. */
static void test_quantize_like_bnb(void)
{
    char *plain = fixture("llama/model"), *dir = fixture("bnb/llama_nf4");
    BnbDir d;
    if (!fs_is_dir(dir) || bnb_open(&d, dir)) {
        fprintf(stderr, "  skip: %s absent\n", dir);
        free(plain), free(dir);
        return;
    }
    ModelConfig c;
    CHECK(hf_read_config(plain, &c) == 0);
    LoraSpec ls = {0};
    Q4Spec q = {.type = Q4_NF4, .blocksize = 64, .nested = 1};
    Model *m = model_create_lora(&c, backend_cpu(), &ls, 0, 0, &q);
    float *host = xmalloc(m->pt.total * sizeof(float));
    CHECK(hf_read_weights(plain, &c, &m->pt, host) == 0);
    model_set_params_base(m, host);
    HfName *names;
    int n, compared = 0;
    CHECK(hf_names(&m->cfg, &m->pt, &names, &n) == 0);
    for (int i = 0; i < m->pt.n; i++) {
        if (m->pt.p[i].kind != PARAM_NF4) continue;
        int part = 0;
        for (int k = 0; k < n; k++) {
            if (names[k].param != i) continue;
            const BnbTensor *t = bnb_find(&d, names[k].name);
            const Q4State *ours = &m->ps.q4[i][part++].s;
            CHECKF(t && ours->n == t->q.n, "%s", names[k].name);
            if (!t) continue;
            int64_t nb = q4_nblocks(t->q.n, t->q.blocksize);
            CHECKF(!memcmp(ours->packed, t->q.packed, q4_packed_bytes(t->q.n)), "%s: packed bytes differ", names[k].name);
            CHECKF(ours->qabsmax && t->q.qabsmax && !memcmp(ours->qabsmax, t->q.qabsmax, (size_t)nb),
                   "%s: 8-bit scales differ", names[k].name);
            CHECKF(ours->nested_offset == t->q.nested_offset, "%s: offset %.9g vs %.9g", names[k].name,
                   ours->nested_offset, t->q.nested_offset);
            compared++;
        }
    }
    CHECKF(compared == 7 * c.n_layer, "%d 4-bit parts compared", compared);
    /* half a byte per value, a byte per block of 64, a float per 256 blocks and the 8-bit map per part;
     * no gradient, no master */
    ParamBytes pb = params_bytes(&m->ps);
    size_t want = 0;
    for (int i = 0; i < m->pt.n; i++) {
        if (m->pt.p[i].kind != PARAM_NF4) continue;
        CHECK(params_g(&m->ps, i) == NULL);
        for (int k = 0; k < m->pt.p[i].nparts; k++) {
            int64_t nv = (int64_t)m->pt.p[i].part_rows[k] * m->pt.p[i].shape[1], nb = q4_nblocks(nv, 64);
            want += q4_packed_bytes(nv) + (size_t)nb + (size_t)q4_nblocks(nb, 256) * 4 + Q4_MAP8_SIZE * 4;
        }
    }
    CHECKF(m->ps.q4_bytes == want, "4-bit storage %zu bytes, expected %zu", m->ps.q4_bytes, want);
    CHECK(pb.grads == 0 && pb.master == 0);
    free(names), free(host), free(plain), free(dir);
    bnb_close(&d);
    model_free(m);
}

/* The adapters learn the same over a 4-bit base as over a dense base holding its dequantized
 * values: the products see the same numbers, so the gradients are bit-identical. */
static void test_qlora_grads_as_dense(void)
{
    char *plain = fixture("llama/model");
    ModelConfig c;
    CHECK(hf_read_config(plain, &c) == 0);
    LoraSpec ls = {.r = 4, .alpha = 8};
    const char *all = "all-linear";
    CHECK(lora_sites_parse(&all, 1, c.family, &ls.sites) == 0);
    Q4Spec q = {.type = Q4_NF4, .blocksize = 64, .nested = 1};
    Model *a = model_create_lora(&c, backend_cpu(), &ls, 1, 5, &q), *b = model_create_lora(&c, backend_cpu(), &ls, 1, 5, NULL);
    float *host = xmalloc(a->pt.total * sizeof(float));
    CHECK(hf_read_weights(plain, &c, &a->pt, host) == 0);
    model_set_params_base(a, host);
    model_get_params(a, host); /* the dequantized base, and a's adapters */
    Rng r;
    rng_seed(&r, 9, 0);
    for (int i = 0; i < a->pt.n; i++) /* nonzero B so every adapter path carries gradient */
        if (a->pt.p[i].role == PROLE_LORA_B)
            for (size_t j = 0; j < a->pt.p[i].numel; j++) host[a->pt.p[i].offset + j] = (float)(0.1 * rng_normal(&r));
    model_set_params(b, host);
    for (int i = 0; i < a->pt.n; i++)
        if (a->pt.p[i].site >= 0) params_upload(&a->ps, i, host + a->pt.p[i].offset);
    int B = 2, T = 8;
    int32_t in[16], tg[16];
    for (int i = 0; i < 16; i++) in[i] = (int32_t)rng_below(&r, 96), tg[i] = (int32_t)rng_below(&r, 96);
    float *ga = xmalloc(a->pt.total * sizeof(float)), *gb = xmalloc(a->pt.total * sizeof(float));
    Model *ms[2] = {a, b};
    float *gs[2] = {ga, gb}, loss[2];
    for (int k = 0; k < 2; k++) {
        CHECK(model_reserve(ms[k], B, T, 0) == 0);
        model_zero_grad(ms[k]);
        loss[k] = model_forward(ms[k], in, tg, B, T, 1.0f / 16, NULL);
        model_backward(ms[k]);
        model_get_grads(ms[k], gs[k]);
    }
    CHECK(loss[0] == loss[1]);
    CHECK(!memcmp(ga, gb, a->pt.total * sizeof(float)));
    size_t nz = 0;
    for (size_t i = 0; i < a->pt.total; i++) nz += ga[i] != 0;
    CHECK(nz > 0);
    free(host), free(ga), free(gb), free(plain);
    model_free(a);
    model_free(b);
}

int main(void)
{
    RUN(test_bnb_dir_forward);
    RUN(test_bnb_moe_forward);
    RUN(test_bnb_moe_quantize_on_load);
    RUN(test_quantize_like_bnb);
    RUN(test_qlora_grads_as_dense);
    return test_summary();
}
