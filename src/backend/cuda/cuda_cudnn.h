/* cuda_cudnn.h - attention through cuDNN's fused engines (cuda_cudnn.cu), loaded at run time. */
#ifndef ANVIL_CUDA_CUDNN_H
#define ANVIL_CUDA_CUDNN_H

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when bf16 attention over T positions with head size hd should go to cuDNN: the library loaded,
 * the selection (g_cu.opts.attention auto: T >= CUDNN_MIN_T; cudnn: any T; never when deterministic)
 * allows it. Fatal when cuDNN was asked for (ATTN_IMPL_CUDNN) and the library cannot be used. */
int cudnn_attention_wanted(int T, int hd);
/* Run the forward / backward (backend.h attention_fwd / attention_bwd, bf16); 0 when cuDNN has no plan
 * for this shape (the caller runs our kernels; fatal instead when cuDNN was asked for). */
int cudnn_attention_fwd(void *out, float *lse, const void *qkv, int B, int T, int nh, int nkv, int hd);
int cudnn_attention_bwd(void *dqkv, const void *dout, const void *out, const float *lse, const void *qkv, int B,
                        int T, int nh, int nkv, int hd);
/* The same without the causal mask: every query attends to every key of its row (encoders' full,
 * unpadded rows; backend.h attention_len_fwd/bwd with lengths NULL). */
int cudnn_attention_full_fwd(void *out, float *lse, const void *qkv, int B, int T, int nh, int nkv, int hd);
int cudnn_attention_full_bwd(void *dqkv, const void *dout, const void *out, const float *lse, const void *qkv, int B,
                             int T, int nh, int nkv, int hd);
/* 1 when libcudnn.so.9 loads and makes a handle (no error when not). */
int cudnn_attention_available(void);
/* What runs bf16 attention now, for reports: "cuDNN 9.x.y fused attention" or "anvil kernels (...)". */
const char *cudnn_attention_info(void);
#ifdef __cplusplus
}
#endif

#endif
