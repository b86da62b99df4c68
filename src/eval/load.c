/* load.c - a model directory or a randomly initialized preset (load.h). */
#include "eval/load.h"

#include <stdio.h>

#include "core/error.h"
#include "io/fsutil.h"
#include "io/hf.h"

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

Model *eval_load_model(const char *spec, const Backend *be)
{
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
