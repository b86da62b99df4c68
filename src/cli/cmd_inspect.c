/* cmd_inspect.c - `anvil inspect PATH [--save OUT_DIR [--dtype f32|bf16]]`.
 *
 * PATH a model directory (config.json + safetensors): prints the class, the
 * sizes and the parameter count, after checking that every tensor is present
 * with the right shape. --save re-writes it as anvil writes models (one
 * atomic directory; fp32 or bf16 weights).
 * PATH a .safetensors file: lists its tensors (name, dtype, shape) and metadata.
 * Bad input: one line "anvil: <file>: <what>" on stderr, exit status 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "core/error.h"
#include "io/fsutil.h"
#include "io/hf.h"
#include "io/peft.h"
#include "io/safetensors.h"
#include "model/config.h"

static const char *inspect_usage =
    "usage: anvil inspect PATH [--save OUT_DIR [--dtype f32|bf16]]\n"
    "       anvil inspect --diff DIR_A DIR_B [--tol T]\n"
    "  PATH             a model directory (config.json + model.safetensors), a .safetensors file,\n"
    "                   or a preset name (its shape and parameter count)\n"
    "  --save OUT_DIR   re-write a model directory as anvil writes models (one atomic directory),\n"
    "                   with its tokenizer files\n"
    "  --dtype D        the weights --save stores: f32 or bf16 (default f32)\n"
    "  --diff           the largest difference between the weights of two model directories of one\n"
    "                   architecture, or of two PEFT adapter directories (tensor by tensor, by name:\n"
    "                   absolute, and relative to each tensor's largest magnitude); with\n"
    "                   --tol, exit status 1 when the absolute difference exceeds T\n";

static int fail(void)
{
    fprintf(stderr, "anvil: %s\n", err_get());
    return 1;
}

static void print_bytes(size_t n)
{
    if (n >= (size_t)1 << 30)
        printf("%.2f GiB", (double)n / (1 << 30));
    else if (n >= (size_t)1 << 20)
        printf("%.2f MiB", (double)n / (1 << 20));
    else if (n >= 1024)
        printf("%.1f KiB", (double)n / 1024);
    else
        printf("%zu B", n);
}

static void print_shape(const StTensor *t)
{
    printf("(");
    for (int d = 0; d < t->ndim; d++) printf("%s%lld", d ? ", " : "", (long long)t->shape[d]);
    printf(")");
}

static int inspect_file(const char *path)
{
    StFile f;
    if (st_open(&f, path) != 0) return fail();
    size_t bytes = 0, elems = 0;
    int width = 4;
    for (int i = 0; i < f.n; i++) {
        int w = (int)strlen(f.t[i].name);
        if (w > width) width = w;
    }
    for (int i = 0; i < f.n; i++) {
        const StTensor *t = &f.t[i];
        printf("%-*s  %-5s ", width, t->name, st_dtype_name(t->dtype));
        print_shape(t);
        printf("\n");
        bytes += t->nbytes;
        elems += t->numel;
    }
    printf("%d tensors, %zu elements, ", f.n, elems);
    print_bytes(bytes);
    printf("\n");
    for (int i = 0; i < f.n_meta; i++) printf("metadata %s = %s\n", f.meta[i].key, f.meta[i].value);
    st_close(&f);
    return 0;
}

static void print_config(const char *dir, const ModelConfig *c, const ParamTable *pt)
{
    int gpt2 = c->family == FAMILY_GPT2, bert = c->family == FAMILY_BERT;
    printf("%s\n", dir);
    printf("  class        %s (model_type %s, family %s)\n", c->hf_arch, c->hf_model_type,
           model_family_name(c->family));
    printf("  layers       %d\n", c->n_layer);
    printf("  d_model      %d\n", c->d_model);
    printf("  heads        %d (kv heads %d, head_dim %d)\n", c->n_head, c->n_kv_head, c->head_dim);
    printf("  d_ff         %d (%s)\n", c->d_ff, gpt2 ? "GELU tanh" : bert ? "GELU erf" : "SwiGLU");
    printf("  vocab        %d\n", c->vocab_size);
    printf("  max_seq_len  %d\n", c->max_seq_len);
    printf("  norm         %s, eps %g\n", gpt2 ? "LayerNorm" : bert ? "LayerNorm after each residual sum (post-LN)" : "RMSNorm",
           (double)c->norm_eps);
    if (bert) {
        printf("  positions    learned from %d, %d token types\n", c->pos_offset, c->type_vocab_size);
        printf("  attention    bidirectional (padding never attended to)\n");
    } else if (gpt2)
        printf("  positions    learned\n");
    else if (c->rope_scale_factor > 0)
        printf("  positions    RoPE theta %g, llama3 scaling x%g (low %g, high %g, original %d)\n",
               (double)c->rope_theta, (double)c->rope_scale_factor, (double)c->rope_low_freq_factor,
               (double)c->rope_high_freq_factor, c->rope_orig_max_pos);
    else
        printf("  positions    RoPE theta %g\n", (double)c->rope_theta);
    if (bert)
        printf("  head         %s\n", c->mlm_head ? "MLM (dense, GELU, LayerNorm; decoder tied to the embeddings, with a bias)"
                                                 : "none (hidden states: anvil embed)");
    else printf("  head         %s\n", c->tie_embeddings ? "tied to the embeddings" : "untied");
    printf("  biases       q/k/v %s, o %s, mlp %s\n", c->qkv_bias ? "yes" : "no", c->o_bias ? "yes" : "no",
           c->mlp_bias ? "yes" : "no");
    printf("  tokens       bos %d, eos %d\n", c->bos_token_id, c->eos_token_id);
    if (c->moe_experts > 0) {
        printf("  experts      %d of width %d, top-%d%s, on %d of %d layers (every %d)", c->moe_experts, c->moe_d_ff,
               c->moe_top_k, c->moe_norm_topk ? " renormalised" : "", cfg_moe_layers(c), c->n_layer, c->moe_every);
        if (c->moe_shared_d_ff) printf(", shared expert of width %d", c->moe_shared_d_ff);
        if (cfg_moe_dense_count(c)) {
            printf(", dense by list (mlp_only_layers):");
            for (int l = 0; l < c->n_layer; l++)
                if (cfg_moe_dense(c, l)) printf(" %d", l);
        }
        printf("\n");
    }
    size_t n = param_count(pt);
    printf("  parameters   %zu (%.2f M, %d tensors)\n", n, (double)n / 1e6, pt->n);
    if (c->moe_experts > 0)
        printf("  active       %zu per token (%.2f M)\n", param_count_active(pt, c), param_count_active(pt, c) / 1e6);
}

static void print_weights(const char *dir)
{
    StSet s;
    if (st_set_open_dir(&s, dir, "model") != 0) return;
    size_t bytes = 0;
    int n = 0, seen[ST_NDTYPE] = {0};
    for (int f = 0; f < s.nfiles; f++)
        for (int i = 0; i < s.files[f].n; i++) {
            bytes += s.files[f].t[i].nbytes;
            seen[s.files[f].t[i].dtype] = 1;
            n++;
        }
    printf("  weights      %d tensors in %d file%s, ", n, s.nfiles, s.nfiles == 1 ? "" : "s");
    print_bytes(bytes);
    for (int d = 0; d < ST_NDTYPE; d++)
        if (seen[d]) printf(" %s", st_dtype_name((StDtype)d));
    printf("\n");
    st_set_close(&s);
}

static int inspect_dir(const char *dir, const char *save, int dtype)
{
    ModelConfig c;
    ParamTable pt;
    if (hf_read_config(dir, &c) != 0) return fail();
    param_table_build(&pt, &c);
    int rc = 0;
    float *host = NULL;
    if (save) host = xmalloc(pt.total * sizeof(float));
    if (hf_read_weights(dir, &c, &pt, host) != 0) {
        rc = fail();
        goto out;
    }
    print_config(dir, &c, &pt);
    print_weights(dir);
    if (save) {
        if (hf_save_with_tokenizer(save, &c, &pt, host, dtype, dir) != 0) {
            rc = fail();
            goto out;
        }
        printf("saved %s (%s)\n", save, dtype == DTYPE_BF16 ? "bf16" : "fp32");
    }
out:
    free(host);
    param_table_free(&pt);
    return rc;
}

/* Tensor by tensor: max |a - b| and max |a - b| / max |a| (the tensor's scale), the worst tensor. */
typedef struct {
    double worst_abs, worst_rel;
    char worst_a[256], worst_r[256];
    int n;
} Diff;

static void diff_add(Diff *d, const char *name, const float *a, const float *b, size_t n)
{
    double dmax = 0, amax = 0;
    for (size_t k = 0; k < n; k++) {
        double x = a[k], y = b[k], e = x > y ? x - y : y - x;
        if (e > dmax || e != e) dmax = e;
        amax = MAX(amax, x < 0 ? -x : x);
    }
    double rel = amax > 0 ? dmax / amax : dmax;
    if (!d->n || dmax > d->worst_abs || dmax != dmax) {
        d->worst_abs = dmax;
        snprintf(d->worst_a, sizeof(d->worst_a), "%s", name);
    }
    if (!d->n || rel > d->worst_rel || rel != rel) {
        d->worst_rel = rel;
        snprintf(d->worst_r, sizeof(d->worst_r), "%s", name);
    }
    d->n++;
}

static int diff_finish(const Diff *d, double tol)
{
    printf("max abs diff %.3e (%s), max rel diff %.3e (%s), %d tensors\n", d->worst_abs, d->worst_a, d->worst_rel,
           d->worst_r, d->n);
    if (tol >= 0 && !(d->worst_abs <= tol)) {
        fprintf(stderr, "anvil: inspect --diff: %s differs by %.3e > --tol %g\n", d->worst_a, d->worst_abs, tol);
        return 1;
    }
    return 0;
}

/* Two PEFT adapter directories: their adapter_model tensors by name (the same names and shapes). */
static int diff_adapters(const char *da, const char *db, double tol)
{
    StSet a, b;
    if (st_set_open_dir(&a, da, "adapter_model")) return fail();
    if (st_set_open_dir(&b, db, "adapter_model")) {
        st_set_close(&a);
        return fail();
    }
    Diff d = {0};
    int rc = 0, nb = 0;
    for (int f = 0; f < b.nfiles; f++) nb += b.files[f].n;
    for (int f = 0; f < a.nfiles && !rc; f++)
        for (int i = 0; i < a.files[f].n && !rc; i++) {
            const StTensor *ta = &a.files[f].t[i], *tb = st_set_find(&b, ta->name, NULL);
            int same = tb && tb->ndim == ta->ndim;
            for (int k = 0; same && k < ta->ndim; k++) same = ta->shape[k] == tb->shape[k];
            if (!same) {
                err_set("%s, %s: %s: %s", da, db, ta->name, tb ? "the shapes differ" : "missing in the second");
                rc = fail();
                break;
            }
            size_t n = 1;
            for (int k = 0; k < ta->ndim; k++) n *= (size_t)ta->shape[k];
            float *x = xmalloc(n * sizeof(float)), *y = xmalloc(n * sizeof(float));
            if (st_to_f32(ta, x) || st_to_f32(tb, y)) {
                err_set("%s: not a floating-point tensor", ta->name);
                rc = fail();
            } else {
                diff_add(&d, ta->name, x, y, n);
            }
            free(x), free(y);
        }
    if (!rc && d.n != nb) {
        err_set("%s, %s: %d and %d tensors", da, db, d.n, nb);
        rc = fail();
    }
    if (!rc) rc = diff_finish(&d, tol);
    st_set_close(&a);
    st_set_close(&b);
    return rc;
}

static int diff_dirs(const char *da, const char *db, double tol)
{
    if (peft_is_adapter_dir(da) && peft_is_adapter_dir(db)) return diff_adapters(da, db, tol);
    ModelConfig ca, cb;
    if (hf_read_config(da, &ca) || hf_read_config(db, &cb)) return fail();
    const char *d = model_config_diff(&ca, &cb);
    if (d) {
        err_set("%s, %s: the architectures differ (%s)", da, db, d);
        return fail();
    }
    ParamTable pt;
    param_table_build(&pt, &ca);
    float *a = xmalloc(pt.total * sizeof(float)), *b = xmalloc(pt.total * sizeof(float));
    int rc = 0;
    if (hf_read_weights(da, &ca, &pt, a) || hf_read_weights(db, &cb, &pt, b)) {
        rc = fail();
        goto out;
    }
    Diff df = {0};
    for (int i = 0; i < pt.n; i++) diff_add(&df, pt.p[i].name, a + pt.p[i].offset, b + pt.p[i].offset, pt.p[i].numel);
    rc = diff_finish(&df, tol);
out:
    free(a);
    free(b);
    param_table_free(&pt);
    return rc;
}

/* A preset: its shape and parameter count (no weights). */
static int inspect_preset(const char *name)
{
    ModelConfig c;
    if (model_preset(&c, name) || model_config_finish(&c)) return fail();
    ParamTable pt;
    param_table_build(&pt, &c);
    char title[160];
    snprintf(title, sizeof(title), "%s (preset; no weights)", name);
    print_config(title, &c, &pt);
    param_table_free(&pt);
    return 0;
}

int cmd_inspect(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "--diff")) {
        double tol = -1;
        if (argc == 6 && !strcmp(argv[4], "--tol")) {
            if (cli_num("--tol", argv[5], 0, 1e30, &tol)) return fail();
        } else if (argc != 4) {
            fputs(inspect_usage, stderr);
            return 1;
        }
        return diff_dirs(argv[2], argv[3], tol);
    }
    const char *path = NULL, *save = NULL, *dtype_arg = NULL;
    int dtype = DTYPE_F32;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(inspect_usage, stdout);
            return 0;
        } else if (!strcmp(argv[i], "--save") && i + 1 < argc) {
            save = argv[++i];
        } else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) {
            const char *d = dtype_arg = argv[++i];
            if (!strcmp(d, "f32") || !strcmp(d, "fp32") || !strcmp(d, "float32"))
                dtype = DTYPE_F32;
            else if (!strcmp(d, "bf16") || !strcmp(d, "bfloat16"))
                dtype = DTYPE_BF16;
            else {
                fprintf(stderr, "anvil: inspect: --dtype: expected f32 or bf16, got \"%s\"\n", d);
                return 1;
            }
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "anvil: inspect: unknown option \"%s\" (see anvil inspect --help)\n", argv[i]);
            return 1;
        } else if (!path) {
            path = argv[i];
        } else {
            fprintf(stderr, "anvil: inspect: one PATH only (got \"%s\" too)\n", argv[i]);
            return 1;
        }
    }
    if (!path) {
        fputs(inspect_usage, stderr);
        return 1;
    }
    if (dtype_arg && !save) {
        fprintf(stderr, "anvil: inspect: --dtype %s: only applies with --save OUT_DIR\n", dtype_arg);
        return 1;
    }
    if (fs_is_dir(path)) return inspect_dir(path, save, dtype);
    if (!fs_exists(path)) {
        ModelConfig c;
        if (!save && model_preset(&c, path) == 0) return inspect_preset(path);
        err_set("%s: no such file or directory, and not a preset (%s)", path, model_preset_names());
        return fail();
    }
    if (save) {
        fprintf(stderr, "anvil: inspect: --save needs a model directory, not a file\n");
        return 1;
    }
    return inspect_file(path);
}
