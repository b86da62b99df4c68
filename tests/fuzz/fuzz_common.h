/* fuzz_common.h - helpers for the libFuzzer harnesses (make fuzz; tools/fuzz.sh).
 * Every parser that reads user files must return an error for any input,
 * never crash, hang or read out of bounds. */
#ifndef ANVIL_FUZZ_COMMON_H
#define ANVIL_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Write the input to a per-process file under /dev/shm (or /tmp) named `name`
 * inside a private directory; returns the directory. */
static inline const char *fuzz_dir(void)
{
    static char dir[128];
    if (!dir[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(dir, sizeof(dir), "%s/anvil_fuzz_%d", base, (int)getpid());
        mkdir(dir, 0700);
    }
    return dir;
}

static inline const char *fuzz_write(const char *name, const uint8_t *data, size_t size)
{
    static char path[256];
    snprintf(path, sizeof(path), "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
    return path;
}

/* Two files from one input: the first, one NUL byte, then the second (no NUL: the first alone, the
 * second absent). Writes dir/name0 and dir/name1 (dir must exist). */
static inline void fuzz_split_files(const char *dir, const uint8_t *data, size_t size, const char *name0,
                                    const char *name1)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t n0 = nul ? (size_t)(nul - data) : size;
    char path[512];
    const char *names[2] = {name0, name1};
    const uint8_t *parts[2] = {data, nul ? nul + 1 : NULL};
    size_t lens[2] = {n0, nul ? size - n0 - 1 : 0};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        if (!parts[i]) {
            unlink(path);
            continue;
        }
        FILE *f = fopen(path, "wb");
        if (!f) abort();
        if (lens[i] && fwrite(parts[i], 1, lens[i], f) != lens[i]) abort();
        fclose(f);
    }
}

/* The model-directory harness's input: config.json, one NUL byte, then model.safetensors. */
static inline void fuzz_split_model(const char *dir, const uint8_t *data, size_t size)
{
    fuzz_split_files(dir, data, size, "config.json", "model.safetensors");
}

#endif
