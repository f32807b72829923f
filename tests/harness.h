/* harness.h: a tiny test harness (header-only).
 *
 *   TEST_EXPECT(cond, fmt, ...)   record a pass or a failure with a message
 *   TEST_CLOSE(tol...)            helpers for float comparison
 *   test_finish()                 prints "N passed, N failed" (rank 0, summed over
 *                                 MPI_COMM_WORLD when MPI is up) and returns the exit code
 *
 * A test program includes it once, calls MPI_Init itself if it needs MPI, and
 * ends with `return test_finish();` (before MPI_Finalize, use test_finish_mpi()).
 */
#ifndef MPIFORMER_TEST_HARNESS_H
#define MPIFORMER_TEST_HARNESS_H

#include <math.h>
#include <mpi.h>
#include <stdio.h>

static int test_passed_ = 0, test_failed_ = 0;

#define TEST_EXPECT(cond, ...)                                                                     \
  do {                                                                                             \
    if (cond) {                                                                                    \
      test_passed_++;                                                                              \
    } else {                                                                                       \
      test_failed_++;                                                                              \
      int r_ = 0, i_ = 0;                                                                          \
      MPI_Initialized(&i_);                                                                        \
      if (i_) MPI_Comm_rank(MPI_COMM_WORLD, &r_);                                                  \
      fprintf(stderr, "[rank %d] FAIL %s:%d: ", r_, __FILE__, __LINE__);                           \
      fprintf(stderr, __VA_ARGS__);                                                                \
      fprintf(stderr, "\n");                                                                       \
    }                                                                                              \
  } while (0)

/* |a-b| <= atol + rtol*|b| */
static inline int test_close(double a, double b, double rtol, double atol) {
  return isfinite(a) && isfinite(b) && fabs(a - b) <= atol + rtol * fabs(b);
}

/* Sum pass/fail counts over MPI_COMM_WORLD (if MPI is initialized and not finalized),
 * print the closing line on rank 0, return 0 if nothing failed anywhere. */
static inline int test_finish(void) {
  int init = 0, fin = 0, rank = 0;
  int counts[2] = {test_passed_, test_failed_}, total[2] = {test_passed_, test_failed_};
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (init && !fin) {
    MPI_Allreduce(counts, total, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  }
  if (rank == 0) {
    printf("%d passed, %d failed\n", total[0], total[1]);
    fflush(stdout);
  }
  return (total[1] == 0 && total[0] > 0) ? 0 : 1;
}

#endif
