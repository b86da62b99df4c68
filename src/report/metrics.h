/* metrics.h - reading a run's OUT_DIR/metrics.jsonl (one JSON object per optimizer step,
 * docs/training.md) for reports, cost estimates and TensorBoard conversion.
 *
 * A line holds "step" (integer >= 1) and numeric fields ("loss", "lr", "val_loss", ...), optional
 * strings ("mcq_task") and, for MoE runs, "expert_load": one array per layer of each expert's
 * share of that layer's routed tokens. Unknown numeric keys are kept (and plotted/converted
 * under their own names); other JSON types are ignored. Errors name the file and line:
 *   "runs/x/metrics.jsonl:12: expert_load: layer 3 has 7 experts, layer 0 has 8"
 */
#ifndef ANVIL_REPORT_METRICS_H
#define ANVIL_REPORT_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define METRICS_KEY_MAX 64

typedef struct {
    char key[METRICS_KEY_MAX];
    double value;
} MetricValue;

typedef struct {
    int64_t step;
    double wall_time;        /* the line's "wall_time" (unix s), NAN when absent */
    MetricValue *v;          /* numeric fields except step and wall_time, in line order */
    int nv;
    float *expert_load;      /* [n_layer * n_expert], NULL when absent */
    int n_layer, n_expert;
    char mcq_task[32];       /* "" when absent */
} MetricsLine;

/* Parse one line (len bytes, no terminator needed). -1 with err_set("<field>: ...") on a line
 * that is not a JSON object, lacks an integer "step" >= 1, or has a malformed expert_load. */
int metrics_parse_line(const char *text, size_t len, MetricsLine *out);
void metrics_line_free(MetricsLine *l);
/* The value of key in l, or NAN when the line lacks it. */
double metrics_get(const MetricsLine *l, const char *key);

typedef struct {
    char *dir;           /* the run directory as given */
    char *name;          /* its last path component: the run's name in plots and tables */
    MetricsLine *lines;  /* in file order */
    int n;
    double elapsed_s;    /* trainer_state.json's elapsed_s of the newest checkpoint, NAN if none */
    char *config_yaml;   /* the run's config.yaml text, NULL if absent */
} RunMetrics;

/* Read dir/metrics.jsonl (required, at least one line), and when present dir/config.yaml and
 * the newest checkpoint's trainer_state.json. Blank lines are skipped. */
int metrics_load_run(const char *dir, RunMetrics *r);
void metrics_run_free(RunMetrics *r);

/* Steps where key is present: step, tokens_seen at that step (NAN if the line lacks it) and the
 * value, into new arrays (free each). Returns the count (0: key never present). */
int metrics_series(const RunMetrics *r, const char *key, double **step, double **tokens, double **value);
/* 1 if any line of r has key. */
int metrics_has(const RunMetrics *r, const char *key);

/* A scalar of the run's config.yaml by dotted key ("train.lr") into buf; -1 if absent. The
 * file is the flat two-level YAML that `anvil train` writes. */
int metrics_config_value(const RunMetrics *r, const char *dotted, char *buf, size_t n);

#endif
