/* tbrun.h - a run's metrics.jsonl and its TensorBoard event files.
 *
 * tbrun_convert writes the event file a run would have had if it had logged to TensorBoard
 * (`anvil report --tensorboard RUN_DIR`); tbrun_check proves that a directory's event files hold
 * exactly the values of metrics.jsonl (`anvil report --check-tensorboard RUN_DIR`), whether they
 * were converted or written live by the trainer.
 *
 * Tags: tb_tag_for_key() of each numeric field of a line (tokens_seen included), and for
 * expert_load the tags of tb_log_expert_load(). Wall times: a line's "wall_time" when it has
 * one, else the start of the run (config.yaml's modification time) plus the sum of ms_per_step
 * so far - evaluation time is not in ms_per_step, so such times are approximate.
 */
#ifndef ANVIL_REPORT_TBRUN_H
#define ANVIL_REPORT_TBRUN_H

#include <stddef.h>

/* Suffix of the file names tbrun_convert writes: events.out.tfevents.<time>.anvil-metrics. */
#define TBRUN_SUFFIX ".anvil-metrics"

/* Write run_dir/metrics.jsonl as one event file in out_dir (NULL: run_dir), built under a
 * temporary name and renamed; an earlier converted file there is replaced. Refuses when out_dir
 * holds event files written during training (TensorBoard would show every value twice).
 * *path_out (malloc'd, may be NULL) gets the file's path, *n_scalars the scalars written. */
int tbrun_convert(const char *run_dir, const char *out_dir, char **path_out, size_t *n_scalars);

/* Check that the event files of events_dir (NULL: run_dir) hold exactly the scalars of
 * run_dir/metrics.jsonl: the same (tag, step) pairs, each value the float32 of metrics.jsonl's.
 * -1 with err_set() naming the first difference; *n_checked = values compared. */
int tbrun_check(const char *run_dir, const char *events_dir, size_t *n_checked);

#endif
