/* cmd_merge.c - `anvil merge --model BASE --adapter DIR --out MERGED [--dtype bf16|f32]`
 *
 * Folds a PEFT LoRA adapter into its base (W += scale * B @ A, as PEFT's merge_and_unload) and
 * writes a plain Hugging Face directory (config.json, model.safetensors, the base's tokenizer
 * files), built under a temporary name and renamed. A bitsandbytes 4-bit base is dequantized
 * first and the merged weights are written in --dtype: never silently re-quantized. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/error.h"
#include "data/tokenizer.h"
#include "eval/load.h"
#include "io/bnb.h"
#include "io/fsutil.h"
#include "io/hf.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: anvil merge --model BASE --adapter DIR --out MERGED [--dtype bf16|f32]\n"
               "  Folds the PEFT LoRA adapter DIR into the base model directory BASE (a bitsandbytes 4-bit\n"
               "  base is dequantized first) and writes a plain Hugging Face directory MERGED, tokenizer\n"
               "  included. --dtype: the stored weights (default f32).\n");
}

typedef struct {
    const char *model, *adapter, *out, *dtype;
} MergeArgs;

static int parse(int argc, char **argv, MergeArgs *a)
{
    memset(a, 0, sizeof(*a));
    a->dtype = "f32";
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            usage(stdout);
            exit(0);
        }
        if (i + 1 >= argc) return err_set("merge: %s needs a value (try --help)", f);
        const char *v = argv[++i];
        if (!strcmp(f, "--model")) a->model = v;
        else if (!strcmp(f, "--adapter")) a->adapter = v;
        else if (!strcmp(f, "--out")) a->out = v;
        else if (!strcmp(f, "--dtype")) a->dtype = v;
        else return err_set("merge: unknown option \"%s\" (try --help)", f);
    }
    if (!a->model || !a->adapter || !a->out) return err_set("merge: --model, --adapter and --out are required");
    if (strcmp(a->dtype, "f32") && strcmp(a->dtype, "bf16"))
        return err_set("merge: --dtype: expected f32 or bf16, got \"%s\"", a->dtype);
    return 0;
}

/* The merged weights of m as a plain model's host image (adapter tensors dropped). */
static float *merged_image(const Model *m, ParamTable *plain)
{
    float *host = xmalloc(m->pt.total * sizeof(float));
    model_get_params(m, host);
    model_merge_adapters(m, host);
    param_table_build(plain, &m->cfg);
    float *out = xmalloc(plain->total * sizeof(float));
    for (int i = 0; i < plain->n; i++) {
        int j = param_find(&m->pt, plain->p[i].name);
        memcpy(out + plain->p[i].offset, host + m->pt.p[j].offset, plain->p[i].numel * sizeof(float));
    }
    free(host);
    return out;
}

int cmd_merge(int argc, char **argv)
{
    MergeArgs a;
    if (parse(argc, argv, &a)) {
        fprintf(stderr, "anvil: %s\n", err_get());
        return 1;
    }
    int rc = 1;
    char dq[64] = "";
    char *tmp = xmalloc(strlen(a.out) + 32);
    snprintf(tmp, strlen(a.out) + 32, "%s.tmp.%ld", a.out, (long)getpid());
    int made = 0;
    const char *base = a.model;
    Model *m = NULL;
    Tokenizer *tok = NULL;
    float *host = NULL;
    ParamTable plain = {0};
    BnbConfig bc;
    int q = bnb_read_config(a.model, &bc);
    if (q < 0) goto out;
    if (q == 1) { /* a 4-bit base: dequantize it into a scratch directory first */
        BnbDir d;
        snprintf(dq, sizeof(dq), "/tmp/anvil_merge_dq.%ld", (long)getpid());
        if (bnb_open(&d, a.model)) goto out;
        int e = bnb_save_dequantized(&d, dq);
        bnb_close(&d);
        if (e) goto out;
        fprintf(stderr, "anvil: note: %s is a 4-bit base: the adapter is merged into its dequantized weights, "
                        "written as %s (not re-quantized)\n",
                a.model, a.dtype);
        base = dq;
    }
    m = eval_load_model(base, a.adapter, backend_cpu());
    if (!m) goto out;
    host = merged_image(m, &plain);
    tok = tokenizer_load(a.model); /* the base's tokenizer files, when it has them */
    made = 1;
    if (fs_rm_rf(tmp) || fs_mkdir_p(tmp)) goto out;
    if (hf_write_files(tmp, &m->cfg, &plain, host, !strcmp(a.dtype, "bf16") ? DTYPE_BF16 : DTYPE_F32)) goto out;
    if (tok && tokenizer_save(tok, tmp)) goto out;
    if (fs_publish_dir(tmp, a.out)) goto out;
    made = 0;
    printf("merged %s into %s: %s (%s)\n", a.adapter, a.model, a.out, a.dtype);
    rc = 0;
out:
    if (rc) fprintf(stderr, "anvil: %s\n", err_get());
    if (made) fs_rm_rf(tmp);
    free(tmp);
    if (dq[0]) fs_rm_rf(dq);
    if (tok) tokenizer_free(tok);
    model_free(m);
    free(host);
    param_table_free(&plain);
    return rc;
}
