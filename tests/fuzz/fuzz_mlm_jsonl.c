/* fuzz_mlm_jsonl.c - `anvil eval mlm`'s pre-masked JSONL (input_ids, labels, attention_mask) on
 * arbitrary bytes, scored by a tiny random bert model (rows of up to 32 ids in batches of 3, so
 * that short, long, padded and ragged records all reach the scorer). The model is bert-tiny with
 * narrow layers: the same vocabulary (2048, which the seeds' ids and the range checks are made for),
 * positions, layer count and a multi-head attention, but d_model 8 and d_ff 16 instead of 64 and
 * 256, so that the forward, which does not depend on the bytes, no longer takes most of each run. */
#include <omp.h>

#include "fuzz_common.h"

#include "backend/backend.h"
#include "core/error.h"
#include "eval/mlm_eval.h"
#include "model/model.h"

/* One OpenMP thread: the model's rows are a few dozen, so waking and joining a team around every
 * op cost more than the ops (half of each run on two cores). */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    omp_set_num_threads(1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static Model *m;
    if (!m) {
        ModelConfig c;
        if (model_preset(&c, "bert-tiny")) fatal_err();
        c.n_head = c.n_kv_head = 2;
        c.d_model = 8;
        c.d_ff = 16;
        if (model_config_finish(&c)) fatal_err();
        m = model_create(&c, backend_cpu());
        model_init_gpt2(m, 1);
    }
    const char *path = fuzz_write("records.jsonl", data, size);
    MlmEvalOptions o = {.T = 32, .batch = 3, .seed = 0};
    MlmEvalResult r = {0};
    (void)mlm_eval_jsonl(m, path, &o, &r); /* an error or a result, never a crash */
    return 0;
}
