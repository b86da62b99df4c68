/* ref_tensor.h - reading the reference tensors of a fixture (reference.safetensors made by a tools/
 * script) in the tests: one helper for every test that compares against such a file. Include after
 * test.h. */
#ifndef ANVIL_TESTS_REF_TENSOR_H
#define ANVIL_TESTS_REF_TENSOR_H

#include <stdlib.h>

#include "core/error.h"
#include "io/safetensors.h"

/* Tensor `name` of ref converted to fp32 (numel: its size, if not NULL); NULL with a failed check
 * naming the fixture when it is missing or cannot be converted. */
static inline float *ref_tensor_f32(const StFile *ref, const char *fixture, const char *name, size_t *numel)
{
    const StTensor *t = st_find(ref, name);
    CHECKF(t != NULL, "%s: reference tensor %s missing", fixture, name);
    if (!t) return NULL;
    float *out = xmalloc(t->numel * sizeof(float));
    if (st_to_f32(t, out) != 0) {
        free(out);
        CHECKF(0, "%s", err_get());
        return NULL;
    }
    if (numel) *numel = t->numel;
    return out;
}

#endif
