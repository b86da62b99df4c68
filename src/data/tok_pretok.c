/* tok_pretok.c - normalizers and pre-tokenizers (the HF tokenizers pipeline,
 * BERT's included), and the hand-written splitters for GPT-2's, LLaMA-3's and
 * Qwen2's patterns.
 *
 * Regexes run in PCRE2 with UTF + UCP (Unicode \p{..} and \s) and
 * MATCH_INVALID_UTF: an invalid byte matches no item, so a run of them lies
 * between matches and becomes a piece of its own (byte-level BPE then encodes
 * the raw bytes, and decode gives them back). The GPT-2 splitter takes its
 * character classes from the same PCRE2 tables (one page of 256 code points
 * classified on first use), so both paths agree; tests compare them.
 */
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "core/error.h"
#include "data/tok_internal.h"
#include "data/utf8.h"

const char GPT2_SPLIT_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const char LLAMA3_SPLIT_PATTERN[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                                    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char QWEN2_SPLIT_PATTERN[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                                   "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

int split_fast_kind(const char *pattern)
{
    if (!strcmp(pattern, GPT2_SPLIT_PATTERN)) return SPLIT_FAST_GPT2;
    if (!strcmp(pattern, LLAMA3_SPLIT_PATTERN)) return SPLIT_FAST_LLAMA3;
    if (!strcmp(pattern, QWEN2_SPLIT_PATTERN)) return SPLIT_FAST_QWEN2;
    return SPLIT_FAST_NONE;
}

pcre2_code *tok_regex_compile(const char *pattern, size_t len, const char *what)
{
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, len, PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF,
                                   &ec, &eo, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof(msg));
        err_set("%s: regex error at offset %zu: %s", what, (size_t)eo, (char *)msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter if JIT is unavailable */
    return re;
}

/* ---- character classes for the GPT-2 splitter ------------------------------ */

enum { CC_OTHER = 0, CC_L = 1, CC_N = 2, CC_WS = 3, CC_INVALID = 4 };

#define CC_PAGES (0x110000 / 256)
static uint8_t *cc_page[CC_PAGES];
static uint8_t cc_ascii[128];
/* BertPreTokenizer's classes of the ASCII characters (the common case, without a call) */
enum { BERT_SPACE = 1, BERT_PUNCT = 2 };
static uint8_t bert_ascii[128];
static pthread_once_t cc_once = PTHREAD_ONCE_INIT;
static pcre2_code *cc_re;

static uint8_t cc_classify(uint32_t cp, pcre2_match_data *md)
{
    if (cp >= 0xD800 && cp <= 0xDFFF) return CC_OTHER; /* not encodable; never asked */
    uint8_t buf[4];
    int k = utf8_encode(cp, buf);
    int rc = pcre2_match(cc_re, buf, (size_t)k, 0, PCRE2_ANCHORED, md, NULL);
    if (rc <= 1) return CC_OTHER;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    if (rc >= 2 && ov[2] != PCRE2_UNSET) return CC_L;
    if (rc >= 3 && ov[4] != PCRE2_UNSET) return CC_N;
    return CC_WS;
}

static void cc_init(void)
{
    static const char pat[] = "(\\p{L})|(\\p{N})|(\\s)";
    int ec;
    PCRE2_SIZE eo;
    cc_re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
    if (!cc_re) fatal("internal: class regex failed to compile");
    pcre2_match_data *md = pcre2_match_data_create(4, NULL);
    for (uint32_t c = 0; c < 128; c++) cc_ascii[c] = cc_classify(c, md);
    pcre2_match_data_free(md);
    for (uint32_t c = 0; c < 128; c++)
        bert_ascii[c] = uni_bert_space(c) ? BERT_SPACE : uni_bert_punct(c) ? BERT_PUNCT : 0;
}

static uint8_t cc_of(uint32_t cp)
{
    uint8_t *page = __atomic_load_n(&cc_page[cp >> 8], __ATOMIC_ACQUIRE);
    if (!page) {
        pcre2_match_data *md = pcre2_match_data_create(4, NULL);
        page = xmalloc(256);
        for (uint32_t i = 0; i < 256; i++) page[i] = cc_classify((cp & ~0xFFu) | i, md);
        pcre2_match_data_free(md);
        uint8_t *expected = NULL;
        if (!__atomic_compare_exchange_n(&cc_page[cp >> 8], &expected, page, 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE)) {
            free(page); /* another thread won the race */
            page = expected;
        }
    }
    return page[cp & 0xFF];
}

/* Class and byte length of the character at s[i]. */
static inline uint8_t cc_at(const uint8_t *s, size_t n, size_t i, size_t *len)
{
    if (s[i] < 0x80) {
        *len = 1;
        return cc_ascii[s[i]];
    }
    uint32_t cp;
    int k = utf8_decode(s + i, n - i, &cp);
    if (!k) {
        *len = 1;
        return CC_INVALID;
    }
    *len = (size_t)k;
    return cc_of(cp);
}

/* End of the run of class c starting at i. */
static inline size_t cc_run(const uint8_t *s, size_t n, size_t i, uint8_t c)
{
    while (i < n) {
        size_t k;
        if (s[i] < 0x80) {
            if (cc_ascii[s[i]] != c) break;
            i++;
            continue;
        }
        if (cc_at(s, n, i, &k) != c) break;
        i += k;
    }
    return i;
}

/* GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * Returns the end of the piece that starts at i (i < n). */
size_t gpt2_split_next(const uint8_t *s, size_t n, size_t i)
{
    uint8_t c0 = s[i];
    if (c0 == '\'' && i + 1 < n) {
        uint8_t c1 = s[i + 1];
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i + 2;
        if (i + 2 < n) {
            uint8_t c2 = s[i + 2];
            if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
                return i + 3;
        }
    }
    size_t k;
    uint8_t c = cc_at(s, n, i, &k);
    if (c0 == ' ' && i + 1 < n) {
        size_t k1;
        uint8_t c1 = cc_at(s, n, i + 1, &k1);
        if (c1 == CC_L || c1 == CC_N || c1 == CC_OTHER) return cc_run(s, n, i + 1 + k1, c1);
    }
    if (c == CC_L || c == CC_N || c == CC_OTHER) return cc_run(s, n, i + k, c);
    if (c == CC_INVALID) return cc_run(s, n, i + 1, CC_INVALID);
    /* whitespace: \s+(?!\S) backtracks to leave the last one before a non-space */
    size_t last = i, j = i + k;
    while (j < n) {
        size_t kj;
        uint8_t cj = cc_at(s, n, j, &kj);
        if (cj != CC_WS) {
            if (cj == CC_INVALID) return j; /* an invalid byte is not \S */
            return last > i ? last : j;
        }
        last = j;
        j += kj;
    }
    return n;
}

/* LLaMA-3 (max_digits 3) and Qwen2 (max_digits 1):
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *    ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * Alternatives are tried in order at i; the first that matches wins. */
size_t llama3_split_next(const uint8_t *s, size_t n, size_t i, int max_digits)
{
    uint8_t c0 = s[i];
    if (c0 == '\'' && i + 1 < n) { /* caseless: PCRE2 also folds U+017F (long s) to s */
        uint8_t c1 = s[i + 1] | 0x20;
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i + 2;
        if (s[i + 1] == 0xC5 && i + 2 < n && s[i + 2] == 0xBF) return i + 3;
        if (i + 2 < n) {
            uint8_t c2 = s[i + 2] | 0x20;
            if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
                return i + 3;
        }
    }
    size_t k0;
    uint8_t cl0 = cc_at(s, n, i, &k0);
    if (cl0 == CC_L) return cc_run(s, n, i + k0, CC_L);
    if (cl0 != CC_N && cl0 != CC_INVALID && c0 != '\r' && c0 != '\n' && i + k0 < n) {
        size_t k1;
        if (cc_at(s, n, i + k0, &k1) == CC_L) return cc_run(s, n, i + k0 + k1, CC_L);
    }
    if (cl0 == CC_N) {
        size_t j = i + k0, k;
        for (int d = 1; d < max_digits && j < n && cc_at(s, n, j, &k) == CC_N; d++) j += k;
        return j;
    }
    size_t j = i, k;
    if (c0 == ' ' && i + 1 < n && cc_at(s, n, i + 1, &k) == CC_OTHER) j = i + 1;
    if (j > i || cl0 == CC_OTHER) {
        j = cc_run(s, n, j, CC_OTHER);
        while (j < n && (s[j] == '\r' || s[j] == '\n')) j++;
        return j;
    }
    if (cl0 == CC_INVALID) return cc_run(s, n, i + 1, CC_INVALID);
    /* whitespace run [i, e) */
    size_t e = i, last = i, nl = 0;
    int has_nl = 0;
    while (e < n) {
        size_t ke;
        if (cc_at(s, n, e, &ke) != CC_WS) break;
        if (s[e] == '\r' || s[e] == '\n') {
            has_nl = 1;
            nl = e;
        }
        last = e;
        e += ke;
    }
    if (has_nl) return nl + 1;                                /* \s*[\r\n]+ */
    if (e == n || cc_at(s, n, e, &k) == CC_INVALID) return e; /* \s+(?!\S) at the end */
    return last > i ? last : e;                               /* \s+(?!\S) backtracked, or \s+ */
}

/* ---- normalizers ---------------------------------------------------------- */

void normalizer_free(Normalizer *nm)
{
    free(nm->pattern);
    free(nm->content);
    if (nm->re) pcre2_code_free(nm->re);
}

static int is_space_byte(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Apply one normalizer to in[0..n) into out (cleared first). */
static void normalize_one(const Normalizer *nm, TokThread *th, const uint8_t *in, size_t n, ByteBuf *out)
{
    out->n = 0;
    switch (nm->type) {
    case NORM_NFC:
    case NORM_NFD:
    case NORM_NFKC:
    case NORM_NFKD: {
        int opt = UTF8PROC_STABLE |
                  (nm->type == NORM_NFC || nm->type == NORM_NFKC ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE);
        if (nm->type == NORM_NFKC || nm->type == NORM_NFKD) opt |= UTF8PROC_COMPAT;
        /* Only the non-ASCII islands go through utf8proc: between two ASCII
         * characters nothing composes, decomposes or reorders, so the text can
         * be cut there. An island starts at the ASCII character before it (a
         * combining mark may attach to it) and ends at an ASCII pair. */
        size_t run = 0;
        for (size_t i = 0; i < n;) {
            if (in[i] < 0x80) {
                i++;
                continue;
            }
            size_t a = i > run ? i - 1 : i, j = i;
            while (j < n && !(in[j] < 0x80 && (j + 1 == n || in[j + 1] < 0x80))) j++;
            bytebuf_put(out, in + run, a - run);
            utf8proc_uint8_t *res = NULL;
            if (utf8_validate(in + a, j - a) == j - a &&
                utf8proc_map(in + a, (utf8proc_ssize_t)(j - a), &res, opt) >= 0) {
                bytebuf_put(out, res, strlen((char *)res));
                free(res);
            } else {
                bytebuf_put(out, in + a, j - a); /* invalid UTF-8 passes through unchanged */
            }
            run = i = j;
        }
        bytebuf_put(out, in + run, n - run);
        break;
    }
    case NORM_LOWER:
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            int k = utf8_decode(in + i, n - i, &cp);
            if (!k) {
                bytebuf_put(out, in + i, 1);
                i++;
                continue;
            }
            uint8_t buf[8];
            bytebuf_put(out, buf, (size_t)uni_lower(cp, buf));
            i += (size_t)k;
        }
        break;
    case NORM_BERT:
        bert_normalize(nm, in, n, out);
        break;
    case NORM_REPLACE:
        if (nm->re) {
            pcre2_match_data *md = tok_thread_match_data(th);
            size_t i = 0;
            while (i <= n) {
                int rc = pcre2_match(nm->re, in, n, i, 0, md, NULL);
                if (rc < 0) break;
                PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
                bytebuf_put(out, in + i, ov[0] - i);
                bytebuf_put(out, nm->content, nm->content_len);
                if (ov[1] == ov[0]) { /* empty match: copy one byte and move on */
                    if (ov[1] < n) bytebuf_put(out, in + ov[1], 1);
                    i = ov[1] + 1;
                } else {
                    i = ov[1];
                }
            }
            if (i < n) bytebuf_put(out, in + i, n - i);
        } else {
            size_t i = 0, p = nm->pattern_len;
            while (i < n) {
                if (p && i + p <= n && !memcmp(in + i, nm->pattern, p)) {
                    bytebuf_put(out, nm->content, nm->content_len);
                    i += p;
                } else {
                    size_t j = i + 1;
                    if (p) {
                        const void *q = memchr(in + j, (uint8_t)nm->pattern[0], n - j);
                        j = q ? (size_t)((const uint8_t *)q - in) : n;
                    } else {
                        j = n;
                    }
                    bytebuf_put(out, in + i, j - i);
                    i = j;
                }
            }
        }
        break;
    case NORM_PREPEND:
        if (n) bytebuf_put(out, nm->content, nm->content_len);
        bytebuf_put(out, in, n);
        break;
    case NORM_STRIP: {
        size_t a = 0, b = n;
        if (nm->strip_left)
            while (a < b && is_space_byte(in[a])) a++;
        if (nm->strip_right)
            while (b > a && is_space_byte(in[b - 1])) b--;
        bytebuf_put(out, in + a, b - a);
        break;
    }
    }
}

/* ---- BertNormalizer --------------------------------------------------------------- */

static void bytebuf_reserve(ByteBuf *b, size_t extra)
{
    if (b->a && b->n + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + extra + 1) cap *= 2;
    b->a = xrealloc(b->a, cap);
    b->cap = cap;
    b->a[b->n] = 0;
}

/* Code points of one island (stack storage, the heap when longer). */
#define CPBUF_STACK 256

typedef struct {
    uint32_t *a;
    size_t n, cap;
    uint32_t stack[CPBUF_STACK];
} CpBuf;

static void cpbuf_init(CpBuf *b)
{
    b->a = b->stack;
    b->n = 0;
    b->cap = CPBUF_STACK;
}

static void cpbuf_push(CpBuf *b, uint32_t cp)
{
    if (b->n == b->cap) {
        b->cap *= 2;
        if (b->a == b->stack) {
            b->a = xmalloc(b->cap * sizeof(uint32_t));
            memcpy(b->a, b->stack, b->n * sizeof(uint32_t));
        } else {
            b->a = xrealloc(b->a, b->cap * sizeof(uint32_t));
        }
    }
    b->a[b->n++] = cp;
}

static void cpbuf_free(CpBuf *b)
{
    if (b->a != b->stack) free(b->a);
}

static inline int ccc_of(uint32_t cp)
{
    return cp < 0x300 ? 0 : utf8proc_get_property((utf8proc_int32_t)cp)->combining_class;
}

/* Canonical ordering (the last step of NFD): every run of non-starters is
 * sorted by combining class, stably. Long runs use a counting sort, so a
 * crafted run of marks is linear, not quadratic. */
#define CCC_INSERTION_MAX 16

static void canonical_order(uint32_t *a, size_t n)
{
    for (size_t i = 0; i < n;) {
        if (!ccc_of(a[i])) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < n && ccc_of(a[j])) j++;
        if (j - i <= CCC_INSERTION_MAX) {
            for (size_t x = i + 1; x < j; x++) {
                uint32_t v = a[x];
                int c = ccc_of(v);
                size_t y = x;
                while (y > i && ccc_of(a[y - 1]) > c) {
                    a[y] = a[y - 1];
                    y--;
                }
                a[y] = v;
            }
        } else {
            size_t count[257] = {0};
            uint32_t *tmp = xmalloc((j - i) * sizeof(uint32_t));
            for (size_t x = i; x < j; x++) count[ccc_of(a[x]) + 1]++;
            for (int c = 1; c < 257; c++) count[c] += count[c - 1];
            for (size_t x = i; x < j; x++) tmp[count[ccc_of(a[x])]++] = a[x];
            memcpy(a + i, tmp, (j - i) * sizeof(uint32_t));
            free(tmp);
        }
        i = j;
    }
}

/* U+11938 DIVES AKURU VOWEL SIGN O got its canonical decomposition in Unicode
 * 13.0; the NFD tables HF uses are older and keep it whole (measured). */
#define HF_NFD_KEEP 0x11938
/* Longest canonical decomposition of one code point (Unicode: 4). */
#define NFD_MAX 8

/* One island of valid non-ASCII characters: clean_text and the CJK spaces per
 * character, then NFD of the island and the mark filter, then lowercase. NFD
 * may run per island: the ASCII characters around it are starters that
 * neither decompose nor move. */
static void bert_island(const Normalizer *nm, const uint8_t *s, size_t n, ByteBuf *out)
{
    CpBuf a, d;
    cpbuf_init(&a);
    cpbuf_init(&d);
    for (size_t i = 0; i < n;) {
        uint32_t cp = 0;
        int k = utf8_decode(s + i, n - i, &cp); /* valid: the caller cut the island */
        i += k ? (size_t)k : 1;
        if (!k) continue;
        if (nm->bert_clean) {
            if (uni_bert_control(cp)) continue;
            if (uni_bert_space(cp)) cp = ' ';
        }
        if (nm->bert_chinese && uni_cjk(cp)) {
            cpbuf_push(&a, ' ');
            cpbuf_push(&a, cp);
            cpbuf_push(&a, ' ');
        } else {
            cpbuf_push(&a, cp);
        }
    }
    const CpBuf *src = &a;
    if (nm->bert_strip) {
        for (size_t i = 0; i < a.n; i++) {
            utf8proc_int32_t dec[NFD_MAX];
            utf8proc_ssize_t k = a.a[i] < 0xC0 || a.a[i] == HF_NFD_KEEP
                                     ? 0
                                     : utf8proc_decompose_char((utf8proc_int32_t)a.a[i], dec, NFD_MAX,
                                                               UTF8PROC_DECOMPOSE, NULL);
            if (k <= 0 || k > NFD_MAX)
                cpbuf_push(&d, a.a[i]);
            else
                for (utf8proc_ssize_t x = 0; x < k; x++) cpbuf_push(&d, (uint32_t)dec[x]);
        }
        canonical_order(d.a, d.n);
        src = &d;
    }
    bytebuf_reserve(out, src->n * 4);
    for (size_t i = 0; i < src->n; i++) {
        uint32_t cp = src->a[i];
        if (nm->bert_strip && uni_bert_mark(cp)) continue;
        uint8_t buf[8];
        int m = nm->bert_lower ? uni_lower(cp, buf) : utf8_encode(cp, buf);
        bytebuf_put(out, buf, (size_t)m);
    }
    cpbuf_free(&a);
    cpbuf_free(&d);
}

void bert_normalize(const Normalizer *nm, const uint8_t *in, size_t n, ByteBuf *out)
{
    out->n = 0;
    bytebuf_reserve(out, n);
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && in[j] < 0x80) j++;
        if (j > i) { /* ASCII: nothing decomposes, only control bytes and case change */
            bytebuf_reserve(out, j - i);
            char *o = out->a + out->n;
            for (; i < j; i++) {
                uint8_t c = in[i];
                if (nm->bert_clean) {
                    if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7F) continue;
                    if (c < 0x20) c = ' ';
                }
                if (nm->bert_lower && (uint8_t)(c - 'A') < 26) c += 'a' - 'A';
                *o++ = (char)c;
            }
            out->n = (size_t)(o - out->a);
            out->a[out->n] = 0;
            continue;
        }
        uint32_t cp;
        for (int k; j < n && in[j] >= 0x80 && (k = utf8_decode(in + j, n - j, &cp));) j += (size_t)k;
        if (j == i) { /* an invalid byte passes through */
            bytebuf_put(out, in + i, 1);
            i++;
            continue;
        }
        bert_island(nm, in + i, j - i, out);
        i = j;
    }
}

/* ---- pre-tokenizers ---------------------------------------------------------- */

void pretok_free(PreTok *p)
{
    if (p->re) pcre2_code_free(p->re);
    free(p->src);
}

typedef struct {
    const Tokenizer *t;
    TokThread *th;
    IdVec *out;
    ByteBuf *scratch; /* one buffer per stage (a stage may rewrite its piece) */
} PreCtx;

static void pretok_run(PreCtx *c, int stage, const uint8_t *s, size_t n, int at_start);

/* Emit a piece made of segments [a, b) of s (Split behaviors join neighbours). */
static void split_emit(PreCtx *c, int stage, const uint8_t *s, size_t a, size_t b, int at_start)
{
    if (b > a) pretok_run(c, stage + 1, s + a, b - a, at_start && a == 0);
}

/* One Split: walk the text as alternating (delimiter, content) segments and
 * group them by behavior; is_delim = is_match XOR invert (HF semantics). */
static void split_apply(PreCtx *c, int stage, const PreTok *p, const uint8_t *s, size_t n, int at_start)
{
    size_t pos = 0;      /* start of the not-yet-classified text */
    size_t piece_a = 0;  /* start of the piece being built (MergedWith*, Contiguous) */
    int open = 0;        /* a piece is being built */
    int prev_delim = -1; /* Contiguous: flag of the previous segment */
    pcre2_match_data *md = tok_thread_match_data(c->th);
    for (;;) {
        size_t ma = n, mb = n;
        int found = 0;
        if (pos < n) {
            if (p->re) {
                size_t from = pos;
                while (from < n) {
                    int rc = pcre2_match(p->re, s, n, from, 0, md, NULL);
                    if (rc < 0) break;
                    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
                    if (ov[1] > ov[0]) {
                        ma = ov[0];
                        mb = ov[1];
                        found = 1;
                        break;
                    }
                    from = ov[0] + 1; /* skip an empty match */
                }
            } else if (p->src_len) {
                for (size_t i = pos; i + p->src_len <= n; i++)
                    if (s[i] == (uint8_t)p->src[0] && !memcmp(s + i, p->src, p->src_len)) {
                        ma = i;
                        mb = i + p->src_len;
                        found = 1;
                        break;
                    }
            }
        }
        /* segments: gap [pos, ma) then match [ma, mb) */
        for (int seg = 0; seg < 2; seg++) {
            size_t a = seg == 0 ? pos : ma, b = seg == 0 ? ma : mb;
            if (b <= a) continue;
            int delim = (seg == 1) ^ p->invert;
            switch (p->behavior) {
            case SPLIT_ISOLATED:
                split_emit(c, stage, s, a, b, at_start);
                break;
            case SPLIT_REMOVED:
                if (!delim) split_emit(c, stage, s, a, b, at_start);
                break;
            case SPLIT_MERGED_PREV: /* a delimiter joins the content piece before it */
                if (delim) {
                    split_emit(c, stage, s, open ? piece_a : a, b, at_start);
                    open = 0;
                } else {
                    if (open) split_emit(c, stage, s, piece_a, a, at_start);
                    piece_a = a;
                    open = 1;
                }
                break;
            case SPLIT_MERGED_NEXT: /* a delimiter joins the content piece after it */
                if (delim) {
                    if (open) split_emit(c, stage, s, piece_a, a, at_start);
                    piece_a = a;
                    open = 1;
                } else {
                    split_emit(c, stage, s, open ? piece_a : a, b, at_start);
                    open = 0;
                }
                break;
            case SPLIT_CONTIGUOUS:
                if (open && delim != prev_delim) {
                    split_emit(c, stage, s, piece_a, a, at_start);
                    open = 0;
                }
                if (!open) piece_a = a;
                open = 1;
                prev_delim = delim;
                break;
            }
        }
        if (!found) break;
        pos = mb;
    }
    if (open) split_emit(c, stage, s, piece_a, n, at_start);
}

static inline size_t fast_next(int kind, const uint8_t *s, size_t n, size_t i)
{
    return kind == SPLIT_FAST_GPT2 ? gpt2_split_next(s, n, i)
                                   : llama3_split_next(s, n, i, kind == SPLIT_FAST_LLAMA3 ? 3 : 1);
}

static void fast_apply(PreCtx *c, int stage, int kind, const uint8_t *s, size_t n, int at_start)
{
    if (stage + 1 == c->t->n_pre) { /* last stage: straight into BPE */
        for (size_t i = 0; i < n;) {
            size_t j = fast_next(kind, s, n, i);
            tok_encode_piece(c->t, c->th, s + i, j - i, c->out);
            i = j;
        }
        return;
    }
    for (size_t i = 0; i < n;) {
        size_t j = fast_next(kind, s, n, i);
        pretok_run(c, stage + 1, s + i, j - i, at_start && i == 0);
        i = j;
    }
}

static void metaspace_apply(PreCtx *c, int stage, const PreTok *p, const uint8_t *s, size_t n, int at_start)
{
    ByteBuf *b = &c->scratch[stage];
    b->n = 0;
    int starts_with = n >= (size_t)p->repl_len && !memcmp(s, p->repl, (size_t)p->repl_len);
    int starts_space = n > 0 && s[0] == ' ';
    if (!starts_with && !starts_space &&
        (p->prepend_scheme == PREPEND_ALWAYS || (p->prepend_scheme == PREPEND_FIRST && at_start)))
        bytebuf_put(b, p->repl, (size_t)p->repl_len);
    for (size_t i = 0; i < n;) {
        const uint8_t *q = memchr(s + i, ' ', n - i);
        size_t j = q ? (size_t)(q - s) : n;
        bytebuf_put(b, s + i, j - i);
        if (j < n) bytebuf_put(b, p->repl, (size_t)p->repl_len);
        i = j + (j < n);
    }
    const uint8_t *t = (const uint8_t *)b->a;
    size_t m = b->n, r = (size_t)p->repl_len;
    if (!p->split) {
        pretok_run(c, stage + 1, t, m, at_start);
        return;
    }
    /* split on the replacement, MergedWithNext */
    size_t a = 0;
    for (size_t i = r; i + r <= m;) {
        if (!memcmp(t + i, p->repl, r)) {
            pretok_run(c, stage + 1, t + a, i - a, at_start && a == 0);
            a = i;
            i += r;
        } else {
            i++;
        }
    }
    if (m > a) pretok_run(c, stage + 1, t + a, m - a, at_start && a == 0);
}

static void bytelevel_prefix_apply(PreCtx *c, int stage, const uint8_t *s, size_t n, int at_start)
{
    if (n && s[0] == ' ') {
        pretok_run(c, stage + 1, s, n, at_start);
        return;
    }
    ByteBuf *b = &c->scratch[stage];
    b->n = 0;
    bytebuf_put(b, " ", 1);
    bytebuf_put(b, s, n);
    pretok_run(c, stage + 1, (const uint8_t *)b->a, b->n, at_start);
}

/* Digits: runs of \p{N} (or each one) isolated; Rust's char::is_numeric is \p{N}. */
static void digits_apply(PreCtx *c, int stage, const PreTok *p, const uint8_t *s, size_t n, int at_start)
{
    size_t a = 0, i = 0;
    while (i < n) {
        size_t k;
        uint8_t cl = cc_at(s, n, i, &k);
        if (cl != CC_N) {
            i += k;
            continue;
        }
        if (i > a) pretok_run(c, stage + 1, s + a, i - a, at_start && a == 0);
        size_t j = p->individual ? i + k : cc_run(s, n, i + k, CC_N);
        pretok_run(c, stage + 1, s + i, j - i, at_start && i == 0);
        a = i = j;
    }
    if (n > a) pretok_run(c, stage + 1, s + a, n - a, at_start && a == 0);
}

/* BertPreTokenizer: whitespace (Rust's) ends a piece and is dropped; each
 * punctuation character (ASCII punctuation or HF's Unicode P*) is a piece of
 * its own. An invalid byte is part of a word. */
static void bert_pretok_apply(PreCtx *c, int stage, const uint8_t *s, size_t n, int at_start)
{
    size_t a = 0; /* start of the current word */
    for (size_t i = 0; i < n;) {
        uint32_t cp = s[i];
        size_t k = 1;
        int cls;
        if (cp < 0x80) {
            cls = bert_ascii[cp];
        } else {
            k = (size_t)utf8_decode(s + i, n - i, &cp);
            if (!k) {
                i++;
                continue;
            }
            cls = uni_bert_space(cp) ? BERT_SPACE : uni_bert_punct(cp) ? BERT_PUNCT : 0;
        }
        if (!cls) {
            i += k;
            continue;
        }
        int space = cls == BERT_SPACE;
        if (i > a) pretok_run(c, stage + 1, s + a, i - a, at_start && a == 0);
        if (!space) pretok_run(c, stage + 1, s + i, k, at_start && i == 0);
        i += k;
        a = i;
    }
    if (n > a) pretok_run(c, stage + 1, s + a, n - a, at_start && a == 0);
}

static void pretok_run(PreCtx *c, int stage, const uint8_t *s, size_t n, int at_start)
{
    if (n == 0) return;
    if (stage == c->t->n_pre) {
        tok_encode_piece(c->t, c->th, s, n, c->out);
        return;
    }
    const PreTok *p = &c->t->pre[stage];
    switch (p->type) {
    case PRE_SPLIT:
        if (p->fast)
            fast_apply(c, stage, p->fast, s, n, at_start);
        else
            split_apply(c, stage, p, s, n, at_start);
        break;
    case PRE_METASPACE:
        metaspace_apply(c, stage, p, s, n, at_start);
        break;
    case PRE_BYTELEVEL_PREFIX:
        bytelevel_prefix_apply(c, stage, s, n, at_start);
        break;
    case PRE_DIGITS:
        digits_apply(c, stage, p, s, n, at_start);
        break;
    case PRE_BERT:
        bert_pretok_apply(c, stage, s, n, at_start);
        break;
    }
}

#define PRE_MAX_STAGES 16

/* The normalizers, ping-ponging between nb[0] and nb[1]; returns the result
 * (s itself when there are none), its length in *len. */
static const uint8_t *normalize_all(const Tokenizer *t, TokThread *th, const uint8_t *s, size_t n,
                                    ByteBuf nb[2], size_t *len)
{
    *len = n;
    for (int i = 0; i < t->n_norm; i++) {
        ByteBuf *o = &nb[i & 1];
        normalize_one(&t->norm[i], th, s, *len, o);
        s = o->a ? (const uint8_t *)o->a : (const uint8_t *)"";
        *len = o->n;
    }
    return s;
}

void tok_normalize(const Tokenizer *t, TokThread *th, const uint8_t *s, size_t n, ByteBuf *out)
{
    ByteBuf nb[2] = {{0}};
    size_t len;
    const uint8_t *r = normalize_all(t, th, s, n, nb, &len);
    out->n = 0;
    bytebuf_put(out, r, len);
    free(nb[0].a);
    free(nb[1].a);
}

/* Pre-tokenize and encode normalized text. */
static void encode_normalized(const Tokenizer *t, TokThread *th, const uint8_t *s, size_t n, int at_start,
                              IdVec *out)
{
    if (!t->n_pre && t->sp_split_len) {
        /* sentencepiece style without pre-tokenizer: the whole text is one BPE
         * word, but no merge can join a character to a following replacement
         * character (checked on the vocabulary at load), so cut before each
         * run of them and let the cache see words */
        size_t r = (size_t)t->sp_split_len, a = 0;
        for (size_t i = 1; i + r <= n; i++)
            if (!memcmp(s + i, t->sp_split, r) && !(i >= r && !memcmp(s + i - r, t->sp_split, r))) {
                tok_encode_piece(t, th, s + a, i - a, out);
                a = i;
            }
        tok_encode_piece(t, th, s + a, n - a, out);
        return;
    }
    ByteBuf scratch[PRE_MAX_STAGES] = {{0}};
    PreCtx c = {t, th, out, scratch};
    pretok_run(&c, 0, s, n, at_start);
    for (int i = 0; i < t->n_pre && i < PRE_MAX_STAGES; i++) free(scratch[i].a);
}

void tok_encode_segment(const Tokenizer *t, TokThread *th, const uint8_t *s, size_t n, int at_start,
                        IdVec *out)
{
    pthread_once(&cc_once, cc_init);
    ByteBuf nb[2] = {{0}};
    size_t len;
    const uint8_t *ns = normalize_all(t, th, s, n, nb, &len);
    if (t->n_nadded)
        tok_split_added(t, th, 1, ns, len, at_start, out, encode_normalized);
    else
        encode_normalized(t, th, ns, len, at_start, out);
    free(nb[0].a);
    free(nb[1].a);
}
