/* mlm.h - masked-LM data: windows of a token stream wrapped in the tokenizer's template
 * ([CLS] ... [SEP]) and masked as BERT is (Devlin et al. 2018; transformers'
 * DataCollatorForLanguageModeling):
 *
 *   every position that is not a special token is chosen with probability prob (whole-word
 *   masking: every word, a piece and the "##" pieces after it, is chosen with probability prob,
 *   all of its pieces together); a chosen position's target is its token, its input becomes
 *   [MASK] (80%), a random non-special token (10%) or stays (10%); every other target is -1
 *   (not scored).
 *
 * The draws of a row come from its own stream (seed, row key), so a row is masked the same way
 * whichever rank reads it, after a resume, or in evaluation with the same seed.
 */
#ifndef ANVIL_DATA_MLM_H
#define ANVIL_DATA_MLM_H

#include <stdint.h>

struct Tokenizer;

/* The split of chosen positions (BERT's): [MASK], a random token, unchanged. */
#define MLM_MASK_FRAC 0.8
#define MLM_RANDOM_FRAC 0.1

typedef struct MlmOptions {
    float prob;              /* chance that a position (whole_word: a word) is chosen: data.mlm.prob */
    int whole_word;          /* choose whole words ("##" continuation pieces with the piece before them) */
    int mask_id;             /* [MASK] / <mask> */
    int vocab;               /* ids drawn as random replacements are below this and not special */
    int n_pre, n_post;       /* template ids before and after the window's tokens */
    int32_t pre[4], post[4]; /* e.g. [CLS] and [SEP] */
    uint8_t *special;        /* (vocab) 1: special, never chosen nor drawn */
    uint8_t *cont;           /* (vocab) 1: a continuation piece ("##..."), for whole-word masking */
    int32_t *random_ids;     /* the non-special ids, n_random of them */
    int n_random;
} MlmOptions;

/* From a loaded tokenizer: its [MASK] token (-1 with err_set() naming the tokenizer if it has
 * none), its single-sequence template, its special and "##" tokens. */
int mlm_options_init(MlmOptions *o, const struct Tokenizer *tok, float prob, int whole_word);
void mlm_options_free(MlmOptions *o);
/* Text tokens per row of T ids (T less the template's). */
static inline int mlm_window_tokens(const MlmOptions *o, int T)
{
    return T - o->n_pre - o->n_post;
}
/* Build one row: inputs (T) = template(window (mlm_window_tokens ids)), then masked in place with
 * targets (T) as above, from stream (seed, key). Returns the number of scored targets. */
int mlm_make_row(const MlmOptions *o, const int32_t *window, int T, uint64_t seed, uint64_t key,
                 int32_t *inputs, int32_t *targets);
/* Mask a row that already holds its specials (inputs (T) in place, targets (T) written); positions
 * at or after len are padding (never chosen). Returns the number of scored targets. */
int mlm_mask_row(const MlmOptions *o, int32_t *inputs, int32_t *targets, int T, int len, uint64_t seed,
                 uint64_t key);

#endif
