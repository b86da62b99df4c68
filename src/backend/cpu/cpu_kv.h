/* cpu_kv.h - CPU versions of the KV-cache ops appended to the op table (backend.h). */
#ifndef ANVIL_CPU_KV_H
#define ANVIL_CPU_KV_H

void cpu_kv_store(void *kcache, void *vcache, const void *qkv, int B, int T, int nh, int nkv, int hd,
                  int pos0, int cap);
void cpu_attention_kv_fwd(void *out, const void *qkv, const void *kcache, const void *vcache, int B, int T,
                          int nh, int nkv, int hd, int pos0, int cap);

#endif
