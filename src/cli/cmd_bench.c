/* cmd_bench.c - `anvil bench` (placeholder until its module lands). */
#include <stdio.h>

#include "cli/cli.h"

int cmd_bench(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "anvil: bench: not built yet\n");
    return 1;
}
