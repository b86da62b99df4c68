/* chat.h - chat templates: a conversation -> the text a model's chat template renders, and the
 * byte spans of it that are scored (assistant turns).
 *
 * No general Jinja interpreter: each family's template is written out in C (chat.c), and a
 * tokenizer_config.json `chat_template` string is recognised as one of the families by its
 * markers, with the few things its variants differ in read from the string (a default system
 * prompt, BOS, the literals around [INST]). A template that is none of them, or a variant whose
 * output anvil would not reproduce exactly, is an error that says to set data.chat_template;
 * never a silently different format. docs/sft.md has the table.
 *
 * Rendering follows transformers' apply_chat_template(messages, add_generation_prompt=False), so
 * that tokenizing the text (tokenizer_encode: no BOS/EOS added) gives exactly its ids; the raise
 * cases of the real templates become errors "messages[i].role: ...".
 *
 * Scored spans: the content of an assistant turn as the template emits it (after any strip/trim)
 * plus the end-of-turn marker written right after it (<|im_end|>, </s>, <|eot_id|>, <end_of_turn>,
 * <|end|>), as a {% generation %} block around them would mark in transformers
 * (return_assistant_tokens_mask). Separators after the marker ("\n", a space) are not scored.
 */
#ifndef ANVIL_DATA_CHAT_H
#define ANVIL_DATA_CHAT_H

#include <stddef.h>

typedef enum {
    CHAT_CHATML,  /* <|im_start|>role\n ... <|im_end|>\n (Qwen2, OpenHermes, SmolLM) */
    CHAT_LLAMA2,  /* <s>[INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST] ... </s> */
    CHAT_LLAMA3,  /* <|start_header_id|>role<|end_header_id|>\n\n ... <|eot_id|> */
    CHAT_MISTRAL, /* <s>[INST] ... [/INST]...</s> (v0.1/v0.2/v0.3 spacing) */
    CHAT_ZEPHYR,  /* <|user|>\n ... </s>\n (Zephyr, TinyLlama-chat) */
    CHAT_GEMMA,   /* <start_of_turn>user\n ... <end_of_turn>\n, assistant as "model" */
    CHAT_PHI3,    /* <|user|>\n ... <|end|>\n */
    CHAT_N_FAMILIES
} ChatFamily;

typedef enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT } ChatRole;

typedef struct {
    ChatRole role;
    const char *content; /* UTF-8, len bytes (not NUL-terminated necessarily) */
    size_t len;
} ChatMessage;

#define CHAT_LIT_MAX 64 /* bytes of a literal read from a template ("[INST] ", " [/INST]") */

/* One family and the variant of it that a template string or a name selects. */
typedef struct {
    ChatFamily family;
    char *default_system; /* chatml: the system turn the template inserts when the conversation
                           * has none (Qwen2: "You are a helpful assistant."), or NULL */
    int bos;              /* the template writes bos_token first (chatml, llama3, mistral, gemma, phi3) */
    int trailing_header;  /* llama3: the first Llama-3 release wrote the assistant header after the
                           * last message unconditionally (no add_generation_prompt test) */
    int skip_empty_system;    /* phi3: a system message with empty content is left out (Phi-3.5) */
    int eos_at_end;           /* phi3: eos_token after the last message (add_generation_prompt off) */
    int user_opens_assistant; /* phi3 (2024-04): each user turn ends with "<|assistant|>\n" and
                               * system messages are not rendered */
    /* mistral: user turn = inst_open + content + inst_close; assistant turn =
     * asst_open + content + eos_token + asst_close */
    char inst_open[CHAT_LIT_MAX], inst_close[CHAT_LIT_MAX], asst_open[CHAT_LIT_MAX], asst_close[CHAT_LIT_MAX];
} ChatTemplate;

/* The rendered text and its scored byte spans [start, end), in order. */
typedef struct {
    size_t start, end;
} ChatSpan;

typedef struct {
    char *text;
    size_t len, cap;
    ChatSpan *spans;
    int n_spans, cap_spans;
} ChatText;

/* "chatml", "llama2", ... */
const char *chat_family_name(ChatFamily f);
/* The family named `name` with its reference variant (docs/sft.md). -1 with err_set() naming the
 * choices for an unknown name. */
int chat_template_named(const char *name, ChatTemplate *ct);
/* Recognise a Jinja chat_template string. `where` names its source in errors
 * ("DIR/tokenizer_config.json: chat_template"). -1 with err_set() when it is not one of the
 * families or is a variant anvil does not render. */
int chat_template_detect(const char *jinja, const char *where, ChatTemplate *ct);
/* The chat template of a tokenizer spec (a model directory or a tokenizer.json): the directory's
 * chat_template.jinja, else tokenizer_config.json's "chat_template" (a string, or a list of
 * {"name", "template"} whose "default" is taken). Returns a malloc'd string, NULL with *found = 0
 * when there is none (also for "gpt2"/"byte"), or NULL with *found = 1 and err_set() on a
 * malformed file. *where receives the file it came from (n bytes). */
char *chat_template_read(const char *tok_spec, char *where, size_t n, int *found);
/* One line describing the variant ("chatml, default system prompt \"...\""). */
void chat_template_describe(const ChatTemplate *ct, char *buf, size_t n);
void chat_template_free(ChatTemplate *ct);

/* Render a conversation. bos/eos are the texts of the tokenizer's BOS/EOS tokens (NULL when it has
 * none; an error if the template needs one). -1 with err_set("messages[i].role: ...") when the
 * real template would raise or drop a message. The ChatText is reset first. */
int chat_render(const ChatTemplate *ct, const ChatMessage *msgs, int n, const char *bos, const char *eos,
                ChatText *out);
void chat_text_free(ChatText *t);

/* Python's str.strip() (what Jinja's `trim` filter and `.strip()` call): the bounds of s[0..n)
 * without leading and trailing whitespace (str.isspace: Unicode White_Space plus U+001C..U+001F). */
void chat_py_strip(const char *s, size_t n, size_t *a, size_t *b);

#endif
