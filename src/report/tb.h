/* tb.h - TensorBoard event files: a writer for training runs and a reader for tests and checks.
 *
 * File format (what TensorBoard's own reader expects):
 *   events.out.tfevents.<10-digit unix time>.<host>.<pid>.<n>, a sequence of TFRecords:
 *     uint64 length (little-endian) | uint32 masked_crc32c(length bytes) |
 *     length bytes of a serialized Event | uint32 masked_crc32c(those bytes)
 *   masked_crc32c(x) = ((c >> 15) | (c << 17)) + 0xa282ead8, c = CRC-32C (Castagnoli) of x.
 *   The first Event holds file_version "brain.Event:2"; each scalar is one Event with
 *   wall_time, step and a Summary with one Value {tag, simple_value (float32)}.
 * CRC-32C comes from ISA-L (crc32_iscsi), the Event encoding from protobuf-c code generated
 * from src/report/tb_event.proto.
 *
 * Live writing (training): records are appended to the file as they come, like metrics.jsonl,
 * and a background thread flushes them to the file at least every flush_s seconds; TensorBoard
 * reads a growing file. Offline writing (`anvil report --tensorboard`) builds the file under a
 * temporary name and renames it when closed.
 *
 * Every function returns 0 (or a pointer) on success and -1 (NULL) with err_set() on failure.
 */
#ifndef ANVIL_REPORT_TB_H
#define ANVIL_REPORT_TB_H

#include <stddef.h>
#include <stdint.h>

/* Flush interval when TbOptions.flush_s is 0 (seconds). */
#define TB_FLUSH_S_DEFAULT 10.0
/* The file_version string of TensorBoard's current event format. */
#define TB_FILE_VERSION "brain.Event:2"

typedef struct TbWriter TbWriter;

typedef struct {
    double flush_s;          /* live mode: flush at least this often; 0: TB_FLUSH_S_DEFAULT */
    int offline;             /* 1: temporary name, renamed on tb_close; no flush thread */
    const char *file_name;   /* NULL: events.out.tfevents.<time>.<host>.<pid>.<n> */
    double start_wall_time;  /* wall time of the file_version event; 0: now */
    int64_t resume_step;     /* > 0: write a SessionLog START at resume_step + 1, so that readers
                                drop what an earlier file held for the steps being rewritten */
} TbOptions;

/* Create dir (mkdir -p) and a new event file in it; writes the file_version event
 * (and the START record when o->resume_step > 0). o may be NULL (live, defaults). */
TbWriter *tb_open(const char *dir, const TbOptions *o);
/* Append one scalar: tag, step, value (stored as float32), wall_time (unix seconds; 0: now). */
int tb_scalar(TbWriter *w, const char *tag, int64_t step, double value, double wall_time);
/* A SessionLog START at step: readers drop the values they hold for steps >= step (the run
 * restarted there and rewrites them). tb_open writes one when TbOptions.resume_step > 0. */
int tb_restart(TbWriter *w, int64_t step, double wall_time);
/* Push everything written so far to the file (fflush). */
int tb_flush(TbWriter *w);
/* Flush, fsync, close (offline: rename to the final name) and free w. -1 if any earlier
 * write failed or this one does; w is freed either way. NULL is a no-op. */
int tb_close(TbWriter *w);
/* The event file's final path (valid until tb_close). */
const char *tb_path(const TbWriter *w);

/* ---- one training step, keyed like metrics.jsonl (docs/reporting.md has the table) ---- */

/* A metrics.jsonl key and its value for this step ("loss", "lr", "val_loss", "mcq_acc", ...). */
typedef struct {
    const char *key;
    double value;
} TbMetric;

/* The TensorBoard tag for a metrics.jsonl key into buf ("loss" -> "train/loss", "val_loss" ->
 * "val/loss", "aux_loss" -> "moe/aux_loss", "mcq_acc" -> "mcq/acc", other keys "train/<key>").
 * Returns 0, or -1 for keys that are not scalars of a step ("step", "wall_time", "mcq_task"). */
int tb_tag_for_key(const char *key, char *buf, size_t n);

/* Write one step: tokens_seen as train/tokens_seen, then each metric under tb_tag_for_key().
 * wall_time: unix seconds (0: now). Call once per optimizer step, after metrics.jsonl's line. */
int tb_log_step(TbWriter *w, int64_t step, uint64_t tokens_seen, double wall_time, const TbMetric *m, int n);
/* Expert load of an MoE step: load[l * n_expert + e] = share of layer l's routed tokens that went
 * to expert e. Writes moe/expert_load/layer<l>/expert<e> and moe/load_imbalance/layer<l>
 * (max share / mean share: 1 = balanced). */
int tb_log_expert_load(TbWriter *w, int64_t step, double wall_time, const float *load, int n_layer,
                       int n_expert);
/* The whole metrics.jsonl line as it was written (one JSON object): every numeric field becomes
 * a scalar as in tb_log_step, expert_load as in tb_log_expert_load. The line's own "wall_time"
 * key wins over the argument. Using the line keeps events and metrics.jsonl equal by construction. */
int tb_log_metrics_json(TbWriter *w, const char *line, size_t len, double wall_time);

/* ---- reading (tests, `anvil report --check-tensorboard`) ---- */

typedef struct {
    double wall_time;
    int64_t step;
    char *tag;
    float value;
} TbScalar;

typedef struct {
    TbScalar *v;
    size_t n, cap;
    int n_files;        /* event files read */
    size_t n_records;   /* records read (all kinds) */
    size_t n_purged;    /* scalars dropped by START records */
} TbEvents;

/* Read one event file and append its scalars to ev (zero it first). Checks both CRCs of every
 * record and that the first event is a file_version; a START record at step s drops the scalars
 * already held with step >= s. Errors name the file and the record's byte offset.
 * partial_tail: NULL: a truncated last record is an error; else the file may still be growing,
 * the complete records are read and *partial_tail = the bytes of the incomplete one (0: none). */
int tb_read_file(const char *path, TbEvents *ev, size_t *partial_tail);
/* Every file in dir whose name contains "tfevents", in name order (= time order), as above. */
int tb_read_dir(const char *dir, TbEvents *ev);
void tb_events_free(TbEvents *ev);

/* CRC-32C of data (the checksum TFRecord uses), and TFRecord's masked form of it. */
uint32_t tb_crc32c(const void *data, size_t n);
uint32_t tb_masked_crc(const void *data, size_t n);

#endif
