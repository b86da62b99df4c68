/* optim.h - AdamW over the trainable segment of a model's parameter store.
 *
 * The optimizer owns its state: two fp32 moments, in the layout of the trainable segment
 * (params.h), and the list of trainable tensors with their weight decay (matrices decay, vectors
 * do not). Frozen tensors are not in it at all. A sharded optimizer (ZeRO, src/dist/dist.h) owns
 * the part [lo, hi) of the segment only: its moments have hi - lo elements, its tensor list is the
 * trainable tensors clipped to [lo, hi) (a tensor cut by a shard boundary keeps its weight decay in
 * both parts), and a step updates the master, the compute copy and nothing else of that part.
 */
#ifndef ANVIL_TRAIN_OPTIM_H
#define ANVIL_TRAIN_OPTIM_H

#include <stddef.h>

#include "model/model.h"

typedef struct {
    const Backend *be;
    float *m, *v;    /* (hi - lo) fp32 moments, backend memory */
    size_t lo, hi;   /* the part of the trainable segment this optimizer owns */
    size_t n;        /* hi - lo */
    OptTensor *t;    /* the trainable tensors (clipped to [lo, hi)): offsets relative to lo */
    int nt;
    int *param;      /* nt: the table index of each */
    /* the integer-ternary tensors (PARAM_TERNARY, model/params.h) and their rule: updated by the same
     * step from their gradients, with no float state (docs/ternary.md) */
    TernaryTensor *tt;
    int ntt;
    TernaryHyper th;
    int host; /* the moments lie in host memory the backend reads (Backend.alloc_host) */
} Optimizer;

/* Moments (zero) for every trainable tensor of m; weight_decay applies to matrices. */
void optim_init(Optimizer *o, const Model *m, float weight_decay);
/* The same for the part [lo, hi) of the trainable segment only (ZeRO shards, params_shard). */
void optim_init_range(Optimizer *o, const Model *m, float weight_decay, size_t lo, size_t hi);
/* The same with the moments in host memory when host is 1 (train.offload_optimizer: on a GPU the
 * update reads and writes them over the bus; the values and the update are the same). */
void optim_init_host(Optimizer *o, const Model *m, float weight_decay, size_t lo, size_t hi, int host);
void optim_free(Optimizer *o);
/* One AdamW step of the owned part of the trainable segment (torch.optim.AdamW's arithmetic);
 * refreshes the compute copies of that part; then the integer update of the ternary tensors. */
void optim_step(Optimizer *o, Model *m, const AdamHyper *h);
/* The rule for the model's integer-ternary tensors (the step number is set by optim_step). */
void optim_set_ternary(Optimizer *o, const Model *m, const TernaryHyper *h);
/* Before a step's micro-batches: the rule and step number for the tensors updated inside the backward
 * (train.ternary.fused), live unless lr is 0; optim_step ends it. */
void optim_begin_step(Optimizer *o, Model *m, int step, float lr);
/* Bytes of backend memory the state holds (the AdamW moments; the ternary accumulators are the
 * store's, params_bytes().tstate). */
size_t optim_bytes(const Optimizer *o);
/* The moments' bytes in host memory (optim_init_host), 0 when they are on the device. */
size_t optim_host_bytes(const Optimizer *o);
/* Host copies of the moments (n elements each, segment layout from lo) for checkpoints, and back. */
void optim_download(const Optimizer *o, float *m_host, float *v_host);
/* Both moments back to zero (after a trial step). */
void optim_zero(Optimizer *o);
void optim_upload(Optimizer *o, const float *m_host, const float *v_host);

#endif
