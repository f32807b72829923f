/* tpops.h: the tensor-parallel kernels: the few operations whose reduction crosses the
 * column blocks of a distributed activation.
 *
 * With tensor parallelism an activation (tokens x features) is a dmat: process row p
 * holds whole sequences, process column q a block of the features (of the vocabulary,
 * for logits). LayerNorm statistics and the softmax of the cross-entropy are reductions
 * over a full row, so each takes the partial sums of this rank's columns and all-reduces
 * them over `row_comm` (the grid's process row, grid.tp_row: the ranks holding the other
 * column blocks of the same rows). Everything else is the local ops.h kernel.
 *
 * Every function here is collective on row_comm, and every rank of row_comm passes the
 * same n (rows). With a row_comm of one rank they compute what the ops.h kernel computes
 * (in a different summation order). Conventions as ops.h: backward ACCUMULATES.
 */
#ifndef MPIFORMER_TPOPS_H
#define MPIFORMER_TPOPS_H

#include "common.h"

/* LayerNorm of rows whose d features are split over row_comm: x, y (n, dl) hold this rank's
 * dl columns, g and b their gain and bias. mean, rstd (n) receive the full-row statistics
 * (two-pass: mean, then the centered sum of squares). y may not alias x. Collective on row_comm
 * (n, d and eps agree: DEBUG=1 builds check). */
void tpops_layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *g,
                             const float *b, int n, int dl, int d, float eps, MPI_Comm row_comm);

/* Backward of tpops_layernorm_forward: dx (n, dl) +=, dg (dl) +=, db (dl) += (this rank's
 * columns and rows: the caller sums dg, db over the process rows). dx, dg, db may be NULL.
 * scratch: 2n floats. Collective on row_comm when dx is not NULL (then every rank passes
 * one); not collective without dx. DEBUG=1 builds check n, d and whether dx is NULL. */
void tpops_layernorm_backward(float *dx, float *dg, float *db, const float *dy, const float *x,
                              const float *mean, const float *rstd, const float *g, int n, int dl,
                              int d, MPI_Comm row_comm, float *scratch);

/* Vocabulary-parallel label-smoothed cross-entropy: logits (n, Vl) hold columns
 * [v0, v0 + Vl) of a V-wide row (Vl may be 0). The loss is ops_xent's (fairseq's label
 * smoothing, rows with target `pad` ignored); every rank of row_comm adds the same row
 * sums into *loss_sum, *nll_sum (either may be NULL) and returns the same count: the
 * caller counts one process column. dlogits (n, Vl) as ops_xent (may alias logits, or be
 * NULL). argmax (n), if not NULL, receives each row's global argmax (the first on ties),
 * for every row including ignored ones. scratch: 4n doubles. Collective on row_comm (DEBUG=1
 * builds check n, V, pad, eps, grad_scale and a checksum of the targets). */
int64_t tpops_xent(float *dlogits, const float *logits, const int32_t *targets, int n, int Vl,
                   int64_t v0, int64_t V, int pad, float eps, float grad_scale, double *loss_sum,
                   double *nll_sum, int32_t *argmax, MPI_Comm row_comm, double *scratch);

#endif
