/* cost.h - `anvil cost`: time and money to train N tokens at a measured throughput.
 *
 * time = N / tokens_per_s;  cost = time in hours * price per GPU-hour (one GPU; the throughput
 * is one GPU's, from `anvil bench --json` or a run's metrics.jsonl).
 *
 * Prices come from a YAML table (configs/prices.yaml):
 *   prices:
 *     - gpu: H100                 # matched, case-insensitively, inside a device name
 *       usd_per_gpu_hour: 3.99    # on-demand, one GPU
 *       provider: Lambda
 *       product: 8x NVIDIA H100 SXM
 *       source: https://...       # the provider's page
 *       as_of: 2026-09-20         # when that page said so
 *       via: https://...          # where we read it, when not the page itself
 *       note: ...
 * and from --price GPU=USD_PER_HOUR, which replaces the table's entries for that GPU.
 */
#ifndef ANVIL_REPORT_COST_H
#define ANVIL_REPORT_COST_H

#include <stddef.h>

typedef struct {
    char gpu[64];
    double usd_per_gpu_hour;
    char provider[64], product[128], as_of[32], source[512], via[512], note[512];
} Price;

typedef struct {
    Price *p;
    int n;
} PriceTable;

/* Read a price table; errors name the file, the line and the key. */
int cost_prices_load(const char *path, PriceTable *t);
/* Parse "GPU=USD_PER_HOUR" (--price) into p (provider "--price"). */
int cost_price_arg(const char *arg, Price *p);
/* Add p to t, dropping t's entries for the same GPU name. */
void cost_prices_override(PriceTable *t, const Price *p);
void cost_prices_free(PriceTable *t);
/* 1 when p applies to a device named device (p->gpu found in it, ignoring case). */
int cost_price_matches(const Price *p, const char *device);

typedef struct {
    char from[256];       /* the file or run directory measured */
    char model[128];
    char device[128];     /* device_name of a bench, or --gpu / the run's config device */
    double tokens_per_s;
} Throughput;

/* An `anvil bench --json` file: tokens_per_s, model, device_name (or device). */
int cost_read_bench(const char *path, Throughput *t);
/* A run directory: the median tokens_per_s of metrics.jsonl; model.preset (or model.init) and
 * device from config.yaml; device_name overrides the device when not NULL. */
int cost_read_run(const char *dir, const char *device_name, Throughput *t);

/* Seconds and dollars for tokens at tokens_per_s (and usd_per_hour). */
double cost_seconds(double tokens, double tokens_per_s);
double cost_usd(double tokens, double tokens_per_s, double usd_per_hour);
/* A token count: a number with an optional k, M, B (or G) or T suffix ("1B", "2.5e9", "300M"). */
int cost_parse_tokens(const char *s, double *out);

#endif
