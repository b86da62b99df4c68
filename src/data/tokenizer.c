/* tokenizer.c - loading (gpt2, byte, tokenizer.json, vocab.txt, model
 * directories), encode/decode drivers, the post-processor template, identity
 * and save. The BPE model is in tok_bpe.c, WordPiece in tok_wordpiece.c,
 * normalizers and pre-tokenizers in tok_pretok.c, file parsing in tok_json.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "io/fsutil.h"
#include "data/tok_internal.h"
#include "data/tokenizer.h"

/* The byte tokenizer: ids 0..255 are the bytes, then the specials. */
#define BYTE_VOCAB 256
#define BYTE_EOT_ID 256
static const char EOT_TEXT[] = "<|endoftext|>";

/* GPT-2's vocabulary size (50,000 merges + 256 bytes + <|endoftext|>). */
#define GPT2_VOCAB 50257

/* ---- string tables ------------------------------------------------------------ */

void tok_strtab_build(char *const *strs, const size_t *lens, int n, char **buf, uint64_t **off)
{
    uint64_t total = 0;
    for (int i = 0; i < n; i++) total += strs[i] ? lens[i] : 0;
    *buf = xmalloc(total + 1);
    *off = xmalloc((size_t)(n + 1) * sizeof(uint64_t));
    uint64_t o = 0;
    for (int i = 0; i < n; i++) {
        (*off)[i] = o;
        if (strs[i]) {
            memcpy(*buf + o, strs[i], lens[i]);
            o += lens[i];
        }
    }
    (*off)[n] = o;
    (*buf)[o] = 0;
}

void tok_set_vocab(Tokenizer *t, char **model, size_t *model_len, int n)
{
    t->vocab_size = n;
    tok_strtab_build(model, model_len, n, &t->model_buf, &t->model_off);
    if (!t->is_special) t->is_special = xcalloc((size_t)n, 1);
}

void tok_add_file(Tokenizer *t, const char *name, const char *data, size_t len)
{
    if (t->n_files == TOK_MAX_FILES) fatal("internal: too many tokenizer files");
    TokFile *f = &t->files[t->n_files++];
    f->name = xstrdup(name);
    f->data = xmalloc(len + 1);
    memcpy(f->data, data, len);
    f->data[len] = 0;
    f->len = len;
}

static int added_cmp(const void *a, const void *b)
{
    const AddedToken *x = a, *y = b;
    if (x->len != y->len) return x->len < y->len ? 1 : -1; /* longest first */
    return x->id - y->id;
}

int tok_finish(Tokenizer *t)
{
    if (!t->piece_buf) { /* decode pieces default to the model bytes */
        size_t total = (size_t)t->model_off[t->vocab_size];
        t->piece_buf = xmalloc(total + 1);
        memcpy(t->piece_buf, t->model_buf, total + 1);
        t->piece_off = xmalloc((size_t)(t->vocab_size + 1) * sizeof(uint64_t));
        memcpy(t->piece_off, t->model_off, (size_t)(t->vocab_size + 1) * sizeof(uint64_t));
    }
    if (t->n_added) qsort(t->added, (size_t)t->n_added, sizeof(AddedToken), added_cmp);
    memset(t->added_first, 0, sizeof(t->added_first));
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].len && !t->added[i].after_norm) t->added_first[(uint8_t)t->added[i].content[0]] = 1;
    if (t->n_nadded) qsort(t->nadded, (size_t)t->n_nadded, sizeof(AddedToken), added_cmp);
    memset(t->nadded_first, 0, sizeof(t->nadded_first));
    for (int i = 0; i < t->n_nadded; i++)
        if (t->nadded[i].len) t->nadded_first[(uint8_t)t->nadded[i].content[0]] = 1;
    if (pthread_key_create(&t->tls, tok_thread_free)) return err_set("tokenizer: out of thread keys");
    t->tls_ok = 1;
    t->cache = piece_cache_new();
    return 0;
}

static Tokenizer *tok_new(void)
{
    Tokenizer *t = xcalloc(1, sizeof(Tokenizer));
    t->eos_id = t->bos_id = t->unk_id = t->tpl_bos = t->tpl_eos = -1;
    for (int i = 0; i < 256; i++) t->byte_id[i] = -1;
    return t;
}

void tokenizer_free(Tokenizer *t)
{
    if (!t) return;
    if (t->tls_ok) {
        tok_thread_free(pthread_getspecific(t->tls));
        pthread_key_delete(t->tls);
    }
    piece_cache_free(t->cache);
    free(t->model_buf);
    free(t->model_off);
    free(t->piece_buf);
    free(t->piece_off);
    free(t->first_buf);
    free(t->first_off);
    free(t->is_special);
    strmap_free(&t->vocab);
    pairmap_free(&t->merges);
    for (int i = 0; i < t->n_norm; i++) normalizer_free(&t->norm[i]);
    free(t->norm);
    for (int i = 0; i < t->n_pre; i++) pretok_free(&t->pre[i]);
    free(t->pre);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    for (int i = 0; i < t->n_nadded; i++) free(t->nadded[i].content);
    free(t->nadded);
    tok_template_free(&t->tpl_single);
    tok_template_free(&t->tpl_pair);
    for (int i = 0; i < t->n_files; i++) {
        free(t->files[i].name);
        free(t->files[i].data);
    }
    free(t);
}

/* ---- identity ----------------------------------------------------------------- */

/* A hash of everything that decides the ids: model strings, merges (as
 * merged-id per pair, visited in rank order through the vocabulary),
 * added tokens and the pipeline. Two files that tokenize alike hash alike. */
static uint64_t tok_semantic_hash(const Tokenizer *t)
{
    uint64_t h = tok_hash(t->model_buf, (size_t)t->model_off[t->vocab_size]);
    h ^= tok_hash(t->model_off, (size_t)(t->vocab_size + 1) * sizeof(uint64_t)) * 3;
    h ^= tok_hash(t->piece_buf, (size_t)t->piece_off[t->vocab_size]) * 5;
    /* merges: hash the (key, rank, id) triples in slot order of a map built with
     * a fixed size from the same content, which is deterministic */
    uint64_t mh = 0;
    for (size_t i = 0; i <= t->merges.mask && t->merges.key; i++)
        if (t->merges.key[i] != UINT64_MAX) {
            uint64_t e[2] = {t->merges.key[i],
                             ((uint64_t)(uint32_t)t->merges.rank[i] << 32) | (uint32_t)t->merges.id[i]};
            mh += tok_hash(e, sizeof(e)); /* order-independent sum */
        }
    h ^= mh * 7;
    for (int i = 0; i < t->n_added; i++) {
        const AddedToken *a = &t->added[i];
        int32_t f[5] = {a->id, a->special, a->lstrip, a->rstrip, a->single_word};
        h ^= (tok_hash(a->content, a->len) + tok_hash(f, sizeof(f))) * 11;
        if (a->after_norm) h ^= tok_hash(&a->id, sizeof(a->id)) * 59;
    }
    for (int i = 0; i < t->n_norm; i++) {
        const Normalizer *n = &t->norm[i];
        int32_t f[4] = {i, n->type, n->strip_left, n->strip_right};
        h ^= tok_hash(f, sizeof(f)) * 13;
        if (n->type == NORM_BERT) {
            int32_t b[5] = {i, n->bert_clean, n->bert_chinese, n->bert_strip, n->bert_lower};
            h ^= tok_hash(b, sizeof(b)) * 43;
        }
        if (n->pattern) h ^= tok_hash(n->pattern, n->pattern_len) * 17 + (uint64_t)i;
        if (n->content) h ^= tok_hash(n->content, n->content_len) * 19 + (uint64_t)i;
    }
    for (int i = 0; i < t->n_pre; i++) {
        const PreTok *p = &t->pre[i];
        int32_t f[8] = {i,           p->type,           p->behavior, p->invert,
                        p->is_regex, p->prepend_scheme, p->split,    p->individual};
        h ^= tok_hash(f, sizeof(f)) * 23;
        if (p->src) h ^= tok_hash(p->src, p->src_len) * 29 + (uint64_t)i + (uint64_t)p->is_regex;
        h ^= tok_hash(p->repl, (size_t)p->repl_len) * 37;
    }
    int32_t f[8] = {t->kind,          t->byte_level, t->byte_fallback, t->fuse_unk,
                    t->ignore_merges, t->unk_id,     t->add_bos,       t->vocab_size};
    h ^= tok_hash(f, sizeof(f)) * 41;
    if (t->kind == TOK_WORDPIECE) {
        int64_t w[2] = {t->wp_prefix_len, t->wp_max_chars};
        h ^= (tok_hash(w, sizeof(w)) + tok_hash(t->wp_prefix, (size_t)t->wp_prefix_len)) * 47;
    }
    /* the template decides prepare's EOS only when it ends with a special
     * token (BERT, RoBERTa); older identities (BOS-only templates) stay as they were */
    if (t->kind == TOK_WORDPIECE || t->tpl_eos >= 0)
        for (int k = 0; k < 2; k++) {
            const TokTemplate *tp = k ? &t->tpl_pair : &t->tpl_single;
            for (int i = 0; i < tp->n; i++) {
                int32_t q[4] = {k, i, tp->p[i].seq, tp->p[i].type_id};
                h ^= (tok_hash(q, sizeof(q)) + tok_hash(tp->p[i].ids, (size_t)tp->p[i].n_ids * 4)) * 53;
            }
        }
    return h;
}

static Tokenizer *tok_load_gpt2_bundled(void);

static void tok_set_identity(Tokenizer *t)
{
    uint64_t h = tok_semantic_hash(t);
    if (t->kind == TOK_BPE && t->vocab_size == GPT2_VOCAB && strcmp(t->identity, "gpt2")) {
        Tokenizer *g = tok_load_gpt2_bundled();
        if (g && tok_semantic_hash(g) == h) {
            snprintf(t->identity, sizeof(t->identity), "gpt2");
            tokenizer_free(g);
            return;
        }
        tokenizer_free(g);
    }
    if (!t->identity[0]) snprintf(t->identity, sizeof(t->identity), "hf:%016llx", (unsigned long long)h);
}

/* ---- the byte tokenizer -------------------------------------------------------- */

static Tokenizer *tok_load_byte(void)
{
    Tokenizer *t = tok_new();
    t->kind = TOK_BYTE;
    int n = BYTE_VOCAB + 1;
    char *strs[BYTE_VOCAB + 1];
    size_t lens[BYTE_VOCAB + 1];
    char bytes[BYTE_VOCAB];
    for (int i = 0; i < BYTE_VOCAB; i++) {
        bytes[i] = (char)i;
        strs[i] = &bytes[i];
        lens[i] = 1;
        t->byte_id[i] = i;
    }
    strs[BYTE_EOT_ID] = (char *)EOT_TEXT;
    lens[BYTE_EOT_ID] = strlen(EOT_TEXT);
    tok_set_vocab(t, strs, lens, n);
    t->byte_level = 1;
    t->is_special[BYTE_EOT_ID] = 1;
    t->added = xcalloc(1, sizeof(AddedToken));
    t->added[0] = (AddedToken){xstrdup(EOT_TEXT), strlen(EOT_TEXT), BYTE_EOT_ID, 1, 0, 0, 0, 0, 0};
    t->n_added = 1;
    t->eos_id = BYTE_EOT_ID;
    strmap_init(&t->vocab, (size_t)n);
    for (int i = 0; i < n; i++) strmap_put(&t->vocab, t, i);
    pairmap_init(&t->merges, 1);
    t->splittable = 1;
    snprintf(t->identity, sizeof(t->identity), "byte");
    if (tok_finish(t)) {
        tokenizer_free(t);
        return NULL;
    }
    return t;
}

/* A tokenizer.json equivalent of the byte tokenizer (ByteLevel BPE without
 * merges), written by tokenizer_save() so that checkpoints load in HF. */
static char *byte_tokenizer_json(void)
{
    ByteBuf b = {0};
    const char *head =
        "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[{\"id\":256,"
        "\"content\":\"<|endoftext|>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"
        "\"normalized\":false,\"special\":true}],\"normalizer\":null,\"pre_tokenizer\":{\"type\":"
        "\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":false,\"use_regex\":false},"
        "\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
        "\"trim_offsets\":false,\"use_regex\":false},\"model\":{\"type\":\"BPE\",\"dropout\":null,"
        "\"unk_token\":null,\"continuing_subword_prefix\":null,\"end_of_word_suffix\":null,"
        "\"fuse_unk\":false,\"byte_fallback\":false,\"ignore_merges\":false,\"vocab\":{";
    bytebuf_put(&b, head, strlen(head));
    /* GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100.. */
    int next = 0;
    for (int i = 0; i < 256; i++) {
        int printable = (i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE && i <= 0xFF);
        unsigned cp = printable ? (unsigned)i : 256u + (unsigned)next++;
        char e[32];
        int k;
        if (cp == '"' || cp == '\\')
            k = snprintf(e, sizeof(e), "%s\"\\%c\":%d", i ? "," : "", (char)cp, i);
        else if (cp < 0x80)
            k = snprintf(e, sizeof(e), "%s\"%c\":%d", i ? "," : "", (char)cp, i);
        else
            k = snprintf(e, sizeof(e), "%s\"\\u%04x\":%d", i ? "," : "", cp, i);
        bytebuf_put(&b, e, (size_t)k);
    }
    const char *tail = ",\"<|endoftext|>\":256},\"merges\":[]}}\n";
    bytebuf_put(&b, tail, strlen(tail));
    return b.a;
}

/* ---- GPT-2 bundled ------------------------------------------------------------- */

static Tokenizer *tok_load_gpt2_bundled(void)
{
    Tokenizer *t = tok_new();
    size_t vlen = (size_t)(anvil_gpt2_encoder_json_end - anvil_gpt2_encoder_json);
    size_t mlen = (size_t)(anvil_gpt2_vocab_bpe_end - anvil_gpt2_vocab_bpe);
    snprintf(t->identity, sizeof(t->identity), "gpt2");
    if (tok_load_vocab_merges(t, anvil_gpt2_encoder_json, vlen, anvil_gpt2_vocab_bpe, mlen,
                              "gpt2:encoder.json", "gpt2:vocab.bpe")) {
        tokenizer_free(t);
        return NULL;
    }
    /* saved under the names transformers' GPT2Tokenizer reads */
    tok_add_file(t, "vocab.json", anvil_gpt2_encoder_json, vlen);
    tok_add_file(t, "merges.txt", anvil_gpt2_vocab_bpe, mlen);
    return t;
}

/* ---- loading ------------------------------------------------------------------- */

/* Read a whole file; NULL with err_set() naming it. */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        err_set("%s: %s", path, strerror(errno));
        return NULL;
    }
    ByteBuf b = {0};
    char tmp[1 << 16];
    size_t k;
    while ((k = fread(tmp, 1, sizeof(tmp), f)) > 0) bytebuf_put(&b, tmp, k);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(b.a);
        err_set("%s: read error", path);
        return NULL;
    }
    if (!b.a) bytebuf_put(&b, "", 0);
    *len = b.n;
    return b.a;
}

static int is_dir(const char *p)
{
    struct stat st;
    return !stat(p, &st) && S_ISDIR(st.st_mode);
}

static int is_file(const char *p)
{
    struct stat st;
    return !stat(p, &st) && S_ISREG(st.st_mode);
}

static Tokenizer *tok_load_json_file(const char *path, const char *dir)
{
    size_t len;
    char *data = read_file(path, &len);
    if (!data) return NULL;
    if (tok_is_byte_json(data, len)) { /* saved by tokenizer_save() from the byte tokenizer */
        free(data);
        return tok_load_byte();
    }
    Tokenizer *t = tok_new();
    int rc = tok_load_hf_json(t, data, len, path, dir);
    if (!rc) {
        tok_add_file(t, "tokenizer.json", data, len);
        /* the HF side files travel with it (eos/bos names, chat template) */
        static const char *side[] = {"tokenizer_config.json", "special_tokens_map.json"};
        for (size_t i = 0; i < ARRAY_LEN(side); i++) {
            char p[4096];
            snprintf(p, sizeof(p), "%s/%s", dir, side[i]);
            size_t sl;
            char *sd = is_file(p) ? read_file(p, &sl) : NULL;
            if (sd) tok_add_file(t, side[i], sd, sl);
            free(sd);
        }
    }
    free(data);
    if (rc) {
        tokenizer_free(t);
        return NULL;
    }
    return t;
}

static Tokenizer *tok_load_pair(const char *vpath, const char *mpath)
{
    size_t vl, ml;
    char *v = read_file(vpath, &vl);
    if (!v) return NULL;
    char *m = read_file(mpath, &ml);
    if (!m) {
        free(v);
        return NULL;
    }
    Tokenizer *t = tok_new();
    int rc = tok_load_vocab_merges(t, v, vl, m, ml, vpath, mpath);
    if (!rc) {
        tok_add_file(t, "vocab.json", v, vl);
        tok_add_file(t, "merges.txt", m, ml);
    }
    free(v);
    free(m);
    if (rc) {
        tokenizer_free(t);
        return NULL;
    }
    return t;
}

/* A legacy BERT vocab.txt, with the options of tokenizer_config.json beside it
 * (do_lower_case, strip_accents, tokenize_chinese_chars, the special tokens). */
static Tokenizer *tok_load_vocab_txt(const char *path, const char *dir)
{
    size_t len, cl = 0;
    char *data = read_file(path, &len);
    if (!data) return NULL;
    char cp[4096];
    snprintf(cp, sizeof(cp), "%s/tokenizer_config.json", dir);
    char *cfg = is_file(cp) ? read_file(cp, &cl) : NULL;
    char *js = wordpiece_vocab_txt_json(data, len, path, cfg, cl, cp);
    Tokenizer *t = NULL;
    if (js) {
        t = tok_new();
        if (tok_load_hf_json(t, js, strlen(js), path, dir)) {
            tokenizer_free(t);
            t = NULL;
        }
    }
    if (t) { /* saved as it came, with a tokenizer_config.json transformers reads as BERT's */
        tok_add_file(t, "vocab.txt", data, len);
        const char *def = "{\"tokenizer_class\": \"BertTokenizer\", \"do_lower_case\": true}\n";
        tok_add_file(t, "tokenizer_config.json", cfg ? cfg : def, cfg ? cl : strlen(def));
    }
    free(js);
    free(cfg);
    free(data);
    return t;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

Tokenizer *tokenizer_load(const char *spec)
{
    Tokenizer *t = NULL;
    if (!spec || !*spec) {
        err_set("tokenizer: empty name (use gpt2, byte, a tokenizer.json or a model directory)");
        return NULL;
    }
    if (!strcmp(spec, "gpt2"))
        t = tok_load_gpt2_bundled();
    else if (!strcmp(spec, "byte"))
        return tok_load_byte();
    else if (is_dir(spec)) {
        char a[4096], b[4096];
        snprintf(a, sizeof(a), "%s/tokenizer.json", spec);
        if (is_file(a))
            t = tok_load_json_file(a, spec);
        else {
            static const char *pairs[][2] = {{"vocab.json", "merges.txt"}, {"encoder.json", "vocab.bpe"}};
            for (size_t i = 0; i < ARRAY_LEN(pairs) && !t; i++) {
                snprintf(a, sizeof(a), "%s/%s", spec, pairs[i][0]);
                snprintf(b, sizeof(b), "%s/%s", spec, pairs[i][1]);
                if (is_file(a) && is_file(b)) {
                    t = tok_load_pair(a, b);
                    if (!t) return NULL;
                }
            }
            snprintf(a, sizeof(a), "%s/vocab.txt", spec);
            if (!t && is_file(a) && !(t = tok_load_vocab_txt(a, spec))) return NULL;
            if (!t) {
                err_set(
                    "%s: no tokenizer.json, vocab.json+merges.txt, encoder.json+vocab.bpe or vocab.txt in "
                    "this directory",
                    spec);
                return NULL;
            }
        }
    } else if (is_file(spec)) {
        char dir[4096];
        snprintf(dir, sizeof(dir), "%s", spec);
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = 0;
        else
            snprintf(dir, sizeof(dir), ".");
        t = ends_with(spec, ".txt") ? tok_load_vocab_txt(spec, dir) : tok_load_json_file(spec, dir);
    } else {
        err_set(
            "%s: no such file or directory (a tokenizer is gpt2, byte, a tokenizer.json, a vocab.txt or a "
            "model directory)",
            spec);
        return NULL;
    }
    if (!t) return NULL;
    tok_set_identity(t);
    return t;
}

/* ---- encode ---------------------------------------------------------------------- */

static int is_ws(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}
static int is_word(uint8_t c)
{
    return c >= 0x80 || c == '_' || (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'z');
}

/* The added token of list (longest first) matching at s[i], or NULL. */
static const AddedToken *added_match(const AddedToken *list, int count, const uint8_t *s, size_t n, size_t i)
{
    for (int k = 0; k < count; k++) {
        const AddedToken *a = &list[k];
        if (!a->len || a->after_norm || a->len > n - i || (uint8_t)a->content[0] != s[i] ||
            memcmp(s + i, a->content, a->len))
            continue;
        if (a->single_word && ((i > 0 && is_word(s[i - 1])) || (i + a->len < n && is_word(s[i + a->len]))))
            continue;
        return a;
    }
    return NULL;
}

static void encode_text(const Tokenizer *t, TokThread *th, const uint8_t *s, size_t n, IdVec *out)
{
    if (t->kind == TOK_BYTE) {
        idvec_reserve(out, n);
        size_t i = 0;
        while (i < n) {
            const AddedToken *a = t->added_first[s[i]] ? added_match(t->added, t->n_added, s, n, i) : NULL;
            if (a) {
                out->a[out->n++] = a->id;
                i += a->len;
                idvec_reserve(out, n - i);
            } else {
                out->a[out->n++] = s[i++];
            }
        }
        return;
    }
    tok_split_added(t, th, 0, s, n, 1, out, tok_encode_segment);
}

void tok_split_added(const Tokenizer *t, TokThread *th, int after_norm, const uint8_t *s, size_t n,
                     int at_start, IdVec *out, TokSegmentFn encode)
{
    const AddedToken *list = after_norm ? t->nadded : t->added;
    int count = after_norm ? t->n_nadded : t->n_added;
    const uint8_t *first = after_norm ? t->nadded_first : t->added_first;
    /* leftmost, then longest; the text between goes to encode */
    size_t seg = 0, i = 0;
    while (i < n) {
        if (!first[s[i]]) {
            i++;
            continue;
        }
        const AddedToken *a = added_match(list, count, s, n, i);
        if (!a) {
            i++;
            continue;
        }
        size_t end = i, next = i + a->len;
        if (a->lstrip)
            while (end > seg && is_ws(s[end - 1])) end--;
        if (a->rstrip)
            while (next < n && is_ws(s[next])) next++;
        if (end > seg) encode(t, th, s + seg, end - seg, at_start && seg == 0, out);
        idvec_push(out, a->id);
        seg = i = next;
    }
    if (n > seg) encode(t, th, s + seg, n - seg, at_start && seg == 0, out);
}

/* Internal entry used by prepare/loader: append the ids of text to out. */
void tokenizer_encode_append(const Tokenizer *t, const char *text, size_t len, IdVec *out)
{
    encode_text(t, tok_thread(t), (const uint8_t *)text, len, out);
}

long tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int32_t **ids)
{
    IdVec v = {0};
    encode_text(t, tok_thread(t), (const uint8_t *)text, len, &v);
    if (!v.a) v.a = xmalloc(sizeof(int32_t));
    *ids = v.a;
    return (long)v.n;
}

/* ---- the post-processor's template ------------------------------------------------ */

/* $A alone, or $A $B:1: HF's result without a template processor. */
static const TplPiece DEFAULT_PIECES[] = {{0, NULL, 0, 0}, {1, NULL, 0, 1}};

static TokTemplate template_of(const Tokenizer *t, int pair)
{
    const TokTemplate *tp = pair ? &t->tpl_pair : &t->tpl_single;
    if (tp->n) return *tp;
    return (TokTemplate){(TplPiece *)DEFAULT_PIECES, pair ? 2 : 1};
}

int tokenizer_template_added(const Tokenizer *t, int pair)
{
    TokTemplate tp = template_of(t, pair);
    int n = 0;
    for (int i = 0; i < tp.n; i++) n += tp.p[i].n_ids;
    return n;
}

long tokenizer_apply_template(const Tokenizer *t, const int32_t *a, size_t na, const int32_t *b, size_t nb,
                              int32_t **ids, int32_t **type_ids)
{
    TokTemplate tp = template_of(t, b != NULL);
    size_t total = (size_t)tokenizer_template_added(t, b != NULL) + na + (b ? nb : 0);
    int32_t *o = xmalloc((total + 1) * sizeof(int32_t)),
            *ty = type_ids ? xmalloc((total + 1) * sizeof(int32_t)) : NULL;
    size_t k = 0;
    for (int i = 0; i < tp.n; i++) {
        const TplPiece *p = &tp.p[i];
        const int32_t *src = p->seq < 0 ? p->ids : p->seq == 0 ? a : b;
        size_t m = p->seq < 0 ? (size_t)p->n_ids : p->seq == 0 ? na : nb;
        if (m) memcpy(o + k, src, m * sizeof(int32_t));
        for (size_t x = 0; ty && x < m; x++) ty[k + x] = p->type_id;
        k += m;
    }
    *ids = o;
    if (type_ids) *type_ids = ty;
    return (long)k;
}

long tokenizer_encode_template(const Tokenizer *t, const char *text, size_t len, const char *text_b,
                               size_t len_b, int32_t **ids, int32_t **type_ids)
{
    IdVec a = {0}, b = {0};
    encode_text(t, tok_thread(t), (const uint8_t *)text, len, &a);
    if (text_b) encode_text(t, tok_thread(t), (const uint8_t *)text_b, len_b, &b);
    static const int32_t none[1] = {0}; /* B may be empty, but is not absent */
    long n = tokenizer_apply_template(t, a.a, a.n, text_b ? (b.a ? b.a : none) : NULL, b.n, ids, type_ids);
    free(a.a);
    free(b.a);
    return n;
}

/* ---- decode ---------------------------------------------------------------------- */

int tokenizer_is_continuation(const Tokenizer *t, int32_t id)
{
    if (t->wp_prefix_len <= 0 || id < 0 || id >= t->vocab_size || t->is_special[id]) return 0;
    size_t len = (size_t)(t->model_off[id + 1] - t->model_off[id]);
    return len > (size_t)t->wp_prefix_len && !memcmp(t->model_buf + t->model_off[id], t->wp_prefix, (size_t)t->wp_prefix_len);
}

const char *tokenizer_token_bytes(const Tokenizer *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->vocab_size) {
        *len = 0;
        return "";
    }
    *len = (size_t)(t->piece_off[id + 1] - t->piece_off[id]);
    return t->piece_buf + t->piece_off[id];
}

char *tokenizer_decode(const Tokenizer *t, const int32_t *ids, size_t n, size_t *len)
{
    ByteBuf b = {0};
    bytebuf_put(&b, "", 0);
    int first = 1; /* HF drops unknown ids before the decoders: the first token is the first valid one */
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->vocab_size) continue;
        if (t->dec_join_space && b.n) bytebuf_put(&b, " ", 1);
        int was_first = first;
        first = 0;
        if (was_first && t->first_off)
            bytebuf_put(&b, t->first_buf + t->first_off[id], t->first_off[id + 1] - t->first_off[id]);
        else
            bytebuf_put(&b, t->piece_buf + t->piece_off[id], t->piece_off[id + 1] - t->piece_off[id]);
    }
    if (t->dec_strip_start || t->dec_strip_stop) { /* Strip decoder after Fuse */
        size_t a = 0, e = b.n;
        for (int k = 0; k < t->dec_strip_start && a < e && b.a[a] == t->dec_strip_char; k++) a++;
        for (int k = 0; k < t->dec_strip_stop && e > a && b.a[e - 1] == t->dec_strip_char; k++) e--;
        memmove(b.a, b.a + a, e - a);
        b.n = e - a;
        b.a[b.n] = 0;
    }
    if (len) *len = b.n;
    return b.a;
}

/* ---- queries ------------------------------------------------------------------------ */

int tokenizer_vocab_size(const Tokenizer *t)
{
    return t->vocab_size;
}
int tokenizer_eos_id(const Tokenizer *t)
{
    return t->eos_id;
}
int tokenizer_bos_id(const Tokenizer *t)
{
    return t->bos_id;
}
int tokenizer_add_bos(const Tokenizer *t)
{
    return t->add_bos;
}
const char *tokenizer_identity(const Tokenizer *t)
{
    return t->identity;
}
int tokenizer_is_special(const Tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->vocab_size && t->is_special[id];
}
int tokenizer_splittable(const Tokenizer *t)
{
    return t->splittable;
}

int32_t tokenizer_token_to_id(const Tokenizer *t, const char *s, size_t len)
{
    for (int k = 0; k < t->n_added; k++)
        if (t->added[k].len == len && !memcmp(t->added[k].content, s, len)) return t->added[k].id;
    return strmap_get(&t->vocab, t, s, len);
}

/* ---- save --------------------------------------------------------------------------- */

static int write_file_atomic(const char *dir, const char *name, const char *data, size_t len)
{
    char *path = fs_join(dir, name);
    int rc = fs_write_atomic(path, data, len);
    free(path);
    return rc;
}

int tokenizer_save(const Tokenizer *t, const char *dir)
{
    if (!is_dir(dir)) return err_set("%s: not a directory", dir);
    if (t->kind == TOK_BYTE) {
        char *js = byte_tokenizer_json();
        int rc = write_file_atomic(dir, "tokenizer.json", js, strlen(js));
        free(js);
        if (rc) return rc;
        const char *cfg =
            "{\"tokenizer_class\": \"PreTrainedTokenizerFast\", \"eos_token\": \"<|endoftext|>\", "
            "\"model_max_length\": 1000000000000000019884624838656}\n";
        return write_file_atomic(dir, "tokenizer_config.json", cfg, strlen(cfg));
    }
    for (int i = 0; i < t->n_files; i++)
        if (write_file_atomic(dir, t->files[i].name, t->files[i].data, t->files[i].len)) return -1;
    if (!strcmp(t->identity, "gpt2") && t->n_files == 2 && !strcmp(t->files[0].name, "vocab.json")) {
        const char *cfg = "{\"tokenizer_class\": \"GPT2Tokenizer\", \"model_max_length\": 1024, "
                          "\"bos_token\": \"<|endoftext|>\", \"eos_token\": \"<|endoftext|>\", "
                          "\"unk_token\": \"<|endoftext|>\", \"add_prefix_space\": false}\n";
        return write_file_atomic(dir, "tokenizer_config.json", cfg, strlen(cfg));
    }
    return 0;
}

/* Exposed for tok_json.c: a tokenizer.json that is the byte tokenizer's own. */
int tok_is_byte_json(const char *data, size_t len)
{
    char *js = byte_tokenizer_json();
    int same = strlen(js) == len && !memcmp(js, data, len);
    free(js);
    return same;
}
