/* cmd_embed.c - `anvil embed`: sentence embeddings of an encoder as JSON (eval/embed.h).
 *
 *   anvil embed --model DIR (--text S | --file F) [--pooling mean|cls] [--batch B] [--device D]
 *               [--tokenizer T]
 *
 * --text may be given several times; --file takes one text per line (empty lines skipped). The
 * output is one JSON object: {"model", "pooling", "dim", "count", "embeddings": [[...], ...]}.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/error.h"
#include "data/textio.h"
#include "data/tokenizer.h"
#include "eval/embed.h"
#include "eval/load.h"

/* Texts per forward: results do not depend on it. */
#define EMBED_DEFAULT_BATCH 16

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: anvil embed --model DIR (--text S | --file F) [options]\n"
        "  --model DIR      an encoder (BertModel, BertForMaskedLM, RobertaModel, ...; "
        "sentence-transformers\n"
        "                   checkpoints are BertModel directories)\n"
        "  --text S         a text to embed (may be given several times)\n"
        "  --file F         one text per line (empty lines skipped)\n"
        "  --pooling P      mean (over the text's tokens, [CLS] and [SEP] included) or cls (default mean)\n"
        "  --batch B        texts per forward (default %d; results do not depend on it)\n"
        "  --device D       cpu, cuda or cuda-fp32 (default cpu)\n"
        "  --tokenizer T    default: the model directory's\n"
        "Prints {\"model\", \"pooling\", \"dim\", \"count\", \"embeddings\": [[...], ...]} as JSON.\n",
        EMBED_DEFAULT_BATCH);
}

/* The lines of a file (trailing \r removed, empty lines skipped) as NUL-terminated strings in place. */
static int read_lines(const char *path, char **buf, char ***lines, int *n)
{
    size_t len;
    char *text = text_read_file(path, &len);
    if (!text) return -1;
    size_t bad = text_utf8_check(text, len);
    if (bad < len) {
        free(text);
        return err_set("%s: invalid UTF-8 at byte offset %zu", path, bad);
    }
    int cap = 0;
    for (char *p = text; p < text + len;) {
        char *e = memchr(p, '\n', (size_t)(text + len - p));
        if (!e) e = text + len;
        *e = '\0';
        if (e > p && e[-1] == '\r') e[-1] = '\0';
        if (*p) {
            if (*n == cap) *lines = xrealloc(*lines, (size_t)(cap = cap ? 2 * cap : 64) * sizeof(char *));
            (*lines)[(*n)++] = p;
        }
        p = e + 1;
    }
    *buf = text;
    return *n ? 0 : err_set("%s: no text (every line is empty)", path);
}

int cmd_embed(int argc, char **argv)
{
    const char *model = NULL, *file = NULL, *device = "cpu", *tokenizer = NULL, *pooling = "mean";
    char **texts = NULL, *filebuf = NULL;
    int n = 0, cap = 0, batch = EMBED_DEFAULT_BATCH, rc = 1;
    Model *m = NULL;
    Tokenizer *tok = NULL;
    float *out = NULL;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (i + 1 >= argc) {
            err_set("%s: unknown option, or missing its value (see anvil embed --help)", f);
            goto out;
        }
        const char *v = argv[++i];
        if (!strcmp(f, "--model"))
            model = v;
        else if (!strcmp(f, "--file"))
            file = v;
        else if (!strcmp(f, "--device"))
            device = v;
        else if (!strcmp(f, "--tokenizer"))
            tokenizer = v;
        else if (!strcmp(f, "--pooling"))
            pooling = v;
        else if (!strcmp(f, "--text")) {
            if (n == cap) texts = xrealloc(texts, (size_t)(cap = cap ? 2 * cap : 8) * sizeof(char *));
            texts[n++] = (char *)v;
        } else if (!strcmp(f, "--batch")) {
            if (cli_int(f, v, 1, &batch)) goto out;
        } else {
            err_set("%s: unknown option (see anvil embed --help)", f);
            goto out;
        }
    }
    Pooling pool;
    if (pooling_parse(pooling, &pool)) goto out;
    if (!model) {
        err_set("--model: required (an encoder directory)");
        goto out;
    }
    if (!n && !file) {
        err_set("--text or --file: required (the texts to embed)");
        goto out;
    }
    if (n && file) {
        err_set("--text and --file: give one of them");
        goto out;
    }
    if (file && read_lines(file, &filebuf, &texts, &n)) goto out;
    const Backend *be = eval_backend(device);
    if (!be || !(m = eval_load_model(model, NULL, be))) goto out;
    if (!(tok = tokenizer_load(tokenizer ? tokenizer : model))) {
        if (!tokenizer)
            err_prefix("%s: the model directory has no usable tokenizer (give --tokenizer)", model);
        goto out;
    }
    int C = m->cfg.d_model;
    out = xmalloc((size_t)n * C * sizeof(float));
    if (embed_texts(m, tok, (const char *const *)texts, n, pool, batch, out)) goto out;
    printf("{\"model\": \"");
    for (const char *p = model; *p; p++) printf(*p == '"' || *p == '\\' ? "\\%c" : "%c", *p);
    printf("\", \"pooling\": \"%s\", \"dim\": %d, \"count\": %d, \"embeddings\": [", pooling, C, n);
    for (int i = 0; i < n; i++) {
        printf(i ? ",\n  [" : "\n  [");
        for (int k = 0; k < C; k++) printf(k ? ", %.9g" : "%.9g", (double)out[(size_t)i * C + k]);
        printf("]");
    }
    printf("\n]}\n");
    rc = 0;
out:
    if (rc) fprintf(stderr, "anvil: %s\n", err_get());
    if (tok) tokenizer_free(tok);
    model_free(m);
    free(out);
    free(filebuf);
    free(texts);
    return rc;
}
