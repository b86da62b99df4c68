/* trainer.c - the training loop: data -> one optimizer step (step.c: forward/backward with
 * gradient accumulation, global-norm clipping, AdamW) -> metrics, evaluation and checkpoints.
 * One seed gives identical runs; a resumed run gives exactly the losses of an uninterrupted one
 * (the loader position, the moments and the fp32 master weights are all restored bit for bit). */
#include "train/trainer.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"
#include "data/loader.h"
#include "data/sft.h"
#include "data/tokenizer.h"
#include "eval/mcq.h"
#include "io/fsutil.h"
#include "io/hf.h"
#include "report/tb.h"
#include "train/checkpoint.h"
#include "train/freeze.h"
#include "train/optim.h"
#include "train/schedule.h"
#include "train/step.h"

static volatile sig_atomic_t stop_requested;
static void on_sigint(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int trainer_model_config(const TrainConfig *tc, ModelConfig *c)
{
    if (tc->model_init[0]) {
        if (hf_read_config(tc->model_init, c)) return err_prefix("model.init");
        const char *clash = tc->n_layer ? "n_layer" : tc->n_head ? "n_head" : tc->d_model ? "d_model"
                          : tc->n_kv_head ? "n_kv_head" : tc->d_ff ? "d_ff" : tc->vocab_size ? "vocab_size"
                          : tc->model_preset[0] ? "preset" : NULL;
        if (clash) return err_set("model.%s: cannot be combined with model.init (the checkpoint fixes the architecture)", clash);
        if (tc->max_seq_len) c->max_seq_len = tc->max_seq_len;
        return model_config_finish(c);
    }
    Family fam = FAMILY_GPT2;
    if (tc->model_family[0] && model_family_parse(tc->model_family, &fam)) return err_prefix("model.family");
    if (tc->model_preset[0]) {
        if (model_preset(c, tc->model_preset)) return err_prefix("model.preset");
        if (tc->model_family[0] && fam != c->family)
            return err_set("model.family: %s contradicts model.preset %s", tc->model_family, tc->model_preset);
    } else if (tc->model_family[0]) {
        model_config_defaults(c, fam);
    } else {
        return err_set("model: set model.preset, model.init or model.family");
    }
    if (tc->n_layer) c->n_layer = tc->n_layer;
    if (tc->n_head) {
        if (c->n_kv_head == c->n_head && !tc->n_kv_head) c->n_kv_head = tc->n_head;
        c->n_head = tc->n_head;
    }
    if (tc->n_kv_head) c->n_kv_head = tc->n_kv_head;
    if (tc->d_model) {
        c->d_model = tc->d_model;
        c->head_dim = 0;
        if (c->family == FAMILY_GPT2 && !tc->d_ff) c->d_ff = 0; /* back to 4*d_model */
    }
    if (tc->d_ff) c->d_ff = tc->d_ff;
    if (tc->max_seq_len) c->max_seq_len = tc->max_seq_len;
    if (tc->vocab_size) c->vocab_size = tc->vocab_size;
    if (tc->rope_theta > 0) c->rope_theta = tc->rope_theta;
    if (tc->tie_embeddings >= 0) c->tie_embeddings = tc->tie_embeddings;
    if (tc->qkv_bias >= 0) c->qkv_bias = tc->qkv_bias;
    if (c->family == FAMILY_GPT2 && !c->tie_embeddings)
        return err_set("model.tie_embeddings: the gpt2 family always ties its head to the embeddings");
    return model_config_finish(c);
}

/* Keep the lines of metrics.jsonl whose step is <= last_step (a resumed run
 * rewrites the steps after its checkpoint). */
static int metrics_truncate(const char *path, int last_step)
{
    char *buf;
    size_t n;
    if (!fs_exists(path)) return 0;
    if (fs_read_file(path, &buf, &n)) return -1;
    char *out = xmalloc(n + 1);
    size_t o = 0;
    for (char *line = buf; line < buf + n;) {
        char *nl = memchr(line, '\n', (size_t)(buf + n - line));
        size_t len = nl ? (size_t)(nl - line + 1) : (size_t)(buf + n - line);
        int step = -1;
        if (sscanf(line, "{\"step\": %d", &step) == 1 && step <= last_step) {
            memcpy(out + o, line, len);
            o += len;
        }
        line += len;
    }
    int rc = fs_write_atomic(path, out, o);
    free(buf);
    free(out);
    return rc;
}

/* The validation loss: the mean over every scored target of `steps` batches. */
static float eval_loss(Model *m, DataLoader *val, int steps, int B, int T, int32_t *in, int32_t *tg)
{
    loader_reset(val);
    double sum = 0;
    long n = 0;
    for (int i = 0; i < steps; i++) {
        int valid;
        if (loader_next(val, in, tg)) return NAN;
        model_forward(m, in, tg, B, T, 0.0f, &valid);
        sum += m->loss_sum;
        n += valid;
    }
    return n ? (float)(sum / n) : NAN;
}

static void fmt_duration(double s, char *buf, size_t n)
{
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
    else if (t >= 60) snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, n, "%lds", t);
}

typedef struct {
    TrainConfig *tc; /* the run's configuration, as recorded (environment overrides applied) */
    const Backend *be;
    Model *m;
    Tokenizer *tok;
    DataLoader *train, *val;
    Optimizer opt;
    TrainerState st;
    char *config_yaml;
    FILE *metrics;
    McqSet mcq;    /* eval.mcq.task's items (mcq.n == 0: none) */
    int accum;     /* micro-batches per optimizer step */
    int32_t **in, **tg; /* accum host batches */
    int printed_mem;
    TbWriter *tb; /* TensorBoard events (log.tensorboard), or NULL */
} Run;

static int save_checkpoint(Run *r)
{
    const Model *m = r->m;
    size_t n = m->pt.n_train ? m->pt.n_train : 1;
    float *p = xmalloc(m->pt.total * sizeof(float)), *mm = xmalloc(n * sizeof(float)), *vv = xmalloc(n * sizeof(float));
    model_get_params(m, p);
    optim_download(&r->opt, mm, vv);
    CheckpointData d = {.m = m, .params = p, .adam_m = mm, .adam_v = vv, .state = &r->st,
                        .config_yaml = r->config_yaml, .tok = r->tok,
                        .bf16_weights = !strcmp(r->tc->ckpt_dtype, "bf16")};
    int rc = ckpt_save(r->tc->out_dir, &d, r->tc->ckpt_keep);
    free(p);
    free(mm);
    free(vv);
    return rc;
}

static int resume_from(Run *r, const char *resume_dir)
{
    char *ck = ckpt_find_latest(resume_dir);
    if (!ck) return -1;
    int rc = -1;
    size_t n = r->m->pt.n_train ? r->m->pt.n_train : 1;
    float *p = xmalloc(r->m->pt.total * sizeof(float)), *mm = xmalloc(n * sizeof(float)),
          *vv = xmalloc(n * sizeof(float));
    ModelConfig saved;
    if (ckpt_read_state(ck, &r->st)) goto out;
    if (hf_read_config(ck, &saved)) goto out;
    const char *diff = model_config_diff(&saved, &r->m->cfg);
    if (diff) {
        err_set("%s: the checkpoint's %s differs from the config's (compare %s/config.yaml)", ck, diff, ck);
        goto out;
    }
    if (ckpt_read_optimizer(ck, r->m, p, mm, vv)) goto out;
    model_set_params(r->m, p);
    optim_upload(&r->opt, mm, vv);
    if (loader_set_state(r->train, r->st.loader)) goto out;
    printf("resuming from %s (step %d)\n", ck, r->st.step);
    rc = 0;
out:
    free(p);
    free(mm);
    free(vv);
    free(ck);
    return rc;
}

/* ---- eval.mcq: a zero-shot multiple-choice task during training (src/eval/mcq.h) ---- */

/* Read the task's items once, with the run's tokenizer. */
static int mcq_setup(Run *r)
{
    const TrainConfig *tc = r->tc;
    McqTask task;
    if (mcq_task_parse(tc->eval_mcq_task, &task)) return err_prefix("eval.mcq.task");
    if (!r->tok) return err_set("eval.mcq.task: needs a tokenizer (data.tokenizer, or the init model's)");
    if (mcq_load(tc->eval_mcq_data, task, tc->eval_mcq_limit, 0, &r->mcq)) return err_prefix("eval.mcq.data");
    return 0;
}

/* Score the items with the training batch's activations (B rows of T tokens, so no new memory;
 * contexts longer than T are cut from the left, as lm-eval does at the model's window). */
static int mcq_eval(Run *r, McqResult *res)
{
    McqOptions o = {.ctx = r->tc->seq_len, .batch = r->tc->batch_size};
    return mcq_score(r->m, r->tok, &r->mcq, &o, res) ? err_prefix("eval.mcq") : 0;
}

/* What one step measured, for metrics.jsonl and the progress line. */
typedef struct {
    int step;
    float lr;
    StepResult res;
    double tps, ms, mfu, peak_gib;
    float val_loss;
    const McqResult *mcq;
} StepLog;

/* Append printf-style text to a line buffer of n bytes at *o (truncating, never overflowing). */
static void line_add(char *buf, size_t n, size_t *o, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void line_add(char *buf, size_t n, size_t *o, const char *fmt, ...)
{
    if (*o >= n) return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf + *o, n - *o, fmt, ap);
    va_end(ap);
    if (k > 0) *o = MIN(n, *o + (size_t)k);
}

#define METRICS_LINE_MAX 4096

/* One metrics.jsonl line, also given to the TensorBoard writer, so the event files hold exactly
 * the values of metrics.jsonl. */
static int log_metrics(Run *r, const StepLog *s)
{
    char line[METRICS_LINE_MAX];
    size_t o = 0, n = sizeof(line);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    line_add(line, n, &o,
             "{\"step\": %d, \"loss\": %.6f, \"lr\": %.6e, \"grad_norm\": %.6f, \"tokens_per_s\": %.1f, "
             "\"ms_per_step\": %.2f, \"tokens_seen\": %llu, \"scored\": %ld, \"wall_time\": %.3f",
             s->step, s->res.loss, s->lr, s->res.grad_norm, s->tps, s->ms, (unsigned long long)r->st.tokens_seen,
             s->res.scored, now.tv_sec + now.tv_nsec * 1e-9);
    if (s->mfu > 0) line_add(line, n, &o, ", \"mfu\": %.4f", s->mfu);
    line_add(line, n, &o, ", \"peak_mem_gib\": %.3f", s->peak_gib);
    if (!isnan(s->val_loss)) line_add(line, n, &o, ", \"val_loss\": %.6f", s->val_loss);
    if (s->mcq) {
        const McqResult *mcq = s->mcq;
        line_add(line, n, &o, ", \"mcq_task\": \"%s\", \"mcq_items\": %d, \"mcq_acc\": %.6f", r->tc->eval_mcq_task,
                 mcq->items, mcq->acc); /* items: scored (a continuation longer than seq_len is not) */
        if (mcq->has_norm)
            line_add(line, n, &o, ", \"mcq_acc_norm\": %.6f, \"mcq_acc_bytes\": %.6f", mcq->acc_norm, mcq->acc_bytes);
    }
    line_add(line, n, &o, "}\n");
    fwrite(line, 1, o, r->metrics);
    fflush(r->metrics);
    if (r->tb && tb_log_metrics_json(r->tb, line, o, 0)) return err_prefix("log.tensorboard");
    return 0;
}

static void print_progress(const Run *r, const StepLog *s)
{
    const TrainConfig *tc = r->tc;
    char eta[32];
    fmt_duration(s->ms / 1e3 * (tc->steps - s->step), eta, sizeof(eta));
    printf("step %*d/%d | loss %.4f | lr %.2e | gnorm %.3f | %.1fk tok/s | %.1f ms", (int)(floor(log10(tc->steps)) + 1),
           s->step, tc->steps, s->res.loss, s->lr, s->res.grad_norm, s->tps / 1e3, s->ms);
    if (s->mfu > 0) printf(" | MFU %.1f%%", 100 * s->mfu);
    printf(" | ETA %s", eta);
    if (!isnan(s->val_loss)) printf(" | val_loss %.4f", s->val_loss);
    if (s->mcq) printf(" | %s acc %.4f", tc->eval_mcq_task, s->mcq->acc);
    if (s->mcq && s->mcq->has_norm) printf(" acc_norm %.4f", s->mcq->acc_norm);
    printf("\n");
    fflush(stdout);
}

/* The backend's switches from the config, overridden by ANVIL_* variables; the values used are
 * written back into the run's configuration, so that config.yaml records them. */
static int setup_backend(Run *r)
{
    TrainConfig *tc = r->tc;
    BackendOptions bo = {.deterministic = tc->deterministic};
    if (backend_attention_parse(tc->attention, &bo.attention)) return err_prefix("backend.attention");
    if (backend_gemm_tune_parse(tc->gemm_tune, &bo.gemm_tune)) return err_prefix("backend.gemm_tune");
    int env = backend_options_from_env(&bo);
    if (env < 0) return -1;
    if (env & BACKEND_ENV_ATTENTION) {
        snprintf(tc->attention, sizeof(tc->attention), "%s", backend_attention_name(bo.attention));
        printf("note: ANVIL_ATTENTION sets backend.attention: %s (recorded in config.yaml)\n", tc->attention);
    }
    if (env & BACKEND_ENV_GEMM_TUNE) {
        snprintf(tc->gemm_tune, sizeof(tc->gemm_tune), "%s", backend_gemm_tune_name(bo.gemm_tune));
        printf("note: ANVIL_GEMM_TUNE sets backend.gemm_tune: %s (recorded in config.yaml)\n", tc->gemm_tune);
    }
    if (env & BACKEND_ENV_DETERMINISTIC) {
        tc->deterministic = bo.deterministic;
        printf("note: ANVIL_DETERMINISTIC sets train.deterministic: %s (recorded in config.yaml)\n",
               tc->deterministic ? "true" : "false");
    }
    r->be = backend_get(tc->device);
    if (!r->be) return err_prefix("device");
    r->be->configure(&bo);
    return 0;
}

/* Tokenizer and loaders. Tokenizer: data.tokenizer, else the init model's. Without either, a
 * text source is tokenized with GPT-2 and shards need none (the one they were made with is
 * saved in checkpoints when it is a built-in one). */
static int setup_data(Run *r, const ModelConfig *cfg)
{
    const TrainConfig *tc = r->tc;
    const char *tok_spec = tc->data_tokenizer[0] ? tc->data_tokenizer : tc->model_init[0] ? tc->model_init : NULL;
    int sft = !strcmp(tc->data_format, "sft"); /* instruction JSONL (src/data/sft.h) */
    SftOptions so = {.chat_template = tc->data_chat_template, .train_on_all = !strcmp(tc->data_train_on, "all")};
    if (!tok_spec && (sft || (!fs_is_dir(tc->data_train) && strstr(tc->data_train, ".txt")))) tok_spec = "gpt2";
    if (tok_spec) {
        r->tok = tokenizer_load(tok_spec);
        if (!r->tok && (tc->data_tokenizer[0] || !tc->model_init[0])) return err_prefix("data.tokenizer");
        /* an init model without tokenizer files is fine for shards */
    }
    LoaderOptions lo = {.B = tc->batch_size, .T = tc->seq_len, .seed = tc->seed, .shuffle = 1, .rank = 0,
                        .world = 1, .tokenizer = tok_spec, .sft = sft ? &so : NULL};
    r->train = loader_open(tc->data_train, &lo);
    if (!r->train) return err_prefix("data.train");
    if (!r->tok) {
        const char *id = loader_tokenizer_identity(r->train);
        if (!strcmp(id, "gpt2") || !strcmp(id, "byte")) {
            r->tok = tokenizer_load(id);
            lo.tokenizer = id; /* also for a validation text file */
        }
    }
    if (tc->data_val[0]) {
        lo.shuffle = 0;
        r->val = loader_open(tc->data_val, &lo);
        if (!r->val) return err_prefix("data.val");
    }
    if (loader_vocab_size(r->train) > cfg->vocab_size)
        return err_set("data.train: the data's vocabulary (%d ids) does not fit model.vocab_size %d",
                       loader_vocab_size(r->train), cfg->vocab_size);
    return 0;
}

/* The model with its tensor kinds (model.freeze), its weights (model.init or GPT-2 init), its
 * activations and the optimizer's state. */
static int setup_model(Run *r, const ModelConfig *cfg)
{
    const TrainConfig *tc = r->tc;
    int bad;
    ParamKind *kinds = freeze_kinds(&tc->freeze, cfg, &bad);
    if (bad) return -1;
    r->m = model_create_kinds(cfg, r->be, kinds);
    free(kinds);
    if (!param_count(&r->m->pt))
        return err_set("model.freeze: every tensor is frozen; nothing would train");
    if (tc->model_init[0]) {
        float *host = xmalloc(r->m->pt.total * sizeof(float));
        int e = hf_read_weights(tc->model_init, cfg, &r->m->pt, host);
        if (!e) model_set_params(r->m, host);
        free(host);
        if (e) return err_prefix("model.init");
    } else {
        model_init_gpt2(r->m, tc->seed);
    }
    if (model_reserve(r->m, tc->batch_size, tc->seq_len, tc->recompute)) return -1;
    optim_init(&r->opt, r->m, tc->weight_decay);
    return 0;
}

/* Open metrics.jsonl (and write config.yaml, or resume). */
static int setup_run_dir(Run *r, const char *resume_dir)
{
    const TrainConfig *tc = r->tc;
    if (fs_mkdir_p(tc->out_dir)) return -1;
    char *metrics_path = fs_join(tc->out_dir, "metrics.jsonl");
    int rc = -1;
    if (resume_dir) {
        if (resume_from(r, resume_dir) || metrics_truncate(metrics_path, r->st.step)) goto out;
    } else {
        char *cp = fs_join(tc->out_dir, "config.yaml");
        int e = fs_write_atomic(cp, r->config_yaml, strlen(r->config_yaml));
        free(cp);
        if (e) goto out;
    }
    r->metrics = fopen(metrics_path, resume_dir ? "ab" : "wb");
    if (!r->metrics) {
        err_set("%s: cannot open: %s", metrics_path, strerror(errno));
        goto out;
    }
    if (tc->log_tensorboard) {
        TbOptions to = {.flush_s = tc->log_flush_s, .resume_step = resume_dir ? r->st.step : 0};
        r->tb = tb_open(tc->out_dir, &to);
        if (!r->tb) {
            err_prefix("log.tensorboard");
            goto out;
        }
    }
    rc = 0;
out:
    free(metrics_path);
    return rc;
}

static void print_header(const Run *r)
{
    const ModelConfig *c = &r->m->cfg;
    const ParamTable *pt = &r->m->pt;
    long step_tokens = (long)r->tc->batch_size * r->tc->seq_len * r->accum;
    printf("model: %s, %d layers, d_model %d, %d heads (%d kv) | parameters: %.2fM trainable, %.2fM frozen, "
           "%.2fM total | device %s | %d x %d tokens x %d micro-steps = %ld tokens/step\n",
           model_family_name(c->family), c->n_layer, c->d_model, c->n_head, c->n_kv_head, param_count(pt) / 1e6,
           param_count_kind(pt, PARAM_FROZEN) / 1e6, param_count_all(pt) / 1e6, r->be->name, r->tc->batch_size,
           r->tc->seq_len, r->accum, step_tokens);
    fflush(stdout);
}

static void print_memory(const Run *r)
{
    MemReport mr;
    char line[512];
    model_mem_report(r->m, optim_bytes(&r->opt), &mr);
    mem_report_format(&mr, line, sizeof(line));
    printf("memory after step 1: %s\n", line);
    fflush(stdout);
}

/* The GPU's dense bf16 peak that MFU is counted against (H100 / H200 SXM, NVIDIA datasheets). */
#define GPU_BF16_PEAK 989e12

/* Evaluation, metrics, progress line and checkpoint after step s->step. */
static int after_step(Run *r, StepLog *s)
{
    const TrainConfig *tc = r->tc;
    int step = s->step, last = step == tc->steps;
    s->val_loss = NAN;
    if (r->val && tc->eval_steps > 0 && (last || (tc->eval_every && step % tc->eval_every == 0))) {
        s->val_loss = eval_loss(r->m, r->val, tc->eval_steps, tc->batch_size, tc->seq_len, r->in[0], r->tg[0]);
        if (isnan(s->val_loss)) return -1;
    }
    McqResult mcq = {0};
    int with_mcq = r->mcq.n && (last || (tc->eval_mcq_every && step % tc->eval_mcq_every == 0));
    if (with_mcq && mcq_eval(r, &mcq)) return -1;
    s->mcq = with_mcq ? &mcq : NULL;
    if (log_metrics(r, s)) return -1;
    if (step % tc->log_every == 0 || last || !isnan(s->val_loss) || with_mcq) print_progress(r, s);
    if (!r->printed_mem) { /* after the first step of this process: workspaces and the peak exist now */
        print_memory(r);
        r->printed_mem = 1;
    }
    mcq_result_free(&mcq);
    s->mcq = NULL;
    if (last || (tc->ckpt_every && step % tc->ckpt_every == 0) || stop_requested)
        if (save_checkpoint(r)) return -1;
    return 0;
}

/* The training loop from the step after r->st.step to tc->steps (or an interrupt). */
static int train_loop(Run *r)
{
    const TrainConfig *tc = r->tc;
    int B = tc->batch_size, T = tc->seq_len;
    long step_tokens = (long)B * T * r->accum;
    SchedKind sk;
    schedule_parse(tc->schedule, &sk);
    Schedule sched = {sk, tc->lr, tc->min_lr, tc->warmup_steps, tc->steps};
    double flops_token = model_flops_per_token(r->m, T);
    int on_gpu = strncmp(r->be->name, "cuda", 4) == 0;
    double t_run0 = now_s(), elapsed0 = r->st.elapsed_s;
    for (int step = r->st.step + 1; step <= tc->steps; step++) {
        double t0 = now_s();
        StepLog s = {.step = step, .lr = schedule_lr(&sched, step)};
        for (int k = 0; k < r->accum; k++)
            if (loader_next(r->train, r->in[k], r->tg[k])) return -1;
        StepBatch b = {.B = B, .T = T, .accum = r->accum, .in = r->in, .tg = r->tg};
        StepHyper h = {.lr = s.lr, .beta1 = tc->beta1, .beta2 = tc->beta2, .eps = tc->eps, .step = step,
                       .grad_clip = tc->grad_clip};
        if (train_step(r->m, &r->opt, &b, &h, &s.res)) return err_prefix("step %d", step);
        double dt = now_s() - t0;
        r->st.step = step;
        r->st.tokens_seen += (uint64_t)step_tokens;
        r->st.loader = loader_state(r->train);
        r->st.elapsed_s = elapsed0 + (now_s() - t_run0);
        if (!isfinite(s.res.loss))
            return err_set("step %d: the loss is %g; lower train.lr or check the data", step, s.res.loss);
        s.tps = step_tokens / dt;
        s.ms = dt * 1e3;
        s.mfu = on_gpu ? flops_token * s.tps / GPU_BF16_PEAK : 0;
        size_t peak;
        r->be->mem_stats(NULL, &peak);
        s.peak_gib = peak / (1024.0 * 1024.0 * 1024.0);
        if (after_step(r, &s)) return -1;
        if (stop_requested) {
            printf("interrupted: saved a checkpoint at step %d; continue with --resume %s\n", step, tc->out_dir);
            break;
        }
    }
    return 0;
}

static int run_free(Run *r)
{
    int rc = 0;
    if (r->tb && tb_close(r->tb)) rc = err_prefix("log.tensorboard");
    if (r->metrics) fclose(r->metrics);
    if (r->m) {
        optim_free(&r->opt);
        model_free(r->m);
    }
    free(r->config_yaml);
    if (r->train) loader_close(r->train);
    if (r->val) loader_close(r->val);
    if (r->tok) tokenizer_free(r->tok);
    mcq_set_free(&r->mcq);
    for (int k = 0; r->in && k < r->accum; k++) {
        free(r->in[k]);
        free(r->tg[k]);
    }
    free(r->in);
    free(r->tg);
    return rc;
}

int trainer_run(const TrainConfig *tc_in, const char *resume_dir)
{
    TrainConfig tcv = *tc_in;
    if (resume_dir) snprintf(tcv.out_dir, sizeof(tcv.out_dir), "%s", resume_dir);
    if (train_config_validate(&tcv)) return -1;
    Run run = {.tc = &tcv};
    Run *r = &run;
    const TrainConfig *tc = &tcv;
    int rc = -1;
    ModelConfig cfg;
    if (trainer_model_config(tc, &cfg)) return -1;
    if (tc->seq_len > cfg.max_seq_len)
        return err_set("train.seq_len: %d exceeds the model's max_seq_len %d", tc->seq_len, cfg.max_seq_len);
    if (setup_backend(r) || setup_data(r, &cfg) || setup_model(r, &cfg)) goto out;
    if (tc->eval_mcq_task[0] && mcq_setup(r)) goto out;
    r->config_yaml = train_config_to_yaml(tc);
    r->accum = tc->tokens_per_step ? (int)(tc->tokens_per_step / ((long)tc->batch_size * tc->seq_len)) : 1;
    r->in = xcalloc((size_t)r->accum, sizeof(int32_t *));
    r->tg = xcalloc((size_t)r->accum, sizeof(int32_t *));
    for (int k = 0; k < r->accum; k++) {
        r->in[k] = xmalloc((size_t)tc->batch_size * tc->seq_len * sizeof(int32_t));
        r->tg[k] = xmalloc((size_t)tc->batch_size * tc->seq_len * sizeof(int32_t));
    }
    if (setup_run_dir(r, resume_dir)) goto out;
    print_header(r);
    signal(SIGINT, on_sigint);
    rc = train_loop(r);
out:
    signal(SIGINT, SIG_DFL);
    if (run_free(r)) rc = -1;
    return rc;
}
