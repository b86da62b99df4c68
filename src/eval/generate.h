/* generate.h - text generation with a KV cache: prefill the prompt once, then
 * one cached forward per new token; B independent samples of one prompt run
 * as one batch.
 *
 * Stops per sample at the end-of-sequence id (unless ignore_eos), at the first
 * occurrence of a stop string in the decoded text (the text is cut before it),
 * after max_tokens, or when the model's window is full. Text is produced
 * incrementally: a TextStream gives out only bytes that can no longer change -
 * complete UTF-8 characters that cannot be the start of a stop string.
 */
#ifndef ANVIL_EVAL_GENERATE_H
#define ANVIL_EVAL_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "data/tokenizer.h"
#include "eval/sampling.h"
#include "model/model.h"

enum { GEN_STOP_LENGTH = 0, GEN_STOP_EOS, GEN_STOP_STRING, GEN_STOP_WINDOW };

/* Incremental detokenization of one sample. */
typedef struct {
    const Tokenizer *tok;
    const char *const *stops;
    int n_stops;
    int32_t *ids; /* generated ids so far */
    int n, cap;
    char *text; /* decode(ids), cut at a stop string once one is found */
    size_t len;
    size_t emitted; /* bytes of text handed out */
    int stopped;    /* a stop string was found */
} TextStream;

void text_stream_init(TextStream *ts, const Tokenizer *tok, const char *const *stops, int n_stops);
void text_stream_free(TextStream *ts);
/* Add one token; *out, *n get the bytes that are now final (possibly none). With a
 * tokenizer the text is decode(all ids); without, nothing is produced. Returns 1 when
 * a stop string has appeared (its bytes and everything after are never given out). */
int text_stream_push(TextStream *ts, int32_t id, const char **out, size_t *n);
/* At the end: the bytes held back (an incomplete character, a partial stop string). */
void text_stream_finish(TextStream *ts, const char **out, size_t *n);
/* Length of the longest prefix of s[0..n) that does not end inside a UTF-8 sequence
 * that more bytes could still complete. */
size_t utf8_stable_prefix(const char *s, size_t n);

typedef struct {
    int max_tokens;
    SamplerOptions sampler;
    uint64_t seed; /* sample b draws from rng stream (seed, b) */
    int batch;     /* independent samples of the same prompt */
    int eos_id;    /* -1: none */
    int ignore_eos;
    const char *const *stops;
    int n_stops;
    const Tokenizer *tok; /* NULL: ids only */
    int sample_vocab;     /* > 0: sample only ids below this (the tokenizer's vocabulary when it is
                           * smaller than the model's, so that every id decodes); 0: all */
    /* Called for sample 0 as text becomes final (only when batch == 1), and for every token
     * of every sample (on_token); either may be NULL. */
    void (*on_text)(void *ctx, const char *s, size_t n);
    void (*on_token)(void *ctx, int sample, int32_t id);
    void *ctx;
} GenOptions;

typedef struct {
    int batch;
    int32_t **ids; /* per sample: generated ids (the EOS id included when it ended the sample) */
    int *n_ids;
    char **text; /* per sample: the final text (NULL without a tokenizer) */
    size_t *text_len;
    int *stop; /* GEN_STOP_* */
    int prompt_tokens;
    long generated; /* tokens sampled over all samples */
    int steps;      /* decode steps (cached forwards after the prompt) */
    double prefill_s, decode_s;
} GenResult;

/* Generate from prompt (n_prompt >= 1 ids). -1 with err_set() on bad input (a prompt
 * longer than the window, an id outside the vocabulary) and when the model's logits are
 * not finite (NaN or infinity). Free r with gen_result_free. */
int generate_run(Model *m, const int32_t *prompt, int n_prompt, const GenOptions *o, GenResult *r);
void gen_result_free(GenResult *r);

#endif
