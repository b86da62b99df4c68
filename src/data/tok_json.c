/* tok_json.c - reading Hugging Face tokenizer.json files and the GPT-2 style
 * vocab.json + merges.txt pair (OpenAI's encoder.json + vocab.bpe).
 *
 * Supported (the families anvil trains): model BPE (merges as "a b" strings
 * or ["a", "b"] pairs, unk_token, fuse_unk, byte_fallback, ignore_merges) and
 * WordPiece (unk_token, continuing_subword_prefix, max_input_chars_per_word);
 * normalizers NFC/NFD/NFKC/NFKD, Lowercase, Replace, Prepend, Strip,
 * BertNormalizer, Sequence; pre-tokenizers Split, ByteLevel, Metaspace,
 * Digits, Whitespace, WhitespaceSplit, Punctuation, BertPreTokenizer,
 * Sequence; decoders ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip,
 * WordPiece, Sequence; post-processors TemplateProcessing, BertProcessing,
 * RobertaProcessing, ByteLevel, Sequence. Anything else is an error naming the
 * field, never a silent mis-tokenization.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/error.h"
#include "data/tok_internal.h"
#include "data/utf8.h"

/* ---- GPT-2's byte <-> printable character map (bytes_to_unicode) ---------- */

static uint32_t byte_cp[256];
static int16_t cp_byte[512]; /* inverse for code points < 512 (all mapped ones are < 324) */
static pthread_once_t byte_map_once = PTHREAD_ONCE_INIT;

static void byte_map_init(void)
{
    int next = 0;
    for (int i = 0; i < 512; i++) cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        byte_cp[b] = printable ? (uint32_t)b : 256u + (uint32_t)next++;
        cp_byte[byte_cp[b]] = (int16_t)b;
    }
}

/* Byte-level alphabet -> raw bytes; characters outside the map stay as UTF-8. */
static void bytelevel_to_raw(const char *s, size_t n, ByteBuf *out)
{
    out->n = 0;
    bytebuf_put(out, "", 0);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int k = utf8_decode((const uint8_t *)s + i, n - i, &cp);
        if (!k) {
            bytebuf_put(out, s + i, 1);
            i++;
            continue;
        }
        if (cp < 512 && cp_byte[cp] >= 0) {
            char b = (char)cp_byte[cp];
            bytebuf_put(out, &b, 1);
        } else {
            bytebuf_put(out, s + i, (size_t)k);
        }
        i += (size_t)k;
    }
}

/* ---- small JSON helpers -------------------------------------------------------- */

typedef struct {
    const char *path; /* for messages */
} Ctx;

static const char *jstr(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int jbool(json_t *o, const char *key, int def)
{
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

/* A boolean field: def when absent (or null with allow_null: -1); -2 with
 * err_set() naming the field when it has another type. */
static int jbool_field(Ctx *c, json_t *o, const char *key, int def, int allow_null, const char *field)
{
    json_t *v = json_object_get(o, key);
    if (!v) return def;
    if (json_is_boolean(v)) return json_is_true(v);
    if (json_is_null(v) && allow_null) return -1;
    err_set("%s: %s.%s: expected true or false%s", c->path, field, key, allow_null ? " (or null)" : "");
    return -2;
}

/* Split/Replace patterns: {"String": s} or {"Regex": r} */
static int parse_pattern(Ctx *c, json_t *o, const char *field, char **src, size_t *len, int *is_regex)
{
    json_t *p = json_object_get(o, "pattern");
    json_t *s = json_object_get(p, "String"), *r = json_object_get(p, "Regex");
    if (json_is_string(s))
        *is_regex = 0;
    else if (json_is_string(r)) {
        *is_regex = 1;
        s = r;
    } else
        return err_set("%s: %s.pattern: expected {\"String\": ...} or {\"Regex\": ...}", c->path, field);
    *len = json_string_length(s);
    *src = xmalloc(*len + 1);
    memcpy(*src, json_string_value(s), *len + 1);
    return 0;
}

/* ---- normalizers ------------------------------------------------------------------ */

static int parse_normalizer(Ctx *c, Tokenizer *t, json_t *o, const char *field)
{
    if (json_is_null(o) || !o) return 0;
    const char *type = jstr(o, "type");
    if (!type) return err_set("%s: %s: missing \"type\"", c->path, field);
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(o, "normalizers");
        size_t i;
        json_t *v;
        json_array_foreach(arr, i, v) if (parse_normalizer(c, t, v, field)) return -1;
        return 0;
    }
    Normalizer nm = {0};
    if (!strcmp(type, "NFC"))
        nm.type = NORM_NFC;
    else if (!strcmp(type, "NFD"))
        nm.type = NORM_NFD;
    else if (!strcmp(type, "NFKC"))
        nm.type = NORM_NFKC;
    else if (!strcmp(type, "NFKD"))
        nm.type = NORM_NFKD;
    else if (!strcmp(type, "Lowercase"))
        nm.type = NORM_LOWER;
    else if (!strcmp(type, "Prepend")) {
        nm.type = NORM_PREPEND;
        const char *p = jstr(o, "prepend");
        if (!p) return err_set("%s: %s: Prepend without \"prepend\"", c->path, field);
        nm.content = xstrdup(p);
        nm.content_len = strlen(p);
    } else if (!strcmp(type, "Replace")) {
        nm.type = NORM_REPLACE;
        int is_re;
        if (parse_pattern(c, o, field, &nm.pattern, &nm.pattern_len, &is_re)) return -1;
        const char *ct = jstr(o, "content");
        nm.content = xstrdup(ct ? ct : "");
        nm.content_len = strlen(nm.content);
        if (is_re && !(nm.re = tok_regex_compile(nm.pattern, nm.pattern_len, c->path))) {
            normalizer_free(&nm);
            return -1;
        }
    } else if (!strcmp(type, "Strip")) {
        nm.type = NORM_STRIP;
        nm.strip_left = jbool(o, "strip_left", 1);
        nm.strip_right = jbool(o, "strip_right", 1);
    } else if (!strcmp(type, "BertNormalizer")) { /* defaults: HF's BertNormalizer() */
        nm.type = NORM_BERT;
        nm.bert_clean = jbool_field(c, o, "clean_text", 1, 0, field);
        nm.bert_chinese = jbool_field(c, o, "handle_chinese_chars", 1, 0, field);
        nm.bert_lower = jbool_field(c, o, "lowercase", 1, 0, field);
        nm.bert_strip = jbool_field(c, o, "strip_accents", -1, 1, field);
        if (nm.bert_clean < 0 || nm.bert_chinese < 0 || nm.bert_lower < 0 || nm.bert_strip < -1) return -1;
        if (nm.bert_strip < 0) nm.bert_strip = nm.bert_lower; /* null: strip accents when lowercasing */
    } else {
        return err_set("%s: %s: normalizer \"%s\" is not supported", c->path, field, type);
    }
    t->norm = xrealloc(t->norm, (size_t)(t->n_norm + 1) * sizeof(Normalizer));
    t->norm[t->n_norm++] = nm;
    return 0;
}

/* ---- pre-tokenizers ------------------------------------------------------------------ */

static void pre_push(Tokenizer *t, PreTok p)
{
    t->pre = xrealloc(t->pre, (size_t)(t->n_pre + 1) * sizeof(PreTok));
    t->pre[t->n_pre++] = p;
}

static int pre_push_regex(Ctx *c, Tokenizer *t, const char *re, int behavior, int invert)
{
    PreTok p = {.type = PRE_SPLIT, .behavior = behavior, .invert = invert, .is_regex = 1};
    p.src = xstrdup(re);
    p.src_len = strlen(re);
    if (!(p.re = tok_regex_compile(re, p.src_len, c->path))) {
        free(p.src);
        return -1;
    }
    p.fast = behavior == SPLIT_ISOLATED && !invert ? split_fast_kind(re) : SPLIT_FAST_NONE;
    pre_push(t, p);
    return 0;
}

static int parse_prepend_scheme(Ctx *c, json_t *o, const char *field, int *scheme)
{
    const char *ps = jstr(o, "prepend_scheme");
    if (ps) {
        if (!strcmp(ps, "always"))
            *scheme = PREPEND_ALWAYS;
        else if (!strcmp(ps, "first"))
            *scheme = PREPEND_FIRST;
        else if (!strcmp(ps, "never"))
            *scheme = PREPEND_NEVER;
        else
            return err_set("%s: %s.prepend_scheme: unknown value \"%s\"", c->path, field, ps);
    } else { /* older files: add_prefix_space */
        *scheme = jbool(o, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER;
    }
    return 0;
}

static int parse_replacement(Ctx *c, json_t *o, const char *field, char *repl, int *len)
{
    const char *r = jstr(o, "replacement");
    if (!r) r = "\xE2\x96\x81"; /* U+2581 LOWER ONE EIGHTH BLOCK */
    size_t n = strlen(r);
    if (n == 0 || n > 4) return err_set("%s: %s.replacement: expected one character", c->path, field);
    memcpy(repl, r, n);
    *len = (int)n;
    return 0;
}

static int parse_pretok(Ctx *c, Tokenizer *t, json_t *o, const char *field)
{
    if (json_is_null(o) || !o) return 0;
    const char *type = jstr(o, "type");
    if (!type) return err_set("%s: %s: missing \"type\"", c->path, field);
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(o, "pretokenizers");
        size_t i;
        json_t *v;
        json_array_foreach(arr, i, v) if (parse_pretok(c, t, v, field)) return -1;
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) {
        t->byte_level = 1;
        if (jbool(o, "add_prefix_space", 1)) pre_push(t, (PreTok){.type = PRE_BYTELEVEL_PREFIX});
        if (jbool(o, "use_regex", 1) && pre_push_regex(c, t, GPT2_SPLIT_PATTERN, SPLIT_ISOLATED, 0))
            return -1;
        return 0;
    }
    if (!strcmp(type, "Split")) {
        PreTok p = {.type = PRE_SPLIT};
        if (parse_pattern(c, o, field, &p.src, &p.src_len, &p.is_regex)) return -1;
        const char *b = jstr(o, "behavior");
        static const char *names[] = {"Isolated", "Removed", "MergedWithPrevious", "MergedWithNext",
                                      "Contiguous"};
        p.behavior = -1;
        for (int i = 0; i < 5; i++)
            if (b && !strcmp(b, names[i])) p.behavior = i;
        if (p.behavior < 0) {
            free(p.src);
            return err_set("%s: %s.behavior: unknown value \"%s\"", c->path, field, b ? b : "(missing)");
        }
        p.invert = jbool(o, "invert", 0);
        if (p.is_regex) {
            if (!(p.re = tok_regex_compile(p.src, p.src_len, c->path))) {
                free(p.src);
                return -1;
            }
            p.fast = p.behavior == SPLIT_ISOLATED && !p.invert ? split_fast_kind(p.src) : SPLIT_FAST_NONE;
        }
        pre_push(t, p);
        return 0;
    }
    if (!strcmp(type, "Metaspace")) {
        PreTok p = {.type = PRE_METASPACE};
        if (parse_replacement(c, o, field, p.repl, &p.repl_len)) return -1;
        if (parse_prepend_scheme(c, o, field, &p.prepend_scheme)) return -1;
        p.split = jbool(o, "split", 1);
        pre_push(t, p);
        return 0;
    }
    if (!strcmp(type, "Digits")) {
        pre_push(t, (PreTok){.type = PRE_DIGITS, .individual = jbool(o, "individual_digits", 0)});
        return 0;
    }
    if (!strcmp(type, "BertPreTokenizer")) {
        pre_push(t, (PreTok){.type = PRE_BERT});
        return 0;
    }
    /* HF's definitions of these three, as regex splits */
    /* Rust's \w (HF's regex engine): Alphabetic, marks, decimal digits, connectors, joiners */
    if (!strcmp(type, "Whitespace"))
        return pre_push_regex(c, t,
                              "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]+|"
                              "[^\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}\\s]+",
                              SPLIT_REMOVED, 1);
    if (!strcmp(type, "WhitespaceSplit")) return pre_push_regex(c, t, "\\s+", SPLIT_REMOVED, 0);
    if (!strcmp(type, "Punctuation")) return pre_push_regex(c, t, "[\\p{P}$+<=>^`|~]", SPLIT_ISOLATED, 0);
    return err_set("%s: %s: pre-tokenizer \"%s\" is not supported", c->path, field, type);
}

/* ---- decoders (applied per token at load time) ------------------------------------------ */

enum { DEC_BYTELEVEL, DEC_METASPACE, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_WORDPIECE };

typedef struct {
    int type;
    char *pattern, *content; /* WordPiece: content = the prefix */
    size_t pattern_len, content_len;
    pcre2_code *re;
    char repl[8];
    int repl_len, prepend_scheme;
    int start, stop;
    int cleanup; /* WordPiece */
} DecStep;

typedef struct {
    DecStep *s;
    int n;
} DecList;

static void declist_free(DecList *d)
{
    for (int i = 0; i < d->n; i++) {
        free(d->s[i].pattern);
        free(d->s[i].content);
        if (d->s[i].re) pcre2_code_free(d->s[i].re);
    }
    free(d->s);
}

static int parse_decoder(Ctx *c, json_t *o, DecList *d)
{
    if (json_is_null(o) || !o) return 0;
    const char *type = jstr(o, "type");
    if (!type) return err_set("%s: decoder: missing \"type\"", c->path);
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(o, "decoders");
        size_t i;
        json_t *v;
        json_array_foreach(arr, i, v) if (parse_decoder(c, v, d)) return -1;
        return 0;
    }
    DecStep s = {0};
    if (!strcmp(type, "ByteLevel"))
        s.type = DEC_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback"))
        s.type = DEC_BYTEFALLBACK;
    else if (!strcmp(type, "Fuse"))
        s.type = DEC_FUSE;
    else if (!strcmp(type, "Strip")) {
        s.type = DEC_STRIP;
        const char *ct = jstr(o, "content");
        if (!ct || strlen(ct) != 1)
            return err_set("%s: decoder.Strip.content: expected one ASCII character", c->path);
        s.content = xstrdup(ct);
        s.content_len = 1;
        s.start = (int)json_integer_value(json_object_get(o, "start"));
        s.stop = (int)json_integer_value(json_object_get(o, "stop"));
    } else if (!strcmp(type, "WordPiece")) {
        s.type = DEC_WORDPIECE;
        json_t *pv = json_object_get(o, "prefix");
        if (pv && !json_is_string(pv))
            return err_set("%s: decoder.WordPiece.prefix: expected a string", c->path);
        s.content_len = pv ? json_string_length(pv) : 2;
        s.content = xmalloc(s.content_len + 1);
        memcpy(s.content, pv ? json_string_value(pv) : "##", s.content_len + 1);
        if ((s.cleanup = jbool_field(c, o, "cleanup", 1, 0, "decoder.WordPiece")) < 0) {
            free(s.content);
            return -1;
        }
    } else if (!strcmp(type, "Metaspace")) {
        s.type = DEC_METASPACE;
        if (parse_replacement(c, o, "decoder", s.repl, &s.repl_len)) return -1;
        if (parse_prepend_scheme(c, o, "decoder", &s.prepend_scheme)) return -1;
    } else if (!strcmp(type, "Replace")) {
        s.type = DEC_REPLACE;
        int is_re;
        if (parse_pattern(c, o, "decoder", &s.pattern, &s.pattern_len, &is_re)) return -1;
        const char *ct = jstr(o, "content");
        s.content = xstrdup(ct ? ct : "");
        s.content_len = strlen(s.content);
        if (is_re && !(s.re = tok_regex_compile(s.pattern, s.pattern_len, c->path))) {
            free(s.pattern);
            free(s.content);
            return -1;
        }
    } else {
        return err_set("%s: decoder \"%s\" is not supported", c->path, type);
    }
    d->s = xrealloc(d->s, (size_t)(d->n + 1) * sizeof(DecStep));
    d->s[d->n++] = s;
    return 0;
}

static void replace_all(const char *in, size_t n, const char *pat, size_t pn, const char *rep, size_t rn,
                        ByteBuf *out)
{
    out->n = 0;
    bytebuf_put(out, "", 0);
    for (size_t i = 0; i < n;) {
        if (pn && i + pn <= n && !memcmp(in + i, pat, pn)) {
            bytebuf_put(out, rep, rn);
            i += pn;
        } else {
            bytebuf_put(out, in + i, 1);
            i++;
        }
    }
}

/* The WordPiece decoder's cleanup of tokenization artifacts (HF's list, applied in this order). */
static const char *const WP_CLEANUP[][2] = {
    {" .", "."},   {" ?", "?"},           {" !", "!"},   {" ,", ","},     {" ' ", "'"},   {" n't", "n't"},
    {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};

/* Apply the per-token decoder steps to one token string. first: it is the
 * first token of the output (Metaspace drops its replacement characters; the
 * WordPiece decoder neither strips the prefix nor adds a space). */
static void decode_token(Tokenizer *t, const DecList *d, const char *s, size_t n, int first, ByteBuf *out)
{
    ByteBuf a = {0}, b = {0};
    bytebuf_put(&a, s, n);
    int fused = 0;
    for (int k = 0; k < d->n; k++) {
        const DecStep *st = &d->s[k];
        b.n = 0;
        bytebuf_put(&b, "", 0);
        switch (st->type) {
        case DEC_BYTELEVEL:
            bytelevel_to_raw(a.a, a.n, &b);
            break;
        case DEC_BYTEFALLBACK: {
            unsigned v;
            char end;
            if (a.n == 6 && !memcmp(a.a, "<0x", 3) && a.a[5] == '>' &&
                sscanf(a.a + 3, "%2x%c", &v, &end) == 2 && end == '>') {
                char byte = (char)v;
                bytebuf_put(&b, &byte, 1);
            } else {
                bytebuf_put(&b, a.a, a.n);
            }
            break;
        }
        case DEC_FUSE:
            fused = 1;
            bytebuf_put(&b, a.a, a.n);
            break;
        case DEC_STRIP:
            if (fused) { /* applies to the whole output: done in tokenizer_decode */
                t->dec_strip_start = st->start;
                t->dec_strip_stop = st->stop;
                t->dec_strip_char = st->content[0];
                bytebuf_put(&b, a.a, a.n);
            } else {
                size_t x = 0, y = a.n;
                for (int i = 0; i < st->start && x < y && a.a[x] == st->content[0]; i++) x++;
                for (int i = 0; i < st->stop && y > x && a.a[y - 1] == st->content[0]; i++) y--;
                bytebuf_put(&b, a.a + x, y - x);
            }
            break;
        case DEC_WORDPIECE:
            if (first)
                bytebuf_put(&b, a.a, a.n);
            else if (a.n >= st->content_len && !memcmp(a.a, st->content, st->content_len))
                bytebuf_put(&b, a.a + st->content_len, a.n - st->content_len);
            else {
                bytebuf_put(&b, " ", 1);
                bytebuf_put(&b, a.a, a.n);
            }
            for (size_t r = 0; st->cleanup && r < ARRAY_LEN(WP_CLEANUP); r++) {
                ByteBuf tmp = {0};
                replace_all(b.a, b.n, WP_CLEANUP[r][0], strlen(WP_CLEANUP[r][0]), WP_CLEANUP[r][1],
                            strlen(WP_CLEANUP[r][1]), &tmp);
                free(b.a);
                b = tmp;
            }
            break;
        case DEC_METASPACE:
            if (first && st->prepend_scheme != PREPEND_NEVER)
                replace_all(a.a, a.n, st->repl, (size_t)st->repl_len, "", 0, &b);
            else
                replace_all(a.a, a.n, st->repl, (size_t)st->repl_len, " ", 1, &b);
            break;
        case DEC_REPLACE:
            if (st->re) {
                PCRE2_SIZE outlen = a.n * 4 + st->content_len * a.n + 64;
                char *o = xmalloc(outlen);
                int rc = pcre2_substitute(
                    st->re, (PCRE2_SPTR)a.a, a.n, 0, PCRE2_SUBSTITUTE_GLOBAL | PCRE2_SUBSTITUTE_LITERAL, NULL,
                    NULL, (PCRE2_SPTR)st->content, st->content_len, (PCRE2_UCHAR *)o, &outlen);
                if (rc >= 0)
                    bytebuf_put(&b, o, outlen);
                else
                    bytebuf_put(&b, a.a, a.n);
                free(o);
            } else {
                replace_all(a.a, a.n, st->pattern, st->pattern_len, st->content, st->content_len, &b);
            }
            break;
        }
        ByteBuf tmp = a;
        a = b;
        b = tmp;
    }
    out->n = 0;
    bytebuf_put(out, a.a ? a.a : "", a.n);
    free(a.a);
    free(b.a);
}

/* ---- merges ------------------------------------------------------------------------ */

/* Add merge #rank (a, b), both given in the file's alphabet. */
static int add_merge(Ctx *c, Tokenizer *t, const char *a, size_t an, const char *b, size_t bn, int32_t rank,
                     ByteBuf *tmp)
{
    int32_t ia, ib, im;
    ByteBuf ab = {0};
    if (t->byte_level) {
        bytelevel_to_raw(a, an, tmp);
        ia = strmap_get(&t->vocab, t, tmp->a, tmp->n);
        bytebuf_put(&ab, tmp->a, tmp->n);
        bytelevel_to_raw(b, bn, tmp);
        ib = strmap_get(&t->vocab, t, tmp->a, tmp->n);
        bytebuf_put(&ab, tmp->a, tmp->n);
    } else {
        ia = strmap_get(&t->vocab, t, a, an);
        ib = strmap_get(&t->vocab, t, b, bn);
        bytebuf_put(&ab, a, an);
        bytebuf_put(&ab, b, bn);
    }
    im = strmap_get(&t->vocab, t, ab.a, ab.n);
    free(ab.a);
    if (ia < 0 || ib < 0 || im < 0)
        return err_set("%s: merges[%d]: \"%.*s %.*s\": %s not in the vocabulary", c->path, (int)rank, (int)an,
                       a, (int)bn, b,
                       ia < 0   ? "the left token is"
                       : ib < 0 ? "the right token is"
                                : "the merged token is");
    pairmap_put(&t->merges, ia, ib, rank, im);
    return 0;
}

/* merges.txt / vocab.bpe: "#version" line, then "a b" per line. */
static int parse_merges_txt(Ctx *c, Tokenizer *t, const char *m, size_t mlen)
{
    size_t nlines = 0;
    for (size_t i = 0; i < mlen; i++) nlines += m[i] == '\n';
    pairmap_init(&t->merges, nlines + 1);
    ByteBuf tmp = {0};
    int32_t rank = 0;
    size_t line = 0;
    for (size_t i = 0; i < mlen;) {
        const char *e = memchr(m + i, '\n', mlen - i);
        size_t j = e ? (size_t)(e - m) : mlen, k = j;
        line++;
        if (k > i && m[k - 1] == '\r') k--;
        if (k > i && !(line == 1 && !strncmp(m + i, "#version", 8))) {
            const char *sp = memchr(m + i, ' ', k - i);
            if (!sp || memchr(sp + 1, ' ', (size_t)(m + k - sp - 1))) {
                free(tmp.a);
                return err_set("%s: line %zu: expected two tokens separated by one space", c->path, line);
            }
            if (add_merge(c, t, m + i, (size_t)(sp - m - i), sp + 1, (size_t)(m + k - sp - 1), rank++,
                          &tmp)) {
                free(tmp.a);
                return -1;
            }
        }
        i = j + 1;
    }
    free(tmp.a);
    return 0;
}

static int parse_merges_json(Ctx *c, Tokenizer *t, json_t *arr)
{
    pairmap_init(&t->merges, json_array_size(arr) + 1);
    ByteBuf tmp = {0};
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        const char *a, *b;
        size_t an, bn;
        if (json_is_string(v)) { /* "a b" */
            const char *s = json_string_value(v);
            const char *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                free(tmp.a);
                return err_set("%s: model.merges[%zu]: expected \"a b\"", c->path, i);
            }
            a = s;
            an = (size_t)(sp - s);
            b = sp + 1;
            bn = strlen(b);
        } else if (json_is_array(v) && json_array_size(v) == 2 && json_is_string(json_array_get(v, 0)) &&
                   json_is_string(json_array_get(v, 1))) {
            a = json_string_value(json_array_get(v, 0));
            an = json_string_length(json_array_get(v, 0));
            b = json_string_value(json_array_get(v, 1));
            bn = json_string_length(json_array_get(v, 1));
        } else {
            free(tmp.a);
            return err_set("%s: model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", c->path, i);
        }
        if (add_merge(c, t, a, an, b, bn, (int32_t)i, &tmp)) {
            free(tmp.a);
            return -1;
        }
    }
    free(tmp.a);
    return 0;
}

/* ---- vocabulary -------------------------------------------------------------------- */

/* Per-id strings in the file's alphabet (NULL for unused ids). */
typedef struct {
    char **s;
    size_t *len;
    int n;
} Strs;

static void strs_set(Strs *v, int id, const char *s, size_t len)
{
    if (id >= v->n) {
        int n = v->n ? v->n : 1024;
        while (n <= id) n *= 2;
        v->s = xrealloc(v->s, (size_t)n * sizeof(char *));
        v->len = xrealloc(v->len, (size_t)n * sizeof(size_t));
        for (int i = v->n; i < n; i++) {
            v->s[i] = NULL;
            v->len[i] = 0;
        }
        v->n = n;
    }
    free(v->s[id]);
    v->s[id] = xmalloc(len + 1);
    memcpy(v->s[id], s, len);
    v->s[id][len] = 0;
    v->len[id] = len;
}

static void strs_free(Strs *v)
{
    for (int i = 0; i < v->n; i++) free(v->s[i]);
    free(v->s);
    free(v->len);
}

/* Build the model strings (raw bytes for byte-level), the pieces, and the vocab
 * map (of every id, or only of the ids with in_map[id] set when in_map is given).
 * over (may be NULL): strings that replace hf's as the decoders' input (the
 * normalized content of normalized added tokens, which HF decodes). */
static void build_tables(Tokenizer *t, const Strs *hf, int n, const DecList *dec, const uint8_t *in_map,
                         const Strs *over)
{
    char **model = xcalloc((size_t)n, sizeof(char *));
    size_t *mlen = xcalloc((size_t)n, sizeof(size_t));
    ByteBuf tmp = {0};
    for (int i = 0; i < n; i++) {
        if (i >= hf->n || !hf->s[i]) continue;
        if (t->byte_level && !t->is_special[i]) {
            bytelevel_to_raw(hf->s[i], hf->len[i], &tmp);
            model[i] = xmalloc(tmp.n + 1);
            memcpy(model[i], tmp.a, tmp.n);
            mlen[i] = tmp.n;
        } else {
            model[i] = xmalloc(hf->len[i] + 1);
            memcpy(model[i], hf->s[i], hf->len[i]);
            mlen[i] = hf->len[i];
        }
    }
    tok_set_vocab(t, model, mlen, n);
    strmap_init(&t->vocab, (size_t)n);
    for (int i = 0; i < n; i++)
        if (model[i] && (!in_map || in_map[i])) strmap_put(&t->vocab, t, i);
    /* decode pieces: specials are their content (HF runs them through the
     * decoders too, which matters only for WordPiece's spaces); others go
     * through the decoders */
    int has_first = 0, dec_specials = 0;
    for (int k = 0; dec && k < dec->n; k++) {
        if (dec->s[k].type == DEC_METASPACE && dec->s[k].prepend_scheme != PREPEND_NEVER) has_first = 1;
        if (dec->s[k].type == DEC_WORDPIECE) has_first = dec_specials = 1;
    }
    char **piece = xcalloc((size_t)n, sizeof(char *)),
         **first = has_first ? xcalloc((size_t)n, sizeof(char *)) : NULL;
    size_t *plen = xcalloc((size_t)n, sizeof(size_t)),
           *flen = has_first ? xcalloc((size_t)n, sizeof(size_t)) : NULL;
    for (int i = 0; i < n; i++) {
        if (!model[i]) continue;
        int o = over && i < over->n && over->s[i];
        const char *src = o ? over->s[i] : hf->s[i];
        size_t src_len = o ? over->len[i] : hf->len[i];
        for (int f = 0; f < 1 + has_first; f++) {
            char **dst = f ? &first[i] : &piece[i];
            size_t *dl = f ? &flen[i] : &plen[i];
            if ((t->is_special[i] && !dec_specials) || !dec || !dec->n) {
                if (t->is_special[i] || !t->byte_level || o) {
                    *dst = xmalloc(src_len + 1);
                    memcpy(*dst, src, src_len);
                    *dl = src_len;
                } else {
                    *dst = xmalloc(mlen[i] + 1);
                    memcpy(*dst, model[i], mlen[i]);
                    *dl = mlen[i];
                }
                continue;
            }
            decode_token(t, dec, src, src_len, f, &tmp);
            *dst = xmalloc(tmp.n + 1);
            memcpy(*dst, tmp.a, tmp.n);
            *dl = tmp.n;
        }
    }
    tok_strtab_build(piece, plen, n, &t->piece_buf, &t->piece_off);
    if (has_first) tok_strtab_build(first, flen, n, &t->first_buf, &t->first_off);
    for (int i = 0; i < n; i++) {
        free(model[i]);
        free(piece[i]);
        if (first) free(first[i]);
    }
    free(model);
    free(mlen);
    free(piece);
    free(plen);
    free(first);
    free(flen);
    free(tmp.a);
}

/* ---- special tokens: eos / bos ------------------------------------------------------ */

static int32_t special_named(Tokenizer *t, const char *const *names, size_t k)
{
    for (size_t i = 0; i < k; i++)
        for (int j = 0; j < t->n_added; j++)
            if (!strcmp(t->added[j].content, names[i])) return t->added[j].id;
    return -1;
}

/* tokenizer_config.json: "eos_token": "..." or {"content": "..."} */
static int32_t config_token(Tokenizer *t, json_t *cfg, const char *key)
{
    json_t *v = json_object_get(cfg, key);
    const char *name = json_is_string(v) ? json_string_value(v) : jstr(v, "content");
    if (!name) return -1;
    return tokenizer_token_to_id(t, name, strlen(name));
}

static json_t *load_side_json(const char *dir, const char *name)
{
    char p[4096];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    return json_load_file(p, 0, NULL);
}

static int32_t config_id(json_t *cfg, const char *key)
{
    json_t *v = json_object_get(cfg, key);
    if (json_is_array(v)) v = json_array_get(v, 0);
    return json_is_integer(v) ? (int32_t)json_integer_value(v) : -1;
}

static void find_eos_bos(Tokenizer *t, const char *dir)
{
    static const char *eos_names[] = {"<|endoftext|>", "<|end_of_text|>", "</s>",
                                      "<eos>",         "<|im_end|>",      "<|eot_id|>"};
    static const char *bos_names[] = {"<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>"};
    json_t *tc = dir ? load_side_json(dir, "tokenizer_config.json") : NULL;
    json_t *mc = dir ? load_side_json(dir, "config.json") : NULL;
    int32_t e = config_token(t, tc, "eos_token"), b = config_token(t, tc, "bos_token");
    if (e < 0) e = config_id(mc, "eos_token_id");
    if (e < 0) e = t->tpl_eos; /* BERT: [SEP] ends every sequence */
    if (b < 0) b = t->tpl_bos;
    if (b < 0) b = config_id(mc, "bos_token_id");
    if (e < 0) e = special_named(t, eos_names, ARRAY_LEN(eos_names));
    if (b < 0) b = special_named(t, bos_names, ARRAY_LEN(bos_names));
    if (e >= t->vocab_size) e = -1;
    if (b >= t->vocab_size) b = -1;
    t->eos_id = e;
    t->bos_id = b;
    json_decref(tc);
    json_decref(mc);
}

/* ---- post-processors: the template ------------------------------------------------- */

void tok_template_free(TokTemplate *tp)
{
    for (int i = 0; i < tp->n; i++) free(tp->p[i].ids);
    free(tp->p);
    tp->p = NULL;
    tp->n = 0;
}

static void tpl_push(TokTemplate *tp, int seq, const int32_t *ids, int n_ids, int type_id)
{
    tp->p = xrealloc(tp->p, (size_t)(tp->n + 1) * sizeof(TplPiece));
    TplPiece *q = &tp->p[tp->n++];
    q->seq = seq;
    q->n_ids = n_ids;
    q->type_id = type_id;
    q->ids = n_ids ? xmalloc((size_t)n_ids * sizeof(int32_t)) : NULL;
    if (n_ids) memcpy(q->ids, ids, (size_t)n_ids * sizeof(int32_t));
}

/* An id the template adds: an integer inside the vocabulary. */
static int tpl_id(Ctx *c, Tokenizer *t, json_t *v, const char *field, int32_t *id)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= t->vocab_size)
        return err_set("%s: %s: expected a token id below the vocabulary size %d", c->path, field,
                       t->vocab_size);
    *id = (int32_t)json_integer_value(v);
    return 0;
}

/* TemplateProcessing's "single" / "pair": [{"SpecialToken": {"id": NAME, "type_id": n}},
 * {"Sequence": {"id": "A", "type_id": n}}, ...]; NAME's ids are in "special_tokens". */
static int parse_template(Ctx *c, Tokenizer *t, json_t *o, const char *which, TokTemplate *tp)
{
    json_t *arr = json_object_get(o, which), *specials = json_object_get(o, "special_tokens");
    char f[160];
    if (!json_is_array(arr)) return err_set("%s: post_processor.%s: expected an array", c->path, which);
    size_t i;
    json_t *v;
    int seen[2] = {0, 0};
    json_array_foreach(arr, i, v)
    {
        json_t *sp = json_object_get(v, "SpecialToken"), *sq = json_object_get(v, "Sequence");
        json_t *item = sp ? sp : sq;
        json_t *tid = json_object_get(item, "type_id");
        const char *name = jstr(item, "id");
        snprintf(f, sizeof(f), "post_processor.%s[%zu]", which, i);
        if (!json_is_object(item) || !name)
            return err_set(
                "%s: %s: expected {\"SpecialToken\": {\"id\": ...}} or {\"Sequence\": {\"id\": ...}}",
                c->path, f);
        if (tid &&
            (!json_is_integer(tid) || json_integer_value(tid) < 0 || json_integer_value(tid) > INT32_MAX))
            return err_set("%s: %s.type_id: expected a non-negative integer", c->path, f);
        int type_id = tid ? (int)json_integer_value(tid) : 0;
        if (sq) {
            int seq = !strcmp(name, "A") ? 0 : !strcmp(name, "B") ? 1 : -1;
            if (seq < 0 || (seq == 1 && !strcmp(which, "single")))
                return err_set("%s: %s: sequence \"%s\" (expected A%s)", c->path, f, name,
                               strcmp(which, "single") ? " or B" : "");
            seen[seq]++;
            tpl_push(tp, seq, NULL, 0, type_id);
            continue;
        }
        json_t *ids = json_object_get(json_object_get(specials, name), "ids");
        if (!json_is_array(ids))
            return err_set("%s: %s: special token \"%s\" has no \"ids\" in post_processor.special_tokens",
                           c->path, f, name);
        size_t k, nids = json_array_size(ids);
        int32_t *buf = xmalloc((nids + 1) * sizeof(int32_t));
        json_t *idv;
        json_array_foreach(ids, k, idv)
        {
            char g[200];
            snprintf(g, sizeof(g), "post_processor.special_tokens[\"%.60s\"].ids[%zu]", name, k);
            if (tpl_id(c, t, idv, g, &buf[k])) {
                free(buf);
                return -1;
            }
        }
        tpl_push(tp, -1, buf, (int)nids, type_id);
        free(buf);
    }
    if (seen[0] != 1 || seen[1] != !strcmp(which, "pair"))
        return err_set("%s: post_processor.%s: expected $A%s exactly once", c->path, which,
                       strcmp(which, "pair") ? "" : " and $B");
    return 0;
}

/* BertProcessing / RobertaProcessing: "cls": [token, id], "sep": [token, id]. */
static int parse_cls_sep(Ctx *c, Tokenizer *t, json_t *o, const char *type, int32_t *cls, int32_t *sep)
{
    const char *keys[2] = {"cls", "sep"};
    int32_t *dst[2] = {cls, sep};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(o, keys[i]);
        char f[64];
        snprintf(f, sizeof(f), "post_processor.%s.%s[1]", type, keys[i]);
        if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_string(json_array_get(v, 0)))
            return err_set("%s: post_processor.%s.%s: expected [token, id]", c->path, type, keys[i]);
        if (tpl_id(c, t, json_array_get(v, 1), f, dst[i])) return -1;
    }
    return 0;
}

/* The post-processor as the single and pair templates. *found counts the
 * template-making processors (a Sequence may hold one, beside ByteLevel). */
static int parse_post(Ctx *c, Tokenizer *t, json_t *o, int *found)
{
    if (!o || json_is_null(o)) return 0;
    const char *type = jstr(o, "type");
    if (!type) return err_set("%s: post_processor: missing \"type\"", c->path);
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(o, "processors");
        size_t i;
        json_t *v;
        json_array_foreach(arr, i, v) if (parse_post(c, t, v, found)) return -1;
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) return 0; /* offsets only */
    int is_tpl = !strcmp(type, "TemplateProcessing"), is_bert = !strcmp(type, "BertProcessing"),
        is_roberta = !strcmp(type, "RobertaProcessing");
    if (!is_tpl && !is_bert && !is_roberta)
        return err_set("%s: post_processor \"%s\" is not supported", c->path, type);
    if (++*found > 1) return err_set("%s: post_processor: more than one template processor", c->path);
    tok_template_free(&t->tpl_single);
    tok_template_free(&t->tpl_pair);
    if (is_tpl)
        return parse_template(c, t, o, "single", &t->tpl_single) ||
                       parse_template(c, t, o, "pair", &t->tpl_pair)
                   ? -1
                   : 0;
    int32_t cls, sep;
    if (parse_cls_sep(c, t, o, type, &cls, &sep)) return -1;
    /* BERT: [CLS] A [SEP] / [CLS] A [SEP] B:1 [SEP]:1; RoBERTa: <s> A </s> / <s> A </s> </s> B </s>,
     * every type id 0 (as HF's processors give them) */
    tpl_push(&t->tpl_single, -1, &cls, 1, 0);
    tpl_push(&t->tpl_single, 0, NULL, 0, 0);
    tpl_push(&t->tpl_single, -1, &sep, 1, 0);
    tpl_push(&t->tpl_pair, -1, &cls, 1, 0);
    tpl_push(&t->tpl_pair, 0, NULL, 0, 0);
    tpl_push(&t->tpl_pair, -1, &sep, 1, 0);
    if (is_roberta) tpl_push(&t->tpl_pair, -1, &sep, 1, 0);
    tpl_push(&t->tpl_pair, 1, NULL, 0, is_bert);
    tpl_push(&t->tpl_pair, -1, &sep, 1, is_bert);
    return 0;
}

/* No template processor: $A, and $A $B with B's type id 1 (HF's default). The
 * template's leading and trailing special tokens are its BOS and EOS. */
static void finish_template(Tokenizer *t)
{
    if (!t->tpl_single.n) {
        tpl_push(&t->tpl_single, 0, NULL, 0, 0);
        tpl_push(&t->tpl_pair, 0, NULL, 0, 0);
        tpl_push(&t->tpl_pair, 1, NULL, 0, 1);
    }
    const TokTemplate *s = &t->tpl_single;
    const TplPiece *first = &s->p[0], *last = &s->p[s->n - 1];
    t->tpl_bos = first->seq < 0 && first->n_ids ? first->ids[0] : -1;
    t->tpl_eos = s->n > 1 && last->seq < 0 && last->n_ids ? last->ids[last->n_ids - 1] : -1;
    t->add_bos = t->tpl_bos >= 0;
}

/* Sentencepiece-style files (no pre-tokenizer, a Replace normalizer to U+2581)
 * encode the whole text as one word. If no vocabulary entry has the
 * replacement character right after another character, no merge can cross
 * the point before a run of them, so encoding may cut there (same ids). */
static void find_sp_split(Tokenizer *t)
{
    if (t->kind != TOK_BPE || t->n_pre || t->byte_level || t->ignore_merges) return;
    const Normalizer *rep = NULL;
    for (int i = 0; i < t->n_norm; i++)
        if (t->norm[i].type == NORM_REPLACE && !t->norm[i].re && t->norm[i].content_len >= 2 &&
            t->norm[i].content_len <= 4)
            rep = &t->norm[i];
    if (!rep) return;
    const char *x = rep->content;
    size_t r = rep->content_len;
    if (strmap_get(&t->vocab, t, x, r) < 0) return; /* an unknown replacement would fuse unks across cuts */
    for (int id = 0; id < t->vocab_size; id++) {
        if (t->is_special[id]) continue;
        size_t n;
        const char *s = tok_model_str(t, id, &n);
        for (size_t i = 1; i + r <= n; i++)
            if (!memcmp(s + i, x, r) && !(i >= r && !memcmp(s + i - r, x, r))) return;
    }
    memcpy(t->sp_split, x, r);
    t->sp_split_len = (int)r;
}

/* ---- added tokens matched after normalization ---------------------------------------- */

/* With normalizers, HF matches a "normalized" added token in the normalized
 * text, by its normalized content, and decodes it to that content. Fills
 * t->nadded and, per id, the decode strings in over. */
static void normalized_added(Tokenizer *t, Strs *over)
{
    if (!t->n_norm) return; /* then the raw text is the normalized text */
    TokThread *th = tok_thread_new();
    ByteBuf b = {0};
    for (int i = 0; i < t->n_added; i++) {
        AddedToken *a = &t->added[i];
        if (!a->normalized) continue;
        a->after_norm = 1;
        tok_normalize(t, th, (const uint8_t *)a->content, a->len, &b);
        strs_set(over, a->id, b.a ? b.a : "", b.n);
        if (!b.n) continue; /* normalized away: never matches */
        t->nadded = xrealloc(t->nadded, (size_t)(t->n_nadded + 1) * sizeof(AddedToken));
        AddedToken *c = &t->nadded[t->n_nadded++];
        *c = *a;
        c->after_norm = 0; /* matched (by tok_split_added) in the normalized text */
        c->content = xmalloc(b.n + 1);
        memcpy(c->content, b.a, b.n + 1);
        c->len = b.n;
    }
    free(b.a);
    tok_thread_free(th);
}

/* ---- WordPiece ---------------------------------------------------------------------- */

static int parse_wordpiece(Ctx *c, Tokenizer *t, json_t *model)
{
    json_t *vocab = json_object_get(model, "vocab"), *unk = json_object_get(model, "unk_token");
    json_t *pre = json_object_get(model, "continuing_subword_prefix");
    json_t *mx = json_object_get(model, "max_input_chars_per_word");
    if (!json_is_object(vocab)) return err_set("%s: model.vocab: expected an object of token -> id", c->path);
    if (unk && !json_is_string(unk)) return err_set("%s: model.unk_token: expected a string", c->path);
    if (pre && (!json_is_string(pre) || json_string_length(pre) >= WP_MAX_PREFIX))
        return err_set("%s: model.continuing_subword_prefix: expected a string of at most %d bytes", c->path,
                       WP_MAX_PREFIX - 1);
    if (mx && (!json_is_integer(mx) || json_integer_value(mx) < 0))
        return err_set("%s: model.max_input_chars_per_word: expected a non-negative integer", c->path);
    t->kind = TOK_WORDPIECE;
    const char *p = pre ? json_string_value(pre) : "##";
    t->wp_prefix_len = (int)strlen(p);
    memcpy(t->wp_prefix, p, (size_t)t->wp_prefix_len);
    t->wp_max_chars = mx ? (long)MIN(json_integer_value(mx), (json_int_t)INT32_MAX) : WP_DEFAULT_MAX_CHARS;
    return 0;
}

/* The longest entry of the vocabulary map, and the longest after the prefix
 * among the entries that start with it (bytes): no longer candidate can match. */
static void wordpiece_lengths(Tokenizer *t)
{
    size_t pl = (size_t)t->wp_prefix_len;
    for (size_t i = 0; i <= t->vocab.mask; i++) {
        int32_t id = t->vocab.slot[i];
        if (id < 0) continue;
        size_t n;
        const char *s = tok_model_str(t, id, &n);
        t->wp_max_word = MAX(t->wp_max_word, n);
        if (n >= pl && !memcmp(s, t->wp_prefix, pl)) t->wp_max_cont = MAX(t->wp_max_cont, n - pl);
    }
}

/* Token ids index flat tables (strings, flags, decode pieces), so the largest id sets their
 * size: ids must stay below TOK_MAX_ID (the model vocabulary limit of config.json) and be
 * dense enough that the tables are not mostly holes (a 100-byte file naming id 10^9 would
 * otherwise allocate gigabytes before anything else is checked). Real vocabularies are
 * dense: ids 0 .. n-1, added tokens right after. Checked for every id before it is stored. */
#define TOK_MAX_ID (1 << 24)
#define TOK_MAX_HOLES 65536

/* count: the number of tokens the file lists (vocabulary and added tokens). */
static int vocab_id_check(const char *path, const char *what, json_int_t id, size_t count)
{
    if (id >= TOK_MAX_ID)
        return err_set("%s: %s: id %lld is larger than the limit %d", path, what, (long long)id, TOK_MAX_ID - 1);
    if ((size_t)id >= 2 * count + TOK_MAX_HOLES)
        return err_set("%s: %s: id %lld, but only %zu tokens: ids must be dense (0 .. n-1, added tokens after)",
                       path, what, (long long)id, count);
    return 0;
}

/* ---- entry points ------------------------------------------------------------------- */

int tok_load_hf_json(Tokenizer *t, const char *data, size_t len, const char *path, const char *dir)
{
    pthread_once(&byte_map_once, byte_map_init);
    Ctx c = {path};
    json_error_t je;
    json_t *root = json_loadb(data, len, 0, &je);
    if (!root) return err_set("%s: line %d: not valid JSON: %s", path, je.line, je.text);
    int rc = -1;
    Strs hf = {0};
    DecList dec = {0};
    uint8_t *in_model = NULL; /* WordPiece: ids of model.vocab (the map HF looks words up in) */
    json_t *model = json_object_get(root, "model");
    const char *mtype = jstr(model, "type");
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    if (!json_is_object(model)) {
        err_set("%s: no \"model\" object (not a tokenizer.json?)", path);
        goto out;
    }
    if (!mtype && !json_is_array(merges)) {
        err_set("%s: model.type: missing (and no \"merges\": not BPE)", path);
        goto out;
    }
    if (!mtype || !strcmp(mtype, "BPE")) {
        if (!json_is_object(vocab) || !json_is_array(merges)) {
            err_set("%s: model: expected a \"vocab\" object and a \"merges\" array", path);
            goto out;
        }
        const char *cs = jstr(model, "continuing_subword_prefix"), *ew = jstr(model, "end_of_word_suffix");
        if ((cs && *cs) || (ew && *ew)) {
            err_set("%s: model: continuing_subword_prefix / end_of_word_suffix are not supported", path);
            goto out;
        }
        t->kind = TOK_BPE;
        t->fuse_unk = jbool(model, "fuse_unk", 0);
        t->byte_fallback = jbool(model, "byte_fallback", 0);
        t->ignore_merges = jbool(model, "ignore_merges", 0);
    } else if (!strcmp(mtype, "WordPiece")) {
        if (parse_wordpiece(&c, t, model)) goto out;
    } else {
        err_set("%s: model.type: \"%s\" is not supported (BPE and WordPiece)", path, mtype);
        goto out;
    }
    int32_t maxid = -1;
    const char *key;
    json_t *val;
    size_t n_listed = json_object_size(vocab) + json_array_size(json_object_get(root, "added_tokens"));
    json_object_foreach(vocab, key, val)
    {
        if (!json_is_integer(val) || json_integer_value(val) < 0 ||
            json_integer_value(val) >= INT32_MAX / 2) {
            err_set("%s: model.vocab[\"%s\"]: expected a non-negative integer id", path, key);
            goto out;
        }
        if (vocab_id_check(path, "model.vocab", json_integer_value(val), n_listed)) goto out;
        int32_t id = (int32_t)json_integer_value(val);
        strs_set(&hf, id, key, strlen(key));
        maxid = MAX(maxid, id);
    }
    /* added tokens */
    json_t *added = json_object_get(root, "added_tokens");
    size_t i;
    json_array_foreach(added, i, val)
    {
        json_t *idv = json_object_get(val, "id");
        json_t *ct = json_object_get(val, "content");
        if (!json_is_integer(idv) || !json_is_string(ct) || json_integer_value(idv) < 0 ||
            json_integer_value(idv) >= INT32_MAX / 2) {
            err_set("%s: added_tokens[%zu]: expected \"id\" and \"content\"", path, i);
            goto out;
        }
        if (vocab_id_check(path, "added_tokens", json_integer_value(idv), n_listed)) goto out;
        int32_t id = (int32_t)json_integer_value(idv);
        t->added = xrealloc(t->added, (size_t)(t->n_added + 1) * sizeof(AddedToken));
        AddedToken *a = &t->added[t->n_added++];
        a->len = json_string_length(ct);
        a->content = xmalloc(a->len + 1);
        memcpy(a->content, json_string_value(ct), a->len + 1);
        a->id = id;
        a->special = jbool(val, "special", 0);
        a->lstrip = jbool(val, "lstrip", 0);
        a->rstrip = jbool(val, "rstrip", 0);
        a->single_word = jbool(val, "single_word", 0);
        a->normalized = jbool(val, "normalized", !a->special); /* HF's AddedToken default */
        a->after_norm = 0;
        strs_set(&hf, id, a->content, a->len);
        maxid = MAX(maxid, id);
    }
    if (maxid < 0) {
        err_set("%s: model.vocab is empty", path);
        goto out;
    }
    int n = maxid + 1;
    t->is_special = xcalloc((size_t)n, 1);
    for (int k = 0; k < t->n_added; k++) t->is_special[t->added[k].id] = 1;
    if (t->kind == TOK_WORDPIECE) {
        in_model = xcalloc((size_t)n, 1);
        json_object_foreach(vocab, key, val) in_model[json_integer_value(val)] = 1;
    }
    /* pipeline */
    if (parse_normalizer(&c, t, json_object_get(root, "normalizer"), "normalizer")) goto out;
    if (parse_pretok(&c, t, json_object_get(root, "pre_tokenizer"), "pre_tokenizer")) goto out;
    json_t *dj = json_object_get(root, "decoder");
    if (parse_decoder(&c, dj, &dec)) goto out;
    t->dec_join_space = !dj || json_is_null(dj);
    Strs over = {0};
    normalized_added(t, &over);
    build_tables(t, &hf, n, &dec, in_model, &over);
    strs_free(&over);
    const char *unk = jstr(model, "unk_token");
    if (t->kind == TOK_WORDPIECE) {
        if (!unk) unk = WP_DEFAULT_UNK;
        /* HF looks the unk up in model.vocab when a word fails: required */
        if ((t->unk_id = strmap_get(&t->vocab, t, unk, strlen(unk))) < 0) {
            err_set("%s: model.unk_token: \"%s\" is not in model.vocab", path, unk);
            goto out;
        }
        wordpiece_lengths(t);
    } else {
        if (unk) {
            t->unk_id = strmap_get(&t->vocab, t, unk, strlen(unk));
            if (t->unk_id < 0) t->unk_id = tokenizer_token_to_id(t, unk, strlen(unk));
        }
        if (parse_merges_json(&c, t, merges)) goto out;
    }
    for (int b = 0; b < 256; b++) {
        char s[8];
        if (t->byte_level) {
            s[0] = (char)b;
            t->byte_id[b] = strmap_get(&t->vocab, t, s, 1);
        } else if (t->byte_fallback) {
            snprintf(s, sizeof(s), "<0x%02X>", b);
            t->byte_id[b] = strmap_get(&t->vocab, t, s, 6);
        }
    }
    int n_tpl = 0;
    if (parse_post(&c, t, json_object_get(root, "post_processor"), &n_tpl)) goto out;
    finish_template(t);
    find_eos_bos(t, dir);
    /* prepare may cut a long document after "x\ny" (ASCII non-space around the
     * newline): the GPT-2, LLaMA-3 and Qwen2 patterns always end a piece there,
     * BertPreTokenizer drops the newline between two words, Unicode
     * normalization (BERT's included) never crosses two ASCII characters, and
     * no added token may contain the newline or take it with lstrip (RoBERTa's
     * <mask>: "x\n<mask>" loses the newline, "x\n" + "<mask>" keeps it) */
    t->splittable = t->n_pre == 1 && (t->pre[0].fast != SPLIT_FAST_NONE || t->pre[0].type == PRE_BERT);
    for (int i = 0; i < t->n_norm; i++)
        if (t->norm[i].type > NORM_NFKD && t->norm[i].type != NORM_BERT) t->splittable = 0;
    for (int i = 0; i < t->n_added; i++)
        if (memchr(t->added[i].content, '\n', t->added[i].len) || t->added[i].lstrip) t->splittable = 0;
    for (int i = 0; i < t->n_nadded; i++)
        if (memchr(t->nadded[i].content, '\n', t->nadded[i].len) || t->nadded[i].lstrip) t->splittable = 0;
    find_sp_split(t);
    rc = tok_finish(t);
out:
    free(in_model);
    strs_free(&hf);
    declist_free(&dec);
    json_decref(root);
    return rc;
}

int tok_load_vocab_merges(Tokenizer *t, const char *vocab, size_t vlen, const char *merges, size_t mlen,
                          const char *vpath, const char *mpath)
{
    pthread_once(&byte_map_once, byte_map_init);
    json_error_t je;
    json_t *root = json_loadb(vocab, vlen, 0, &je);
    if (!root) return err_set("%s: line %d: not valid JSON: %s", vpath, je.line, je.text);
    int rc = -1;
    Strs hf = {0};
    int32_t maxid = -1;
    const char *key;
    json_t *val;
    if (!json_is_object(root)) {
        err_set("%s: expected an object of token -> id", vpath);
        goto out;
    }
    json_object_foreach(root, key, val)
    {
        if (!json_is_integer(val) || json_integer_value(val) < 0 ||
            json_integer_value(val) >= INT32_MAX / 2) {
            err_set("%s: \"%s\": expected a non-negative integer id", vpath, key);
            goto out;
        }
        if (vocab_id_check(vpath, "vocabulary", json_integer_value(val), json_object_size(root))) goto out;
        int32_t id = (int32_t)json_integer_value(val);
        strs_set(&hf, id, key, strlen(key));
        maxid = MAX(maxid, id);
    }
    if (maxid < 0) {
        err_set("%s: empty vocabulary", vpath);
        goto out;
    }
    int n = maxid + 1;
    t->kind = TOK_BPE;
    t->byte_level = 1;
    t->is_special = xcalloc((size_t)n, 1);
    /* GPT-2's only special token */
    static const char eot[] = "<|endoftext|>";
    for (int id = 0; id < n; id++)
        if (id < hf.n && hf.s[id] && !strcmp(hf.s[id], eot)) {
            t->added = xcalloc(1, sizeof(AddedToken));
            t->added[0] = (AddedToken){xstrdup(eot), strlen(eot), id, 1, 0, 0, 0, 0, 0};
            t->n_added = 1;
            t->is_special[id] = 1;
            t->eos_id = t->bos_id = id;
        }
    Ctx c = {vpath};
    if (pre_push_regex(&c, t, GPT2_SPLIT_PATTERN, SPLIT_ISOLATED, 0)) goto out;
    DecList dec = {0};
    DecStep bl = {.type = DEC_BYTELEVEL};
    dec.s = &bl;
    dec.n = 1;
    build_tables(t, &hf, n, &dec, NULL, NULL);
    c.path = mpath;
    if (parse_merges_txt(&c, t, merges, mlen)) goto out;
    for (int b = 0; b < 256; b++) {
        char s = (char)b;
        t->byte_id[b] = strmap_get(&t->vocab, t, &s, 1);
    }
    t->splittable = 1;
    rc = tok_finish(t);
out:
    strs_free(&hf);
    json_decref(root);
    return rc;
}
