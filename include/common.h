/* common.h: error checking, small helpers shared by every module.
 *
 * CHECK(cond, fmt, ...) is always on: on failure it prints
 * "[rank R] file:line: message" and calls MPI_Abort. Use it for programming
 * errors and unrecoverable I/O; for user errors that every rank can detect
 * together (bad config, missing file) use common_agree_fail() first so that no
 * rank is left waiting in a collective.
 */
#ifndef MPIFORMER_COMMON_H
#define MPIFORMER_COMMON_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define C_OK 0
#define C_ERR -1

/* Print "[rank R] file:line: msg" to stderr and abort every rank. Not collective. */
void common_die(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));

#define CHECK(cond, ...)                                                                           \
  do {                                                                                             \
    if (!(cond)) common_die(__FILE__, __LINE__, __VA_ARGS__);                                      \
  } while (0)

/* Check an MPI return code. */
#define MPI_CHECK(call)                                                                            \
  do {                                                                                             \
    int mpi_rc_ = (call);                                                                          \
    if (mpi_rc_ != MPI_SUCCESS) common_die(__FILE__, __LINE__, "MPI error %d in %s", mpi_rc_, #call); \
  } while (0)

/* The world rank of this process (valid after MPI_Init; 0 before). Not collective. */
int common_rank(void);

/* Collective on comm: returns 1 on every rank if `failed` is non-zero on any rank.
 * The ranks that failed should have printed their message already. */
int common_any(MPI_Comm comm, int failed);

/* malloc/calloc that abort with a message naming the size on failure. */
void *common_malloc(size_t bytes);
void *common_calloc(size_t n, size_t size);

/* Wall-clock seconds (MPI_Wtime). */
double common_now(void);

/* Checked narrowing cast for MPI/ScaLAPACK int arguments. */
static inline int common_int(int64_t v) {
  CHECK(v >= 0 && v <= 2147483647, "value %lld does not fit an int", (long long)v);
  return (int)v;
}

#endif
