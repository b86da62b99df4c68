/* cmd_tokenize.c - `anvil tokenize` (placeholder until its module lands). */
#include <stdio.h>

#include "cli/cli.h"

int cmd_tokenize(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "anvil: tokenize: not built yet\n");
    return 1;
}
