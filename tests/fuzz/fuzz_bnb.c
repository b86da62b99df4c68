/* fuzz_bnb.c - bnb_open (io/bnb.c) on arbitrary input; every accepted 4-bit
 * weight must dequantize without reading outside the file.
 * The first byte picks what the rest is: even, model.safetensors (beside the
 * config.json of tests/fixtures/bnb/llama_nf4); odd, config.json (beside that
 * directory's model.safetensors). Seeds: those two files behind a 0 / 1 byte. */
#include "fuzz_common.h"
#include "io/bnb.h"
#include "io/fsutil.h"

#define FIXTURE_DIR "tests/fixtures/bnb/llama_nf4"
/* Dequantize weights up to this many values (the file bounds them anyway). */
#define MAX_DEQUANT (1 << 22)

static char *fixture_config, *fixture_model;
static size_t fixture_config_n, fixture_model_n;

static void load_fixture(void)
{
    static int done;
    if (done) return;
    done = 1;
    if (fs_read_file(FIXTURE_DIR "/config.json", &fixture_config, &fixture_config_n) != 0) {
        fixture_config =
            strdup("{\"quantization_config\": {\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true}}");
        fixture_config_n = strlen(fixture_config);
    }
    if (fs_read_file(FIXTURE_DIR "/model.safetensors", &fixture_model, &fixture_model_n) != 0)
        fixture_model_n = 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    load_fixture();
    if (size < 1) return 0;
    int config_mode = data[0] & 1;
    data++, size--;
    fuzz_write("config.json", config_mode ? data : (const uint8_t *)fixture_config,
               config_mode ? size : fixture_config_n);
    fuzz_write("model.safetensors", config_mode ? (const uint8_t *)fixture_model : data,
               config_mode ? fixture_model_n : size);
    BnbDir d;
    if (bnb_open(&d, fuzz_dir()) != 0) return 0;
    for (int i = 0; i < d.n; i++) {
        const BnbTensor *t = &d.t[i];
        if (t->q.n > MAX_DEQUANT) continue;
        float *x = malloc((size_t)t->q.n * sizeof(float));
        uint16_t *h = malloc((size_t)t->q.n * sizeof(uint16_t));
        bnb_dequantize(t, x);
        q4_dequantize_bf16(&t->q, h);
        if (t->ndim == 2 && t->shape[0] > 1) q4_dequantize_rows(&t->q, t->shape[1], 1, t->shape[0], x);
        free(x);
        free(h);
    }
    bnb_close(&d);
    return 0;
}
