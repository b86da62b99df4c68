/* cmd_generate.c - `anvil generate` (placeholder until its module lands). */
#include <stdio.h>

#include "cli/cli.h"

int cmd_generate(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "anvil: generate: not built yet\n");
    return 1;
}
