/* cmd_quantize.c - `anvil quantize`: bitsandbytes 4-bit directories (docs/finetuning.md).
 *
 *   anvil quantize --model DIR --quant nf4|fp4 [--no-double-quant] [--blocksize 64] --out DIR4
 *       every linear weight of the blocks (LLaMA family: q/k/v/o_proj, gate/up/down_proj;
 *       GPT-2: c_attn, c_proj, c_fc, mlp.c_proj, transposed to (out, in) as transformers
 *       does) quantized from its bf16 value, the rest (embeddings, norms, biases, lm_head)
 *       in bf16, config.json with quantization_config, tokenizer files copied; the layout
 *       transformers + bitsandbytes save and load. Built in "<DIR4>.tmp.<pid>", renamed.
 *   anvil quantize --model DIR --quant bitnet --out DIRB
 *       a BitNet b1.58 model (model.ternary: bitnet, e.g. a QAT checkpoint with fp32 latent weights) as
 *       transformers' offline BitLinear layout: packed 2-bit trits + weight_scale per block linear
 *       (hf_save_bitnet, docs/ternary.md); tokenizer files copied.
 *   anvil quantize --check DIR4 [--model DIR]
 *       validates a 4-bit directory (anvil's or bitsandbytes'); with --model, checks every
 *       dequantized weight against the original within the 4-bit error bound.
 *   anvil quantize --dequantize DIR4 --out DIR
 *       a plain fp32 HF directory with the weights dequantized.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/error.h"
#include "io/bnb.h"
#include "io/fsutil.h"
#include "io/hf.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/params.h"
#include "model/quant4.h"

static const char *quantize_usage =
    "usage: anvil quantize --model DIR --quant nf4|fp4 [--no-double-quant] [--blocksize 64] --out DIR4\n"
    "       anvil quantize --model DIR --quant bitnet --out DIRB   (packed ternary, transformers' BitLinear)\n"
    "       anvil quantize --check DIR4 [--model DIR]\n"
    "       anvil quantize --dequantize DIR4 --out DIR\n"
    "  Writes (or checks, or undoes) the bitsandbytes 4-bit layout that transformers loads with\n"
    "  BitsAndBytesConfig(load_in_4bit=True). Double quantization of the absmax is on by default.\n";

/* Files a model directory may carry besides the weights, copied as they are. */
static const char *tokenizer_files[] = {"tokenizer.json",
                                        "tokenizer_config.json",
                                        "special_tokens_map.json",
                                        "vocab.json",
                                        "merges.txt",
                                        "tokenizer.model",
                                        "vocab.txt",
                                        "added_tokens.json",
                                        "chat_template.jinja"};

/* Tensors hf.c ignores when reading (buffers), never written. */
static const char *buffer_suffix[] = {".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq"};

static int fail(void)
{
    fprintf(stderr, "anvil: %s\n", err_get());
    return 1;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

/* A linear weight of a block, which bitsandbytes replaces with Linear4bit
 * (transformers' replace_with_bnb_linear: every nn.Linear and Conv1D but the
 * output head). */
static int is_block_linear(const ModelConfig *c, const char *name)
{
    static const char *llama[] = {".self_attn.q_proj.weight", ".self_attn.k_proj.weight",
                                  ".self_attn.v_proj.weight", ".self_attn.o_proj.weight",
                                  ".mlp.gate_proj.weight",    ".mlp.up_proj.weight",
                                  ".mlp.down_proj.weight"};
    if (c->family == FAMILY_GPT2) return bnb_hf_conv1d("gpt2", name);
    if (!strstr(name, "layers.")) return 0;
    for (size_t i = 0; i < ARRAY_LEN(llama); i++)
        if (ends_with(name, llama[i])) return 1;
    return 0;
}

static int is_buffer(const ModelConfig *c, const char *name)
{
    for (size_t i = 0; i < ARRAY_LEN(buffer_suffix); i++)
        if (ends_with(name, buffer_suffix[i])) return 1;
    return c->tie_embeddings && !strcmp(name, "lm_head.weight");
}

/* x -> its bf16 value (what transformers holds after from_pretrained(dtype=bfloat16)). */
static void round_bf16(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) x[i] = st_bf16_to_f32(st_f32_to_bf16(x[i]));
}

/* The (out, in) bf16 values of a weight as bitsandbytes quantizes it. */
static float *weight_out_in(const ModelConfig *c, const StTensor *t, int64_t *rows, int64_t *cols)
{
    float *x = xmalloc(t->numel * sizeof(float));
    st_to_f32(t, x);
    round_bf16(x, t->numel);
    *rows = t->shape[0];
    *cols = t->shape[1];
    if (c->family == FAMILY_GPT2) { /* Conv1D (in, out) -> (out, in) */
        float *y = xmalloc(t->numel * sizeof(float));
        for (int64_t i = 0; i < t->shape[0]; i++)
            for (int64_t o = 0; o < t->shape[1]; o++) y[o * t->shape[0] + i] = x[i * t->shape[1] + o];
        free(x);
        x = y;
        *rows = t->shape[1];
        *cols = t->shape[0];
    }
    return x;
}

typedef struct {
    const char *model, *out, *check, *dequant;
    Q4Type type;
    int have_type, double_quant, blocksize;
    int bitnet; /* --quant bitnet */
} QArgs;

static int copy_file(const char *src_dir, const char *dst_dir, const char *name)
{
    char *src = fs_join(src_dir, name), *dst = fs_join(dst_dir, name), *text = NULL;
    size_t n;
    int rc = 0;
    if (fs_exists(src)) rc = fs_read_file(src, &text, &n) || fs_write_atomic(dst, text, n) ? -1 : 0;
    free(text);
    free(src);
    free(dst);
    return rc;
}

/* Quantize into the existing directory tmp. */
static int quantize_into(const QArgs *a, const ModelConfig *cfg, const char *tmp, int *nquant, size_t *bytes)
{
    StSet set;
    if (st_set_open_dir(&set, a->model, "model") != 0) return -1;
    int cap = 0, np = 0, nq = 0, rc = 0;
    for (int f = 0; f < set.nfiles; f++) cap += set.files[f].n;
    StWriteTensor *plain = xcalloc((size_t)cap + 1, sizeof(StWriteTensor));
    BnbWriteQuant *wq = xcalloc((size_t)cap + 1, sizeof(BnbWriteQuant));
    Q4Quant *qs = xcalloc((size_t)cap + 1, sizeof(Q4Quant));
    float **bufs = xcalloc((size_t)cap + 1, sizeof(float *));
    int nbuf = 0;
    for (int f = 0; f < set.nfiles && rc == 0; f++) {
        for (int i = 0; i < set.files[f].n && rc == 0; i++) {
            const StTensor *t = &set.files[f].t[i];
            if (is_buffer(cfg, t->name)) continue;
            int floating =
                t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16 || t->dtype == ST_F64;
            if (is_block_linear(cfg, t->name) && floating && t->ndim == 2) {
                int64_t rows, cols;
                float *x = weight_out_in(cfg, t, &rows, &cols);
                rc = q4_quantize(x, rows * cols, a->type, a->blocksize, a->double_quant, &qs[nq]);
                free(x);
                if (rc != 0) {
                    err_prefix("%s: %s", set.files[f].path, t->name);
                    break;
                }
                wq[nq] = (BnbWriteQuant){
                    .name = t->name, .rows = rows, .cols = cols, .dtype = ST_BF16, .q = &qs[nq]};
                *bytes += q4_packed_bytes(rows * cols);
                nq++;
                continue;
            }
            StWriteTensor *p = &plain[np++];
            p->name = t->name;
            p->ndim = t->ndim;
            memcpy(p->shape, t->shape, sizeof(p->shape));
            if (!floating) { /* integer buffers travel as they are */
                p->dtype = t->dtype;
                p->data = t->data;
                *bytes += t->nbytes;
                continue;
            }
            float *x = bufs[nbuf++] = xmalloc((t->numel ? t->numel : 1) * sizeof(float));
            st_to_f32(t, x);
            p->dtype = ST_BF16;
            p->src_f32 = 1;
            p->data = x;
            *bytes += 2 * t->numel;
        }
    }
    if (rc == 0 && nq == 0) rc = err_set("%s: no block linear weights to quantize", a->model);
    if (rc == 0) rc = bnb_write_weights(tmp, plain, np, wq, nq);
    *nquant = nq;
    for (int i = 0; i < nq; i++) q4_quant_free(&qs[i]);
    for (int i = 0; i < nbuf; i++) free(bufs[i]);
    free(bufs);
    free(qs);
    free(wq);
    free(plain);
    st_set_close(&set);
    return rc;
}

static int run_quantize(const QArgs *a)
{
    ModelConfig cfg;
    ParamTable pt;
    BnbConfig qc = {.quant_type = a->type, .double_quant = a->double_quant};
    snprintf(qc.compute_dtype, sizeof(qc.compute_dtype), "bfloat16");
    snprintf(qc.quant_storage, sizeof(qc.quant_storage), "uint8");
    int already = bnb_read_config(a->model, &qc);
    if (already != 0) {
        if (already > 0) err_set("%s: already a bitsandbytes 4-bit directory", a->model);
        return fail();
    }
    qc.quant_type = a->type;
    qc.double_quant = a->double_quant;
    snprintf(qc.compute_dtype, sizeof(qc.compute_dtype), "bfloat16");
    if (hf_read_config(a->model, &cfg) != 0) return fail();
    param_table_build(&pt, &cfg);
    int rc = hf_read_weights(a->model, &cfg, &pt, NULL); /* every tensor present, right shapes */
    param_table_free(&pt);
    if (rc != 0) return fail();
    size_t len = strlen(a->out);
    while (len > 1 && a->out[len - 1] == '/') len--;
    char *tmp = xmalloc(len + 32);
    snprintf(tmp, len + 32, "%.*s.tmp.%ld", (int)len, a->out, (long)getpid());
    int nq = 0;
    size_t bytes = 0;
    rc = fs_rm_rf(tmp);
    if (rc == 0) rc = fs_mkdir_p(tmp);
    if (rc == 0) rc = quantize_into(a, &cfg, tmp, &nq, &bytes);
    if (rc == 0) rc = bnb_write_config(a->model, tmp, &qc);
    for (size_t i = 0; i < ARRAY_LEN(tokenizer_files) && rc == 0; i++)
        rc = copy_file(a->model, tmp, tokenizer_files[i]);
    if (rc == 0) { /* read back what was written before publishing it */
        BnbDir d;
        rc = bnb_open(&d, tmp);
        if (rc == 0) bnb_close(&d);
    }
    if (rc == 0) rc = fs_publish_dir(tmp, a->out);
    if (rc != 0) {
        char keep[ANVIL_ERR_MAX];
        snprintf(keep, sizeof(keep), "%s", err_get());
        fs_rm_rf(tmp);
        err_set("%s", keep);
        free(tmp);
        return fail();
    }
    free(tmp);
    printf("quantized %d linear weights of %s to %s (blocks of %d%s): %s, %.2f MiB of tensors\n", nq,
           a->model, q4_type_name(a->type), a->blocksize, a->double_quant ? ", double quant" : "", a->out,
           (double)bytes / (1 << 20));
    return 0;
}

/* Largest |x - dequant(x)| one block can have: the scale error, half the
 * widest gap between neighbouring codes (plus the kernel thresholds' 1e-6
 * offset from the midpoints), and the bf16 rounding of the result. */
#define BOUND_THRESHOLD_SLACK 1e-6
#define BF16_HALF_ULP (1.0 / 256)
static double half_gap(Q4Type t)
{
    float c[16];
    memcpy(c, q4_code(t), sizeof(c));
    double g = 0;
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            double lo = c[i], hi = c[j], next = INFINITY;
            if (hi <= lo) continue;
            for (int k = 0; k < 16; k++)
                if (c[k] > lo && c[k] < next) next = c[k];
            if (hi == next && (hi - lo) / 2 > g) g = (hi - lo) / 2;
        }
    return g + BOUND_THRESHOLD_SLACK;
}

/* Worst error / bound over one weight, original values x in (out, in). */
static double weight_error_ratio(const BnbTensor *w, const float *x, const float *dq)
{
    double hg = half_gap(w->q.type), worst = 0;
    int64_t bs = w->q.blocksize;
    for (int64_t b = 0; b < q4_nblocks(w->q.n, bs); b++) {
        int64_t e0 = b * bs, e1 = MIN(w->q.n, e0 + bs);
        double a = 0, a2 = fabs((double)q4_block_absmax(&w->q, b));
        for (int64_t e = e0; e < e1; e++) a = fmax(a, fabs((double)x[e]));
        for (int64_t e = e0; e < e1; e++) {
            double bound = fabs(a2 - a) + a * hg + fabs((double)dq[e]) * BF16_HALF_ULP + 1e-30;
            worst = fmax(worst, fabs((double)dq[e] - x[e]) / bound);
        }
    }
    return worst;
}

static int run_check(const QArgs *a)
{
    BnbDir d;
    if (bnb_open(&d, a->check) != 0) return fail();
    int count[2] = {0, 0}, nested = 0;
    size_t packed = 0;
    for (int i = 0; i < d.n; i++) {
        count[d.t[i].q.type]++;
        nested += d.t[i].q.qabsmax != NULL;
        packed += q4_packed_bytes(d.t[i].q.n);
    }
    printf("%s: %d 4-bit weights (nf4 %d, fp4 %d, double quant %d), %.2f MiB packed\n", a->check, d.n,
           count[0], count[1], nested, (double)packed / (1 << 20));
    int rc = 0;
    if (a->model) {
        ModelConfig cfg;
        StSet set;
        if (hf_read_config(a->model, &cfg) != 0 || st_set_open_dir(&set, a->model, "model") != 0) {
            bnb_close(&d);
            return fail();
        }
        double worst = 0;
        const char *worst_name = "";
        for (int i = 0; i < d.n && rc == 0; i++) {
            const BnbTensor *w = &d.t[i];
            const StTensor *t = st_set_find(&set, w->name, NULL);
            int64_t rows, cols;
            if (!t || t->ndim != 2 || (int64_t)t->numel != w->q.n) {
                rc = err_set("%s: %s: no tensor of %lld values to compare with", a->model, w->name,
                             (long long)w->q.n);
                break;
            }
            float *x = weight_out_in(&cfg, t, &rows, &cols), *dq = xmalloc((size_t)w->q.n * sizeof(float));
            if (w->ndim != 2 || w->shape[0] != rows || w->shape[1] != cols)
                rc = err_set("%s: %s: shape differs from the original's (%lld, %lld)", a->check, w->name,
                             (long long)rows, (long long)cols);
            bnb_dequantize(w, dq);
            double r = weight_error_ratio(w, x, dq);
            if (r > worst) worst = r, worst_name = w->name;
            free(x);
            free(dq);
        }
        st_set_close(&set);
        if (rc == 0) {
            printf("largest error / 4-bit bound: %.3f (%s)\n", worst, worst_name);
            if (worst > 1)
                rc = err_set("%s: %s: dequantized values are outside the 4-bit error bound of %s", a->check,
                             worst_name, a->model);
        }
    }
    bnb_close(&d);
    return rc ? fail() : 0;
}

static int run_dequantize(const QArgs *a)
{
    BnbDir d;
    if (bnb_open(&d, a->dequant) != 0) return fail();
    int rc = bnb_save_dequantized(&d, a->out);
    bnb_close(&d);
    if (rc != 0) return fail();
    printf("dequantized %s to %s (fp32)\n", a->dequant, a->out);
    return 0;
}

static int copy_tokenizer(const char *from, const char *to)
{
    int rc = 0;
    for (size_t i = 0; i < ARRAY_LEN(tokenizer_files) && rc == 0; i++) rc = copy_file(from, to, tokenizer_files[i]);
    return rc;
}

/* --quant bitnet: the model's latent weights packed as transformers' offline BitLinear. */
static int run_bitnet(const char *model, const char *out)
{
    ModelConfig cfg;
    if (hf_read_config(model, &cfg)) return fail();
    if (cfg.ternary != TERNARY_BITNET) {
        fprintf(stderr, "anvil: quantize: --quant bitnet: %s is not a BitNet model (its config.json has no "
                        "quantization_config with quant_method bitnet)\n", model);
        return 1;
    }
    ParamTable pt;
    param_table_build(&pt, &cfg);
    float *host = xmalloc(pt.total * sizeof(float));
    int rc = hf_read_weights(model, &cfg, &pt, host);
    size_t len = strlen(out);
    char *tmp = xmalloc(len + 32);
    snprintf(tmp, len + 32, "%s.tmp.%ld", out, (long)getpid());
    if (!rc) rc = fs_rm_rf(tmp) || hf_save_bitnet(tmp, &cfg, &pt, host) || copy_tokenizer(model, tmp) ||
                  fs_publish_dir(tmp, out);
    if (rc) fs_rm_rf(tmp);
    else printf("packed %s as BitLinear (2-bit trits + weight_scale) into %s\n", model, out);
    free(tmp);
    free(host);
    param_table_free(&pt);
    return rc ? fail() : 0;
}

int cmd_quantize(int argc, char **argv)
{
    QArgs a = {.double_quant = 1, .blocksize = Q4_DEFAULT_BLOCKSIZE};
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            fputs(quantize_usage, stdout);
            return 0;
        } else if (!strcmp(f, "--no-double-quant")) {
            a.double_quant = 0;
        } else if (!v && f[0] == '-') {
            fprintf(stderr, "anvil: quantize: %s needs a value (see anvil quantize --help)\n", f);
            return 1;
        } else if (!strcmp(f, "--model")) {
            a.model = argv[++i];
        } else if (!strcmp(f, "--out")) {
            a.out = argv[++i];
        } else if (!strcmp(f, "--check")) {
            a.check = argv[++i];
        } else if (!strcmp(f, "--dequantize")) {
            a.dequant = argv[++i];
        } else if (!strcmp(f, "--quant") && !strcmp(v, "bitnet")) {
            a.bitnet = 1;
            a.have_type = 1;
            i++;
        } else if (!strcmp(f, "--quant")) {
            int t = q4_type_parse(argv[++i]);
            if (t < 0) {
                fprintf(stderr, "anvil: quantize: --quant: expected nf4 or fp4, got \"%s\" (or bitnet: packed ternary)\n",
                        argv[i]);
                return 1;
            }
            a.type = (Q4Type)t;
            a.have_type = 1;
        } else if (!strcmp(f, "--blocksize")) {
            if (cli_int("--blocksize", argv[++i], 1, &a.blocksize) != 0) return fail();
            if (!q4_blocksize_valid(a.blocksize)) {
                fprintf(stderr,
                        "anvil: quantize: --blocksize: %d (bitsandbytes takes 32, 64, 128, ..., 4096)\n",
                        a.blocksize);
                return 1;
            }
        } else {
            fprintf(stderr, "anvil: quantize: unknown option \"%s\" (see anvil quantize --help)\n", f);
            return 1;
        }
    }
    if (a.check) return run_check(&a);
    if (a.dequant) {
        if (!a.out) {
            fprintf(stderr, "anvil: quantize: --dequantize needs --out DIR\n");
            return 1;
        }
        return run_dequantize(&a);
    }
    if (argc < 2) {
        fputs(quantize_usage, stderr);
        return 1;
    }
    if (!a.model || !a.out || !a.have_type) {
        fprintf(stderr, "anvil: quantize: %s is required (see anvil quantize --help)\n",
                !a.model       ? "--model DIR"
                : !a.have_type ? "--quant nf4|fp4"
                               : "--out DIR4");
        return 1;
    }
    if (a.bitnet) return run_bitnet(a.model, a.out);
    return run_quantize(&a);
}
