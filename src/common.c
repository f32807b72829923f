/* common.c: error reporting and tiny helpers used everywhere (see common.h). */
#include "common.h"

#include <stdarg.h>
#include <string.h>

int common_rank(void) {
  int init = 0, fin = 0, rank = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (init && !fin) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

void common_die(const char *file, int line, const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "[rank %d] %s:%d: %s\n", common_rank(), file, line, msg);
  fflush(stderr);
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (init && !fin) MPI_Abort(MPI_COMM_WORLD, 1);
  exit(1);
}

int common_any(MPI_Comm comm, int failed) {
  int local = failed ? 1 : 0, global = 0;
  MPI_CHECK(MPI_Allreduce(&local, &global, 1, MPI_INT, MPI_MAX, comm));
  return global;
}

void *common_malloc(size_t bytes) {
  void *p = malloc(bytes ? bytes : 1);
  CHECK(p, "out of memory allocating %zu bytes", bytes);
  return p;
}

void *common_calloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  CHECK(p, "out of memory allocating %zu x %zu bytes", n, size);
  return p;
}

double common_now(void) { return MPI_Wtime(); }
