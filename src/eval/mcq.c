/* mcq.c - multiple-choice tasks: reading the datasets' JSONL, building the
 * lm-evaluation-harness requests, and scoring them in packed batches (mcq.h). */
#include "eval/mcq.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

#include "core/error.h"
#include "data/textio.h"
#include "data/utf8.h"

/* lm-eval's default target_delimiter, put between context and choice. */
#define TARGET_DELIMITER " "

static const char *task_names[] = {"hellaswag", "piqa", "arc", "winogrande", "generic"};

int mcq_task_parse(const char *name, McqTask *t)
{
    for (int i = 0; i < (int)ARRAY_LEN(task_names); i++)
        if (!strcmp(name, task_names[i])) {
            *t = (McqTask)i;
            return 0;
        }
    return err_set("--task: unknown task \"%s\" (expected hellaswag, piqa, arc, winogrande or generic)",
                   name);
}

const char *mcq_task_name(McqTask t)
{
    return task_names[t];
}

/* ------------------------------------------------------------ strings */

typedef struct {
    char *s;
    size_t n, cap;
} Str;

static void str_put(Str *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = MAX(b->cap * 2, b->n + n + 1);
        b->s = xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static char *str_take(Str *b)
{
    if (!b->s) str_put(b, "", 0);
    return b->s;
}

static char *cat(const char *a, const char *b)
{
    Str s = {0};
    str_put(&s, a, strlen(a));
    str_put(&s, b, strlen(b));
    return str_take(&s);
}

/* One code point at s[i] (n bytes); invalid bytes count as themselves (length 1). */
static int next_cp(const char *s, size_t n, size_t i, uint32_t *cp)
{
    int k = utf8_decode((const uint8_t *)s + i, n - i, cp);
    if (!k) {
        *cp = (uint8_t)s[i];
        k = 1;
    }
    return k;
}

/* Python's str.isspace(): Unicode White_Space plus the ASCII separators 0x1C-0x1F. */
static int py_isspace(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

/* [*lo, *hi) of s without leading / trailing whitespace (Python's strip / rstrip). */
static void py_strip_range(const char *s, size_t n, size_t *lo, size_t *hi)
{
    size_t first = n, last_end = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int k = next_cp(s, n, i, &cp);
        if (!py_isspace(cp)) {
            if (first == n) first = i;
            last_end = i + (size_t)k;
        }
        i += (size_t)k;
    }
    *lo = first == n ? n : first;
    *hi = first == n ? n : last_end;
}

char *mcq_py_strip(const char *s)
{
    size_t n = strlen(s), lo, hi;
    py_strip_range(s, n, &lo, &hi);
    char *out = xmalloc(n + 1);
    size_t len = hi > lo && hi <= n ? hi - lo : 0;
    memcpy(out, s + lo, len);
    out[len] = 0;
    return out;
}

/* str.capitalize(): the first character title-cased, the rest lower-cased (Python >= 3.8).
 * utf8proc's simple case mappings; Python's full mappings differ only for a few
 * characters that expand (e.g. U+0130). */
char *mcq_py_capitalize(const char *s)
{
    size_t n = strlen(s);
    Str b = {0};
    int first = 1;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int k = next_cp(s, n, i, &cp);
        uint8_t enc[4];
        if (utf8_decode((const uint8_t *)s + i, n - i, &cp)) {
            uint32_t m = (uint32_t)(first ? utf8proc_totitle((utf8proc_int32_t)cp)
                                          : utf8proc_tolower((utf8proc_int32_t)cp));
            str_put(&b, (const char *)enc, (size_t)utf8_encode(m, enc));
        } else {
            str_put(&b, s + i, (size_t)k);
        }
        first = 0;
        i += (size_t)k;
    }
    return str_take(&b);
}

/* lm-eval's hellaswag preprocess():
 *   text.strip(); replace(" [title]", ". "); re.sub("\\[.*?\\]", "", text); replace("  ", " ")
 * The regex's "." does not match a newline; every replace is left to right, non-overlapping. */
char *mcq_hellaswag_preprocess(const char *s)
{
    char *t = mcq_py_strip(s);
    Str a = {0}, b = {0}, c = {0};
    static const char title[] = " [title]";
    for (const char *p = t; *p;) {
        if (!strncmp(p, title, sizeof(title) - 1)) {
            str_put(&a, ". ", 2);
            p += sizeof(title) - 1;
        } else {
            str_put(&a, p++, 1);
        }
    }
    char *u = str_take(&a);
    for (const char *p = u; *p;) {
        if (*p == '[') {
            const char *q = p + 1;
            while (*q && *q != ']' && *q != '\n') q++;
            if (*q == ']') { /* the shortest [...] on one line: removed */
                p = q + 1;
                continue;
            }
        }
        str_put(&b, p++, 1);
    }
    char *v = str_take(&b);
    for (const char *p = v; *p;) {
        if (p[0] == ' ' && p[1] == ' ') {
            str_put(&c, " ", 1);
            p += 2;
        } else {
            str_put(&c, p++, 1);
        }
    }
    free(t);
    free(u);
    free(v);
    return str_take(&c);
}

/* ------------------------------------------------------------- parsing */

/* A field error on the current line: "field \"x\": expected ..." */
static int field_err(char *msg, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int field_err(char *msg, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, cap, fmt, ap);
    va_end(ap);
    return -1;
}

static const char *get_str(json_t *o, const char *key, char *msg, size_t cap)
{
    json_t *v = json_object_get(o, key);
    if (!v) return field_err(msg, cap, "missing field \"%s\"", key), NULL;
    if (!json_is_string(v)) return field_err(msg, cap, "field \"%s\": expected a string", key), NULL;
    return json_string_value(v);
}

/* An index given as an integer or as a string of digits ("label": 2 or "2"). */
static int get_index(json_t *o, const char *key, int *out, char *msg, size_t cap)
{
    json_t *v = json_object_get(o, key);
    if (!v) return field_err(msg, cap, "missing field \"%s\"", key);
    if (json_is_integer(v)) {
        json_int_t x = json_integer_value(v);
        if (x < 0 || x > 1000000)
            return field_err(msg, cap, "field \"%s\": %lld is not a valid index", key, (long long)x);
        *out = (int)x;
        return 0;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;
        long x = strtol(s, &end, 10);
        if (*s && !*end && x >= 0 && x <= 1000000) {
            *out = (int)x;
            return 0;
        }
    }
    return field_err(msg, cap, "field \"%s\": expected an index (integer or digits)", key);
}

/* An array of at least 2 strings. */
static json_t *get_choices(json_t *o, const char *key, char *msg, size_t cap)
{
    json_t *v = json_object_get(o, key);
    if (!v) return field_err(msg, cap, "missing field \"%s\"", key), NULL;
    if (!json_is_array(v) || json_array_size(v) < 2)
        return field_err(msg, cap, "field \"%s\": expected an array of at least 2 strings", key), NULL;
    for (size_t i = 0; i < json_array_size(v); i++)
        if (!json_is_string(json_array_get(v, i)))
            return field_err(msg, cap, "field \"%s\": element %zu is not a string", key, i), NULL;
    return v;
}

static void item_alloc(McqItem *it, int n)
{
    it->n = n;
    it->ctx = xcalloc((size_t)n, sizeof(char *));
    it->cont = xcalloc((size_t)n, sizeof(char *));
    it->choice = xcalloc((size_t)n, sizeof(char *));
}

static void item_free(McqItem *it)
{
    for (int i = 0; i < it->n; i++) {
        free(it->ctx[i]);
        free(it->cont[i]);
        free(it->choice[i]);
    }
    free(it->ctx);
    free(it->cont);
    free(it->choice);
    memset(it, 0, sizeof(*it));
}

/* The same context for every choice, continuation " " + choice. */
static void item_set_choices(McqItem *it, const char *ctx, json_t *arr, int preprocess)
{
    item_alloc(it, (int)json_array_size(arr));
    for (int i = 0; i < it->n; i++) {
        const char *c = json_string_value(json_array_get(arr, (size_t)i));
        it->choice[i] = preprocess ? mcq_hellaswag_preprocess(c) : xstrdup(c);
        it->ctx[i] = xstrdup(ctx);
        it->cont[i] = cat(TARGET_DELIMITER, it->choice[i]);
    }
}

static int parse_hellaswag(json_t *o, McqItem *it, char *msg, size_t cap)
{
    json_t *endings = get_choices(o, "endings", msg, cap);
    if (!endings || get_index(o, "label", &it->gold, msg, cap)) return -1;
    json_t *lab = json_object_get(o, "activity_label");
    if (lab && !json_is_string(lab))
        return field_err(msg, cap, "field \"activity_label\": expected a string");
    /* lm-eval: ctx_a + " " + ctx_b.capitalize(); files with only "ctx" use it as it is */
    char *ctx;
    if (json_object_get(o, "ctx_a") || json_object_get(o, "ctx_b")) {
        const char *a = get_str(o, "ctx_a", msg, cap), *b = a ? get_str(o, "ctx_b", msg, cap) : NULL;
        if (!b) return -1;
        char *bc = mcq_py_capitalize(b), *ab = cat(a, " ");
        ctx = cat(ab, bc);
        free(bc);
        free(ab);
    } else {
        const char *c = get_str(o, "ctx", msg, cap);
        if (!c) return -1;
        ctx = xstrdup(c);
    }
    char *q = ctx;
    if (lab) {
        char *l = cat(json_string_value(lab), ": ");
        q = cat(l, ctx);
        free(l);
        free(ctx);
    }
    char *query = mcq_hellaswag_preprocess(q);
    free(q);
    item_set_choices(it, query, endings, 1);
    free(query);
    return 0;
}

static char *question_answer(const char *q)
{
    char *a = cat("Question: ", q), *b = cat(a, "\nAnswer:");
    free(a);
    return b;
}

static int parse_piqa(json_t *o, McqItem *it, char *msg, size_t cap)
{
    const char *goal = get_str(o, "goal", msg, cap);
    const char *s1 = goal ? get_str(o, "sol1", msg, cap) : NULL;
    const char *s2 = s1 ? get_str(o, "sol2", msg, cap) : NULL;
    if (!s2 || get_index(o, "label", &it->gold, msg, cap)) return -1;
    json_t *arr = json_pack("[ss]", s1, s2);
    char *q = question_answer(goal);
    item_set_choices(it, q, arr, 0);
    free(q);
    json_decref(arr);
    return 0;
}

/* The public ARC files on the Hugging Face hub: question, choices {text, label}, answerKey;
 * AI2's original layout (question {stem, choices [{text, label}]}) is read as well. */
static int parse_arc(json_t *o, McqItem *it, char *msg, size_t cap)
{
    json_t *q = json_object_get(o, "question"), *ch = json_object_get(o, "choices");
    const char *key = get_str(o, "answerKey", msg, cap);
    if (!key) return -1;
    const char *stem;
    json_t *texts = NULL, *labels = NULL;
    int own = 0;
    if (json_is_object(q)) {
        stem = get_str(q, "stem", msg, cap);
        json_t *list = json_object_get(q, "choices");
        if (!stem) return -1;
        if (!json_is_array(list)) return field_err(msg, cap, "field \"question.choices\": expected an array");
        texts = json_array();
        labels = json_array();
        own = 1;
        for (size_t i = 0; i < json_array_size(list); i++) {
            json_t *c = json_array_get(list, i);
            json_array_append(texts, json_object_get(c, "text"));
            json_array_append(labels, json_object_get(c, "label"));
        }
    } else {
        stem = get_str(o, "question", msg, cap);
        if (!stem) return -1;
        if (!json_is_object(ch))
            return field_err(msg, cap, "field \"choices\": expected an object {text, label}");
        texts = json_object_get(ch, "text");
        labels = json_object_get(ch, "label");
    }
    int rc = -1;
    json_t *tmp = json_pack("{sO}", "t", texts ? texts : json_null());
    if (!get_choices(tmp, "t", msg, cap)) {
        field_err(msg, cap, "field \"choices.text\": expected an array of at least 2 strings");
        goto out;
    }
    if (!json_is_array(labels) || json_array_size(labels) != json_array_size(texts)) {
        field_err(msg, cap, "field \"choices.label\": expected an array as long as choices.text");
        goto out;
    }
    it->gold = -1;
    for (size_t i = 0; i < json_array_size(labels); i++) {
        json_t *l = json_array_get(labels, i);
        if (json_is_string(l) && !strcmp(json_string_value(l), key)) {
            it->gold = (int)i;
            break;
        }
    }
    if (it->gold < 0) {
        field_err(msg, cap, "field \"answerKey\": \"%s\" is not one of choices.label", key);
        goto out;
    }
    char *qa = question_answer(stem);
    item_set_choices(it, qa, texts, 0);
    free(qa);
    rc = 0;
out:
    json_decref(tmp);
    if (own) {
        json_decref(texts);
        json_decref(labels);
    }
    return rc;
}

/* lm-eval's partial scoring: the option goes into the context, the rest of the sentence
 * after the blank is the continuation shared by both options. */
static int parse_winogrande(json_t *o, McqItem *it, char *msg, size_t cap)
{
    const char *s = get_str(o, "sentence", msg, cap);
    const char *o1 = s ? get_str(o, "option1", msg, cap) : NULL;
    const char *o2 = o1 ? get_str(o, "option2", msg, cap) : NULL;
    if (!o2 || get_index(o, "answer", &it->gold, msg, cap)) return -1;
    if (it->gold != 1 && it->gold != 2)
        return field_err(msg, cap, "field \"answer\": expected \"1\" or \"2\"");
    it->gold -= 1;
    const char *blank = strchr(s, '_');
    if (!blank) return field_err(msg, cap, "field \"sentence\": no \"_\" blank to fill");
    char *rest = mcq_py_strip(blank + 1), *cont = cat(TARGET_DELIMITER, rest);
    free(rest);
    item_alloc(it, 2);
    const char *opt[2] = {o1, o2};
    for (int i = 0; i < 2; i++) {
        Str b = {0};
        str_put(&b, s, (size_t)(blank - s));
        str_put(&b, opt[i], strlen(opt[i]));
        it->ctx[i] = str_take(&b);
        it->choice[i] = xstrdup(it->ctx[i]); /* lm-eval's doc_to_choice: the partial contexts */
        it->cont[i] = xstrdup(cont);
    }
    free(cont);
    return 0;
}

static int parse_generic(json_t *o, McqItem *it, char *msg, size_t cap)
{
    const char *ctx = get_str(o, "context", msg, cap);
    json_t *arr = ctx ? get_choices(o, "choices", msg, cap) : NULL;
    if (!arr) return -1;
    json_t *a = json_object_get(o, "answer");
    it->gold = -1;
    if (json_is_string(a)) /* the text of the right choice */
        for (size_t i = 0; i < json_array_size(arr); i++)
            if (!strcmp(json_string_value(a), json_string_value(json_array_get(arr, i)))) it->gold = (int)i;
    if (it->gold < 0 && get_index(o, "answer", &it->gold, msg, cap))
        return field_err(msg, cap, "field \"answer\": expected an index or the text of one of the choices");
    item_set_choices(it, ctx, arr, 0);
    return 0;
}

static int parse_item(McqTask task, json_t *o, McqItem *it, char *msg, size_t cap)
{
    if (!json_is_object(o)) return field_err(msg, cap, "expected a JSON object");
    int rc;
    switch (task) {
    case MCQ_HELLASWAG:
        rc = parse_hellaswag(o, it, msg, cap);
        break;
    case MCQ_PIQA:
        rc = parse_piqa(o, it, msg, cap);
        break;
    case MCQ_ARC:
        rc = parse_arc(o, it, msg, cap);
        break;
    case MCQ_WINOGRANDE:
        rc = parse_winogrande(o, it, msg, cap);
        break;
    default:
        rc = parse_generic(o, it, msg, cap);
        break;
    }
    if (!rc && (it->gold < 0 || it->gold >= it->n)) {
        rc = field_err(msg, cap, "the answer index %d is outside the %d choices", it->gold, it->n);
    }
    if (rc) item_free(it);
    return rc;
}

int mcq_load(const char *path, McqTask task, int limit, int skip_bad, McqSet *set)
{
    memset(set, 0, sizeof(*set));
    size_t len;
    char *data = text_read_file(path, &len);
    if (!data) return -1;
    set->path = xstrdup(path);
    set->task = task;
    int cap = 0, line = 0;
    char msg[512];
    for (size_t i = 0; i < len && (limit <= 0 || set->n < limit);) {
        size_t j = i;
        while (j < len && data[j] != '\n') j++;
        line++;
        size_t e = j;
        if (e > i && data[e - 1] == '\r') e--;
        size_t k = i;
        while (k < e && (data[k] == ' ' || data[k] == '\t')) k++;
        size_t start = i;
        i = j + 1;
        if (k == e) continue; /* blank line */
        json_error_t je;
        json_t *o = json_loadb(data + start, e - start, 0, &je);
        McqItem it = {0};
        int bad;
        if (!o)
            bad = field_err(msg, sizeof(msg), "invalid JSON: %s (column %d)", je.text, je.column);
        else
            bad = parse_item(task, o, &it, msg, sizeof(msg));
        json_decref(o);
        if (bad) {
            if (!skip_bad) {
                err_set("%s:%d: %s", path, line, msg);
                free(data);
                mcq_set_free(set);
                return -1;
            }
            fprintf(stderr, "anvil: warning: %s:%d: %s (skipped)\n", path, line, msg);
            set->skipped++;
            continue;
        }
        it.line = line;
        if (set->n == cap) {
            cap = cap ? 2 * cap : 64;
            set->items = xrealloc(set->items, (size_t)cap * sizeof(McqItem));
        }
        set->items[set->n++] = it;
    }
    free(data);
    if (!set->n) {
        err_set("%s: no items (%d malformed line%s skipped)", path, set->skipped,
                set->skipped == 1 ? "" : "s");
        mcq_set_free(set);
        return -1;
    }
    return 0;
}

void mcq_set_free(McqSet *set)
{
    for (int i = 0; i < set->n; i++) item_free(&set->items[i]);
    free(set->items);
    free(set->path);
    memset(set, 0, sizeof(*set));
}

/* ------------------------------------------------------------- scoring */

/* One (context, continuation) request, tokenized and cut to the window. */
typedef struct {
    int item, choice;
    int32_t *tok; /* the last <= ctx+1 tokens of ctx_enc + cont_enc; the last is not an input */
    int n;        /* tokens in tok */
    int n_cont;   /* continuation tokens (the last n_cont of tok) */
} McqReq;

/* The ids of s (*ids malloc'd, never NULL), as HFLM.tok_encode: with the tokenizer's special
 * tokens (its BOS, when the post-processor adds one) unless special == 0 or s already starts
 * with the BOS token's text. -1 with err_set() on failure. */
static int encode(const Tokenizer *tok, const char *s, int special, int32_t **ids, int *n)
{
    int32_t *v = NULL;
    long k = tokenizer_encode(tok, s, strlen(s), &v);
    if (k < 0) return -1;
    int bos = special && tokenizer_add_bos(tok) && tokenizer_bos_id(tok) >= 0;
    if (bos) {
        size_t bl;
        const char *bt = tokenizer_token_bytes(tok, tokenizer_bos_id(tok), &bl);
        bos = !(bl && !strncmp(s, bt, bl));
    }
    int32_t *out = xmalloc((size_t)(k + bos + 1) * sizeof(int32_t));
    if (bos) out[0] = tokenizer_bos_id(tok);
    if (k) memcpy(out + bos, v, (size_t)k * sizeof(int32_t));
    free(v);
    *ids = out;
    *n = (int)k + bos;
    return 0;
}

/* lm-eval's loglikelihood(): (context_enc, continuation_enc), then the window cut. */
static int make_request(const Tokenizer *tok, const char *context, const char *continuation, int special,
                        int window, McqReq *q, int *truncated)
{
    int32_t *ce = NULL, *we = NULL, *cont = NULL;
    int nc = 0, nw = 0, nk = 0;
    if (!*context) { /* an empty context: the BOS (else EOS) token stands in for it */
        int pre = tokenizer_bos_id(tok) >= 0 ? tokenizer_bos_id(tok) : tokenizer_eos_id(tok);
        if (pre < 0)
            return err_set("an empty context needs a BOS or EOS token, and the tokenizer has neither");
        if (encode(tok, continuation, 0, &cont, &nk)) goto fail;
        ce = xmalloc(sizeof(int32_t));
        ce[0] = pre;
        nc = 1;
        if (nk && cont[0] == pre) { /* the continuation starts with it: that token is the context */
            memmove(cont, cont + 1, (size_t)(nk - 1) * sizeof(int32_t));
            nk--;
        }
    } else {
        /* _encode_pair: the context's trailing whitespace goes to the continuation */
        size_t cl = strlen(context), lo, hi;
        py_strip_range(context, cl, &lo, &hi);
        size_t keep = hi > lo ? hi : 0; /* rstrip: up to the last non-space */
        char *c = xmalloc(keep + 1);
        memcpy(c, context, keep);
        c[keep] = 0;
        char *whole = cat(context, continuation);
        int bad = encode(tok, c, special, &ce, &nc) || encode(tok, whole, special, &we, &nw);
        free(c);
        free(whole);
        if (bad) goto fail;
        nk = MAX(nw - nc, 0);
        cont = xmalloc((size_t)(nk ? nk : 1) * sizeof(int32_t));
        memcpy(cont, we + nc, (size_t)nk * sizeof(int32_t));
    }
    int total = nc + nk, keep_n = MIN(total, window + 1);
    q->tok = xmalloc((size_t)keep_n * sizeof(int32_t));
    for (int i = 0; i < keep_n; i++) {
        int src = total - keep_n + i;
        q->tok[i] = src < nc ? ce[src] : cont[src - nc];
    }
    q->n = keep_n;
    q->n_cont = nk;
    *truncated = total > window + 1;
    free(ce);
    free(we);
    free(cont);
    return 0;
fail:
    free(ce);
    free(we);
    free(cont);
    return -1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A request's place in the batching order: longest first (as lm-eval), ties in request order. */
typedef struct {
    int n, idx;
} McqOrder;

static int cmp_len_desc(const void *a, const void *b)
{
    const McqOrder *x = a, *y = b;
    if (x->n != y->n) return y->n - x->n;
    return x->idx - y->idx;
}

/* First index of the largest value (numpy.argmax). */
static int argmax_d(const double *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++) n += ((uint8_t)*s & 0xC0) != 0x80;
    return n;
}

int mcq_score(Model *m, const Tokenizer *tok, const McqSet *set, const McqOptions *o, McqResult *r)
{
    memset(r, 0, sizeof(*r));
    int W = m->cfg.max_seq_len, V = m->cfg.vocab_size;
    if (o->ctx < 2 || o->ctx > W)
        return err_set("--seq: expected 2 .. %d (the model's window), got %d", W, o->ctx);
    if (o->batch < 1) return err_set("--batch: expected a number >= 1, got %d", o->batch);
    if (tokenizer_vocab_size(tok) > V)
        return err_set("the tokenizer's %d ids do not fit the model's vocabulary of %d",
                       tokenizer_vocab_size(tok), V);
    double t0 = now_s();
    int nreq = 0;
    for (int i = 0; i < set->n; i++) nreq += set->items[i].n;
    McqReq *req = xcalloc((size_t)nreq, sizeof(McqReq));
    r->requests = 0;
    r->has_norm = set->task != MCQ_WINOGRANDE;
    r->ll = xcalloc((size_t)set->n, sizeof(double *));
    r->pred = xcalloc((size_t)set->n, sizeof(int));
    r->pred_norm = xcalloc((size_t)set->n, sizeof(int));
    r->pred_bytes = xcalloc((size_t)set->n, sizeof(int));
    r->item_truncated = xcalloc((size_t)set->n, sizeof(int));
    r->item_too_long = xcalloc((size_t)set->n, sizeof(int));
    r->n_items = set->n;
    int k = 0, rc = -1;
    int32_t *in = NULL, *tg = NULL;
    McqOrder *order = NULL;
    for (int i = 0; i < set->n; i++) {
        const McqItem *it = &set->items[i];
        r->ll[i] = xcalloc((size_t)it->n, sizeof(double));
        for (int c = 0; c < it->n; c++, k++) {
            int trunc = 0;
            req[k].item = i;
            req[k].choice = c;
            if (make_request(tok, it->ctx[c], it->cont[c], !o->no_bos, o->ctx, &req[k], &trunc)) {
                err_prefix("%s:%d", set->path, it->line);
                goto out;
            }
            r->item_too_long[i] |= req[k].n_cont > o->ctx; /* lm-eval asserts it fits */
            r->item_truncated[i] |= trunc;
        }
        if (r->item_too_long[i]) {
            r->too_long++;
            continue;
        }
        for (int c = k - it->n; c < k; c++) r->tokens += req[c].n - 1;
        r->items++;
        r->requests += it->n;
        r->truncated += r->item_truncated[i];
    }
    if (!r->items) {
        err_set("%s: no item fits the window of %d tokens (a continuation is longer)", set->path, o->ctx);
        goto out;
    }
    if (model_reserve(m, o->batch, o->ctx, m->la ? m->recompute : RECOMPUTE_BLOCK)) goto out;
    long budget = (long)m->Bmax * m->Tmax; /* tokens per forward the activations hold */
    order = xmalloc((size_t)nreq * sizeof(McqOrder));
    int nq = 0;
    for (int i = 0; i < nreq; i++)
        if (!r->item_too_long[req[i].item]) order[nq++] = (McqOrder){req[i].n, i};
    qsort(order, (size_t)nq, sizeof(McqOrder), cmp_len_desc);
    in = xmalloc((size_t)budget * sizeof(int32_t));
    tg = xmalloc((size_t)budget * sizeof(int32_t));
    for (int i = 0; i < nq;) {
        int Tb = MAX(req[order[i].idx].n - 1, 1);
        int rows = (int)MIN((long)(nq - i), MAX(1L, budget / Tb));
        for (int b = 0; b < rows; b++) {
            const McqReq *q = &req[order[i + b].idx];
            int L = q->n - 1; /* inputs; position j predicts tok[j+1] */
            for (int j = 0; j < Tb; j++) {
                in[(size_t)b * Tb + j] = j < L ? q->tok[j] : 0;
                tg[(size_t)b * Tb + j] = (j < L && j >= L - q->n_cont) ? q->tok[j + 1] : -1;
            }
        }
        model_forward(m, in, tg, rows, Tb, 0.0f, NULL);
        for (int b = 0; b < rows; b++) {
            const McqReq *q = &req[order[i + b].idx];
            double ll = 0;
            for (int j = 0; j < Tb; j++)
                if (tg[(size_t)b * Tb + j] >= 0) ll -= m->losses_host[(size_t)b * Tb + j];
            if (!isfinite(ll)) {
                err_set("%s: item %d, choice %d: the log-likelihood is not finite (%g): the model's weights or "
                        "activations overflowed",
                        set->path, q->item, q->choice, ll);
                goto out;
            }
            r->ll[q->item][q->choice] = ll;
        }
        i += rows;
    }
    int acc = 0, acc_norm = 0, acc_bytes = 0;
    for (int i = 0; i < set->n; i++) {
        const McqItem *it = &set->items[i];
        if (r->item_too_long[i]) {
            r->pred[i] = r->pred_norm[i] = r->pred_bytes[i] = -1;
            continue;
        }
        double *norm = xmalloc((size_t)it->n * sizeof(double)),
               *byt = xmalloc((size_t)it->n * sizeof(double));
        for (int c = 0; c < it->n; c++) {
            norm[c] = r->ll[i][c] / (double)MAX(utf8_chars(it->choice[c]), 1);
            byt[c] = r->ll[i][c] / (double)MAX(strlen(it->choice[c]), 1);
        }
        r->pred[i] = argmax_d(r->ll[i], it->n);
        r->pred_norm[i] = argmax_d(norm, it->n);
        r->pred_bytes[i] = argmax_d(byt, it->n);
        acc += r->pred[i] == it->gold;
        acc_norm += r->pred_norm[i] == it->gold;
        acc_bytes += r->pred_bytes[i] == it->gold;
        free(norm);
        free(byt);
    }
    r->acc = (double)acc / r->items;
    r->acc_norm = r->has_norm ? (double)acc_norm / r->items : NAN;
    r->acc_bytes = r->has_norm ? (double)acc_bytes / r->items : NAN;
    r->seconds = now_s() - t0;
    rc = 0;
out:
    for (int i = 0; i < nreq; i++) free(req[i].tok);
    free(req);
    free(order);
    free(in);
    free(tg);
    if (rc) mcq_result_free(r);
    return rc;
}

void mcq_result_free(McqResult *r)
{
    for (int i = 0; i < r->n_items; i++)
        if (r->ll) free(r->ll[i]);
    free(r->ll);
    free(r->pred);
    free(r->pred_norm);
    free(r->pred_bytes);
    free(r->item_truncated);
    free(r->item_too_long);
    memset(r, 0, sizeof(*r));
}
