/* ops.h: forward and backward kernels on local, row-major blocks.
 *
 * Shapes are given as (rows, cols) of row-major arrays. n = number of token rows
 * (batch * sequence length), d = features. Conventions:
 *  - every *_backward ACCUMULATES (+=) into its input gradients and parameter
 *    gradients; callers zero them first. Pointers for gradients that are not wanted
 *    may be NULL where the comment says so. The fused variants for the model's backward
 *    (ops_relu_backward_inplace, ops_dropout_backward, ops_attention_backward_set) write
 *    their input gradient instead, and still accumulate the bias gradients they sum.
 *  - nothing allocates; scratch is passed in. No function is collective: these are
 *    the per-process kernels that the model calls on the blocks it owns.
 *  - dropout masks come from a counter-based hash of (key, global element index), so
 *    they do not depend on the layout and backward regenerates them from the key.
 */
#ifndef MPIFORMER_OPS_H
#define MPIFORMER_OPS_H

#include <stdint.h>

/* ---- LayerNorm over the last dimension ---------------------------------------- */
/* y(n,d) = (x - mean) * rstd * g(d) + b(d); mean(n), rstd(n) = 1/sqrt(var + eps) saved for
 * backward (var is the biased variance, as PyTorch). y may not alias x. Not collective. */
void ops_layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *g,
                           const float *b, int n, int d, float eps);
/* dx(n,d) += rstd * (dxhat - mean_row(dxhat) - xhat * mean_row(dxhat * xhat)) with
 * dxhat = dy * g, dg(d) += sum_rows dy * xhat, db(d) += sum_rows dy. dx, dg and db may
 * each be NULL (not wanted). Not collective. */
void ops_layernorm_backward(float *dx, float *dg, float *db, const float *dy, const float *x,
                            const float *mean, const float *rstd, const float *g, int n, int d);

/* ---- ReLU ------------------------------------------------------------------------ */
/* y(n) = max(x, 0); y may alias x. Not collective. */
void ops_relu_forward(float *y, const float *x, int64_t n);
/* dx(n) += dy * (y > 0), y = the forward output. Not collective. */
void ops_relu_backward(float *dx, const float *dy, const float *y, int64_t n);
/* In place, for a dy that is this ReLU's alone: dy(rows, cols) = dy where y > 0, else 0
 * (y = the forward output); and dcol(cols) += the column sums of that result, row after
 * row in order (the bias gradient of the linear layer that produced the ReLU's input, in
 * the same order as a separate sum, so the same bits); dcol may be NULL. yd (or NULL):
 * y after an ops_dropout with probability p (0 < p <= 1, a separate buffer); dy is then
 * first taken through that dropout's backward, its mask read off yd and y instead of
 * hashed again: the same bits as ops_dropout on dy followed by the ReLU backward. One
 * pass instead of a dropout pass, a mask pass and a column-sum pass. Not collective. */
void ops_relu_backward_inplace(float *dy, const float *y, const float *yd, float p, int rows,
                               int cols, float *dcol);

/* ---- Dropout (inverted, layout-independent) -------------------------------------- */
/* Element (i, j) of a local block (rows, cols) sits at global index
 * (row0 + i) * cols_global + col0 + j. It is dropped when
 * ops_hash_uniform(key, global_index) < p; kept ones are scaled by 1/(1-p).
 * y(rows,cols) = mask(x); y may alias x. p == 0 copies (or does nothing when y == x);
 * p == 1 gives zeros.
 * Backward is the same function applied to dy with the same key (then add into dx).
 * Not collective. */
void ops_dropout(float *y, const float *x, int rows, int cols, int64_t row0, int64_t col0,
                 int64_t cols_global, float p, uint64_t key);
/* Bytes of one row of a kept dropout mask (ops_dropout_add, ops_dropout_backward): bit
 * j % 8 of byte j / 8 is set when element j of the row was dropped. A (rows, cols) block
 * keeps rows * ops_dropout_row_bytes(cols) bytes. Not collective. */
static inline int64_t ops_dropout_row_bytes(int cols) {
  return ((int64_t)cols + 7) / 8;
}
/* y(rows, cols) = r + dropout(x) (the residual add after a dropout), in one pass: the
 * same mask and bits as ops_dropout then ops_add. y may alias x, not r. bits (or NULL):
 * the mask is kept there for ops_dropout_backward (written when 0 < p < 1 only).
 * Not collective. */
void ops_dropout_add(float *y, const float *r, const float *x, int rows, int cols, int64_t row0,
                     int64_t col0, int64_t cols_global, float p, uint64_t key, uint8_t *bits);
/* The backward of a dropout whose input gradient also flows on past it (a residual), in
 * one pass: g(rows, cols) = dropout(dy) (ops_dropout's mask and bits), dy_copy(rows, cols)
 * = dy (NULL: not wanted), and gcol(cols) += the column sums of g, row after row in order
 * (the bias gradient of the linear layer whose output was dropped out, the same bits as a
 * separate sum; NULL: not wanted). The mask comes from bits, kept by the forward's
 * ops_dropout_add with the same p, or is recomputed from key when bits is NULL (the same
 * products either way). g may not alias dy or dy_copy. Not collective. */
void ops_dropout_backward(float *g, float *dy_copy, float *gcol, const float *dy, int rows,
                          int cols, int64_t row0, int64_t col0, int64_t cols_global, float p,
                          uint64_t key, const uint8_t *bits);
/* A uniform float in [0,1) from a 64-bit key and a counter: splitmix64's output number
 * `counter` of the stream seeded with `key`, i.e. z = key + (counter + 1) * 0x9e3779b97f4a7c15,
 * z = (z ^ z>>30) * 0xbf58476d1ce4e5b9, z = (z ^ z>>27) * 0x94d049bb133111eb, z ^= z>>31
 * (mod 2^64), then (z >> 40) * 2^-24 (a multiple of 2^-24; easy to reproduce in numpy).
 * Not collective. */
float ops_hash_uniform(uint64_t key, uint64_t counter);
/* A standard normal float from (key, counter): Box-Muller on u1 = uniform(key, 2c) and
 * u2 = uniform(key, 2c + 1): sqrt(-2 ln(1 - u1)) * cos(2 pi u2) (1 - u1 > 0: no log(0)).
 * Not collective. */
float ops_hash_normal(uint64_t key, uint64_t counter);
/* Mix several 64-bit values into one key (for key = f(seed, step, layer, site)). Not
 * collective. */
uint64_t ops_hash_key(uint64_t a, uint64_t b, uint64_t c, uint64_t d);

/* ---- Multi-head scaled dot-product attention -------------------------------------- */
/* q(B*Tq, ldq), k(B*Tk, ldk), v(B*Tk, ldk): row b*T + t holds the H heads of dimension
 * dh side by side (columns h*dh .. h*dh+dh-1); ldq/ldk >= H*dh are row strides (so q, k
 * and v may be column slices of one wider array).
 * key_pad(B, Tk): non-zero marks a padding key that no query may attend to (NULL: none).
 * causal: query t attends only to keys s <= t + (Tk - Tq) (Tq < Tk for incremental
 * decoding: the queries are the last Tq positions; causal needs Tq <= Tk).
 * Masked keys get probability exactly 0; a query with no allowed key (cannot happen when
 * every sequence has a real token) gets an all-zero row and output, not NaN.
 * probs(B, H, Tq, Tk): saved softmax probabilities, before attention dropout.
 * out(B*Tq, ldo): concatenated heads of dropout(probs) @ v.
 * Scores are (q . k) / sqrt(dh). Attention dropout with probability p uses key `key`
 * and global index (((b0 + b) * Hg + h0 + h) * Tq + i) * Tk + j (b0 = the global index of
 * this block's first sequence, h0 that of its first head, Hg the model's head count: with
 * sequences split over process rows and heads over process columns every element keeps
 * the mask it has on one process; a single process passes b0 = 0, h0 = 0, Hg = H).
 * Columns of out beyond H*dh (when ldo > H*dh) are not touched.
 * scratch: at least Tq * Tk floats. Not collective. */
void ops_attention_forward(float *out, int ldo, float *probs, const float *q, int ldq,
                           const float *k, const float *v, int ldk, const uint8_t *key_pad,
                           int causal, int B, int Tq, int Tk, int H, int dh, float p, uint64_t key,
                           int64_t b0, int h0, int Hg, float *scratch);
/* dq(B*Tq, ldq) +=, dk(B*Tk, ldk) +=, dv(B*Tk, ldk) += given dout(B*Tq, ldo) and the
 * forward's inputs and probs (same p, key, b0, h0, Hg: the dropout mask is regenerated). dq, dk
 * and dv may each be NULL (not wanted); dk and dv may be column slices of one array, like
 * k and v. scratch: at least 2 * Tq * Tk floats. Not collective. */
void ops_attention_backward(float *dq, float *dk, float *dv, const float *dout, int ldo,
                            const float *probs, const float *q, int ldq, const float *k,
                            const float *v, int ldk, int B, int Tq, int Tk, int H, int dh, float p,
                            uint64_t key, int64_t b0, int h0, int Hg, float *scratch);

/* The same with dq, dk and dv WRITTEN (=), not accumulated: each (b, h) block is written
 * by its gemm with beta = 0, so the caller need not zero them (the same bits as zeroing
 * and accumulating). dbq, dbk, dbv (H*dh each, or NULL: not wanted) += the column sums of
 * dq, dk, dv (the biases of the q, k and v projections), taken per block while it is in
 * cache, each column's rows in order: the same bits as a sum over the whole array after.
 * Not collective. */
void ops_attention_backward_set(float *dq, float *dk, float *dv, float *dbq, float *dbk, float *dbv,
                                const float *dout, int ldo, const float *probs, const float *q,
                                int ldq, const float *k, const float *v, int ldk, int B, int Tq,
                                int Tk, int H, int dh, float p, uint64_t key, int64_t b0, int h0,
                                int Hg, float *scratch);

/* ---- Embedding and sinusoidal positions ------------------------------------------- */
/* y(n,d) = scale * table[tokens[i]] (table(V,d)). Not collective. */
void ops_embedding_forward(float *y, const int32_t *tokens, const float *table, int n, int d,
                           float scale);
/* dtable[tokens[i]] += scale * dy[i] for every i whose token is not `pad`. Not collective. */
void ops_embedding_backward(float *dtable, const float *dy, const int32_t *tokens, int n, int d,
                            float scale, int pad);
/* y(B*T, d) += PE(pos0 + t) for row b*T + t, with half = d/2 and
 * PE(p)[i] = sin(p * exp(-i * ln(10000)/(half-1))) for i < half,
 * PE(p)[half+i] = cos(p * exp(-i * ln(10000)/(half-1))), i < half (d even, d >= 4).
 * Evaluated in float like fairseq's SinusoidalPositionalEmbedding (whose positions start
 * at padding_idx + 1: pass that as pos0 to match it). Not collective. */
void ops_positions_add(float *y, int B, int T, int d, int pos0);
/* The same on a column block: y(B*T, cols) with row stride ld holds global columns
 * [col0, col0 + cols) of the d features (a process column's share). Not collective. */
void ops_positions_add_cols(float *y, int ld, int B, int T, int d, int col0, int cols, int pos0);

/* ---- Label-smoothed softmax cross-entropy ----------------------------------------- */
/* logits(n, V), targets(n). Rows whose target is `pad` are ignored (their dlogits row is
 * written as zeros). loss_sum and nll_sum may be NULL.
 * For other rows, with lp = log_softmax(logits), eps_i = eps / (V - 1):
 *   nll = -lp[t],  loss = (1 - eps - eps_i) * nll + eps_i * (-sum_j lp[j])   (fairseq)
 * Adds the row sums into *loss_sum and *nll_sum (double) and returns the number of
 * non-pad rows. Writes dlogits(n, V) = grad_scale * d(loss)/d(logits)
 * = grad_scale * (softmax - w), w_t = 1 - eps, w_j = eps_i otherwise; dlogits may alias
 * logits (it is written row by row after that row's loss is taken) or be NULL (loss only).
 * Not collective. */
int64_t ops_xent(float *dlogits, const float *logits, const int32_t *targets, int n, int V, int pad,
                 float eps, float grad_scale, double *loss_sum, double *nll_sum);

/* The row sums of the cross-entropy, for callers that split the vocabulary (tpops_xent):
 * e(n) = exp(z(n) - m) (z <= m; the same ~2-ulp polynomial exp as ops_xent) and returns
 * sum_j e[j] (float, 16 fixed lanes: reproducible), with *sum_z = sum_j z[j] in double.
 * e may be NULL (sums only) or equal z; n may be 0. Not collective. */
float ops_exp_sum(float *e, const float *z, int n, float m, double *sum_z);

/* ---- Small vector helpers --------------------------------------------------------- */
/* Elementwise on n floats. Not collective. */
void ops_add(float *y, const float *a, const float *b, int64_t n); /* y = a + b */
void ops_acc(float *y, const float *x, int64_t n);                 /* y += x */
void ops_scale(float *y, float s, int64_t n);                      /* y *= s */

/* Row reductions in OPS_LANES fixed lanes, shared by ops.c and tpops.c: gcc vectorizes
 * these (a plain `s += x[j]` loop becomes an in-order, latency-bound reduction without
 * -ffast-math), and the summation order is fixed, so results are reproducible run to run
 * and equal on every layout that sums the same elements. */
#define OPS_LANES 16

/* The sum of the OPS_LANES partial sums acc, in lane order. Not collective. */
static inline float ops_lanes_total(const float *acc) {
  float s = 0.0f;
  for (int l = 0; l < OPS_LANES; l++)
    s += acc[l];
  return s;
}

/* sum_j x[j], j < n, in fixed lanes. Not collective. */
static inline float ops_row_sum(const float *restrict x, int n) {
  float acc[OPS_LANES] = {0};
  int j = 0;
  for (; j + OPS_LANES <= n; j += OPS_LANES)
    for (int l = 0; l < OPS_LANES; l++)
      acc[l] += x[j + l];
  for (; j < n; j++)
    acc[0] += x[j];
  return ops_lanes_total(acc);
}

/* sum_j (x[j] - mu)^2, j < n, in fixed lanes. Not collective. */
static inline float ops_row_sumsq_centered(const float *restrict x, float mu, int n) {
  float acc[OPS_LANES] = {0};
  int j = 0;
  for (; j + OPS_LANES <= n; j += OPS_LANES)
    for (int l = 0; l < OPS_LANES; l++)
      acc[l] += (x[j + l] - mu) * (x[j + l] - mu);
  for (; j < n; j++)
    acc[0] += (x[j] - mu) * (x[j] - mu);
  return ops_lanes_total(acc);
}

#endif
