#include "cli/args.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

int cli_int(const char *flag, const char *value, int lo, int *out)
{
    char *end;
    long x = strtol(value, &end, 10);
    if (!*value || *end || x < lo || x > CLI_INT_MAX)
        return err_set("%s: expected an integer >= %d, got \"%s\"", flag, lo, value);
    *out = (int)x;
    return 0;
}

int cli_num(const char *flag, const char *value, double lo, double hi, double *out)
{
    char *end;
    double x = strtod(value, &end);
    if (!*value || *end || !(x >= lo && x <= hi))
        return err_set("%s: expected a number in [%g, %g], got \"%s\"", flag, lo, hi, value);
    *out = x;
    return 0;
}

int cli_offload(const char *value, int *opt, int *emb)
{
    char buf[64];
    snprintf(buf, sizeof(buf), "%s", value);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (!strcmp(t, "optimizer")) *opt = 1;
        else if (!strcmp(t, "embeddings")) *emb = 1;
        else return err_set("--offload: expected optimizer, embeddings or both (comma-separated), got \"%s\"", t);
    }
    return 0;
}
