/* trainer.c - the training loop: data -> forward/backward (with gradient
 * accumulation) -> global-norm clipping -> AdamW -> metrics, evaluation and
 * checkpoints. One seed gives identical runs; a resumed run gives exactly the
 * losses of an uninterrupted one (the loader position, the moments and the
 * fp32 master weights are all restored bit for bit). */
#include "train/trainer.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "eval/mcq.h"
#include "io/fsutil.h"
#include "io/hf.h"
#include "train/checkpoint.h"
#include "train/schedule.h"

/* torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing. */
#define CLIP_EPS 1e-6

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

static float eval_loss(Model *m, DataLoader *val, int steps, int B, int T, int32_t *in, int32_t *tg)
{
    loader_reset(val);
    double sum = 0;
    int n = 0;
    for (int i = 0; i < steps; i++) {
        if (loader_next(val, in, tg)) return NAN;
        sum += model_forward(m, in, tg, B, T, 0.0f, NULL);
        n++;
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
    const TrainConfig *tc;
    const Backend *be;
    Model *m;
    Tokenizer *tok;
    DataLoader *train, *val;
    float *adam_m, *adam_v; /* backend memory */
    OptTensor *opt;
    int nopt;
    TrainerState st;
    char *config_yaml;
    FILE *metrics;
    McqSet mcq; /* eval.mcq.task's items (mcq.n == 0: none) */
} Run;

static int save_checkpoint(Run *r)
{
    const Model *m = r->m;
    size_t n = m->pt.total;
    float *p = xmalloc(n * sizeof(float)), *mm = xmalloc(n * sizeof(float)), *vv = xmalloc(n * sizeof(float));
    model_get_params(m, p);
    r->be->download(mm, r->adam_m, n * sizeof(float));
    r->be->download(vv, r->adam_v, n * sizeof(float));
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
    size_t n = r->m->pt.total;
    float *p = xmalloc(n * sizeof(float)), *mm = xmalloc(n * sizeof(float)), *vv = xmalloc(n * sizeof(float));
    ModelConfig saved;
    if (ckpt_read_state(ck, &r->st)) goto out;
    if (hf_read_config(ck, &saved)) goto out;
    if (saved.n_layer != r->m->cfg.n_layer || saved.d_model != r->m->cfg.d_model ||
        saved.vocab_size != r->m->cfg.vocab_size || saved.n_head != r->m->cfg.n_head ||
        saved.d_ff != r->m->cfg.d_ff || saved.family != r->m->cfg.family) {
        err_set("%s: the checkpoint's model does not match the config's (compare %s/config.yaml)", ck, ck);
        goto out;
    }
    if (ckpt_read_optimizer(ck, r->m, p, mm, vv)) goto out;
    model_set_params(r->m, p);
    r->be->upload(r->adam_m, mm, n * sizeof(float));
    r->be->upload(r->adam_v, vv, n * sizeof(float));
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

static void log_metrics(Run *r, int step, float loss, float lr, double gnorm, double tps, double ms, float val_loss,
                        const McqResult *mcq)
{
    fprintf(r->metrics, "{\"step\": %d, \"loss\": %.6f, \"lr\": %.6e, \"grad_norm\": %.6f, \"tokens_per_s\": %.1f, "
                        "\"ms_per_step\": %.2f, \"tokens_seen\": %llu",
            step, loss, lr, gnorm, tps, ms, (unsigned long long)r->st.tokens_seen);
    if (!isnan(val_loss)) fprintf(r->metrics, ", \"val_loss\": %.6f", val_loss);
    if (mcq) {
        fprintf(r->metrics, ", \"mcq_task\": \"%s\", \"mcq_items\": %d, \"mcq_acc\": %.6f", r->tc->eval_mcq_task,
                mcq->items, mcq->acc); /* items: scored (a continuation longer than seq_len is not) */
        if (mcq->has_norm)
            fprintf(r->metrics, ", \"mcq_acc_norm\": %.6f, \"mcq_acc_bytes\": %.6f", mcq->acc_norm, mcq->acc_bytes);
    }
    fprintf(r->metrics, "}\n");
    fflush(r->metrics);
}

int trainer_run(const TrainConfig *tc_in, const char *resume_dir)
{
    TrainConfig tcv = *tc_in;
    const TrainConfig *tc = &tcv;
    if (resume_dir) snprintf(tcv.out_dir, sizeof(tcv.out_dir), "%s", resume_dir);
    if (train_config_validate(tc)) return -1;
    Run run = {.tc = tc};
    Run *r = &run;
    int rc = -1;
    int B = tc->batch_size, T = tc->seq_len;
    int32_t *in = NULL, *tg = NULL;

    ModelConfig cfg;
    if (trainer_model_config(tc, &cfg)) return -1;
    if (T > cfg.max_seq_len)
        return err_set("train.seq_len: %d exceeds the model's max_seq_len %d", T, cfg.max_seq_len);
    r->be = backend_get(tc->device);
    if (!r->be) return err_prefix("device");
    BackendOptions bo = {.deterministic = tc->deterministic};
    r->be->configure(&bo);

    /* Tokenizer: data.tokenizer, else the init model's. Without either, a text source is
     * tokenized with GPT-2 and shards need none (the one they were made with is saved in
     * checkpoints when it is a built-in one). */
    const char *tok_spec = tc->data_tokenizer[0] ? tc->data_tokenizer : tc->model_init[0] ? tc->model_init : NULL;
    if (!tok_spec && !fs_is_dir(tc->data_train) && strstr(tc->data_train, ".txt")) tok_spec = "gpt2";
    if (tok_spec) {
        r->tok = tokenizer_load(tok_spec);
        if (!r->tok && (tc->data_tokenizer[0] || !tc->model_init[0])) {
            err_prefix("data.tokenizer");
            goto out;
        } /* an init model without tokenizer files is fine for shards */
    }
    LoaderOptions lo = {.B = B, .T = T, .seed = tc->seed, .shuffle = 1, .rank = 0, .world = 1,
                        .tokenizer = tok_spec};
    r->train = loader_open(tc->data_train, &lo);
    if (!r->train) {
        err_prefix("data.train");
        goto out;
    }
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
        if (!r->val) {
            err_prefix("data.val");
            goto out;
        }
    }
    if (loader_vocab_size(r->train) > cfg.vocab_size) {
        err_set("data.train: the data's vocabulary (%d ids) does not fit model.vocab_size %d",
                loader_vocab_size(r->train), cfg.vocab_size);
        goto out;
    }

    r->m = model_create(&cfg, r->be);
    if (tc->model_init[0]) {
        float *host = xmalloc(r->m->pt.total * sizeof(float));
        int e = hf_read_weights(tc->model_init, &cfg, &r->m->pt, host);
        if (!e) model_set_params(r->m, host);
        free(host);
        if (e) {
            err_prefix("model.init");
            goto out;
        }
    } else {
        model_init_gpt2(r->m, tc->seed);
    }
    if (model_reserve(r->m, B, T, tc->recompute)) goto out;
    if (tc->eval_mcq_task[0] && mcq_setup(r)) goto out;
    size_t n = r->m->pt.total;
    r->adam_m = r->be->alloc(n * sizeof(float));
    r->adam_v = r->be->alloc(n * sizeof(float));
    r->nopt = r->m->pt.n;
    r->opt = xcalloc((size_t)r->nopt, sizeof(OptTensor));
    for (int i = 0; i < r->nopt; i++) {
        const Param *p = &r->m->pt.p[i];
        r->opt[i] = (OptTensor){p->offset, p->numel, p->decay ? tc->weight_decay : 0.0f, p->trainable};
    }
    r->config_yaml = train_config_to_yaml(tc);

    if (fs_mkdir_p(tc->out_dir)) goto out;
    char *metrics_path = fs_join(tc->out_dir, "metrics.jsonl");
    if (resume_dir) {
        if (resume_from(r, resume_dir) || metrics_truncate(metrics_path, r->st.step)) {
            free(metrics_path);
            goto out;
        }
    } else {
        char *cp = fs_join(tc->out_dir, "config.yaml");
        int e = fs_write_atomic(cp, r->config_yaml, strlen(r->config_yaml));
        free(cp);
        if (e) {
            free(metrics_path);
            goto out;
        }
    }
    r->metrics = fopen(metrics_path, resume_dir ? "ab" : "wb");
    if (!r->metrics) {
        err_set("%s: cannot open: %s", metrics_path, strerror(errno));
        free(metrics_path);
        goto out;
    }
    free(metrics_path);

    int accum = tc->tokens_per_step ? (int)(tc->tokens_per_step / ((long)B * T)) : 1;
    long step_tokens = (long)B * T * accum;
    SchedKind sk;
    schedule_parse(tc->schedule, &sk);
    Schedule sched = {sk, tc->lr, tc->min_lr, tc->warmup_steps, tc->steps};
    in = xmalloc((size_t)B * T * sizeof(int32_t));
    tg = xmalloc((size_t)B * T * sizeof(int32_t));
    printf("model: %s, %d layers, d_model %d, %d heads (%d kv), %.2fM parameters | device %s | "
           "%d x %d tokens x %d micro-steps = %ld tokens/step\n",
           model_family_name(cfg.family), cfg.n_layer, cfg.d_model, cfg.n_head, cfg.n_kv_head,
           param_count(&r->m->pt) / 1e6, r->be->name, B, T, accum, step_tokens);
    fflush(stdout);
    signal(SIGINT, on_sigint);

    double t_run0 = now_s(), elapsed0 = r->st.elapsed_s;
    int first_step = r->st.step + 1;
    for (int step = first_step; step <= tc->steps; step++) {
        double t0 = now_s();
        float lr = schedule_lr(&sched, step);
        model_zero_grad(r->m);
        double loss_sum = 0;
        for (int k = 0; k < accum; k++) {
            if (loader_next(r->train, in, tg)) goto out;
            loss_sum += model_forward(r->m, in, tg, B, T, 1.0f / (float)step_tokens, NULL);
            model_backward(r->m);
        }
        float loss = (float)(loss_sum / accum);
        double gnorm = sqrt(r->be->sumsq(r->m->grads, n));
        float clip = 1.0f;
        if (tc->grad_clip > 0 && gnorm > tc->grad_clip) clip = (float)(tc->grad_clip / (gnorm + CLIP_EPS));
        AdamHyper h = {.lr = lr, .beta1 = tc->beta1, .beta2 = tc->beta2, .eps = tc->eps, .step = step,
                       .grad_scale = clip};
        r->be->adamw(r->m->params, r->m->params_act, r->m->grads, r->adam_m, r->adam_v, r->opt, r->nopt, &h);
        r->be->sync();
        double dt = now_s() - t0;
        r->st.step = step;
        r->st.tokens_seen += (uint64_t)step_tokens;
        r->st.loader = loader_state(r->train);
        r->st.elapsed_s = elapsed0 + (now_s() - t_run0);
        if (!isfinite(loss)) {
            err_set("step %d: the loss is %g; lower train.lr or check the data", step, loss);
            goto out;
        }
        float val_loss = NAN;
        int last = step == tc->steps;
        if (r->val && tc->eval_steps > 0 && (last || (tc->eval_every && step % tc->eval_every == 0))) {
            val_loss = eval_loss(r->m, r->val, tc->eval_steps, B, T, in, tg);
            if (isnan(val_loss)) goto out;
        }
        McqResult mcq = {0};
        int with_mcq = r->mcq.n && (last || (tc->eval_mcq_every && step % tc->eval_mcq_every == 0));
        if (with_mcq && mcq_eval(r, &mcq)) goto out;
        double tps = step_tokens / dt;
        log_metrics(r, step, loss, lr, gnorm, tps, dt * 1e3, val_loss, with_mcq ? &mcq : NULL);
        if (step % tc->log_every == 0 || last || !isnan(val_loss) || with_mcq) {
            char eta[32];
            fmt_duration(dt * (tc->steps - step), eta, sizeof(eta));
            printf("step %*d/%d | loss %.4f | lr %.2e | gnorm %.3f | %.1fk tok/s | %.1f ms | ETA %s", 
                   (int)(floor(log10(tc->steps)) + 1), step, tc->steps, loss, lr, gnorm, tps / 1e3, dt * 1e3, eta);
            if (!isnan(val_loss)) printf(" | val_loss %.4f", val_loss);
            if (with_mcq) printf(" | %s acc %.4f", tc->eval_mcq_task, mcq.acc);
            if (with_mcq && mcq.has_norm) printf(" acc_norm %.4f", mcq.acc_norm);
            printf("\n");
            fflush(stdout);
        }
        mcq_result_free(&mcq);
        if (last || (tc->ckpt_every && step % tc->ckpt_every == 0) || stop_requested) {
            if (save_checkpoint(r)) goto out;
        }
        if (stop_requested) {
            printf("interrupted: saved a checkpoint at step %d; continue with --resume %s\n", step, tc->out_dir);
            break;
        }
    }
    rc = 0;
out:
    signal(SIGINT, SIG_DFL);
    if (r->metrics) fclose(r->metrics);
    if (r->m) {
        if (r->adam_m) r->be->free(r->adam_m);
        if (r->adam_v) r->be->free(r->adam_v);
        model_free(r->m);
    }
    free(r->opt);
    free(r->config_yaml);
    if (r->train) loader_close(r->train);
    if (r->val) loader_close(r->val);
    if (r->tok) tokenizer_free(r->tok);
    mcq_set_free(&r->mcq);
    free(in);
    free(tg);
    return rc;
}
