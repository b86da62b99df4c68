/* registry.c - backends by name. */
#include <string.h>

#include "backend/backend.h"
#include "core/error.h"

#ifndef ANVIL_CUDA
const Backend *backend_cuda(int bf16)
{
    (void)bf16;
    err_set("this anvil was built without CUDA (nvcc was not found at build time); use device: cpu");
    return NULL;
}
#endif

const Backend *backend_get(const char *name)
{
    if (!strcmp(name, "cpu")) return backend_cpu();
    if (!strcmp(name, "cuda") || !strcmp(name, "cuda-bf16")) return backend_cuda(1);
    if (!strcmp(name, "cuda-fp32")) return backend_cuda(0);
    err_set("unknown device \"%s\" (expected cpu, cuda, cuda-fp32)", name);
    return NULL;
}
