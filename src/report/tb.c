/* tb.c - TensorBoard event files (format in tb.h): TFRecord framing with masked CRC-32C
 * (ISA-L), Event protos (protobuf-c), a live writer with a flush thread, and a reader. */
#include "report/tb.h"

#include <dirent.h>
#include <errno.h>
#include <isa-l/crc.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "core/error.h"
#include "io/fsutil.h"
#include "report/metrics.h"
#include "report/tb_event.pb-c.h"

/* TFRecord: the length field, and each of the two checksums, in bytes. */
#define TFRECORD_LEN_BYTES 8
#define TFRECORD_CRC_BYTES 4
/* The constant TFRecord adds to a rotated CRC (its "mask"). */
#define TFRECORD_MASK_DELTA 0xa282ead8u
/* Largest record this reader accepts (an event of anvil's is < 1 KiB; TensorBoard images or
 * histograms can be large, but not this large). */
#define TFRECORD_MAX_BYTES (256u << 20)
/* Longest tag accepted. */
#define TB_TAG_MAX 256

/* ---- checksums ---- */

uint32_t tb_crc32c(const void *data, size_t n)
{
    /* crc32_iscsi neither inverts its input register nor its result: start from all ones and
     * invert at the end to get CRC-32C as RFC 3720 defines it. It takes an int length. */
    const unsigned char *p = data;
    uint32_t c = 0xffffffffu;
    while (n > 0) {
        int chunk = n > (1u << 30) ? 1 << 30 : (int)n;
        c = crc32_iscsi((unsigned char *)p, chunk, c);
        p += chunk;
        n -= (size_t)chunk;
    }
    return ~c;
}

uint32_t tb_masked_crc(const void *data, size_t n)
{
    uint32_t c = tb_crc32c(data, n);
    return ((c >> 15) | (c << 17)) + TFRECORD_MASK_DELTA;
}

static void put_le32(unsigned char *b, uint32_t v)
{
    for (int i = 0; i < 4; i++) b[i] = (unsigned char)(v >> (8 * i));
}
static void put_le64(unsigned char *b, uint64_t v)
{
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get_le32(const unsigned char *b)
{
    return b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}
static uint64_t get_le64(const unsigned char *b)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | b[i];
    return v;
}

static double unix_now(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec + tv.tv_usec * 1e-6;
}

/* ---- the writer ---- */

struct TbWriter {
    FILE *f;
    char *path;     /* final name */
    char *tmp_path; /* offline: the name written until tb_close */
    int offline;
    double flush_s;
    pthread_mutex_t mu; /* guards f, dirty, err_no and stop */
    pthread_cond_t cv;
    pthread_t flusher;
    int has_flusher, stop, dirty;
    int err_no; /* first failed write's errno (0: none); reported to the caller's thread */
};

/* Frame one serialized event and append it under the lock. */
static int write_record(TbWriter *w, const unsigned char *data, size_t n)
{
    size_t total = TFRECORD_LEN_BYTES + 2 * TFRECORD_CRC_BYTES + n;
    unsigned char stackbuf[1024], *rec = total <= sizeof(stackbuf) ? stackbuf : xmalloc(total);
    put_le64(rec, n);
    put_le32(rec + TFRECORD_LEN_BYTES, tb_masked_crc(rec, TFRECORD_LEN_BYTES));
    memcpy(rec + TFRECORD_LEN_BYTES + TFRECORD_CRC_BYTES, data, n);
    put_le32(rec + TFRECORD_LEN_BYTES + TFRECORD_CRC_BYTES + n, tb_masked_crc(data, n));
    pthread_mutex_lock(&w->mu);
    if (!w->err_no && fwrite(rec, 1, total, w->f) != total) w->err_no = errno ? errno : EIO;
    w->dirty = 1;
    int e = w->err_no;
    pthread_mutex_unlock(&w->mu);
    if (rec != stackbuf) free(rec);
    return e ? err_set("%s: cannot write: %s", w->path, strerror(e)) : 0;
}

static int write_event(TbWriter *w, const AnvilTb__Event *ev)
{
    size_t n = anvil_tb__event__get_packed_size(ev);
    unsigned char stackbuf[512], *buf = n <= sizeof(stackbuf) ? stackbuf : xmalloc(n);
    anvil_tb__event__pack(ev, buf);
    int rc = write_record(w, buf, n);
    if (buf != stackbuf) free(buf);
    return rc;
}

/* The flush thread: every flush_s seconds, push buffered records to the file. */
static void *flusher_main(void *arg)
{
    TbWriter *w = arg;
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        double t = until.tv_sec + until.tv_nsec * 1e-9 + w->flush_s;
        until.tv_sec = (time_t)t;
        until.tv_nsec = (long)((t - (double)until.tv_sec) * 1e9);
        pthread_cond_timedwait(&w->cv, &w->mu, &until);
        if (w->dirty && !w->err_no) {
            if (fflush(w->f)) w->err_no = errno ? errno : EIO;
            w->dirty = 0;
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static char *default_file_name(double t)
{
    static int counter; /* a second file of this process in the same second gets a new name */
    char host[256] = "localhost";
    if (gethostname(host, sizeof(host) - 1) == 0) host[sizeof(host) - 1] = 0;
    for (char *c = host; *c; c++)
        if (*c == '/') *c = '_';
    char buf[400];
    snprintf(buf, sizeof(buf), "events.out.tfevents.%010lld.%s.%d.%d", (long long)t, host, (int)getpid(),
             __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED));
    return xstrdup(buf);
}

TbWriter *tb_open(const char *dir, const TbOptions *o)
{
    TbOptions opt = o ? *o : (TbOptions){0};
    if (opt.flush_s < 0 || !isfinite(opt.flush_s)) {
        err_set("log.flush_s: expected a number >= 0, got %g", opt.flush_s);
        return NULL;
    }
    if (fs_mkdir_p(dir)) return NULL;
    double t0 = opt.start_wall_time > 0 ? opt.start_wall_time : unix_now();
    TbWriter *w = xcalloc(1, sizeof(*w));
    char *name = opt.file_name ? xstrdup(opt.file_name) : default_file_name(t0);
    w->path = fs_join(dir, name);
    free(name);
    w->offline = opt.offline;
    w->flush_s = opt.flush_s > 0 ? opt.flush_s : TB_FLUSH_S_DEFAULT;
    if (w->offline) {
        /* a temporary name without "tfevents", so that a TensorBoard watching dir skips it */
        char tmp[64];
        snprintf(tmp, sizeof(tmp), ".anvil-events.tmp.%d", (int)getpid());
        w->tmp_path = fs_join(dir, tmp);
    }
    const char *open_path = w->offline ? w->tmp_path : w->path;
    w->f = fopen(open_path, w->offline ? "wb" : "ab");
    if (!w->f) {
        err_set("%s: cannot create: %s", open_path, strerror(errno));
        free(w->path), free(w->tmp_path), free(w);
        return NULL;
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    AnvilTb__Event ev = ANVIL_TB__EVENT__INIT;
    ev.wall_time = t0;
    ev.what_case = ANVIL_TB__EVENT__WHAT_FILE_VERSION;
    ev.file_version = TB_FILE_VERSION;
    int rc = write_event(w, &ev);
    if (!rc && opt.resume_step > 0) rc = tb_restart(w, opt.resume_step + 1, t0);
    if (!rc && !w->offline && fflush(w->f)) rc = err_set("%s: cannot write: %s", w->path, strerror(errno));
    if (!rc && !w->offline) {
        if (pthread_create(&w->flusher, NULL, flusher_main, w) == 0) w->has_flusher = 1;
        else rc = err_set("%s: cannot start the flush thread", w->path);
    }
    if (rc) {
        char *keep = xstrdup(err_get());
        tb_close(w);
        err_set("%s", keep);
        free(keep);
        return NULL;
    }
    return w;
}

int tb_scalar(TbWriter *w, const char *tag, int64_t step, double value, double wall_time)
{
    if (!tag[0] || strlen(tag) > TB_TAG_MAX) return err_set("%s: tag \"%.40s\": empty or too long", w->path, tag);
    AnvilTb__Summary__Value v = ANVIL_TB__SUMMARY__VALUE__INIT;
    v.tag = (char *)tag;
    v.value_case = ANVIL_TB__SUMMARY__VALUE__VALUE_SIMPLE_VALUE;
    v.simple_value = (float)value;
    AnvilTb__Summary__Value *vs[1] = {&v};
    AnvilTb__Summary s = ANVIL_TB__SUMMARY__INIT;
    s.n_value = 1;
    s.value = vs;
    AnvilTb__Event ev = ANVIL_TB__EVENT__INIT;
    ev.wall_time = wall_time > 0 ? wall_time : unix_now();
    ev.step = step;
    ev.what_case = ANVIL_TB__EVENT__WHAT_SUMMARY;
    ev.summary = &s;
    return write_event(w, &ev);
}

int tb_restart(TbWriter *w, int64_t step, double wall_time)
{
    AnvilTb__SessionLog sl = ANVIL_TB__SESSION_LOG__INIT;
    sl.status = ANVIL_TB__SESSION_LOG__SESSION_STATUS__START;
    AnvilTb__Event ev = ANVIL_TB__EVENT__INIT;
    ev.wall_time = wall_time > 0 ? wall_time : unix_now();
    ev.step = step;
    ev.what_case = ANVIL_TB__EVENT__WHAT_SESSION_LOG;
    ev.session_log = &sl;
    return write_event(w, &ev);
}

int tb_flush(TbWriter *w)
{
    pthread_mutex_lock(&w->mu);
    if (!w->err_no && fflush(w->f)) w->err_no = errno ? errno : EIO;
    w->dirty = 0;
    int e = w->err_no;
    pthread_mutex_unlock(&w->mu);
    return e ? err_set("%s: cannot write: %s", w->path, strerror(e)) : 0;
}

const char *tb_path(const TbWriter *w)
{
    return w->path;
}

int tb_close(TbWriter *w)
{
    if (!w) return 0;
    if (w->has_flusher) {
        pthread_mutex_lock(&w->mu);
        w->stop = 1;
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->flusher, NULL);
    }
    int e = w->err_no;
    if (!e && fflush(w->f)) e = errno ? errno : EIO;
    if (!e && fsync(fileno(w->f))) e = errno;
    if (fclose(w->f) && !e) e = errno ? errno : EIO;
    int rc = 0;
    if (e) rc = err_set("%s: cannot write: %s", w->path, strerror(e));
    if (w->offline) {
        if (!rc && rename(w->tmp_path, w->path))
            rc = err_set("%s: cannot rename %s to it: %s", w->path, w->tmp_path, strerror(errno));
        if (rc) remove(w->tmp_path);
    }
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w->path);
    free(w->tmp_path);
    free(w);
    return rc;
}

/* ---- metrics.jsonl keys -> tags ---- */

static const struct {
    const char *key, *tag;
} KEY_TAGS[] = {
    {"loss", "train/loss"},
    {"lr", "train/lr"},
    {"grad_norm", "train/grad_norm"},
    {"tokens_per_s", "train/tokens_per_s"},
    {"ms_per_step", "train/ms_per_step"},
    {"tokens_seen", "train/tokens_seen"},
    {"mfu", "train/mfu"},
    {"peak_mem_gib", "train/peak_mem_gib"},
    {"val_loss", "val/loss"},
    {"aux_loss", "moe/aux_loss"},
    {"z_loss", "moe/z_loss"},
};

/* Keys whose prefix names the tag's section: "mcq_acc_norm" -> "mcq/acc_norm". */
static const struct {
    const char *prefix, *section;
} PREFIX_TAGS[] = {{"val_", "val/"}, {"mcq_", "mcq/"}, {"moe_", "moe/"}};

int tb_tag_for_key(const char *key, char *buf, size_t n)
{
    if (!strcmp(key, "step") || !strcmp(key, "wall_time") || !strcmp(key, "mcq_task") || !key[0]) return -1;
    for (size_t i = 0; i < ARRAY_LEN(KEY_TAGS); i++)
        if (!strcmp(key, KEY_TAGS[i].key)) {
            snprintf(buf, n, "%s", KEY_TAGS[i].tag);
            return 0;
        }
    for (size_t i = 0; i < ARRAY_LEN(PREFIX_TAGS); i++) {
        size_t pl = strlen(PREFIX_TAGS[i].prefix);
        if (!strncmp(key, PREFIX_TAGS[i].prefix, pl) && key[pl]) {
            snprintf(buf, n, "%s%s", PREFIX_TAGS[i].section, key + pl);
            return 0;
        }
    }
    snprintf(buf, n, "train/%s", key);
    return 0;
}

int tb_log_step(TbWriter *w, int64_t step, uint64_t tokens_seen, double wall_time, const TbMetric *m, int n)
{
    double t = wall_time > 0 ? wall_time : unix_now();
    if (tb_scalar(w, "train/tokens_seen", step, (double)tokens_seen, t)) return -1;
    char tag[TB_TAG_MAX + 1];
    for (int i = 0; i < n; i++) {
        if (!strcmp(m[i].key, "tokens_seen")) continue; /* written above */
        if (tb_tag_for_key(m[i].key, tag, sizeof(tag))) continue;
        if (tb_scalar(w, tag, step, m[i].value, t)) return -1;
    }
    return 0;
}

int tb_log_expert_load(TbWriter *w, int64_t step, double wall_time, const float *load, int n_layer, int n_expert)
{
    double t = wall_time > 0 ? wall_time : unix_now();
    char tag[TB_TAG_MAX + 1];
    for (int l = 0; l < n_layer; l++) {
        const float *row = load + (size_t)l * n_expert;
        double sum = 0, mx = 0;
        for (int e = 0; e < n_expert; e++) {
            snprintf(tag, sizeof(tag), "moe/expert_load/layer%d/expert%d", l, e);
            if (tb_scalar(w, tag, step, row[e], t)) return -1;
            sum += row[e];
            mx = MAX(mx, (double)row[e]);
        }
        snprintf(tag, sizeof(tag), "moe/load_imbalance/layer%d", l);
        if (sum > 0 && tb_scalar(w, tag, step, mx / (sum / n_expert), t)) return -1;
    }
    return 0;
}

int tb_log_metrics_json(TbWriter *w, const char *line, size_t len, double wall_time)
{
    MetricsLine ml;
    if (metrics_parse_line(line, len, &ml)) return err_prefix("%s: metrics line", w->path);
    double t = !isnan(ml.wall_time) ? ml.wall_time : wall_time > 0 ? wall_time : unix_now();
    char tag[TB_TAG_MAX + 1];
    int rc = 0;
    for (int i = 0; i < ml.nv && !rc; i++) {
        if (tb_tag_for_key(ml.v[i].key, tag, sizeof(tag))) continue;
        rc = tb_scalar(w, tag, ml.step, ml.v[i].value, t);
    }
    if (!rc && ml.expert_load) rc = tb_log_expert_load(w, ml.step, t, ml.expert_load, ml.n_layer, ml.n_expert);
    metrics_line_free(&ml);
    return rc;
}

/* ---- the reader ---- */

static void events_push(TbEvents *ev, double wall, int64_t step, const char *tag, float value)
{
    if (ev->n == ev->cap) {
        ev->cap = ev->cap ? 2 * ev->cap : 1024;
        ev->v = xrealloc(ev->v, ev->cap * sizeof(TbScalar));
    }
    ev->v[ev->n++] = (TbScalar){wall, step, xstrdup(tag), value};
}

/* A START at step s: a restarted run rewrites steps >= s, so drop what is held for them. */
static void events_purge_from(TbEvents *ev, int64_t s)
{
    size_t k = 0;
    for (size_t i = 0; i < ev->n; i++) {
        if (ev->v[i].step >= s) {
            free(ev->v[i].tag);
            ev->n_purged++;
        } else {
            ev->v[k++] = ev->v[i];
        }
    }
    ev->n = k;
}

int tb_read_file(const char *path, TbEvents *ev, size_t *partial_tail)
{
    if (partial_tail) *partial_tail = 0;
    char *buf;
    size_t n;
    if (fs_read_file(path, &buf, &n)) return -1;
    const unsigned char *b = (const unsigned char *)buf;
    size_t off = 0, rec = 0;
    int rc = 0;
    while (off < n && !rc) {
        const size_t head = TFRECORD_LEN_BYTES + TFRECORD_CRC_BYTES;
        if (n - off < head) {
            if (partial_tail && rec > 0) {
                *partial_tail = n - off;
                break;
            }
            rc = err_set("%s: record %zu at byte %zu: truncated header (%zu bytes left)", path, rec, off, n - off);
            break;
        }
        uint64_t len = get_le64(b + off);
        if (get_le32(b + off + TFRECORD_LEN_BYTES) != tb_masked_crc(b + off, TFRECORD_LEN_BYTES)) {
            rc = err_set("%s: record %zu at byte %zu: length checksum mismatch", path, rec, off);
            break;
        }
        if (len > TFRECORD_MAX_BYTES) {
            rc = err_set("%s: record %zu at byte %zu: length %llu is not plausible", path, rec, off,
                         (unsigned long long)len);
            break;
        }
        if (n - off - head < len + TFRECORD_CRC_BYTES) {
            if (partial_tail && rec > 0) {
                *partial_tail = n - off;
                break;
            }
            rc = err_set("%s: record %zu at byte %zu: truncated (needs %llu bytes, %zu left)", path, rec, off,
                         (unsigned long long)len + TFRECORD_CRC_BYTES, n - off - head);
            break;
        }
        const unsigned char *data = b + off + head;
        if (get_le32(data + len) != tb_masked_crc(data, (size_t)len)) {
            rc = err_set("%s: record %zu at byte %zu: data checksum mismatch", path, rec, off);
            break;
        }
        AnvilTb__Event *e = anvil_tb__event__unpack(NULL, (size_t)len, data);
        if (!e) {
            rc = err_set("%s: record %zu at byte %zu: not an Event protocol buffer", path, rec, off);
            break;
        }
        if (rec == 0 && e->what_case != ANVIL_TB__EVENT__WHAT_FILE_VERSION)
            rc = err_set("%s: the first record is not a file_version event", path);
        else if (e->what_case == ANVIL_TB__EVENT__WHAT_SESSION_LOG && e->session_log &&
                 e->session_log->status == ANVIL_TB__SESSION_LOG__SESSION_STATUS__START)
            events_purge_from(ev, e->step);
        else if (e->what_case == ANVIL_TB__EVENT__WHAT_SUMMARY && e->summary) {
            for (size_t i = 0; i < e->summary->n_value; i++) {
                const AnvilTb__Summary__Value *v = e->summary->value[i];
                if (v->value_case == ANVIL_TB__SUMMARY__VALUE__VALUE_SIMPLE_VALUE)
                    events_push(ev, e->wall_time, e->step, v->tag, v->simple_value);
            }
        }
        anvil_tb__event__free_unpacked(e, NULL);
        ev->n_records++;
        off += head + (size_t)len + TFRECORD_CRC_BYTES;
        rec++;
    }
    if (!rc && rec == 0) rc = err_set("%s: empty event file", path);
    free(buf);
    if (!rc) ev->n_files++;
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int tb_read_dir(const char *dir, TbEvents *ev)
{
    DIR *d = opendir(dir);
    if (!d) return err_set("%s: cannot open: %s", dir, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strstr(de->d_name, "tfevents") || de->d_name[0] == '.') continue;
        if (n == cap) names = xrealloc(names, (cap = cap ? 2 * cap : 8) * sizeof(char *));
        names[n++] = xstrdup(de->d_name);
    }
    closedir(d);
    if (n) qsort(names, n, sizeof(char *), cmp_str);
    int rc = n ? 0 : err_set("%s: no event files (events.out.tfevents.*)", dir);
    for (size_t i = 0; i < n; i++) {
        char *p = fs_join(dir, names[i]);
        if (!rc) rc = tb_read_file(p, ev, NULL);
        free(p);
        free(names[i]);
    }
    free(names);
    return rc;
}

void tb_events_free(TbEvents *ev)
{
    for (size_t i = 0; i < ev->n; i++) free(ev->v[i].tag);
    free(ev->v);
    memset(ev, 0, sizeof(*ev));
}
