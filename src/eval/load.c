/* load.c - a model directory or a randomly initialized preset (load.h). */
#include "eval/load.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "io/fsutil.h"
#include "io/hf.h"

/* The seed of preset weights: any fixed value, so that runs compare. */
#define PRESET_INIT_SEED 1337

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

Model *eval_load_model(const char *spec, const Backend *be)
{
    if (fs_is_dir(spec) && is_run_dir(spec)) {
        size_t n = strlen(spec);
        while (n > 1 && spec[n - 1] == '/') n--;
        return err_set("%s: a training run directory, not a model: use %.*s/final (the last checkpoint) or one of "
                       "its step-NNNNNNN/ checkpoints",
                       spec, (int)n, spec),
               NULL;
    }
    if (fs_is_dir(spec) || fs_exists(spec)) return hf_load_model(spec, be);
    ModelConfig c;
    if (model_preset(&c, spec))
        return err_set("%s: no such model directory, and not a preset (%s)", spec, model_preset_names()),
               NULL;
    if (model_config_finish(&c)) return NULL;
    Model *m = model_create(&c, be);
    model_init_gpt2(m, PRESET_INIT_SEED);
    fprintf(stderr, "anvil: note: %s with random weights (seed %d): for speed measurements only\n", spec,
            PRESET_INIT_SEED);
    return m;
}
