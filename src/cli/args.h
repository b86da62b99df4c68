/* args.h - checked parsing of command-line option values, shared by the subcommands.
 * Each returns 0, or -1 with err_set("FLAG: expected ..., got \"VALUE\""). */
#ifndef ANVIL_CLI_ARGS_H
#define ANVIL_CLI_ARGS_H

/* Largest integer an option takes (sizes, counts, steps). */
#define CLI_INT_MAX 1000000000

/* A whole decimal number in [lo, CLI_INT_MAX]. */
int cli_int(const char *flag, const char *value, int lo, int *out);
/* --offload LIST (bench, plan): "optimizer", "embeddings" or both, comma-separated, set *opt / *emb
 * (train.offload_optimizer / train.offload_embeddings); -1 with err_set() on another word. */
int cli_offload(const char *value, int *opt, int *emb);
/* A finite number in [lo, hi]. */
int cli_num(const char *flag, const char *value, double lo, double hi, double *out);

#endif
