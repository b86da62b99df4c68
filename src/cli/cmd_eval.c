/* cmd_eval.c - `anvil eval ppl` (sliding-window perplexity) and `anvil eval mcq`
 * (zero-shot multiple choice, lm-evaluation-harness conventions). docs/eval.md.
 *
 *   anvil eval ppl --model DIR --data PATH [--seq N] [--stride S] [--batch B] [--device D]
 *                  [--tokenizer T] [--json [FILE]]
 *   anvil eval mcq --model DIR --task T --data FILE.jsonl [--limit N] [--batch B] [--seq N]
 *                  [--skip-bad] [--no-bos] [--device D] [--tokenizer T] [--json [FILE]]
 *   anvil eval mlm --model DIR --data PATH [--seed S] [--seq N] [--batch B] [--device D]
 *                  [--tokenizer T] [--json [FILE]]
 * --ctx is accepted for --seq (the name every subcommand uses for the sequence length).
 */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/error.h"
#include "data/shard.h"
#include "data/textio.h"
#include "data/tokenizer.h"
#include "data/mlm.h"
#include "eval/mcq.h"
#include "eval/mlm_eval.h"
#include "eval/ppl.h"
#include "eval/load.h"
#include "model/model.h"

/* Windows per forward for ppl, and rows per forward (at a full window) for mcq: enough
 * to keep a GPU busy with a small model; results do not depend on them. */
#define PPL_DEFAULT_BATCH 8
#define MCQ_DEFAULT_BATCH 16
#define MLM_DEFAULT_BATCH 8
#define MLM_DEFAULT_SEED 0
/* BERT's masking share (data.mlm.prob's default) for text sources. */
#define MLM_DEFAULT_PROB 0.15f

static void usage_ppl(FILE *f)
{
    fprintf(f,
            "usage: anvil eval ppl --model DIR --data PATH [options]\n"
            "  --model DIR      a model directory, or a preset name (random weights, for speed tests)\n"
            "  --data PATH      a text file (tokenized with the model's tokenizer), a shard directory or\n"
            "                   shard file, or a raw little-endian uint32 token file (.u32)\n"
            "  --seq N          window length (default: the model's max_seq_len; --ctx is the old name)\n"
            "  --stride S       advance between windows (default: --seq)\n"
            "  --batch B        windows per forward (default %d; results do not depend on it)\n"
            "  --device D       cpu, cuda or cuda-fp32 (default cpu)\n"
            "  --tokenizer T    for a text --data (default: the model directory's)\n"
            "  --json [FILE]    write the result as JSON to FILE; without FILE (or with -) print it as\n"
            "                   JSON on stdout instead of the summary line\n"
            "  --adapter DIR    a PEFT LoRA adapter over the model (default: none)\n",
            PPL_DEFAULT_BATCH);
}

static void usage_mcq(FILE *f)
{
    fprintf(f,
            "usage: anvil eval mcq --model DIR --task T --data FILE.jsonl [options]\n"
            "  --model DIR      a model directory, or a preset name (random weights, for speed tests)\n"
            "  --task T         hellaswag, piqa, arc, winogrande or generic\n"
            "  --data FILE      the task's JSONL file\n"
            "  --limit N        score the first N items (default 0: all)\n"
            "  --seq N          window length (default: the model's max_seq_len; --ctx is the old name)\n"
            "  --batch B        rows per forward at a full window (default %d; results do not depend on it)\n"
            "  --skip-bad       report malformed lines and go on (default: stop at the first)\n"
            "  --no-bos         encode without the tokenizer's BOS (lm-eval add_bos_token=False)\n"
            "  --device D       cpu, cuda or cuda-fp32 (default cpu)\n"
            "  --tokenizer T    default: the model directory's\n"
            "  --json [FILE]    write the result as JSON to FILE; without FILE (or with -) print it as\n"
            "                   JSON on stdout instead of the summary line\n"
            "  --adapter DIR    a PEFT LoRA adapter over the model (default: none)\n",
            MCQ_DEFAULT_BATCH);
}

static void usage_mlm(FILE *f)
{
    fprintf(f,
            "usage: anvil eval mlm --model DIR --data PATH [options]\n"
            "  --model DIR      an encoder with its MLM head (BertForMaskedLM, RobertaForMaskedLM)\n"
            "  --data PATH      a text file: rows of --seq ids in the tokenizer's template, masked as training\n"
            "                   masks (15%%, 80/10/10, from --seed); or .jsonl: pre-masked records {\"input_ids\",\n"
            "                   \"labels\" (-100 = not scored), optional \"attention_mask\"}, scored as given\n"
            "  --seed S         the masking of a text file (default %d)\n"
            "  --seq N          ids per row of a text file (default: the model's positions)\n"
            "  --batch B        rows per forward (default %d; results do not depend on it)\n"
            "  --device D       cpu, cuda or cuda-fp32 (default cpu)\n"
            "  --tokenizer T    for a text --data (default: the model directory's)\n"
            "  --json [FILE]    write the result as JSON to FILE; without FILE (or with -) print it as\n"
            "                   JSON on stdout instead of the summary line\n",
            MLM_DEFAULT_SEED, MLM_DEFAULT_BATCH);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: anvil eval ppl --model DIR --data PATH [options]      sliding-window perplexity\n"
               "       anvil eval mcq --model DIR --task T --data F [options]   zero-shot multiple choice\n"
               "       anvil eval mlm --model DIR --data PATH [options]      masked-LM loss and accuracy\n"
               "Run `anvil eval ppl --help`, `anvil eval mcq --help` or `anvil eval mlm --help` for the options.\n");
}

typedef struct {
    const char *model, *adapter, *data, *device, *tokenizer, *task;
    const char *json; /* NULL: no JSON; "-": JSON on stdout; else a file */
    int ctx, stride, batch, limit, skip_bad, no_bos;
    long long seed;
} EvalArgs;

static int parse_args(int argc, char **argv, EvalArgs *a, int is_ppl, int is_mlm)
{
    const char *mode = is_ppl ? "ppl" : is_mlm ? "mlm" : "mcq";
    for (int i = 2; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--json")) {
            /* every eval argument is an option, so a following word that is not one is the file */
            a->json = i + 1 < argc && strncmp(argv[i + 1], "--", 2) ? argv[++i] : "-";
        } else if (!strcmp(f, "--skip-bad") && !is_ppl && !is_mlm)
            a->skip_bad = 1;
        else if (!strcmp(f, "--no-bos") && !is_ppl && !is_mlm)
            a->no_bos = 1;
        else if (i + 1 >= argc)
            return err_set("%s: unknown option, or missing its value (see anvil eval %s --help)", f, mode);
        else if (!strcmp(f, "--model"))
            a->model = argv[++i];
        else if (!strcmp(f, "--adapter"))
            a->adapter = argv[++i];
        else if (!strcmp(f, "--data"))
            a->data = argv[++i];
        else if (!strcmp(f, "--device"))
            a->device = argv[++i];
        else if (!strcmp(f, "--tokenizer"))
            a->tokenizer = argv[++i];
        else if (!strcmp(f, "--task") && !is_ppl && !is_mlm)
            a->task = argv[++i];
        else if (!strcmp(f, "--seed") && is_mlm) {
            char *end;
            const char *v = argv[++i];
            a->seed = strtoll(v, &end, 10);
            if (!*v || *end || a->seed < 0) return err_set("--seed: expected a non-negative integer, got \"%s\"", v);
        }
        else if (!strcmp(f, "--seq") || !strcmp(f, "--ctx")) {
            if (cli_int(f, argv[++i], 2, &a->ctx)) return -1;
        } else if (!strcmp(f, "--stride") && is_ppl) {
            if (cli_int(f, argv[++i], 1, &a->stride)) return -1;
        } else if (!strcmp(f, "--batch")) {
            if (cli_int(f, argv[++i], 1, &a->batch)) return -1;
        } else if (!strcmp(f, "--limit") && !is_ppl && !is_mlm) {
            if (cli_int(f, argv[++i], 0, &a->limit)) return -1;
        } else
            return err_set("%s: unknown option (see anvil eval %s --help)", f, mode);
    }
    if (!a->model) return err_set("--model: required (a model directory)");
    if (!a->data) return err_set("--data: required");
    return 0;
}

/* The JSON result: on stdout ("-"), or written atomically to the --json file. */
static int emit_json(const char *dest, const char *text)
{
    if (!strcmp(dest, "-")) {
        fputs(text, stdout);
        return 0;
    }
    return text_write_file_atomic(dest, text, strlen(text)) ? err_prefix("--json") : 0;
}

/* A double for JSON: null when it is not finite (JSON has no NaN). */
static const char *json_double(char *buf, size_t n, const char *fmt, double x)
{
    if (!isfinite(x)) return "null";
    snprintf(buf, n, fmt, x);
    return buf;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------------------ ppl input */

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Append the tokens of one shard file (a warning when it was made with another tokenizer). */
static int append_shard(const char *path, const Tokenizer *tok, int32_t **ids, size_t *n)
{
    Shard s;
    if (shard_open(&s, path)) return -1;
    if (tok && s.identity[0] && strcmp(s.identity, tokenizer_identity(tok)))
        fprintf(stderr, "anvil: warning: %s: made with tokenizer \"%s\", the model's is \"%s\"\n", path,
                s.identity, tokenizer_identity(tok));
    *ids = xrealloc(*ids, (*n + s.count + 1) * sizeof(int32_t));
    for (uint64_t i = 0; i < s.count; i++) (*ids)[(*n)++] = (int32_t)shard_token(&s, i);
    shard_close(&s);
    return 0;
}

/* The token sequence of PATH: a directory of shards (*.tok, *.bin, in name order, one
 * stream), one shard, a .u32 file, or text (tokenized; with BOS when the tokenizer adds one,
 * as tokenizer(text) does in transformers). *text_bytes > 0 only for text. */
static int read_tokens(const char *path, const Tokenizer *tok, int32_t **ids, size_t *n)
{
    *ids = NULL;
    *n = 0;
    struct stat st;
    if (stat(path, &st)) return err_set("%s: cannot open (no such file or directory)", path);
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d) return err_set("%s: cannot open the directory", path);
        char **names = NULL;
        int k = 0;
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.' && (ends_with(e->d_name, ".tok") || ends_with(e->d_name, ".bin"))) {
                names = xrealloc(names, (size_t)(k + 1) * sizeof(char *));
                size_t len = strlen(path) + strlen(e->d_name) + 2;
                names[k] = xmalloc(len);
                snprintf(names[k++], len, "%s/%s", path, e->d_name);
            }
        closedir(d);
        if (k) qsort(names, (size_t)k, sizeof(char *), cmp_str);
        int rc = k ? 0 : err_set("%s: no token shards (*.tok, *.bin) in this directory", path);
        for (int i = 0; i < k; i++) {
            if (!rc) rc = append_shard(names[i], tok, ids, n);
            free(names[i]);
        }
        free(names);
        return rc;
    }
    if (shard_sniff(path)) return append_shard(path, tok, ids, n);
    size_t len;
    char *data = text_read_file(path, &len);
    if (!data) return -1;
    if (ends_with(path, ".u32")) {
        if (len % 4) {
            free(data);
            return err_set("%s: size %zu is not a multiple of 4 (expected little-endian uint32 ids)", path,
                           len);
        }
        *n = len / 4;
        *ids = xmalloc((*n + 1) * sizeof(int32_t));
        const uint8_t *p = (const uint8_t *)data;
        for (size_t i = 0; i < *n; i++) {
            uint32_t v = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
                         (uint32_t)p[4 * i + 3] << 24;
            (*ids)[i] = v > INT32_MAX ? INT32_MAX : (int32_t)v;
        }
        free(data);
        return 0;
    }
    if (!tok) {
        free(data);
        return err_set("%s: text needs a tokenizer: the model directory has none (give --tokenizer)", path);
    }
    size_t bad = text_utf8_check(data, len);
    if (bad < len) {
        free(data);
        return err_set("%s: invalid UTF-8 at byte offset %zu", path, bad);
    }
    int32_t *v = NULL;
    long k = tokenizer_encode(tok, data, len, &v);
    free(data);
    if (k < 0) return err_prefix("%s", path);
    int bos = tokenizer_add_bos(tok) && tokenizer_bos_id(tok) >= 0;
    *ids = xmalloc((size_t)(k + bos + 1) * sizeof(int32_t));
    if (bos) (*ids)[0] = tokenizer_bos_id(tok);
    if (k) memcpy(*ids + bos, v, (size_t)k * sizeof(int32_t));
    free(v);
    *n = (size_t)k + (size_t)bos;
    return 0;
}

static int is_text_source(const char *path)
{
    struct stat st;
    return !stat(path, &st) && !S_ISDIR(st.st_mode) && !shard_sniff(path) && !ends_with(path, ".u32");
}

/* ---------------------------------------------------------------- main */

static int run_ppl(const EvalArgs *a, Model *m, Tokenizer *tok)
{
    int32_t *ids = NULL;
    size_t n = 0;
    int text = is_text_source(a->data);
    if (read_tokens(a->data, tok, &ids, &n)) return -1;
    PplOptions o = {.ctx = a->ctx ? a->ctx : m->cfg.max_seq_len,
                    .batch = a->batch ? a->batch : PPL_DEFAULT_BATCH};
    o.stride = a->stride ? a->stride : o.ctx;
    PplResult r;
    double t0 = now_s();
    int rc = ppl_run(m, ids, n, &o, text ? tok : NULL, &r);
    double dt = now_s() - t0;
    free(ids);
    if (rc) return err_prefix("%s", a->data);
    if (a->json) {
        char j[1024], b1[40], b2[40];
        int k = snprintf(j, sizeof(j), "{\"tokens\": %llu, \"nll\": %.8f, \"ppl\": %.6f", (unsigned long long)r.tokens,
                         r.nll, r.ppl);
        if (text)
            k += snprintf(j + k, sizeof(j) - (size_t)k, ", \"bpb\": %s, \"bytes\": %llu",
                          json_double(b1, sizeof(b1), "%.8f", r.bpb), (unsigned long long)r.bytes);
        snprintf(j + k, sizeof(j) - (size_t)k,
                 ", \"windows\": %d, \"ctx\": %d, \"stride\": %d, \"hf_doc_nll\": %s, \"seconds\": %.3f}\n", r.windows,
                 o.ctx, o.stride, json_double(b2, sizeof(b2), "%.8f", r.hf_doc_nll), dt);
        if (emit_json(a->json, j)) return -1;
        if (!strcmp(a->json, "-")) return 0;
    }
    printf("ppl: %llu tokens scored in %d windows (ctx %d, stride %d) | nll %.4f nats/token | ppl %.3f",
           (unsigned long long)r.tokens, r.windows, o.ctx, o.stride, r.nll, r.ppl);
    if (text) printf(" | bpb %.4f", r.bpb);
    printf(" | %.1f s\n", dt);
    if (o.stride < o.ctx)
        printf("(the HF guide's loop, which weights each window's mean by trg_len - 1, gives nll %.4f)\n",
               r.hf_doc_nll);
    return 0;
}

static int run_mcq(const EvalArgs *a, Model *m, Tokenizer *tok)
{
    McqTask task;
    if (!a->task) return err_set("--task: required (hellaswag, piqa, arc, winogrande, generic)");
    if (mcq_task_parse(a->task, &task)) return -1;
    if (!tok) return err_set("%s: the model directory has no tokenizer (give --tokenizer)", a->model);
    McqSet set;
    if (mcq_load(a->data, task, a->limit, a->skip_bad, &set)) return -1;
    McqOptions o = {.ctx = a->ctx ? a->ctx : m->cfg.max_seq_len,
                    .batch = a->batch ? a->batch : MCQ_DEFAULT_BATCH,
                    .no_bos = a->no_bos};
    McqResult r;
    if (mcq_score(m, tok, &set, &o, &r)) {
        mcq_set_free(&set);
        return -1;
    }
    double ips = r.seconds > 0 ? r.items / r.seconds : 0;
    int rc = 0;
    if (a->json) {
        char j[1024], b1[40], b2[40];
        int k = snprintf(j, sizeof(j), "{\"task\": \"%s\", \"items\": %d, \"acc\": %.6f", a->task, r.items, r.acc);
        k += snprintf(j + k, sizeof(j) - (size_t)k, ", \"acc_norm\": %s, \"acc_bytes\": %s",
                      r.has_norm ? json_double(b1, sizeof(b1), "%.6f", r.acc_norm) : "null",
                      r.has_norm ? json_double(b2, sizeof(b2), "%.6f", r.acc_bytes) : "null");
        snprintf(j + k, sizeof(j) - (size_t)k,
                 ", \"truncated\": %d, \"too_long\": %d, \"skipped\": %d, \"requests\": %d, \"ctx\": %d, "
                 "\"seconds\": %.3f, \"items_per_s\": %.2f}\n",
                 r.truncated, r.too_long, set.skipped, r.requests, o.ctx, r.seconds, ips);
        rc = emit_json(a->json, j);
    }
    if (!a->json || (!rc && strcmp(a->json, "-"))) {
        printf("%s: %d items | acc %.4f", a->task, r.items, r.acc);
        if (r.has_norm) printf(" | acc_norm %.4f | acc_bytes %.4f", r.acc_norm, r.acc_bytes);
        printf(" | %d truncated (context cut to the last %d tokens) | %d malformed lines skipped",
               r.truncated, o.ctx, set.skipped);
        if (r.too_long) printf(" | %d not scored (a continuation longer than the window)", r.too_long);
        printf(" | %.1f items/s\n", ips);
    }
    mcq_result_free(&r);
    mcq_set_free(&set);
    return rc;
}

/* A text file's ids without BOS (the template adds [CLS] to every row). */
static int read_text_ids(const char *path, const Tokenizer *tok, int32_t **ids, size_t *n)
{
    size_t len;
    char *text = text_read_file(path, &len);
    if (!text) return -1;
    size_t bad = text_utf8_check(text, len);
    long k = bad < len ? -1 : tokenizer_encode(tok, text, len, ids);
    free(text);
    if (bad < len) return err_set("%s: invalid UTF-8 at byte offset %zu", path, bad);
    if (k < 0) return err_prefix("%s", path);
    *n = (size_t)k;
    return 0;
}

static int run_mlm(const EvalArgs *a, Model *m, Tokenizer *tok)
{
    const ModelConfig *c = &m->cfg;
    if (!c->bidirectional || m->mlm.w < 0)
        return err_set("%s: %s has no MLM head (eval mlm needs a BertForMaskedLM or RobertaForMaskedLM)", a->model,
                       c->hf_arch);
    int positions = c->max_seq_len - c->pos_offset;
    if (a->ctx > positions) return err_set("--seq: %d is more than the model's %d positions", a->ctx, positions);
    MlmEvalOptions o = {.T = a->ctx ? a->ctx : positions, .batch = a->batch ? a->batch : MLM_DEFAULT_BATCH,
                        .seed = (uint64_t)a->seed};
    MlmEvalResult r = {0};
    int jsonl = ends_with(a->data, ".jsonl");
    double t0 = now_s();
    if (jsonl) {
        o.T = positions; /* records bring their own lengths */
        if (mlm_eval_jsonl(m, a->data, &o, &r)) return -1;
    } else {
        if (!tok) return err_set("%s: text needs a tokenizer: the model directory has none (give --tokenizer)", a->data);
        MlmOptions mo;
        if (mlm_options_init(&mo, tok, MLM_DEFAULT_PROB, 0)) return -1;
        int32_t *ids = NULL;
        size_t n = 0;
        int rc = is_text_source(a->data) ? read_text_ids(a->data, tok, &ids, &n) : read_tokens(a->data, tok, &ids, &n);
        if (!rc) rc = mlm_eval_text(m, &mo, ids, n, &o, &r);
        free(ids);
        mlm_options_free(&mo);
        if (rc) return err_prefix("%s", a->data);
    }
    double dt = now_s() - t0;
    if (!r.scored) return err_set("%s: no token was scored", a->data);
    double loss = r.loss_sum / (double)r.scored, acc = (double)r.correct / (double)r.scored;
    if (a->json) {
        char j[512], b1[40];
        snprintf(j, sizeof(j),
                 "{\"rows\": %ld, \"scored\": %ld, \"loss\": %s, \"accuracy\": %.6f, \"masking\": \"%s\", \"seed\": %lld, "
                 "\"seq\": %d, \"seconds\": %.3f}\n",
                 r.rows, r.scored, json_double(b1, sizeof(b1), "%.8f", loss), acc, jsonl ? "given" : "seeded",
                 a->seed, o.T, dt);
        if (emit_json(a->json, j)) return -1;
        if (!strcmp(a->json, "-")) return 0;
    }
    printf("mlm: %ld rows | %ld tokens scored (%s) | loss %.4f | accuracy %.4f | ppl %.3f | %.1f s\n", r.rows,
           r.scored, jsonl ? "masked as given" : "seeded masking", loss, acc, exp(loss), dt);
    return 0;
}

int cmd_eval(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 1 : 0;
    }
    int is_ppl = !strcmp(argv[1], "ppl"), is_mcq = !strcmp(argv[1], "mcq"), is_mlm = !strcmp(argv[1], "mlm");
    if (!is_ppl && !is_mcq && !is_mlm) {
        fprintf(stderr, "anvil: eval: unknown mode \"%s\" (expected ppl, mcq or mlm)\n", argv[1]);
        return 1;
    }
    for (int i = 2; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            (is_ppl ? usage_ppl : is_mlm ? usage_mlm : usage_mcq)(stdout);
            return 0;
        }
    EvalArgs a = {.device = "cpu"};
    Model *m = NULL;
    Tokenizer *tok = NULL;
    int rc = 1;
    if (parse_args(argc, argv, &a, is_ppl, is_mlm)) goto out;
    const Backend *be = eval_backend(a.device);
    if (!be) goto out;
    m = eval_load_model(a.model, a.adapter, be);
    if (!m) goto out;
    tok = tokenizer_load(a.tokenizer ? a.tokenizer : a.model);
    if (!tok) {
        if (a.tokenizer) goto out;
        err_clear(); /* fine for token files */
    }
    if (!is_mlm && m->cfg.bidirectional) {
        err_set("%s: %s is an encoder: eval %s scores next tokens; use anvil eval mlm", a.model, m->cfg.hf_arch,
                argv[1]);
        goto out;
    }
    rc = (is_ppl ? run_ppl(&a, m, tok) : is_mlm ? run_mlm(&a, m, tok) : run_mcq(&a, m, tok)) ? 1 : 0;
out:
    if (rc) fprintf(stderr, "anvil: %s\n", err_get());
    if (tok) tokenizer_free(tok);
    model_free(m);
    return rc;
}
