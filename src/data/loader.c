/* loader.c - batches of token windows (contract in loader.h).
 *
 * The source is one token stream: the shards in sorted path order,
 * concatenated (or the ids of a text file). Window k covers stream tokens
 * [k*T, k*T + T] (T+1 tokens: inputs are non-overlapping, the last target of
 * window k is the first input of window k+1), so an epoch has
 * W = (N - 1) / T windows. Epoch e visits them in the order perm_e(0..W-1),
 * where perm_e is a keyed Feistel permutation (identity without shuffle).
 * The epochs one after the other make one global sequence of windows, and
 * rank r of world takes its elements r, r + world, r + 2 world, ...: the
 * ranks together read exactly the windows one process reads, in the same
 * order, whatever the world size (an epoch boundary may fall between the
 * ranks of one round), so that a data-parallel run sees the data of a
 * single-process one. The state is the global position (all ranks read in
 * lock step), so a checkpoint resumes on any world size that divides it.
 * The permutation is computed per index, O(1) memory whatever W is.
 */
#include "data/loader.h"

#include <dirent.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"
#include "core/rng.h"
#include "data/mlm.h"
#include "data/sft.h"
#include "data/shard.h"
#include "data/textio.h"
#include "data/tok_internal.h"
#include "data/tokenizer.h"

/* Feistel rounds of the window permutation (6 rounds of a 64-bit mixer
 * give a well-mixed permutation; it is not cryptographic, just unbiased). */
#define PERM_ROUNDS 6

struct DataLoader {
    LoaderOptions opt;
    char *spec;
    Shard *shards;
    int n_shards;
    uint64_t *start; /* stream offset of each shard; start[n_shards] = total */
    int32_t *text;   /* a text source's ids */
    uint64_t n_tokens, n_windows, per_rank;
    int vocab;
    uint64_t n_read; /* windows this rank has read: its next is element n_read * world + rank */
    /* permutation of the current epoch */
    uint64_t perm_epoch;
    int perm_valid, half_bits;
    uint64_t keys[PERM_ROUNDS];
    int32_t *window; /* T+1 scratch */
    SftLoader *sft;  /* data.format sft: every call below goes to it */
};

/* ---- the window permutation ------------------------------------------------ */

static void perm_setup(DataLoader *dl, uint64_t epoch)
{
    int bits = 2;
    while (bits < 64 && (1ULL << bits) < dl->n_windows) bits++;
    bits += bits & 1; /* balanced halves */
    dl->half_bits = bits / 2;
    for (int r = 0; r < PERM_ROUNDS; r++)
        dl->keys[r] = rng_mix(dl->opt.seed ^ rng_mix(epoch * PERM_ROUNDS + (uint64_t)r + 1));
    dl->perm_epoch = epoch;
    dl->perm_valid = 1;
}

/* A bijection of [0, 2^(2*half_bits)), walked until it lands below W (cycle walking). */
static uint64_t perm_apply(const DataLoader *dl, uint64_t x)
{
    uint64_t mask = (1ULL << dl->half_bits) - 1;
    do {
        uint64_t l = x >> dl->half_bits, r = x & mask;
        for (int k = 0; k < PERM_ROUNDS; k++) {
            uint64_t f = rng_mix(r ^ dl->keys[k]) & mask;
            uint64_t nl = r;
            r = l ^ f;
            l = nl;
        }
        x = (l << dl->half_bits) | r;
    } while (x >= dl->n_windows);
    return x;
}

static uint64_t window_at(DataLoader *dl, uint64_t epoch, uint64_t j)
{
    if (!dl->opt.shuffle) return j;
    if (!dl->perm_valid || dl->perm_epoch != epoch) perm_setup(dl, epoch);
    return perm_apply(dl, j);
}

/* ---- sources ------------------------------------------------------------------ */

static int has_glob_chars(const char *s)
{
    return strpbrk(s, "*?[") != NULL;
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Shard paths of a directory: *.tok and *.bin, sorted. */
static char **list_dir_shards(const char *dir, int *n)
{
    DIR *d = opendir(dir);
    if (!d) return NULL;
    char **v = NULL;
    int k = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !(ends_with(e->d_name, ".tok") || ends_with(e->d_name, ".bin"))) continue;
        v = xrealloc(v, (size_t)(k + 1) * sizeof(char *));
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        v[k] = xmalloc(len);
        snprintf(v[k], len, "%s/%s", dir, e->d_name);
        k++;
    }
    closedir(d);
    if (k) qsort(v, (size_t)k, sizeof(char *), cmp_str);
    *n = k;
    return v;
}

static void free_paths(char **v, int n)
{
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

static int open_shards(DataLoader *dl, char **paths, int n)
{
    dl->shards = xcalloc((size_t)n, sizeof(Shard));
    dl->start = xcalloc((size_t)n + 1, sizeof(uint64_t));
    int vocab = 0;
    const char *ident = NULL;
    for (int i = 0; i < n; i++) {
        if (shard_open(&dl->shards[i], paths[i])) return -1;
        dl->n_shards++;
        Shard *s = &dl->shards[i];
        dl->start[i + 1] = dl->start[i] + s->count;
        vocab = MAX(vocab, s->vocab_size);
        if (s->identity[0]) {
            if (ident && strcmp(ident, s->identity))
                return err_set("%s: made with tokenizer \"%s\", but %s was made with \"%s\"", s->path,
                               s->identity, dl->shards[0].path, ident);
            ident = s->identity;
        }
    }
    dl->n_tokens = dl->start[n];
    dl->vocab = vocab;
    if (dl->opt.tokenizer && ident) { /* the config's tokenizer must be the one the shards were made with */
        Tokenizer *tok = tokenizer_load(dl->opt.tokenizer);
        if (!tok) { /* advisory for shards (e.g. an init model without tokenizer files) */
            err_clear();
            return 0;
        }
        int same = !strcmp(tokenizer_identity(tok), ident);
        char mine[64];
        snprintf(mine, sizeof(mine), "%s", tokenizer_identity(tok));
        int tv = tokenizer_vocab_size(tok);
        tokenizer_free(tok);
        if (!same)
            return err_set("%s: made with tokenizer \"%s\", but the tokenizer given is \"%s\" (%s)",
                           dl->shards[0].path, ident, mine, dl->opt.tokenizer);
        dl->vocab = tv;
    }
    return 0;
}

static int open_text(DataLoader *dl, const char *path)
{
    if (!dl->opt.tokenizer) return err_set("%s: a text source needs a tokenizer (data.tokenizer)", path);
    size_t len;
    char *text = text_read_file(path, &len);
    if (!text) return -1;
    size_t bad = text_utf8_check(text, len);
    if (bad != len) {
        free(text);
        return err_set("%s: invalid UTF-8 at byte offset %zu", path, bad);
    }
    Tokenizer *tok = tokenizer_load(dl->opt.tokenizer);
    if (!tok) {
        free(text);
        return -1;
    }
    IdVec v = {0};
    if (tokenizer_add_bos(tok) && tokenizer_bos_id(tok) >= 0) idvec_push(&v, tokenizer_bos_id(tok));
    tokenizer_encode_append(tok, text, len, &v);
    free(text);
    dl->vocab = tokenizer_vocab_size(tok);
    tokenizer_free(tok);
    dl->text = v.a;
    dl->n_tokens = v.n;
    return 0;
}

/* ---- open / next -------------------------------------------------------------- */

DataLoader *loader_open(const char *spec, const LoaderOptions *opt)
{
    if (!spec || !*spec) {
        err_set("data source: empty path");
        return NULL;
    }
    if (opt->B <= 0 || opt->T <= 0 || opt->world < 1 || opt->rank < 0 || opt->rank >= opt->world) {
        err_set("%s: bad loader options (B=%d T=%d rank=%d world=%d)", spec, opt->B, opt->T, opt->rank,
                opt->world);
        return NULL;
    }
    DataLoader *dl = xcalloc(1, sizeof(DataLoader));
    dl->opt = *opt;
    dl->opt.tokenizer = opt->tokenizer && *opt->tokenizer ? xstrdup(opt->tokenizer) : NULL;
    dl->spec = xstrdup(spec);
    dl->window = xmalloc(((size_t)opt->T + 1) * sizeof(int32_t));
    int rc = 0;
    struct stat st;
    if (opt->sft) {
        if (!(dl->sft = sft_loader_open(spec, opt))) rc = -1;
        else dl->n_windows = dl->per_rank = sft_loader_examples_per_epoch(dl->sft);
    } else if (has_glob_chars(spec) && stat(spec, &st)) {
        glob_t g;
        int gr = glob(spec, 0, NULL, &g);
        if (gr || !g.gl_pathc) {
            if (!gr) globfree(&g);
            err_set("%s: no files match", spec);
            rc = -1;
        } else {
            rc = open_shards(dl, g.gl_pathv, (int)g.gl_pathc); /* glob sorts */
            globfree(&g);
        }
    } else if (!stat(spec, &st) && S_ISDIR(st.st_mode)) {
        int n = 0;
        char **paths = list_dir_shards(spec, &n);
        if (!n) {
            char sub[4096];
            snprintf(sub, sizeof(sub), "%s/train", spec);
            int has_train = !stat(sub, &st) && S_ISDIR(st.st_mode);
            err_set("%s: no shards (*.tok, *.bin) in this directory%s", spec,
                    has_train ? " (prepare's output: use DIR/train or DIR/val)" : "");
            rc = -1;
        } else {
            rc = open_shards(dl, paths, n);
        }
        free_paths(paths, n);
    } else if (!stat(spec, &st)) {
        char *p = (char *)spec;
        rc = shard_sniff(spec) ? open_shards(dl, &p, 1) : open_text(dl, spec);
    } else {
        err_set("%s: no such file or directory", spec);
        rc = -1;
    }
    if (!rc && opt->mlm && mlm_window_tokens(opt->mlm, opt->T) < 1) {
        err_set("%s: train.seq_len %d leaves no room for text inside the template's %d ids", spec, opt->T,
                opt->T - mlm_window_tokens(opt->mlm, opt->T));
        rc = -1;
    } else if (!rc && opt->mlm) { /* masked-LM windows: no shifted target, so no extra token */
        dl->n_windows = dl->n_tokens / (uint64_t)mlm_window_tokens(opt->mlm, opt->T);
        dl->per_rank = dl->n_windows / (uint64_t)opt->world;
        if (dl->per_rank == 0) {
            err_set("%s: %llu tokens make %llu masked-LM rows of %d text tokens, too few for %d rank(s)", spec,
                    (unsigned long long)dl->n_tokens, (unsigned long long)dl->n_windows,
                    mlm_window_tokens(opt->mlm, opt->T), opt->world);
            rc = -1;
        }
    } else if (!rc && !dl->sft) {
        dl->n_windows = dl->n_tokens > 0 ? (dl->n_tokens - 1) / (uint64_t)opt->T : 0;
        dl->per_rank = dl->n_windows / (uint64_t)opt->world;
        if (dl->per_rank == 0) {
            err_set("%s: %llu tokens make %llu windows of T+1 = %d tokens, too few for %d rank(s)", spec,
                    (unsigned long long)dl->n_tokens, (unsigned long long)dl->n_windows, opt->T + 1,
                    opt->world);
            rc = -1;
        }
    }
    if (rc) {
        loader_close(dl);
        return NULL;
    }
    return dl;
}

/* Copy stream tokens [pos, pos + n) into out, checking ids against the vocab. */
static int stream_read(DataLoader *dl, uint64_t pos, size_t n, int32_t *out)
{
    if (dl->text) {
        memcpy(out, dl->text + pos, n * sizeof(int32_t));
        return 0;
    }
    int lo = 0, hi = dl->n_shards - 1; /* last shard with start <= pos */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (dl->start[mid] <= pos)
            lo = mid;
        else
            hi = mid - 1;
    }
    size_t done = 0;
    for (int s = lo; done < n && s < dl->n_shards; s++) {
        const Shard *sh = &dl->shards[s];
        uint64_t off = pos + done - dl->start[s];
        for (; off < sh->count && done < n; off++) {
            uint32_t v = shard_token(sh, off);
            if (v >= (uint32_t)dl->vocab)
                return err_set("%s: token id %u at position %llu is outside the vocabulary (size %d)",
                               sh->path, v, (unsigned long long)off, dl->vocab);
            out[done++] = (int32_t)v;
        }
    }
    return 0;
}

int loader_next(DataLoader *dl, int32_t *inputs, int32_t *targets)
{
    if (dl->sft) return sft_loader_next(dl->sft, inputs, targets);
    int T = dl->opt.T;
    for (int b = 0; b < dl->opt.B; b++) {
        uint64_t g = dl->n_read * (uint64_t)dl->opt.world + (uint64_t)dl->opt.rank;
        uint64_t w = window_at(dl, g / dl->n_windows, g % dl->n_windows);
        if (dl->opt.mlm) { /* the masking draws follow the global row g: any world size, any resume */
            int W = mlm_window_tokens(dl->opt.mlm, T);
            if (stream_read(dl, w * (uint64_t)W, (size_t)W, dl->window)) return -1;
            mlm_make_row(dl->opt.mlm, dl->window, T, dl->opt.seed, g, inputs + (size_t)b * T, targets + (size_t)b * T);
            dl->n_read++;
            continue;
        }
        if (stream_read(dl, w * (uint64_t)T, (size_t)T + 1, dl->window)) return -1;
        memcpy(inputs + (size_t)b * T, dl->window, (size_t)T * sizeof(int32_t));
        memcpy(targets + (size_t)b * T, dl->window + 1, (size_t)T * sizeof(int32_t));
        dl->n_read++;
    }
    return 0;
}

/* The global position: windows all ranks together have read (epochs, and windows into the
 * current one); with one rank, what this loader read. */
LoaderState loader_state(const DataLoader *dl)
{
    if (dl->sft) return sft_loader_state(dl->sft);
    uint64_t g = dl->n_read * (uint64_t)dl->opt.world;
    LoaderState st = {g / dl->n_windows, g % dl->n_windows};
    if (st.epoch && !st.pos && dl->n_read) { /* at an epoch's end, as a single process has always said it */
        st.epoch--;
        st.pos = dl->n_windows;
    }
    return st;
}

int loader_set_state(DataLoader *dl, LoaderState st)
{
    if (dl->sft) return sft_loader_set_state(dl->sft, st);
    if (st.pos > dl->n_windows)
        return err_set("%s: loader position %llu is past the %llu windows per epoch (different data?)",
                       dl->spec, (unsigned long long)st.pos, (unsigned long long)dl->n_windows);
    uint64_t g = st.epoch * dl->n_windows + st.pos;
    if (g % (uint64_t)dl->opt.world)
        return err_set("%s: loader position %llu (epoch %llu) is not a multiple of the %d ranks", dl->spec,
                       (unsigned long long)st.pos, (unsigned long long)st.epoch, dl->opt.world);
    dl->n_read = g / (uint64_t)dl->opt.world;
    return 0;
}

void loader_reset(DataLoader *dl)
{
    if (dl->sft) sft_loader_reset(dl->sft);
    dl->n_read = 0;
}

uint64_t loader_num_tokens(const DataLoader *dl)
{
    if (dl->sft) return sft_loader_num_tokens(dl->sft);
    return dl->n_tokens;
}
uint64_t loader_windows_per_epoch(const DataLoader *dl)
{
    return dl->per_rank;
}
int loader_vocab_size(const DataLoader *dl)
{
    if (dl->sft) return sft_loader_vocab_size(dl->sft);
    return dl->vocab;
}

const char *loader_tokenizer_identity(const DataLoader *dl)
{
    return dl->n_shards > 0 ? dl->shards[0].identity : "";
}

void loader_close(DataLoader *dl)
{
    if (!dl) return;
    sft_loader_close(dl->sft);
    for (int i = 0; i < dl->n_shards; i++) shard_close(&dl->shards[i]);
    free(dl->shards);
    free(dl->start);
    free(dl->text);
    free(dl->window);
    free((char *)dl->opt.tokenizer);
    free(dl->spec);
    free(dl);
}
