/* load.c - a model directory or a randomly initialized preset (load.h). */
#include "eval/load.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "io/fsutil.h"
#include "io/bnb_model.h"
#include "io/hf.h"
#include "io/peft.h"
#include "train/checkpoint.h"

/* The seed of preset weights: any fixed value, so that runs compare. */
#define PRESET_INIT_SEED 1337

const Backend *eval_backend(const char *device)
{
    BackendOptions o = {.gemm_tune = GEMM_TUNE_OFF};
    if (backend_options_from_env(&o) < 0) return NULL;
    const Backend *be = backend_get(device);
    if (!be) return err_prefix("--device"), NULL;
    be->configure(&o);
    return be;
}

/* A base directory (plain, or bitsandbytes 4-bit: kept 4-bit) with a PEFT adapter over it when
 * adapter is not NULL; every tensor frozen. */
static Model *load_base(const char *dir, const char *adapter, const Backend *be)
{
    ModelConfig c;
    LoraSpec ls = {0};
    Q4Spec q = {.type = -1};
    if (hf_read_config(dir, &c)) return NULL;
    int bnb = bnb_model_quant(dir, &q);
    if (bnb < 0) return NULL;
    if (adapter && !peft_is_adapter_dir(adapter))
        return err_set("--adapter %s: no adapter_config.json (a PEFT adapter directory)", adapter), NULL;
    if (adapter && peft_read_config(adapter, &c, &ls, NULL, 0)) return NULL;
    Model *m = model_create_lora(&c, be, &ls, 0, 0, &q);
    int rc;
    if (bnb) {
        rc = bnb_model_load(m, dir);
    } else {
        float *host = xmalloc(m->pt.total * sizeof(float));
        rc = hf_read_weights(dir, &c, &m->pt, host);
        if (!rc) model_set_params_base(m, host);
        free(host);
    }
    if (rc || (adapter && peft_read_weights(adapter, m))) {
        model_free(m);
        return NULL;
    }
    return m;
}

/* An integer-ternary checkpoint: its ternary tensors stay packed (checkpoint.h), said once. */
static Model *load_ternary(const char *dir, const Backend *be)
{
    Model *m = ckpt_load_ternary_model(dir, be);
    if (!m) return NULL;
    size_t n = param_count_kind(&m->pt, PARAM_TERNARY);
    int nt = 0;
    for (int i = 0; i < m->pt.n; i++) nt += m->pt.p[i].kind == PARAM_TERNARY;
    double packed = (double)m->ps.tern_bytes, bf16 = 2.0 * (double)n;
    int mib = bf16 >= (1 << 20); /* KiB for the tiny test models */
    double unit = mib ? (double)(1 << 20) : 1024.0;
    fprintf(stderr, "anvil: note: %s: %d integer-ternary tensors (%.1fM weights) kept packed: %.1f %s, against %.1f %s in bf16\n",
            dir, nt, (double)n / 1e6, packed / unit, mib ? "MiB" : "KiB", bf16 / unit, mib ? "MiB" : "KiB");
    return m;
}

/* A training run's directory (anvil train's out_dir) rather than a model: its final/ link
 * or a step-NNNNNNN/ checkpoint holds the model. */
static int is_run_dir(const char *dir)
{
    char *cfg = fs_join(dir, "config.json"), *fin = fs_join(dir, "final"), *met = fs_join(dir, "metrics.jsonl");
    int run = !fs_exists(cfg) && (fs_is_dir(fin) || fs_exists(met));
    free(cfg);
    free(fin);
    free(met);
    return run;
}

Model *eval_load_model(const char *spec, const char *adapter, const Backend *be)
{
    if (fs_is_dir(spec) && is_run_dir(spec)) {
        size_t n = strlen(spec);
        while (n > 1 && spec[n - 1] == '/') n--;
        return err_set("%s: a training run directory, not a model: use %.*s/final (the last checkpoint) or one of "
                       "its step-NNNNNNN/ checkpoints",
                       spec, (int)n, spec),
               NULL;
    }
    if (adapter && !fs_is_dir(spec)) return err_set("--adapter: needs --model to be a base model directory"), NULL;
    Q4Spec q;
    if (adapter || (fs_is_dir(spec) && bnb_model_quant(spec, &q) == 1)) return load_base(spec, adapter, be);
    if (fs_is_dir(spec) && ckpt_has_ternary(spec)) return load_ternary(spec, be);
    if (fs_is_dir(spec) || fs_exists(spec)) return hf_load_model(spec, be, 0);
    ModelConfig c;
    if (model_preset(&c, spec))
        return err_set("%s: no such model directory, and not a preset (%s)", spec, model_preset_names()),
               NULL;
    if (model_config_finish(&c)) return NULL;
    Model *m = model_create_frozen(&c, be);
    model_init_gpt2(m, PRESET_INIT_SEED);
    fprintf(stderr, "anvil: note: %s with random weights (seed %d): for speed measurements only\n", spec,
            PRESET_INIT_SEED);
    return m;
}
