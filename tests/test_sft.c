/* test_sft.c - instruction data: chat templates against transformers, the scored mask, the SFT
 * loader, and the loss of a masked batch.
 *
 * References: tests/fixtures/chat/<family>/cases.json, made by tools/make_chat_fixtures.py with
 * transformers' apply_chat_template (ids) and return_assistant_tokens_mask (mask), and TRL's
 * prompt-completion rule for the fixtures without a template. Nothing here compares against numbers
 * anvil computed itself.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "core/error.h"
#include "data/chat.h"
#include "data/loader.h"
#include "data/sft.h"
#include "data/tokenizer.h"
#include "model/model.h"
#include "test.h"

static char *fixture_path(const char *dir, const char *file)
{
    size_t n = strlen(test_fixtures()) + strlen(dir) + strlen(file) + 16;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/chat/%s%s%s", test_fixtures(), dir, file[0] ? "/" : "", file);
    return p;
}

static json_t *load_json(const char *path)
{
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    CHECKF(j != NULL, "%s: %s", path, je.text);
    return j;
}

static int same_ids(const SftExample *x, json_t *ids)
{
    if (json_array_size(ids) != x->n) return 0;
    for (size_t i = 0; i < x->n; i++)
        if (json_integer_value(json_array_get(ids, i)) != x->ids[i]) return 0;
    return 1;
}

static int same_mask(const SftExample *x, json_t *mask)
{
    if (json_array_size(mask) != x->n) return 0;
    for (size_t i = 0; i < x->n; i++)
        if (json_integer_value(json_array_get(mask, i)) != x->mask[i]) return 0;
    return 1;
}

/* Every case of one fixture directory through an encoder with data.chat_template = `name`
 * ("" = recognised from the directory's tokenizer_config.json). Returns cases compared. */
static int check_dir(const char *dir, const char *name)
{
    char *tdir = fixture_path(dir, "");
    char *cpath = fixture_path(dir, "cases.json");
    json_t *root = load_json(cpath);
    Tokenizer *tok = tokenizer_load(tdir);
    CHECKF(tok != NULL, "%s: %s", tdir, err_get());
    int compared = 0;
    if (root && tok) {
        SftOptions o = {.chat_template = name};
        SftEncoder *e = sft_encoder_new(tok, tdir, &o);
        CHECKF(e != NULL, "%s: %s", dir, err_get());
        const char *family = json_string_value(json_object_get(root, "family"));
        if (e && !name[0]) {
            char want[64];
            snprintf(want, sizeof(want), strcmp(family, "none") ? "chat template %s" : "no chat template", family);
            CHECKF(!strncmp(sft_encoder_describe(e), want, strlen(want)), "%s: %s, expected %s", dir,
                   sft_encoder_describe(e), want);
        }
        size_t i;
        json_t *c;
        SftExample x = {0};
        json_array_foreach(json_object_get(root, "cases"), i, c) {
            if (!e) break;
            char *line = json_dumps(json_object_get(c, "row"), JSON_COMPACT);
            int rc = sft_encode_json(e, line, strlen(line), &x);
            json_t *err = json_object_get(c, "error"), *refused = json_object_get(c, "refused");
            if (err) {
                /* the real template raises: anvil's error carries the template's own message */
                CHECKF(rc == -1 && strstr(err_get(), json_string_value(err)), "%s case %zu: expected an error with "
                       "\"%s\", got rc %d \"%s\"", dir, i, json_string_value(err), rc, err_get());
            } else if (refused) {
                CHECKF(rc == -1 && strstr(err_get(), "drop"), "%s case %zu: expected a refusal, got rc %d \"%s\"", dir,
                       i, rc, err_get());
            } else {
                CHECKF(rc == 0, "%s case %zu: %s", dir, i, err_get());
                CHECKF(rc == 0 && same_ids(&x, json_object_get(c, "ids")), "%s case %zu (%s): ids differ from "
                       "transformers'", dir, i, line);
                CHECKF(rc == 0 && same_mask(&x, json_object_get(c, "mask")), "%s case %zu (%s): mask differs from "
                       "transformers'", dir, i, line);
                compared++;
            }
            free(line);
        }
        sft_example_free(&x);
        sft_encoder_free(e);
    }
    if (tok) tokenizer_free(tok);
    json_decref(root);
    free(tdir);
    free(cpath);
    return compared;
}

static char **fixture_dirs(int *n)
{
    char *p = fixture_path("index.txt", "");
    FILE *f = fopen(p, "r");
    CHECKF(f != NULL, "%s", p);
    free(p);
    char **v = NULL, line[256];
    *n = 0;
    while (f && fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0] || line[0] == '#') continue;
        v = xrealloc(v, (size_t)(*n + 1) * sizeof(char *));
        v[(*n)++] = xstrdup(line);
    }
    if (f) fclose(f);
    return v;
}

/* Each family's real template, recognised from tokenizer_config.json, gives transformers' ids and
 * assistant mask for every conversation, and its errors where the template raises. */
static void test_families_vs_transformers(void)
{
    int n, total = 0;
    char **dirs = fixture_dirs(&n);
    CHECK(n >= 12);
    for (int i = 0; i < n; i++) {
        int k = check_dir(dirs[i], "");
        CHECKF(k >= 5, "%s: only %d cases compared", dirs[i], k);
        total += k;
        free(dirs[i]);
    }
    free(dirs);
    CHECK(total >= 100);
}

/* data.chat_template: <family> renders the reference variant of each family, the same as the real
 * template it was written from. */
static void test_named_families(void)
{
    static const char *const pairs[][2] = {{"chatml", "chatml"}, {"llama2", "llama2"}, {"llama3", "llama3"},
                                           {"zephyr", "zephyr"}, {"gemma", "gemma"},   {"phi3", "phi3"}};
    for (size_t i = 0; i < ARRAY_LEN(pairs); i++) CHECKF(check_dir(pairs[i][0], pairs[i][1]) >= 5, "%s", pairs[i][0]);
    ChatTemplate ct;
    CHECK(chat_template_named("vicuna", &ct) == -1 && strstr(err_get(), "chatml|llama2|llama3|mistral|zephyr|gemma|phi3"));
    /* mistral's reference is v0.2's spacing: "[INST] " + user + " [/INST]" + answer + eos */
    CHECK(chat_template_named("mistral", &ct) == 0);
    ChatMessage m[2] = {{ROLE_USER, "Hi", 2}, {ROLE_ASSISTANT, "Yo", 2}};
    ChatText t = {0};
    CHECK(chat_render(&ct, m, 2, "<s>", "</s>", &t) == 0 && !strcmp(t.text, "<s>[INST] Hi [/INST]Yo</s>"));
    CHECK(t.n_spans == 1 && t.spans[0].start == 20 && t.spans[0].end == 26);
    chat_text_free(&t);
}

/* Templates that are none of the families, or variants anvil would not render exactly, are errors
 * that say to set data.chat_template; never a silent wrong format. */
static void test_template_recognition(void)
{
    ChatTemplate ct;
    static const char *const refused[][2] = {
        {"{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}", "not one of the chat templates"},
        {"{{'<|im_start|>' + message.role}}{% if '<think>' in c %}{% endif %}", "<think>"},
        {"{{- bos_token }}{{ 'Cutting Knowledge Date: December 2023' }}<|start_header_id|>", "Llama-3.1"},
        {"{{ bos_token }}{% if tools %}[AVAILABLE_TOOLS]{% endif %}[INST]", "system-prompt or tool"},
        {"<start_of_turn>{% set first_user_prefix = '' %}", "Gemma 3"},
        {"{{ bos_token }}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] | trim + ' [/INST]' }}"
         "{% endif %}", "user turn"},
    };
    for (size_t i = 0; i < ARRAY_LEN(refused); i++) {
        int rc = chat_template_detect(refused[i][0], "x/tokenizer_config.json: chat_template", &ct);
        CHECKF(rc == -1 && strstr(err_get(), refused[i][1]) && strstr(err_get(), "x/tokenizer_config.json") &&
                   strstr(err_get(), "data.chat_template"),
               "case %zu: %s", i, err_get());
        chat_template_free(&ct);
    }
    /* a ChatML variant's own default system prompt is read from the template (SmolLM2's) */
    const char *smol = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
                       "'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                       "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                       "'<|im_end|>' + '\\n'}}{% endfor %}";
    CHECK(chat_template_detect(smol, "smol", &ct) == 0 && ct.family == CHAT_CHATML && ct.default_system &&
          !strcmp(ct.default_system, "You are a helpful AI assistant named SmolLM, trained by Hugging Face"));
    chat_template_free(&ct);
    /* the first Llama-3 release wrote the assistant header unconditionally */
    CHECK(chat_template_detect("{% set loop_messages = messages %}{{ '<|start_header_id|>assistant<|end_header_id|>"
                               "\\n\\n' }}",
                               "l3", &ct) == 0 &&
          ct.family == CHAT_LLAMA3 && ct.trailing_header);
    /* Mistral v0.1's updated spacing: ' [INST] ' + content + ' [/INST]', ' ' + content + eos */
    CHECK(chat_template_detect("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ ' [INST] '"
                               " + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + "
                               "message['content'] + eos_token}}{% endif %}{% endfor %}",
                               "m1", &ct) == 0 &&
          !strcmp(ct.inst_open, " [INST] ") && !strcmp(ct.inst_close, " [/INST]") && !strcmp(ct.asst_open, " ") &&
          !strcmp(ct.asst_close, ""));
}

/* Python's str.strip(), which Jinja's trim and .strip() use: Unicode whitespace, and only that. */
static void test_py_strip(void)
{
    const char *s = "\xe3\x80\x80 \t\n\xc2\xa0x y\x1f\xe2\x80\xa8";
    size_t a, b;
    chat_py_strip(s, strlen(s), &a, &b);
    CHECK(a == 8 && b == 11);
    chat_py_strip("\xc3\xa9", 2, &a, &b); /* é is not space */
    CHECK(a == 0 && b == 2);
    chat_py_strip("   ", 3, &a, &b);
    CHECK(a == b);
}

/* Bad records: one error naming the field, never a crash. */
static void test_record_errors(void)
{
    Tokenizer *tok = tokenizer_load("byte");
    SftOptions o = {.chat_template = "chatml"};
    SftEncoder *e = sft_encoder_new(tok, NULL, &o);
    static const char *const cases[][2] = {
        {"{\"messages\": [", "not valid JSON"},
        {"[1, 2]", "expected a JSON object, got a list"},
        {"{\"text\": \"x\"}", "expected \"messages\", or \"prompt\" and \"completion\""},
        {"{\"messages\": [], \"prompt\": \"a\"}", "has both \"messages\" and \"prompt\""},
        {"{\"messages\": []}", "messages: empty list"},
        {"{\"messages\": {\"role\": \"user\"}}", "messages: expected a list"},
        {"{\"messages\": [\"hi\"]}", "messages[0]: expected an object"},
        {"{\"messages\": [{\"content\": \"x\"}]}", "messages[0].role: missing"},
        {"{\"messages\": [{\"role\": 3, \"content\": \"x\"}]}", "messages[0].role: expected a string, got a number"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"bot\", \"content\": \"x\"}]}",
         "messages[1].role: expected \"user\", \"assistant\" or \"system\", got \"bot\""},
        {"{\"messages\": [{\"role\": \"user\"}]}", "messages[0].content: missing"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\"}]}]}",
         "messages[0].content: expected a string, got a list"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"a\\u0000b\"}]}", "not valid JSON"},
        {"{\"prompt\": \"a\"}", "completion: missing"},
        {"{\"prompt\": 1, \"completion\": \"a\"}", "prompt: expected a string, got a number"},
        {"{\"prompt\": \"a\", \"completion\": null}", "completion: expected a string, got null"},
        {"{\"a\": 1, \"a\": 2}", "not valid JSON"},
    };
    SftExample x = {0};
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        int rc = sft_encode_json(e, cases[i][0], strlen(cases[i][0]), &x);
        CHECKF(rc == -1 && strstr(err_get(), cases[i][1]), "%s: rc %d \"%s\"", cases[i][0], rc, err_get());
    }
    CHECK(sft_encode_json(e, " \t\r", 3, &x) == 1); /* blank */
    sft_encoder_free(e);
    /* messages need a template */
    o.chat_template = "none";
    e = sft_encoder_new(tok, NULL, &o);
    const char *m = "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}";
    CHECK(sft_encode_json(e, m, strlen(m), &x) == -1 && strstr(err_get(), "set data.chat_template"));
    sft_encoder_free(e);
    o.chat_template = "alpaca";
    CHECK(sft_encoder_new(tok, NULL, &o) == NULL && strstr(err_get(), "data.chat_template"));
    sft_example_free(&x);
    tokenizer_free(tok);
}

/* data.train_on: all scores every token; completion scores the assistant span only. */
static void test_train_on_all(void)
{
    char *dir = fixture_path("llama3", "");
    Tokenizer *tok = tokenizer_load(dir);
    SftOptions o = {.chat_template = "", .train_on_all = 1};
    SftEncoder *e = sft_encoder_new(tok, dir, &o);
    const char *r = "{\"prompt\": \"Hello\", \"completion\": \"World\"}";
    SftExample x = {0};
    CHECK(sft_encode_json(e, r, strlen(r), &x) == 0 && x.n > 6);
    size_t ones = 0;
    for (size_t i = 0; i < x.n; i++) ones += x.mask[i];
    CHECK(ones == x.n);
    sft_example_free(&x);
    sft_encoder_free(e);
    tokenizer_free(tok);
    free(dir);
}

/* ---- the loader ------------------------------------------------------------------------------ */

static char tmpdir[256];

static char *write_jsonl(const char *name, const char *body)
{
    char *p = xmalloc(strlen(tmpdir) + strlen(name) + 2);
    sprintf(p, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "w");
    fputs(body, f);
    fclose(f);
    return p;
}

/* N prompt/completion records for the byte tokenizer (ids = bytes, EOS = 256, no BOS): record k
 * is prompt "p<k>:" and completion "c" repeated k % 7 + 1 times. */
static char *byte_records(int n)
{
    size_t cap = (size_t)n * 64 + 1, o = 0;
    char *s = xmalloc(cap);
    for (int k = 0; k < n; k++) {
        o += (size_t)snprintf(s + o, cap - o, "{\"prompt\": \"p%d:\", \"completion\": \"", k);
        for (int j = 0; j < k % 7 + 1; j++) s[o++] = 'c';
        o += (size_t)snprintf(s + o, cap - o, "\"}\n");
    }
    s[o] = 0;
    return s;
}

static SftOptions plain = {.chat_template = "none"};

static DataLoader *open_sft(const char *path, int B, int T, int shuffle, int rank, int world)
{
    LoaderOptions lo = {.B = B, .T = T, .seed = 7, .shuffle = shuffle, .rank = rank, .world = world,
                        .tokenizer = "byte", .sft = &plain};
    DataLoader *dl = loader_open(path, &lo);
    CHECKF(dl != NULL, "%s", err_get());
    return dl;
}

/* Rows are one example each: inputs = its ids, targets = the next id where scored, padded. */
static void test_loader_rows(void)
{
    const char *body = "{\"prompt\": \"ab\", \"completion\": \"xyz\"}\n\n{\"prompt\": \"q\", \"completion\": \"\"}\n";
    char *p = write_jsonl("rows.jsonl", body);
    DataLoader *dl = open_sft(p, 2, 8, 0, 0, 1);
    int32_t in[16], tg[16];
    CHECK(dl && loader_next(dl, in, tg) == 0);
    /* record 1: a b x y z EOS; the prompt "ab" is not scored: targets of a, b -> -1, x ... */
    const int32_t in0[8] = {'a', 'b', 'x', 'y', 'z', 256, 256, 256}, tg0[8] = {-1, 'x', 'y', 'z', 256, -1, -1, -1};
    /* record 2: q EOS: only the EOS is scored */
    const int32_t in1[8] = {'q', 256, 256, 256, 256, 256, 256, 256}, tg1[8] = {256, -1, -1, -1, -1, -1, -1, -1};
    CHECK(dl && !memcmp(in, in0, sizeof(in0)) && !memcmp(tg, tg0, sizeof(tg0)));
    CHECK(dl && !memcmp(in + 8, in1, sizeof(in1)) && !memcmp(tg + 8, tg1, sizeof(tg1)));
    CHECK(dl && loader_vocab_size(dl) == 257 && loader_windows_per_epoch(dl) == 2 && loader_num_tokens(dl) == 8);
    loader_close(dl);
    free(p);
}

/* Longer than T + 1: the end is cut (counted); no scored target left: dropped (counted). */
static void test_loader_truncation(void)
{
    const char *body = "{\"prompt\": \"abcdefgh\", \"completion\": \"XY\"}\n"  /* 11 ids: cut to 5, none scored */
                       "{\"prompt\": \"ab\", \"completion\": \"XYZW\"}\n"      /* 7 ids: cut to 5 */
                       "{\"prompt\": \"a\", \"completion\": \"X\"}\n";        /* 3 ids */
    char *p = write_jsonl("trunc.jsonl", body);
    LoaderOptions lo = {.B = 1, .T = 4, .seed = 1, .shuffle = 0, .world = 1, .tokenizer = "byte", .sft = &plain};
    DataLoader *dl = loader_open(p, &lo);
    CHECKF(dl != NULL, "%s", err_get());
    int32_t in[4], tg[4];
    CHECK(dl && loader_windows_per_epoch(dl) == 2);
    CHECK(dl && loader_next(dl, in, tg) == 0);
    const int32_t in0[4] = {'a', 'b', 'X', 'Y'}, tg0[4] = {-1, 'X', 'Y', 'Z'};
    CHECK(!memcmp(in, in0, sizeof(in0)) && !memcmp(tg, tg0, sizeof(tg0)));
    loader_close(dl);
    /* nothing left at all */
    free(p);
    p = write_jsonl("none.jsonl", "{\"prompt\": \"abcdefgh\", \"completion\": \"X\"}\n");
    CHECK(loader_open(p, &lo) == NULL && strstr(err_get(), "no example with a scored token"));
    free(p);
    /* an error names the file and line */
    p = write_jsonl("bad.jsonl", "{\"prompt\": \"a\", \"completion\": \"b\"}\n\n{\"prompt\": 2, \"completion\": \"b\"}\n");
    CHECK(loader_open(p, &lo) == NULL && strstr(err_get(), "bad.jsonl:3: prompt: expected a string"));
    free(p);
    SftOptions packed = {.chat_template = "none", .pack = 1};
    lo.sft = &packed;
    p = write_jsonl("ok.jsonl", "{\"prompt\": \"a\", \"completion\": \"b\"}\n");
    CHECK(loader_open(p, &lo) == NULL && strstr(err_get(), "data.pack: packing is not supported yet"));
    free(p);
}

/* The first id of a row tells which record it is (record k starts "p<k>:"). */
static int row_record(const int32_t *in)
{
    int k = 0;
    for (int t = 1; in[t] >= '0' && in[t] <= '9'; t++) k = 10 * k + (in[t] - '0');
    return k;
}

/* Shuffled epochs visit every example once, differ per epoch, repeat for the same seed; a resumed
 * loader gives exactly the next batches; ranks split each epoch without overlap. */
static void test_loader_order_resume(void)
{
    enum { N = 37, B = 4, T = 24 };
    char *body = byte_records(N);
    char *p = write_jsonl("order.jsonl", body);
    free(body);
    DataLoader *a = open_sft(p, B, T, 1, 0, 1), *b = open_sft(p, B, T, 1, 0, 1);
    int32_t in[B * T], tg[B * T], in2[B * T], tg2[B * T];
    int seen[2][N] = {{0}}, order[2][N];
    int ok_same = 1;
    for (int s = 0; s < 2 * N / B + 1; s++) {
        LoaderState st = loader_state(a);
        loader_next(a, in, tg);
        loader_next(b, in2, tg2);
        ok_same &= !memcmp(in, in2, sizeof(in)) && !memcmp(tg, tg2, sizeof(tg));
        for (int r = 0; r < B; r++) {
            uint64_t e = st.epoch, pos = st.pos + (uint64_t)r;
            if (pos >= N) e++, pos -= N;
            if (e < 2) {
                int k = row_record(in + r * T);
                seen[e][k]++;
                order[e][pos] = k;
            }
        }
    }
    CHECK(ok_same);
    int once = 1, differs = 0, shuffled = 0;
    for (int k = 0; k < N; k++) {
        once &= seen[0][k] == 1 && seen[1][k] == 1;
        differs |= order[0][k] != order[1][k];
        shuffled |= order[0][k] != k;
    }
    CHECK(once && differs && shuffled);
    /* resume: a fresh loader at a's state gives a's next batches */
    LoaderState st = loader_state(a);
    DataLoader *c = open_sft(p, B, T, 1, 0, 1);
    CHECK(loader_set_state(c, st) == 0);
    int ok_resume = 1;
    for (int s = 0; s < 12; s++) {
        loader_next(a, in, tg);
        loader_next(c, in2, tg2);
        ok_resume &= !memcmp(in, in2, sizeof(in)) && !memcmp(tg, tg2, sizeof(tg));
    }
    CHECK(ok_resume);
    CHECK(loader_set_state(c, (LoaderState){0, N + 1}) == -1);
    loader_close(a);
    loader_close(b);
    loader_close(c);
    /* ranks: 3 ranks get N / 3 each per epoch, disjoint */
    int owner[N];
    for (int k = 0; k < N; k++) owner[k] = -1;
    int disjoint = 1;
    for (int r = 0; r < 3; r++) {
        DataLoader *d = open_sft(p, 1, T, 1, r, 3);
        CHECK(loader_windows_per_epoch(d) == N / 3);
        for (int s = 0; s < N / 3; s++) {
            loader_next(d, in, tg);
            int k = row_record(in);
            disjoint &= owner[k] == -1;
            owner[k] = r;
        }
        loader_close(d);
    }
    CHECK(disjoint);
    /* validation order (no shuffle) is the file's */
    DataLoader *v = open_sft(p, 1, T, 0, 0, 1);
    int inorder = 1;
    for (int k = 0; k < N; k++) {
        loader_next(v, in, tg);
        inorder &= row_record(in) == k;
    }
    loader_reset(v);
    loader_next(v, in, tg);
    CHECK(inorder && row_record(in) == 0);
    loader_close(v);
    free(p);
}

/* The loss of a batch whose prompt targets are masked equals the mean of the per-token losses at
 * the completion positions, computed here in double from the logits of an unmasked forward. */
static void test_masked_loss(void)
{
    enum { B = 3, T = 16 };
    const char *body = "{\"prompt\": \"Q: 2+2?\", \"completion\": \" A: 4\"}\n"
                       "{\"prompt\": \"Translate: chat\", \"completion\": \" cat\"}\n"
                       "{\"prompt\": \"x\", \"completion\": \"yz\"}\n";
    char *p = write_jsonl("loss.jsonl", body);
    DataLoader *dl = open_sft(p, B, T, 0, 0, 1);
    int32_t in[B * T], tg[B * T];
    CHECK(dl && loader_next(dl, in, tg) == 0);
    loader_close(dl);
    free(p);
    ModelConfig c;
    CHECK(model_preset(&c, "gpt2-tiny") == 0);
    c.vocab_size = 257;
    c.max_seq_len = T;
    CHECK(model_config_finish(&c) == 0);
    Model *m = model_create(&c, backend_cpu());
    model_init_gpt2(m, 11);
    CHECK(model_reserve(m, B, T, 0) == 0);
    int n_valid = 0;
    float masked = model_forward(m, in, tg, B, T, 0.0f, &n_valid);
    /* the unmasked targets: every next token of the row (the input shifted by one; the last
     * column's next token is not among the inputs, and there the row's target is taken) */
    model_forward(m, in, NULL, B, T, 0.0f, NULL);
    const float *logits = m->logits;
    double sum = 0, sum_all = 0;
    int n = 0, n_all = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int32_t next = t + 1 < T ? in[b * T + t + 1] : tg[b * T + t];
            if (next < 0) continue;
            const float *z = logits + ((size_t)b * T + t) * (size_t)c.vocab_size;
            double mx = z[0], se = 0;
            for (int v = 1; v < c.vocab_size; v++) mx = z[v] > mx ? z[v] : mx;
            for (int v = 0; v < c.vocab_size; v++) se += exp((double)z[v] - mx);
            double ce = log(se) + mx - z[next];
            if (tg[b * T + t] >= 0) { /* a completion position: its target is that next token */
                CHECK(tg[b * T + t] == next);
                sum += ce, n++;
            }
            sum_all += ce, n_all++;
        }
    /* " A: 4" + EOS (6), " c" of " cat" (the row is cut at T + 1 = 17 ids: 2), "yz" + EOS (3) */
    CHECK(n == n_valid && n == 11);
    CHECK_CLOSE(masked, sum / n, 1e-5);
    CHECKF(fabs(sum_all / n_all - sum / n) > 1e-3, "the prompt mask changes nothing here (%g vs %g)", sum_all / n_all,
           sum / n);
    model_free(m);
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/anvil_test_sft_XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    RUN(test_families_vs_transformers);
    RUN(test_named_families);
    RUN(test_template_recognition);
    RUN(test_py_strip);
    RUN(test_record_errors);
    RUN(test_train_on_all);
    RUN(test_loader_rows);
    RUN(test_loader_truncation);
    RUN(test_loader_order_resume);
    RUN(test_masked_loss);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    if (system(cmd)) return 1;
    return test_summary();
}
