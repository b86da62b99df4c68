/* test_quant4.c - 4-bit quantization (src/model/quant4.c) and the bitsandbytes
 * directory layout (src/io/bnb.c) against bitsandbytes' own outputs
 * (tests/fixtures/bnb/, made by tools/make_bnb_fixtures.py).
 *
 * Every byte anvil writes is compared with the byte bitsandbytes wrote for the
 * same input. Where bitsandbytes' CPU path and its CUDA kernel disagree (anvil
 * follows the kernel), a difference is accepted only when the test can show
 * the documented cause at that very element (docs/finetuning.md):
 *   - an all-zero block: the CPU path clamps absmax to 1e-38 and writes the
 *     code of 0, the kernel scales by 1/0 and writes code 0;
 *   - the last, partial block: the CPU path divides by absmax, the kernel
 *     multiplies by the reciprocal;
 *   - FP4: the kernel's thresholds are written with fewer digits than the fp32
 *     midpoints the CPU path uses, and the CPU path gives the two zeros (codes
 *     0 and 8) the other sign;
 *   - the nested 8-bit codes: libbitsandbytes_cpu rounds through a 65536-entry
 *     table, and the torch backend sends a value on a midpoint down where the
 *     kernel keeps the even index.
 * Counts of each are printed; anything else fails. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "core/error.h"
#include "core/rng.h"
#include "io/bnb.h"
#include "io/fsutil.h"
#include "io/hf.h"
#include "io/safetensors.h"
#include "model/model.h"
#ifdef ANVIL_CUDA
#include <cuda_runtime.h>

#include "backend/cuda/cuda_quant4.h"
#endif
#include "model/quant4.h"
#include "test.h"

#define BLOCKSIZE 64

static char fixture_path[512];
static const char *fix(const char *rel)
{
    snprintf(fixture_path, sizeof(fixture_path), "%s/bnb/%s", test_fixtures(), rel);
    return fixture_path;
}

static StFile qfile, cfile;
static int have_qfile;
/* The fixture file the quantization tests read: quant.safetensors (bitsandbytes
 * on the CPU), then quant_cuda.safetensors (its CUDA kernels) when present. */
static StFile *cur = &qfile;
static int cur_ok, cur_cuda;

static const StTensor *qget(const char *fmt, const char *a, const char *b)
{
    char name[128];
    snprintf(name, sizeof(name), fmt, a, b);
    const StTensor *t = st_find(cur, name);
    if (!t) fprintf(stderr, "fixture tensor %s missing\n", name);
    return t;
}

static float *to_f32(const StTensor *t)
{
    float *x = xmalloc((t->numel ? t->numel : 1) * sizeof(float));
    if (st_to_f32(t, x) != 0) memcpy(x, t->data, t->nbytes);
    return x;
}

/* ---- the documented causes of a 4-bit difference ---- */

enum { WHY_ZERO_BLOCK, WHY_DIVISION, WHY_FP4_ZERO_SIGN, WHY_THRESHOLD, WHY_RCP, WHY_N };
static const char *why_name[WHY_N] = {"all-zero or subnormal block", "partial block division",
                                      "fp4 signed zero", "threshold literal vs fp32 midpoint",
                                      "CUDA reciprocal (rcp.approx, fast math) next to a threshold"};
static long why_count[WHY_N];

/* The kernels' thresholds as float literals (dQuantizeNF4, dQuantizeFP4), by boundary. */
static const float cuda_nf4_t[15] = {-0.8480964004993439f,   -0.6106329262256622f,  -0.4599952697753906f,
                                     -0.33967943489551544f,  -0.23460740596055984f, -0.13791173323988914f,
                                     -0.045525018125772476f, 0.03979014977812767f,  0.1202552504837513f,
                                     0.2035212516784668f,    0.2920137718319893f,   0.3893125355243683f,
                                     0.5016634166240692f,    0.6427869200706482f,   0.8614784181118011f};
static const float cuda_fp4_t[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                    0.4166667f,  0.583333f,  0.8333333f};

/* Magnitude rank of an FP4 nibble (its 3-bit pattern in value order). */
static int fp4_rank(uint8_t nib)
{
    static const int rank[8] = {0, 1, 6, 7, 4, 5, 2, 3};
    return rank[nib & 7];
}

/* Codes a and b are neighbours and s lies between the kernel's threshold
 * between them and the fp32 midpoint of the two codes (the torch backend's). */
static int threshold_window(Q4Type t, float s, uint8_t a, uint8_t b)
{
    const float *code = q4_code(t);
    float lit, v = s;
    if (t == Q4_NF4) {
        if (abs(a - b) != 1) return 0;
        lit = cuda_nf4_t[MIN(a, b)];
    } else {
        int ra = fp4_rank(a), rb = fp4_rank(b);
        if ((a & 8) != (b & 8) || abs(ra - rb) != 1) return 0;
        lit = cuda_fp4_t[MIN(ra, rb)];
        v = fabsf(s);
    }
    float ca = t == Q4_NF4 ? code[a] : fabsf(code[a]), cb = t == Q4_NF4 ? code[b] : fabsf(code[b]);
    float mid = (ca + cb) / 2.0f;
    return v >= MIN(mid, lit) && v <= MAX(mid, lit);
}

/* |a - b| within k ulps of b. */
static int within_ulps(float a, float b, int k)
{
    float ulp = nextafterf(fabsf(b), INFINITY) - fabsf(b);
    return fabsf(a - b) <= k * ulp;
}

/* The CUDA kernels are built with --use_fast_math: 1/absmax is rcp.approx
 * (within an ulp), so a scaled value within a couple of ulps of a threshold
 * may land on either side. The kernel's threshold between neighbours a, b: */
#define RCP_ULPS 2
static int near_kernel_threshold(Q4Type t, float s, uint8_t a, uint8_t b)
{
    if (t == Q4_NF4) return abs(a - b) == 1 && within_ulps(s, cuda_nf4_t[MIN(a, b)], RCP_ULPS);
    int ra = fp4_rank(a), rb = fp4_rank(b);
    return (a & 8) == (b & 8) && abs(ra - rb) == 1 &&
           within_ulps(fabsf(s), cuda_fp4_t[MIN(ra, rb)], RCP_ULPS);
}

/* Classify a difference at element e (ours vs bitsandbytes'); -1: unexplained. */
static int explain4(Q4Type t, const float *x, int64_t n, int64_t e, float amax, uint8_t ours, uint8_t theirs)
{
    int64_t b = e / BLOCKSIZE;
    if (cur_cuda)
        return amax != 0 && near_kernel_threshold(t, x[e] * (1.0f / amax), ours, theirs) ? WHY_RCP : -1;
    if (amax == 0.0f) return WHY_ZERO_BLOCK;
    if (t == Q4_FP4 && (ours & 7) == 0 && (theirs & 7) == 0) return WHY_FP4_ZERO_SIGN;
    float s = x[e] * (1.0f / amax);
    if ((b + 1) * BLOCKSIZE > n && q4_encode(t, x[e] / amax) == theirs && q4_encode(t, s) == ours)
        return WHY_DIVISION;
    if (threshold_window(t, s, ours, theirs)) return WHY_THRESHOLD;
    return -1;
}

/* absmax: the CPU path stores max(absmax, 1e-38) for a partial last block
 * (clamped before it divides), and the kernel flushes subnormals to zero. */
#define BNB_CPU_ABSMAX_CLAMP 1e-38f
static int absmax_explained(float ours, float theirs, int last)
{
    if (ours != 0.0f || cur_cuda) return 0;
    return theirs < FLT_MIN || (last && theirs == BNB_CPU_ABSMAX_CLAMP);
}

static uint8_t nib(const uint8_t *p, int64_t e)
{
    return (e & 1) ? p[e >> 1] & 0xF : p[e >> 1] >> 4;
}

static const char *cases[] = {"n64",       "n4096",       "n4096_bf16", "n1000",       "n197",
                              "n197_bf16", "n65553_bf16", "special",    "special_bf16"};

static void test_code_tables(void)
{
    if (!cur_ok) return;
    const StTensor *nf = qget("quant_map.%s%s", "nf4", ""), *fp = qget("quant_map.%s%s", "fp4", "");
    const StTensor *m8 = qget("nested_quant_map%s%s", "", "");
    CHECK(nf && nf->numel == 16 && !memcmp(nf->data, q4_code(Q4_NF4), 64));
    int fp_close =
        fp && fp->numel == 16; /* on the GPU the table is divided there: allow bitsandbytes' atol */
    for (int i = 0; fp_close && i < 16; i++) {
        float v;
        memcpy(&v, (const char *)fp->data + 4 * i, 4);
        fp_close = fabsf(v - q4_code(Q4_FP4)[i]) <= 1e-6f && (cur_cuda || v == q4_code(Q4_FP4)[i]);
    }
    CHECK(fp_close);
    CHECK(m8 && m8->numel == Q4_MAP8_SIZE && !memcmp(m8->data, q4_map8(), Q4_MAP8_SIZE * 4));
}

/* The packed nibbles and absmax of every case and type against bitsandbytes'. */
static void test_quantize_bytes(void)
{
    if (!cur_ok) return;
    for (size_t c = 0; c < ARRAY_LEN(cases); c++) {
        const StTensor *in = qget("%s.input%s", cases[c], "");
        if (!in) continue;
        float *x = to_f32(in);
        int64_t n = (int64_t)in->numel, nb = q4_nblocks(n, BLOCKSIZE);
        for (int t = Q4_NF4; t <= Q4_FP4; t++) {
            const StTensor *tp = qget("%s.%s.packed", cases[c], q4_type_name(t));
            const StTensor *ta = qget("%s.%s.absmax", cases[c], q4_type_name(t));
            if (!tp || !ta) continue;
            uint8_t *packed = xmalloc(q4_packed_bytes(n));
            float *absmax = xmalloc((size_t)nb * sizeof(float));
            q4_quantize_blocks(x, n, (Q4Type)t, BLOCKSIZE, packed, absmax);
            CHECKF(tp->numel == q4_packed_bytes(n) && ta->numel == (size_t)nb, "%s %s sizes", cases[c],
                   q4_type_name(t));
            float *their_absmax = to_f32(ta);
            for (int64_t b = 0; b < nb; b++)
                if (memcmp(&absmax[b], &their_absmax[b], sizeof(float)))
                    CHECKF(absmax_explained(absmax[b], their_absmax[b], b == nb - 1),
                           "%s %s absmax[%lld] %g vs %g", cases[c], q4_type_name(t), (long long)b,
                           (double)absmax[b], (double)their_absmax[b]);
            const uint8_t *theirs = tp->data;
            long unexplained = 0, explained = 0;
            for (int64_t e = 0; e < n; e++) {
                uint8_t a = nib(packed, e), b = nib(theirs, e);
                if (a == b) continue;
                int why = explain4((Q4Type)t, x, n, e, absmax[e / BLOCKSIZE], a, b);
                if (why < 0) {
                    if (unexplained++ < 5)
                        fprintf(stderr, "  %s %s [%lld] x=%.9g absmax=%.9g: anvil %d, bitsandbytes %d\n",
                                cases[c], q4_type_name(t), (long long)e, (double)x[e],
                                (double)absmax[e / BLOCKSIZE], a, b);
                } else {
                    why_count[why]++;
                    explained++;
                }
            }
            CHECKF(unexplained == 0, "%s %s: %ld unexplained nibble differences", cases[c], q4_type_name(t),
                   unexplained);
            /* the random cases are equal outright for NF4 (and the odd n's pad nibble too) */
            if (t == Q4_NF4 && strncmp(cases[c], "special", 7) && !cur_cuda)
                CHECKF(explained == 0 && !memcmp(packed, theirs, q4_packed_bytes(n)), "%s nf4 bytes",
                       cases[c]);
            free(their_absmax);
            free(packed);
            free(absmax);
        }
        free(x);
    }
    for (int w = 0; w < WHY_N; w++)
        if (why_count[w])
            fprintf(stderr, "  accepted 4-bit differences: %ld x %s\n", why_count[w], why_name[w]);
}

/* Equal as numbers (so +0 == -0: bitsandbytes' CPU backends disagree on the sign
 * of FP4 code 8's zero), and NaN-free. */
static size_t count_unequal(const float *a, const float *b, size_t n, size_t *first)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (!(a[i] == b[i])) {
            if (!bad && first) *first = i;
            bad++;
        }
    return bad;
}

/* dequantize_4bit of bitsandbytes' own bytes, fp32 and bf16, plain and nested. */
static void test_dequantize(void)
{
    if (!cur_ok) return;
    const StTensor *m8 = qget("nested_quant_map%s%s", "", "");
    for (size_t c = 0; c < ARRAY_LEN(cases); c++) {
        const StTensor *in = qget("%s.input%s", cases[c], "");
        if (!in || !m8) continue;
        int64_t n = (int64_t)in->numel, nb = q4_nblocks(n, BLOCKSIZE);
        float *out = xmalloc((size_t)n * sizeof(float));
        uint16_t *out16 = xmalloc((size_t)n * sizeof(uint16_t));
        float *out16f = xmalloc((size_t)n * sizeof(float));
        for (int t = Q4_NF4; t <= Q4_FP4; t++) {
            char key[96];
            snprintf(key, sizeof(key), "%s.%s.dequant", cases[c], q4_type_name(t));
            const StTensor *want = st_find(&qfile, key);
            if (!want) continue; /* the large case has none */
            float *absmax = to_f32(qget("%s.%s.absmax", cases[c], q4_type_name(t)));
            Q4State s = {.type = (Q4Type)t,
                         .blocksize = BLOCKSIZE,
                         .n = n,
                         .packed = qget("%s.%s.packed", cases[c], q4_type_name(t))->data,
                         .absmax = absmax};
            float *w = to_f32(want);
            size_t first = 0, bad;
            if (want->dtype == ST_BF16) {
                q4_dequantize_bf16(&s, out16);
                for (int64_t i = 0; i < n; i++) out16f[i] = st_bf16_to_f32(out16[i]);
                bad = count_unequal(out16f, w, (size_t)n, &first);
            } else {
                q4_dequantize(&s, out);
                bad = count_unequal(out, w, (size_t)n, &first);
            }
            CHECKF(bad == 0, "%s: %zu differ, first [%zu] %g vs %g", key, bad, first,
                   (double)(want->dtype == ST_BF16 ? out16f : out)[first], (double)w[first]);
            free(w);
            strcat(key, "_bf16");
            if ((want = st_find(&qfile, key))) {
                w = to_f32(want);
                q4_dequantize_bf16(&s, out16);
                for (int64_t i = 0; i < n; i++) out16f[i] = st_bf16_to_f32(out16[i]);
                bad = count_unequal(out16f, w, (size_t)n, &first);
                CHECKF(bad == 0, "%s: %zu differ, first [%zu]", key, bad, first);
                free(w);
            }
            /* rows: a (rows, cols) view dequantized a few rows at a time gives the same */
            int64_t cols = n % 5 == 0 ? 5 : 1;
            for (int64_t r0 = 0; r0 < n / cols; r0 += 7) {
                int64_t r1 = MIN(n / cols, r0 + 7);
                q4_dequantize_rows(&s, cols, r0, r1, out16f);
                q4_dequantize_range(&s, r0 * cols, r1 * cols, out);
                CHECK(!memcmp(out16f, out, (size_t)((r1 - r0) * cols) * sizeof(float)));
            }
            free(absmax);
        }
        /* nested: bitsandbytes' qabsmax, nested absmax, offset and map */
        char key[96];
        snprintf(key, sizeof(key), "%s.nf4.dq.dequant", cases[c]);
        const StTensor *want = st_find(&qfile, key);
        if (want) {
            float *na = to_f32(qget("%s.dq.nested_absmax%s", cases[c], "")), off;
            float *map = to_f32(m8);
            memcpy(&off, qget("%s.dq.offset%s", cases[c], "")->data, sizeof(float));
            Q4State s = {.type = Q4_NF4,
                         .blocksize = BLOCKSIZE,
                         .n = n,
                         .packed = qget("%s.nf4.packed%s", cases[c], "")->data,
                         .qabsmax = qget("%s.dq.qabsmax%s", cases[c], "")->data,
                         .nested_absmax = na,
                         .map8 = map,
                         .nested_blocksize = Q4_NESTED_BLOCKSIZE,
                         .nested_offset = off};
            CHECK(q4_state_check(&s) == 0);
            float *w = to_f32(want);
            size_t first = 0, bad;
            if (want->dtype == ST_BF16) {
                q4_dequantize_bf16(&s, out16);
                for (int64_t i = 0; i < n; i++) out16f[i] = st_bf16_to_f32(out16[i]);
                bad = count_unequal(out16f, w, (size_t)n, &first);
            } else {
                q4_dequantize(&s, out);
                bad = count_unequal(out, w, (size_t)n, &first);
            }
            CHECKF(bad == 0, "%s: %zu differ, first [%zu]", key, bad, first);
            (void)nb;
            free(w);
            free(na);
            free(map);
        }
        free(out);
        free(out16);
        free(out16f);
    }
}

/* The libbitsandbytes_cpu blockwise 8-bit kernel rounds x in [-1, 1] to one
 * of 65536 grid points, -1 + 2i/65535 (i = round((x+1)/2 * 65535)), and
 * takes the first code whose fp32 midpoint with the next is not below it. Is
 * `code` what that gives (for i or a neighbour, to allow for its rounding)? */
#define BNB_CPU_LUT 65536
static int lut_explains(float x, uint8_t code, const float *map)
{
    float v = x < -1.0f ? -1.0f : x > 1.0f ? 1.0f : x;
    long i0 = (long)((v + 1.0f) * 0.5f * (BNB_CPU_LUT - 1) + 0.5f);
    for (long i = i0 - 1; i <= i0 + 1; i++) {
        if (i < 0 || i >= BNB_CPU_LUT) continue;
        float g = -1.0f + (2.0f * (float)i) / (float)(BNB_CPU_LUT - 1);
        int c = 0;
        while (c < Q4_MAP8_SIZE - 1 && 0.5f * (map[c] + map[c + 1]) < g) c++;
        if (c == code) return 1;
    }
    return 0;
}

/* Double quantization: the offset, the nested absmax and the 8-bit codes. */
static void test_double_quant(void)
{
    if (!cur_ok) return;
    const float *map = q4_map8();
    long ties = 0, lut = 0, offset_ulps = 0;
    for (size_t c = 0; c < ARRAY_LEN(cases); c++) {
        const StTensor *ta = qget("%s.nf4.absmax%s", cases[c], "");
        const StTensor *tq = qget("%s.dq.qabsmax%s", cases[c], "");
        const StTensor *tn = qget("%s.dq.nested_absmax%s", cases[c], "");
        /* the torch backend's codes (CPU fixture only); on the GPU the kernel's are tq */
        const StTensor *tqd = cur_cuda ? tq : qget("%s.dq.qabsmax_default%s", cases[c], "");
        const StTensor *tnd = cur_cuda ? tn : qget("%s.dq.nested_absmax_default%s", cases[c], "");
        const StTensor *to = qget("%s.dq.offset%s", cases[c], "");
        if (!ta || !tq || !tqd || !tn || !tnd || !to) continue;
        int64_t nb = (int64_t)ta->numel, nn = q4_nblocks(nb, Q4_NESTED_BLOCKSIZE);
        float *absmax = to_f32(ta), off;
        memcpy(&off, to->data, sizeof(float));
        /* torch sums in its own order; anvil's mean is the correctly rounded one */
        float mine = q4_absmax_mean(absmax, nb);
        if (mine != off) offset_ulps++;
        CHECKF(fabsf(mine - off) <= 2 * (nextafterf(fabsf(off), INFINITY) - fabsf(off)),
               "%s offset %.9g vs %.9g", cases[c], (double)mine, (double)off);
        /* with bitsandbytes' offset, the rest is exact */
        float *v = xmalloc((size_t)nb * sizeof(float)), *na = xmalloc((size_t)nn * sizeof(float));
        uint8_t *q = xmalloc((size_t)nb);
        for (int64_t b = 0; b < nb; b++) v[b] = absmax[b] - off;
        q4_quantize_map8(v, nb, Q4_NESTED_BLOCKSIZE, q, na);
        float *their_na = to_f32(tn), *their_nad = to_f32(tnd);
        CHECKF(!memcmp(na, their_na, (size_t)nn * 4), "%s nested_absmax", cases[c]);
        for (int64_t j = 0; j < nn; j++) /* the torch backend clamps an all-zero block's absmax */
            CHECKF(na[j] == their_nad[j] || (na[j] == 0 && their_nad[j] == BNB_CPU_ABSMAX_CLAMP),
                   "%s nested_absmax[%lld] (torch backend)", cases[c], (long long)j);
        const uint8_t *qc = tq->data, *qd = tqd->data;
        for (int64_t b = 0; b < nb; b++) {
            float x = v[b] * (1.0f / na[b / Q4_NESTED_BLOCKSIZE]);
            if (cur_cuda) { /* the kernel: equal, or rcp.approx next to a midpoint */
                int near =
                    abs(q[b] - qc[b]) == 1 && within_ulps(x, 0.5f * (map[q[b]] + map[qc[b]]), RCP_ULPS);
                CHECKF(q[b] == qc[b] || near, "%s qabsmax[%lld]: anvil %d, bitsandbytes (CUDA) %d, x %.9g",
                       cases[c], (long long)b, q[b], qc[b], (double)x);
                lut += q[b] != qc[b];
                continue;
            }
            if (q[b] != qd[b] && na[b / Q4_NESTED_BLOCKSIZE] == 0) { /* all zero: code 0 vs code of 0 */
                CHECK(q[b] == 0 && map[qd[b]] == 0.0f);
            } else if (q[b] != qd[b]) { /* torch backend: a tie goes to the lower index */
                int tie = abs(q[b] - qd[b]) == 1 && x == 0.5f * (map[q[b]] + map[qd[b]]) && qd[b] < q[b];
                CHECKF(tie, "%s qabsmax[%lld]: anvil %d, bitsandbytes (torch backend) %d, x %.9g", cases[c],
                       (long long)b, q[b], qd[b], (double)x);
                ties++;
            }
            if (q[b] != qc[b]) {
                CHECKF(lut_explains(x, qc[b], map),
                       "%s qabsmax[%lld]: anvil %d, bitsandbytes (cpu) %d, x %.9g", cases[c], (long long)b,
                       q[b], qc[b], (double)x);
                lut++;
            }
        }
        free(v);
        free(na);
        free(q);
        free(their_na);
        free(their_nad);
        free(absmax);
    }
    fprintf(
        stderr,
        cur_cuda
            ? "  double quant (CUDA): %ld offsets an ulp off torch's sum; %ld ties; %ld codes next to a "
              "midpoint (rcp.approx)\n"
            : "  double quant: %ld offsets an ulp off torch's sum; %ld ties (torch backend), %ld codes of "
              "the CPU kernel's 65536-point table\n",
        offset_ulps, ties, lut);
}

/* ---- the bitsandbytes directory layout ---- */

static char tmp_root[256];

static char *tmp_path(const char *name)
{
    return fs_join(tmp_root, name);
}

/* JSON blobs: QuantState.as_dict(packed=True)'s, byte for byte. */
static void test_quant_state_json(void)
{
    if (!cur_ok) return;
    const char *names[] = {"n197", "n197_bf16", "n1000"};
    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        const StTensor *want = qget("quant_state.%s%s", names[i], ""), *in = qget("%s.input%s", names[i], "");
        const StTensor *off = qget("%s.dq.offset%s", names[i], "");
        if (!want || !in || !off) continue;
        Q4State st = {.type = Q4_NF4,
                      .blocksize = BLOCKSIZE,
                      .n = (int64_t)in->numel,
                      .qabsmax = (const uint8_t *)"",
                      .nested_blocksize = Q4_NESTED_BLOCKSIZE};
        memcpy(&st.nested_offset, off->data, sizeof(float));
        int64_t shape[1] = {(int64_t)in->numel};
        char *js = bnb_quant_state_json(&st, in->dtype, 1, shape);
        CHECKF(strlen(js) == want->nbytes && !memcmp(js, want->data, want->nbytes), "%s: %s vs %.*s",
               names[i], js, (int)want->nbytes, (const char *)want->data);
        free(js);
    }
}

/* nested_offset is written as Python's float repr: check it on values whose
 * repr takes each of its forms (positional, exponent, '.0', signed zero). */
static void test_python_float_repr(void)
{
    if (!cur_ok) return;
    const StTensor *tv = qget("repr.values%s%s", "", ""), *tt = qget("repr.text%s%s", "", "");
    if (!tv || !tt) return;
    char *text = xmalloc(tt->nbytes + 1);
    memcpy(text, tt->data, tt->nbytes);
    text[tt->nbytes] = '\0';
    char *line = text, *save = NULL;
    for (size_t i = 0; i < tv->numel; i++) {
        char *want = strtok_r(i ? NULL : line, "\n", &save);
        float v;
        memcpy(&v, (const char *)tv->data + 4 * i, 4);
        Q4State st = {.type = Q4_NF4, .blocksize = BLOCKSIZE, .n = 1, .qabsmax = (const uint8_t *)"",
                      .nested_blocksize = Q4_NESTED_BLOCKSIZE, .nested_offset = v};
        int64_t shape[1] = {1};
        char *js = bnb_quant_state_json(&st, ST_F32, 1, shape);
        const char *got = strstr(js, "\"nested_offset\": ");
        got = got ? got + strlen("\"nested_offset\": ") : "";
        size_t n = strlen(got) ? strlen(got) - 1 : 0; /* without the closing brace */
        CHECKF(want && n == strlen(want) && !strncmp(got, want, n), "repr(%.9g): anvil %.*s, Python %s", (double)v,
               (int)n, got, want ? want : "?");
        free(js);
    }
    free(text);
}

/* Load a bnb directory as a plain fp32 model (dequantized) and compare its
 * logits and loss with transformers + bitsandbytes on the same input. */
static void check_bnb_model(const char *name, int want_weights, Q4Type want_type, int want_nested)
{
    char dir[512], ref[600];
    snprintf(dir, sizeof(dir), "%s", fix(name));
    snprintf(ref, sizeof(ref), "%s/reference.safetensors", dir);
    BnbDir d;
    if (bnb_open(&d, dir) != 0) {
        CHECKF(0, "bnb_open %s: %s", dir, err_get());
        return;
    }
    CHECKF(d.n == want_weights, "%s: %d 4-bit weights", name, d.n);
    for (int i = 0; i < d.n; i++) {
        CHECK(d.t[i].q.type == want_type && (d.t[i].q.qabsmax != NULL) == want_nested && d.t[i].ndim == 2 &&
              d.t[i].dtype == ST_BF16 && d.t[i].q.blocksize == BLOCKSIZE);
        CHECK(bnb_find(&d, d.t[i].name) == &d.t[i]);
    }
    CHECK(d.cfg.quant_type == want_type && d.cfg.double_quant == want_nested);
    char *plain = tmp_path(name);
    CHECKF(bnb_save_dequantized(&d, plain) == 0, "%s", err_get());
    bnb_close(&d);
    Model *m = hf_load_model(plain, backend_cpu(), 0);
    CHECKF(m != NULL, "hf_load_model %s: %s", plain, err_get());
    StFile r;
    if (m && st_open(&r, ref) == 0) {
        const StTensor *ids = st_find(&r, "input_ids"), *tg = st_find(&r, "targets");
        const StTensor *lg = st_find(&r, "logits"), *ls = st_find(&r, "loss");
        int B = (int)ids->shape[0], T = (int)ids->shape[1], V = m->cfg.vocab_size;
        int32_t *in = xmalloc(ids->nbytes), *tgt = xmalloc(tg->nbytes);
        memcpy(in, ids->data, ids->nbytes);
        memcpy(tgt, tg->data, tg->nbytes);
        float *want_logits = to_f32(lg), want_loss;
        memcpy(&want_loss, ls->data, 4);
        CHECK(model_reserve(m, B, T, 0) == 0);
        float loss = model_forward(m, in, tgt, B, T, 0, NULL);
        model_forward(m, in, NULL, B, T, 0, NULL);
        double err = rel_err_max(m->logits, want_logits, (size_t)B * T * V);
        fprintf(stderr, "  %s: loss %.6f (transformers + bitsandbytes %.6f), logits rel err %.2g\n", name,
                (double)loss, (double)want_loss, err);
        CHECK_CLOSE(loss, want_loss, 1e-5);
        CHECK(err < 1e-5);
        free(in);
        free(tgt);
        free(want_logits);
        st_close(&r);
    }
    model_free(m);
    free(plain);
}

static void test_bnb_read(void)
{
    check_bnb_model("llama_nf4", 14, Q4_NF4, 1);
    check_bnb_model("gpt2_fp4", 8, Q4_FP4, 0);
}

/* anvil's quantization of a plain directory against the directory transformers
 * + bitsandbytes saved from the same model (the same bytes for NF4; FP4 with
 * the documented differences). */
static void compare_with_saved(const char *plain, const char *saved, Q4Type t, int nested)
{
    char src[512];
    snprintf(src, sizeof(src), "%s/%s/model", test_fixtures(), plain);
    StSet set;
    BnbDir d;
    if (st_set_open_dir(&set, src, "model") != 0 || bnb_open(&d, fix(saved)) != 0) {
        CHECKF(0, "%s", err_get());
        return;
    }
    int gpt2 = !strcmp(plain, "gpt2");
    long explained = 0;
    for (int i = 0; i < d.n; i++) {
        const BnbTensor *w = &d.t[i];
        const StTensor *orig = st_set_find(&set, w->name, NULL);
        if (!orig) {
            CHECKF(0, "%s missing in %s", w->name, src);
            continue;
        }
        int64_t n = (int64_t)orig->numel, R = orig->shape[0], C = orig->shape[1];
        float *x = to_f32(orig), *y = xmalloc((size_t)n * sizeof(float));
        for (int64_t e = 0; e < n; e++) x[e] = st_bf16_to_f32(st_f32_to_bf16(x[e])); /* loaded in bf16 */
        if (gpt2) /* Conv1D (in, out) -> (out, in), as transformers does before quantizing */
            for (int64_t r = 0; r < R; r++)
                for (int64_t c = 0; c < C; c++) y[c * R + r] = x[r * C + c];
        else
            memcpy(y, x, (size_t)n * sizeof(float));
        Q4Quant q;
        CHECK(q4_quantize(y, n, t, BLOCKSIZE, nested, &q) == 0);
        CHECK(w->q.n == n);
        for (int64_t e = 0; e < n; e++) {
            uint8_t a = nib(q.packed, e), b = nib(w->q.packed, e);
            if (a == b) continue;
            int why = explain4(t, y, n, e, q.absmax[e / BLOCKSIZE], a, b);
            CHECKF(why >= 0, "%s [%lld]: anvil %d, bitsandbytes %d", w->name, (long long)e, a, b);
            explained++;
        }
        int64_t nb = q4_nblocks(n, BLOCKSIZE);
        if (nested && cur_cuda && q.s.nested_offset != w->q.nested_offset) {
            /* torch.mean on the GPU sums in another order: within an ulp or two, then the same
             * codes from bitsandbytes' offset (up to rcp.approx next to a midpoint) */
            CHECKF(within_ulps(q.s.nested_offset, w->q.nested_offset, 2), "%s nested_offset", w->name);
            float *v = xmalloc((size_t)nb * 4),
                  *na = xmalloc((size_t)q4_nblocks(nb, Q4_NESTED_BLOCKSIZE) * 4);
            uint8_t *c8 = xmalloc((size_t)nb);
            for (int64_t b = 0; b < nb; b++) v[b] = q.absmax[b] - w->q.nested_offset;
            q4_quantize_map8(v, nb, Q4_NESTED_BLOCKSIZE, c8, na);
            CHECK(!memcmp(na, w->q.nested_absmax, (size_t)q4_nblocks(nb, Q4_NESTED_BLOCKSIZE) * 4));
            for (int64_t b = 0; b < nb; b++) {
                float xs = v[b] * (1.0f / na[b / Q4_NESTED_BLOCKSIZE]);
                const float *m8 = q4_map8();
                CHECK(c8[b] == w->q.qabsmax[b] ||
                      (abs(c8[b] - w->q.qabsmax[b]) == 1 &&
                       within_ulps(xs, 0.5f * (m8[c8[b]] + m8[w->q.qabsmax[b]]), RCP_ULPS)));
            }
            free(v);
            free(na);
            free(c8);
            q4_quant_free(&q);
            free(x);
            free(y);
            continue;
        } else if (nested) {
            CHECKF(!memcmp(q.qabsmax, w->q.qabsmax, (size_t)nb), "%s absmax codes", w->name);
            CHECKF(
                !memcmp(q.nested_absmax, w->q.nested_absmax, (size_t)q4_nblocks(nb, Q4_NESTED_BLOCKSIZE) * 4),
                "%s nested_absmax", w->name);
            CHECKF(q.s.nested_offset == w->q.nested_offset, "%s nested_offset %.9g vs %.9g", w->name,
                   (double)q.s.nested_offset, (double)w->q.nested_offset);
        } else {
            CHECKF(!memcmp(q.absmax, w->q.absmax, (size_t)nb * 4), "%s absmax", w->name);
        }
        /* the JSON blob as stored */
        char qs_name[600];
        snprintf(qs_name, sizeof(qs_name), "%s.quant_state.bitsandbytes__%s", w->name, q4_type_name(t));
        const StTensor *qs = st_set_find(&d.set, qs_name, NULL);
        char *js = bnb_quant_state_json(&q.s, ST_BF16, w->ndim, w->shape);
        CHECKF(qs && strlen(js) == qs->nbytes && !memcmp(js, qs->data, qs->nbytes), "%s: %s", qs_name, js);
        free(js);
        q4_quant_free(&q);
        free(x);
        free(y);
    }
    if (t == Q4_NF4 && !cur_cuda) CHECKF(explained == 0, "%s: %ld nibbles differ", saved, explained);
    fprintf(stderr, "  %s: anvil's quantization of %s: %ld nibble differences, all of documented causes\n",
            saved, plain, explained);
    bnb_close(&d);
    st_set_close(&set);
}

static void test_quantize_like_transformers(void)
{
    compare_with_saved("llama", "llama_nf4", Q4_NF4, 1);
    compare_with_saved("gpt2", "gpt2_fp4", Q4_FP4, 0);
}

/* The same against transformers + bitsandbytes quantizing on a GPU. */
static void test_quantize_like_transformers_cuda(void)
{
    compare_with_saved("llama", "llama_nf4_cuda", Q4_NF4, 1);
}

/* bnb_write_weights + bnb_write_config, then bnb_open: the same states. */
static void test_write_read_round_trip(void)
{
    char *dir = tmp_path("rt");
    CHECK(fs_mkdir_p(dir) == 0);
    const int64_t rows[3] = {3, 5, 64}, cols[3] = {65, 13, 128}; /* odd sizes, partial blocks */
    Q4Quant q[3];
    BnbWriteQuant wq[3];
    char names[3][64];
    for (int i = 0; i < 3; i++) {
        int64_t n = rows[i] * cols[i];
        float *x = xmalloc((size_t)n * sizeof(float));
        for (int64_t e = 0; e < n; e++) x[e] = sinf((float)(e * (i + 3))) * (float)(1 + e % 7);
        CHECK(q4_quantize(x, n, i == 1 ? Q4_FP4 : Q4_NF4, i == 2 ? 128 : BLOCKSIZE, i != 1, &q[i]) == 0);
        snprintf(names[i], sizeof(names[i]), "model.layers.%d.mlp.up_proj.weight", i);
        wq[i] =
            (BnbWriteQuant){.name = names[i], .rows = rows[i], .cols = cols[i], .dtype = ST_BF16, .q = &q[i]};
        free(x);
    }
    float norm[4] = {1, 2, 3, 4};
    StWriteTensor plain[1] = {
        {.name = "model.norm.weight", .dtype = ST_BF16, .ndim = 1, .shape = {4}, .data = norm, .src_f32 = 1}};
    CHECKF(bnb_write_weights(dir, plain, 1, wq, 3) == 0, "%s", err_get());
    char src[512];
    snprintf(src, sizeof(src), "%s/llama/model", test_fixtures());
    BnbConfig c = {.quant_type = Q4_NF4, .double_quant = 1};
    CHECKF(bnb_write_config(src, dir, &c) == 0, "%s", err_get());
    BnbDir d;
    CHECKF(bnb_open(&d, dir) == 0, "%s", err_get());
    if (d.t) {
        CHECK(d.n == 3);
        for (int i = 0; i < 3; i++) {
            const BnbTensor *w = bnb_find(&d, names[i]);
            CHECK(w && w->shape[0] == rows[i] && w->shape[1] == cols[i] && w->q.type == q[i].s.type &&
                  w->q.blocksize == q[i].s.blocksize && w->q.n == q[i].s.n);
            if (!w) continue;
            CHECK(!memcmp(w->q.packed, q[i].packed, q4_packed_bytes(w->q.n)));
            float *a = xmalloc((size_t)w->q.n * 4), *b = xmalloc((size_t)w->q.n * 4);
            q4_dequantize(&w->q, a);
            q4_dequantize(&q[i].s, b);
            CHECK(!memcmp(a, b, (size_t)w->q.n * 4));
            free(a);
            free(b);
        }
        CHECK(!bnb_find(&d, "model.norm.weight") && bnb_is_state_name("x.weight.nested_quant_map") &&
              !bnb_is_state_name("model.norm.weight"));
        bnb_close(&d);
    }
    BnbConfig rc;
    CHECK(bnb_read_config(dir, &rc) == 1 && rc.quant_type == Q4_NF4 && rc.double_quant == 1 &&
          !strcmp(rc.compute_dtype, "bfloat16") && !strcmp(rc.quant_storage, "uint8"));
    snprintf(src, sizeof(src), "%s/llama/model", test_fixtures());
    CHECK(bnb_read_config(src, &rc) == 0);
    for (int i = 0; i < 3; i++) q4_quant_free(&q[i]);
    free(dir);
}

/* ---- bad directories: one line naming the file and the tensor ---- */

/* Copy fixtures/bnb/llama_nf4 to tmp/<name>, with its safetensors rewritten by
 * edit(), which may change the tensor list; returns the directory. */
typedef void (*EditFn)(StWriteTensor *t, int *n, char *scratch);

static char *broken_copy(const char *name, EditFn edit, const char *config_sed_from,
                         const char *config_sed_to)
{
    char *dir = tmp_path(name), *src = xstrdup(fix("llama_nf4"));
    fs_rm_rf(dir);
    fs_mkdir_p(dir);
    char *cfg_src = fs_join(src, "config.json"), *cfg_dst = fs_join(dir, "config.json"), *text;
    size_t n;
    fs_read_file(cfg_src, &text, &n);
    if (config_sed_from) {
        char *p = strstr(text, config_sed_from);
        if (p) {
            size_t a = strlen(config_sed_from), b = strlen(config_sed_to);
            char *t2 = xmalloc(n + b + 1);
            memcpy(t2, text, (size_t)(p - text));
            memcpy(t2 + (p - text), config_sed_to, b);
            strcpy(t2 + (p - text) + b, p + a);
            free(text);
            text = t2;
            n = strlen(text);
        }
    }
    fs_write_atomic(cfg_dst, text, n);
    free(text);
    StFile f;
    char *st_src = fs_join(src, "model.safetensors");
    if (st_open(&f, st_src) == 0) {
        StWriteTensor *t = xcalloc((size_t)f.n + 4, sizeof(StWriteTensor));
        for (int i = 0; i < f.n; i++) {
            t[i].name = f.t[i].name;
            t[i].dtype = f.t[i].dtype;
            t[i].ndim = f.t[i].ndim;
            memcpy(t[i].shape, f.t[i].shape, sizeof(t[i].shape));
            t[i].data = f.t[i].data;
        }
        int cnt = f.n;
        static char scratch[4096];
        if (edit) edit(t, &cnt, scratch);
        char *st_dst = fs_join(dir, "model.safetensors");
        st_write(st_dst, t, cnt, NULL, 0);
        free(st_dst);
        free(t);
        st_close(&f);
    }
    free(st_src);
    free(cfg_src);
    free(cfg_dst);
    free(src);
    return dir;
}

static int find_idx(StWriteTensor *t, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(t[i].name, name)) return i;
    return -1;
}

#define W0 "model.layers.0.mlp.up_proj.weight"

static void drop_absmax(StWriteTensor *t, int *n, char *s)
{
    int i = find_idx(t, *n, W0 ".absmax");
    if (i >= 0) t[i] = t[--*n];
}
static void short_absmax(StWriteTensor *t, int *n, char *s)
{
    int i = find_idx(t, *n, W0 ".absmax");
    if (i >= 0) t[i].shape[0]--;
}
static void short_packed(StWriteTensor *t, int *n, char *s)
{
    int i = find_idx(t, *n, W0);
    if (i >= 0) t[i].shape[0]--;
}
static void fp32_absmax(StWriteTensor *t, int *n, char *s)
{
    int i = find_idx(t, *n, W0 ".nested_absmax");
    if (i >= 0) t[i].dtype = ST_U8, t[i].shape[0] *= 4;
}
static void set_json(StWriteTensor *t, int *n, char *s, const char *json)
{
    int i = find_idx(t, *n, W0 ".quant_state.bitsandbytes__nf4");
    if (i < 0) return;
    strcpy(s, json);
    t[i].data = s;
    t[i].shape[0] = (int64_t)strlen(s);
}
static void bad_blocksize(StWriteTensor *t, int *n, char *s)
{
    set_json(t, n, s,
             "{\"quant_type\": \"nf4\", \"blocksize\": 48, \"dtype\": \"bfloat16\", \"shape\": [96, 64], "
             "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.1}");
}
static void bad_shape(StWriteTensor *t, int *n, char *s)
{
    set_json(t, n, s,
             "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [96, 65], "
             "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.1}");
}
static void bad_json(StWriteTensor *t, int *n, char *s)
{
    set_json(t, n, s, "{\"quant_type\": \"nf4\", \"blocksize\": 64,");
}
static void wrong_type(StWriteTensor *t, int *n, char *s)
{
    set_json(t, n, s,
             "{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [96, 64], "
             "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.1}");
}
static void orphan(StWriteTensor *t, int *n, char *s)
{
    int i = find_idx(t, *n, W0 ".quant_state.bitsandbytes__nf4");
    if (i >= 0) t[i] = t[--*n];
}
static void bad_quant_map(StWriteTensor *t, int *n, char *s)
{
    int i = find_idx(t, *n, W0 ".quant_map");
    if (i < 0) return;
    memcpy(s, q4_code(Q4_FP4), 64); /* the other code */
    t[i].data = s;
}

static void expect_bad(const char *name, EditFn edit, const char *from, const char *to, const char *needle1,
                       const char *needle2)
{
    char *dir = broken_copy(name, edit, from, to);
    BnbDir d;
    int rc = bnb_open(&d, dir);
    const char *e = err_get();
    CHECKF(rc != 0 && strstr(e, needle1) && (!needle2 || strstr(e, needle2)) && !strchr(e, '\n'),
           "%s: rc %d, \"%s\"", name, rc, e);
    if (rc == 0) bnb_close(&d);
    free(dir);
}

static void test_bad_directories(void)
{
    if (!fs_exists(fix("llama_nf4"))) return;
    expect_bad("no_absmax", drop_absmax, NULL, NULL, W0 ".absmax: missing", "model.safetensors");
    expect_bad("short_absmax", short_absmax, NULL, NULL, W0 ".absmax: 95 values, expected 96",
               "model.safetensors");
    expect_bad("short_packed", short_packed, NULL, NULL, W0 ": 3071 bytes", "model.safetensors");
    expect_bad("u8_nested", fp32_absmax, NULL, NULL, W0 ".nested_absmax: dtype U8, expected F32", NULL);
    expect_bad("blocksize", bad_blocksize, NULL, NULL, "bitsandbytes__nf4: blocksize", NULL);
    expect_bad("shape", bad_shape, NULL, NULL, W0 ": 3072 bytes of packed 4-bit data, but shape has 6240",
               NULL);
    expect_bad("json", bad_json, NULL, NULL, "bitsandbytes__nf4: invalid JSON", "model.safetensors");
    expect_bad("type", wrong_type, NULL, NULL, "bitsandbytes__nf4: quant_type: expected \"nf4\"", NULL);
    expect_bad("orphan", orphan, NULL, NULL, "absmax: no " W0 ".quant_state.bitsandbytes__nf4", NULL);
    expect_bad("quant_map", bad_quant_map, NULL, NULL, W0 ".quant_map: entry 0", NULL);
    expect_bad("int8", NULL, "\"load_in_8bit\": false", "\"load_in_8bit\": true",
               "config.json: quantization_config", "8-bit");
    expect_bad("method", NULL, "\"bitsandbytes\"", "\"gptq\"",
               "config.json: quantization_config.quant_method", NULL);
    expect_bad("qtype", NULL, "\"bnb_4bit_quant_type\": \"nf4\"", "\"bnb_4bit_quant_type\": \"int4\"",
               "bnb_4bit_quant_type: \"int4\"", NULL);
}

#ifdef ANVIL_CUDA
static void *to_device(const void *p, size_t n)
{
    void *d = NULL;
    if (!p) return NULL;
    if (cudaMalloc(&d, n ? n : 1) != cudaSuccess ||
        cudaMemcpy(d, p, n, cudaMemcpyHostToDevice) != cudaSuccess)
        return NULL;
    return d;
}

/* The GPU dequantization (cuda_quant4.cu) equals the CPU reference bit for bit,
 * for the weights of both transformers-saved directories (nested and not), a
 * row range at a time. Needs a GPU; skipped elsewhere. */
static void test_cuda_dequantize(void)
{
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        fprintf(stderr, "skip: no CUDA device; cuda_q4_dequantize_rows not run\n");
        return;
    }
    const char *dirs[] = {"llama_nf4", "gpt2_fp4"};
    for (size_t k = 0; k < ARRAY_LEN(dirs); k++) {
        BnbDir d;
        if (bnb_open(&d, fix(dirs[k])) != 0) {
            CHECKF(0, "%s", err_get());
            continue;
        }
        for (int i = 0; i < d.n; i++) {
            const BnbTensor *w = &d.t[i];
            int64_t n = w->q.n, nb = q4_nblocks(n, w->q.blocksize), rows = w->shape[0], cols = w->shape[1];
            Q4State g = w->q;
            g.packed = to_device(w->q.packed, q4_packed_bytes(n));
            g.absmax = to_device(w->q.absmax, w->q.absmax ? (size_t)nb * 4 : 0);
            g.qabsmax = to_device(w->q.qabsmax, w->q.qabsmax ? (size_t)nb : 0);
            g.nested_absmax = to_device(w->q.nested_absmax,
                                        w->q.qabsmax ? (size_t)q4_nblocks(nb, w->q.nested_blocksize) * 4 : 0);
            g.map8 = to_device(w->q.map8, w->q.qabsmax ? Q4_MAP8_SIZE * 4 : 0);
            int64_t r0 = rows / 3, r1 = rows; /* a range that starts inside the weight */
            size_t m = (size_t)((r1 - r0) * cols);
            float *want = xmalloc(m * 4), *got = xmalloc(m * 4), *dev32 = NULL;
            uint16_t *want16 = xmalloc(m * 2), *got16 = xmalloc(m * 2), *dev16 = NULL;
            cudaMalloc((void **)&dev32, m * 4);
            cudaMalloc((void **)&dev16, m * 2);
            cuda_q4_dequantize_rows(&g, cols, r0, r1, dev32, NULL);
            cuda_q4_dequantize_rows_bf16(&g, cols, r0, r1, dev16, NULL);
            cudaMemcpy(got, dev32, m * 4, cudaMemcpyDeviceToHost);
            cudaMemcpy(got16, dev16, m * 2, cudaMemcpyDeviceToHost);
            q4_dequantize_rows(&w->q, cols, r0, r1, want);
            q4_dequantize_rows_bf16(&w->q, cols, r0, r1, want16);
            CHECKF(!memcmp(want, got, m * 4) && !memcmp(want16, got16, m * 2),
                   "%s: GPU dequantization differs", w->name);
            cudaFree((void *)g.packed);
            cudaFree((void *)g.absmax);
            cudaFree((void *)g.qabsmax);
            cudaFree((void *)g.nested_absmax);
            cudaFree((void *)g.map8);
            cudaFree(dev32);
            cudaFree(dev16);
            free(want);
            free(got);
            free(want16);
            free(got16);
        }
        bnb_close(&d);
    }
}
#endif

/* q4_gather (tensor parallel's slices of 4-bit weights): the rectangles dequantize to exactly the
 * whole tensor's values there, nested or not, for slices on the block grid (blocks kept), inside
 * blocks (smaller blocks) and ending at a partial last block; a slice splitting a byte is refused. */
static void test_gather(void)
{
    enum { ROWS = 7, COLS = 96 }; /* 672 values: 10.5 blocks of 64, the last one partial */
    float *x = xmalloc(ROWS * COLS * sizeof(float)), *whole = xmalloc(ROWS * COLS * sizeof(float)),
          *got = xmalloc(ROWS * COLS * sizeof(float));
    Rng r;
    rng_seed(&r, 41, 0);
    for (int i = 0; i < ROWS * COLS; i++) x[i] = (float)rng_normal(&r) * (i % 97 == 0 ? 8.0f : 1.0f);
    struct {
        Q4Rect q[3];
        int n, bs; /* rectangles; the block size the gather must keep */
    } cases[] = {
        {{{0, 2, 0, COLS}}, 1, 64},                                        /* rows 0-1: 192 values, 3 blocks */
        {{{4, 3, 0, COLS}}, 1, 64},                                        /* rows 4-6: from 384 to the partial last block */
        {{{0, ROWS, 32, 32}}, 1, 32},                                      /* a column slice inside blocks */
        {{{0, ROWS, 48, 48}}, 1, 16},                                      /* columns 48-95 */
        {{{0, 1, 0, COLS}, {2, 2, 0, COLS}, {6, 1, 0, COLS}}, 3, 32},    /* gpt2's q, k, v rows */
    };
    for (int nested = 0; nested < 2; nested++) {
        Q4Quant q;
        CHECK(q4_quantize(x, ROWS * COLS, Q4_NF4, 64, nested, &q) == 0);
        q4_dequantize(&q.s, whole);
        for (size_t c = 0; c < ARRAY_LEN(cases); c++) {
            Q4Quant g;
            CHECKF(q4_gather(&q.s, COLS, cases[c].q, cases[c].n, &g) == 0, "case %zu: %s", c, err_get());
            CHECKF(g.s.blocksize == cases[c].bs && !g.s.qabsmax && g.s.absmax, "case %zu: blocks of %d", c,
                   g.s.blocksize);
            q4_dequantize(&g.s, got);
            int64_t k = 0, bad = 0;
            for (int j = 0; j < cases[c].n; j++) {
                const Q4Rect *t = &cases[c].q[j];
                for (int64_t i = t->r0; i < t->r0 + t->nr; i++)
                    for (int64_t e = t->c0; e < t->c0 + t->nc; e++, k++)
                        bad += memcmp(&got[k], &whole[i * COLS + e], sizeof(float)) != 0;
            }
            CHECKF(k == g.s.n && bad == 0, "case %zu (nested %d): %lld of %lld values differ", c, nested,
                   (long long)bad, (long long)k);
            q4_quant_free(&g);
        }
        Q4Rect odd = {0, ROWS, 3, 30}; /* starts inside a byte */
        Q4Quant g;
        CHECK(q4_gather(&q.s, COLS, &odd, 1, &g) == -1 && strstr(err_get(), "pair of 4-bit values"));
        q4_quant_free(&q);
    }
    free(x), free(whole), free(got);
}

int main(void)
{
    snprintf(tmp_root, sizeof(tmp_root), "/tmp/anvil_test_quant4.%d", (int)getpid());
    fs_mkdir_p(tmp_root);
    have_qfile = cur_ok = st_open(&qfile, fix("quant.safetensors")) == 0;
    if (!have_qfile) fprintf(stderr, "skip: %s: %s\n", fix("quant.safetensors"), err_get());
    RUN(test_code_tables);
    RUN(test_quantize_bytes);
    RUN(test_dequantize);
    RUN(test_double_quant);
    RUN(test_quant_state_json);
    RUN(test_python_float_repr);
    RUN(test_bnb_read);
    RUN(test_quantize_like_transformers);
    RUN(test_write_read_round_trip);
    RUN(test_bad_directories);
    RUN(test_gather);
#ifdef ANVIL_CUDA
    RUN(test_cuda_dequantize);
#endif
    /* the CUDA kernels' bytes, from `make_bnb_fixtures.py --gpu-dir` on a GPU machine */
    if (fs_exists(fix("quant_cuda.safetensors"))) {
        cur = &cfile;
        cur_cuda = 1;
        cur_ok = st_open(&cfile, fix("quant_cuda.safetensors")) == 0;
        CHECKF(cur_ok, "%s", err_get());
        memset(why_count, 0, sizeof(why_count));
        RUN(test_code_tables);
        RUN(test_quantize_bytes);
        RUN(test_dequantize);
        RUN(test_double_quant);
        if (cur_ok) st_close(&cfile);
        cur = &qfile;
        cur_cuda = 0;
    } else {
        fprintf(stderr, "skip: %s not found (made on a GPU machine: tools/make_bnb_fixtures.py --gpu-dir)\n",
                fix("quant_cuda.safetensors"));
    }
    if (fs_exists(fix("llama_nf4_cuda"))) {
        cur_cuda = 1;
        RUN(test_quantize_like_transformers_cuda);
        cur_cuda = 0;
    }
    fs_rm_rf(tmp_root);
    if (have_qfile) st_close(&qfile);
    return test_summary();
}
