/* cmd_tokenize.c - `anvil tokenize`: text -> ids, or ids -> text with --decode, or SFT records
 * -> ids and scored mask with --chat.
 *
 *   anvil tokenize --tokenizer T (--text S | --file F) [--out FILE] [--decode] [--stats]
 *                  [--add-special-tokens]
 *   anvil tokenize --tokenizer T --chat FILE.jsonl [--chat-template NAME] [--train-on all]
 *
 * Encode prints the ids on one line (space separated), or writes them as
 * little-endian uint32 to --out; --add-special-tokens wraps them in the
 * post-processor's template (BERT's [CLS] ... [SEP], as HF's encode does by
 * default). --decode reads ids (--text "1 2 3", or
 * --file F: binary uint32 when F ends in .u32, else whitespace-separated
 * numbers) and prints the bytes. --stats prints the encode time and MB/s
 * (tokenizer loading excluded) to stderr.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/error.h"
#include "data/sft.h"
#include "data/textio.h"
#include "data/tokenizer.h"

static void tokenize_usage(FILE *f)
{
    fprintf(f, "usage: anvil tokenize --tokenizer T (--text S | --file F) [--out FILE] [--decode] [--stats]\n"
               "  --tokenizer T    gpt2, byte, a tokenizer.json, a BERT vocab.txt, or a model directory\n"
               "  --text S         the input as an argument\n"
               "  --file F         the input from a file (UTF-8 text; .gz is decompressed)\n"
               "  --out FILE       encode: write little-endian uint32 ids to FILE; decode: write the bytes\n"
               "                   (default: print the ids on one line, or the text, on stdout)\n"
               "  --decode         ids -> bytes: --text \"1 2 3\", or --file F (binary uint32 when F ends in\n"
               "                   .u32, else ids separated by spaces or commas); default: encode\n"
               "  --stats          encode time and MB/s on stderr (default: off)\n"
               "  --add-special-tokens  wrap the ids in the post-processor's template ([CLS] ... [SEP])\n"
               "       anvil tokenize --tokenizer T --chat FILE.jsonl [--chat-template NAME|none] [--train-on all]\n"
               "  --chat           SFT records (docs/sft.md) -> per record its ids, the scored mask and the text\n"
               "                   with the scored tokens in [[ ]]\n");
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* Parse whitespace/comma separated ids. */
static int parse_ids(const char *what, const char *s, size_t n, int32_t **ids, size_t *count)
{
    size_t cap = 256, k = 0;
    int32_t *v = xmalloc(cap * sizeof(int32_t));
    size_t i = 0;
    while (i < n) {
        while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r' || s[i] == ',')) i++;
        if (i >= n) break;
        size_t j = i;
        long long x = 0;
        while (j < n && s[j] >= '0' && s[j] <= '9' && x <= INT32_MAX) x = x * 10 + (s[j++] - '0');
        if (j == i || x > INT32_MAX ||
            (j < n && !(s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r' || s[j] == ','))) {
            free(v);
            return err_set("%s: byte offset %zu: expected a token id (a non-negative integer)", what, i);
        }
        if (k == cap) v = xrealloc(v, (cap *= 2) * sizeof(int32_t));
        v[k++] = (int32_t)x;
        i = j;
    }
    *ids = v;
    *count = k;
    return 0;
}

static int do_decode(Tokenizer *tok, const char *text, const char *file, const char *out)
{
    int32_t *ids = NULL;
    size_t n = 0;
    if (file && ends_with(file, ".u32")) {
        size_t len;
        char *data = text_read_file(file, &len);
        if (!data) return -1;
        if (len % 4) {
            free(data);
            return err_set("%s: size %zu is not a multiple of 4 (expected little-endian uint32 ids)", file,
                           len);
        }
        n = len / 4;
        ids = xmalloc((n ? n : 1) * sizeof(int32_t));
        const uint8_t *p = (const uint8_t *)data;
        for (size_t i = 0; i < n; i++) {
            uint32_t v = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
                         (uint32_t)p[4 * i + 3] << 24;
            if (v > INT32_MAX) v = INT32_MAX;
            ids[i] = (int32_t)v;
        }
        free(data);
    } else if (file) {
        size_t len;
        char *data = text_read_file(file, &len);
        if (!data) return -1;
        int rc = parse_ids(file, data, len, &ids, &n);
        free(data);
        if (rc) return -1;
    } else if (parse_ids("--text", text, strlen(text), &ids, &n)) {
        return -1;
    }
    int vocab = tokenizer_vocab_size(tok);
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= vocab) {
            err_set("%s: id %d at position %zu is outside the vocabulary (size %d)", file ? file : "--text",
                    ids[i], i, vocab);
            free(ids);
            return -1;
        }
    size_t len;
    char *s = tokenizer_decode(tok, ids, n, &len);
    free(ids);
    int rc = 0;
    if (out)
        rc = text_write_file_atomic(out, s, len);
    else if (fwrite(s, 1, len, stdout) != len)
        rc = err_set("stdout: write failed");
    free(s);
    return rc;
}

static int do_encode(Tokenizer *tok, const char *text, const char *file, const char *out, int stats,
                     int special)
{
    char *data = NULL;
    size_t len;
    const char *what = file ? file : "--text";
    if (file) {
        if (!(data = text_read_file(file, &len))) return -1;
    } else {
        len = strlen(text);
    }
    const char *s = file ? data : text;
    size_t bad = text_utf8_check(s, len);
    if (bad != len) {
        free(data);
        return err_set("%s: invalid UTF-8 at byte offset %zu", what, bad);
    }
    int32_t *ids;
    double t0 = now_s(), c0 = cpu_s();
    long n = special ? tokenizer_encode_template(tok, s, len, NULL, 0, &ids, NULL)
                     : tokenizer_encode(tok, s, len, &ids);
    double dt = now_s() - t0, dc = cpu_s() - c0;
    free(data);
    if (n < 0) return -1;
    if (stats)
        fprintf(stderr,
                "tokenize: %zu bytes -> %ld tokens in %.3f s (%.2f MB/s; cpu %.3f s), %.3f bytes/token\n",
                len, n, dt, dt > 0 ? (double)len / dt / 1e6 : 0.0, dc, n ? (double)len / (double)n : 0.0);
    int rc = 0;
    if (out) {
        uint8_t *b = xmalloc((size_t)n * 4 + 1);
        for (long i = 0; i < n; i++) {
            uint32_t v = (uint32_t)ids[i];
            b[4 * i] = (uint8_t)v;
            b[4 * i + 1] = (uint8_t)(v >> 8);
            b[4 * i + 2] = (uint8_t)(v >> 16);
            b[4 * i + 3] = (uint8_t)(v >> 24);
        }
        rc = text_write_file_atomic(out, (const char *)b, (size_t)n * 4);
        free(b);
    } else {
        /* one line, buffered in chunks */
        char buf[1 << 16];
        size_t k = 0;
        for (long i = 0; i < n; i++) {
            if (k > sizeof(buf) - 16) {
                fwrite(buf, 1, k, stdout);
                k = 0;
            }
            k += (size_t)snprintf(buf + k, 16, i ? " %d" : "%d", ids[i]);
        }
        buf[k++] = '\n';
        if (fwrite(buf, 1, k, stdout) != k || fflush(stdout)) rc = err_set("stdout: write failed");
    }
    free(ids);
    return rc;
}

/* The decoded text of ids[0..n) with the scored runs in [[ ]] and control characters escaped. */
static void print_marked(const Tokenizer *tok, const SftExample *x)
{
    fputs("text:   ", stdout);
    int in = 0;
    for (size_t i = 0; i < x->n; i++) {
        if (x->mask[i] != in) fputs((in = x->mask[i]) ? "[[" : "]]", stdout);
        size_t len;
        const char *s = tokenizer_token_bytes(tok, x->ids[i], &len);
        for (size_t k = 0; k < len; k++) {
            unsigned char c = (unsigned char)s[k];
            if (c == '\n') fputs("\\n", stdout);
            else if (c == '\t') fputs("\\t", stdout);
            else if (c < 0x20 || c == 0x7f) printf("\\x%02x", c);
            else putchar(c);
        }
    }
    puts(in ? "]]" : "");
}

/* --chat: every record of an SFT JSONL file, encoded as the sft loader does (untruncated). */
static int do_chat(const char *spec, Tokenizer *tok, const char *file, const SftOptions *so)
{
    SftEncoder *enc = sft_encoder_new(tok, spec, so);
    if (!enc) return -1;
    size_t len;
    char *data = text_read_file(file, &len);
    if (!data) {
        sft_encoder_free(enc);
        return -1;
    }
    printf("%s: %s\n", file, sft_encoder_describe(enc));
    SftExample x = {0};
    int rc = 0;
    size_t line = 0;
    for (size_t p = 0; p < len && !rc;) {
        const char *nl = memchr(data + p, '\n', len - p);
        size_t e = nl ? (size_t)(nl - data) : len;
        line++;
        int r = sft_encode_json(enc, data + p, e - p, &x);
        p = e + 1;
        if (r < 0) rc = err_prefix("%s:%zu", file, line);
        if (r) continue;
        size_t scored = 0;
        for (size_t i = 1; i < x.n; i++) scored += x.mask[i];
        printf("%s:%zu: %zu tokens, %zu scored\nids:   ", file, line, x.n, scored);
        for (size_t i = 0; i < x.n; i++) printf(" %d", x.ids[i]);
        fputs("\nscored:", stdout);
        for (size_t i = 0; i < x.n; i++) printf(" %d", x.mask[i]);
        putchar('\n');
        print_marked(tok, &x);
    }
    if (!rc && fflush(stdout)) rc = err_set("stdout: write failed");
    sft_example_free(&x);
    free(data);
    sft_encoder_free(enc);
    return rc;
}

int cmd_tokenize(int argc, char **argv)
{
    const char *spec = NULL, *text = NULL, *file = NULL, *out = NULL, *chat = NULL;
    int decode = 0, stats = 0, special = 0;
    SftOptions so = {.chat_template = ""};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_val = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            tokenize_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--tokenizer") && has_val)
            spec = argv[++i];
        else if (!strcmp(a, "--text") && has_val)
            text = argv[++i];
        else if (!strcmp(a, "--file") && has_val)
            file = argv[++i];
        else if (!strcmp(a, "--out") && has_val)
            out = argv[++i];
        else if (!strcmp(a, "--chat") && has_val)
            chat = argv[++i];
        else if (!strcmp(a, "--chat-template") && has_val)
            so.chat_template = argv[++i];
        else if (!strcmp(a, "--train-on") && has_val) {
            const char *v = argv[++i];
            if (strcmp(v, "all") && strcmp(v, "completion"))
                fatal("tokenize: --train-on: expected completion or all, got \"%s\"", v);
            so.train_on_all = !strcmp(v, "all");
        } else if (!strcmp(a, "--decode"))
            decode = 1;
        else if (!strcmp(a, "--stats"))
            stats = 1;
        else if (!strcmp(a, "--add-special-tokens"))
            special = 1;
        else {
            fprintf(stderr, "anvil: tokenize: unknown or incomplete option \"%s\"\n", a);
            tokenize_usage(stderr);
            return 1;
        }
    }
    if (spec && chat && !text && !file && !decode && !out) {
        Tokenizer *tok = tokenizer_load(spec);
        if (!tok) fatal_err();
        int rc = do_chat(spec, tok, chat, &so);
        tokenizer_free(tok);
        if (rc) fatal_err();
        return 0;
    }
    if (!spec || (!text == !file)) {
        fprintf(stderr, "anvil: tokenize: need --tokenizer and exactly one of --text / --file\n");
        tokenize_usage(stderr);
        return 1;
    }
    Tokenizer *tok = tokenizer_load(spec);
    if (!tok) fatal_err();
    int rc = decode ? do_decode(tok, text, file, out) : do_encode(tok, text, file, out, stats, special);
    tokenizer_free(tok);
    if (rc) fatal_err();
    return 0;
}
