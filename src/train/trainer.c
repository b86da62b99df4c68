/* trainer.c - the training loop: data -> one optimizer step (step.c: forward/backward with
 * gradient accumulation, global-norm clipping, AdamW) -> metrics, evaluation and checkpoints.
 * One seed gives identical runs; a resumed run gives exactly the losses of an uninterrupted one
 * (the loader position, the moments and the fp32 master weights are all restored bit for bit). */
#include "train/trainer.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef ANVIL_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

#include "core/error.h"
#include "core/hostmem.h"
#include "data/loader.h"
#include "dist/dist.h"
#include "data/mlm.h"
#include "data/sft.h"
#include "data/tokenizer.h"
#include "eval/mcq.h"
#include "io/fsutil.h"
#include "io/bnb_model.h"
#include "io/hf.h"
#include "io/peft.h"
#include "model/moe.h"
#include "model/ternary.h"
#include "report/plan.h"
#include "report/tb.h"
#include "dist/env.h"
#include "model/tp.h"
#include "train/checkpoint.h"
#include "train/freeze.h"
#include "train/optim.h"
#include "train/schedule.h"
#include "train/step.h"

/* SIGINT (Ctrl-C) and SIGTERM (Slurm, Kubernetes, docker stop): finish the step, save, exit 128 + sig. */
static volatile sig_atomic_t stop_requested;
static void on_stop_signal(int sig) { stop_requested = sig; }

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
                          : tc->model_preset[0] ? "preset" : tc->moe_experts ? "moe.experts" : tc->moe_top_k ? "moe.top_k"
                          : tc->moe_d_ff ? "moe.d_ff" : tc->moe_every ? "moe.every" : tc->moe_shared ? "moe.shared_experts"
                          : tc->moe_norm_topk >= 0 ? "moe.norm_topk_prob" : NULL;
        if (clash) return err_set("model.%s: cannot be combined with model.init (the checkpoint fixes the architecture)", clash);
        if (tc->max_seq_len) c->max_seq_len = tc->max_seq_len;
        c->moe_aux_coef = tc->moe_aux_coef;
        c->moe_z_coef = tc->moe_z_coef;
        if (c->moe_jitter > 0 && tc->moe_jitter != c->moe_jitter)
            fprintf(stderr, "anvil: note: %s/config.json: router_jitter_noise %g is not applied: model.moe.router_jitter "
                            "(%g) sets the jitter\n",
                    tc->model_init, (double)c->moe_jitter, (double)tc->moe_jitter);
        c->moe_jitter = tc->moe_jitter;
        if (!strcmp(tc->ternary, "bitnet")) c->ternary = TERNARY_BITNET;
        else if (!strcmp(tc->ternary, "none")) c->ternary = TERNARY_NONE;
        c->tern_group = tc->tern_group;
        c->tern_fused = tc->tern_fused;
        c->tern_chunk_rows = tc->tern_chunk_rows;
        c->dropout = tc->dropout;
        c->attn_dropout = tc->attn_dropout;
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
        if (!strcmp(tc->model_family, "bitnet")) model_config_bitnet(c);
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
    if (tc->moe_experts) c->moe_experts = tc->moe_experts;
    if (tc->moe_top_k) c->moe_top_k = tc->moe_top_k;
    if (tc->moe_d_ff) c->moe_d_ff = tc->moe_d_ff;
    if (tc->moe_every) c->moe_every = tc->moe_every;
    if (tc->moe_norm_topk >= 0) c->moe_norm_topk = tc->moe_norm_topk;
    if (tc->moe_shared < 0) return err_set("model.moe.shared_experts: must be >= 0, got %d", tc->moe_shared);
    if (tc->moe_shared) c->moe_shared_d_ff = tc->moe_shared * (tc->moe_d_ff ? tc->moe_d_ff : c->moe_d_ff ? c->moe_d_ff : c->d_ff);
    c->moe_aux_coef = tc->moe_aux_coef;
    c->moe_z_coef = tc->moe_z_coef;
    c->moe_jitter = tc->moe_jitter;
    if (c->family == FAMILY_GPT2 && !c->tie_embeddings)
        return err_set("model.tie_embeddings: the gpt2 family always ties its head to the embeddings");
    if (!strcmp(tc->ternary, "bitnet")) c->ternary = TERNARY_BITNET;
    else if (!strcmp(tc->ternary, "none")) c->ternary = TERNARY_NONE;
    c->tern_group = tc->tern_group;
    if (c->family == FAMILY_BERT && !c->tie_embeddings)
        return err_set("model.tie_embeddings: the bert family ties its MLM decoder to the embeddings");
    c->tern_fused = tc->tern_fused;
    c->tern_chunk_rows = tc->tern_chunk_rows;
    c->dropout = tc->dropout;
    c->attn_dropout = tc->attn_dropout;
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

/* The validation loss: the mean over every scored target of `steps` batches. With several ranks
 * every rank reads the same batches and scores batches rank, rank + world, ...; the sums are added
 * over the ranks, so the value does not depend on the world size. */
static float eval_loss(Model *m, Dist *d, DataLoader *val, int steps, int B, int T, int32_t *in, int32_t *tg)
{
    loader_reset(val);
    int rank = dist_active(d) ? d->rank : 0, world = dist_active(d) ? d->world : 1;
    double sums[2] = {0, 0}; /* loss, scored targets */
    /* ZeRO-3 gathers every layer in every forward: each rank runs as many forwards as rank 0 */
    int lockstep = dist_active(d) && d->opt.zero >= 3, mine = 0, most = (steps + world - 1) / world;
    for (int i = 0; i < steps; i++) {
        int valid;
        if (loader_next(val, in, tg)) return NAN;
        if (i % world != rank) continue;
        model_forward(m, in, tg, B, T, 0.0f, &valid);
        sums[0] += m->loss_sum;
        sums[1] += valid;
        mine++;
    }
    for (; lockstep && mine < most; mine++) model_forward(m, in, tg, B, T, 0.0f, NULL); /* not counted */
    if (dist_sum_f64(d, sums, 2)) return NAN;
    return sums[1] > 0 ? (float)(sums[0] / sums[1]) : NAN;
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
    MlmOptions mlm; /* data.objective mlm: the masking of both loaders */
    DataLoader *train, *val;
    Optimizer opt;
    TrainerState st;
    char *config_yaml;
    FILE *metrics;
    McqSet mcq;    /* eval.mcq.task's items (mcq.n == 0: none) */
    int accum;     /* micro-batches per optimizer step */
    int32_t **in, **tg; /* accum host batches */
    int printed_mem;
    char base_path[PATH_MAX]; /* model.init as an absolute path (adapter checkpoints name their base) */
    TbWriter *tb; /* TensorBoard events (log.tensorboard), or NULL */
    Dist dist;    /* the ranks of a data-parallel run (one process: inactive) */
    int quiet;    /* ranks other than 0 print nothing and write no metrics */
    double auto_plan_gib; /* train.batch_size auto: the plan's peak for the chosen batch */
    int overwrite; /* --overwrite: setup_run_dir removes the old run before writing the new one */
    int stop;     /* some rank was interrupted: every rank stops after this step */
    double *moe_load; /* MoE: routed rows per layer and expert over this process's steps (NULL: dense) */
    int moe_step0;    /* the first step they count */
    /* tensor parallel (dist.tp > 1; model/tp.h): this rank's group; the whole model's config and table
     * (a Model shell for the checkpoint files, which hold the whole model) and every tp rank's table,
     * to assemble the whole from the slices */
    ModelTp tpm;
    Model whole;
    ParamTable *tp_pt;
    int emb_host_bad; /* train.offload_embeddings asked of a model whose embedding cannot go (err_set's message) */
} Run;

/* Tensor parallel: each rank of a replica holds slices of the model (model/tp.h). */
static int run_tp(const Run *r) { return dist_active(&r->dist) && r->dist.tp > 1; }

/* ZeRO shards the optimizer's files only when several ranks hold parts of it. */
static int run_sharded(const Run *r)
{
    return dist_active(&r->dist) && r->dist.opt.zero >= 1 && r->dist.world > 1;
}

/* Every rank says whether its part succeeded (rc); -1 on every rank when one failed, with this
 * rank's own message, or one naming the rank that failed. */
static int agree(Run *r, int rc, const char *what)
{
    Dist *d = &r->dist;
    if (!dist_active(d)) return rc;
    char mine[ANVIL_ERR_MAX];
    snprintf(mine, sizeof(mine), "%s", rc ? err_get() : "");
    double x = rc ? 1 : 0, *all = xmalloc(sizeof(double) * (size_t)d->gworld);
    int e = dist_world_gather_f64(d, &x, all, 1), bad = -1; /* every rank of every replica */
    for (int k = 0; !e && k < d->gworld && bad < 0; k++)
        if (all[k] != 0) bad = k;
    free(all);
    if (e) return -1;
    if (rc) return err_set("%s", mine);
    if (bad >= 0) return err_set("%s: rank %d failed (its message is above)", what, bad);
    return 0;
}

#define FNV_OFFSET 1469598103934665603ULL /* FNV-1a (64-bit) */
#define FNV_PRIME 1099511628211ULL

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * FNV_PRIME;
    return h;
}

/* FNV-1a over the integer state of every integer-ternary tensor (trits, exponents, both accumulators). */
static uint64_t hash_ternary(const Model *m)
{
    uint64_t h = FNV_OFFSET;
    for (int i = 0; i < m->pt.n; i++) {
        if (m->pt.p[i].kind != PARAM_TERNARY) continue;
        const TernaryTensor *t = &m->ps.tern[i];
        size_t nb = trit_bytes(t->n), ng = tern_groups(t->n, t->group);
        uint8_t *buf = xmalloc(nb + 2 * ng + t->n);
        int8_t *e = (int8_t *)buf + nb; /* exponents, the sign accumulators, the scale accumulators */
        params_tern_download(&m->ps, i, buf, e, e + ng, e + ng + t->n);
        h = fnv1a(h, buf, nb + 2 * ng + t->n);
        free(buf);
    }
    return h;
}

/* Every rank must hold the same weights (identical updates); a checkpoint checks it: a hash of the
 * host image (pt.total floats) and one of the integer-ternary state from every rank, compared with
 * rank 0's. */
static int check_same_weights(Run *r, const float *p)
{
    Dist *d = &r->dist;
    uint64_t h[2] = {fnv1a(FNV_OFFSET, p, r->m->pt.total * sizeof(float)), hash_ternary(r->m)};
    double mine[2], *all = xmalloc(sizeof(mine) * (size_t)d->world);
    memcpy(mine, h, sizeof(h)); /* carried as 8 bytes each */
    int rc = dist_gather_f64(d, mine, all, 2);
    for (int k = 1; !rc && k < d->world; k++)
        if (memcmp(&all[2 * k], &all[0], sizeof(double)))
            rc = err_set("checkpoint: rank %d's weights differ from rank 0's (the ranks diverged)", k);
        else if (memcmp(&all[2 * k + 1], &all[1], sizeof(double)))
            rc = err_set("checkpoint: rank %d's integer-ternary state (trits, exponents, accumulators) "
                         "differs from rank 0's (the ranks diverged)", k);
    free(all);
    return rc;
}

/* Tensor parallel: the whole model's host image (seg 0) or trainable segment (seg 1; the optimizer's
 * moments) from every tp rank's slice `local` (zeros where nothing is). */
static int tp_gather_whole(Run *r, const float *local, float *whole, int seg)
{
    int P = r->dist.tp;
    size_t most = 1, mine = seg ? r->m->pt.n_train : r->m->pt.total;
    for (int k = 0; k < P; k++) most = MAX(most, seg ? r->tp_pt[k].n_train : r->tp_pt[k].total);
    float *buf = xcalloc(most, sizeof(float)), *all = xmalloc(most * (size_t)P * sizeof(float));
    memcpy(buf, local, mine * sizeof(float));
    int rc = dist_tp_gather(&r->dist, buf, all, most * sizeof(float));
    for (int k = 0; !rc && k < P; k++)
        tp_slice(&r->tpm.full, P, k, &r->whole.pt, &r->tp_pt[k], whole, all + (size_t)k * most, 0, seg);
    free(buf);
    free(all);
    return rc;
}

/* Tensor parallel with ZeRO: the moments of this rank's shard [opt.lo, opt.hi) into seg (its whole
 * trainable segment), from every rank of the data-parallel group; without ZeRO they are whole already. */
static int dp_whole_moments(Run *r, const float *shard, float *seg)
{
    Dist *d = &r->dist;
    size_t mine = r->opt.hi - r->opt.lo, most = 1;
    if (!d->opt.zero) {
        memcpy(seg, shard, r->m->pt.n_train * sizeof(float));
        return 0;
    }
    for (int k = 0; k < d->world; k++) most = MAX(most, d->hi[k] - d->lo[k]);
    float *buf = xcalloc(most, sizeof(float)), *all = xmalloc(most * (size_t)d->world * sizeof(float));
    memcpy(buf, shard, mine * sizeof(float));
    int rc = d->comm->host_all_gather(d->comm, buf, all, most * sizeof(float));
    for (int k = 0; !rc && k < d->world; k++)
        memcpy(seg + d->lo[k], all + (size_t)k * most, (d->hi[k] - d->lo[k]) * sizeof(float));
    free(buf);
    free(all);
    return rc;
}

/* A checkpoint of every rank's state: rank 0 writes the model directory (and the optimizer file, or
 * the manifest of the shards), every rank of a ZeRO run its own shard, then rank 0 publishes. */
static int save_checkpoint(Run *r)
{
    Model *m = r->m;
    Dist *d = &r->dist;
    /* tensor parallel writes the whole model's optimizer file, ZeRO or not */
    int dp = dist_active(d), sharded = run_sharded(r) && !run_tp(r), main = dist_main(d);
    if (dp && dist_params_whole(d, &m->ps)) return -1; /* every rank's master is whole for the save */
    size_t n = r->opt.n ? r->opt.n : 1;
    float *p = xmalloc(m->pt.total * sizeof(float)), *mm = xmalloc(n * sizeof(float)), *vv = xmalloc(n * sizeof(float));
    float *master = NULL;
    model_get_params(m, p);
    optim_download(&r->opt, mm, vv);
    if (dp && check_same_weights(r, p)) {
        dist_params_reshard(d, &m->ps);
        free(p), free(mm), free(vv);
        return -1;
    }
    const Model *cm = m; /* what the files describe: the whole model under tensor parallel */
    if (run_tp(r)) {
        size_t nw = r->whole.pt.n_train ? r->whole.pt.n_train : 1, nl = m->pt.n_train ? m->pt.n_train : 1;
        float *pw = xcalloc(r->whole.pt.total, sizeof(float)), *mw = xcalloc(nw, sizeof(float)),
              *vw = xcalloc(nw, sizeof(float)), *ml = xcalloc(nl, sizeof(float)), *vl = xcalloc(nl, sizeof(float));
        int e = dp_whole_moments(r, mm, ml) || dp_whole_moments(r, vv, vl) || tp_gather_whole(r, p, pw, 0) ||
                tp_gather_whole(r, ml, mw, 1) || tp_gather_whole(r, vl, vw, 1);
        free(p), free(mm), free(vv), free(ml), free(vl);
        p = pw, mm = mw, vv = vw;
        cm = &r->whole;
        if (e) {
            free(p), free(mm), free(vv);
            return -1;
        }
    }
    int bf16 = !strcmp(r->tc->ckpt_dtype, "bf16");
    CheckpointData cd = {.m = cm, .params = p, .adam_m = mm, .adam_v = vv, .state = &r->st,
                         .config_yaml = r->config_yaml, .tok = r->tok, .bf16_weights = bf16,
                         .adapter_base = m->adapters ? r->base_path : NULL, .finished = r->st.step >= r->tc->steps};
    if (sharded) {
        cd.world = d->world;
        cd.zero = d->opt.zero;
        cd.shard_lo = d->lo;
        cd.shard_hi = d->hi;
    }
    char *tmp = ckpt_tmp_dir(r->tc->out_dir, r->st.step, dp ? d->pid0 : (int)getpid());
    char *final = ckpt_dir_name(r->tc->out_dir, r->st.step);
    int rc = agree(r, main ? ckpt_begin(tmp) : 0, "checkpoint");
    if (!rc) {
        int mine = main ? ckpt_write_main(tmp, &cd) : 0;
        if (!mine && sharded) {
            if (bf16) { /* this rank's fp32 masters, in segment layout */
                master = xmalloc(n * sizeof(float));
                m->be->download(master, m->ps.master + (r->opt.lo - m->ps.master_lo), r->opt.n * sizeof(float));
            }
            CheckpointShard sh = {.rank = d->rank, .world = d->world, .lo = r->opt.lo, .hi = r->opt.hi,
                                  .adam_m = mm, .adam_v = vv, .master = master};
            mine = ckpt_write_shard(tmp, &sh);
        }
        rc = agree(r, mine, "checkpoint");
    }
    if (!rc) rc = agree(r, main ? ckpt_publish(r->tc->out_dir, tmp, &cd, r->tc->ckpt_keep) : 0, "checkpoint");
    if (rc) {
        err_prefix("checkpoint %s", final);
        if (main) ckpt_abort(tmp);
    }
    if (dp) dist_params_reshard(d, &m->ps);
    free(tmp);
    free(final);
    free(p);
    free(mm);
    free(vv);
    free(master);
    return rc;
}

/* What changed since the checkpoint in the keys that shape the data (notes, not errors). */
static void note_changes(const Run *r, const char *ck)
{
    char *path = fs_join(ck, "config.yaml");
    TrainConfig was;
    train_config_defaults(&was);
    if (fs_exists(path) && !train_config_load_yaml(&was, path) && !r->quiet) {
        const TrainConfig *tc = r->tc;
        if (was.seq_len != tc->seq_len)
            printf("note: train.seq_len %d -> %d since the checkpoint\n", was.seq_len, tc->seq_len);
        if (was.batch_size != tc->batch_size)
            printf("note: train.batch_size %d -> %d since the checkpoint\n", was.batch_size, tc->batch_size);
        if (was.tokens_per_step != tc->tokens_per_step)
            printf("note: train.tokens_per_step %ld -> %ld since the checkpoint\n", was.tokens_per_step,
                   tc->tokens_per_step);
    }
    err_clear();
    free(path);
}

/* A model checkpoint's config.json describes the run's architecture, field by field. */
static int check_model_ckpt(const Run *r, const char *ck)
{
    ModelConfig saved;
    if (hf_read_config(ck, &saved)) return -1;
    const char *diff = model_config_diff(&saved, run_tp(r) ? &r->whole.cfg : &r->m->cfg);
    if (diff) return err_set("%s: the checkpoint's %s differs from the config's (compare %s/config.yaml)", ck, diff, ck);
    return 0;
}

/* An adapter checkpoint names its base and holds the adapters' spec: both as this run's. */
static int check_adapter_ckpt(const Run *r, const char *ck)
{
    LoraSpec saved;
    char base[PATH_MAX];
    if (peft_read_config(ck, &r->m->cfg, &saved, base, sizeof(base))) return -1;
    const LoraSpec *now = &r->m->lora;
    const char *diff = saved.r != now->r ? "lora.r" : saved.alpha != now->alpha ? "lora.alpha"
                     : saved.sites != now->sites ? "lora.targets" : saved.rslora != now->rslora ? "lora.rslora"
                     : saved.dropout != now->dropout ? "lora.dropout" : NULL;
    if (diff) return err_set("%s: the checkpoint's %s differs from the config's (compare %s/config.yaml)", ck, diff, ck);
    if (strcmp(base, r->base_path))
        return err_set("%s: the adapters were trained on %s, but model.init is %s", ck, base, r->base_path);
    return 0;
}

/* Tensor parallel: a checkpoint (the whole model, any layout of the moments) into this rank's slices:
 * p (local host image), mm, vv (the optimizer's part [opt.lo, opt.hi) of the local trainable segment). */
static int tp_read_whole(Run *r, const char *ck, float *p, float *mm, float *vv)
{
    const Dist *d = &r->dist;
    size_t nw = r->whole.pt.n_train ? r->whole.pt.n_train : 1, nl = r->m->pt.n_train ? r->m->pt.n_train : 1;
    float *pw = xcalloc(r->whole.pt.total, sizeof(float)), *mw = xcalloc(nw, sizeof(float)),
          *vw = xcalloc(nw, sizeof(float)), *ml = xcalloc(nl, sizeof(float)), *vl = xcalloc(nl, sizeof(float));
    tp_gather_whole(r, p, pw, 0); /* what the files do not hold stays as it is */
    int rc = r->m->adapters ? peft_read_weights_host(ck, &r->whole, pw) : 0;
    if (!rc) rc = ckpt_read_optimizer_range(ck, &r->whole, pw, 0, r->whole.pt.n_train, mw, vw);
    if (!rc) {
        tp_slice(&r->tpm.full, d->tp, d->tp_rank, &r->whole.pt, &r->m->pt, pw, p, 1, 0);
        tp_slice(&r->tpm.full, d->tp, d->tp_rank, &r->whole.pt, &r->m->pt, mw, ml, 1, 1);
        tp_slice(&r->tpm.full, d->tp, d->tp_rank, &r->whole.pt, &r->m->pt, vw, vl, 1, 1);
        memcpy(mm, ml + r->opt.lo, (r->opt.hi - r->opt.lo) * sizeof(float));
        memcpy(vv, vl + r->opt.lo, (r->opt.hi - r->opt.lo) * sizeof(float));
    }
    free(pw), free(mw), free(vw), free(ml), free(vl);
    return rc;
}

static int resume_from(Run *r, const char *resume_dir)
{
    char *ck = ckpt_find_latest(resume_dir);
    if (!ck) return -1;
    int rc = -1;
    size_t n = r->opt.n ? r->opt.n : 1;
    float *p = xmalloc(r->m->pt.total * sizeof(float)), *mm = xmalloc(n * sizeof(float)),
          *vv = xmalloc(n * sizeof(float));
    if (ckpt_read_state(ck, &r->st)) goto out;
    note_changes(r, ck);
    if (r->m->adapters ? check_adapter_ckpt(r, ck) : check_model_ckpt(r, ck)) goto out;
    /* an adapter checkpoint holds the adapters only: the base stays as model.init loaded it */
    if (dist_params_whole(&r->dist, &r->m->ps)) goto out; /* a ZeRO store: whole while the weights load */
    if (r->m->adapters && !run_tp(r) && peft_read_weights(ck, r->m)) goto out; /* tp: in tp_read_whole */
    model_get_params(r->m, p);
    if (run_tp(r)) { /* the whole model and moments, then this rank's slices of them */
        if (tp_read_whole(r, ck, p, mm, vv)) goto out;
    } else if (ckpt_read_optimizer_range(ck, r->m, p, r->opt.lo, r->opt.hi, mm, vv)) {
        goto out;
    }
    model_set_params_keep_4bit(r->m, p);
    optim_upload(&r->opt, mm, vv);
    if (ckpt_read_ternary(ck, r->m)) goto out;
    if (loader_set_state(r->train, r->st.loader)) goto out;
    if (!r->quiet) printf("resuming from %s (step %d)\n", ck, r->st.step);
    rc = 0;
out:
    dist_params_reshard(&r->dist, &r->m->ps);
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
    double comm_s;          /* communication the compute waited for, mean over the ranks (s) */
    double *peak_gib_ranks; /* world entries (data parallel), else NULL */
    int world;
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

/* One metrics.jsonl line at most (an MoE run's expert_load: 8 characters per layer and expert). */
#define METRICS_LINE_MAX (1 << 16)

/* One metrics.jsonl line, also given to the TensorBoard writer, so the event files hold exactly
 * the values of metrics.jsonl. */
static int log_metrics(Run *r, const StepLog *s)
{
    static char line[METRICS_LINE_MAX];
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
    if (s->peak_gib_ranks) { /* global tokens/s is tokens_per_s; per GPU (rank), exposed communication, memory */
        line_add(line, n, &o, ", \"ranks\": %d, \"tokens_per_s_per_rank\": %.1f, \"comm_s\": %.6f", s->world,
                 s->tps / s->world, s->comm_s);
        line_add(line, n, &o, ", \"peak_mem_gib_ranks\": [");
        for (int k = 0; k < s->world; k++) line_add(line, n, &o, "%s%.3f", k ? ", " : "", s->peak_gib_ranks[k]);
        line_add(line, n, &o, "]");
    }
    if (!isnan(s->val_loss)) line_add(line, n, &o, ", \"val_loss\": %.6f", s->val_loss);
    moe_metrics_json(r->m, line, n, &o);
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
    char tps[32];
    if (s->tps >= 1e4) snprintf(tps, sizeof(tps), "%.1fk", s->tps / 1e3);
    else snprintf(tps, sizeof(tps), "%.0f", s->tps);
    printf("step %*d/%d | loss %.4f | lr %.2e | gnorm %.3f | %s tok/s | %.1f ms", (int)(floor(log10(tc->steps)) + 1),
           s->step, tc->steps, s->res.loss, s->lr, s->res.grad_norm, tps, s->ms);
    if (s->peak_gib_ranks)
        printf(" (%.1fk/rank) | comm %.1f ms", s->tps / s->world / 1e3, s->comm_s * 1e3);
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
        if (!r->quiet) printf("note: ANVIL_ATTENTION sets backend.attention: %s (recorded in config.yaml)\n", tc->attention);
    }
    if (env & BACKEND_ENV_GEMM_TUNE) {
        snprintf(tc->gemm_tune, sizeof(tc->gemm_tune), "%s", backend_gemm_tune_name(bo.gemm_tune));
        if (!r->quiet) printf("note: ANVIL_GEMM_TUNE sets backend.gemm_tune: %s (recorded in config.yaml)\n", tc->gemm_tune);
    }
    if (env & BACKEND_ENV_DETERMINISTIC) {
        tc->deterministic = bo.deterministic;
        if (!r->quiet) printf("note: ANVIL_DETERMINISTIC sets train.deterministic: %s (recorded in config.yaml)\n",
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
    /* masked-LM rows for an encoder with its head; an encoder never trains on next tokens */
    int mlm = !strcmp(tc->data_objective, "mlm");
    if (mlm && (!cfg->bidirectional || !cfg->mlm_head))
        return err_set("data.objective: mlm needs an encoder with an MLM head (model.family bert, a bert preset or "
                       "a *ForMaskedLM model.init); this model is %s", cfg->hf_arch);
    if (!mlm && cfg->bidirectional)
        return err_set("data.objective: %s, but %s is an encoder: set data.objective: mlm", tc->data_objective,
                       cfg->hf_arch);
    if (mlm && !r->tok)
        return err_set("data.objective: mlm needs the tokenizer (its [MASK] and [CLS]/[SEP]): set data.tokenizer");
    if (mlm && mlm_options_init(&r->mlm, r->tok, tc->data_mlm_prob, tc->data_mlm_whole_word)) return -1;
    /* each rank reads its own windows of every global batch; the validation set is read whole by
     * every rank (eval_loss shares out the batches) */
    int dp = dist_active(&r->dist);
    LoaderOptions lo = {.B = tc->batch_size, .T = tc->seq_len, .seed = tc->seed, .shuffle = 1,
                        .rank = dp ? r->dist.rank : 0, .world = dp ? r->dist.world : 1, .tokenizer = tok_spec,
                        .sft = sft ? &so : NULL, .mlm = mlm ? &r->mlm : NULL};
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
        lo.rank = 0;
        lo.world = 1;
        r->val = loader_open(tc->data_val, &lo);
        if (!r->val) return err_prefix("data.val");
    }
    if (loader_vocab_size(r->train) > cfg->vocab_size)
        return err_set("data.train: the data's vocabulary (%d ids) does not fit model.vocab_size %d",
                       loader_vocab_size(r->train), cfg->vocab_size);
    if (r->tok && tokenizer_vocab_size(r->tok) < cfg->vocab_size && !r->quiet)
        fprintf(stderr, "anvil: warning: the tokenizer knows %d ids, the model has %d rows: the other rows never "
                        "train (generation samples only the ids the tokenizer knows)\n",
                tokenizer_vocab_size(r->tok), cfg->vocab_size);
    if (r->val && tc->eval_steps > 0 && loader_windows_per_epoch(r->val) < (uint64_t)tc->eval_steps && !r->quiet)
        fprintf(stderr, "anvil: warning: data.val holds %llu batches of %d x %d tokens, fewer than eval.steps %d: "
                        "the validation loss repeats batches\n",
                (unsigned long long)loader_windows_per_epoch(r->val), tc->batch_size, tc->seq_len, tc->eval_steps);
    return 0;
}

/* How model.quant stores the base: a bitsandbytes 4-bit model.init is taken as it is (its own
 * quantization; model.quant must be none or agree), else model.quant's. */
static int quant_spec(const TrainConfig *tc, Q4Spec *q)
{
    *q = (Q4Spec){.type = -1, .blocksize = tc->quant_blocksize, .nested = tc->quant_double};
    if (strcmp(tc->quant, "none")) q->type = q4_type_parse(tc->quant);
    if (tc->model_init[0]) {
        Q4Spec pre;
        int k = bnb_model_quant(tc->model_init, &pre);
        if (k < 0) return err_prefix("model.init");
        if (k == 1) {
            if (q->type >= 0 && q->type != pre.type)
                return err_set("model.quant: %s, but model.init is a %s checkpoint", tc->quant, q4_type_name(pre.type));
            *q = pre;
        }
    }
    return 0;
}

/* train.optimizer: ternary: the trainable block linears (and with train.ternary.embeddings the token
 * embeddings and an untied head) become integer-ternary tensors; norms stay trainable floats. */
/* The adapters lora.* ask for: from lora.init's adapter_config.json when given (lora.r, when set,
 * must agree), else from the keys. */
/* Adapters on the routed experts (either layout) or the router train without dropout: PEFT defines
 * transformers 5's without it, and anvil's expert products run theirs without a dropout stream. */
static int moe_dropout_check(const LoraSpec *ls, const char *what)
{
    unsigned moe = 0;
    for (int s = 0; s < LORA_SITE_COUNT; s++)
        if (lora_site_is_expert((LoraSite)s) || s == LORA_ROUTER) moe |= 1u << s;
    if (ls->dropout > 0 && (ls->sites & moe))
        return err_set("%s: %g with adapters on the routed experts or the router, which anvil trains without "
                       "dropout (PEFT defines transformers 5's without it): %s",
                       what, (double)ls->dropout,
                       !strcmp(what, "lora.dropout") ? "set 0 or leave experts and gate out of lora.targets"
                                                     : "set lora_dropout to 0 in its adapter_config.json");
    return 0;
}

static int lora_spec(const TrainConfig *tc, const ModelConfig *cfg, LoraSpec *ls)
{
    if (tc->lora_init[0]) {
        if (peft_read_config(tc->lora_init, cfg, ls, NULL, 0)) return err_prefix("lora.init");
        if (lora_sites_moe(cfg, &ls->sites, 0)) return err_prefix("lora.init: target_modules");
        if (tc->lora_r && tc->lora_r != ls->r)
            return err_set("lora.r: %d differs from lora.init's r %d (%s)", tc->lora_r, ls->r, tc->lora_init);
        return moe_dropout_check(ls, "lora.init: lora_dropout");
    }
    const char *names[CFG_LIST_MAX];
    for (int i = 0; i < tc->lora_targets.n; i++) names[i] = tc->lora_targets.item[i];
    *ls = (LoraSpec){.r = tc->lora_r, .alpha = tc->lora_alpha, .rslora = tc->lora_rslora, .dropout = tc->lora_dropout};
    if (lora_sites_parse(names, tc->lora_targets.n, cfg->family, &ls->sites)) return err_prefix("lora.targets");
    int all = tc->lora_targets.n == 1 && !strcmp(names[0], "all-linear");
    if (lora_sites_moe(cfg, &ls->sites, all)) return err_prefix("lora.targets");
    return moe_dropout_check(ls, "lora.dropout");
}

/* Tensor parallel: this rank's group and slice of the config (local), the whole model's table and
 * every tp rank's (tensor kinds as kinds: model.freeze names the same tensors on every rank). */
/* A table of c (with the adapters of ls when not NULL: the base frozen, the adapters trainable, as
 * model_create_lora makes them; else the kinds given). */
static void tp_table(ParamTable *pt, const ModelConfig *c, const ParamKind *kinds, const LoraSpec *ls, int q4)
{
    if (!ls) {
        param_table_build(pt, c);
        param_table_set_kinds(pt, kinds);
        return;
    }
    param_table_build_lora(pt, c, ls);
    param_table_lora_kinds(pt, c, 1, q4); /* with a 4-bit base: its tensors' parts too */
}

static int tp_setup(Run *r, const ModelConfig *full, const ParamKind *kinds, const LoraSpec *ls, int q4,
                    ModelConfig *local)
{
    Dist *d = &r->dist;
    int P = d->tp;
    if (dist_tp_model(d, full, r->be->act_size, &r->tpm)) return -1;
    if (tp_config_local(full, P, d->tp_rank, local)) return -1;
    r->whole.cfg = *full;
    if (ls) r->whole.lora = *ls; /* names the adapters of the whole model's files (peft.h) */
    tp_table(&r->whole.pt, full, kinds, ls, q4);
    r->tp_pt = xcalloc((size_t)P, sizeof(ParamTable));
    for (int k = 0; k < P; k++) {
        ModelConfig lk;
        tp_config_local(full, P, k, &lk);
        tp_table(&r->tp_pt[k], &lk, kinds, ls, q4);
    }
    return 0;
}

/* Tensor parallel: the adapters from the whole model's values (whole: a host image of its table, or
 * NULL for PEFT's init from seed, drawn for the whole tensors as dist.tp 1 draws them), sliced. */
static void tp_set_adapters(Run *r, const float *whole, uint64_t seed)
{
    for (int i = 0; i < r->m->pt.n; i++) {
        const Param *pw = &r->whole.pt.p[i], *pl = &r->m->pt.p[i];
        if (pl->site < 0) continue;
        float *w = xcalloc(pw->numel, sizeof(float)), *l = xcalloc(pl->numel, sizeof(float));
        if (whole) memcpy(w, whole + pw->offset, pw->numel * sizeof(float));
        else lora_init_tensor(pw, i, seed, w);
        tp_slice_tensor(&r->tpm.full, r->dist.tp, r->dist.tp_rank, pw, pl, w, l, 1);
        params_upload(&r->m->ps, i, l);
        free(w), free(l);
    }
}

/* Tensor parallel: rank r's part of a 4-bit tensor i from the whole tensor's part (tp_q4_slice). */
static int tp_upload_q4(Run *r, int i, int part, const Q4State *whole)
{
    Q4Quant q;
    if (tp_q4_slice(&r->tpm.full, r->dist.tp, r->dist.tp_rank, &r->whole.pt.p[i], &r->m->pt.p[i], part, whole, &q))
        return -1;
    params_upload_q4(&r->m->ps, i, part, &q.s);
    q4_quant_free(&q);
    return 0;
}

/* Tensor parallel: this rank's slice of whole base tensor i (its values at w) into the model; a 4-bit
 * tensor is quantized whole, as dist.tp 1 quantizes it, and then sliced (or, with q4src, a host store of
 * the whole model, its 4-bit states are). */
static int tp_set_tensor(Run *r, int i, const float *w, const ParamStore *q4src)
{
    const Param *pl = &r->m->pt.p[i], *pw = &r->whole.pt.p[i];
    if (pl->kind == PARAM_FROZEN && pl->ternarize) { /* a frozen BitLinear: ternarized whole, then sliced */
        float *q = xmalloc(pw->numel * sizeof(float)), *local = xmalloc(pl->numel * sizeof(float));
        size_t row0 = 0, cols = (size_t)pw->shape[1];
        for (int k = 0; k < pw->nparts; row0 += (size_t)pw->part_rows[k], k++)
            tern_wquant(q + row0 * cols, w + row0 * cols, (size_t)pw->part_rows[k] * cols);
        tp_slice_tensor(&r->tpm.full, r->dist.tp, r->dist.tp_rank, pw, pl, q, local, 1);
        params_upload_ternarized(&r->m->ps, i, local);
        free(q), free(local);
        return 0;
    }
    if (pl->kind != PARAM_NF4) {
        float *local = xmalloc(pl->numel * sizeof(float));
        tp_slice_tensor(&r->tpm.full, r->dist.tp, r->dist.tp_rank, pw, pl, (float *)w, local, 1);
        params_upload(&r->m->ps, i, local);
        free(local);
        return 0;
    }
    int rc = 0;
    for (int part = 0; !rc && part < pl->nparts; part++) {
        if (q4src) {
            rc = tp_upload_q4(r, i, part, &q4src->q4[i][part].s);
            continue;
        }
        Q4Quant q;
        params_q4_quantize(&r->m->ps, pw, part, w, &q);
        rc = tp_upload_q4(r, i, part, &q.s);
        q4_quant_free(&q);
    }
    return rc;
}

/* Tensor parallel: this rank's slices of a whole host image (the whole model's table) into the model's
 * base (tp_set_tensor). */
static int tp_set_whole(Run *r, const float *whole, const ParamStore *q4src)
{
    int rc = 0;
    for (int i = 0; !rc && i < r->m->pt.n; i++)
        if (r->m->pt.p[i].site < 0) rc = tp_set_tensor(r, i, whole + r->whole.pt.p[i].offset, q4src);
    return rc;
}

/* hf_read_weights_each's callback under tensor parallel: whole base tensor i of the host image is
 * complete: this rank's slice uploaded, then the tensor's host pages given back, so that a rank holds
 * one whole tensor at a time, not the whole model. */
typedef struct {
    Run *r;
    float *host;
    int rc;
} TpStream;

static void tp_upload_base_tensor(void *ctx, int i)
{
    TpStream *s = ctx;
    const Param *pw = &s->r->whole.pt.p[i];
    if (pw->site >= 0) return; /* adapters come from lora.init or PEFT's init */
    if (!s->rc) s->rc = tp_set_tensor(s->r, i, s->host + pw->offset, NULL);
    host_release(s->host, pw->offset * sizeof(float), pw->numel * sizeof(float));
}

/* bnb_model_read's sink under tensor parallel: a pre-quantized directory's whole tensors, sliced. */
static int tp_bnb_q4(void *ctx, int i, int part, const Q4State *s) { return tp_upload_q4(ctx, i, part, s); }

static int tp_bnb_dense(void *ctx, int i, const float *values) { return tp_set_tensor(ctx, i, values, NULL); }

/* Tensor parallel: GPT-2's init of the whole model (a host copy, on the CPU backend), sliced, so that
 * the run starts where dist.tp 1 starts. */
static int tp_init_gpt2(Run *r, uint64_t seed)
{
    /* with adapters, the whole model's table has them (GPT-2's init draws each tensor by its index); a
     * 4-bit base as dist.tp 1 draws it (model_init_gpt2's synthetic 4-bit states), whose states are sliced */
    const ParamStore *ps = &r->m->ps;
    Q4Spec q4 = {.type = ps->q4 ? ps->q4_type : -1, .blocksize = ps->q4_blocksize, .nested = ps->q4_double};
    /* BitNet: the latent weights as drawn (the frozen shell would hold them ternarized: params_upload) */
    ModelConfig wc = r->whole.cfg;
    wc.ternary = TERNARY_NONE;
    Model *w = r->m->adapters ? model_create_lora(&wc, backend_cpu(), &r->whole.lora, 0, seed, &q4)
                              : model_create_frozen(&wc, backend_cpu());
    float *host = xmalloc(w->pt.total * sizeof(float));
    model_init_gpt2(w, seed);
    model_get_params(w, host);
    int rc = tp_set_whole(r, host, ps->q4 ? &w->ps : NULL);
    model_free(w);
    free(host);
    return rc;
}

/* hf_read_weights_each's callback: base tensor i of the host image is complete: uploaded (into the
 * parts the store holds), then its host pages given back (core/hostmem.h). */
typedef struct {
    Model *m;
    float *host;
} StreamLoad;

static void upload_base_tensor(void *ctx, int i)
{
    StreamLoad *s = ctx;
    const Param *p = &s->m->pt.p[i];
    if (p->site >= 0) return; /* adapters come from lora.init or PEFT's init */
    params_upload(&s->m->ps, i, s->host + p->offset);
    host_release(s->host, p->offset * sizeof(float), p->numel * sizeof(float));
}

/* A ZeRO rank's store holds only its parts from the start (ModelAlloc): the shards of the model's table. */
static void store_plan(void *ctx, const ParamTable *pt, ParamAllocPlan *plan)
{
    Run *r = ctx;
    Dist *d = &r->dist;
    dist_setup_params(d, pt);
    dist_alloc_plan(d, pt, plan);
    plan->emb_host = 0;
    if (!r->tc->offload_embeddings) return;
    if (params_emb_host_ok(pt) && !plan->frozen_part) plan->emb_host = 1;
    else r->emb_host_bad = 1; /* setup_model reports it (err_set's message) */
}

/* The model with its tensor kinds (model.freeze, or the adapters of lora.* over a frozen base), its
 * weights (model.init or GPT-2 init; lora.init or PEFT's init for adapters), its activations and the
 * optimizer's state. */
static int setup_model(Run *r, const ModelConfig *cfg)
{
    const TrainConfig *tc = r->tc;
    Q4Spec q4;
    if (quant_spec(tc, &q4)) return -1;
    if (q4.type >= 0 && !tc->lora_r && !tc->lora_init[0])
        return err_set("model.quant: a 4-bit base trains through adapters only: set lora.r (QLoRA)");
    if (tc->offload_embeddings && (tc->dist_zero >= 3 || tc->dist_tp > 1))
        return err_set("train.offload_embeddings: not with %s (it shards the frozen weights)",
                       tc->dist_tp > 1 ? "dist.tp" : "dist.zero 3");
    ModelAlloc alloc = {.plan = store_plan, .ctx = r};
    if (tc->lora_r > 0 || tc->lora_init[0]) {
        LoraSpec ls;
        if (lora_spec(tc, cfg, &ls)) return -1;
        ModelConfig local; /* tensor parallel: this rank's slice, its adapters split with their products */
        if (run_tp(r) && tp_setup(r, cfg, NULL, &ls, q4.type >= 0, &local)) return -1;
        r->m = model_create_lora_alloc(run_tp(r) ? &local : cfg, r->be, &ls, 1, tc->seed, &q4, &alloc);
    } else {
        int bad;
        ParamKind *kinds = freeze_kinds(&tc->freeze, cfg, &bad);
        if (bad) return -1;
        if (!strcmp(tc->optimizer, "ternary")) {
            if (cfg->moe_experts)
                return err_set("train.optimizer: ternary with model.moe.experts %d is not supported yet (the experts "
                               "would stay fp32)", cfg->moe_experts);
            /* data parallel (and ZeRO, which shards the float tensors only): the integer state is replicated,
             * each tensor's gradient summed over the ranks before its update (dist.c) */
            kinds = ternary_kinds(cfg, kinds, tc->tern_embeddings);
        }
        ModelConfig local; /* tensor parallel: this rank's slice */
        if (run_tp(r) && tp_setup(r, cfg, kinds, NULL, 0, &local)) {
            free(kinds);
            return -1;
        }
        r->m = model_create_kinds_alloc(run_tp(r) ? &local : cfg, r->be, kinds, &alloc);
        free(kinds);
        if (!param_count(&r->m->pt)) return err_set("model.freeze: every tensor is frozen; nothing would train");
    }
    if (r->emb_host_bad) return err_prefix("train.offload_embeddings");
    Q4Spec pre;
    if (tc->model_init[0] && bnb_model_quant(tc->model_init, &pre) == 1) { /* 4-bit as stored */
        BnbSink sink = {tp_bnb_q4, tp_bnb_dense, r}; /* tensor parallel: each whole tensor, sliced */
        if (run_tp(r) ? bnb_model_read(tc->model_init, cfg, &r->whole.pt, &sink) : bnb_model_load(r->m, tc->model_init))
            return err_prefix("model.init");
    } else if (tc->model_init[0] && run_tp(r)) { /* tensor parallel: each whole tensor streamed, then sliced */
        size_t bytes = r->whole.pt.total * sizeof(float);
        float *host = host_reserve(bytes);
        TpStream ts = {r, host, 0};
        int e = hf_read_weights_each(tc->model_init, cfg, &r->whole.pt, host, tp_upload_base_tensor, &ts);
        host_unreserve(host, bytes);
        if (e || ts.rc) return err_prefix("model.init");
    } else if (tc->model_init[0]) { /* streamed: each tensor uploaded and its host pages given back */
        size_t bytes = r->m->pt.total * sizeof(float);
        float *host = host_reserve(bytes);
        StreamLoad sl = {r->m, host};
        int e = hf_read_weights_each(tc->model_init, cfg, &r->m->pt, host, upload_base_tensor, &sl);
        host_unreserve(host, bytes);
        if (e) return err_prefix("model.init");
        if (r->m->ps.tern && ckpt_has_ternary(tc->model_init) && ckpt_init_ternary(tc->model_init, r->m))
            return err_prefix("model.init"); /* an integer-ternary checkpoint's own state, not re-derived */
    } else if (run_tp(r)) {
        if (tp_init_gpt2(r, tc->seed)) return -1;
    } else {
        model_init_gpt2(r->m, tc->seed);
        if (r->m->adapters) model_init_lora(r->m, tc->seed); /* GPT-2's init drew the adapters too */
    }
    if (run_tp(r) && r->m->adapters) { /* the whole adapters (lora.init's, or PEFT's init), sliced */
        float *whole = tc->lora_init[0] ? xcalloc(r->whole.pt.total, sizeof(float)) : NULL;
        int e = whole && peft_read_weights_host(tc->lora_init, &r->whole, whole);
        if (!e) tp_set_adapters(r, whole, tc->seed);
        free(whole);
        if (e) return err_prefix("lora.init");
    } else if (tc->lora_init[0] && peft_read_weights(tc->lora_init, r->m)) {
        return err_prefix("lora.init");
    }
    model_set_recompute_layers(r->m, tc->recompute_layers);
    if (model_reserve(r->m, tc->batch_size, tc->seq_len, tc->recompute)) return -1;
    if (run_tp(r)) tp_attach(r->m, &r->tpm); /* the products split, the collectives of the tp group */
    Dist *d = &r->dist;
    dist_setup_params(d, &r->m->pt);
    if (dist_active(d) && d->opt.zero) /* ZeRO: moments for this rank's shard only */
        optim_init_host(&r->opt, r->m, tc->weight_decay, d->my_lo, d->my_hi, tc->offload_optimizer);
    else
        optim_init_host(&r->opt, r->m, tc->weight_decay, 0, r->m->pt.n_train, tc->offload_optimizer);
    /* the store as the stage keeps it, and the hooks that reduce (and gather) layer by layer */
    if (dist_active(d)) r->m->hooks = dist_attach(d, &r->m->ps);
    TernaryHyper th = {.threshold = tc->tern_threshold, .scale_every = tc->tern_scale_every,
                       .deadzone = tc->tern_deadzone, .exp_min = TERN_EXP_MIN, .exp_max = TERN_EXP_MAX};
    optim_set_ternary(&r->opt, r->m, &th);
    return 0;
}

/* ---- train.batch_size: auto ---- */

#define GIB_D (1024.0 * 1024.0 * 1024.0)

/* The memory a run may plan for: on a GPU what is free now less a margin (5% of the device, at
 * least 1 GiB: the plan is within 5% of measured peaks, docs/reporting.md); on the CPU half of the
 * memory available now. */
static size_t auto_budget(const Run *r, double *total_gib)
{
#ifdef ANVIL_CUDA
    if (!strncmp(r->be->name, "cuda", 4)) {
        size_t fr, tot;
        cuda_mem_stats(NULL, NULL, &fr, &tot);
        double margin = fmax(0.05 * (double)tot, GIB_D);
        *total_gib = (double)tot / GIB_D;
        return (double)fr > margin ? (size_t)((double)fr - margin) : 0;
    }
#endif
    double avail = (double)sysconf(_SC_AVPHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    *total_gib = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE) / GIB_D;
    return (size_t)(0.5 * avail);
}

/* Choose train.batch_size when it is auto: the largest micro-batch whose plan fits the budget,
 * among those that divide tokens_per_step / (seq_len * ranks) when tokens_per_step is set. */
static int resolve_auto_batch(Run *r, const ModelConfig *cfg)
{
    TrainConfig *tc = r->tc;
    if (tc->batch_size) return 0;
    int world = r->dist.world > 0 ? r->dist.world : 1, per_rank = 0;
    if (tc->tokens_per_step) {
        long unit = (long)tc->seq_len * world;
        if (tc->tokens_per_step % unit)
            return err_set("train.tokens_per_step: %ld is not a multiple of seq_len*ranks = %d*%d, which "
                           "train.batch_size auto needs",
                           tc->tokens_per_step, tc->seq_len, world);
        per_rank = (int)(tc->tokens_per_step / unit);
    }
    int on_gpu = !strncmp(r->be->name, "cuda", 4);
    PlanSpec ps = {.method = PLAN_FULL, .T = tc->seq_len, .recompute = tc->recompute, .act_size = (int)r->be->act_size,
                   .gpu = on_gpu, .world = world, .zero = tc->dist_zero,
                   .keep_layers = tc->recompute_layers >= 0 ? MAX(0, cfg->n_layer - tc->recompute_layers) : 0,
                   .offload_opt = tc->offload_optimizer, .offload_emb = tc->offload_embeddings};
    if (tc->lora_r > 0 || tc->lora_init[0]) {
        Q4Spec q4;
        if (quant_spec(tc, &q4)) return -1;
        ps.method = q4.type >= 0 ? PLAN_QLORA : PLAN_LORA;
        ps.lora_r = tc->lora_r > 0 ? tc->lora_r : 16;
    }
    double total_gib;
    size_t budget = auto_budget(r, &total_gib);
    int b_max = per_rank ? per_rank : on_gpu ? 4096 : 256;
    int B = plan_max_batch(cfg, &ps, budget, b_max, per_rank);
    if (B <= 0) {
        PlanResult one;
        ps.B = 1;
        double need = plan_memory(cfg, &ps, &one) ? 0 : (double)one.mem.peak / GIB_D;
        return err_set("train.batch_size: auto: one sequence of %d tokens needs %.2f GiB, more than the %.2f GiB "
                       "this %s can give (lower train.seq_len, raise train.recompute, or train adapters)",
                       tc->seq_len, need, (double)budget / GIB_D, on_gpu ? "GPU" : "machine");
    }
    ps.B = B;
    PlanResult pr;
    if (plan_memory(cfg, &ps, &pr)) return -1;
    tc->batch_size = B;
    r->auto_plan_gib = (double)pr.mem.peak / GIB_D;
    if (!r->quiet) {
        printf("train.batch_size auto: %d (plan %.2f GiB per %s of %.2f GiB budget, %.1f GiB total", B,
               r->auto_plan_gib, on_gpu ? "GPU" : "process", (double)budget / GIB_D, total_gib);
        if (per_rank) printf("; accumulation %d reaches train.tokens_per_step %ld", per_rank / B, tc->tokens_per_step);
        else printf("; train.tokens_per_step 0: one micro-batch per step, so the step size follows the memory");
        printf(")\n");
    }
    return 0;
}

/* After an auto batch: one trial step at learning rate 0 on token 0 (the weights do not move; the
 * moments it touched are zeroed), so that the peak is measured before the run is committed to. */
static int trial_step(Run *r)
{
    const TrainConfig *tc = r->tc;
    Dist *d = &r->dist;
    size_t n = (size_t)tc->batch_size * tc->seq_len;
    int32_t *tok = xcalloc(n, sizeof(int32_t));
    int32_t *ins[1] = {tok};
    StepBatch b = {.B = tc->batch_size, .T = tc->seq_len, .accum = 1, .in = ins, .tg = ins};
    StepHyper h = {.lr = 0, .beta1 = tc->beta1, .beta2 = tc->beta2, .eps = tc->eps, .step = 1, .grad_clip = 0};
    StepResult res;
    r->be->mem_reset_peak();
    int rc = train_step_dist(r->m, &r->opt, dist_active(d) ? d : NULL, &b, &h, &res);
    free(tok);
    if (rc) return err_prefix("train.batch_size auto: the trial step");
    optim_zero(&r->opt);
    size_t peak;
    r->be->mem_stats(NULL, &peak);
    if (!r->quiet)
        printf("train.batch_size auto: trial step peak %.2f GiB (planned %.2f GiB)\n", (double)peak / GIB_D,
               r->auto_plan_gib);
    return 0;
}

/* Open metrics.jsonl (and write config.yaml, or resume). */
static int setup_run_dir(Run *r, const char *resume_dir)
{
    const TrainConfig *tc = r->tc;
    if (r->quiet) /* only rank 0 writes the run directory; the others read the checkpoint */
        return resume_dir ? resume_from(r, resume_dir) : 0;
    /* --overwrite: the old run goes only now, when everything else has been checked */
    if (!resume_dir && r->overwrite && fs_is_dir(tc->out_dir) && fs_rm_rf(tc->out_dir)) return -1;
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

/* The run's dropout (model.dropout, model.attn_dropout; docs/encoders.md), and a note when model.init's
 * config.json asks for dropout that the keys leave off. */
static void print_dropout(const Run *r)
{
    const ModelConfig *c = &r->m->cfg;
    if (c->dropout > 0 || c->attn_dropout > 0)
        printf("dropout (training only): model.dropout %g, model.attn_dropout %g%s\n", c->dropout, c->attn_dropout,
               c->attn_dropout > 0 && strcmp(r->be->name, "cpu")
                   ? " | attention: anvil's kernels while training (model.attn_dropout > 0: not cuDNN, whose dropout "
                     "masks differ)"
                   : "");
    float hidden, attn;
    if (!r->tc->model_init[0] || hf_config_dropout(r->tc->model_init, &hidden, &attn)) {
        err_clear();
        return;
    }
    if ((hidden > 0 && c->dropout == 0) || (attn > 0 && c->attn_dropout == 0))
        printf("note: model.init's config.json asks for dropout (hidden %g, attention %g), which transformers applies "
               "in train mode; anvil applies only model.dropout (%g) and model.attn_dropout (%g)\n",
               hidden, attn, c->dropout, c->attn_dropout);
}

static void print_header(const Run *r)
{
    int tp = run_tp(r); /* the whole model, and what each tp rank holds of it */
    const ModelConfig *c = tp ? &r->whole.cfg : &r->m->cfg;
    const ParamTable *pt = tp ? &r->whole.pt : &r->m->pt;
    char tpbuf[128] = "";
    if (tp)
        snprintf(tpbuf, sizeof(tpbuf), "; each tp rank %d heads (%d kv), %.2fM parameters", r->m->cfg.n_head,
                 r->m->cfg.n_kv_head, param_count_all(&r->m->pt) / 1e6);
    const Dist *d = &r->dist;
    long step_tokens = (long)r->tc->batch_size * r->tc->seq_len * r->accum * (dist_active(d) ? d->world : 1);
    if (r->quiet) return;
    if (dist_active(d) && d->tp > 1)
        printf("dist: %d rank(s) (%s, comm %s), dist.tp %d x %d data-parallel, dist.zero %d | each replica %d x %d "
               "tokens x %d micro-steps\n",
               d->gworld, dist_launcher_name(d->env.launcher), d->comm->name, d->tp, d->world, d->opt.zero,
               r->tc->batch_size, r->tc->seq_len, r->accum);
    else if (dist_active(d))
        printf("dist: %d rank(s) (%s, comm %s), dist.zero %d | each rank %d x %d tokens x %d micro-steps\n", d->world,
               dist_launcher_name(d->env.launcher), d->comm->name, d->opt.zero, r->tc->batch_size, r->tc->seq_len,
               r->accum);
    size_t tern = param_count_kind(pt, PARAM_TERNARY);
    char tbuf[64] = "";
    if (tern) snprintf(tbuf, sizeof(tbuf), "%.2fM integer-ternary, ", tern / 1e6);
    printf("model: %s, %d layers, d_model %d, %d heads (%d kv)%s | parameters: %.2fM trainable, %s%.2fM frozen, "
           "%.2fM total | device %s | %d x %d tokens x %d micro-steps = %ld tokens/step\n",
           model_family_name(c->family), c->n_layer, c->d_model, c->n_head, c->n_kv_head, tpbuf, param_count(pt) / 1e6, tbuf,
           (param_count_all(pt) - param_count(pt) - tern) / 1e6, param_count_all(pt) / 1e6, r->be->name,
           r->tc->batch_size, r->tc->seq_len, r->accum * (dist_active(d) ? d->world : 1), step_tokens);
    if (c->moe_experts > 0) {
        char jit[48] = "";
        if (c->moe_jitter > 0) snprintf(jit, sizeof(jit), ", router_jitter %g", (double)c->moe_jitter);
        printf("experts: %d top-%d of width %d on %d of %d layers%s | %.2fM parameters active per token | aux_loss_coef "
               "%g, z_loss_coef %g%s\n",
               c->moe_experts, c->moe_top_k, c->moe_d_ff, cfg_moe_layers(c), c->n_layer,
               c->moe_shared_d_ff ? ", a shared expert" : "", param_count_active(pt, c) / 1e6, c->moe_aux_coef,
               c->moe_z_coef, jit);
    }
    print_dropout(r);
    fflush(stdout);
}

static void print_memory(const Run *r)
{
    MemReport mr;
    char line[512];
    model_mem_report(r->m, optim_bytes(&r->opt), &mr);
    mr.host += optim_host_bytes(&r->opt);
    mem_report_format(&mr, line, sizeof(line));
    if (r->quiet) return;
    printf("memory after step 1: %s\n", line);
    /* the same in bytes, for scripts (tools/ternary_compare.sh) */
    printf("memory bytes: weights %zu master %zu gradients %zu optimizer %zu activations %zu workspace %zu peak %zu "
           "| float trainable %zu integer-ternary %zu\n",
           mr.weights, mr.master, mr.grads, mr.optim, mr.acts, mr.workspace, mr.peak, param_count(&r->m->pt),
           param_count_kind(&r->m->pt, PARAM_TERNARY));
    const Dist *d = &r->dist;
    if (run_tp(r)) { /* what this rank holds of the whole model (docs/distributed.md "Tensor parallel") */
        double P = (double)param_count(&r->whole.pt);
        printf("memory per rank (rank 0, dist.tp %d, dist.zero %d over %d replicas): %.2f bytes per trainable "
               "parameter of the whole model (weights %.2f, master %.2f, gradients %.2f, optimizer %.2f) + staging "
               "%.2f (layer buffers)\n",
               d->tp, d->opt.zero, d->world, (mr.weights + mr.master + mr.grads + mr.optim) / P, mr.weights / P,
               mr.master / P, mr.grads / P, mr.optim / P, (double)dist_slot_bytes(d) / P);
    } else if (dist_active(d)) { /* what this rank holds per trainable parameter (docs/distributed.md) */
        double P = (double)param_count(&r->m->pt);
        printf("memory per rank (rank 0, dist.zero %d over %d ranks): %.2f bytes per trainable parameter "
               "(weights %.2f, master %.2f, gradients %.2f, optimizer %.2f) + staging %.2f (layer buffers)\n",
               d->opt.zero, d->world, (mr.weights + mr.master + mr.grads + mr.optim) / P, mr.weights / P,
               mr.master / P, mr.grads / P, mr.optim / P, (double)dist_slot_bytes(d) / P);
    }
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
        s->val_loss = eval_loss(r->m, &r->dist, r->val, tc->eval_steps, tc->batch_size, tc->seq_len, r->in[0], r->tg[0]);
        if (isnan(s->val_loss)) return -1;
    }
    McqResult mcq = {0};
    int with_mcq = r->mcq.n && (last || (tc->eval_mcq_every && step % tc->eval_mcq_every == 0));
    if (with_mcq && mcq_eval(r, &mcq)) return -1;
    s->mcq = with_mcq ? &mcq : NULL;
    if (!r->quiet && log_metrics(r, s)) return -1;
    if (!r->quiet && (step % tc->log_every == 0 || last || !isnan(s->val_loss) || with_mcq)) print_progress(r, s);
    if (!r->printed_mem) { /* after the first step of this process: workspaces and the peak exist now */
        print_memory(r);
        r->printed_mem = 1;
    }
    mcq_result_free(&mcq);
    s->mcq = NULL;
    if (last || (tc->ckpt_every && step % tc->ckpt_every == 0) || r->stop)
        if (save_checkpoint(r)) return -1;
    return 0;
}

/* What every rank measured after a step, gathered on every rank: whether it was interrupted (then
 * all stop after this step, so that they stay in step), its exposed communication time and its
 * peak memory. */
static int gather_rank_stats(Run *r, StepLog *s, double comm_s, double peak_bytes)
{
    Dist *d = &r->dist;
    r->stop = stop_requested;
    s->comm_s = comm_s;
    if (!dist_active(d)) return 0;
    int w = d->gworld; /* every rank of every replica (tensor parallel: every GPU) */
    double mine[3] = {stop_requested ? 1 : 0, comm_s, peak_bytes}, *all = xmalloc(sizeof(double) * 3 * (size_t)w);
    if (dist_world_gather_f64(d, mine, all, 3)) {
        free(all);
        return -1;
    }
    s->world = w;
    s->comm_s = 0;
    s->peak_gib = 0;
    for (int k = 0; k < w; k++) {
        r->stop |= all[3 * k] != 0;
        s->comm_s += all[3 * k + 1] / w;
        s->peak_gib_ranks[k] = all[3 * k + 2] / (1024.0 * 1024.0 * 1024.0);
        s->peak_gib = MAX(s->peak_gib, s->peak_gib_ranks[k]);
    }
    free(all);
    return 0;
}

/* The training loop from the step after r->st.step to tc->steps (or an interrupt). */
static int train_loop(Run *r)
{
    const TrainConfig *tc = r->tc;
    Dist *d = &r->dist;
    int B = tc->batch_size, T = tc->seq_len, dp = dist_active(d);
    long step_tokens = (long)B * T * r->accum * (dp ? d->world : 1); /* global */
    SchedKind sk;
    schedule_parse(tc->schedule, &sk);
    Schedule sched = {sk, tc->lr, tc->min_lr, tc->warmup_steps, tc->steps};
    double flops_token = model_flops_per_token(r->m, T);
    int on_gpu = strncmp(r->be->name, "cuda", 4) == 0;
    double t_run0 = now_s(), elapsed0 = r->st.elapsed_s;
    double *peak_ranks = dp ? xcalloc((size_t)d->gworld, sizeof(double)) : NULL;
    if (r->st.step >= tc->steps && !r->quiet)
        printf("the run is finished (step %d of train.steps %d): nothing to train; raise train.steps to continue "
               "it (--set train.steps=N)\n",
               r->st.step, tc->steps);
    int rc = -1;
    for (int step = r->st.step + 1; step <= tc->steps; step++) {
        double t0 = now_s();
        StepLog s = {.step = step, .lr = schedule_lr(&sched, step), .peak_gib_ranks = peak_ranks};
        for (int k = 0; k < r->accum; k++)
            if (loader_next(r->train, r->in[k], r->tg[k])) goto out;
        StepBatch b = {.B = B, .T = T, .accum = r->accum, .in = r->in, .tg = r->tg};
        moe_stats_reset(r->m); /* routing statistics of this step's micro-batches */
        StepHyper h = {.lr = s.lr, .beta1 = tc->beta1, .beta2 = tc->beta2, .eps = tc->eps, .step = step,
                       .grad_clip = tc->grad_clip, .seed = (uint64_t)tc->seed};
        if (train_step_dist(r->m, &r->opt, dp ? d : NULL, &b, &h, &s.res)) {
            err_prefix("step %d", step);
            goto out;
        }
        double dt = now_s() - t0;
        r->st.step = step;
        r->st.tokens_seen += (uint64_t)step_tokens;
        r->st.loader = loader_state(r->train);
        r->st.elapsed_s = elapsed0 + (now_s() - t_run0);
        if (!isfinite(s.res.loss)) {
            err_set("step %d: the loss is %g; lower train.lr or check the data", step, s.res.loss);
            goto out;
        }
        s.tps = step_tokens / dt;
        s.ms = dt * 1e3;
        if (r->m->moe) {
            size_t nl = (size_t)r->m->moe->n_moe * r->m->cfg.moe_experts;
            if (!r->moe_load) r->moe_load = xcalloc(nl, sizeof(double)), r->moe_step0 = step;
            for (size_t k = 0; k < nl; k++) r->moe_load[k] += r->m->moe->load[k];
        }
        s.mfu = on_gpu ? flops_token * s.tps / (dp ? d->world : 1) / GPU_BF16_PEAK : 0;
        size_t peak;
        r->be->mem_stats(NULL, &peak);
        s.peak_gib = peak / (1024.0 * 1024.0 * 1024.0);
        if (gather_rank_stats(r, &s, dist_take_exposed(d), (double)peak)) goto out;
        if (after_step(r, &s)) goto out;
        if (r->stop) {
            if (!r->quiet)
                printf("interrupted (%s): saved a checkpoint at step %d (%s/step-%07d; 'final' is kept for a finished "
                       "run); continue with --resume %s\n",
                       stop_requested == SIGTERM ? "SIGTERM" : "SIGINT", step, tc->out_dir, step, tc->out_dir);
            rc = 128 + (stop_requested ? (int)stop_requested : SIGINT);
            goto out;
        }
    }
    rc = 0;
    if (r->moe_load && !r->quiet) {
        char what[64];
        snprintf(what, sizeof(what), "over steps %d-%d", r->moe_step0, r->st.step);
        moe_print_load_table(r->m, r->moe_load, what, stdout);
    }
out:
    free(peak_ranks);
    free(r->moe_load);
    r->moe_load = NULL;
    return rc;
}

static int run_free(Run *r, int failed)
{
    int rc = failed;
    if (r->tb && tb_close(r->tb)) rc = err_prefix("log.tensorboard");
    if (r->metrics) fclose(r->metrics);
    if (r->m) {
        optim_free(&r->opt);
        dist_detach(&r->dist);
        model_free(r->m);
    }
    if (r->tp_pt) { /* tensor parallel's tables */
        for (int k = 0; k < r->dist.tp; k++) param_table_free(&r->tp_pt[k]);
        free(r->tp_pt);
        param_table_free(&r->whole.pt);
    }
    /* after a failure a peer may still be inside a collective: MPI_Finalize / ncclCommDestroy would
     * wait for it, so those comms are left to the process's exit */
    if (!rc || !r->dist.comm || !strcmp(r->dist.comm->name, "tcp") || !strcmp(r->dist.comm->name, "none"))
        dist_free(&r->dist);
    free(r->config_yaml);
    if (r->train) loader_close(r->train);
    if (r->val) loader_close(r->val);
    if (r->tok) tokenizer_free(r->tok);
    mlm_options_free(&r->mlm);
    mcq_set_free(&r->mcq);
    for (int k = 0; r->in && k < r->accum; k++) {
        free(r->in[k]);
        free(r->tg[k]);
    }
    free(r->in);
    free(r->tg);
    return rc;
}

static const char *rank_getenv(const char *name) { return getenv(name); }

/* The run directory a new run may use: absent or empty, or (overwrite) an old run that
 * setup_run_dir removes once the rest of the run has been checked; otherwise one line saying how to
 * continue or replace it. Nothing is created or removed here. */
static int check_out_dir(const char *dir, int overwrite)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    if (!n) return 0;
    if (!overwrite)
        return err_set("out_dir: %s already holds a run: --resume %s continues it, --overwrite replaces it", dir, dir);
    return 0;
}

int trainer_run(const TrainConfig *tc_in, const char *resume_dir, int overwrite)
{
    TrainConfig tcv = *tc_in;
    if (resume_dir) snprintf(tcv.out_dir, sizeof(tcv.out_dir), "%s", resume_dir);
    if (train_config_validate(&tcv)) return -1;
    if (resume_dir && !fs_is_dir(resume_dir)) return err_set("--resume %s: no such run directory", resume_dir);
    DistEnv env;
    if (!resume_dir && dist_env_parse(&env, rank_getenv) == 0 && env.rank == 0 && check_out_dir(tcv.out_dir, overwrite))
        return -1; /* rank 0 decides for every rank */
    train_config_warn(&tcv, stderr);
    Run run = {.tc = &tcv, .overwrite = overwrite};
    Run *r = &run;
    const TrainConfig *tc = &tcv;
    int rc = -1;
    ModelConfig cfg;
    DistOptions dopt = {.zero = tc->dist_zero, .tp = tc->dist_tp, .timeout_s = tc->dist_timeout_s, .bucket_mb = tc->dist_bucket_mb,
                        .comm = tc->dist_comm, .device = tc->device};
    if (dist_init_env(&r->dist, &dopt)) goto out; /* before the backend: it picks this rank's GPU */
    r->quiet = !dist_main(&r->dist);
    if (trainer_model_config(tc, &cfg)) goto out;
    if (tc->seq_len > cfg.max_seq_len) {
        err_set("train.seq_len: %d exceeds the model's max_seq_len %d", tc->seq_len, cfg.max_seq_len);
        goto out;
    }
    if (setup_backend(r) || resolve_auto_batch(r, &cfg)) goto out;
    long micro = (long)tc->batch_size * tc->seq_len * r->dist.world;
    if (tc->tokens_per_step % micro) {
        err_set("train.tokens_per_step: %ld is not a multiple of batch_size*seq_len*ranks = %d*%d*%d = %ld",
                tc->tokens_per_step, tc->batch_size, tc->seq_len, r->dist.world, micro);
        goto out;
    }
    if (tc->model_init[0] && !realpath(tc->model_init, r->base_path))
        snprintf(r->base_path, sizeof(r->base_path), "%.*s", (int)strnlen(tc->model_init, CFG_PATH_MAX), tc->model_init);
    if (dist_connect(&r->dist) || setup_data(r, &cfg) || setup_model(r, &cfg)) goto out;
    if (r->auto_plan_gib > 0 && trial_step(r)) goto out;
    if (tc->eval_mcq_task[0] && mcq_setup(r)) goto out;
    r->config_yaml = train_config_to_yaml(tc);
    /* tokens_per_step is global: each rank runs its share of the accumulation */
    r->accum = tc->tokens_per_step ? (int)(tc->tokens_per_step / micro) : 1;
    r->in = xcalloc((size_t)r->accum, sizeof(int32_t *));
    r->tg = xcalloc((size_t)r->accum, sizeof(int32_t *));
    for (int k = 0; k < r->accum; k++) {
        r->in[k] = xmalloc((size_t)tc->batch_size * tc->seq_len * sizeof(int32_t));
        r->tg[k] = xmalloc((size_t)tc->batch_size * tc->seq_len * sizeof(int32_t));
    }
    if (setup_run_dir(r, resume_dir)) goto out;
    print_header(r);
    signal(SIGINT, on_stop_signal);
    signal(SIGTERM, on_stop_signal);
    rc = train_loop(r);
out:
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    int rank = r->dist.grank, world = r->dist.gworld;
    if (run_free(r, rc < 0)) rc = -1; /* rc > 0: interrupted after a checkpoint, not a failure */
    if (rc && world > 1) err_prefix("rank %d", rank);
    return rc;
}
