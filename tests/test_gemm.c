// NP: 1
/* test_gemm.c: the local matmul seam (gemm.h) with every engine this build has, in fp32 and
 * bf16, and the whole model's forward and backward with each engine.
 *
 * Products: every transpose pair the model uses (linear forward 'N','T', input gradient 'N','N',
 * weight gradient 'T','N' with beta = 1, and the attention products on head slices whose leading
 * dimension exceeds their width), alpha 1 and 1/sqrt(8), beta 0 (over NaN, which must vanish) and
 * 1, at odd sizes and at a quarter of the base model's (kept small: the reference is double). Each
 * result is compared with a double reference element by element against the a-priori bound of a
 * float dot product (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., Thm 3.5 and
 * sec. 3.5):
 *
 *   |C - C_ref| <= (k + 2) u (|alpha| sum_l |a_il| |b_lj| + |beta| |c_ij|),  u = 2^-24
 *
 * which any correct fp32 engine meets in any summation order (blocked sums meet it with room to
 * spare); a dropped term, a wrong transpose or a wrong leading dimension errs by O(1). In bf16
 * the reference is computed from the bf16-rounded operands (their products are exact in fp32,
 * so the same bound holds): this checks that both operands, and only they, are rounded.
 * Also: round-to-nearest-even of gemm_round_bf16 on ties, NaN and infinity; a weight read from
 * the bf16 shadow gives the same bits as one rounded on the fly, after a refresh too; where
 * oneDNN has bf16 kernels (not on AVX2), its bf16 matmul meets the same bound.
 * Model: loss and every gradient of a small encoder-decoder (dropout on, padding) with oneDNN
 * against OpenBLAS: relative differences of float rounding only (<= 1e-5 measured 1e-7).
 */
#include "gemm.h"
#include "harness.h"
#include "model.h"

#include <float.h>
#include <stdlib.h>
#include <string.h>

static float val(uint64_t tag, int64_t i) { /* hash -> [-1, 1), a multiple of 2^-20 */
  uint64_t x = tag * 0x9E3779B97F4A7C15ULL + (uint64_t)i * 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  return (float)((int64_t)(x >> 43) - (1 << 20)) / (float)(1 << 20);
}

typedef struct shape {
  char ta, tb;
  int m, n, k, pad; /* pad: extra leading-dimension columns */
  float alpha, beta;
} shape;

/* Run one product with the current engine/precision; returns the worst |err| / bound. */
static double check_one(const shape *s, int bf16, int weight_b) {
  int ra = s->ta == 'N' ? s->m : s->k, ca = s->ta == 'N' ? s->k : s->m;
  int rb = s->tb == 'N' ? s->k : s->n, cb = s->tb == 'N' ? s->n : s->k;
  int lda = ca + s->pad, ldb = cb + s->pad, ldc = s->n + s->pad;
  float *a = malloc(sizeof(float) * (size_t)ra * lda),
        *b = malloc(sizeof(float) * (size_t)rb * ldb);
  float *c = malloc(sizeof(float) * (size_t)s->m * ldc),
        *c0 = malloc(sizeof(float) * (size_t)s->m * ldc);
  for (int64_t i = 0; i < (int64_t)ra * lda; i++)
    a[i] = val(1 + (uint64_t)s->m, i) * 3.0f + 1e-3f * val(7, i); /* not bf16-exact */
  for (int64_t i = 0; i < (int64_t)rb * ldb; i++)
    b[i] = val(2 + (uint64_t)s->n, i) + 1e-3f * val(8, i);
  for (int64_t i = 0; i < (int64_t)s->m * ldc; i++)
    c[i] = c0[i] = s->beta == 0.0f ? NAN : val(3, i);
  if (weight_b) gemm_shadow_add(b, (int64_t)rb * ldb);
  gemm_sgemm(s->ta, s->tb, s->m, s->n, s->k, s->alpha, a, lda, b, ldb, s->beta, c, ldc);
  if (weight_b) gemm_shadow_remove(b);
  double worst = 0;
  for (int i = 0; i < s->m; i++)
    for (int j = 0; j < s->n; j++) {
      double ref = 0, mag = 0;
      for (int l = 0; l < s->k; l++) {
        double x = s->ta == 'N' ? a[(int64_t)i * lda + l] : a[(int64_t)l * lda + i];
        double y = s->tb == 'N' ? b[(int64_t)l * ldb + j] : b[(int64_t)j * ldb + l];
        if (bf16) x = gemm_round_bf16((float)x), y = gemm_round_bf16((float)y);
        ref += x * y, mag += fabs(x * y);
      }
      double cij = c0[(int64_t)i * ldc + j];
      ref = s->alpha * ref + (s->beta != 0.0f ? s->beta * cij : 0.0);
      mag = fabs(s->alpha) * mag + (s->beta != 0.0f ? fabs(s->beta * cij) : 0.0);
      double bound = (s->k + 2) * ldexp(1.0, -24) * mag + 1e-30;
      double got = c[(int64_t)i * ldc + j];
      double r = isfinite(got) ? fabs(got - ref) / bound : INFINITY;
      worst = r > worst ? r : worst;
    }
  free(a), free(b), free(c), free(c0);
  return worst;
}

static const shape shapes[] = {
    /* linear layers: y = x W^T, dx = dy W, dW += dy^T x (tokens 37, 96; d 32, 256; ffn 1024) */
    {'N', 'T', 37, 64, 32, 0, 1.0f, 0.0f},
    {'N', 'N', 37, 32, 64, 0, 1.0f, 0.0f},
    {'T', 'N', 64, 32, 37, 0, 1.0f, 1.0f},
    {'N', 'T', 96, 1024, 256, 0, 1.0f, 0.0f},
    {'N', 'N', 96, 256, 1024, 0, 1.0f, 0.0f},
    {'T', 'N', 256, 1024, 96, 0, 1.0f, 1.0f},
    {'N', 'T', 23, 1000, 64, 0, 1.0f, 0.0f}, /* logits over a vocabulary */
    /* attention on head slices (ld = d > dh): S = alpha Q K^T, O = P V, dV += P^T dO, ... */
    {'N', 'T', 9, 11, 8, 24, 0.35355339f, 0.0f},
    {'N', 'N', 9, 8, 11, 24, 1.0f, 0.0f},
    {'T', 'N', 11, 8, 9, 24, 1.0f, 1.0f},
    {'N', 'N', 9, 8, 11, 24, 0.35355339f, 1.0f},
    {'T', 'N', 11, 8, 9, 24, 0.35355339f, 1.0f},
    {'N', 'T', 1, 1, 1, 0, 1.0f, 0.0f},
    {'T', 'T', 5, 7, 3, 2, -0.5f, 0.25f}, /* not used by the model, but allowed */
};
enum { N_SHAPES = sizeof shapes / sizeof shapes[0] };

static void check_engine(const char *engine, const char *prec) {
  char err[300];
  TEST_EXPECT(gemm_setup(engine, prec, 1, err, sizeof err) == 0, "gemm_setup(%s, %s): %s", engine,
              prec, err);
  int bf16 = !strcmp(prec, "bf16");
  double worst = 0, worst_w = 0;
  for (int i = 0; i < N_SHAPES; i++) {
    double r = check_one(&shapes[i], bf16, 0);
    TEST_EXPECT(r <= 1.0, "%s %s %c%c m=%d n=%d k=%d: error %.3g of the bound", engine, prec,
                shapes[i].ta, shapes[i].tb, shapes[i].m, shapes[i].n, shapes[i].k, r);
    worst = r > worst ? r : worst;
    if (bf16) {
      double rw = check_one(&shapes[i], 1, 1); /* B read from the shadow */
      TEST_EXPECT(rw == r, "%s bf16 shadow: %.17g vs on the fly %.17g", engine, rw, r);
      worst_w = rw > worst_w ? rw : worst_w;
    }
  }
  printf("%-8s %s: worst error %.3f of the bound over %d shapes\n", engine, prec, worst, N_SHAPES);
}

static void check_rounding(void) {
  float one = 1.0f, ulp = ldexpf(1.0f, -7); /* bf16 ulp at 1 */
  TEST_EXPECT(gemm_round_bf16(one) == one, "1 stays 1");
  TEST_EXPECT(gemm_round_bf16(one + ulp / 2) == one, "tie to even (down)");
  TEST_EXPECT(gemm_round_bf16(one + 3 * ulp / 2) == one + 2 * ulp, "tie to even (up)");
  TEST_EXPECT(gemm_round_bf16(one + ulp / 2 + ldexpf(1.0f, -20)) == one + ulp, "above the tie");
  TEST_EXPECT(gemm_round_bf16(-one - ulp / 4) == -one, "negative, below the tie");
  TEST_EXPECT(isnan(gemm_round_bf16(NAN)), "NaN stays NaN");
  TEST_EXPECT(gemm_round_bf16(INFINITY) == INFINITY && gemm_round_bf16(-INFINITY) == -INFINITY,
              "infinities stay");
  TEST_EXPECT(gemm_round_bf16(FLT_MAX) == INFINITY, "FLT_MAX overflows to inf (as RNE does)");
  TEST_EXPECT(gemm_round_bf16(1e-40f) != 0.0f, "a subnormal is kept, not flushed");
}

/* The whole model: loss and gradients with `engine` against OpenBLAS, fp32. */
static void check_model(const char *engine) {
  enum { B = 3, S = 7, T = 6, V = 29 };
  model_dims d = {0};
  d.n_enc = 2, d.n_dec = 2, d.d = 16, d.ffn = 24, d.heads = 2, d.vocab = V;
  d.pre_ln = 1, d.pad = 0, d.bos = 2, d.eos = 3, d.dropout = 0.1f, d.attn_dropout = 0.1f;
  d.label_smoothing = 0.1f;
  int32_t src[B * S], tin[B * T], tout[B * T];
  for (int i = 0; i < B * S; i++)
    src[i] = 4 + (int)((val(11, i) + 1) * 12);
  for (int i = 0; i < B * T; i++)
    tin[i] = 4 + (int)((val(12, i) + 1) * 12), tout[i] = 4 + (int)((val(13, i) + 1) * 12);
  src[S - 1] = src[S - 2] = 0, tin[T - 1] = tout[T - 1] = 0; /* padding */
  double loss[2];
  float *grad[2];
  int64_t nf = 0;
  char err[300];
  for (int e = 0; e < 2; e++) {
    TEST_EXPECT(gemm_setup(e == 0 ? "openblas" : engine, "fp32", 1, err, sizeof err) == 0, "%s",
                err);
    model *m = model_create(&d, NULL, 5);
    model_set_mode(m, 1, 99);
    model_zero_grad(m);
    double l = 0, nll = 0;
    model_forward_backward(m, src, tin, tout, B, S, T, 1.0f, 1, &l, &nll);
    loss[e] = l, nf = m->n_floats;
    grad[e] = malloc(sizeof(float) * (size_t)nf);
    memcpy(grad[e], m->grad_mem, sizeof(float) * (size_t)nf);
    model_free(m);
  }
  double dn = 0, gn = 0;
  for (int64_t i = 0; i < nf; i++)
    dn += (double)(grad[1][i] - grad[0][i]) * (grad[1][i] - grad[0][i]),
        gn += (double)grad[0][i] * grad[0][i];
  double rl = fabs(loss[1] - loss[0]) / fabs(loss[0]), rg = sqrt(dn / gn);
  printf("model %s vs openblas: loss rel %.2e, gradient rel %.2e\n", engine, rl, rg);
  TEST_EXPECT(rl <= 1e-5 && rg <= 1e-5, "model %s vs openblas: loss %.3g, gradients %.3g", engine,
              rl, rg);
  free(grad[0]), free(grad[1]);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  check_rounding();
  const char *engines[2] = {"openblas", "onednn"};
  char err[300];
  int n_eng = gemm_setup("onednn", "fp32", 1, err, sizeof err) == 0 ? 2 : 1;
  if (n_eng == 1) printf("skip: %s\n", err);
  printf("oneDNN ISA: %s; bf16 matmul kernels: %s\n", gemm_onednn_isa(),
         gemm_bf16_native() ? "yes" : "no (bf16 emulated on fp32)");
  for (int e = 0; e < n_eng; e++) {
    check_engine(engines[e], "fp32");
    check_engine(engines[e], "bf16");
  }
  if (n_eng == 2) check_model("onednn");
  gemm_setup("openblas", "fp32", 1, err, sizeof err);
  int rc = test_finish();
  MPI_Finalize();
  return rc;
}
