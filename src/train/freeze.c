/* freeze.c - model.freeze patterns to tensor kinds (freeze.h). */
#include "train/freeze.h"

#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "io/hf.h"

ParamKind *freeze_kinds(const CfgList *patterns, const ModelConfig *cfg, int *err)
{
    *err = 0;
    if (!patterns->n) return NULL;
    ParamTable pt;
    param_table_build(&pt, cfg);
    HfName *names = NULL;
    int n = 0;
    ParamKind *kinds = NULL;
    int *matched = NULL, *total = NULL; /* per parameter: HF names matched, HF names in all */
    if (hf_names(cfg, &pt, &names, &n)) goto fail;
    matched = xcalloc((size_t)pt.n, sizeof(int));
    total = xcalloc((size_t)pt.n, sizeof(int));
    for (int i = 0; i < n; i++) total[names[i].param]++;
    for (int k = 0; k < patterns->n; k++) {
        const char *pat = patterns->item[k];
        int hits = 0;
        for (int i = 0; i < n && !hits; i++) hits = !fnmatch(pat, names[i].name, 0);
        if (!hits) {
            err_set("model.freeze: \"%s\" matches no tensor of this %s (names look like %s)", pat, cfg->hf_arch,
                    n > 2 ? names[2].name : names[0].name);
            goto fail;
        }
    }
    /* a name is frozen when any pattern matches it */
    for (int i = 0; i < n; i++)
        for (int k = 0; k < patterns->n; k++)
            if (!fnmatch(patterns->item[k], names[i].name, 0)) {
                matched[names[i].param]++;
                break;
            }
    kinds = xmalloc((size_t)pt.n * sizeof(ParamKind));
    for (int p = 0; p < pt.n; p++) {
        if (matched[p] && matched[p] < total[p]) {
            const char *some = NULL, *other = NULL;
            for (int i = 0; i < n; i++) {
                if (names[i].param != p) continue;
                int hit = 0;
                for (int k = 0; k < patterns->n && !hit; k++) hit = !fnmatch(patterns->item[k], names[i].name, 0);
                if (hit && !some) some = names[i].name;
                if (!hit && !other) other = names[i].name;
            }
            err_set("model.freeze: %s is frozen but %s is not; anvil stores them as one tensor (%s), so freeze "
                    "both or neither",
                    some, other, pt.p[p].name);
            goto fail;
        }
        kinds[p] = matched[p] ? PARAM_FROZEN : PARAM_TRAIN;
    }
    free(names);
    free(matched);
    free(total);
    param_table_free(&pt);
    return kinds;
fail:
    *err = 1;
    free(kinds);
    free(names);
    free(matched);
    free(total);
    param_table_free(&pt);
    return NULL;
}

ParamKind *ternary_kinds(const ModelConfig *cfg, ParamKind *kinds, int embeddings)
{
    ParamTable pt;
    param_table_build(&pt, cfg);
    if (!kinds) {
        kinds = xmalloc((size_t)pt.n * sizeof(ParamKind));
        for (int i = 0; i < pt.n; i++) kinds[i] = PARAM_TRAIN;
    }
    for (int i = 0; i < pt.n; i++) {
        int role = pt.p[i].role;
        int lin = role == PROLE_QKV_W || role == PROLE_O_W || role == PROLE_FC_W || role == PROLE_PROJ_W;
        int emb = role == PROLE_WTE || role == PROLE_LM_HEAD;
        if (kinds[i] == PARAM_TRAIN && (lin || (emb && embeddings))) kinds[i] = PARAM_TERNARY;
    }
    param_table_free(&pt);
    return kinds;
}
