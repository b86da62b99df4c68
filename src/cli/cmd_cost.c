/* cmd_cost.c - `anvil cost`: how long and how much to train N tokens, from measured throughput.
 *
 *   anvil cost --bench FILE.json|RUN_DIR [...] [--tokens N] [--price GPU=USD_PER_HOUR ...]
 *              [--prices FILE] [--gpu NAME]
 *
 * One Markdown row per measurement and matching price (src/report/cost.h has the arithmetic and
 * the price table's format). Bad input: one line "anvil: <file>: <what>" on stderr, exit 1. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/error.h"
#include "io/fsutil.h"
#include "report/cost.h"

#define COST_PRICES_DEFAULT "configs/prices.yaml"
#define COST_TOKENS_DEFAULT 1e9

static const char *cost_usage =
    "usage: anvil cost --bench FILE.json|RUN_DIR [--bench ...] [--tokens N] [--price GPU=USD_PER_HOUR ...]\n"
    "                  [--prices FILE] [--gpu NAME]\n"
    "  --bench   a file from `anvil bench --json`, or a run directory (median tokens/s of metrics.jsonl)\n"
    "  --tokens  tokens to train (default 1B; suffixes k M B T)\n"
    "  --price   dollars per GPU-hour for a GPU name found in the device name; replaces the table's\n"
    "  --prices  the price table (default " COST_PRICES_DEFAULT ")\n"
    "  --gpu     the device name of run directories (their metrics do not name the GPU), e.g. H100\n";

static int fail(void)
{
    fprintf(stderr, "anvil: %s\n", err_get());
    return 1;
}

static void fmt_time(double s, char *buf, size_t n)
{
    double h = s / 3600;
    if (h < 1) snprintf(buf, n, "%.3g h (%.0f min)", h, s / 60);
    else if (h < 48) snprintf(buf, n, "%.3g h", h);
    else snprintf(buf, n, "%.0f h (%.1f days)", h, h / 24);
}

static void fmt_tokens(double t, char *buf, size_t n)
{
    if (t >= 1e12) snprintf(buf, n, "%gT", t / 1e12);
    else if (t >= 1e9) snprintf(buf, n, "%gB", t / 1e9);
    else if (t >= 1e6) snprintf(buf, n, "%gM", t / 1e6);
    else snprintf(buf, n, "%g", t);
}

static void print_table(const Throughput *m, int nm, const PriceTable *t, double tokens)
{
    char tok[32];
    fmt_tokens(tokens, tok, sizeof(tok));
    printf("| model | device | tokens/s | measured in | time for %s tokens | $/GPU-hour | provider | price as of | "
           "cost for %s tokens |\n|---|---|---:|---|---:|---:|---|---|---:|\n",
           tok, tok);
    int unpriced = 0;
    for (int i = 0; i < nm; i++) {
        char tm[64];
        fmt_time(cost_seconds(tokens, m[i].tokens_per_s), tm, sizeof(tm));
        int priced = 0;
        for (int k = 0; k < t->n; k++) {
            const Price *p = &t->p[k];
            if (!cost_price_matches(p, m[i].device)) continue;
            printf("| %s | %s | %.0f | %s | %s | %.4g | %s%s%s | %s | $%.2f |\n", m[i].model, m[i].device,
                   m[i].tokens_per_s, m[i].from, tm, p->usd_per_gpu_hour, p->provider, p->product[0] ? ", " : "",
                   p->product, p->as_of[0] ? p->as_of : "-", cost_usd(tokens, m[i].tokens_per_s, p->usd_per_gpu_hour));
            priced = 1;
        }
        if (!priced) {
            printf("| %s | %s | %.0f | %s | %s | - | no price | - | - |\n", m[i].model, m[i].device, m[i].tokens_per_s,
                   m[i].from, tm);
            unpriced = 1;
        }
    }
    if (unpriced)
        printf("\n(no price: add the GPU to the price table or pass --price NAME=USD_PER_HOUR with NAME found in "
               "the device name)\n");
}

int cmd_cost(int argc, char **argv)
{
    const char *prices_path = COST_PRICES_DEFAULT, *gpu = NULL;
    double tokens = COST_TOKENS_DEFAULT;
    const char **benches = xcalloc((size_t)argc, sizeof(char *));
    Price *overrides = xcalloc((size_t)argc, sizeof(Price));
    int nb = 0, no = 0, prices_given = 0, rc = 0;
    for (int i = 1; i < argc && !rc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(cost_usage, stdout);
            free(benches), free(overrides);
            return 0;
        }
        if (i + 1 >= argc) {
            rc = err_set("cost: %s needs a value (try --help)", a);
            break;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--bench")) benches[nb++] = v;
        else if (!strcmp(a, "--tokens")) rc = cost_parse_tokens(v, &tokens);
        else if (!strcmp(a, "--price")) rc = cost_price_arg(v, &overrides[no++]);
        else if (!strcmp(a, "--prices")) prices_path = v, prices_given = 1;
        else if (!strcmp(a, "--gpu")) gpu = v;
        else rc = err_set("cost: unknown option \"%s\" (try --help)", a);
    }
    if (!rc && nb == 0) rc = err_set("cost: give a measurement: --bench FILE.json or --bench RUN_DIR (try --help)");
    Throughput *m = xcalloc((size_t)(nb ? nb : 1), sizeof(Throughput));
    for (int i = 0; i < nb && !rc; i++)
        rc = fs_is_dir(benches[i]) ? cost_read_run(benches[i], gpu, &m[i]) : cost_read_bench(benches[i], &m[i]);
    PriceTable t = {0};
    /* without --prices, a missing default table is fine when every price comes from --price */
    if (!rc && (prices_given || fs_exists(prices_path))) rc = cost_prices_load(prices_path, &t);
    else if (!rc && !no) rc = err_set("%s: cannot open (pass --prices FILE or --price GPU=USD_PER_HOUR)", prices_path);
    for (int i = 0; i < no && !rc; i++) cost_prices_override(&t, &overrides[i]);
    if (!rc) print_table(m, nb, &t, tokens);
    cost_prices_free(&t);
    free(m), free(benches), free(overrides);
    return rc ? fail() : 0;
}
