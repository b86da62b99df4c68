/* bench_ablate.h - `anvil bench --ablate` (bench_ablate.c). */
#ifndef ANVIL_CLI_BENCH_ABLATE_H
#define ANVIL_CLI_BENCH_ABLATE_H

typedef struct {
    const char *model, *device, *json; /* json: the rows as JSON (NULL: none) */
    int B, T, recompute, accum, head_unfused;
} AblateSpec;

/* Measure the full configuration and each switch turned off, one child `anvil bench` per row;
 * print the Markdown table. argv is bench's (argv[0] = "bench"). Returns the exit status. */
int bench_ablate(int argc, char **argv, const AblateSpec *s);

#endif
