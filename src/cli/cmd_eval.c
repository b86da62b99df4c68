/* cmd_eval.c - `anvil eval` (placeholder until its module lands). */
#include <stdio.h>

#include "cli/cli.h"

int cmd_eval(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "anvil: eval: not built yet\n");
    return 1;
}
