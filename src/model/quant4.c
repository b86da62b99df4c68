/* quant4.c - bitsandbytes 4-bit blockwise quantization, CPU reference (see quant4.h).
 *
 * The facts below (code tables, thresholds, nibble order, the dynamic map's
 * construction) were read from bitsandbytes 0.50.2: functional.py
 * (get_4bit_type, create_dynamic_map, quantize_4bit) and csrc/kernels.cu
 * (dQuantizeNF4, dQuantizeFP4, dQuantize, kQuantizeBlockwise). The code is ours. */
#include "model/quant4.h"

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "io/safetensors.h"

/* ---- the 4-bit codes ---- */

/* NF4: quantiles of N(0, 1) (QLoRA), as bitsandbytes lists them, by nibble. */
static const float nf4_code[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

/* The CUDA kernel's NF4 thresholds, the midpoints of neighbouring codes as
 * float literals. A scaled value x gets the code whose index is the number of
 * thresholds below x (x > t), so a value on a threshold takes the lower code
 * and NaN gets 0. Four midpoints (-0.848, 0.120, 0.502, 0.861) fall exactly
 * between two floats: the kernel's 16-digit literal lands on one neighbour,
 * the fp32 midpoint that bitsandbytes' torch backend computes on the other
 * (round to even), so the two bitsandbytes paths code a value between them
 * differently; anvil follows the kernel. */
static const float nf4_threshold[15] = {
    -0.8480964004993439f,  -0.6106329262256622f,  -0.4599952697753906f,   -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f,   0.2035212516784668f,   0.2920137718319893f,    0.3893125355243683f,
    0.5016634166240692f,   0.6427869200706482f,   0.8614784181118011f,
};

/* FP4 (1 sign, 2 exponent, 1 mantissa bit, bias 2): the magnitude of nibble
 * bits 0..2 before normalization; bit 3 is the sign. bitsandbytes divides by
 * the largest (12) in fp32. */
#define FP4_MAX 12.0f
static const float fp4_magnitude[8] = {0.0f, 0.0625f, 8.0f, 12.0f, 4.0f, 6.0f, 2.0f, 3.0f};
#define FP4_SIGN 0x8

/* The CUDA kernel's FP4 thresholds on |x| as it writes them (some differ by
 * an ulp or more from the fp32 midpoints: 0.583333f is 3e-7 below 7/12), in
 * increasing order, and the 3-bit pattern of each magnitude rank. */
static const float fp4_threshold[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                       0.4166667f,  0.583333f,  0.8333333f};
static const uint8_t fp4_rank_bits[8] = {0x0, 0x1, 0x6, 0x7, 0x4, 0x5, 0x2, 0x3};

static float fp4_code[16];
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

/* create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), the map
 * quantize_4bit(compress_statistics=True) quantizes the absmax with, as
 * bitsandbytes 0.50.2 builds it on an x86-64 AVX-512 CPU. (It is made of
 * torch.linspace(0.1, 1) points, whose last bits depend on torch's vector
 * width, so another machine may build a map that differs by an ulp in a few
 * entries. Every file carries its map in nested_quant_map and readers use
 * that one; this table is what anvil writes.) Checked entry by entry against
 * the fixture in tests/test_quant4.c. */
static const float map8[Q4_MAP8_SIZE] = {
    -0x1.fc6666p-1f,  -0x1.f53334p-1f,  -0x1.eep-1f,      -0x1.e6ccccp-1f,
    -0x1.df999ap-1f,  -0x1.d86666p-1f,  -0x1.d13334p-1f,  -0x1.cap-1f,
    -0x1.c2ccccp-1f,  -0x1.bb999ap-1f,  -0x1.b46666p-1f,  -0x1.ad3334p-1f,
    -0x1.a6p-1f,      -0x1.9eccccp-1f,  -0x1.97999ap-1f,  -0x1.906666p-1f,
    -0x1.893334p-1f,  -0x1.82p-1f,      -0x1.7accccp-1f,  -0x1.73999ap-1f,
    -0x1.6c6668p-1f,  -0x1.653334p-1f,  -0x1.5ep-1f,      -0x1.56ccccp-1f,
    -0x1.4f999ap-1f,  -0x1.486668p-1f,  -0x1.413334p-1f,  -0x1.3ap-1f,
    -0x1.32ccccp-1f,  -0x1.2b999ap-1f,  -0x1.246668p-1f,  -0x1.1d3334p-1f,
    -0x1.16p-1f,      -0x1.0eccccp-1f,  -0x1.079998p-1f,  -0x1.006666p-1f,
    -0x1.f26664p-2f,  -0x1.e4p-2f,      -0x1.d59998p-2f,  -0x1.c73334p-2f,
    -0x1.b8ccccp-2f,  -0x1.aa6666p-2f,  -0x1.9cp-2f,      -0x1.8d9998p-2f,
    -0x1.7f3334p-2f,  -0x1.70ccccp-2f,  -0x1.626666p-2f,  -0x1.54p-2f,
    -0x1.459998p-2f,  -0x1.373334p-2f,  -0x1.28ccccp-2f,  -0x1.1a6668p-2f,
    -0x1.0cp-2f,      -0x1.fb3332p-3f,  -0x1.de6666p-3f,  -0x1.c1999ap-3f,
    -0x1.a4ccccp-3f,  -0x1.88p-3f,      -0x1.6b3334p-3f,  -0x1.4e6666p-3f,
    -0x1.31999ap-3f,  -0x1.14ccccp-3f,  -0x1.fp-4f,       -0x1.b66668p-4f,
    -0x1.93d70ap-4f,  -0x1.8851eep-4f,  -0x1.7ccccep-4f,  -0x1.7147aep-4f,
    -0x1.65c29p-4f,   -0x1.5a3d7p-4f,   -0x1.4eb854p-4f,  -0x1.433334p-4f,
    -0x1.37ae14p-4f,  -0x1.2c28f6p-4f,  -0x1.20a3d6p-4f,  -0x1.151ebap-4f,
    -0x1.09999ap-4f,  -0x1.fc28f6p-5f,  -0x1.e51ebap-5f,  -0x1.ce147ap-5f,
    -0x1.b70a3ep-5f,  -0x1.ap-5f,       -0x1.88f5c2p-5f,  -0x1.71eb86p-5f,
    -0x1.5ae146p-5f,  -0x1.43d70ap-5f,  -0x1.2ccccep-5f,  -0x1.15c29p-5f,
    -0x1.fd70a4p-6f,  -0x1.cf5c2ap-6f,  -0x1.a147aep-6f,  -0x1.733334p-6f,
    -0x1.451ebap-6f,  -0x1.170a3ep-6f,  -0x1.d1eb86p-7f,  -0x1.75c29p-7f,
    -0x1.3e76c8p-7f,  -0x1.2c083p-7f,   -0x1.19999ap-7f,  -0x1.072b02p-7f,
    -0x1.e978d4p-8f,  -0x1.c49ba6p-8f,  -0x1.9fbe76p-8f,  -0x1.7ae148p-8f,
    -0x1.56041ap-8f,  -0x1.3126e8p-8f,  -0x1.0c49bap-8f,  -0x1.ced914p-9f,
    -0x1.851eb8p-9f,  -0x1.3b645ap-9f,  -0x1.e353f8p-10f, -0x1.4fdf3ap-10f,
    -0x1.eecbfep-11f, -0x1.b3d07cp-11f, -0x1.78d5p-11f,   -0x1.3dd982p-11f,
    -0x1.02de02p-11f, -0x1.8fc506p-12f, -0x1.19ce0ap-12f, -0x1.47ae16p-13f,
    -0x1.743e96p-14f, -0x1.15df66p-14f, -0x1.6f0068p-15f, -0x1.64840cp-16f,
    -0x1.040bfep-17f, -0x1.b43528p-19f, -0x1.27476ep-21f, 0.0f,
    0x1.27476ep-21f,  0x1.b43528p-19f,  0x1.040bfep-17f,  0x1.64840cp-16f,
    0x1.6f0068p-15f,  0x1.15df66p-14f,  0x1.743e96p-14f,  0x1.47ae16p-13f,
    0x1.19ce0ap-12f,  0x1.8fc506p-12f,  0x1.02de02p-11f,  0x1.3dd982p-11f,
    0x1.78d5p-11f,    0x1.b3d07cp-11f,  0x1.eecbfep-11f,  0x1.4fdf3ap-10f,
    0x1.e353f8p-10f,  0x1.3b645ap-9f,   0x1.851eb8p-9f,   0x1.ced914p-9f,
    0x1.0c49bap-8f,   0x1.3126e8p-8f,   0x1.56041ap-8f,   0x1.7ae148p-8f,
    0x1.9fbe76p-8f,   0x1.c49ba6p-8f,   0x1.e978d4p-8f,   0x1.072b02p-7f,
    0x1.19999ap-7f,   0x1.2c083p-7f,    0x1.3e76c8p-7f,   0x1.75c29p-7f,
    0x1.d1eb86p-7f,   0x1.170a3ep-6f,   0x1.451ebap-6f,   0x1.733334p-6f,
    0x1.a147aep-6f,   0x1.cf5c2ap-6f,   0x1.fd70a4p-6f,   0x1.15c29p-5f,
    0x1.2ccccep-5f,   0x1.43d70ap-5f,   0x1.5ae146p-5f,   0x1.71eb86p-5f,
    0x1.88f5c2p-5f,   0x1.ap-5f,        0x1.b70a3ep-5f,   0x1.ce147ap-5f,
    0x1.e51ebap-5f,   0x1.fc28f6p-5f,   0x1.09999ap-4f,   0x1.151ebap-4f,
    0x1.20a3d6p-4f,   0x1.2c28f6p-4f,   0x1.37ae14p-4f,   0x1.433334p-4f,
    0x1.4eb854p-4f,   0x1.5a3d7p-4f,    0x1.65c29p-4f,    0x1.7147aep-4f,
    0x1.7ccccep-4f,   0x1.8851eep-4f,   0x1.93d70ap-4f,   0x1.b66668p-4f,
    0x1.fp-4f,        0x1.14ccccp-3f,   0x1.31999ap-3f,   0x1.4e6666p-3f,
    0x1.6b3334p-3f,   0x1.88p-3f,       0x1.a4ccccp-3f,   0x1.c1999ap-3f,
    0x1.de6666p-3f,   0x1.fb3332p-3f,   0x1.0cp-2f,       0x1.1a6668p-2f,
    0x1.28ccccp-2f,   0x1.373334p-2f,   0x1.459998p-2f,   0x1.54p-2f,
    0x1.626666p-2f,   0x1.70ccccp-2f,   0x1.7f3334p-2f,   0x1.8d9998p-2f,
    0x1.9cp-2f,       0x1.aa6666p-2f,   0x1.b8ccccp-2f,   0x1.c73334p-2f,
    0x1.d59998p-2f,   0x1.e4p-2f,       0x1.f26664p-2f,   0x1.006666p-1f,
    0x1.079998p-1f,   0x1.0eccccp-1f,   0x1.16p-1f,       0x1.1d3334p-1f,
    0x1.246668p-1f,   0x1.2b999ap-1f,   0x1.32ccccp-1f,   0x1.3ap-1f,
    0x1.413334p-1f,   0x1.486668p-1f,   0x1.4f999ap-1f,   0x1.56ccccp-1f,
    0x1.5ep-1f,       0x1.653334p-1f,   0x1.6c6668p-1f,   0x1.73999ap-1f,
    0x1.7accccp-1f,   0x1.82p-1f,       0x1.893334p-1f,   0x1.906666p-1f,
    0x1.97999ap-1f,   0x1.9eccccp-1f,   0x1.a6p-1f,       0x1.ad3334p-1f,
    0x1.b46666p-1f,   0x1.bb999ap-1f,   0x1.c2ccccp-1f,   0x1.cap-1f,
    0x1.d13334p-1f,   0x1.d86666p-1f,   0x1.df999ap-1f,   0x1.e6ccccp-1f,
    0x1.eep-1f,       0x1.f53334p-1f,   0x1.fc6666p-1f,   0x1p+0f,
};

static void tables_init(void)
{
    for (int i = 0; i < 16; i++) {
        float v = fp4_magnitude[i & 7] / FP4_MAX;
        /* bitsandbytes lists code 8 as the Python int -0, i.e. +0.0 */
        fp4_code[i] = (i & FP4_SIGN) && v != 0.0f ? -v : v;
    }
}

const float *q4_code(Q4Type t)
{
    pthread_once(&tables_once, tables_init);
    return t == Q4_NF4 ? nf4_code : fp4_code;
}

const float *q4_map8(void)
{
    return map8;
}

int q4_type_parse(const char *name)
{
    if (!strcmp(name, "nf4")) return Q4_NF4;
    if (!strcmp(name, "fp4")) return Q4_FP4;
    return -1;
}

const char *q4_type_name(Q4Type t)
{
    return t == Q4_NF4 ? "nf4" : "fp4";
}

/* quantize_4bit: 32 ... 4096, powers of two; quantize_blockwise: 64 ... 4096. */
#define Q4_MIN_BLOCKSIZE 32
#define Q8_MIN_BLOCKSIZE 64
#define Q_MAX_BLOCKSIZE 4096

static int pow2_in(int64_t bs, int64_t lo, int64_t hi)
{
    return bs >= lo && bs <= hi && (bs & (bs - 1)) == 0;
}

int q4_blocksize_valid(int64_t bs)
{
    return pow2_in(bs, Q4_MIN_BLOCKSIZE, Q_MAX_BLOCKSIZE);
}

int q4_nested_blocksize_valid(int64_t bs)
{
    return pow2_in(bs, Q8_MIN_BLOCKSIZE, Q_MAX_BLOCKSIZE);
}

/* ---- encoding one value ---- */

uint8_t q4_encode(Q4Type t, float x)
{
    uint8_t c = 0;
    if (t == Q4_NF4) {
        for (int k = 0; k < 15; k++) c += x > nf4_threshold[k];
        return c;
    }
    uint8_t sign = x < 0 ? FP4_SIGN : 0;
    float a = fabsf(x);
    for (int k = 0; k < 7; k++) c += a > fp4_threshold[k];
    return sign | fp4_rank_bits[c];
}

/* The kernel's binary search ends on an even index p with code[p-1] < x <=
 * code[p+1] and picks by comparison with the fp32 midpoint: nearest code,
 * a value exactly on a midpoint keeps p (the even index); NaN ends at 0. */
uint8_t q4_encode_map8(float x)
{
    const float *m = q4_map8();
    if (isnan(x)) return 0;
    int lo = 0, hi = Q4_MAP8_SIZE; /* first j with m[j] >= x */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (m[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0) return 0;
    if (lo == Q4_MAP8_SIZE) return Q4_MAP8_SIZE - 1;
    float mid = (m[lo - 1] + m[lo]) * 0.5f;
    if (x > mid) return (uint8_t)lo;
    if (x < mid) return (uint8_t)(lo - 1);
    return (uint8_t)(lo % 2 == 0 ? lo : lo - 1);
}

/* ---- quantizing ---- */

/* bitsandbytes builds its CUDA kernels with --use_fast_math, which flushes
 * subnormal fp32 inputs and results to (signed) zero; anvil does the same so
 * that a block of subnormals (absmax < FLT_MIN) is an all-zero block there too. */
static inline float flush_subnormal(float x)
{
    return fabsf(x) < FLT_MIN ? copysignf(0.0f, x) : x;
}

static float block_max_abs(const float *x, int64_t len)
{
    float m = 0.0f;
    for (int64_t i = 0; i < len; i++) m = fmaxf(m, fabsf(flush_subnormal(x[i])));
    return m;
}

/* The scaled value the kernel codes: x * (1 / absmax), flushed. */
static inline float scale_value(float x, float r)
{
    return flush_subnormal(flush_subnormal(x) * r);
}

void q4_quantize_blocks(const float *x, int64_t n, Q4Type t, int blocksize, uint8_t *packed, float *absmax)
{
    int64_t nb = q4_nblocks(n, blocksize);
    /* blocksize is even, so a byte never straddles two blocks */
#pragma omp parallel for schedule(static) if (nb > 64)
    for (int64_t b = 0; b < nb; b++) {
        int64_t e0 = b * blocksize, len = MIN((int64_t)blocksize, n - e0);
        float amax = block_max_abs(x + e0, len);
        float r = 1.0f / amax; /* inf for an all-zero block: 0 * inf = NaN -> code 0 */
        absmax[b] = amax;
        for (int64_t i = 0; i < len; i += 2) {
            /* the kernel loads a missing last value as 0 and scales it too */
            float x1 = i + 1 < len ? x[e0 + i + 1] : 0.0f;
            packed[(e0 + i) / 2] =
                (uint8_t)(q4_encode(t, scale_value(x[e0 + i], r)) << 4 | q4_encode(t, scale_value(x1, r)));
        }
    }
}

float q4_absmax_mean(const float *absmax, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += absmax[i];
    return n > 0 ? (float)(s / (double)n) : 0.0f;
}

void q4_quantize_map8(const float *v, int64_t n, int blocksize, uint8_t *q, float *absmax)
{
    int64_t nb = q4_nblocks(n, blocksize);
    for (int64_t b = 0; b < nb; b++) {
        int64_t e0 = b * blocksize, len = MIN((int64_t)blocksize, n - e0);
        float amax = block_max_abs(v + e0, len);
        float r = 1.0f / amax;
        absmax[b] = amax;
        for (int64_t i = 0; i < len; i++) q[e0 + i] = q4_encode_map8(scale_value(v[e0 + i], r));
    }
}

int q4_quantize(const float *x, int64_t n, Q4Type t, int blocksize, int nested, Q4Quant *out)
{
    memset(out, 0, sizeof(*out));
    if (t != Q4_NF4 && t != Q4_FP4) return err_set("quantize: unknown 4-bit type %d", (int)t);
    if (!q4_blocksize_valid(blocksize))
        return err_set("quantize: block size %d (bitsandbytes takes 32, 64, 128, ..., 4096)", blocksize);
    if (n <= 0) return err_set("quantize: empty tensor");
    int64_t nb = q4_nblocks(n, blocksize);
    out->packed = xmalloc(q4_packed_bytes(n));
    out->absmax = xmalloc((size_t)nb * sizeof(float));
    q4_quantize_blocks(x, n, t, blocksize, out->packed, out->absmax);
    Q4State *s = &out->s;
    s->type = t;
    s->blocksize = blocksize;
    s->n = n;
    s->packed = out->packed;
    if (!nested) {
        s->absmax = out->absmax;
        return 0;
    }
    /* quantize_4bit(compress_statistics=True): offset = absmax.mean(), then
     * quantize_blockwise(absmax - offset, blocksize=256) with the dynamic map */
    float offset = q4_absmax_mean(out->absmax, nb);
    float *v = xmalloc((size_t)nb * sizeof(float));
    for (int64_t b = 0; b < nb; b++) v[b] = out->absmax[b] - offset;
    out->qabsmax = xmalloc((size_t)nb);
    out->nested_absmax = xmalloc((size_t)q4_nblocks(nb, Q4_NESTED_BLOCKSIZE) * sizeof(float));
    q4_quantize_map8(v, nb, Q4_NESTED_BLOCKSIZE, out->qabsmax, out->nested_absmax);
    free(v);
    s->qabsmax = out->qabsmax;
    s->nested_absmax = out->nested_absmax;
    s->map8 = q4_map8();
    s->nested_blocksize = Q4_NESTED_BLOCKSIZE;
    s->nested_offset = offset;
    return 0;
}

void q4_quant_free(Q4Quant *q)
{
    if (!q) return;
    free(q->packed);
    free(q->absmax);
    free(q->qabsmax);
    free(q->nested_absmax);
    memset(q, 0, sizeof(*q));
}

/* ---- dequantizing ---- */

/* a * b + c rounded twice, as bitsandbytes computes the nested absmax (a
 * dequantize_blockwise, then `absmax += offset`): never a fused multiply-add,
 * whatever -march the file is built with. */
static float mul_then_add(float a, float b, float c)
{
    volatile float p = a * b;
    return p + c;
}

float q4_block_absmax(const Q4State *s, int64_t b)
{
    if (s->absmax) return s->absmax[b];
    return mul_then_add(s->map8[s->qabsmax[b]], s->nested_absmax[b / s->nested_blocksize], s->nested_offset);
}

static inline uint8_t nibble(const uint8_t *packed, int64_t e)
{
    uint8_t byte = packed[e >> 1];
    return (e & 1) ? byte & 0xF : byte >> 4;
}

void q4_dequantize_range(const Q4State *s, int64_t e0, int64_t e1, float *out)
{
    const float *code = q4_code(s->type);
    int64_t bs = s->blocksize;
    for (int64_t e = e0; e < e1;) {
        int64_t b = e / bs, end = MIN(e1, (b + 1) * bs);
        float scale = q4_block_absmax(s, b);
        for (; e < end; e++) out[e - e0] = code[nibble(s->packed, e)] * scale;
    }
}

void q4_dequantize(const Q4State *s, float *out)
{
    q4_dequantize_range(s, 0, s->n, out);
}

/* bf16 through an fp32 buffer of this many values at a time. */
#define BF16_CHUNK 4096

static void range_bf16(const Q4State *s, int64_t e0, int64_t e1, uint16_t *out)
{
    float buf[BF16_CHUNK];
    for (int64_t e = e0; e < e1; e += BF16_CHUNK) {
        int64_t m = MIN((int64_t)BF16_CHUNK, e1 - e);
        q4_dequantize_range(s, e, e + m, buf);
        for (int64_t i = 0; i < m; i++) out[e - e0 + i] = st_f32_to_bf16(buf[i]);
    }
}

void q4_dequantize_bf16(const Q4State *s, uint16_t *out)
{
    range_bf16(s, 0, s->n, out);
}

void q4_dequantize_rows(const Q4State *s, int64_t cols, int64_t r0, int64_t r1, float *out)
{
    q4_dequantize_range(s, r0 * cols, r1 * cols, out);
}

void q4_dequantize_rows_bf16(const Q4State *s, int64_t cols, int64_t r0, int64_t r1, uint16_t *out)
{
    range_bf16(s, r0 * cols, r1 * cols, out);
}

int q4_state_check(const Q4State *s)
{
    if (s->type != Q4_NF4 && s->type != Q4_FP4) return err_set("quant_type: unknown");
    if (!q4_blocksize_valid(s->blocksize))
        return err_set("blocksize: %d is not one of 32, 64, ..., 4096", s->blocksize);
    if (s->n <= 0) return err_set("shape: no values");
    if (!s->packed) return err_set("no packed data");
    if (s->absmax) return 0;
    if (!s->qabsmax || !s->nested_absmax || !s->map8) return err_set("absmax: missing");
    if (!q4_nested_blocksize_valid(s->nested_blocksize))
        return err_set("nested_blocksize: %d is not one of 64, 128, ..., 4096", s->nested_blocksize);
    if (!isfinite(s->nested_offset)) return err_set("nested_offset: not a finite number");
    return 0;
}

/* ---- rectangles of a quantized tensor (tensor parallel's slices) ---- */

static int64_t gcd64(int64_t a, int64_t b)
{
    while (b) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* The runs of consecutive values the rectangles are made of, in order: run k starts at flat index
 * *start and holds *len values (a full-width rectangle is one run). f sees each run. */
static void q4_runs(int64_t cols, const Q4Rect *rects, int nrect, void (*f)(void *ctx, int64_t start, int64_t len),
                    void *ctx)
{
    for (int k = 0; k < nrect; k++) {
        const Q4Rect *q = &rects[k];
        if (q->c0 == 0 && q->nc == cols) {
            f(ctx, q->r0 * cols, q->nr * cols);
            continue;
        }
        for (int64_t i = 0; i < q->nr; i++) f(ctx, (q->r0 + i) * cols + q->c0, q->nc);
    }
}

typedef struct {
    const Q4State *s;
    int64_t g, n, runs, last_start, last_len; /* block size so far; values; runs; the last run */
    int64_t b;                                /* gather: the next local block */
    uint8_t *packed;
    float *absmax;
} Q4Gather;

static void gather_block_size(void *ctx, int64_t start, int64_t len)
{
    Q4Gather *g = ctx;
    if (g->runs) g->g = gcd64(g->g, g->last_len); /* only the last run may end in a partial block */
    g->g = gcd64(g->g, start);
    g->last_start = start;
    g->last_len = len;
    g->runs++;
    g->n += len;
}

static void gather_run(void *ctx, int64_t start, int64_t len)
{
    Q4Gather *g = ctx;
    memcpy(g->packed + g->n / 2, g->s->packed + start / 2, q4_packed_bytes(len));
    for (int64_t e = 0; e < len; e += g->g) g->absmax[g->b++] = q4_block_absmax(g->s, (start + e) / g->s->blocksize);
    g->n += len;
}

int q4_gather_blocksize(int64_t n, int64_t cols, int blocksize, const Q4Rect *rects, int nrect, int64_t *values)
{
    int64_t rows = cols > 0 ? n / cols : 0;
    if (cols <= 0 || rows * cols != n || nrect < 1)
        return err_set("4-bit slice: %lld values are not rows of %lld (internal error)", (long long)n, (long long)cols);
    for (int k = 0; k < nrect; k++) {
        const Q4Rect *q = &rects[k];
        if (q->r0 < 0 || q->nr < 1 || q->r0 + q->nr > rows || q->c0 < 0 || q->nc < 1 || q->c0 + q->nc > cols)
            return err_set("4-bit slice: rows [%lld, %lld) x columns [%lld, %lld) of a (%lld, %lld) tensor "
                           "(internal error)", (long long)q->r0, (long long)(q->r0 + q->nr), (long long)q->c0,
                           (long long)(q->c0 + q->nc), (long long)rows, (long long)cols);
    }
    Q4Gather g = {.g = blocksize};
    q4_runs(cols, rects, nrect, gather_block_size, &g);
    /* the last run: whole blocks, or up to the end of the tensor (whose last block may be partial) */
    if (g.last_start + g.last_len != n) g.g = gcd64(g.g, g.last_len);
    if (g.g % 2) return err_set("a slice starts or ends inside a pair of 4-bit values (the two of one byte)");
    if (values) *values = g.n;
    return (int)g.g;
}

int q4_gather(const Q4State *s, int64_t cols, const Q4Rect *rects, int nrect, Q4Quant *out)
{
    memset(out, 0, sizeof(*out));
    int64_t n;
    int bs = q4_gather_blocksize(s->n, cols, s->blocksize, rects, nrect, &n);
    if (bs < 0) return -1;
    Q4Gather g = {.s = s, .g = bs};
    int64_t nb = q4_nblocks(n, g.g);
    out->packed = xcalloc(q4_packed_bytes(n), 1);
    out->absmax = xmalloc((size_t)nb * sizeof(float));
    g.packed = out->packed;
    g.absmax = out->absmax;
    q4_runs(cols, rects, nrect, gather_run, &g);
    if (g.b != nb) fatal("q4_gather: %lld blocks, expected %lld (internal error)", (long long)g.b, (long long)nb);
    out->s = (Q4State){.type = s->type, .blocksize = (int)g.g, .n = n, .packed = out->packed, .absmax = out->absmax};
    return 0;
}
