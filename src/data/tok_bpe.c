/* tok_bpe.c - the BPE model: vocabulary and merge maps, the merge loop, and
 * the cache of piece -> ids shared by the models (BPE, WordPiece).
 *
 * Merge order is Hugging Face's (and tiktoken's for GPT-2): repeatedly merge
 * the adjacent pair with the lowest merge rank, the leftmost one on ties.
 * Short pieces use a scan over the pairs (a few symbols, cache friendly);
 * long ones a binary heap keyed (rank, position) with lazy invalidation, so a
 * pathological 1 MB run of digits costs O(n log n), not O(n^2).
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "data/tok_internal.h"
#include "data/utf8.h"

/* Pieces with more initial symbols than this use the heap merge. */
#define BPE_SCAN_MAX_SYMBOLS 48
/* Pieces longer than this (bytes) are not cached (rare, and they would evict many short ones). */
#define BPE_CACHE_MAX_KEY 128

void idvec_reserve(IdVec *v, size_t extra)
{
    if (v->n + extra <= v->cap) return;
    size_t cap = v->cap ? v->cap : 256;
    while (cap < v->n + extra) cap *= 2;
    v->a = xrealloc(v->a, cap * sizeof(int32_t));
    v->cap = cap;
}

void idvec_push(IdVec *v, int32_t x)
{
    if (v->n == v->cap) idvec_reserve(v, 1);
    v->a[v->n++] = x;
}

void bytebuf_put(ByteBuf *b, const void *p, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        b->a = xrealloc(b->a, cap);
        b->cap = cap;
    }
    memcpy(b->a + b->n, p, n);
    b->n += n;
    b->a[b->n] = 0;
}

/* ---- StrMap ---------------------------------------------------------------- */

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
}

void strmap_init(StrMap *m, size_t n)
{
    size_t cap = pow2_at_least(n * 2);
    m->slot = xmalloc(cap * sizeof(int32_t));
    m->slot_hash = xmalloc(cap * sizeof(uint32_t));
    memset(m->slot, 0xff, cap * sizeof(int32_t));
    m->mask = cap - 1;
}

void strmap_free(StrMap *m)
{
    free(m->slot);
    free(m->slot_hash);
    memset(m, 0, sizeof(*m));
}

void strmap_put(StrMap *m, const Tokenizer *t, int32_t id)
{
    size_t len;
    const char *s = tok_model_str(t, id, &len);
    uint64_t h = tok_hash(s, len);
    size_t i = (size_t)h & m->mask;
    while (m->slot[i] >= 0) {
        if (m->slot_hash[i] == (uint32_t)(h >> 32)) {
            size_t l2;
            const char *s2 = tok_model_str(t, m->slot[i], &l2);
            if (l2 == len && !memcmp(s, s2, len)) return;
        }
        i = (i + 1) & m->mask;
    }
    m->slot[i] = id;
    m->slot_hash[i] = (uint32_t)(h >> 32);
}

int32_t strmap_get(const StrMap *m, const Tokenizer *t, const void *s, size_t n)
{
    uint64_t h = tok_hash(s, n);
    size_t i = (size_t)h & m->mask;
    int32_t id;
    while ((id = m->slot[i]) >= 0) {
        if (m->slot_hash[i] == (uint32_t)(h >> 32)) {
            size_t l2;
            const char *s2 = tok_model_str(t, id, &l2);
            if (l2 == n && !memcmp(s, s2, n)) return id;
        }
        i = (i + 1) & m->mask;
    }
    return -1;
}

/* ---- PairMap --------------------------------------------------------------- */

void pairmap_init(PairMap *m, size_t n)
{
    size_t cap = pow2_at_least(n * 2);
    m->key = xmalloc(cap * sizeof(uint64_t));
    m->rank = xmalloc(cap * sizeof(int32_t));
    m->id = xmalloc(cap * sizeof(int32_t));
    memset(m->key, 0xff, cap * sizeof(uint64_t));
    m->mask = cap - 1;
}

void pairmap_free(PairMap *m)
{
    free(m->key);
    free(m->rank);
    free(m->id);
    memset(m, 0, sizeof(*m));
}

/* Keeps the first (lowest) rank when a pair is listed twice, as HF does. */
void pairmap_put(PairMap *m, int32_t a, int32_t b, int32_t rank, int32_t id)
{
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = (size_t)((k * 0x9E3779B97F4A7C15ULL) >> 20) & m->mask;
    while (m->key[i] != UINT64_MAX) {
        if (m->key[i] == k) return;
        i = (i + 1) & m->mask;
    }
    m->key[i] = k;
    m->rank[i] = rank;
    m->id[i] = id;
}

/* ---- merge loop ------------------------------------------------------------ */

static size_t bpe_merge_scan(const Tokenizer *t, int32_t *sym, size_t n)
{
    /* rank[i]/merged[i]: the pair (sym[i], sym[i+1]); -1 = no merge */
    int32_t rank[BPE_SCAN_MAX_SYMBOLS], merged[BPE_SCAN_MAX_SYMBOLS];
    for (size_t i = 0; i + 1 < n; i++) rank[i] = pairmap_get(&t->merges, sym[i], sym[i + 1], &merged[i]);
    while (n > 1) {
        int32_t best = -1;
        size_t bi = 0;
        for (size_t i = 0; i + 1 < n; i++)
            if (rank[i] >= 0 && (best < 0 || rank[i] < best)) {
                best = rank[i];
                bi = i;
            }
        if (best < 0) break;
        sym[bi] = merged[bi];
        memmove(sym + bi + 1, sym + bi + 2, (n - bi - 2) * sizeof(int32_t));
        if (bi + 2 < n) {
            memmove(rank + bi + 1, rank + bi + 2, (n - bi - 2) * sizeof(int32_t));
            memmove(merged + bi + 1, merged + bi + 2, (n - bi - 2) * sizeof(int32_t));
        }
        n--;
        if (bi > 0) rank[bi - 1] = pairmap_get(&t->merges, sym[bi - 1], sym[bi], &merged[bi - 1]);
        if (bi + 1 < n) rank[bi] = pairmap_get(&t->merges, sym[bi], sym[bi + 1], &merged[bi]);
    }
    return n;
}

/* Min-heap of (rank << 32 | position) keys. */
typedef struct {
    uint64_t *a;
    size_t n;
} Heap;

static void heap_push(Heap *h, uint64_t k)
{
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h->a[p] <= k) break;
        h->a[i] = h->a[p];
        i = p;
    }
    h->a[i] = k;
}

static uint64_t heap_pop(Heap *h)
{
    uint64_t top = h->a[0], k = h->a[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && h->a[c + 1] < h->a[c]) c++;
        if (k <= h->a[c]) break;
        h->a[i] = h->a[c];
        i = c;
    }
    if (h->n) h->a[i] = k;
    return top;
}

static size_t bpe_merge_heap(const Tokenizer *t, int32_t *sym, size_t n)
{
    /* symbols live at their original positions; next/prev link the live ones */
    int32_t *next = xmalloc(n * sizeof(int32_t)), *prev = xmalloc(n * sizeof(int32_t));
    Heap h = {xmalloc(2 * n * sizeof(uint64_t) + 8), 0};
    size_t cap = 2 * n + 1;
    for (size_t i = 0; i < n; i++) {
        next[i] = i + 1 < n ? (int32_t)(i + 1) : -1;
        prev[i] = (int32_t)i - 1;
    }
    int32_t id;
    for (size_t i = 0; i + 1 < n; i++) {
        int32_t r = pairmap_get(&t->merges, sym[i], sym[i + 1], &id);
        if (r >= 0) heap_push(&h, ((uint64_t)r << 32) | i);
    }
    while (h.n) {
        uint64_t top = heap_pop(&h);
        int32_t r = (int32_t)(top >> 32), i = (int32_t)(uint32_t)top;
        if (sym[i] < 0 || next[i] < 0) continue; /* merged away, or now last */
        int32_t j = next[i];
        if (pairmap_get(&t->merges, sym[i], sym[j], &id) != r) continue; /* stale entry */
        sym[i] = id;
        sym[j] = -1;
        next[i] = next[j];
        if (next[j] >= 0) prev[next[j]] = i;
        if (h.n + 2 > cap) {
            cap *= 2;
            h.a = xrealloc(h.a, cap * sizeof(uint64_t));
        }
        if (prev[i] >= 0) {
            int32_t p = prev[i], r2 = pairmap_get(&t->merges, sym[p], sym[i], &id);
            if (r2 >= 0) heap_push(&h, ((uint64_t)r2 << 32) | (uint32_t)p);
        }
        if (next[i] >= 0) {
            int32_t r2 = pairmap_get(&t->merges, sym[i], sym[next[i]], &id);
            if (r2 >= 0) heap_push(&h, ((uint64_t)r2 << 32) | (uint32_t)i);
        }
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (sym[i] >= 0) sym[m++] = sym[i];
    free(next);
    free(prev);
    free(h.a);
    return m;
}

size_t bpe_merge(const Tokenizer *t, int32_t *sym, size_t n, int force)
{
    if (n < 2) return n;
    if (force == 1 || (force == 0 && n <= BPE_SCAN_MAX_SYMBOLS)) {
        if (n <= BPE_SCAN_MAX_SYMBOLS) return bpe_merge_scan(t, sym, n);
    }
    return bpe_merge_heap(t, sym, n);
}

/* ---- the piece cache, shared by all threads ------------------------------------
 *
 * piece bytes -> ids. Open addressing over a fixed array of entry pointers;
 * entries are immutable once published (CAS of a NULL slot), so lookups take
 * no lock and threads share what each one has merged (a per-thread cache
 * would make every thread pay the warm-up: ~half of a single pass over 9 MB
 * of English). Insert-only: when half full it stops growing; pieces not in it
 * are merged each time (by then they are the rare ones). Entries live in
 * 1 MB blocks handed to threads under a mutex. */

/* Slots of the cache (8 bytes each, 2 MB, allocated by the first insert: a tokenizer
 * that is loaded and freed without encoding, as a text shard's byte tokenizer or each
 * fuzz_tokenizer_json input, does not pay for clearing them). */
#define PC_SLOTS (1u << 18)
#define PC_MAX_ENTRIES (PC_SLOTS / 2)
#define PC_BLOCK (1u << 20)

typedef struct {
    uint64_t hash;
    uint16_t klen, nids;
    /* then klen key bytes, padded to 4, then nids int32 ids */
} PcEntry;

struct PieceCache {
    PcEntry **slot; /* NULL until the first insert; it and its entries accessed only through __atomic builtins */
    size_t count;   /* atomic */
    pthread_mutex_t mu;
    void **block;
    int n_block, cap_block;
};

static inline const uint8_t *pc_key(const PcEntry *e)
{
    return (const uint8_t *)(e + 1);
}
static inline const int32_t *pc_ids(const PcEntry *e)
{
    return (const int32_t *)((const uint8_t *)(e + 1) + ((e->klen + 3u) & ~3u));
}

PieceCache *piece_cache_new(void)
{
    PieceCache *c = xcalloc(1, sizeof(PieceCache));
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

void piece_cache_free(PieceCache *c)
{
    if (!c) return;
    for (int i = 0; i < c->n_block; i++) free(c->block[i]);
    free(c->block);
    free((void *)c->slot);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

struct TokThread {
    uint8_t *arena; /* the rest of this thread's current cache block */
    size_t arena_left;
    IdVec sym;    /* scratch for the initial symbols (BPE) or a word's ids (WordPiece) */
    IdVec bounds; /* WordPiece: character starts of the word */
    ByteBuf key;  /* WordPiece: prefix + candidate subword */
    pcre2_match_data *md;
};

TokThread *tok_thread_new(void)
{
    TokThread *th = xcalloc(1, sizeof(TokThread));
    th->md = pcre2_match_data_create(16, NULL);
    if (!th->md) fatal("out of memory (pcre2 match data)");
    return th;
}

TokThread *tok_thread(const Tokenizer *t)
{
    TokThread *th = pthread_getspecific(t->tls);
    if (th) return th;
    th = tok_thread_new();
    pthread_setspecific(t->tls, th);
    return th;
}

void tok_thread_free(void *p)
{
    TokThread *th = p;
    if (!th) return;
    free(th->sym.a);
    free(th->bounds.a);
    free(th->key.a);
    pcre2_match_data_free(th->md);
    free(th);
}

pcre2_match_data *tok_thread_match_data(TokThread *th)
{
    return th->md;
}

static const PcEntry *pc_get(const PieceCache *c, const uint8_t *s, size_t n, uint64_t h)
{
    PcEntry **slot = __atomic_load_n(&c->slot, __ATOMIC_ACQUIRE);
    if (!slot) return NULL; /* nothing inserted yet */
    size_t i = (size_t)h & (PC_SLOTS - 1);
    for (;;) {
        const PcEntry *e = __atomic_load_n(&slot[i], __ATOMIC_ACQUIRE);
        if (!e) return NULL;
        if (e->hash == h && e->klen == n && !memcmp(pc_key(e), s, n)) return e;
        i = (i + 1) & (PC_SLOTS - 1);
    }
}

static void pc_put(PieceCache *c, TokThread *th, const uint8_t *s, size_t n, uint64_t h, const int32_t *ids,
                   size_t k)
{
    if (__atomic_load_n(&c->count, __ATOMIC_RELAXED) >= PC_MAX_ENTRIES || k > UINT16_MAX) return;
    size_t need = sizeof(PcEntry) + ((n + 3) & ~(size_t)3) + k * sizeof(int32_t);
    need = (need + 7) & ~(size_t)7;
    PcEntry **slot = __atomic_load_n(&c->slot, __ATOMIC_ACQUIRE);
    if (!slot) { /* the first insert of any thread allocates the slots */
        pthread_mutex_lock(&c->mu);
        if (!(slot = c->slot)) {
            slot = xcalloc(PC_SLOTS, sizeof(PcEntry *));
            __atomic_store_n(&c->slot, slot, __ATOMIC_RELEASE);
        }
        pthread_mutex_unlock(&c->mu);
    }
    if (th->arena_left < need) {
        uint8_t *b = xmalloc(PC_BLOCK);
        pthread_mutex_lock(&c->mu);
        if (c->n_block == c->cap_block) {
            c->cap_block = c->cap_block ? 2 * c->cap_block : 64;
            c->block = xrealloc(c->block, (size_t)c->cap_block * sizeof(void *));
        }
        c->block[c->n_block++] = b;
        pthread_mutex_unlock(&c->mu);
        th->arena = b;
        th->arena_left = PC_BLOCK;
    }
    PcEntry *e = (PcEntry *)th->arena;
    th->arena += need;
    th->arena_left -= need;
    e->hash = h;
    e->klen = (uint16_t)n;
    e->nids = (uint16_t)k;
    memcpy((uint8_t *)(e + 1), s, n);
    memcpy((void *)pc_ids(e), ids, k * sizeof(int32_t));
    size_t i = (size_t)h & (PC_SLOTS - 1);
    for (;;) {
        PcEntry *cur = NULL;
        if (__atomic_compare_exchange_n(&slot[i], &cur, e, 0, __ATOMIC_RELEASE, __ATOMIC_ACQUIRE)) {
            __atomic_fetch_add(&c->count, 1, __ATOMIC_RELAXED);
            return;
        }
        if (cur->hash == h && cur->klen == n && !memcmp(pc_key(cur), s, n)) return; /* another thread won */
        i = (i + 1) & (PC_SLOTS - 1);
    }
}

/* ---- encode one piece -------------------------------------------------------- */

/* Initial symbols of a piece: single bytes (byte-level), or UTF-8 characters
 * looked up in the vocabulary with byte fallback (<0xNN>) and unk fusing. */
static void bpe_initial_symbols(const Tokenizer *t, const uint8_t *s, size_t n, IdVec *sym)
{
    sym->n = 0;
    idvec_reserve(sym, n + 1);
    if (t->byte_level) {
        for (size_t i = 0; i < n; i++)
            if (t->byte_id[s[i]] >= 0)
                sym->a[sym->n++] = t->byte_id[s[i]];
            else if (t->unk_id >= 0)
                sym->a[sym->n++] = t->unk_id;
        return;
    }
    int pending_unk = 0; /* an unk waiting to be emitted (fuse_unk joins runs of them) */
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = (size_t)utf8_decode(s + i, n - i, &cp);
        if (!k) k = 1; /* an invalid byte is a character of its own */
        int32_t id = strmap_get(&t->vocab, t, s + i, k);
        if (id >= 0) {
            if (pending_unk) sym->a[sym->n++] = t->unk_id;
            pending_unk = 0;
            sym->a[sym->n++] = id;
        } else {
            int all = t->byte_fallback;
            for (size_t b = 0; all && b < k; b++) all = t->byte_id[s[i + b]] >= 0;
            if (all) {
                if (pending_unk) sym->a[sym->n++] = t->unk_id;
                pending_unk = 0;
                for (size_t b = 0; b < k; b++) sym->a[sym->n++] = t->byte_id[s[i + b]];
            } else if (t->unk_id >= 0) {
                if (pending_unk && !t->fuse_unk) sym->a[sym->n++] = t->unk_id;
                pending_unk = 1;
            } /* else: no way to represent it, dropped (as HF does) */
        }
        i += k;
    }
    if (pending_unk) sym->a[sym->n++] = t->unk_id;
}

static void emit(IdVec *out, const int32_t *ids, size_t k)
{
    idvec_reserve(out, k);
    memcpy(out->a + out->n, ids, k * sizeof(int32_t));
    out->n += k;
}

void tok_encode_piece(const Tokenizer *t, TokThread *th, const uint8_t *s, size_t n, IdVec *out)
{
    if (n == 0) return;
    if (n == 1 && t->byte_level && t->byte_id[s[0]] >= 0) {
        idvec_push(out, t->byte_id[s[0]]);
        return;
    }
    uint64_t h = 0;
    if (n <= BPE_CACHE_MAX_KEY) {
        h = tok_hash(s, n);
        const PcEntry *e = pc_get(t->cache, s, n, h);
        if (e) {
            emit(out, pc_ids(e), e->nids);
            return;
        }
    }
    size_t m;
    if (t->kind == TOK_WORDPIECE) {
        th->sym.n = 0;
        wordpiece_encode_word(t, &th->key, &th->bounds, s, n, &th->sym);
        m = th->sym.n;
    } else {
        if (t->ignore_merges) {
            int32_t id = strmap_get(&t->vocab, t, s, n);
            if (id >= 0) {
                idvec_push(out, id);
                return;
            }
        }
        bpe_initial_symbols(t, s, n, &th->sym);
        m = bpe_merge(t, th->sym.a, th->sym.n, 0);
    }
    if (!m) return;
    emit(out, th->sym.a, m);
    if (n <= BPE_CACHE_MAX_KEY) pc_put(t->cache, th, s, n, h, th->sym.a, m);
}
