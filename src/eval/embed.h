/* embed.h - sentence embeddings of an encoder (`anvil embed`, docs/encoders.md): each text
 * through the tokenizer's template ([CLS] ... [SEP]; a text too long for the model's positions
 * loses its last tokens, the template's stay), the final hidden states, then pooled over the
 * text's tokens: mean (every valid position, the specials included, as sentence-transformers'
 * mean pooling over the attention mask) or cls (the first position). */
#ifndef ANVIL_EVAL_EMBED_H
#define ANVIL_EVAL_EMBED_H

#include "data/tokenizer.h"
#include "model/model.h"

typedef enum { POOL_MEAN = 0, POOL_CLS = 1 } Pooling;

/* "mean" / "cls"; -1 with err_set() naming --pooling. */
int pooling_parse(const char *s, Pooling *p);
/* out (n, d_model) = the embeddings of texts[0..n), batch texts per forward (results do not
 * depend on it). -1 with err_set() when the model is not an encoder or a text cannot be encoded. */
int embed_texts(Model *m, const Tokenizer *tok, const char *const *texts, int n, Pooling pool, int batch,
                float *out);

#endif
