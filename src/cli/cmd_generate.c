/* cmd_generate.c - `anvil generate`: sample text from a model with a KV cache,
 * streamed to stdout as it is produced (docs/eval.md).
 *
 *   anvil generate --model DIR (--prompt S | --prompt-ids 1,2,3) [--max-tokens N]
 *                  [--temperature T] [--top-k K] [--top-p P] [--seed S] [--stop S]...
 *                  [--print-ids] [--samples N] [--ignore-eos] [--echo] [--stats]
 *                  [--device D] [--tokenizer T]
 * --samples (the number of samples) was --batch, which is still accepted.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/error.h"
#include "data/tokenizer.h"
#include "eval/generate.h"
#include "eval/load.h"
#include "model/model.h"

#define DEFAULT_MAX_TOKENS 128
#define DEFAULT_SEED 1337
#define MAX_STOPS 16

static void usage(FILE *f)
{
    fprintf(f,
            "usage: anvil generate --model DIR (--prompt S | --prompt-ids 1,2,3) [options]\n"
            "  --model DIR          a model directory, or a preset name (random weights, for speed tests)\n"
            "  --prompt S           text, tokenized as transformers' tokenizer(S) does (BOS when it adds one)\n"
            "  --prompt-ids IDS     token ids separated by commas or spaces\n"
            "  --max-tokens N       new tokens per sample (default %d)\n"
            "  --temperature T      0 is greedy (default 1)\n"
            "  --top-k K            keep the K most likely tokens (default 0: off)\n"
            "  --top-p P            keep the most likely tokens up to mass P (default 1: off)\n"
            "  --seed S             random seed (default %d); sample k uses the stream (seed, k)\n"
            "  --samples N          N independent samples of the prompt in one batch (default 1; --batch is\n"
            "                       the old name); sample 0 draws as a single sample does\n"
            "  --stop S             end the text before the first occurrence of S (up to %d)\n"
            "  --ignore-eos         do not stop at the end-of-sequence token\n"
            "  --print-ids          print token ids instead of text (the default without a tokenizer)\n"
            "  --echo               print the prompt first\n"
            "  --stats              timings and tokens/s on stderr\n"
            "  --device D           cpu, cuda or cuda-fp32 (default cpu)\n"
            "  --tokenizer T        default: the model directory's; only ids it knows are sampled\n"
            "  --adapter DIR        a PEFT LoRA adapter over the model (default: none)\n",
            DEFAULT_MAX_TOKENS, DEFAULT_SEED, MAX_STOPS);
}

typedef struct {
    const char *model, *adapter, *device, *tokenizer, *prompt, *prompt_ids;
    const char *stops[MAX_STOPS];
    int n_stops, max_tokens, top_k, batch, print_ids, ignore_eos, echo, stats;
    float temperature, top_p;
    uint64_t seed;
} GenArgs;

static int parse_args(int argc, char **argv, GenArgs *a)
{
    double x = 0;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--print-ids"))
            a->print_ids = 1;
        else if (!strcmp(f, "--ignore-eos"))
            a->ignore_eos = 1;
        else if (!strcmp(f, "--echo"))
            a->echo = 1;
        else if (!strcmp(f, "--stats"))
            a->stats = 1;
        else if (i + 1 >= argc)
            return err_set("%s: unknown option, or missing its value (see --help)", f);
        else if (!strcmp(f, "--model"))
            a->model = argv[++i];
        else if (!strcmp(f, "--adapter"))
            a->adapter = argv[++i];
        else if (!strcmp(f, "--device"))
            a->device = argv[++i];
        else if (!strcmp(f, "--tokenizer"))
            a->tokenizer = argv[++i];
        else if (!strcmp(f, "--prompt"))
            a->prompt = argv[++i];
        else if (!strcmp(f, "--prompt-ids"))
            a->prompt_ids = argv[++i];
        else if (!strcmp(f, "--stop")) {
            if (a->n_stops == MAX_STOPS) return err_set("--stop: at most %d stop strings", MAX_STOPS);
            if (!*argv[i + 1]) return err_set("--stop: the stop string is empty");
            a->stops[a->n_stops++] = argv[++i];
        } else if (!strcmp(f, "--max-tokens")) {
            if (cli_num(f, argv[++i], 0, 1e9, &x)) return -1;
            a->max_tokens = (int)x;
        } else if (!strcmp(f, "--temperature")) {
            if (cli_num(f, argv[++i], 0, 1e6, &x)) return -1;
            a->temperature = (float)x;
        } else if (!strcmp(f, "--top-k")) {
            if (cli_num(f, argv[++i], 0, 1e9, &x)) return -1;
            a->top_k = (int)x;
        } else if (!strcmp(f, "--top-p")) {
            if (cli_num(f, argv[++i], 1e-9, 1, &x)) return -1;
            a->top_p = (float)x;
        } else if (!strcmp(f, "--seed")) {
            if (cli_num(f, argv[++i], 0, 1.8e19, &x)) return -1;
            a->seed = strtoull(argv[i], NULL, 10);
        } else if (!strcmp(f, "--samples") || !strcmp(f, "--batch")) {
            if (cli_num(f, argv[++i], 1, 1e6, &x)) return -1;
            a->batch = (int)x;
        } else
            return err_set("%s: unknown option (see anvil generate --help)", f);
    }
    if (!a->model) return err_set("--model: required (a model directory)");
    if (!!a->prompt == !!a->prompt_ids) return err_set("give exactly one of --prompt and --prompt-ids");
    return 0;
}

/* "1,2,3" or "1 2 3" -> ids: ids separated by one comma and/or blanks; an empty entry
 * ("1,,2", a leading or trailing comma) is an error. */
static int parse_ids(const char *s, int32_t **ids, int *n)
{
    int cap = 16, k = 0;
    int32_t *v = xmalloc((size_t)cap * sizeof(int32_t));
    const char *p = s;
    for (;;) {
        int commas = 0;
        while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n') commas += *p++ == ',';
        if (commas > (k > 0 && *p) || (!*p && commas)) {
            free(v);
            return err_set("--prompt-ids: byte offset %d: an empty entry (expected ids separated by commas or spaces)",
                           (int)(p - s));
        }
        if (!*p) break;
        char *end;
        long x = strtol(p, &end, 10);
        if (end == p || x < 0 || x > INT32_MAX ||
            (*end && *end != ' ' && *end != ',' && *end != '\t' && *end != '\n')) {
            free(v);
            return err_set("--prompt-ids: byte offset %d: expected a token id (a non-negative integer)",
                           (int)(p - s));
        }
        if (k == cap) v = xrealloc(v, (size_t)(cap *= 2) * sizeof(int32_t));
        v[k++] = (int32_t)x;
        p = end;
    }
    *ids = v;
    *n = k;
    return 0;
}

typedef struct {
    int print_ids, stream;
    int first_id;
} StreamCtx;

static void on_text(void *ctx, const char *s, size_t n)
{
    StreamCtx *c = ctx;
    if (c->print_ids || !c->stream) return;
    fwrite(s, 1, n, stdout);
    fflush(stdout);
}

static void on_token(void *ctx, int sample, int32_t id)
{
    StreamCtx *c = ctx;
    if (!c->print_ids || !c->stream) return;
    printf(c->first_id ? "%d" : " %d", id);
    c->first_id = 0;
    fflush(stdout);
}

static const char *stop_name(int s)
{
    return s == GEN_STOP_EOS      ? "eos"
           : s == GEN_STOP_STRING ? "stop string"
           : s == GEN_STOP_WINDOW ? "window"
                                  : "length";
}

/* The backend's high-water mark (weights, KV cache, scratch), in GiB. */
static double peak_gib(const Backend *be)
{
    size_t in_use = 0, peak = 0;
    if (be->mem_stats) be->mem_stats(&in_use, &peak);
    return (double)peak / (double)(1u << 30);
}

int cmd_generate(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
    GenArgs a = {.device = "cpu",
                 .max_tokens = DEFAULT_MAX_TOKENS,
                 .temperature = 1.0f,
                 .top_p = 1.0f,
                 .seed = DEFAULT_SEED,
                 .batch = 1};
    Model *m = NULL;
    Tokenizer *tok = NULL;
    int32_t *prompt = NULL;
    int n_prompt = 0, rc = 1;
    GenResult res = {0};
    if (parse_args(argc, argv, &a)) goto out;
    const Backend *be = eval_backend(a.device);
    if (!be) goto out;
    m = eval_load_model(a.model, a.adapter, be);
    if (!m) goto out;
    tok = tokenizer_load(a.tokenizer ? a.tokenizer : a.model);
    if (!tok) {
        if (a.tokenizer || a.prompt) {
            if (!a.tokenizer) err_prefix("--prompt needs the model's tokenizer (or use --prompt-ids)");
            goto out;
        }
        err_clear();
        a.print_ids = 1; /* nothing to decode with */
    }
    if (a.prompt) {
        int32_t *v = NULL;
        long k = tokenizer_encode(tok, a.prompt, strlen(a.prompt), &v);
        if (k < 0) goto out;
        /* as tokenizer(prompt) in transformers: BOS when the post-processor adds one */
        int bos = tokenizer_add_bos(tok) && tokenizer_bos_id(tok) >= 0;
        prompt = xmalloc((size_t)(k + bos + 1) * sizeof(int32_t));
        if (bos) prompt[0] = tokenizer_bos_id(tok);
        if (k) memcpy(prompt + bos, v, (size_t)k * sizeof(int32_t));
        free(v);
        n_prompt = (int)k + bos;
        if (!n_prompt && tokenizer_bos_id(tok) >= 0) prompt[n_prompt++] = tokenizer_bos_id(tok);
    } else if (parse_ids(a.prompt_ids, &prompt, &n_prompt)) {
        goto out;
    }
    /* a tokenizer smaller than the model (a byte tokenizer with a 50257-row model): sample only
     * the ids it can decode, and stop at its EOS when the model's is beyond them */
    int V = m->cfg.vocab_size, Vs = tok && tokenizer_vocab_size(tok) < V ? tokenizer_vocab_size(tok) : V;
    if (Vs < V)
        fprintf(stderr,
                "anvil: note: the tokenizer knows %d ids, the model has %d: sampling only ids below %d\n", Vs, V,
                Vs);
    int eos = m->cfg.eos_token_id >= 0 ? m->cfg.eos_token_id : tok ? tokenizer_eos_id(tok) : -1;
    if (eos >= Vs && tok) eos = tokenizer_eos_id(tok);
    StreamCtx sc = {.print_ids = a.print_ids, .stream = a.batch == 1, .first_id = 1};
    GenOptions o = {.max_tokens = a.max_tokens,
                    .sampler = {a.temperature, a.top_k, a.top_p},
                    .seed = a.seed,
                    .batch = a.batch,
                    .eos_id = eos,
                    .ignore_eos = a.ignore_eos,
                    .stops = a.stops,
                    .n_stops = a.n_stops,
                    .tok = tok,
                    .sample_vocab = Vs,
                    .on_text = on_text,
                    .on_token = on_token,
                    .ctx = &sc};
    if (a.echo && a.batch == 1) {
        if (a.print_ids) {
            for (int i = 0; i < n_prompt; i++) printf("%s%d", i ? " " : "", prompt[i]);
            printf(n_prompt ? " " : "");
        } else {
            fputs(a.prompt, stdout);
        }
        fflush(stdout);
    }
    if (generate_run(m, prompt, n_prompt, &o, &res)) goto out;
    if (a.batch == 1) {
        printf("\n");
    } else {
        for (int b = 0; b < a.batch; b++) {
            printf("--- sample %d (%s) ---\n", b, stop_name(res.stop[b]));
            if (a.echo) {
                if (a.print_ids)
                    for (int i = 0; i < n_prompt; i++) printf("%d ", prompt[i]);
                else
                    fputs(a.prompt, stdout);
            }
            if (a.print_ids)
                for (int i = 0; i < res.n_ids[b]; i++) printf("%s%d", i ? " " : "", res.ids[b][i]);
            else
                fwrite(res.text[b], 1, res.text_len[b], stdout);
            printf("\n");
        }
    }
    fflush(stdout);
    for (int b = 0; b < a.batch; b++)
        if (res.stop[b] == GEN_STOP_WINDOW) {
            fprintf(stderr, "anvil: note: stopped at the model's window of %d tokens\n", m->cfg.max_seq_len);
            break;
        }
    if (a.stats) {
        double tps = res.decode_s > 0 ? (double)res.steps * a.batch / res.decode_s : 0;
        fprintf(
            stderr,
            "generate: prompt %d tokens, prefill %.1f ms (%.0f tokens/s) | %ld tokens over %d sample%s in "
            "%.3f s: %.1f tokens/s decoding (%d steps of batch %d) | device %s | peak %.2f GiB | stop: %s\n",
            res.prompt_tokens, res.prefill_s * 1e3,
            res.prefill_s > 0 ? a.batch * res.prompt_tokens / res.prefill_s : 0, res.generated, a.batch,
            a.batch == 1 ? "" : "s", res.decode_s, tps, res.steps, a.batch, be->name, peak_gib(be),
            stop_name(res.stop[0]));
    }
    rc = 0;
out:
    if (rc) fprintf(stderr, "anvil: %s\n", err_get());
    gen_result_free(&res);
    free(prompt);
    if (tok) tokenizer_free(tok);
    model_free(m);
    return rc;
}
