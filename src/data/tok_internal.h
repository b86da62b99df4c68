/* tok_internal.h - the inside of a Tokenizer, shared by the tok_*.c files.
 *
 * One pipeline serves every tokenizer we load (it is the Hugging Face one):
 *   text -> split on added/special tokens -> per segment: normalizers ->
 *   pre-tokenizers (pieces) -> model (BPE or WordPiece) per piece (ids) ->
 *   [post-processor template, only when asked] ; decode: ids ->
 *   per-token "piece bytes" (decoders applied at load time) -> concatenation,
 *   then the position-dependent decoder steps (strip of the first space).
 * Byte-level vocabularies (GPT-2, LLaMA-3, Qwen2) are converted at load time
 * from the printable byte alphabet of bytes_to_unicode() to raw bytes, so the
 * BPE model works on raw bytes and decoding is a concatenation.
 */
#ifndef ANVIL_DATA_TOK_INTERNAL_H
#define ANVIL_DATA_TOK_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "data/tokenizer.h"

/* ---- small growable vectors -------------------------------------------- */

typedef struct {
    int32_t *a;
    size_t n, cap;
} IdVec;

void idvec_push(IdVec *v, int32_t x);
void idvec_reserve(IdVec *v, size_t extra);

typedef struct {
    char *a;
    size_t n, cap;
} ByteBuf;

void bytebuf_put(ByteBuf *b, const void *p, size_t n);

/* ---- hashing ------------------------------------------------------------ */

/* 64-bit hash of a byte string (multiply-xorshift over 8-byte words). */
static inline uint64_t tok_load64(const uint8_t *p)
{
    uint64_t v;
    __builtin_memcpy(&v, p, 8);
    return v;
}

static inline uint64_t tok_load32(const uint8_t *p)
{
    uint32_t v;
    __builtin_memcpy(&v, p, 4);
    return v;
}

/* 64-bit hash of a byte string (multiply-xorshift; short keys read with two
 * overlapping loads, no byte loop). */
static inline uint64_t tok_hash(const void *p, size_t n)
{
    const uint8_t *s = (const uint8_t *)p;
    uint64_t a, b;
    if (n <= 16) {
        if (n >= 8) {
            a = tok_load64(s);
            b = tok_load64(s + n - 8);
        } else if (n >= 4) {
            a = tok_load32(s);
            b = tok_load32(s + n - 4);
        } else if (n > 0) {
            a = ((uint64_t)s[0] << 16) | ((uint64_t)s[n >> 1] << 8) | s[n - 1];
            b = 0;
        } else {
            a = b = 0;
        }
    } else {
        uint64_t h = 0x9E3779B97F4A7C15ULL ^ n;
        size_t i = 0;
        for (; i + 8 <= n - 8; i += 8) h = (h ^ tok_load64(s + i)) * 0xbf58476d1ce4e5b9ULL, h ^= h >> 31;
        a = h ^ tok_load64(s + i);
        b = tok_load64(s + n - 8);
    }
    uint64_t h = (a ^ 0x9E3779B97F4A7C15ULL ^ (n * 0xff51afd7ed558ccdULL)) * 0xbf58476d1ce4e5b9ULL;
    h = (h ^ (h >> 29) ^ b) * 0x94d049bb133111ebULL;
    return h ^ (h >> 32);
}

/* String -> id map over strings owned elsewhere (the vocabulary table).
 * Open addressing, power-of-two slots, -1 = empty. */
typedef struct {
    int32_t *slot;
    uint32_t *slot_hash;
    size_t mask;
} StrMap;

/* Pair (left id, right id) -> (merge rank, merged id). */
typedef struct {
    uint64_t *key; /* left << 32 | right; UINT64_MAX = empty */
    int32_t *rank;
    int32_t *id;
    size_t mask;
} PairMap;

/* ---- pipeline pieces ----------------------------------------------------- */

enum {
    NORM_NFC,
    NORM_NFD,
    NORM_NFKC,
    NORM_NFKD,
    NORM_LOWER,
    NORM_REPLACE,
    NORM_PREPEND,
    NORM_STRIP,
    NORM_BERT
};

typedef struct {
    int type;
    char *pattern, *content; /* Replace: pattern -> content (literal); Prepend: content */
    size_t pattern_len, content_len;
    pcre2_code *re; /* Replace with a Regex pattern */
    int strip_left, strip_right;
    /* BertNormalizer, applied in this order: clean_text (drop control characters, any
     * whitespace -> ' '), handle_chinese_chars (' ' around CJK ideographs), strip_accents
     * (NFD, drop nonspacing marks), lowercase */
    int bert_clean, bert_chinese, bert_strip, bert_lower;
} Normalizer;

enum { PRE_SPLIT, PRE_METASPACE, PRE_BYTELEVEL_PREFIX, PRE_DIGITS, PRE_BERT };
enum { SPLIT_ISOLATED, SPLIT_REMOVED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS };
enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };
enum { SPLIT_FAST_NONE, SPLIT_FAST_GPT2, SPLIT_FAST_LLAMA3, SPLIT_FAST_QWEN2 };

typedef struct {
    int type;
    /* PRE_SPLIT: a regex (re) or literal pattern; fast != SPLIT_FAST_NONE when
     * the regex is exactly GPT-2's, LLaMA-3's or Qwen2's (hand-written
     * splitters, proven identical to PCRE2 by tests) */
    pcre2_code *re;
    char *src; /* the regex or literal pattern text */
    size_t src_len;
    int is_regex, behavior, invert, fast;
    /* PRE_METASPACE */
    char repl[8];
    int repl_len, prepend_scheme, split;
    /* PRE_DIGITS */
    int individual;
} PreTok;

typedef struct {
    char *content;
    size_t len;
    int32_t id;
    int special, lstrip, rstrip, single_word;
    /* HF's "normalized": matched in the normalized text, against the normalized
     * content (when the tokenizer has normalizers; without, in the raw text) */
    int normalized, after_norm;
} AddedToken;

/* A file that defines the tokenizer, kept in memory for tokenizer_save(). */
typedef struct {
    char *name;
    char *data;
    size_t len;
} TokFile;

enum { TOK_BYTE, TOK_BPE, TOK_WORDPIECE };

#define TOK_MAX_FILES 4

/* The post-processor's template (HF TemplateProcessing; BertProcessing and
 * RobertaProcessing are written as one): a list of pieces, each a special
 * token (its ids) or the sequence A or B, with a token type id. */
typedef struct {
    int seq; /* -1: special token (ids); 0: sequence A; 1: sequence B */
    int32_t *ids;
    int n_ids;
    int type_id;
} TplPiece;

typedef struct {
    TplPiece *p;
    int n;
} TokTemplate;

/* Longest continuing_subword_prefix accepted (HF's is "##"). */
#define WP_MAX_PREFIX 16
/* HF's WordPiece defaults (and BertTokenizer's) */
#define WP_DEFAULT_UNK "[UNK]"
#define WP_DEFAULT_MAX_CHARS 100

struct Tokenizer {
    int kind;
    int vocab_size; /* max id + 1 */

    /* id -> bytes the BPE model knows it by (raw bytes for byte-level vocabularies) */
    char *model_buf;
    uint64_t *model_off; /* vocab_size + 1 offsets */
    /* id -> bytes it decodes to (decoders applied per token at load time) */
    char *piece_buf;
    uint64_t *piece_off;
    uint8_t *is_special; /* per id: an added special token */

    StrMap vocab;         /* model bytes -> id (WordPiece: model.vocab entries only, as HF looks up) */
    PairMap merges;       /* (a, b) -> (rank, a+b) */
    int byte_level;       /* initial BPE symbols are single bytes, else UTF-8 characters */
    int32_t byte_id[256]; /* byte-level: id of each byte; byte fallback: id of <0xNN>; -1 none */
    int byte_fallback, fuse_unk, ignore_merges;
    int32_t unk_id;
    /* WordPiece: the continuing-subword prefix, the longest word it tries (characters;
     * longer ones are unk), and the longest vocabulary entries without / after the
     * prefix (bytes), which bound the longest-match search */
    char wp_prefix[WP_MAX_PREFIX];
    int wp_prefix_len;
    long wp_max_chars;
    size_t wp_max_word, wp_max_cont;

    Normalizer *norm;
    int n_norm;
    PreTok *pre;
    int n_pre;
    AddedToken *added; /* sorted by length, longest first */
    int n_added;
    uint8_t added_first[256]; /* 1 if some added token matched in the raw text starts with this byte */
    /* the added tokens matched after normalization (after_norm), with their
     * normalized content, longest first */
    AddedToken *nadded;
    int n_nadded;
    uint8_t nadded_first[256];

    /* position-dependent decoder steps */
    char *first_buf;                     /* Metaspace decoder: the first token drops its replacement chars */
    uint64_t *first_off;                 /* NULL unless such a decoder is present */
    int dec_strip_start, dec_strip_stop; /* Strip decoder after Fuse: chars of dec_strip_char */
    char dec_strip_char;
    int dec_join_space; /* no decoder at all: HF joins the token strings with spaces */

    int32_t eos_id, bos_id;
    int add_bos;
    TokTemplate tpl_single, tpl_pair; /* post-processor; default: $A and $A $B:1 */
    int32_t tpl_bos, tpl_eos;         /* the template's leading / trailing special token, -1 none */
    char sp_split[8]; /* sentencepiece style: cut before this character (see tok_encode_segment) */
    int sp_split_len;
    int splittable; /* encode(a+b) == encode(a)+encode(b) at "x\ny" boundaries (GPT-2 fast path) */

    char identity[64];
    TokFile files[TOK_MAX_FILES];
    int n_files;

    struct PieceCache *cache; /* piece -> ids, shared by threads (tok_bpe.c) */
    pthread_key_t tls;        /* per-thread TokThread (scratch, regex match data) */
    int tls_ok;               /* tls was created (tok_finish ran) */
};

static inline const char *tok_model_str(const Tokenizer *t, int32_t id, size_t *len)
{
    *len = (size_t)(t->model_off[id + 1] - t->model_off[id]);
    return t->model_buf + t->model_off[id];
}

/* ---- tok_bpe.c ---------------------------------------------------------- */

void strmap_init(StrMap *m, size_t n);
void strmap_free(StrMap *m);
/* Insert id (keyed by the model bytes of id); keeps the first id for duplicates. */
void strmap_put(StrMap *m, const Tokenizer *t, int32_t id);
int32_t strmap_get(const StrMap *m, const Tokenizer *t, const void *s, size_t n);

void pairmap_init(PairMap *m, size_t n);
void pairmap_free(PairMap *m);
void pairmap_put(PairMap *m, int32_t a, int32_t b, int32_t rank, int32_t id);
static inline int32_t pairmap_get(const PairMap *m, int32_t a, int32_t b, int32_t *id)
{
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = (size_t)((k * 0x9E3779B97F4A7C15ULL) >> 20) & m->mask;
    for (;;) {
        uint64_t s = m->key[i];
        if (s == k) {
            *id = m->id[i];
            return m->rank[i];
        }
        if (s == UINT64_MAX) return -1;
        i = (i + 1) & m->mask;
    }
}

typedef struct PieceCache PieceCache;
PieceCache *piece_cache_new(void);
void piece_cache_free(PieceCache *c);
/* Per-thread state: scratch and PCRE2 match data. */
typedef struct TokThread TokThread;
TokThread *tok_thread(const Tokenizer *t);
TokThread *tok_thread_new(void); /* one not bound to a tokenizer (load time); tok_thread_free() */
void tok_thread_free(void *p);
pcre2_match_data *tok_thread_match_data(TokThread *th);

/* Encode one pre-token piece (bytes) with the model (BPE or WordPiece, through the
 * shared piece cache), appending ids to out. */
void tok_encode_piece(const Tokenizer *t, TokThread *th, const uint8_t *s, size_t n, IdVec *out);
/* Merge loop on symbol ids in place; returns the new count. Exposed for tests
 * (force: 0 auto, 1 quadratic scan, 2 heap). */
size_t bpe_merge(const Tokenizer *t, int32_t *sym, size_t n, int force);

/* ---- tok_pretok.c ------------------------------------------------------- */

/* The end of the pre-token starting at s[i] (i < n), hand-written splitters
 * for the three patterns below. */
size_t gpt2_split_next(const uint8_t *s, size_t n, size_t i);
size_t llama3_split_next(const uint8_t *s, size_t n, size_t i, int max_digits);
extern const char GPT2_SPLIT_PATTERN[], LLAMA3_SPLIT_PATTERN[], QWEN2_SPLIT_PATTERN[];
/* SPLIT_FAST_* for a Split regex (Isolated, not inverted) */
int split_fast_kind(const char *pattern);
pcre2_code *tok_regex_compile(const char *pattern, size_t len, const char *what);
/* Run normalizers, then split on the normalized added tokens, then the
 * pre-tokenizers on one segment, and encode each piece with the model. */
void tok_encode_segment(const Tokenizer *t, TokThread *th, const uint8_t *s, size_t n, int at_start,
                        IdVec *out);
/* The normalizers alone, into out (cleared first). */
void tok_normalize(const Tokenizer *t, TokThread *th, const uint8_t *s, size_t n, ByteBuf *out);
void pretok_free(PreTok *p);
void normalizer_free(Normalizer *nm);

/* BertNormalizer on in[0..n) into out (cleared first); invalid UTF-8 bytes pass through. */
void bert_normalize(const Normalizer *nm, const uint8_t *in, size_t n, ByteBuf *out);

/* ---- tok_wordpiece.c ------------------------------------------------------ */

/* Greedy longest-match-first WordPiece of one word (HF's WordPiece model): the
 * longest vocabulary entry at the start, then the longest prefix+rest entry at
 * each later position; a word longer than wp_max_chars characters, or one that
 * cannot be covered, is one unk. key and bounds are scratch. */
void wordpiece_encode_word(const Tokenizer *t, ByteBuf *key, IdVec *bounds, const uint8_t *s, size_t n,
                           IdVec *out);
/* A tokenizer.json document (malloc'd, NUL-terminated) equivalent to what
 * transformers' BertTokenizerFast builds from a legacy vocab.txt and the
 * options of tokenizer_config.json (cfg, may be NULL). NULL with err_set()
 * naming path on failure. */
char *wordpiece_vocab_txt_json(const char *txt, size_t len, const char *path, const char *cfg, size_t cfg_len,
                               const char *cfg_path);

/* ---- tok_unicode.c -------------------------------------------------------- */

/* Character classes of HF's BertNormalizer / BertPreTokenizer (their tables,
 * measured by tools/make_tokenizer_fixtures.py), for any code point. */
int uni_bert_control(uint32_t cp); /* removed by clean_text */
int uni_bert_space(uint32_t cp);   /* Rust char::is_whitespace */
int uni_bert_punct(uint32_t cp);   /* ASCII punctuation or Unicode P* (BertPreTokenizer) */
int uni_bert_mark(uint32_t cp);    /* nonspacing mark (removed by strip_accents) */
int uni_cjk(uint32_t cp);          /* CJK ideograph (handle_chinese_chars) */
/* Rust's char::to_lowercase of cp (HF's Lowercase): writes 1..8 UTF-8 bytes to out. */
int uni_lower(uint32_t cp, uint8_t *out);

/* ---- tok_json.c --------------------------------------------------------- */

int tok_load_hf_json(Tokenizer *t, const char *data, size_t len, const char *path, const char *dir);
int tok_load_vocab_merges(Tokenizer *t, const char *vocab, size_t vlen, const char *merges, size_t mlen,
                          const char *vpath, const char *mpath);

/* ---- tokenizer.c -------------------------------------------------------- */

void tok_template_free(TokTemplate *tp);

/* Append the ids of text to out (the engine behind tokenizer_encode). */
void tokenizer_encode_append(const Tokenizer *t, const char *text, size_t len, IdVec *out);
/* Split s on added tokens (leftmost, longest; lstrip, rstrip, single_word):
 * the raw-text ones (after_norm 0) or the normalized ones; the text between
 * goes to seg (at_start: it starts the segment), the tokens' ids to out. */
typedef void (*TokSegmentFn)(const Tokenizer *t, TokThread *th, const uint8_t *s, size_t n, int at_start,
                             IdVec *out);
void tok_split_added(const Tokenizer *t, TokThread *th, int after_norm, const uint8_t *s, size_t n,
                     int at_start, IdVec *out, TokSegmentFn seg);
/* 1 if encoding may be split at "x\ny" (ASCII non-space around one newline)
 * and give the same ids as encoding the whole (the GPT-2 and byte tokenizers). */
int tokenizer_splittable(const Tokenizer *t);
int tok_is_byte_json(const char *data, size_t len);

/* Build the string tables from per-id model strings (NULL = unused id).
 * byte_level: decode piece = model bytes. */
void tok_strtab_build(char *const *strs, const size_t *lens, int n, char **buf, uint64_t **off);
void tok_set_vocab(Tokenizer *t, char **model, size_t *model_len, int n);
void tok_add_file(Tokenizer *t, const char *name, const char *data, size_t len);
int tok_finish(Tokenizer *t); /* byte ids, added-token index, thread key */

/* assets.c: the bundled GPT-2 vocabulary */
extern const char anvil_gpt2_encoder_json[], anvil_gpt2_encoder_json_end[];
extern const char anvil_gpt2_vocab_bpe[], anvil_gpt2_vocab_bpe_end[];

#endif
