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

#include "core/error.h"
#include "io/safetensors.h"
#include "model/quant4.h"
#include "test.h"

#define BLOCKSIZE 64

static char fixture_path[512];
static const char *fix(const char *rel)
{
    snprintf(fixture_path, sizeof(fixture_path), "%s/bnb/%s", test_fixtures(), rel);
    return fixture_path;
}

static StFile qfile;
static int have_qfile;

static const StTensor *qget(const char *fmt, const char *a, const char *b)
{
    char name[128];
    snprintf(name, sizeof(name), fmt, a, b);
    const StTensor *t = st_find(&qfile, name);
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

enum { WHY_ZERO_BLOCK, WHY_DIVISION, WHY_FP4_ZERO_SIGN, WHY_THRESHOLD, WHY_N };
static const char *why_name[WHY_N] = {"all-zero or subnormal block", "partial block division",
                                      "fp4 signed zero", "threshold literal vs fp32 midpoint"};
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

/* Classify a difference at element e (ours vs bitsandbytes' CPU path); -1: unexplained. */
static int explain4(Q4Type t, const float *x, int64_t n, int64_t e, float amax, uint8_t ours, uint8_t theirs)
{
    int64_t b = e / BLOCKSIZE;
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
    if (ours != 0.0f) return 0;
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
    if (!have_qfile) return;
    const StTensor *nf = qget("quant_map.%s%s", "nf4", ""), *fp = qget("quant_map.%s%s", "fp4", "");
    const StTensor *m8 = qget("nested_quant_map%s%s", "", "");
    CHECK(nf && nf->numel == 16 && !memcmp(nf->data, q4_code(Q4_NF4), 64));
    CHECK(fp && fp->numel == 16 && !memcmp(fp->data, q4_code(Q4_FP4), 64));
    CHECK(m8 && m8->numel == Q4_MAP8_SIZE && !memcmp(m8->data, q4_map8(), Q4_MAP8_SIZE * 4));
}

/* The packed nibbles and absmax of every case and type against bitsandbytes'. */
static void test_quantize_bytes(void)
{
    if (!have_qfile) return;
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
            if (t == Q4_NF4 && strncmp(cases[c], "special", 7))
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
    if (!have_qfile) return;
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
    if (!have_qfile) return;
    const float *map = q4_map8();
    long ties = 0, lut = 0, offset_ulps = 0;
    for (size_t c = 0; c < ARRAY_LEN(cases); c++) {
        const StTensor *ta = qget("%s.nf4.absmax%s", cases[c], "");
        const StTensor *tq = qget("%s.dq.qabsmax%s", cases[c], ""),
                       *tqd = qget("%s.dq.qabsmax_default%s", cases[c], "");
        const StTensor *tn = qget("%s.dq.nested_absmax%s", cases[c], "");
        const StTensor *tnd = qget("%s.dq.nested_absmax_default%s", cases[c], "");
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
    fprintf(stderr,
            "  double quant: %ld offsets an ulp off torch's sum; %ld ties (torch backend), %ld codes of "
            "the CPU kernel's 65536-point table\n",
            offset_ulps, ties, lut);
}

int main(void)
{
    have_qfile = st_open(&qfile, fix("quant.safetensors")) == 0;
    if (!have_qfile) fprintf(stderr, "skip: %s: %s\n", fix("quant.safetensors"), err_get());
    RUN(test_code_tables);
    RUN(test_quantize_bytes);
    RUN(test_dequantize);
    RUN(test_double_quant);
    if (have_qfile) st_close(&qfile);
    return test_summary();
}
