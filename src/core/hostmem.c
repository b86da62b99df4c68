/* hostmem.c - reserved host buffers (hostmem.h): anonymous mappings without a swap reservation. */
#include "core/hostmem.h"

#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/error.h"

void *host_reserve(size_t bytes)
{
    if (!bytes) bytes = 1;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) fatal("out of host address space reserving %zu bytes", bytes);
    return p;
}

void host_release(void *p, size_t off, size_t bytes)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)p + off, e = a + bytes;
    a = (a + page - 1) / page * page; /* the whole pages inside: a neighbour's values stay */
    e = e / page * page;
    if (e > a) madvise((void *)a, e - a, MADV_DONTNEED);
}

void host_unreserve(void *p, size_t bytes)
{
    if (p) munmap(p, bytes ? bytes : 1);
}
