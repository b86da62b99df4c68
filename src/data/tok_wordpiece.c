/* tok_wordpiece.c - the WordPiece model (BERT's), and BERT's legacy vocab.txt.
 *
 * WordPiece splits a pre-token greedily, longest match first (HF's WordPiece
 * model, as in BERT's original tokenization.py): the longest vocabulary entry
 * that starts the word, then at each later position the longest entry
 * "##" + rest; a word that cannot be covered, or longer than
 * max_input_chars_per_word characters, is one unk. The search at a position
 * tries only candidates no longer than the longest vocabulary entry, so a
 * word costs O(characters x longest entry) hash lookups, never a scan of the
 * rest of the word per position.
 *
 * A vocab.txt (one token per line, the id is the line number) is turned into
 * the tokenizer.json that transformers' BertTokenizerFast builds from it, so
 * both load through the same code.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/error.h"
#include "data/tok_internal.h"
#include "data/utf8.h"

/* The last index x in [lo, hi] with b[x] <= limit (b ascending, b[lo] <= limit). */
static size_t last_within(const int32_t *b, size_t lo, size_t hi, size_t limit)
{
    while (lo < hi) {
        size_t m = lo + (hi - lo + 1) / 2;
        if ((size_t)b[m] <= limit)
            lo = m;
        else
            hi = m - 1;
    }
    return lo;
}

void wordpiece_encode_word(const Tokenizer *t, ByteBuf *key, IdVec *bounds, const uint8_t *s, size_t n,
                           IdVec *out)
{
    /* character starts; an invalid byte is a character of its own */
    bounds->n = 0;
    long chars = 0;
    for (size_t i = 0; i < n; chars++) {
        if (chars >= t->wp_max_chars || n > INT32_MAX) { /* (offsets are int32) */
            idvec_push(out, t->unk_id);
            return;
        }
        idvec_push(bounds, (int32_t)i);
        uint32_t cp;
        size_t k = (size_t)utf8_decode(s + i, n - i, &cp);
        i += k ? k : 1;
    }
    idvec_push(bounds, (int32_t)n);
    const int32_t *b = bounds->a;
    size_t m = bounds->n - 1; /* characters */
    size_t base = out->n, plen = (size_t)t->wp_prefix_len;
    for (size_t i = 0; i < m;) {
        size_t start = (size_t)b[i];
        size_t limit = i == 0 ? t->wp_max_word : t->wp_max_cont;
        size_t j = n - start <= limit ? m : last_within(b, i, m, start + limit);
        const uint8_t *k = s + start; /* the candidates are k[0 .. pre + length) */
        size_t pre = 0;
        if (i > 0) {
            key->n = 0;
            bytebuf_put(key, t->wp_prefix, plen);
            bytebuf_put(key, s + start, (size_t)b[j] - start);
            k = (const uint8_t *)key->a;
            pre = plen;
        }
        int32_t id = -1;
        for (; j > i; j--)
            if ((id = strmap_get(&t->vocab, t, k, pre + (size_t)b[j] - start)) >= 0) break;
        if (id < 0) { /* nothing covers this position: the word is unknown */
            out->n = base;
            idvec_push(out, t->unk_id);
            return;
        }
        idvec_push(out, id);
        i = j;
    }
}

/* ---- vocab.txt ------------------------------------------------------------------- */

/* BertTokenizer's defaults (transformers) */
static const char *const SPECIAL_KEYS[] = {"unk_token", "sep_token", "pad_token", "cls_token", "mask_token"};
static const char *const SPECIAL_DEFAULTS[] = {"[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"};
enum { SP_UNK, SP_SEP, SP_PAD, SP_CLS, SP_MASK, SP_COUNT };

/* A tokenizer_config.json option: true/false (null only where allowed). 1, 0,
 * -1 for null/absent with allow_null; -2 with err_set() on a wrong type. */
static int cfg_bool(json_t *cfg, const char *key, int def, int allow_null, const char *path)
{
    json_t *v = json_object_get(cfg, key);
    if (!v) return def;
    if (json_is_boolean(v)) return json_is_true(v);
    if (json_is_null(v) && allow_null) return -1;
    err_set("%s: %s: expected true or false%s", path, key, allow_null ? " (or null)" : "");
    return -2;
}

/* A special token: "..." or an AddedToken {"content": "...", "lstrip": ...,
 * "normalized": ...} (older transformers); NULL with err_set() on a wrong type.
 * *flags: the AddedToken's options, NULL for a plain name. */
static const char *cfg_token(json_t *cfg, const char *key, const char *def, const char *path, json_t **flags)
{
    json_t *v = json_object_get(cfg, key);
    *flags = NULL;
    if (!v || json_is_null(v)) return def;
    if (json_is_string(v)) return json_string_value(v);
    json_t *c = json_object_get(v, "content");
    if (json_is_object(v) && json_is_string(c)) {
        *flags = v;
        return json_string_value(c);
    }
    err_set("%s: %s: expected a string or {\"content\": ...}", path, key);
    return NULL;
}

static int flag_of(json_t *flags, const char *key)
{
    return json_is_true(json_object_get(flags, key));
}

/* Trailing Unicode whitespace (Rust's str::trim_end, as HF's WordPiece::read_file). */
static size_t trim_end(const char *s, size_t n)
{
    while (n) {
        size_t a = n - 1;
        while (a > 0 && ((uint8_t)s[a] & 0xC0) == 0x80 && n - a < 4) a--;
        uint32_t cp;
        int k = utf8_decode((const uint8_t *)s + a, n - a, &cp);
        if ((size_t)k != n - a || !uni_bert_space(cp)) break;
        n = a;
    }
    return n;
}

char *wordpiece_vocab_txt_json(const char *txt, size_t len, const char *path, const char *cfg, size_t cfg_len,
                               const char *cfg_path)
{
    char *out = NULL;
    json_t *cj = NULL, *vocab = json_object(), *root = NULL;
    if (cfg) {
        json_error_t je;
        cj = json_loadb(cfg, cfg_len, 0, &je);
        if (!cj) {
            err_set("%s: line %d: not valid JSON: %s", cfg_path, je.line, je.text);
            goto out;
        }
        if (!json_is_object(cj)) {
            err_set("%s: expected a JSON object", cfg_path);
            goto out;
        }
    }
    int lower = cfg_bool(cj, "do_lower_case", 1, 0, cfg_path);
    int chinese = cfg_bool(cj, "tokenize_chinese_chars", 1, 0, cfg_path);
    int strip = cfg_bool(cj, "strip_accents", -1, 1, cfg_path);
    if (lower < -1 || chinese < -1 || strip < -1) goto out;
    const char *sp[SP_COUNT];
    json_t *fl[SP_COUNT];
    for (int i = 0; i < SP_COUNT; i++)
        if (!(sp[i] = cfg_token(cj, SPECIAL_KEYS[i], SPECIAL_DEFAULTS[i], cfg_path, &fl[i]))) goto out;
    /* lines: split at \n (a \r before it goes with the trailing whitespace), no
     * line after a final \n; each token keeps its line number as id, and a
     * repeated token takes the later one (as HF's read_file) */
    size_t line = 0;
    for (size_t i = 0; i < len; line++) {
        const char *nl = memchr(txt + i, '\n', len - i);
        size_t e = nl ? (size_t)(nl - txt) : len;
        if (line >= INT32_MAX / 2) {
            err_set("%s: more than %d lines", path, INT32_MAX / 2);
            goto out;
        }
        if (utf8_validate((const uint8_t *)txt + i, e - i) != e - i) {
            err_set("%s: line %zu: invalid UTF-8", path, line + 1);
            goto out;
        }
        if (memchr(txt + i, 0, e - i)) {
            err_set("%s: line %zu: contains a NUL byte", path, line + 1);
            goto out;
        }
        json_object_setn_new(vocab, txt + i, trim_end(txt + i, e - i), json_integer((json_int_t)line));
        i = e + 1;
    }
    if (!line) {
        err_set("%s: empty vocabulary", path);
        goto out;
    }
    if (!json_object_get(vocab, sp[SP_UNK])) {
        err_set(
            "%s: the unknown token \"%s\" is not in the vocabulary (unk_token in tokenizer_config.json names "
            "it)",
            path, sp[SP_UNK]);
        goto out;
    }
    json_t *added = json_array();
    for (int i = 0; i < SP_COUNT; i++) {
        json_t *id = json_object_get(vocab, sp[i]);
        int dup = 0;
        for (int k = 0; k < i; k++) dup |= !strcmp(sp[k], sp[i]);
        if (!id || dup) continue;
        json_array_append_new(added, json_pack("{s:O, s:s, s:b, s:b, s:b, s:b, s:b}", "id", id, "content",
                                               sp[i], "single_word", flag_of(fl[i], "single_word"), "lstrip",
                                               flag_of(fl[i], "lstrip"), "rstrip", flag_of(fl[i], "rstrip"),
                                               "normalized", flag_of(fl[i], "normalized"), "special", 1));
    }
    json_t *post = json_null();
    json_t *cls = json_object_get(vocab, sp[SP_CLS]), *sep = json_object_get(vocab, sp[SP_SEP]);
    if (cls && sep) { /* BertTokenizerFast: "[CLS]:0 $A:0 [SEP]:0", pair "... $B:1 [SEP]:1" */
        json_t *st = json_pack("{s:{s:s, s:[O], s:[s]}}", sp[SP_CLS], "id", sp[SP_CLS], "ids", cls, "tokens",
                               sp[SP_CLS]);
        json_object_set_new(
            st, sp[SP_SEP],
            json_pack("{s:s, s:[O], s:[s]}", "id", sp[SP_SEP], "ids", sep, "tokens", sp[SP_SEP]));
        post =
            json_pack("{s:s, s:[{s:{s:s,s:i}}, {s:{s:s,s:i}}, {s:{s:s,s:i}}], "
                      "s:[{s:{s:s,s:i}}, {s:{s:s,s:i}}, {s:{s:s,s:i}}, {s:{s:s,s:i}}, {s:{s:s,s:i}}], s:o}",
                      "type", "TemplateProcessing", "single", "SpecialToken", "id", sp[SP_CLS], "type_id", 0,
                      "Sequence", "id", "A", "type_id", 0, "SpecialToken", "id", sp[SP_SEP], "type_id", 0,
                      "pair", "SpecialToken", "id", sp[SP_CLS], "type_id", 0, "Sequence", "id", "A",
                      "type_id", 0, "SpecialToken", "id", sp[SP_SEP], "type_id", 0, "Sequence", "id", "B",
                      "type_id", 1, "SpecialToken", "id", sp[SP_SEP], "type_id", 1, "special_tokens", st);
    }
    root = json_pack("{s:s, s:o, s:{s:s, s:b, s:b, s:o, s:b}, s:{s:s}, s:o, s:{s:s, s:s, s:b}, "
                     "s:{s:s, s:s, s:s, s:i, s:O}}",
                     "version", "1.0", "added_tokens", added, "normalizer", "type", "BertNormalizer",
                     "clean_text", 1, "handle_chinese_chars", chinese, "strip_accents",
                     strip < 0 ? json_null() : json_boolean(strip), "lowercase", lower, "pre_tokenizer",
                     "type", "BertPreTokenizer", "post_processor", post, "decoder", "type", "WordPiece",
                     "prefix", "##", "cleanup", 1, "model", "type", "WordPiece", "unk_token", sp[SP_UNK],
                     "continuing_subword_prefix", "##", "max_input_chars_per_word", WP_DEFAULT_MAX_CHARS,
                     "vocab", vocab);
    if (!root) {
        err_set("%s: internal error building the tokenizer", path);
        goto out;
    }
    out = json_dumps(root, JSON_COMPACT);
out:
    json_decref(root);
    json_decref(vocab);
    json_decref(cj);
    return out;
}
