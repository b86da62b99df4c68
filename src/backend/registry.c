/* registry.c - backends by name, and the numerics switches shared by every backend. */
#include <stdlib.h>
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

static const char *const attention_names[] = {"auto", "cudnn", "anvil"};
static const char *const gemm_tune_names[] = {"auto", "off", "always"};

const char *backend_attention_name(int impl)
{
    return impl >= 0 && impl < (int)ARRAY_LEN(attention_names) ? attention_names[impl] : "?";
}

const char *backend_gemm_tune_name(int mode)
{
    return mode >= 0 && mode < (int)ARRAY_LEN(gemm_tune_names) ? gemm_tune_names[mode] : "?";
}

int backend_attention_parse(const char *s, int *impl)
{
    for (int i = 0; i < (int)ARRAY_LEN(attention_names); i++)
        if (!strcmp(s, attention_names[i])) return *impl = i, 0;
    return err_set("expected auto, cudnn or anvil, got \"%s\"", s);
}

int backend_gemm_tune_parse(const char *s, int *mode)
{
    for (int i = 0; i < (int)ARRAY_LEN(gemm_tune_names); i++)
        if (!strcmp(s, gemm_tune_names[i])) return *mode = i, 0;
    /* the spellings of the old environment switch */
    if (!strcmp(s, "0") || !strcmp(s, "false")) return *mode = GEMM_TUNE_OFF, 0;
    if (!strcmp(s, "1") || !strcmp(s, "true")) return *mode = GEMM_TUNE_AUTO, 0;
    return err_set("expected auto, off or always, got \"%s\"", s);
}

int backend_options_from_env(BackendOptions *o)
{
    int mask = 0;
    const char *e = getenv("ANVIL_ATTENTION");
    if (e && e[0]) {
        if (backend_attention_parse(e, &o->attention)) return err_prefix("ANVIL_ATTENTION");
        mask |= BACKEND_ENV_ATTENTION;
    }
    e = getenv("ANVIL_GEMM_TUNE");
    if (e && e[0]) {
        if (backend_gemm_tune_parse(e, &o->gemm_tune)) return err_prefix("ANVIL_GEMM_TUNE");
        mask |= BACKEND_ENV_GEMM_TUNE;
    }
    e = getenv("ANVIL_DETERMINISTIC");
    if (e && e[0]) {
        if (strcmp(e, "0") && strcmp(e, "1"))
            return err_set("ANVIL_DETERMINISTIC: expected 0 or 1, got \"%s\"", e);
        o->deterministic = e[0] == '1';
        mask |= BACKEND_ENV_DETERMINISTIC;
    }
    return mask;
}
