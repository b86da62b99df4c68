/* report.h - `anvil report`: a Markdown page with PNG and SVG plots of one or more runs.
 *
 * OUT/report.md        summary table, the runs' main settings, the figures
 * OUT/loss.{png,svg}   training loss (lines) and validation loss (dots) against tokens, every run
 * OUT/lr, grad_norm, tokens_per_s (and mfu, peak_mem_gib when a run logs them): against tokens
 * OUT/expert_load_<run>.{png,svg}  MoE runs: each layer's experts over steps, as a heatmap of
 *                                  share / uniform share (1x = balanced)
 * OUT/expert_final_<run>.{png,svg} MoE runs: the last step's share per expert (mean over layers,
 *                                  whiskers: the smallest and largest layer)
 */
#ifndef ANVIL_REPORT_REPORT_H
#define ANVIL_REPORT_REPORT_H

#include <stdint.h>

#include "report/metrics.h"

/* One row of the summary table; NAN / 0 where the run does not have the field. */
typedef struct {
    int64_t steps;          /* last step */
    double tokens;          /* tokens_seen at the last step */
    double train_s;         /* sum of ms_per_step (evaluation excluded) */
    double wall_s;          /* trainer_state.json's elapsed_s, else last wall_time - first + first step */
    double final_loss;      /* loss at the last step */
    double final_val;       /* the last val_loss */
    double best_val;        /* the smallest val_loss ... */
    int64_t best_val_step;  /* ... and its step */
    double tokens_per_s;    /* median of tokens_per_s over the steps */
    double peak_mem_gib;    /* max of peak_mem_gib */
    double mfu;             /* median of mfu */
    int moe;                /* 1 when a line has expert_load */
} RunSummary;

void report_summarize(const RunMetrics *r, RunSummary *s);

typedef struct {
    const char *out_dir;  /* created if needed */
    const char *command;  /* the command that made the report, quoted on the page (may be NULL) */
    const char *date;     /* printed on the page (may be NULL: today, UTC) */
    int no_svg;           /* 1: PNG figures only */
} ReportOptions;

/* Load the runs, draw the figures and write OUT/report.md. */
int report_write(const char *const *run_dirs, int n_runs, const ReportOptions *o);

#endif
