/* cmd_train.c - `anvil train CONFIG.yaml [--set key=value ...] [--resume RUN_DIR]` */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "core/error.h"
#include "train/train_config.h"
#include "train/trainer.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: anvil train CONFIG.yaml [--set key=value ...] [--resume RUN_DIR]\n"
               "       anvil train --keys      (print every config key with its default, as Markdown)\n"
               "Trains a model; see docs/config.md for the keys and docs/training.md for the run directory.\n");
}

int cmd_train(int argc, char **argv)
{
    const char *config = NULL, *resume = NULL;
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
    if (!config) {
        usage(stderr);
        return 1;
    }
    if (train_config_load_yaml(&tc, config)) fatal_err();
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--resume")) i++;
        else if (!strcmp(argv[i], "--set") && train_config_set(&tc, argv[++i])) fatal_err();
    }
    if (trainer_run(&tc, resume)) fatal_err();
    return 0;
}
