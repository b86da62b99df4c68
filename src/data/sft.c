/* sft.c - instruction data: JSONL records -> (ids, scored mask) -> padded rows (contract in sft.h).
 *
 * Which tokens are scored is decided on the rendered text: chat.c gives the byte spans of the
 * assistant turns, and a token is scored when its own piece of the text overlaps a span, which is
 * transformers' rule for return_assistant_tokens_mask (a token is marked when its offsets overlap
 * a {% generation %} span). The token offsets are recovered from the ids: tokenizer_encode does
 * not return offsets, but every token's bytes (tokenizer_token_bytes) spell the text it came from,
 * with three exceptions that are handled where they occur:
 *   - a space the tokenizer adds in front of a segment (sentencepiece's "▁" prefix, ByteLevel's
 *     add_prefix_space) is in the first token but not in the text; a segment (the text between two
 *     added tokens) whose tokens spell one byte more than the text, the first token starting with
 *     a space, has it, and that token's offsets start at the segment (a lone prefix token covers the
 *     segment's first character, as in Hugging Face tokenizers);
 *   - whitespace an added token absorbs (lstrip/rstrip) belongs to that token;
 *   - where a normalizer rewrote the text (NFC, unknown characters) the tokens no longer spell it:
 *     the run is aligned from both ends and the tokens in between share the stretch of text left;
 *     that is exact for the mask unless a span boundary falls inside the stretch, which is an
 *     error naming the byte.
 */
#define _GNU_SOURCE /* memmem */
#include "data/sft.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"
#include "data/chat.h"
#include "data/textio.h"
#include "data/tok_internal.h"

/* RNG stream of the per-epoch example shuffle: rng_seed(seed, SFT_SHUFFLE_STREAM + epoch), apart
 * from the streams of parameter init (tensor index) and the token-window permutation. */
#define SFT_SHUFFLE_STREAM 0x5F700000000ULL

struct SftEncoder {
    const Tokenizer *tok;
    int has_template;
    ChatTemplate ct;
    int train_on_all;
    char *bos, *eos; /* the texts of the BOS / EOS tokens, or NULL */
    int32_t bos_id, eos_id;
    int add_bos;
    int32_t *added_of; /* id -> index in tok->added, or -1 */
    char desc[512];
    ChatText text; /* scratch */
};

/* ---- encoder -------------------------------------------------------------------------------- */

static char *token_text(const Tokenizer *tok, int32_t id)
{
    if (id < 0) return NULL;
    size_t n;
    const char *s = tokenizer_token_bytes(tok, id, &n);
    if (!n) return NULL;
    char *t = xmalloc(n + 1);
    memcpy(t, s, n);
    t[n] = '\0';
    return t;
}

SftEncoder *sft_encoder_new(const Tokenizer *tok, const char *tok_spec, const SftOptions *o)
{
    SftEncoder *e = xcalloc(1, sizeof(SftEncoder));
    e->tok = tok;
    e->train_on_all = o->train_on_all;
    e->bos_id = tokenizer_bos_id(tok);
    e->eos_id = tokenizer_eos_id(tok);
    e->add_bos = tokenizer_add_bos(tok) && e->bos_id >= 0;
    e->bos = token_text(tok, e->bos_id);
    e->eos = token_text(tok, e->eos_id);
    int vocab = tokenizer_vocab_size(tok);
    e->added_of = xmalloc((size_t)vocab * sizeof(int32_t));
    for (int i = 0; i < vocab; i++) e->added_of[i] = -1;
    for (int k = 0; k < tok->n_added; k++)
        if (tok->added[k].id >= 0 && tok->added[k].id < vocab) e->added_of[tok->added[k].id] = k;
    const char *name = o->chat_template ? o->chat_template : "";
    char where[4400] = "";
    if (!strcmp(name, "none")) {
        snprintf(e->desc, sizeof(e->desc), "no chat template (data.chat_template: none)");
    } else if (name[0]) {
        if (chat_template_named(name, &e->ct)) {
            err_prefix("data.chat_template");
            goto fail;
        }
        e->has_template = 1;
        snprintf(e->desc, sizeof(e->desc), "chat template %s (data.chat_template)", name);
    } else {
        int found;
        char *jinja = chat_template_read(tok_spec, where, sizeof(where), &found);
        if (!jinja && found) goto fail;
        if (jinja) {
            int rc = chat_template_detect(jinja, where, &e->ct);
            free(jinja);
            if (rc) goto fail;
            e->has_template = 1;
            char d[256];
            chat_template_describe(&e->ct, d, sizeof(d));
            snprintf(e->desc, sizeof(e->desc), "chat template %s (recognised in %s)", d, where);
        } else {
            snprintf(e->desc, sizeof(e->desc), "no chat template (the tokenizer has none)");
        }
    }
    return e;
fail:
    sft_encoder_free(e);
    return NULL;
}

void sft_encoder_free(SftEncoder *e)
{
    if (!e) return;
    chat_template_free(&e->ct);
    chat_text_free(&e->text);
    free(e->bos);
    free(e->eos);
    free(e->added_of);
    free(e);
}

const char *sft_encoder_describe(const SftEncoder *e)
{
    return e->desc;
}

void sft_example_free(SftExample *x)
{
    free(x->ids);
    free(x->mask);
    memset(x, 0, sizeof(*x));
}

static void ex_reserve(SftExample *x, size_t n)
{
    if (n <= x->cap) return;
    x->cap = MAX(n, 2 * x->cap);
    x->ids = xrealloc(x->ids, x->cap * sizeof(int32_t));
    x->mask = xrealloc(x->mask, x->cap);
}

static void ex_push(SftExample *x, int32_t id, uint8_t m)
{
    ex_reserve(x, x->n + 1);
    x->ids[x->n] = id;
    x->mask[x->n++] = m;
}

/* ---- token offsets and the mask --------------------------------------------------------------- */

typedef struct {
    size_t s, e;
    int shared; /* one of several tokens that share [s, e) (the text there was rewritten) */
} Off;

/* Length of the UTF-8 character at s[i] (1 for a stray byte). */
static size_t char_len(const char *s, size_t n, size_t i)
{
    unsigned c = (unsigned char)s[i];
    size_t k = c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    return i + k <= n ? k : 1;
}

/* Unicode White_Space at s[i] (what Rust's char::is_whitespace, and so an added token's
 * lstrip/rstrip, takes): its length in bytes, 0 if none. */
static size_t ws_at(const char *s, size_t n, size_t i)
{
    const unsigned char *u = (const unsigned char *)s;
    if (i >= n) return 0;
    unsigned c = u[i];
    if ((c >= 0x09 && c <= 0x0D) || c == ' ') return 1;
    if (c == 0xC2 && i + 1 < n && (u[i + 1] == 0x85 || u[i + 1] == 0xA0)) return 2;
    if (i + 2 >= n) return 0;
    unsigned v = (c << 16) | (u[i + 1] << 8) | u[i + 2];
    if (v == 0xE19A80 || (v >= 0xE28080 && v <= 0xE2808A) || v == 0xE280A8 || v == 0xE280A9 || v == 0xE280AF ||
        v == 0xE2819F || v == 0xE38080)
        return 3;
    return 0;
}

static size_t ws_before(const char *s, size_t n, size_t i)
{
    for (size_t k = 1; k <= 3 && k <= i; k++)
        if (ws_at(s, n, i - k) == k) return k;
    return 0;
}

static const char *tok_piece(const SftEncoder *e, int32_t id, size_t *len)
{
    int k = id >= 0 && id < tokenizer_vocab_size(e->tok) ? e->added_of[id] : -1;
    if (k >= 0) {
        *len = e->tok->added[k].len;
        return e->tok->added[k].content;
    }
    return tokenizer_token_bytes(e->tok, id, len);
}

static int is_added(const SftEncoder *e, int32_t id)
{
    return (id >= 0 && id < tokenizer_vocab_size(e->tok) && e->added_of[id] >= 0) || tokenizer_is_special(e->tok, id);
}

static const AddedToken *added_tok(const SftEncoder *e, int32_t id)
{
    int k = id >= 0 && id < tokenizer_vocab_size(e->tok) ? e->added_of[id] : -1;
    return k >= 0 ? &e->tok->added[k] : NULL;
}

/* Offsets of a run of ordinary tokens that together come from text[s, t). */
static void align_run(const SftEncoder *e, const char *text, size_t s, size_t t, const int32_t *ids, size_t m,
                      Off *off)
{
    size_t total = 0, l0 = 0;
    const char *b0 = m ? tok_piece(e, ids[0], &l0) : NULL;
    for (size_t k = 0; k < m; k++) {
        size_t l;
        tok_piece(e, ids[k], &l);
        total += l;
    }
    int virt = m && l0 && b0[0] == ' ' && total == t - s + 1;
    size_t pos = s, k = 0;
    for (; k < m; k++) {
        size_t bl;
        const char *b = tok_piece(e, ids[k], &bl);
        if (k == 0 && virt) {
            b++, bl--;
            if (!bl) { /* only the prefix space: it stands for the segment's first character */
                off[0] = (Off){s, s < t ? s + char_len(text, t, s) : s, 0};
                continue;
            }
        }
        if (bl > t - pos || memcmp(text + pos, b, bl)) break;
        off[k] = (Off){k == 0 ? s : pos, pos + bl, 0};
        pos += bl;
    }
    if (k == m && pos == t) return;
    size_t end = t, kb = m; /* tokens kb..m-1 aligned from the end */
    while (kb > k) {
        size_t bl;
        const char *b = tok_piece(e, ids[kb - 1], &bl);
        int first_virt = kb - 1 == 0 && virt;
        if (first_virt) b++, bl--;
        if (bl > end - pos || memcmp(text + end - bl, b, bl)) break;
        off[kb - 1] = first_virt && !bl ? (Off){s, s < t ? s + char_len(text, t, s) : s, 0}
                                        : (Off){first_virt ? s : end - bl, end, 0};
        end -= bl;
        kb--;
    }
    for (size_t x = k; x < kb; x++) off[x] = (Off){pos, end, 1};
    if (k == kb && pos < end) { /* text that no token spells: to a neighbour */
        if (k > 0) off[k - 1].e = end;
        else if (k < m) off[k].s = pos;
    }
}

/* Offsets of every token of text[0, L). -1 with err_set() when the ids do not come from it. */
static int align(const SftEncoder *e, const char *text, size_t L, const int32_t *ids, size_t n, Off *off)
{
    size_t cur = 0, i = 0;
    while (i < n) {
        if (is_added(e, ids[i])) {
            size_t cl;
            const char *c = tok_piece(e, ids[i], &cl);
            const AddedToken *a = added_tok(e, ids[i]);
            size_t q = cur;
            while (q < L && (cl > L - q || memcmp(text + q, c, cl)) && a && a->lstrip && ws_at(text, L, q))
                q += ws_at(text, L, q);
            if (cl > L - q || memcmp(text + q, c, cl))
                return err_set("the tokens do not spell the rendered text at byte %zu", cur);
            size_t end = q + cl;
            if (a && a->rstrip)
                while (ws_at(text, L, end)) end += ws_at(text, L, end);
            off[i++] = (Off){cur, end, 0};
            cur = end;
            continue;
        }
        size_t j = i;
        while (j < n && !is_added(e, ids[j])) j++;
        size_t seg_end = L;
        if (j < n) {
            size_t cl;
            const char *c = tok_piece(e, ids[j], &cl);
            const char *hit = cl ? memmem(text + cur, L - cur, c, cl) : NULL;
            if (!hit) return err_set("the tokens do not spell the rendered text after byte %zu", cur);
            seg_end = (size_t)(hit - text);
            const AddedToken *a = added_tok(e, ids[j]);
            if (a && a->lstrip)
                while (seg_end > cur && ws_before(text, L, seg_end)) seg_end -= ws_before(text, L, seg_end);
        }
        align_run(e, text, cur, seg_end, ids + i, j - i, off + i);
        cur = seg_end;
        i = j;
    }
    if (cur != L && n) off[n - 1].e = L; /* trailing text no token spells */
    return 0;
}

/* mask[i] = 1 when token i's offsets overlap a span (transformers' assistant mask). */
static int mask_from_spans(const Off *off, size_t n, const ChatSpan *sp, int ns, uint8_t *mask)
{
    for (size_t i = 0; i < n; i++) {
        mask[i] = 0;
        for (int k = 0; k < ns; k++) {
            if (off[i].e > sp[k].start && off[i].s < sp[k].end) mask[i] = 1;
            if (off[i].shared) {
                size_t b[2] = {sp[k].start, sp[k].end};
                for (int z = 0; z < 2; z++)
                    if (b[z] > off[i].s && b[z] < off[i].e)
                        return err_set("cannot tell which tokens of bytes %zu..%zu of the rendered text are assistant "
                                       "tokens (the tokenizer's normalizer rewrites that text); check it with anvil "
                                       "tokenize --chat",
                                       off[i].s, off[i].e);
            }
        }
    }
    return 0;
}

/* ---- records ------------------------------------------------------------------------------------ */

static int blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return 0;
    return 1;
}

static const char *json_kind(const json_t *v)
{
    return json_is_object(v) ? "an object" : json_is_array(v) ? "a list" : json_is_string(v) ? "a string"
         : json_is_number(v) ? "a number" : json_is_boolean(v) ? "a boolean" : "null";
}

/* The messages of a record into msgs (n of them), pointing into root. */
static int read_messages(json_t *arr, ChatMessage **msgs, int *n)
{
    if (!json_is_array(arr))
        return err_set("messages: expected a list of {\"role\", \"content\"} objects, got %s", json_kind(arr));
    size_t k = json_array_size(arr);
    if (k == 0) return err_set("messages: empty list");
    if (k > 1000000) return err_set("messages: %zu messages is more than the 1000000 a record may hold", k);
    ChatMessage *m = xcalloc(k, sizeof(ChatMessage));
    for (size_t i = 0; i < k; i++) {
        json_t *o = json_array_get(arr, i);
        if (!json_is_object(o)) {
            free(m);
            return err_set("messages[%zu]: expected an object with \"role\" and \"content\", got %s", i, json_kind(o));
        }
        json_t *r = json_object_get(o, "role"), *c = json_object_get(o, "content");
        if (!r || !json_is_string(r)) {
            free(m);
            return r ? err_set("messages[%zu].role: expected a string, got %s", i, json_kind(r))
                     : err_set("messages[%zu].role: missing", i);
        }
        const char *rs = json_string_value(r);
        if (!strcmp(rs, "system")) m[i].role = ROLE_SYSTEM;
        else if (!strcmp(rs, "user")) m[i].role = ROLE_USER;
        else if (!strcmp(rs, "assistant")) m[i].role = ROLE_ASSISTANT;
        else {
            err_set("messages[%zu].role: expected \"user\", \"assistant\" or \"system\", got \"%.40s\"", i, rs);
            free(m);
            return -1;
        }
        if (!c || !json_is_string(c)) {
            free(m);
            return c ? err_set("messages[%zu].content: expected a string, got %s", i, json_kind(c))
                     : err_set("messages[%zu].content: missing", i);
        }
        m[i].content = json_string_value(c);
        m[i].len = json_string_length(c);
    }
    *msgs = m;
    *n = (int)k;
    return 0;
}

/* A conversation through the chat template: ids of the rendered text, mask from its spans. */
static int encode_chat(SftEncoder *e, const ChatMessage *m, int n, SftExample *out)
{
    if (chat_render(&e->ct, m, n, e->bos, e->eos, &e->text)) return -1;
    int32_t *ids;
    long k = tokenizer_encode(e->tok, e->text.text, e->text.len, &ids);
    if (k < 0) return -1;
    ex_reserve(out, (size_t)k + 1);
    memcpy(out->ids, ids, (size_t)k * sizeof(int32_t));
    free(ids);
    out->n = (size_t)k;
    if (e->train_on_all) {
        memset(out->mask, 1, out->n);
        return 0;
    }
    Off *off = xmalloc(((size_t)k + 1) * sizeof(Off));
    int rc = align(e, e->text.text, e->text.len, out->ids, out->n, off);
    if (!rc) rc = mask_from_spans(off, out->n, e->text.spans, e->text.n_spans, out->mask);
    free(off);
    return rc;
}

/* TRL's prompt-completion rule without a template (sft.h). */
static int encode_plain(SftEncoder *e, const char *p, size_t pn, const char *c, size_t cn, SftExample *out)
{
    if (e->eos_id < 0) return err_set("completion: the tokenizer has no EOS token to end it with");
    size_t el = e->eos ? strlen(e->eos) : 0;
    int has_eos = el && cn >= el && !memcmp(c + cn - el, e->eos, el);
    char *both = xmalloc(pn + cn + 1);
    memcpy(both, p, pn);
    memcpy(both + pn, c, cn);
    int32_t *pid = NULL, *all = NULL;
    long np = tokenizer_encode(e->tok, p, pn, &pid), na = np < 0 ? -1 : tokenizer_encode(e->tok, both, pn + cn, &all);
    free(both);
    int rc = -1;
    if (np >= 0 && na >= 0) {
        size_t head = (size_t)e->add_bos, cut = head + (size_t)np;
        if (e->add_bos) ex_push(out, e->bos_id, 0);
        for (long i = 0; i < na; i++) ex_push(out, all[i], out->n >= cut);
        if (!has_eos) ex_push(out, e->eos_id, out->n >= cut);
        if (e->train_on_all) memset(out->mask, 1, out->n);
        rc = 0;
    }
    free(pid);
    free(all);
    return rc;
}

int sft_encode_json(SftEncoder *e, const char *line, size_t len, SftExample *out)
{
    out->n = 0;
    if (blank(line, len)) return 1;
    json_error_t je;
    json_t *root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) return err_set("not valid JSON: %s (column %d)", je.text, je.column);
    int rc = -1;
    ChatMessage *msgs = NULL;
    json_t *mv = json_object_get(root, "messages"), *pv = json_object_get(root, "prompt"),
           *cv = json_object_get(root, "completion");
    if (!json_is_object(root)) {
        err_set("expected a JSON object, got %s", json_kind(root));
    } else if (mv && (pv || cv)) {
        err_set("has both \"messages\" and \"%s\"; a record is one or the other", pv ? "prompt" : "completion");
    } else if (mv) {
        int n = 0;
        if (!e->has_template)
            err_set("messages: %s, so nothing renders them; set data.chat_template: "
                    "chatml|llama2|llama3|mistral|zephyr|gemma|phi3", e->desc);
        else if (!read_messages(mv, &msgs, &n))
            rc = encode_chat(e, msgs, n, out);
    } else if (pv || cv) {
        if (!pv || !cv) err_set("%s: missing (a record has \"prompt\" and \"completion\")", pv ? "completion" : "prompt");
        else if (!json_is_string(pv)) err_set("prompt: expected a string, got %s", json_kind(pv));
        else if (!json_is_string(cv)) err_set("completion: expected a string, got %s", json_kind(cv));
        else if (e->has_template) {
            ChatMessage m[2] = {{ROLE_USER, json_string_value(pv), json_string_length(pv)},
                                {ROLE_ASSISTANT, json_string_value(cv), json_string_length(cv)}};
            rc = encode_chat(e, m, 2, out);
        } else {
            rc = encode_plain(e, json_string_value(pv), json_string_length(pv), json_string_value(cv),
                              json_string_length(cv), out);
        }
    } else {
        err_set("expected \"messages\", or \"prompt\" and \"completion\"");
    }
    free(msgs);
    json_decref(root);
    return rc;
}

/* ---- loader ----------------------------------------------------------------------------------- */

struct SftLoader {
    LoaderOptions opt;
    char *path;
    int32_t *ids;   /* every kept example, concatenated */
    uint8_t *mask;
    uint64_t *off;  /* example k is [off[k], off[k+1]) */
    uint64_t n_ex, off_cap, per_rank;
    uint32_t *perm; /* the order of the current epoch */
    uint64_t perm_epoch;
    int perm_valid;
    LoaderState st;
    int vocab;
    int32_t pad;
    SftStats stats;
};

static void perm_build(SftLoader *l, uint64_t epoch)
{
    for (uint64_t i = 0; i < l->n_ex; i++) l->perm[i] = (uint32_t)i;
    if (l->opt.shuffle) { /* Fisher-Yates */
        Rng r;
        rng_seed(&r, l->opt.seed, SFT_SHUFFLE_STREAM + epoch);
        for (uint64_t i = l->n_ex - 1; i > 0; i--) {
            uint64_t j = rng_below(&r, i + 1);
            uint32_t t = l->perm[i];
            l->perm[i] = l->perm[j];
            l->perm[j] = t;
        }
    }
    l->perm_epoch = epoch;
    l->perm_valid = 1;
}

/* Append one example (already cut to T + 1) to the loader's arrays. */
static void keep(SftLoader *l, const SftExample *x, uint64_t *cap)
{
    uint64_t at = l->off[l->n_ex];
    if (at + x->n > *cap) {
        *cap = MAX(2 * *cap, at + x->n);
        l->ids = xrealloc(l->ids, *cap * sizeof(int32_t));
        l->mask = xrealloc(l->mask, *cap);
    }
    memcpy(l->ids + at, x->ids, x->n * sizeof(int32_t));
    memcpy(l->mask + at, x->mask, x->n);
    if (l->n_ex + 2 > l->off_cap) {
        l->off_cap = MAX(2 * l->off_cap, 64);
        l->off = xrealloc(l->off, l->off_cap * sizeof(uint64_t));
    }
    l->off[++l->n_ex] = at + x->n;
}

static int read_file(SftLoader *l, SftEncoder *enc)
{
    size_t len;
    char *data = text_read_file(l->path, &len);
    if (!data) return -1;
    SftExample x = {0};
    uint64_t cap = 0;
    size_t T1 = (size_t)l->opt.T + 1, lineno = 0;
    int rc = 0;
    for (size_t p = 0; p < len;) {
        const char *nl = memchr(data + p, '\n', len - p);
        size_t e = nl ? (size_t)(nl - data) : len;
        lineno++;
        int r = sft_encode_json(enc, data + p, e - p, &x);
        p = e + 1;
        if (r < 0) {
            rc = err_prefix("%s:%zu", l->path, lineno);
            break;
        }
        if (r > 0) continue;
        l->stats.records++;
        if (x.n > T1) {
            x.n = T1;
            l->stats.truncated++;
        }
        uint64_t scored = 0;
        for (size_t t = 1; t < x.n; t++) scored += x.mask[t];
        if (!scored) {
            l->stats.dropped++;
            continue;
        }
        l->stats.tokens += x.n;
        l->stats.scored += scored;
        keep(l, &x, &cap);
    }
    sft_example_free(&x);
    free(data);
    return rc;
}

SftLoader *sft_loader_open(const char *path, const LoaderOptions *opt)
{
    const SftOptions *so = opt->sft;
    if (so->pack) {
        err_set("data.pack: packing is not supported yet: examples sharing a row would attend to each other "
                "without per-example attention segments, which the backends do not have; leave it false "
                "(each example is padded to train.seq_len)");
        return NULL;
    }
    if (!opt->tokenizer) {
        err_set("%s: data.format sft needs a tokenizer (data.tokenizer, or model.init's)", path);
        return NULL;
    }
    Tokenizer *tok = tokenizer_load(opt->tokenizer);
    if (!tok) return NULL;
    SftEncoder *enc = sft_encoder_new(tok, opt->tokenizer, so);
    if (!enc) {
        tokenizer_free(tok);
        return NULL;
    }
    SftLoader *l = xcalloc(1, sizeof(SftLoader));
    l->opt = *opt;
    l->opt.tokenizer = NULL;
    l->opt.sft = NULL;
    l->path = xstrdup(path);
    l->off_cap = 64;
    l->off = xcalloc(l->off_cap, sizeof(uint64_t));
    l->vocab = tokenizer_vocab_size(tok);
    l->pad = tokenizer_eos_id(tok) >= 0 ? tokenizer_eos_id(tok) : 0;
    int rc = read_file(l, enc);
    char desc[600];
    snprintf(desc, sizeof(desc), "%s", sft_encoder_describe(enc));
    sft_encoder_free(enc);
    tokenizer_free(tok);
    if (!rc && !l->n_ex)
        rc = err_set("%s: no example with a scored token (%llu records, %llu without any)", path,
                     (unsigned long long)l->stats.records, (unsigned long long)l->stats.dropped);
    l->stats.examples = l->n_ex;
    l->per_rank = l->n_ex / (uint64_t)opt->world;
    if (!rc && !l->per_rank)
        rc = err_set("%s: %llu examples are too few for %d ranks", path, (unsigned long long)l->n_ex, opt->world);
    if (rc) {
        sft_loader_close(l);
        return NULL;
    }
    l->perm = xmalloc((size_t)l->n_ex * sizeof(uint32_t));
    printf("sft: %s: %llu examples, %s; %llu tokens, %llu scored (%s); %llu truncated to seq_len + 1 = %d tokens "
           "(the end cut), %llu dropped (no scored token)\n",
           path, (unsigned long long)l->n_ex, desc, (unsigned long long)l->stats.tokens,
           (unsigned long long)l->stats.scored, so->train_on_all ? "data.train_on: all" : "assistant/completion tokens",
           (unsigned long long)l->stats.truncated, opt->T + 1, (unsigned long long)l->stats.dropped);
    fflush(stdout);
    return l;
}

int sft_loader_next(SftLoader *l, int32_t *inputs, int32_t *targets)
{
    int T = l->opt.T;
    for (int b = 0; b < l->opt.B; b++) {
        if (l->st.pos >= l->per_rank) {
            l->st.epoch++;
            l->st.pos = 0;
        }
        if (!l->perm_valid || l->perm_epoch != l->st.epoch) perm_build(l, l->st.epoch);
        uint64_t k = l->perm[l->st.pos * (uint64_t)l->opt.world + (uint64_t)l->opt.rank];
        const int32_t *ids = l->ids + l->off[k];
        const uint8_t *m = l->mask + l->off[k];
        int n = (int)(l->off[k + 1] - l->off[k]); /* <= T + 1 */
        int32_t *in = inputs + (size_t)b * T, *tg = targets + (size_t)b * T;
        for (int t = 0; t < T; t++) {
            in[t] = t < n - 1 ? ids[t] : l->pad;
            tg[t] = t < n - 1 && m[t + 1] ? ids[t + 1] : -1;
        }
        l->st.pos++;
    }
    return 0;
}

LoaderState sft_loader_state(const SftLoader *l)
{
    return l->st;
}

int sft_loader_set_state(SftLoader *l, LoaderState st)
{
    if (st.pos > l->per_rank)
        return err_set("%s: loader position %llu is past the %llu examples per epoch (different data?)", l->path,
                       (unsigned long long)st.pos, (unsigned long long)l->per_rank);
    l->st = st;
    return 0;
}

void sft_loader_reset(SftLoader *l)
{
    l->st.epoch = 0;
    l->st.pos = 0;
}

uint64_t sft_loader_num_tokens(const SftLoader *l)
{
    return l->stats.tokens;
}

uint64_t sft_loader_examples_per_epoch(const SftLoader *l)
{
    return l->per_rank;
}

int sft_loader_vocab_size(const SftLoader *l)
{
    return l->vocab;
}

SftStats sft_loader_stats(const SftLoader *l)
{
    return l->stats;
}

void sft_loader_close(SftLoader *l)
{
    if (!l) return;
    free(l->ids);
    free(l->mask);
    free(l->off);
    free(l->perm);
    free(l->path);
    free(l);
}
