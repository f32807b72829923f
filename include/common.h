/* common.h: error checking, small helpers shared by every module.
 *
 * CHECK(cond, fmt, ...) is always on: on failure it prints
 * "[rank R] file:line: message" and calls MPI_Abort. Use it for programming
 * errors and unrecoverable I/O; for user errors that every rank can detect
 * together (bad config, missing file) use common_agree() first so that no
 * rank is left waiting in a collective.
 *
 * Also here, one copy each for the whole program: the splitmix64 mix, "all ranks agree
 * on a failure", `mkdir -p`, and the reason of a failed write (the errno to name).
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

/* Abort with common_die's message unless cond holds. Not collective. */
#define CHECK(cond, ...)                                                                           \
  do {                                                                                             \
    if (!(cond)) common_die(__FILE__, __LINE__, __VA_ARGS__);                                      \
  } while (0)

/* Check an MPI return code; abort like CHECK on failure. Not collective. */
#define MPI_CHECK(call)                                                                            \
  do {                                                                                             \
    int mpi_rc_ = (call);                                                                          \
    if (mpi_rc_ != MPI_SUCCESS)                                                                    \
      common_die(__FILE__, __LINE__, "MPI error %d in %s", mpi_rc_, #call);                        \
  } while (0)

/* The world rank of this process (valid after MPI_Init; 0 before). Not collective. */
int common_rank(void);

/* Returns 1 on every rank if `failed` is non-zero on any rank. The ranks that failed
 * should have printed their message already. Collective on comm. */
int common_any(MPI_Comm comm, int failed);

/* Returns 1 on every rank if `failed` is non-zero on any rank, and then msg (msg_len
 * bytes, the same msg_len on every rank) holds on every rank the message that the lowest
 * failing rank had in its msg; returns 0 and leaves msg alone when no rank failed. This is
 * how a failure that one rank sees (a write error, a bad file) reaches every rank before
 * the next collective, so that no rank waits forever in it. Collective on comm. */
int common_agree(MPI_Comm comm, int failed, char *msg, size_t msg_len);

/* mkdir -p DIR (mode 0755). Returns C_OK when DIR is a directory at the end, else C_ERR
 * with msg (msg_len bytes) naming the path and the reason. Not collective. */
int common_mkdir_p(const char *dir, char *msg, size_t msg_len);

/* The errno that explains a failed write into directory DIR. errno_hint is errno saved
 * right after the failing call (set errno = 0 before it): it is returned when it is a write
 * error (ENOSPC, EDQUOT, EIO, EROFS, EFBIG, EACCES, EPERM). Libraries that give no errno
 * (HDF5 over MPI-IO) are explained from the file system: a read-only mount is EROFS, no
 * free block ENOSPC, else a probe file of 64 KiB is written, fsynced and removed, and its
 * errno returned. 0 when nothing failed again. Not collective. */
int common_write_errno(const char *dir, int errno_hint);

/* strerror(e), or "unknown I/O error" for e == 0. Not collective. */
const char *common_strerror(int e);

/* malloc/calloc that abort with a message naming the size on failure. Not collective. */
void *common_malloc(size_t bytes);
void *common_calloc(size_t n, size_t size);

/* Wall-clock seconds (MPI_Wtime). Not collective. */
double common_now(void);

/* splitmix64's finalizer (Steele, Lea, Flood 2014): a bijective, well-mixed 64-bit hash.
 * The checkpoint checksum and the data plan's generator are built on it. Not collective. */
static inline uint64_t common_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/* Checked narrowing cast for MPI/ScaLAPACK int arguments. Not collective. */
static inline int common_int(int64_t v) {
  CHECK(v >= 0 && v <= 2147483647, "value %lld does not fit an int", (long long)v);
  return (int)v;
}

#endif
