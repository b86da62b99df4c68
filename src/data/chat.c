/* chat.c - chat templates written out per family (contract and scoring rule in chat.h).
 *
 * Each renderer below is the real template of its family read as C: the comment above it is
 * the Jinja it follows. transformers renders with trim_blocks and lstrip_blocks, which only
 * remove template whitespace; the texts below are what reaches the output.
 */
#include "data/chat.h"

#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"

static const char *const FAMILY_NAMES[CHAT_N_FAMILIES] = {"chatml", "llama2", "llama3", "mistral",
                                                         "zephyr", "gemma",  "phi3"};
#define CHOICES "chatml|llama2|llama3|mistral|zephyr|gemma|phi3"
#define SET_IT "set data.chat_template: " CHOICES " to use that format (docs/sft.md)"

const char *chat_family_name(ChatFamily f)
{
    return f >= 0 && f < CHAT_N_FAMILIES ? FAMILY_NAMES[f] : "?";
}

void chat_template_free(ChatTemplate *ct)
{
    free(ct->default_system);
    ct->default_system = NULL;
}

/* The reference variant of each family (the template docs/sft.md quotes). */
int chat_template_named(const char *name, ChatTemplate *ct)
{
    memset(ct, 0, sizeof(*ct));
    int f = -1;
    for (int i = 0; i < CHAT_N_FAMILIES; i++)
        if (!strcmp(name, FAMILY_NAMES[i])) f = i;
    if (f < 0) return err_set("expected one of " CHOICES " (or empty: the tokenizer's own), got \"%s\"", name);
    ct->family = (ChatFamily)f;
    switch (ct->family) {
    case CHAT_LLAMA3:
    case CHAT_GEMMA: ct->bos = 1; break;
    case CHAT_MISTRAL: /* Mistral-7B-Instruct-v0.2 */
        ct->bos = 1;
        snprintf(ct->inst_open, CHAT_LIT_MAX, "[INST] ");
        snprintf(ct->inst_close, CHAT_LIT_MAX, " [/INST]");
        break;
    case CHAT_PHI3: /* Phi-3.5-mini-instruct */
        ct->skip_empty_system = 1;
        ct->eos_at_end = 1;
        break;
    default: break;
    }
    return 0;
}

/* ---- reading a template string ------------------------------------------------------------- */

static int has(const char *s, const char *what)
{
    return strstr(s, what) != NULL;
}

/* has(s, pat), or has it with each "\\n" of pat removed: a template's newline may be written as
 * the escape \n or (in a squashed string) as a real newline, which squash() removes. */
static int has_nl(const char *s, const char *pat)
{
    if (has(s, pat)) return 1;
    char alt[256], *o = alt;
    for (const char *p = pat; *p && o < alt + sizeof(alt) - 1; p++) {
        if (p[0] == '\\' && p[1] == 'n') {
            p++;
            continue;
        }
        *o++ = *p;
    }
    *o = '\0';
    return has(s, alt);
}

/* s without any whitespace (malloc'd): structural checks that ignore formatting. */
static char *squash(const char *s)
{
    char *o = xmalloc(strlen(s) + 1), *p = o;
    for (; *s; s++)
        if (!isspace((unsigned char)*s)) *p++ = *s;
    *p = '\0';
    return o;
}

/* A Jinja string literal at *p (' or "), with Python's escapes, into out (n bytes). Returns the
 * position after the closing quote, or NULL if it is not a literal or does not fit. */
static const char *lit_read(const char *p, char *out, size_t n)
{
    char q = *p;
    if (q != '\'' && q != '"') return NULL;
    size_t o = 0;
    for (p++; *p && *p != q; p++) {
        char c = *p;
        if (c == '\\' && p[1]) {
            p++;
            switch (*p) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case '\\': c = '\\'; break;
            case '\'': c = '\''; break;
            case '"': c = '"'; break;
            default: /* Python keeps an unknown escape as written */
                if (o + 1 >= n) return NULL;
                out[o++] = '\\';
                c = *p;
            }
        }
        if (o + 1 >= n) return NULL;
        out[o++] = c;
    }
    if (*p != q) return NULL;
    out[o] = '\0';
    return p + 1;
}

/* The default system prompt of a ChatML template: the literal
 * '<|im_start|>system\n<TEXT><|im_end|>\n' (TEXT not empty), or NULL when none. */
static char *chatml_default_system(const char *t)
{
    static const char head[] = "<|im_start|>system";
    for (const char *p = t; (p = strstr(p, head)); p += sizeof(head) - 1) {
        const char *q = p; /* back to the literal's opening quote */
        if (q == t || (q[-1] != '\'' && q[-1] != '"')) continue;
        char buf[4096];
        if (!lit_read(q - 1, buf, sizeof(buf))) continue;
        const char *s = buf + sizeof(head) - 1, *end = strstr(s, "<|im_end|>");
        if (*s != '\n' || !end || end == s + 1) continue; /* '<|im_start|>system\n' + content */
        size_t k = (size_t)(end - s - 1);
        char *d = xmalloc(k + 1);
        memcpy(d, s + 1, k);
        d[k] = '\0';
        return d;
    }
    return NULL;
}

/* The expression of the first {{ ... }} after `branch` split on '+' into at most `max` parts,
 * each a literal (kind 'l', text in lit[i]) or a name (kind 'n': content, eos). Returns the count,
 * or -1 when anything else appears. */
#define EXPR_MAX 6
static int expr_parts(const char *t, const char *branch, char kinds[EXPR_MAX], char lit[EXPR_MAX][CHAT_LIT_MAX])
{
    const char *p = strstr(t, branch);
    if (!p) return -1;
    p = strstr(p, "{{");
    if (!p) return -1;
    p += 2;
    if (*p == '-') p++;
    int n = 0;
    for (;;) {
        while (isspace((unsigned char)*p)) p++;
        if (n == EXPR_MAX) return -1;
        if (*p == '\'' || *p == '"') {
            p = lit_read(p, lit[n], CHAT_LIT_MAX);
            if (!p) return -1;
            kinds[n++] = 'l';
        } else {
            static const char *const content[] = {"message['content']", "message[\"content\"]", "message.content"};
            size_t k = 0;
            for (size_t i = 0; i < ARRAY_LEN(content) && !k; i++)
                if (!strncmp(p, content[i], strlen(content[i]))) k = strlen(content[i]);
            if (k) kinds[n++] = 'c';
            else if (!strncmp(p, "eos_token", 9)) k = 9, kinds[n++] = 'e';
            else return -1;
            p += k;
        }
        while (isspace((unsigned char)*p)) p++;
        if (*p == '+') {
            p++;
            continue;
        }
        if (*p == '-') p++;
        return !strncmp(p, "}}", 2) ? n : -1;
    }
}

static int mistral_read(const char *t, ChatTemplate *ct, const char *where)
{
    char kinds[EXPR_MAX], lit[EXPR_MAX][CHAT_LIT_MAX];
    static const char *const user[] = {"message['role'] == 'user' %}", "message[\"role\"] == \"user\" %}"};
    static const char *const asst[] = {"message['role'] == 'assistant' %}", "message[\"role\"] == \"assistant\" %}"};
    int n = -1;
    for (size_t i = 0; i < ARRAY_LEN(user) && n < 0; i++) n = expr_parts(t, user[i], kinds, lit);
    if (n != 3 || kinds[0] != 'l' || kinds[1] != 'c' || kinds[2] != 'l' || !has(lit[0], "[INST]") ||
        !has(lit[2], "[/INST]"))
        return err_set("%s: a Mistral-style template whose user turn is not '[INST] ' + content + ' [/INST]' "
                       "(or its spacing variants); " SET_IT, where);
    snprintf(ct->inst_open, CHAT_LIT_MAX, "%s", lit[0]);
    snprintf(ct->inst_close, CHAT_LIT_MAX, "%s", lit[2]);
    n = -1;
    for (size_t i = 0; i < ARRAY_LEN(asst) && n < 0; i++) n = expr_parts(t, asst[i], kinds, lit);
    int c = n > 0 && kinds[0] == 'l'; /* index of the content part */
    if (n < 2 || kinds[c] != 'c' || c + 1 >= n || kinds[c + 1] != 'e' || n > c + 3 ||
        (n == c + 3 && kinds[c + 2] != 'l'))
        return err_set("%s: a Mistral-style template whose assistant turn is not content + eos_token (with "
                       "optional literals around it); " SET_IT, where);
    snprintf(ct->asst_open, CHAT_LIT_MAX, "%s", c ? lit[0] : "");
    snprintf(ct->asst_close, CHAT_LIT_MAX, "%s", n == c + 3 ? lit[c + 2] : "");
    return 0;
}

static int refuse(const char *where, const char *what)
{
    return err_set("%s: %s, which anvil does not render exactly; " SET_IT, where, what);
}

int chat_template_detect(const char *t, const char *where, ChatTemplate *ct)
{
    memset(ct, 0, sizeof(*ct));
    int bos = has(t, "bos_token");
    if (has(t, "<|im_start|>")) {
        if (has(t, "<think>")) return refuse(where, "a ChatML template with <think> reasoning blocks (Qwen3 style)");
        if (has(t, "eos_token"))
            return refuse(where, "a ChatML template that writes eos_token (zephyr-gemma style)");
        ct->family = CHAT_CHATML;
        ct->bos = bos;
        ct->default_system = chatml_default_system(t);
        return 0;
    }
    if (has(t, "<|start_header_id|>")) {
        if (has(t, "Cutting Knowledge Date") || has(t, "date_string"))
            return refuse(where, "a Llama-3.1-style template (a dated system header on every conversation)");
        ct->family = CHAT_LLAMA3;
        ct->bos = bos;
        ct->trailing_header = !has(t, "add_generation_prompt");
        return 0;
    }
    if (has(t, "<start_of_turn>")) {
        if (!has(t, "System role not supported"))
            return refuse(where, "a Gemma template that takes a system role (Gemma 3 style)");
        ct->family = CHAT_GEMMA;
        ct->bos = bos;
        return 0;
    }
    if (has(t, "[INST]")) {
        if (has(t, "<<SYS>>")) {
            char *s = squash(t);
            int ok = has(s, "bos_token+'[INST]'+content.strip()+'[/INST]'") &&
                     has(s, "''+content.strip()+''+eos_token") &&
                     has_nl(s, "'<<SYS>>\\n'+system_message+'\\n<</SYS>>\\n\\n'");
            free(s);
            if (!ok) return refuse(where, "a Llama-2-style template that differs from Llama-2-chat's");
            ct->family = CHAT_LLAMA2;
            return 0;
        }
        if (has(t, "system_message") || has(t, "tools") || has(t, "[AVAILABLE_TOOLS]"))
            return refuse(where, "a Mistral template with system-prompt or tool handling (v0.3/Nemo style)");
        ct->family = CHAT_MISTRAL;
        ct->bos = bos;
        return mistral_read(t, ct, where);
    }
    if (has(t, "<|end|>") && has(t, "<|user|>")) {
        ct->family = CHAT_PHI3;
        ct->bos = bos;
        char *s = squash(t);
        ct->user_opens_assistant = has_nl(s, "'<|end|>'+'\\n'+'<|assistant|>'");
        ct->skip_empty_system = has(s, "=='system'andmessage['content']");
        ct->eos_at_end = has(s, "{%else%}{{eos_token}}");
        int renders_system = has(t, "<|system|>") || has(s, "'<|'+message['role']+'|>'");
        free(s);
        if (!ct->user_opens_assistant && !renders_system)
            return refuse(where, "a Phi-3 template with an unknown turn layout");
        return 0;
    }
    if (has(t, "<|user|>") && has(t, "<|assistant|>") && has(t, "eos_token")) {
        ct->family = CHAT_ZEPHYR;
        return 0;
    }
    return err_set("%s: not one of the chat templates anvil recognises (ChatML/Qwen, Llama-2, Llama-3, Mistral, "
                   "Zephyr, Gemma, Phi-3); set data.chat_template: " CHOICES,
                   where);
}

void chat_template_describe(const ChatTemplate *ct, char *buf, size_t n)
{
    size_t o = (size_t)snprintf(buf, n, "%s", chat_family_name(ct->family));
    if (ct->family == CHAT_CHATML && ct->default_system && o < n)
        o += (size_t)snprintf(buf + o, n - o, ", default system prompt \"%.60s%s\"", ct->default_system,
                              strlen(ct->default_system) > 60 ? "..." : "");
    if (ct->family == CHAT_MISTRAL && o < n)
        o += (size_t)snprintf(buf + o, n - o, ", user turn \"%s...%s\", assistant turn \"%s...</s>%s\"",
                              ct->inst_open, ct->inst_close, ct->asst_open, ct->asst_close);
    if (ct->family == CHAT_PHI3 && o < n)
        o += (size_t)snprintf(buf + o, n - o, "%s%s%s", ct->user_opens_assistant ? ", 2024-04 layout" : "",
                              ct->skip_empty_system ? ", empty system left out" : "",
                              ct->eos_at_end ? ", eos at the end" : "");
    if (ct->family == CHAT_LLAMA3 && ct->trailing_header && o < n)
        o += (size_t)snprintf(buf + o, n - o, ", assistant header after the last message");
    if (ct->bos && ct->family != CHAT_LLAMA2 && o < n) snprintf(buf + o, n - o, ", bos first");
}

/* ---- reading tokenizer_config.json --------------------------------------------------------- */

static int is_file(const char *p)
{
    struct stat st;
    return !stat(p, &st) && S_ISREG(st.st_mode);
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *b = xmalloc(cap);
    size_t k;
    while ((k = fread(b + n, 1, cap - n - 1, f)) > 0) {
        n += k;
        if (cap - n < 2) b = xrealloc(b, cap *= 2);
    }
    fclose(f);
    b[n] = '\0';
    *len = n;
    return b;
}

char *chat_template_read(const char *spec, char *where, size_t wn, int *found)
{
    *found = 0;
    if (where && wn) where[0] = '\0';
    if (!spec || !*spec || !strcmp(spec, "gpt2") || !strcmp(spec, "byte")) return NULL;
    char dir[4096];
    struct stat st;
    if (!stat(spec, &st) && S_ISDIR(st.st_mode)) {
        snprintf(dir, sizeof(dir), "%s", spec);
    } else {
        snprintf(dir, sizeof(dir), "%s", spec);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = '\0';
        else snprintf(dir, sizeof(dir), ".");
    }
    char path[4200];
    size_t len;
    snprintf(path, sizeof(path), "%s/chat_template.jinja", dir);
    if (is_file(path)) {
        char *s = read_all(path, &len);
        if (s) {
            *found = 1;
            if (where) snprintf(where, wn, "%s", path);
            if (strlen(s) != len) {
                free(s);
                err_set("%s: contains a NUL byte", path);
                return NULL;
            }
            return s;
        }
    }
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    if (!is_file(path)) return NULL;
    char *data = read_all(path, &len);
    if (!data) return NULL;
    json_error_t je;
    json_t *root = json_loadb(data, len, 0, &je);
    free(data);
    if (!root) {
        *found = 1;
        err_set("%s:%d: not JSON: %s", path, je.line, je.text);
        return NULL;
    }
    json_t *ct = json_object_get(root, "chat_template");
    char *out = NULL;
    if (where) snprintf(where, wn, "%s: chat_template", path);
    if (json_is_string(ct)) {
        out = xstrdup(json_string_value(ct));
    } else if (json_is_array(ct)) { /* [{"name": "default", "template": "..."}, {"name": "tool_use", ...}] */
        size_t i;
        json_t *v;
        json_array_foreach(ct, i, v) {
            json_t *name = json_object_get(v, "name"), *tpl = json_object_get(v, "template");
            if (json_is_string(name) && !strcmp(json_string_value(name), "default") && json_is_string(tpl))
                out = xstrdup(json_string_value(tpl));
        }
        if (!out) err_set("%s: chat_template: a list without a \"default\" template", path);
    } else if (ct && !json_is_null(ct)) {
        err_set("%s: chat_template: expected a string, got a JSON %s", path,
                json_is_object(ct) ? "object" : json_is_number(ct) ? "number" : "value");
    }
    *found = ct && !json_is_null(ct);
    json_decref(root);
    return out;
}

/* ---- rendering ------------------------------------------------------------------------------ */

void chat_text_free(ChatText *t)
{
    free(t->text);
    free(t->spans);
    memset(t, 0, sizeof(*t));
}

static void put(ChatText *t, const char *s, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        t->cap = MAX(2 * t->cap, t->len + n + 1);
        t->text = xrealloc(t->text, t->cap);
    }
    memcpy(t->text + t->len, s, n);
    t->len += n;
    t->text[t->len] = '\0';
}

static void puts_(ChatText *t, const char *s)
{
    put(t, s, strlen(s));
}

static void span_begin(ChatText *t)
{
    if (t->n_spans == t->cap_spans) {
        t->cap_spans = t->cap_spans ? 2 * t->cap_spans : 8;
        t->spans = xrealloc(t->spans, (size_t)t->cap_spans * sizeof(ChatSpan));
    }
    t->spans[t->n_spans].start = t->len;
    t->spans[t->n_spans].end = t->len;
}

static void span_end(ChatText *t)
{
    t->spans[t->n_spans++].end = t->len;
}

/* One UTF-8 code point at s[i] (valid UTF-8 assumed; a stray byte counts as itself). */
static unsigned cp_at(const unsigned char *s, size_t n, size_t i, size_t *len)
{
    unsigned c = s[i];
    size_t k = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (i + k > n) k = 1;
    *len = k;
    if (k == 1) return c;
    unsigned v = c & (0x7F >> k);
    for (size_t j = 1; j < k; j++) v = (v << 6) | (s[i + j] & 0x3F);
    return v;
}

/* Python's str.isspace(). */
static int py_space(unsigned c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

void chat_py_strip(const char *s, size_t n, size_t *a, size_t *b)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, k;
    while (i < n && py_space(cp_at(u, n, i, &k))) i += k;
    size_t e = n;
    while (e > i) { /* step back to the start of the last code point */
        size_t j = e - 1;
        while (j > i && (u[j] & 0xC0) == 0x80) j--;
        if (!py_space(cp_at(u, n, j, &k)) || j + k != e) break;
        e = j;
    }
    *a = i;
    *b = e;
}

static void put_stripped(ChatText *t, const char *s, size_t n)
{
    size_t a, b;
    chat_py_strip(s, n, &a, &b);
    put(t, s + a, b - a);
}

static const char *role_name(ChatRole r)
{
    return r == ROLE_SYSTEM ? "system" : r == ROLE_USER ? "user" : "assistant";
}

static int need(const char *tok, const char *what)
{
    return tok ? 0 : err_set("the chat template writes %s, but the tokenizer has no %s token", what, what);
}

/* The (role == user) != (index is even) check of the alternating templates. */
static int alternation(const ChatMessage *m, int i, int shown, const char *family)
{
    if ((m->role == ROLE_USER) != (shown % 2 == 0))
        return err_set("messages[%d].role: \"%s\" here breaks the %s template (it raises \"Conversation roles must "
                       "alternate user/assistant/user/assistant/...\")",
                       i, role_name(m->role), family);
    return 0;
}

/* {% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] +
 * '<|im_end|>' + '\n'}}{% endfor %}, after the default system turn when messages[0] is not one. */
static int render_chatml(const ChatTemplate *ct, const ChatMessage *m, int n, const char *bos, ChatText *t)
{
    if (ct->bos) {
        if (need(bos, "bos_token")) return -1;
        puts_(t, bos);
    }
    if (ct->default_system && m[0].role != ROLE_SYSTEM) {
        puts_(t, "<|im_start|>system\n");
        puts_(t, ct->default_system);
        puts_(t, "<|im_end|>\n");
    }
    for (int i = 0; i < n; i++) {
        puts_(t, "<|im_start|>");
        puts_(t, role_name(m[i].role));
        puts_(t, "\n");
        if (m[i].role == ROLE_ASSISTANT) span_begin(t);
        put(t, m[i].content, m[i].len);
        puts_(t, "<|im_end|>");
        if (m[i].role == ROLE_ASSISTANT) span_end(t);
        puts_(t, "\n");
    }
    return 0;
}

/* Llama-2-chat: an optional first system message folds into the first user turn as
 * '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + content; user: bos_token + '[INST] ' + content.strip()
 * + ' [/INST]'; assistant: ' ' + content.strip() + ' ' + eos_token; roles alternate from user. */
static int render_llama2(const ChatMessage *m, int n, const char *bos, const char *eos, ChatText *t)
{
    if (need(bos, "bos_token") || need(eos, "eos_token")) return -1;
    int first = m[0].role == ROLE_SYSTEM, rc = 0;
    ChatText c = {0}; /* one turn's content before the strip */
    for (int i = first; i < n && !rc; i++) {
        if (m[i].role == ROLE_SYSTEM) {
            rc = err_set("messages[%d].role: llama2 takes a system message only as the first message (its "
                         "template would drop or refuse this one)",
                         i);
            break;
        }
        if (alternation(&m[i], i, i - first, "llama2")) {
            rc = -1;
            break;
        }
        c.len = 0;
        if (i == first && first) {
            puts_(&c, "<<SYS>>\n");
            put(&c, m[0].content, m[0].len);
            puts_(&c, "\n<</SYS>>\n\n");
        }
        put(&c, m[i].content, m[i].len);
        if (m[i].role == ROLE_USER) {
            puts_(t, bos);
            puts_(t, "[INST] ");
            put_stripped(t, c.text, c.len);
            puts_(t, " [/INST]");
        } else {
            puts_(t, " ");
            span_begin(t);
            put_stripped(t, c.text, c.len);
            puts_(t, " ");
            puts_(t, eos);
            span_end(t);
        }
    }
    chat_text_free(&c);
    return rc;
}

/* Llama-3-Instruct: bos_token, then per message '<|start_header_id|>' + role +
 * '<|end_header_id|>\n\n' + content | trim + '<|eot_id|>'. */
static int render_llama3(const ChatTemplate *ct, const ChatMessage *m, int n, const char *bos, ChatText *t)
{
    if (ct->bos) {
        if (need(bos, "bos_token")) return -1;
        puts_(t, bos);
    }
    for (int i = 0; i < n; i++) {
        puts_(t, "<|start_header_id|>");
        puts_(t, role_name(m[i].role));
        puts_(t, "<|end_header_id|>\n\n");
        if (m[i].role == ROLE_ASSISTANT) span_begin(t);
        put_stripped(t, m[i].content, m[i].len);
        puts_(t, "<|eot_id|>");
        if (m[i].role == ROLE_ASSISTANT) span_end(t);
    }
    if (ct->trailing_header) puts_(t, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    return 0;
}

/* Mistral-Instruct: bos_token; roles alternate from user (the check comes first), then user:
 * inst_open + content + inst_close; assistant: asst_open + content + eos_token + asst_close;
 * any other role raises 'Only user and assistant roles are supported!'. */
static int render_mistral(const ChatTemplate *ct, const ChatMessage *m, int n, const char *bos, const char *eos,
                          ChatText *t)
{
    if (ct->bos) {
        if (need(bos, "bos_token")) return -1;
        puts_(t, bos);
    }
    for (int i = 0; i < n; i++) {
        if (alternation(&m[i], i, i, "mistral")) return -1;
        if (m[i].role == ROLE_USER) {
            puts_(t, ct->inst_open);
            put(t, m[i].content, m[i].len);
            puts_(t, ct->inst_close);
        } else if (m[i].role == ROLE_ASSISTANT) {
            if (need(eos, "eos_token")) return -1;
            puts_(t, ct->asst_open);
            span_begin(t);
            put(t, m[i].content, m[i].len);
            puts_(t, eos);
            span_end(t);
            puts_(t, ct->asst_close);
        } else {
            return err_set("messages[%d].role: mistral has no system role (its template raises \"Only user and "
                           "assistant roles are supported!\")",
                           i);
        }
    }
    return 0;
}

/* Zephyr: '<|user|>\n' | '<|system|>\n' | '<|assistant|>\n' + content + eos_token, then "\n". */
static int render_zephyr(const ChatMessage *m, int n, const char *eos, ChatText *t)
{
    if (need(eos, "eos_token")) return -1;
    for (int i = 0; i < n; i++) {
        puts_(t, m[i].role == ROLE_USER ? "<|user|>\n" : m[i].role == ROLE_SYSTEM ? "<|system|>\n" : "<|assistant|>\n");
        if (m[i].role == ROLE_ASSISTANT) span_begin(t);
        put(t, m[i].content, m[i].len);
        puts_(t, eos);
        if (m[i].role == ROLE_ASSISTANT) span_end(t);
        puts_(t, "\n");
    }
    return 0;
}

/* Gemma-it: bos_token; messages[0] must not be system ('System role not supported'); roles
 * alternate from user; '<start_of_turn>' + (assistant -> 'model', else the role) + '\n' +
 * content | trim + '<end_of_turn>\n'. */
static int render_gemma(const ChatTemplate *ct, const ChatMessage *m, int n, const char *bos, ChatText *t)
{
    if (m[0].role == ROLE_SYSTEM)
        return err_set("messages[0].role: gemma has no system role (its template raises \"System role not "
                       "supported\")");
    if (ct->bos) {
        if (need(bos, "bos_token")) return -1;
        puts_(t, bos);
    }
    for (int i = 0; i < n; i++) {
        if (alternation(&m[i], i, i, "gemma")) return -1;
        puts_(t, "<start_of_turn>");
        puts_(t, m[i].role == ROLE_ASSISTANT ? "model" : role_name(m[i].role));
        puts_(t, "\n");
        if (m[i].role == ROLE_ASSISTANT) span_begin(t);
        put_stripped(t, m[i].content, m[i].len);
        puts_(t, "<end_of_turn>");
        if (m[i].role == ROLE_ASSISTANT) span_end(t);
        puts_(t, "\n");
    }
    return 0;
}

/* Phi-3: '<|system|>\n' | '<|user|>\n' | '<|assistant|>\n' + content + '<|end|>\n' (Phi-3.5 leaves
 * out an empty system message), then eos_token; or the 2024-04 layout: bos_token, user:
 * '<|user|>\n' + content + '<|end|>\n<|assistant|>\n', assistant: content + '<|end|>\n', system
 * messages not rendered. */
static int render_phi3(const ChatTemplate *ct, const ChatMessage *m, int n, const char *bos, const char *eos,
                       ChatText *t)
{
    if (ct->bos) {
        if (need(bos, "bos_token")) return -1;
        puts_(t, bos);
    }
    for (int i = 0; i < n; i++) {
        if (m[i].role == ROLE_SYSTEM) {
            if (ct->user_opens_assistant)
                return err_set("messages[%d].role: this Phi-3 template (2024-04) has no system turn (it would drop "
                               "the message)",
                               i);
            if (ct->skip_empty_system && m[i].len == 0) continue;
            puts_(t, "<|system|>\n");
        } else if (m[i].role == ROLE_USER) {
            puts_(t, "<|user|>\n");
        } else if (!ct->user_opens_assistant) {
            puts_(t, "<|assistant|>\n");
        }
        if (m[i].role == ROLE_ASSISTANT) span_begin(t);
        put(t, m[i].content, m[i].len);
        puts_(t, "<|end|>");
        if (m[i].role == ROLE_ASSISTANT) span_end(t);
        puts_(t, "\n");
        if (m[i].role == ROLE_USER && ct->user_opens_assistant) puts_(t, "<|assistant|>\n");
    }
    if (ct->eos_at_end) {
        if (need(eos, "eos_token")) return -1;
        puts_(t, eos);
    }
    return 0;
}

int chat_render(const ChatTemplate *ct, const ChatMessage *m, int n, const char *bos, const char *eos, ChatText *t)
{
    t->len = 0;
    t->n_spans = 0;
    put(t, "", 0);
    if (n <= 0) return err_set("messages: empty conversation");
    switch (ct->family) {
    case CHAT_CHATML: return render_chatml(ct, m, n, bos, t);
    case CHAT_LLAMA2: return render_llama2(m, n, bos, eos, t);
    case CHAT_LLAMA3: return render_llama3(ct, m, n, bos, t);
    case CHAT_MISTRAL: return render_mistral(ct, m, n, bos, eos, t);
    case CHAT_ZEPHYR: return render_zephyr(m, n, eos, t);
    case CHAT_GEMMA: return render_gemma(ct, m, n, bos, t);
    case CHAT_PHI3: return render_phi3(ct, m, n, bos, eos, t);
    default: return err_set("chat template: unknown family %d", (int)ct->family);
    }
}
