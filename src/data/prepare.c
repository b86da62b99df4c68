/* prepare.c - the `anvil prepare` pipeline (see prepare.h).
 *
 * Threads: reader (this file's reader_main) -> ring of chunk slots ->
 * workers (tokenize) -> the calling thread (writes shards in chunk order).
 * A chunk holds pieces of documents from one file; a piece is a whole
 * document, except that a long plain-text document is cut at safe newlines
 * when the tokenizer allows it (tokenizer_splittable: GPT-2 and byte), so
 * one big file still keeps every core busy and gives the same ids as
 * encoding it whole.
 *
 * Train/validation split: document #i (counted over all inputs in order)
 * goes to val when mix(seed, i) / 2^64 < val_fraction, so the split depends
 * only on the document order and the seed (not on threads or chunking).
 */
#include "data/prepare.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <zlib.h>

#include "core/error.h"
#include "core/rng.h"
#include "data/shard.h"
#include "data/tok_internal.h"
#include "data/textio.h"
#include "data/tokenizer.h"
#include "data/utf8.h"
#include "io/fsutil.h"

/* Text per chunk: ~10-50 ms of tokenizing per chunk, fine-grained enough to
 * balance threads, coarse enough that the hand-offs cost nothing. */
#define CHUNK_BYTES (1u << 20)
#define READ_BLOCK (1u << 20)
/* Progress bar refresh period (seconds). */
#define PROGRESS_PERIOD 0.1
#define SLOTS_PER_THREAD 2

/* ---- inputs ---------------------------------------------------------------------- */

typedef struct {
    char **path;
    uint64_t *size; /* on disk (compressed for .gz): progress and ETA */
    int n, cap;
} FileList;

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* How a file's documents are read: plain text (--docs), JSONL records (.jsonl,
 * .ndjson), or JSON (.json): an array of records or strings when the content
 * starts with '[', else JSONL. */
enum { INPUT_TEXT, INPUT_JSONL, INPUT_JSON };

static int input_kind(const char *p)
{
    if (ends_with(p, ".jsonl") || ends_with(p, ".jsonl.gz") || ends_with(p, ".ndjson") || ends_with(p, ".ndjson.gz"))
        return INPUT_JSONL;
    if (ends_with(p, ".json") || ends_with(p, ".json.gz")) return INPUT_JSON;
    return INPUT_TEXT;
}

/* Extensions picked up inside directories (files named on the command line are always read). */
static int is_text_ext(const char *p)
{
    static const char *ext[] = {".txt", ".text", ".md", ".jsonl", ".ndjson"};
    char base[4096];
    snprintf(base, sizeof(base), "%s", p);
    if (ends_with(base, ".gz")) base[strlen(base) - 3] = 0;
    for (size_t i = 0; i < ARRAY_LEN(ext); i++)
        if (ends_with(base, ext[i])) return 1;
    return 0;
}

static void files_add(FileList *f, const char *p, uint64_t size)
{
    if (f->n == f->cap) {
        f->cap = f->cap ? 2 * f->cap : 64;
        f->path = xrealloc(f->path, (size_t)f->cap * sizeof(char *));
        f->size = xrealloc(f->size, (size_t)f->cap * sizeof(uint64_t));
    }
    f->path[f->n] = xstrdup(p);
    f->size[f->n++] = size;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int walk_dir(FileList *f, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return err_set("%s: %s", dir, strerror(errno));
    char **names = NULL;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue; /* hidden files, . and .. */
        names = xrealloc(names, (size_t)(n + 1) * sizeof(char *));
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        names[n] = xmalloc(len);
        snprintf(names[n], len, "%s/%s", dir, e->d_name);
        n++;
    }
    closedir(d);
    if (n) qsort(names, (size_t)n, sizeof(char *), cmp_str);
    int rc = 0;
    for (int i = 0; i < n; i++) {
        struct stat st;
        if (!rc && !stat(names[i], &st)) {
            if (S_ISDIR(st.st_mode))
                rc = walk_dir(f, names[i]);
            else if (S_ISREG(st.st_mode) && is_text_ext(names[i]))
                files_add(f, names[i], (uint64_t)st.st_size);
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

static int collect_inputs(FileList *f, const char *const *inputs, int n)
{
    for (int i = 0; i < n; i++) {
        struct stat st;
        if (stat(inputs[i], &st)) return err_set("%s: %s", inputs[i], strerror(errno));
        if (S_ISDIR(st.st_mode)) {
            if (walk_dir(f, inputs[i])) return -1;
        } else {
            files_add(f, inputs[i], (uint64_t)st.st_size);
        }
    }
    if (!f->n) return err_set("%s: no input files (.txt, .md, .jsonl, optionally .gz) found", inputs[0]);
    return 0;
}

static void files_free(FileList *f)
{
    for (int i = 0; i < f->n; i++) free(f->path[i]);
    free(f->path);
    free(f->size);
}

/* ---- chunks and the ring ------------------------------------------------------------ */

typedef struct {
    size_t off, len; /* in the chunk's text */
    uint64_t src;    /* byte offset (text) or line number (JSONL) in the file */
    uint64_t doc;    /* document index */
    uint8_t starts, ends;
} Piece;

enum { SLOT_EMPTY, SLOT_FILLING, SLOT_FILLED, SLOT_WORKING, SLOT_DONE };

typedef struct {
    int state;
    int file, jsonl;
    ByteBuf text;
    Piece *pieces;
    int n, cap;
    uint64_t progress; /* input bytes consumed (all files) when this chunk was cut */
    int reader_failed;
    /* results */
    IdVec ids;
    uint32_t *ntok; /* tokens per piece */
    int ntok_cap;
    int failed;
    char err[ANVIL_ERR_MAX];
} Chunk;

typedef struct {
    const PrepareOptions *opt;
    const Tokenizer *tok;
    FileList files;
    Chunk *slot;
    int n_slots;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t filled, claimed; /* chunks published by the reader, claimed by workers */
    int reader_done, abort;
    int32_t bos, eos;
    /* reader state */
    uint64_t seq, next_doc, bytes_before; /* bytes_before: sizes of the files finished */
    Chunk *cur;
} Pipe;

static void chunk_reset(Chunk *c)
{
    c->text.n = 0;
    c->n = 0;
    c->ids.n = 0;
    c->failed = c->reader_failed = 0;
    c->err[0] = 0;
}

/* Reader: wait for the slot of the next sequence number; NULL on abort. */
static Chunk *reader_acquire(Pipe *p, int file, int jsonl)
{
    Chunk *c = &p->slot[p->seq % (uint64_t)p->n_slots];
    pthread_mutex_lock(&p->mu);
    while (c->state != SLOT_EMPTY && !p->abort) pthread_cond_wait(&p->cv, &p->mu);
    int ab = p->abort;
    if (!ab) c->state = SLOT_FILLING;
    pthread_mutex_unlock(&p->mu);
    if (ab) return NULL;
    chunk_reset(c);
    c->file = file;
    c->jsonl = jsonl;
    return c;
}

static void reader_publish(Pipe *p, Chunk *c, uint64_t progress)
{
    c->progress = progress;
    pthread_mutex_lock(&p->mu);
    c->state = SLOT_FILLED;
    p->filled++;
    p->seq++;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

static void chunk_add(Chunk *c, const char *s, size_t n, uint64_t src, uint64_t doc, int starts, int ends)
{
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 1024;
        c->pieces = xrealloc(c->pieces, (size_t)c->cap * sizeof(Piece));
    }
    c->pieces[c->n++] = (Piece){c->text.n, n, src, doc, (uint8_t)starts, (uint8_t)ends};
    bytebuf_put(&c->text, s, n);
}

/* ---- the reader ------------------------------------------------------------------------ */

typedef struct {
    gzFile g;
    const char *path;
    char *buf;
    size_t cap, beg, end;
    int eof;
    uint64_t line, off; /* number of the next line (1-based), its byte offset */
} LineReader;

static int lr_fill(LineReader *r)
{
    if (r->beg) {
        memmove(r->buf, r->buf + r->beg, r->end - r->beg);
        r->end -= r->beg;
        r->beg = 0;
    }
    if (r->cap - r->end < READ_BLOCK) {
        r->cap = r->cap * 2 + READ_BLOCK;
        r->buf = xrealloc(r->buf, r->cap);
    }
    int k = text_gzread(r->g, r->path, r->buf + r->end, READ_BLOCK);
    if (k < 0) return -1;
    if (k == 0) r->eof = 1;
    r->end += (size_t)k;
    return 0;
}

/* Next line without its '\n': 1, or 0 at the end, -1 on error. */
static int lr_next(LineReader *r, const char **s, size_t *n, uint64_t *off)
{
    for (;;) {
        char *nl = r->end > r->beg ? memchr(r->buf + r->beg, '\n', r->end - r->beg) : NULL;
        if (nl || (r->eof && r->end > r->beg)) {
            size_t len = nl ? (size_t)(nl - (r->buf + r->beg)) : r->end - r->beg;
            *s = r->buf + r->beg;
            *n = len;
            *off = r->off;
            r->beg += len + (nl != NULL);
            r->off += len + (nl != NULL);
            r->line++;
            return 1;
        }
        if (r->eof) return 0;
        if (lr_fill(r)) return -1;
    }
}

static int blank_line(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\f' && s[i] != '\v') return 0;
    return 1;
}

static uint64_t reader_progress(Pipe *p, gzFile g)
{
    return p->bytes_before + (uint64_t)MAX(0, (long)gzoffset(g));
}

/* Line-based inputs: JSONL records, lines, or blank-line paragraphs. */
static int read_lines(Pipe *p, int fi, gzFile g, int jsonl)
{
    LineReader r = {g, p->files.path[fi], NULL, 0, 0, 0, 0, 1, 0};
    ByteBuf para = {0};
    uint64_t para_off = 0;
    Chunk *c = NULL;
    int rc = 0, mode = jsonl ? -1 : p->opt->doc_mode;
    for (;;) {
        const char *s;
        size_t n;
        uint64_t off, line = r.line;
        int k = lr_next(&r, &s, &n, &off);
        if (k < 0) {
            rc = -1;
            break;
        }
        const char *doc = NULL;
        size_t dn = 0;
        uint64_t src = 0;
        if (k == 0) {
            if (mode == PREP_DOCS_BLANK && para.n) {
                doc = para.a;
                dn = para.n;
                src = para_off;
            }
        } else if (mode == -1 || mode == PREP_DOCS_LINE) {
            if (mode == PREP_DOCS_LINE && n && s[n - 1] == '\r') n--;
            if (n && !(mode == -1 && blank_line(s, n))) {
                doc = s;
                dn = n;
                src = mode == -1 ? line : off;
            }
        } else { /* paragraphs */
            if (blank_line(s, n)) {
                if (para.n) {
                    doc = para.a;
                    dn = para.n;
                    src = para_off;
                }
            } else {
                if (!para.n)
                    para_off = off;
                else
                    bytebuf_put(&para, "\n", 1);
                bytebuf_put(&para, s, n);
                continue;
            }
        }
        if (doc) {
            if (mode == PREP_DOCS_BLANK && dn && doc[dn - 1] == '\r') dn--;
            if (!c && !(c = reader_acquire(p, fi, jsonl))) {
                rc = -1;
                break;
            }
            chunk_add(c, doc, dn, src, p->next_doc++, 1, 1);
            if (doc == para.a) para.n = 0;
            if (c->text.n >= CHUNK_BYTES) {
                reader_publish(p, c, reader_progress(p, g));
                c = NULL;
            }
        }
        if (k == 0) break;
    }
    if (c) reader_publish(p, c, reader_progress(p, g));
    free(para.a);
    free(r.buf);
    return rc;
}

/* A cut after s[i] == '\n' keeps the ids unchanged for a splittable
 * tokenizer when the bytes around the newline are ASCII non-space. */
static int safe_cut(const char *s, size_t n, size_t i)
{
    if (i == 0 || i + 1 >= n || s[i] != '\n') return 0;
    uint8_t a = (uint8_t)s[i - 1], b = (uint8_t)s[i + 1];
    return a < 0x80 && b < 0x80 && a > ' ' && b > ' ' && a != 0x7f && b != 0x7f;
}

/* A whole file is one document; cut at safe newlines when allowed. */
static int read_whole(Pipe *p, int fi, gzFile g)
{
    int split = tokenizer_splittable(p->tok);
    ByteBuf pend = {0};
    uint64_t pend_off = 0; /* file offset of pend[0] */
    size_t untested = 0;   /* cut positions below this were tested */
    int started = 0, rc = 0;
    uint64_t doc = p->next_doc;
    char *blk = xmalloc(READ_BLOCK);
    int eof = 0;
    while (!eof) {
        int k = text_gzread(g, p->files.path[fi], blk, READ_BLOCK);
        if (k < 0) {
            rc = -1;
            break;
        }
        if (k == 0)
            eof = 1;
        else
            bytebuf_put(&pend, blk, (size_t)k);
        if (!eof && (!split || pend.n < CHUNK_BYTES)) continue;
        size_t cut = pend.n;
        if (!eof) { /* the last safe newline; [0, untested) had none */
            cut = 0;
            for (size_t i = pend.n - 1; i > 0 && i >= untested; i--)
                if (safe_cut(pend.a, pend.n, i)) {
                    cut = i + 1;
                    break;
                }
            if (!cut) { /* none yet: read more (the last byte needs its successor) */
                untested = pend.n - 1;
                continue;
            }
        }
        if (cut == 0 && !started) break; /* an empty file: no document */
        Chunk *c = reader_acquire(p, fi, 0);
        if (!c) {
            rc = -1;
            break;
        }
        chunk_add(c, pend.a ? pend.a : "", cut, pend_off, doc, !started, eof);
        started = 1;
        reader_publish(p, c, reader_progress(p, g));
        memmove(pend.a, pend.a + cut, pend.n - cut);
        pend.n -= cut;
        pend_off += cut;
        untested = pend.n ? pend.n - 1 : 0;
    }
    if (started) p->next_doc = doc + 1;
    free(blk);
    free(pend.a);
    return rc;
}

/* The first byte of the (decompressed) content that is not JSON whitespace, or -1;
 * the stream is rewound. */
static int first_byte(gzFile g)
{
    int c;
    while ((c = gzgetc(g)) == ' ' || c == '\t' || c == '\n' || c == '\r') {
    }
    gzrewind(g);
    return c < 0 ? -1 : c;
}

/* A JSON array: every element is a document, a string or a record with the text field. */
static int read_json_array(Pipe *p, int fi, gzFile g)
{
    const char *path = p->files.path[fi], *field = p->opt->jsonl_field;
    ByteBuf all = {0};
    char *blk = xmalloc(READ_BLOCK);
    int k, rc = 0;
    while ((k = text_gzread(g, path, blk, READ_BLOCK)) > 0) bytebuf_put(&all, blk, (size_t)k);
    free(blk);
    if (k < 0) {
        free(all.a);
        return -1;
    }
    json_error_t je;
    json_t *root = json_loadb(all.a ? all.a : "", all.n, JSON_ALLOW_NUL, &je);
    free(all.a);
    if (!root) return err_set("%s:%d: not valid JSON: %s", path, je.line, je.text);
    if (!json_is_array(root)) {
        json_decref(root);
        return err_set("%s: expected a JSON array of records (or JSONL)", path);
    }
    Chunk *c = NULL;
    size_t i;
    json_t *el;
    json_array_foreach(root, i, el)
    {
        json_t *v = json_is_object(el) ? json_object_get(el, field) : el;
        if (!json_is_string(v)) {
            rc = json_is_object(el) && !v ? err_set("%s: [%zu]: no \"%s\" field", path, i, field)
                 : json_is_object(el)     ? err_set("%s: [%zu]: field \"%s\" is not a string", path, i, field)
                                          : err_set("%s: [%zu]: expected a record with a \"%s\" field, or a string",
                                                    path, i, field);
            break;
        }
        if (!json_string_length(v)) continue; /* empty documents are skipped */
        if (!c && !(c = reader_acquire(p, fi, 0))) {
            rc = -1;
            break;
        }
        chunk_add(c, json_string_value(v), json_string_length(v), i, p->next_doc++, 1, 1);
        if (c->text.n >= CHUNK_BYTES) {
            reader_publish(p, c, reader_progress(p, g));
            c = NULL;
        }
    }
    if (c) reader_publish(p, c, reader_progress(p, g));
    json_decref(root);
    return rc;
}

static void *reader_main(void *arg)
{
    Pipe *p = arg;
    for (int fi = 0; fi < p->files.n; fi++) {
        const char *path = p->files.path[fi];
        gzFile g = gzopen(path, "rb");
        int rc;
        if (!g)
            rc = err_set("%s: %s", path, errno ? strerror(errno) : "cannot open");
        else if (gzbuffer(g, 1 << 17), ends_with(path, ".gz") && gzdirect(g)) {
            rc = err_set("%s: not gzip data", path);
            gzclose(g);
        } else {
            int kind = input_kind(path);
            if (kind == INPUT_JSON && first_byte(g) == '[')
                rc = read_json_array(p, fi, g);
            else if (kind != INPUT_TEXT || p->opt->doc_mode != PREP_DOCS_FILE)
                rc = read_lines(p, fi, g, kind != INPUT_TEXT);
            else
                rc = read_whole(p, fi, g);
            gzclose(g);
        }
        if (rc) {
            pthread_mutex_lock(&p->mu);
            int ab = p->abort;
            pthread_mutex_unlock(&p->mu);
            if (ab) break;
            /* the error travels in sequence order, behind the chunks before it */
            char msg[ANVIL_ERR_MAX];
            snprintf(msg, sizeof(msg), "%s", err_get());
            Chunk *c = reader_acquire(p, fi, 0);
            if (c) {
                c->reader_failed = 1;
                snprintf(c->err, sizeof(c->err), "%s", msg);
                reader_publish(p, c, p->bytes_before);
            }
            break;
        }
        p->bytes_before += p->files.size[fi];
    }
    pthread_mutex_lock(&p->mu);
    p->reader_done = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* ---- workers ------------------------------------------------------------------------------ */

static int tokenize_chunk(Pipe *p, Chunk *c)
{
    const char *path = p->files.path[c->file];
    if (c->ntok_cap < c->n) {
        c->ntok_cap = c->n;
        c->ntok = xrealloc(c->ntok, (size_t)c->n * sizeof(uint32_t));
    }
    c->ids.n = 0;
    for (int i = 0; i < c->n; i++) {
        Piece *pc = &c->pieces[i];
        const char *s = c->text.a + pc->off;
        size_t n = pc->len;
        size_t before = c->ids.n;
        json_t *root = NULL;
        if (c->jsonl) {
            json_error_t je;
            root = json_loadb(s, n, JSON_ALLOW_NUL, &je);
            if (!root)
                return err_set("%s:%llu: not valid JSON: %s", path, (unsigned long long)pc->src, je.text);
            json_t *v = json_is_object(root) ? json_object_get(root, p->opt->jsonl_field) : NULL;
            if (!v) {
                json_decref(root);
                return err_set("%s:%llu: no \"%s\" field", path, (unsigned long long)pc->src,
                               p->opt->jsonl_field);
            }
            if (!json_is_string(v)) {
                json_decref(root);
                return err_set("%s:%llu: field \"%s\" is not a string", path, (unsigned long long)pc->src,
                               p->opt->jsonl_field);
            }
            s = json_string_value(v);
            n = json_string_length(v);
        } else {
            size_t bad = utf8_validate((const uint8_t *)s, n);
            if (bad != n)
                return err_set("%s: invalid UTF-8 at byte offset %llu", path,
                               (unsigned long long)(pc->src + bad));
        }
        if (n || !pc->starts || !pc->ends) {
            if (pc->starts && p->bos >= 0) idvec_push(&c->ids, p->bos);
            tokenizer_encode_append(p->tok, s, n, &c->ids);
            if (pc->ends && p->eos >= 0) idvec_push(&c->ids, p->eos);
        }
        json_decref(root);
        c->ntok[i] = (uint32_t)(c->ids.n - before);
    }
    return 0;
}

static void *worker_main(void *arg)
{
    Pipe *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        if (p->abort) break;
        if (p->claimed < p->filled) {
            Chunk *c = &p->slot[p->claimed % (uint64_t)p->n_slots];
            p->claimed++;
            c->state = SLOT_WORKING;
            pthread_mutex_unlock(&p->mu);
            if (!c->reader_failed && tokenize_chunk(p, c)) {
                c->failed = 1;
                snprintf(c->err, sizeof(c->err), "%s", err_get());
            }
            pthread_mutex_lock(&p->mu);
            c->state = SLOT_DONE;
            pthread_cond_broadcast(&p->cv);
            continue;
        }
        if (p->reader_done) break;
        pthread_cond_wait(&p->cv, &p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* ---- the writer ------------------------------------------------------------------------------ */

/* SIGINT / SIGTERM during a run: the writer sees the flag within PROGRESS_PERIOD,
 * stops the pipeline and removes everything the run created (prepare_run). */
static volatile sig_atomic_t g_signal;

static void on_signal(int sig)
{
    g_signal = sig;
}

typedef struct {
    const char *name;
    char dir[4300];
    uint8_t *buf;
    uint64_t n, cap; /* tokens buffered, capacity in tokens */
    uint64_t tokens, docs;
    uint64_t *shard_count;
    int shards;
} Split;

typedef struct {
    const PrepareOptions *opt;
    const Tokenizer *tok;
    int width, vocab;
} Writer;

static int split_flush(Writer *w, Split *sp)
{
    if (!sp->n) return 0;
    if (mkdir(sp->dir, 0755) && errno != EEXIST) return err_set("%s: %s", sp->dir, strerror(errno));
    char path[4400];
    snprintf(path, sizeof(path), "%s/shard_%06d.tok", sp->dir, sp->shards);
    if (shard_write(path, sp->buf, sp->n, w->vocab, tokenizer_eos_id(w->tok), tokenizer_identity(w->tok), NULL))
        return -1;
    sp->shard_count = xrealloc(sp->shard_count, (size_t)(sp->shards + 1) * sizeof(uint64_t));
    sp->shard_count[sp->shards++] = sp->n;
    sp->n = 0;
    return 0;
}

static int split_append(Writer *w, Split *sp, const int32_t *ids, size_t n)
{
    uint64_t max = w->opt->shard_tokens;
    while (n) {
        uint64_t take = MIN((uint64_t)n, max - sp->n);
        if (sp->n + take > sp->cap) { /* grow toward one shard's worth */
            uint64_t cap = sp->cap ? sp->cap : (1u << 16);
            while (cap < sp->n + take) cap *= 2;
            cap = MIN(cap, max);
            sp->buf = xrealloc(sp->buf, (size_t)(cap * (uint64_t)w->width));
            sp->cap = cap;
        }
        uint8_t *o = sp->buf + sp->n * (uint64_t)w->width;
        if (w->width == 2)
            for (uint64_t i = 0; i < take; i++) {
                o[2 * i] = (uint8_t)ids[i];
                o[2 * i + 1] = (uint8_t)(ids[i] >> 8);
            }
        else
            for (uint64_t i = 0; i < take; i++)
                for (int b = 0; b < 4; b++) o[4 * i + (uint64_t)b] = (uint8_t)((uint32_t)ids[i] >> (8 * b));
        sp->n += take;
        sp->tokens += take;
        ids += take;
        n -= (size_t)take;
        if (sp->n == max && split_flush(w, sp)) return -1;
    }
    return 0;
}

static int doc_is_val(const PrepareOptions *o, uint64_t doc)
{
    if (o->val_fraction <= 0) return 0;
    /* top 53 bits as a uniform double in [0, 1) */
    double u = (double)(rng_mix(o->seed ^ rng_mix(doc + 1)) >> 11) * (1.0 / 9007199254740992.0);
    return u < o->val_fraction;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void progress_draw(uint64_t done, uint64_t total, uint64_t text_bytes, uint64_t tokens, double elapsed)
{
    enum { BAR = 28 };
    double f = total ? (double)done / (double)total : 1.0;
    if (f > 1) f = 1;
    char bar[BAR + 1];
    int fill = (int)(f * BAR);
    for (int i = 0; i < BAR; i++) bar[i] = i < fill ? '#' : '.';
    bar[BAR] = 0;
    double rate = elapsed > 0 ? (double)text_bytes / elapsed / 1e6 : 0;
    double eta = f > 0.001 ? elapsed * (1 - f) / f : 0;
    fprintf(stderr, "\rprepare [%s] %5.1f%%  %7.1f MB/s  ETA %d:%02d  %.2fM tokens ", bar, 100 * f, rate,
            (int)eta / 60, (int)eta % 60, (double)tokens / 1e6);
    fflush(stderr);
}

/* ---- output directory and manifest -------------------------------------------------------- */

/* The output directory. A run writes into a staging directory inside it,
 * DIR/.prepare.<pid>/{train,val,manifest.json}; only a run that succeeds moves
 * its shards and then its manifest into DIR (after removing an earlier run's with
 * --overwrite). A run that fails or is interrupted removes the staging directory
 * and every directory it created, so it leaves DIR as it found it. */
typedef struct {
    char stage[4200];
    char *created[64]; /* directories this run made, in order (DIR and missing parents) */
    int n_created;
} Output;

/* mkdir -p, recording each directory made. */
static int output_mkdirs(Output *o, const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s", path);
    size_t len = strlen(tmp);
    for (size_t i = 1; i <= len; i++) {
        if (tmp[i] != '/' && tmp[i] != 0) continue;
        char keep = tmp[i];
        tmp[i] = 0;
        if (!mkdir(tmp, 0755)) {
            if (o->n_created < (int)ARRAY_LEN(o->created)) o->created[o->n_created++] = xstrdup(tmp);
        } else if (errno != EEXIST) {
            return err_set("%s: %s", tmp, strerror(errno));
        } else if (!fs_is_dir(tmp)) {
            return err_set("%s: not a directory", tmp);
        }
        tmp[i] = keep;
    }
    return 0;
}

static int output_begin(Output *o, const char *out_dir)
{
    memset(o, 0, sizeof(*o));
    if (output_mkdirs(o, out_dir)) return -1;
    snprintf(o->stage, sizeof(o->stage), "%s/.prepare.%ld", out_dir, (long)getpid());
    if (fs_rm_rf(o->stage) || mkdir(o->stage, 0755))
        return err_set("%s: %s", o->stage, strerror(errno));
    return 0;
}

/* Remove what the run made: the staging directory, then the directories it created. */
static void output_abandon(Output *o)
{
    char msg[ANVIL_ERR_MAX];
    snprintf(msg, sizeof(msg), "%s", err_get());
    if (o->stage[0]) fs_rm_rf(o->stage);
    for (int i = o->n_created - 1; i >= 0; i--) rmdir(o->created[i]); /* only if empty */
    err_set("%s", msg);
}

static void output_free(Output *o)
{
    for (int i = 0; i < o->n_created; i++) free(o->created[i]);
    o->n_created = 0;
}

/* A staging directory of a run that no longer exists (killed with SIGKILL): remove it. */
static void remove_stale_stages(const char *out_dir)
{
    DIR *d = opendir(out_dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        long pid;
        char tail;
        if (sscanf(e->d_name, ".prepare.%ld%c", &pid, &tail) != 1 || pid <= 0) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive (or not ours to judge) */
        char *p = fs_join(out_dir, e->d_name);
        fs_rm_rf(p);
        free(p);
    }
    closedir(d);
}

/* Shards or a manifest of an earlier run in out_dir: found (1) or not (0). With
 * remove, delete them (the --overwrite of a run that has succeeded). */
static int old_output(const char *out_dir, int remove)
{
    char p[8448];
    snprintf(p, sizeof(p), "%s/manifest.json", out_dir);
    int found = !access(p, F_OK);
    if (found && remove) unlink(p);
    static const char *subs[] = {"train", "val"};
    for (size_t i = 0; i < ARRAY_LEN(subs); i++) {
        char d[4096];
        snprintf(d, sizeof(d), "%s/%s", out_dir, subs[i]);
        DIR *dir = opendir(d);
        if (!dir) continue;
        struct dirent *e;
        while ((e = readdir(dir))) {
            int tmp = e->d_name[0] == '.' && ends_with(e->d_name, ".tok.tmp"); /* an old run's temp file */
            if (!tmp && !ends_with(e->d_name, ".tok")) continue;
            found |= !tmp;
            if (remove || tmp) {
                snprintf(p, sizeof(p), "%s/%s", d, e->d_name);
                unlink(p);
            }
        }
        closedir(dir);
    }
    return found;
}

/* Move the staged shards and the manifest into out_dir (the manifest last: it marks the output complete). */
static int output_publish(Output *o, const PrepareOptions *opt)
{
    if (opt->overwrite) old_output(opt->out_dir, 1);
    static const char *subs[] = {"train", "val"};
    for (size_t i = 0; i < ARRAY_LEN(subs); i++) {
        char from[8448], to[8448];
        snprintf(from, sizeof(from), "%s/%s", o->stage, subs[i]);
        DIR *dir = opendir(from);
        if (!dir) continue;
        snprintf(to, sizeof(to), "%s/%s", opt->out_dir, subs[i]);
        int rc = output_mkdirs(o, to);
        struct dirent *e;
        while (!rc && (e = readdir(dir))) {
            if (!ends_with(e->d_name, ".tok") || e->d_name[0] == '.') continue;
            char a[8704], b[8704];
            snprintf(a, sizeof(a), "%s/%s", from, e->d_name);
            snprintf(b, sizeof(b), "%s/%s", to, e->d_name);
            if (rename(a, b)) rc = err_set("%s: %s", b, strerror(errno));
        }
        closedir(dir);
        if (rc) return -1;
    }
    char from[8448], to[8448];
    snprintf(from, sizeof(from), "%s/manifest.json", o->stage);
    snprintf(to, sizeof(to), "%s/manifest.json", opt->out_dir);
    if (rename(from, to)) return err_set("%s: %s", to, strerror(errno));
    fs_rm_rf(o->stage);
    o->stage[0] = 0;
    return 0;
}

static json_t *split_json(const Split *sp, const char *out_dir)
{
    json_t *o = json_object(), *arr = json_array();
    json_object_set_new(o, "documents", json_integer((json_int_t)sp->docs));
    json_object_set_new(o, "tokens", json_integer((json_int_t)sp->tokens));
    for (int i = 0; i < sp->shards; i++) {
        json_t *s = json_object();
        char f[64];
        snprintf(f, sizeof(f), "%s/shard_%06d.tok", sp->name, i);
        json_object_set_new(s, "file", json_string(f));
        json_object_set_new(s, "tokens", json_integer((json_int_t)sp->shard_count[i]));
        json_array_append_new(arr, s);
    }
    json_object_set_new(o, "shards", arr);
    (void)out_dir;
    return o;
}

static int write_manifest(const PrepareOptions *o, const char *dir, const Tokenizer *tok, const FileList *files,
                          const Split *tr, const Split *va, int width)
{
    static const char *modes[] = {"file", "blank", "line"};
    json_t *m = json_object();
    json_object_set_new(m, "format", json_string("anvil-token-shards"));
    json_object_set_new(m, "version", json_integer(SHARD_VERSION));
    json_object_set_new(m, "tokenizer", json_string(tokenizer_identity(tok)));
    json_object_set_new(m, "tokenizer_spec", json_string(o->tokenizer));
    json_object_set_new(m, "vocab_size", json_integer(tokenizer_vocab_size(tok)));
    json_object_set_new(m, "eos_id", json_integer(tokenizer_eos_id(tok)));
    json_object_set_new(m, "bos_id", json_integer(tokenizer_bos_id(tok)));
    json_object_set_new(m, "add_bos", json_boolean(tokenizer_add_bos(tok)));
    json_object_set_new(m, "token_bytes", json_integer(width));
    json_object_set_new(m, "shard_tokens", json_integer((json_int_t)o->shard_tokens));
    json_object_set_new(m, "val_fraction", json_real(o->val_fraction));
    json_object_set_new(m, "seed", json_integer((json_int_t)o->seed));
    json_object_set_new(m, "text_documents", json_string(modes[o->doc_mode]));
    json_object_set_new(m, "jsonl_field", json_string(o->jsonl_field));
    json_t *in = json_array();
    for (int i = 0; i < files->n; i++) json_array_append_new(in, json_string(files->path[i]));
    json_object_set_new(m, "inputs", in);
    json_object_set_new(m, "train", split_json(tr, o->out_dir));
    json_object_set_new(m, "val", split_json(va, o->out_dir));
    char *s = json_dumps(m, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(m);
    char path[4400], tmp[4500];
    snprintf(path, sizeof(path), "%s/manifest.json", dir);
    snprintf(tmp, sizeof(tmp), "%s/.manifest.json.tmp", dir);
    FILE *f = fopen(tmp, "w");
    int ok = f && fputs(s, f) >= 0 && fputc('\n', f) != EOF;
    if (f) ok &= fclose(f) == 0;
    free(s);
    if (!ok || rename(tmp, path)) {
        unlink(tmp);
        return err_set("%s: write failed: %s", path, strerror(errno));
    }
    return 0;
}

/* ---- run ------------------------------------------------------------------------------------ */

/* The whole input gave no tokens, or a requested split is empty: refuse (with the fix). */
static int check_splits(const PrepareOptions *o, const Split *tr, const Split *va, const char *input)
{
    uint64_t docs = tr->docs + va->docs;
    if (!docs)
        return err_set("%s: no text to prepare (the input%s empty)", input, o->n_inputs > 1 ? "s are" : " is");
    if (o->val_fraction > 0 && !va->docs)
        return err_set("%s: --val-fraction %g: none of the %llu document%s went to validation; %s", input,
                       o->val_fraction, (unsigned long long)docs, docs == 1 ? "" : "s",
                       o->doc_mode == PREP_DOCS_FILE
                           ? "with --docs file every file is one document: use --docs blank (paragraphs) or "
                             "--docs line"
                           : "give more documents or a larger fraction");
    if (o->val_fraction < 1 && !tr->docs)
        return err_set("%s: --val-fraction %g: all %llu document%s went to validation, none to training; give "
                       "more documents (--docs blank|line) or a smaller fraction",
                       input, o->val_fraction, (unsigned long long)docs, docs == 1 ? "" : "s");
    return 0;
}

/* Wait for the pipeline at most PROGRESS_PERIOD (so that progress and signals are seen). */
static void wait_a_while(Pipe *p)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)(PROGRESS_PERIOD * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&p->cv, &p->mu, &ts);
}

int prepare_run(const PrepareOptions *opt, PrepareStats *stats)
{
    memset(stats, 0, sizeof(*stats));
    if (opt->shard_tokens == 0) return err_set("prepare: --shard-tokens must be positive");
    if (opt->val_fraction < 0 || opt->val_fraction > 1)
        return err_set("prepare: --val-fraction must be in [0, 1]");
    if (strlen(opt->out_dir) > 3500) return err_set("%.80s...: --out: the path is too long", opt->out_dir);
    Pipe p = {0};
    p.opt = opt;
    if (collect_inputs(&p.files, opt->inputs, opt->n_inputs)) {
        files_free(&p.files);
        return -1;
    }
    if (opt->jsonl_field_given) {
        int any = 0;
        for (int i = 0; i < p.files.n && !any; i++) any = input_kind(p.files.path[i]) != INPUT_TEXT;
        if (!any) {
            files_free(&p.files);
            return err_set("%s: --jsonl-field %s: no input is JSON or JSONL (.jsonl, .ndjson, .json)",
                           opt->inputs[0], opt->jsonl_field);
        }
    }
    /* nothing is created before the tokenizer loads and the output directory is known to be free */
    Tokenizer *tok = tokenizer_load(opt->tokenizer);
    if (!tok) {
        files_free(&p.files);
        return -1;
    }
    remove_stale_stages(opt->out_dir);
    if (old_output(opt->out_dir, 0) && !opt->overwrite) {
        files_free(&p.files);
        tokenizer_free(tok);
        return err_set("%s: already holds prepared data (manifest.json or shards); remove it or pass --overwrite",
                       opt->out_dir);
    }
    g_signal = 0;
    void (*old_int)(int) = signal(SIGINT, on_signal), (*old_term)(int) = signal(SIGTERM, on_signal);
    Output out;
    if (output_begin(&out, opt->out_dir)) {
        output_abandon(&out);
        output_free(&out);
        signal(SIGINT, old_int);
        signal(SIGTERM, old_term);
        files_free(&p.files);
        tokenizer_free(tok);
        return -1;
    }
    p.tok = tok;
    p.eos = tokenizer_eos_id(tok);
    p.bos = tokenizer_add_bos(tok) ? tokenizer_bos_id(tok) : -1;
    int threads = opt->threads > 0 ? opt->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (threads < 1) threads = 1;
    p.n_slots = SLOTS_PER_THREAD * threads + 2;
    p.slot = xcalloc((size_t)p.n_slots, sizeof(Chunk));
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.cv, NULL);

    Writer w = {opt, tok, shard_width_for_vocab(tokenizer_vocab_size(tok)), tokenizer_vocab_size(tok)};
    Split tr = {.name = "train"}, va = {.name = "val"};
    snprintf(tr.dir, sizeof(tr.dir), "%s/train", out.stage);
    snprintf(va.dir, sizeof(va.dir), "%s/val", out.stage);
    uint64_t total_bytes = 0;
    for (int i = 0; i < p.files.n; i++) total_bytes += p.files.size[i];

    double t0 = now_s(), last_draw = 0;
    pthread_t reader, *workers = xmalloc((size_t)threads * sizeof(pthread_t));
    pthread_create(&reader, NULL, reader_main, &p);
    for (int i = 0; i < threads; i++) pthread_create(&workers[i], NULL, worker_main, &p);

    int rc = 0;
    uint64_t wseq = 0, text_bytes = 0;
    for (;;) {
        Chunk *c = &p.slot[wseq % (uint64_t)p.n_slots];
        pthread_mutex_lock(&p.mu);
        if (c->state != SLOT_DONE && !(p.reader_done && wseq >= p.seq)) wait_a_while(&p);
        int ready = c->state == SLOT_DONE, finished = p.reader_done && wseq >= p.seq && !ready;
        pthread_mutex_unlock(&p.mu);
        if (g_signal) {
            rc = err_set("prepare: interrupted (signal %d); nothing was written", (int)g_signal);
            break;
        }
        if (finished) break;
        if (ready) {
            if (c->reader_failed || c->failed) {
                rc = err_set("%s", c->err);
                break;
            }
            size_t at = 0;
            for (int i = 0; i < c->n && !rc; i++) {
                const Piece *pc = &c->pieces[i];
                Split *sp = doc_is_val(opt, pc->doc) ? &va : &tr;
                if (pc->starts && c->ntok[i]) sp->docs++;
                rc = split_append(&w, sp, c->ids.a + at, c->ntok[i]);
                at += c->ntok[i];
            }
            text_bytes += c->text.n;
            uint64_t progress = c->progress;
            pthread_mutex_lock(&p.mu);
            c->state = SLOT_EMPTY;
            pthread_cond_broadcast(&p.cv);
            pthread_mutex_unlock(&p.mu);
            wseq++;
            if (rc) break;
            if (opt->progress && now_s() - last_draw >= PROGRESS_PERIOD) {
                last_draw = now_s();
                progress_draw(progress, total_bytes, text_bytes, tr.tokens + va.tokens, last_draw - t0);
            }
        } else if (opt->progress && now_s() - last_draw >= PROGRESS_PERIOD) {
            last_draw = now_s();
            progress_draw(0, total_bytes, text_bytes, tr.tokens + va.tokens, last_draw - t0);
        }
    }
    if (rc) {
        pthread_mutex_lock(&p.mu);
        p.abort = 1;
        pthread_cond_broadcast(&p.cv);
        pthread_mutex_unlock(&p.mu);
    }
    pthread_join(reader, NULL);
    for (int i = 0; i < threads; i++) pthread_join(workers[i], NULL);
    if (!rc) rc = check_splits(opt, &tr, &va, opt->inputs[0]);
    if (!rc) rc = split_flush(&w, &tr);
    if (!rc) rc = split_flush(&w, &va);
    if (!rc) rc = write_manifest(opt, out.stage, tok, &p.files, &tr, &va, w.width);
    if (!rc && g_signal) rc = err_set("prepare: interrupted (signal %d); nothing was written", (int)g_signal);
    if (!rc) rc = output_publish(&out, opt);
    if (opt->progress) fprintf(stderr, "\r%*s\r", 110, "");
    if (rc) output_abandon(&out); /* leave nothing of this run behind */
    output_free(&out);
    stats->signal = g_signal;
    signal(SIGINT, old_int);
    signal(SIGTERM, old_term);
    stats->files = (uint64_t)p.files.n;
    stats->docs = tr.docs + va.docs;
    stats->docs_val = va.docs;
    stats->tokens_train = tr.tokens;
    stats->tokens_val = va.tokens;
    stats->shards_train = tr.shards;
    stats->shards_val = va.shards;
    stats->bytes_in = text_bytes;
    stats->seconds = now_s() - t0;
    for (Split *sp = &tr; sp; sp = sp == &tr ? &va : NULL) {
        free(sp->buf);
        free(sp->shard_count);
    }
    for (int i = 0; i < p.n_slots; i++) {
        free(p.slot[i].text.a);
        free(p.slot[i].pieces);
        free(p.slot[i].ids.a);
        free(p.slot[i].ntok);
    }
    free(p.slot);
    free(workers);
    pthread_mutex_destroy(&p.mu);
    pthread_cond_destroy(&p.cv);
    files_free(&p.files);
    tokenizer_free(tok);
    return rc;
}
