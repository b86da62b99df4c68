/* safetensors.h - read and write the safetensors format (docs/formats.md).
 *
 * File layout (https://github.com/huggingface/safetensors):
 *   u64 little-endian N | N bytes of JSON header | data
 * The header maps each tensor name to {"dtype", "shape", "data_offsets":[begin,end]}
 * with offsets relative to the start of the data; an optional "__metadata__"
 * maps strings to strings. Tensors are row-major, little-endian.
 *
 * Reading maps the file and validates the whole header up front (dtypes,
 * shapes, sizes, offsets in range, no overlaps), so that later accesses cannot
 * read outside the file. Errors name the file and the tensor:
 *   "model.safetensors: h.0.attn.c_attn.weight: data_offsets: end 4096 is past the data (1024 bytes)"
 */
#ifndef ANVIL_IO_SAFETENSORS_H
#define ANVIL_IO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

/* Element types of the format. Only the floating types convert to fp32; the
 * rest are read through (raw bytes) and written as given. */
typedef enum {
    ST_BOOL,
    ST_U8,
    ST_I8,
    ST_I16,
    ST_U16,
    ST_F16,
    ST_BF16,
    ST_I32,
    ST_U32,
    ST_F32,
    ST_F64,
    ST_I64,
    ST_U64,
    ST_F8_E4M3,
    ST_F8_E5M2,
    ST_NDTYPE
} StDtype;

/* Dimensions a tensor may have (the format has no limit; 8 covers every model). */
#define ST_MAX_DIM 8
/* Largest header we accept; the reference implementation's limit (100 MB). */
#define ST_MAX_HEADER (100u * 1000u * 1000u)
/* Default largest shard when writing; transformers' save_pretrained default "5GB". */
#define ST_DEFAULT_MAX_SHARD ((uint64_t)5 * 1000 * 1000 * 1000)

const char *st_dtype_name(StDtype t);
/* -1 if unknown */
int st_dtype_parse(const char *name);
size_t st_dtype_size(StDtype t);

typedef struct {
    char *name;
    StDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIM];
    size_t numel;
    size_t nbytes;
    const void *data; /* inside the mapping; not necessarily aligned */
} StTensor;

typedef struct {
    char *key, *value;
} StMeta;

typedef struct {
    char *path;
    void *map;
    size_t map_size;
    StTensor *t; /* in header order */
    int n;
    StMeta *meta;
    int n_meta;
} StFile;

/* Map and validate a file. On failure *f is left closed (st_close is safe). */
int st_open(StFile *f, const char *path);
void st_close(StFile *f);
/* The named tensor, or NULL. */
const StTensor *st_find(const StFile *f, const char *name);
/* Metadata value for key, or NULL. */
const char *st_meta_get(const StFile *f, const char *key);

/* Convert a floating tensor (F32, F16, BF16, F64) to fp32; out holds t->numel.
 * -1 for other dtypes. */
int st_to_f32(const StTensor *t, float *out);

/* fp32 <-> bf16 (round to nearest even; NaN stays NaN) and fp16 -> fp32. */
uint16_t st_f32_to_bf16(float x);
float st_bf16_to_f32(uint16_t h);
float st_f16_to_f32(uint16_t h);

/* ---- several files: one model.safetensors, or shards with an index ---- */
typedef struct {
    StFile *files;
    int nfiles;
} StSet;

/* Open "<dir>/<base>.safetensors", or else the shards that
 * "<dir>/<base>.safetensors.index.json" lists in its "weight_map". */
int st_set_open_dir(StSet *s, const char *dir, const char *base);
void st_set_close(StSet *s);
/* The named tensor and (when file is not NULL) the file holding it; NULL if absent. */
const StTensor *st_set_find(const StSet *s, const char *name, const StFile **file);

/* ---- writing ---- */
typedef struct {
    const char *name;
    StDtype dtype; /* stored dtype */
    int ndim;
    int64_t shape[ST_MAX_DIM];
    /* data holds the stored bytes (numel x dtype size), or, when src_f32 is 1,
     * fp32 values that are converted on the way out (dtype F32 or BF16). */
    const void *data;
    int src_f32;
} StWriteTensor;

/* Write one file atomically (temp + fsync + rename). The header is padded
 * with spaces to a multiple of 8 bytes so that the data is aligned. */
int st_write(const char *path, const StWriteTensor *t, int n, const StMeta *meta, int n_meta);

/* Write "<dir>/<base>.safetensors", or when the data exceeds max_shard bytes
 * (0 = ST_DEFAULT_MAX_SHARD), the HF shards "<base>-00001-of-0000N.safetensors"
 * plus "<base>.safetensors.index.json". A stale file of the other layout in dir
 * is removed afterwards, so exactly one layout remains. */
int st_write_dir(const char *dir, const char *base, const StWriteTensor *t, int n, const StMeta *meta,
                 int n_meta, uint64_t max_shard);

/* Stored bytes of one write tensor (numel x dtype size); 0 on overflow. */
size_t st_write_nbytes(const StWriteTensor *t);

#endif
