/* gemm.h: the one seam for local matrix products (dmat_gemm on a 1x1 grid, and the attention
 * products of ops.c), with a cblas_sgemm-like row-major interface, an engine (OpenBLAS or
 * oneDNN) and a precision (fp32, or bf16 mixed precision) chosen once per process.
 *
 * Engines (config key gemm): openblas is cblas_sgemm. onednn is a oneDNN matmul primitive
 * created once per shape, transposes, leading dimensions, alpha and beta, and cached. auto
 * is a rule, not a timing (a timing could pick differently on different ranks or runs):
 * oneDNN when it is linked and its CPU dispatcher reports AVX-512 (avx512_core or better),
 * OpenBLAS otherwise. Measured on AVX2-only CPUs, oneDNN 2.6.3's fp32 kernel (gemm:jit) is
 * not faster than OpenBLAS (bench/bench_gemm.c; docs/MODEL.md "Matmul engines").
 *
 * Precision (config key precision): fp32 is plain float products. bf16 rounds both operands
 * of every product made here to bfloat16 (round to nearest even), multiplies them exactly and
 * accumulates and writes in fp32. Weights come from a bf16 shadow of the model's parameter
 * memory (gemm_shadow_add), refreshed once per optimizer update (gemm_shadow_refresh): the
 * seam finds the shadow from the fp32 pointer it is given. Activations are rounded on the
 * fly. Where oneDNN has bf16 kernels (AVX-512 CPUs) the product is a bf16 x bf16 -> f32
 * matmul; elsewhere the rounded operands are held in fp32 (exactly: bf16 is the top half of
 * an fp32) and multiplied by the fp32 engine, which gives the same products (a product of
 * two bf16 is exact in fp32) at fp32 speed or a little less.
 *
 * Everything here is per process and not collective; it is not thread safe (one thread per
 * rank calls it). */
#ifndef MPIFORMER_GEMM_H
#define MPIFORMER_GEMM_H

#include <stddef.h>
#include <stdint.h>

enum { GEMM_OPENBLAS, GEMM_ONEDNN };
enum { GEMM_FP32, GEMM_BF16 };

/* Choose the engine ("auto", "openblas", "onednn") and the precision ("fp32", "bf16") of
 * every later product, and the threads oneDNN may use (>= 1). Returns C_OK, or C_ERR with a
 * message in err (onednn asked for but not linked, an unknown name). May be called again
 * (tests switch engines); the primitive cache is emptied. Not collective. */
int gemm_setup(const char *engine, const char *precision, int threads, char *err, size_t err_len);

/* The engine (GEMM_OPENBLAS, GEMM_ONEDNN) and precision (GEMM_FP32, GEMM_BF16) in use.
 * Not collective. */
int gemm_engine(void);
int gemm_precision(void);

/* One line for the start-up banner: the engine, for oneDNN its version and the ISA its
 * dispatcher picked, the precision and how bf16 is computed; and a warning line (empty when
 * none) when bf16 runs without bf16 instructions. Not collective. */
void gemm_describe(char *line, size_t cap, char *warning, size_t warning_cap);

/* The ISA oneDNN dispatches to ("avx2", "avx512_core_bf16", ...; "none" when oneDNN is not
 * linked). Not collective. */
const char *gemm_onednn_isa(void);

/* 1 when this build links oneDNN and its CPU has bf16 matmul kernels (else bf16 products are
 * computed on bf16-rounded fp32 operands). Not collective. */
int gemm_bf16_native(void);

/* C = alpha op(A) op(B) + beta C, row-major, like cblas_sgemm(CblasRowMajor, ...):
 * trans_a/trans_b 'N' or 'T'; op(A) m x k (A stored m x k with ld lda when 'N', k x m when
 * 'T'), op(B) k x n, C m x n with ld ldc. beta == 0 ignores C's old values (NaN included).
 * In bf16 both operands are rounded to bf16 (a weight operand read from its shadow).
 * m, n or k 0: cblas's semantics. Not collective. */
void gemm_sgemm(char trans_a, char trans_b, int m, int n, int k, float alpha, const float *a,
                int lda, const float *b, int ldb, float beta, float *c, int ldc);

/* Register [base, base + n) (a model's parameter memory) for a bf16 shadow when the precision
 * is bf16 (a no-op in fp32), and fill the shadow. The caller keeps base alive until
 * gemm_shadow_remove(base). Not collective. */
void gemm_shadow_add(const float *base, int64_t n);

/* Re-round the shadow of the region that starts at base after its fp32 values changed (an
 * optimizer update, a checkpoint load); a no-op when base is not registered. Not collective. */
void gemm_shadow_refresh(const float *base);

/* Forget the shadow of the region that starts at base (no-op if none). Not collective. */
void gemm_shadow_remove(const float *base);

/* Round x to the nearest bfloat16 (ties to even; NaN stays NaN, infinities stay) and return
 * it as a float. Not collective. */
float gemm_round_bf16(float x);

#endif
