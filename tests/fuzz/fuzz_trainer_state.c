/* fuzz_trainer_state.c - ckpt_read_state on an arbitrary trainer_state.json. */
#include "fuzz_common.h"
#include "train/checkpoint.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    TrainerState st;
    fuzz_write("trainer_state.json", data, size);
    if (ckpt_read_state(fuzz_dir(), &st) == 0 && (st.step < 0 || st.elapsed_s < 0 || st.elapsed_s != st.elapsed_s))
        abort(); /* accepted values must be in range */
    return 0;
}
