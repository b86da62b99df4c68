/* quant4.h - bitsandbytes' 4-bit blockwise quantization (NF4, FP4) on the CPU:
 * the reference that anvil's packed frozen weights are made and read with
 * (docs/finetuning.md, "4-bit bases").
 *
 * Layout, exactly as bitsandbytes.functional.quantize_4bit:
 *   - the tensor is flattened (row-major) into n values and cut into blocks of
 *     `blocksize` (64 by default); the last block may be partial;
 *   - absmax[b] = max |x| over block b (fp32); each value is scaled by the
 *     fp32 reciprocal 1/absmax[b] and mapped to one of 16 codes;
 *   - value 2i goes in the high nibble of byte i, value 2i+1 in the low nibble
 *     ((n+1)/2 bytes; an odd n leaves the last low nibble as the code of 0);
 *   - double quantization ("compress_statistics"): offset = mean(absmax),
 *     absmax - offset is quantized blockwise (blocks of 256) to 8 bits with
 *     the signed dynamic map, keeping one fp32 absmax per 256 blocks.
 * Rounding is the CUDA kernels' (kQuantizeBlockwise): NF4 and FP4 codes by
 * comparison with fixed thresholds (a value equal to a threshold takes the
 * lower code), the 8-bit map by nearest code with ties to the even index;
 * all in IEEE fp32 (correctly rounded reciprocal, no flush-to-zero). An
 * all-zero block (absmax 0) scales to NaN there and so stores code 0.
 *
 * Dequantization: x = code[q] * absmax[b] in fp32 (nested: absmax[b] =
 * map[qabsmax[b]] * nested_absmax[b / 256] + offset, each step in fp32), the
 * bf16 variant rounds that to nearest even, as dequantize_4bit does.
 */
#ifndef ANVIL_MODEL_QUANT4_H
#define ANVIL_MODEL_QUANT4_H

#include <stddef.h>
#include <stdint.h>

typedef enum { Q4_NF4, Q4_FP4 } Q4Type;

/* quantize_4bit's default block size, and the block size of the absmax' own
 * (nested) quantization, which quantize_4bit fixes at 256. */
#define Q4_DEFAULT_BLOCKSIZE 64
#define Q4_NESTED_BLOCKSIZE 256
/* Entries of the 8-bit dynamic map (create_dynamic_map(signed=True, 7, 8)). */
#define Q4_MAP8_SIZE 256

/* "nf4" / "fp4", or -1 for any other name. */
int q4_type_parse(const char *name);
const char *q4_type_name(Q4Type t);
/* The block sizes quantize_4bit accepts: 32, 64, ..., 4096. */
int q4_blocksize_valid(int64_t bs);
/* The block sizes quantize_blockwise (the nested 8-bit step) accepts: 64 ... 4096. */
int q4_nested_blocksize_valid(int64_t bs);

/* The 16 values of a 4-bit code, indexed by the nibble (bitsandbytes'
 * get_4bit_type, normalized to [-1, 1]). */
const float *q4_code(Q4Type t);
/* The 256 sorted values of the signed 8-bit dynamic map. */
const float *q4_map8(void);

/* Everything needed to dequantize one tensor. The arrays are not owned: they
 * point into a Q4Quant, or into a mapped file plus copies held by its reader
 * (io/bnb.h). Exactly one of absmax / (qabsmax, nested_absmax, map8) is set. */
typedef struct {
    Q4Type type;
    int blocksize;
    int64_t n;                  /* values */
    const uint8_t *packed;      /* (n + 1) / 2 bytes */
    const float *absmax;        /* nblocks fp32 scales, or NULL when nested */
    const uint8_t *qabsmax;     /* nested: nblocks 8-bit codes of absmax - offset */
    const float *nested_absmax; /* nested: ceil(nblocks / nested_blocksize) */
    const float *map8;          /* nested: the 256-entry map the codes index */
    int nested_blocksize;
    float nested_offset;
} Q4State;

static inline int64_t q4_nblocks(int64_t n, int64_t bs)
{
    return (n + bs - 1) / bs;
}
static inline size_t q4_packed_bytes(int64_t n)
{
    return (size_t)((n + 1) / 2);
}

/* A quantized tensor that owns its arrays; q.s points into them. */
typedef struct {
    Q4State s;
    uint8_t *packed;
    float *absmax;        /* always kept (the fp32 scales before double quantization) */
    uint8_t *qabsmax;     /* nested only */
    float *nested_absmax; /* nested only */
} Q4Quant;

/* Quantize n fp32 values (for a bf16 weight: its exact fp32 values, which is
 * what bitsandbytes quantizes). blocksize must be q4_blocksize_valid; nested
 * selects double quantization. 0, or -1 with err_set on bad arguments. */
int q4_quantize(const float *x, int64_t n, Q4Type t, int blocksize, int nested, Q4Quant *out);
void q4_quant_free(Q4Quant *q);

/* The steps of q4_quantize, for tests and for callers that hold the pieces:
 * the 4-bit step (packed (n+1)/2 bytes, absmax nblocks floats), */
void q4_quantize_blocks(const float *x, int64_t n, Q4Type t, int blocksize, uint8_t *packed, float *absmax);
/* the offset (mean of the absmax, correctly rounded to fp32), */
float q4_absmax_mean(const float *absmax, int64_t nblocks);
/* and the 8-bit blockwise step over v = absmax - offset: codes (n bytes) and
 * one fp32 absmax per block of `blocksize`. */
void q4_quantize_map8(const float *v, int64_t n, int blocksize, uint8_t *q, float *absmax);
/* One value to its code (exposed for tests). */
uint8_t q4_encode(Q4Type t, float scaled);
uint8_t q4_encode_map8(float scaled);

/* fp32 scale of block b. */
float q4_block_absmax(const Q4State *s, int64_t b);
/* All n values, fp32 / bf16 (round to nearest even). */
void q4_dequantize(const Q4State *s, float *out);
void q4_dequantize_bf16(const Q4State *s, uint16_t *out);
/* Values [e0, e1) (flat indices) into out[0 .. e1-e0). */
void q4_dequantize_range(const Q4State *s, int64_t e0, int64_t e1, float *out);
/* Rows [r0, r1) of a row-major (rows, cols) weight into out ((r1-r0) x cols):
 * what a matmul dequantizing one tile at a time needs. */
void q4_dequantize_rows(const Q4State *s, int64_t cols, int64_t r0, int64_t r1, float *out);
void q4_dequantize_rows_bf16(const Q4State *s, int64_t cols, int64_t r0, int64_t r1, uint16_t *out);

/* Check a state's arrays and sizes (what a reader must do before trusting a
 * file): -1 with err_set("<what>") naming the inconsistency. */
int q4_state_check(const Q4State *s);

/* Rows [r0, r0 + nr) x columns [c0, c0 + nc) of a row-major tensor. */
typedef struct {
    int64_t r0, nr, c0, nc;
} Q4Rect;
/* The rectangles of s (a (n / cols, cols) tensor), laid one after another (each row-major), as one
 * state that dequantizes to exactly those values: the packed codes copied, and one fp32 scale per
 * block (a nested state's scales dequantized as a product dequantizes them). Its blocks are the
 * largest that no block of s straddles: s's block size, or a power of two below it where a slice
 * starts or ends inside one of s's blocks (tensor parallel's slices of 4-bit weights, model/tp.h).
 * -1 with err_set when a slice starts or ends inside a pair of values (a shared byte). */
int q4_gather(const Q4State *s, int64_t cols, const Q4Rect *rects, int nrect, Q4Quant *out);
/* The block size q4_gather gives the rectangles of an n-value tensor of blocks of blocksize, and
 * (values non-NULL) how many values they hold: what a planner counts. -1 with err_set as q4_gather. */
int q4_gather_blocksize(int64_t n, int64_t cols, int blocksize, const Q4Rect *rects, int nrect, int64_t *values);

#endif
