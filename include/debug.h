/* debug.h: collective-argument checks of DEBUG=1 builds (PETSc's
 * PetscValidLogicalCollective*).
 *
 * A collective function is correct only if every rank of its communicator calls it with
 * the values that must agree: global shapes, the step, flags that decide whether a
 * collective happens at all. A rank that passes another value does not fail: it waits in
 * a collective the others never enter, or corrupts a buffer. At the entry of such a
 * function
 *
 *   DEBUG_AGREE(comm, m, n, k);
 *
 * in a build with -DMPIFORMER_DEBUG (make DEBUG=1) all-reduces the minimum and maximum of
 * each value over comm and, where they differ, prints on every rank
 *   [rank R] file:line: dmat_gemm: the ranks of the communicator passed different values:
 *   value 3 of 3 (k): min 16, max 24, this rank 24
 * and calls MPI_Abort. In other builds it compiles to nothing: the arguments are not even
 * evaluated, so they may be as dear as a checksum. Values are int64_t; a float or double
 * goes through debug_bits (its bit pattern: equal means bitwise equal). A comm of
 * MPI_COMM_NULL (a rank that is not part of the collective) checks nothing.
 */
#ifndef MPIFORMER_DEBUG_H
#define MPIFORMER_DEBUG_H

#include "common.h"

#include <string.h>

#ifdef MPIFORMER_DEBUG
#define DEBUG_AGREE(comm, ...)                                                                     \
  debug_agree((comm), __func__, __FILE__, __LINE__, #__VA_ARGS__, (const int64_t[]){__VA_ARGS__},  \
              (int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
#else
#define DEBUG_AGREE(comm, ...) ((void)0)
#endif

/* 1 in a DEBUG=1 build (DEBUG_AGREE checks), 0 otherwise. Not collective. */
int debug_enabled(void);

/* The check behind DEBUG_AGREE: vals[0..n) must be equal on every rank of comm (names is
 * the comma-separated source text of the values, for the message; fn, file and line name
 * the caller). Returns when they agree; otherwise prints the message above on every rank
 * and calls MPI_Abort. Collective on comm (nothing when comm is MPI_COMM_NULL). */
void debug_agree(MPI_Comm comm, const char *fn, const char *file, int line, const char *names,
                 const int64_t *vals, int n);

/* The bit pattern of a double (a float converts exactly) as an int64_t, for DEBUG_AGREE.
 * Not collective. */
static inline int64_t debug_bits(double x) {
  int64_t b;
  memcpy(&b, &x, sizeof b);
  return b;
}

#endif
