/* optim.h - AdamW over the trainable segment of a model's parameter store.
 *
 * The optimizer owns its state: two fp32 moments of n_train elements each, in the layout of the
 * trainable segment (params.h), and the list of trainable tensors with their weight decay
 * (matrices decay, vectors do not). Frozen tensors are not in it at all.
 */
#ifndef ANVIL_TRAIN_OPTIM_H
#define ANVIL_TRAIN_OPTIM_H

#include <stddef.h>

#include "model/model.h"

typedef struct {
    const Backend *be;
    float *m, *v;    /* (n_train) fp32 moments, backend memory */
    size_t n;        /* n_train */
    OptTensor *t;    /* the trainable tensors: offsets into the segment */
    int nt;
    int *param;      /* nt: the table index of each */
} Optimizer;

/* Moments (zero) for every trainable tensor of m; weight_decay applies to matrices. */
void optim_init(Optimizer *o, const Model *m, float weight_decay);
void optim_free(Optimizer *o);
/* One AdamW step of the whole trainable segment (torch.optim.AdamW's arithmetic); refreshes the
 * compute copies. */
void optim_step(Optimizer *o, Model *m, const AdamHyper *h);
/* Bytes of backend memory the state holds. */
size_t optim_bytes(const Optimizer *o);
/* Host copies of the moments (n elements each, segment layout) for checkpoints, and back. */
void optim_download(const Optimizer *o, float *m_host, float *v_host);
void optim_upload(Optimizer *o, const float *m_host, const float *v_host);

#endif
