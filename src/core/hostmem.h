/* hostmem.h - a large host buffer whose pages exist only while they are in use: a whole model's
 * host image that a loader fills tensor by tensor and gives back as each tensor is uploaded, so
 * that loading costs the host one tensor at a time instead of the whole model (trainer.c). */
#ifndef ANVIL_CORE_HOSTMEM_H
#define ANVIL_CORE_HOSTMEM_H

#include <stddef.h>

/* bytes of zero-filled address space; its pages take memory only once written. Fatal on failure. */
void *host_reserve(size_t bytes);
/* Give back the whole pages inside [off, off + bytes) of a reserved buffer (they read as zero after). */
void host_release(void *p, size_t off, size_t bytes);
void host_unreserve(void *p, size_t bytes);

#endif
