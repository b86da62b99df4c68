/* cmd_train.c - `anvil train CONFIG.yaml [--set key=value ...] [--resume RUN_DIR | --overwrite]`
 *
 * A new run refuses an out_dir that already holds files (--resume continues that run, --overwrite
 * replaces it); --resume RUN without CONFIG.yaml takes RUN/config.yaml. Exit status: 0 for a
 * finished run, 130 / 143 when SIGINT / SIGTERM stopped it after saving a checkpoint, 1 on errors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/error.h"
#include "io/fsutil.h"
#include "train/train_config.h"
#include "train/trainer.h"
#ifdef ANVIL_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

static void usage(FILE *f)
{
    fprintf(f, "usage: anvil train CONFIG.yaml [--set key=value ...] [--resume RUN_DIR | --overwrite]\n"
               "       anvil train --resume RUN_DIR [--set key=value ...]   (the run's own config.yaml)\n"
               "       anvil train --keys      (print every config key with its default, as Markdown)\n"
               "Trains a model; see docs/config.md for the keys and docs/training.md for the run directory.\n");
}

int cmd_train(int argc, char **argv)
{
    const char *config = NULL, *resume = NULL;
    int overwrite = 0;
    TrainConfig tc;
    train_config_defaults(&tc);
    /* The YAML file is applied first, then every --set in order. */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--keys")) {
            train_config_print_keys();
            return 0;
        } else if (!strcmp(argv[i], "--overwrite")) {
            overwrite = 1;
        } else if (!strcmp(argv[i], "--set") || !strcmp(argv[i], "--resume")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "anvil: train: %s needs a value\n", argv[i]);
                return 1;
            }
            if (!strcmp(argv[i], "--resume")) resume = argv[++i];
            else i++;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "anvil: train: unknown option %s\n", argv[i]);
            usage(stderr);
            return 1;
        } else if (!config) {
            config = argv[i];
        } else {
            fprintf(stderr, "anvil: train: unexpected argument %s\n", argv[i]);
            return 1;
        }
    }
    if (overwrite && resume) {
        fprintf(stderr, "anvil: train: --overwrite replaces a run and --resume continues one: give one of them\n");
        return 1;
    }
    /* --resume RUN alone: the run's own config.yaml (every key, as it was recorded) */
    char *recorded = NULL;
    if (!config && resume) {
        recorded = fs_join(resume, "config.yaml");
        if (!fs_exists(recorded)) {
            fprintf(stderr, "anvil: train: --resume %s: no %s to take the configuration from (give CONFIG.yaml)\n",
                    resume, recorded);
            free(recorded);
            return 1;
        }
        config = recorded;
    }
    if (!config) {
        usage(stderr);
        return 1;
    }
    if (train_config_load_yaml(&tc, config)) fatal_err();
    free(recorded);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--resume")) i++;
        else if (!strcmp(argv[i], "--set") && train_config_set(&tc, argv[++i])) fatal_err();
    }
    int rc = trainer_run(&tc, resume, overwrite);
    if (rc < 0) fatal_err();
#ifdef ANVIL_CUDA
    const char *prof = getenv("ANVIL_CUDA_PROFILE"); /* the diagnostic of docs/cuda.md: per-op times */
    if (prof && atoi(prof) && tc.steps > 0) {
        fprintf(stderr, "per-op time of a step (events around each op, the mean over the run's %d steps):\n",
                tc.steps);
        cuda_prof_print(stderr, tc.steps);
    }
#endif
    return rc; /* 0, or 130 / 143 after an interrupt that saved a checkpoint */
}
