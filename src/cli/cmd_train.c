/* cmd_train.c - `anvil train` (placeholder until its module lands). */
#include <stdio.h>

#include "cli/cli.h"

int cmd_train(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "anvil: train: not built yet\n");
    return 1;
}
