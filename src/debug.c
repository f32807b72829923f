/* debug.c: the check behind DEBUG_AGREE (see debug.h): every rank of a communicator
 * passed the same values to a collective function, or the job stops with a message that
 * names the function, the value and its range.
 *
 * One MPI_Allreduce with MPI_MIN of (v, ~v) per value gives both the minimum and, as
 * ~min(~v), the maximum (~ is exact on every int64_t, where -v would overflow at
 * INT64_MIN). It is compiled in every build (a test calls it directly); only the macro
 * is switched off outside DEBUG=1 builds, so release code never calls it.
 */
#include "debug.h"

#define DEBUG_MAX_VALUES 32

int debug_enabled(void) {
#ifdef MPIFORMER_DEBUG
  return 1;
#else
  return 0;
#endif
}

/* Copy the name of value i out of "a, b->c, f(x, y)" (commas inside brackets do not
 * separate) into buf; "?" when there are fewer names. */
static void debug_value_name(const char *names, int i, char *buf, size_t len) {
  int depth = 0, k = 0;
  const char *start = names;
  for (const char *p = names;; p++) {
    if (*p == '(' || *p == '[' || *p == '{') depth++;
    if (*p == ')' || *p == ']' || *p == '}') depth--;
    if (*p == '\0' || (*p == ',' && depth == 0)) {
      if (k == i) {
        while (*start == ' ')
          start++;
        snprintf(buf, len, "%.*s", (int)(p - start), start);
        return;
      }
      if (*p == '\0') break;
      k++;
      start = p + 1;
    }
  }
  snprintf(buf, len, "?");
}

void debug_agree(MPI_Comm comm, const char *fn, const char *file, int line, const char *names,
                 const int64_t *vals, int n) {
  if (comm == MPI_COMM_NULL) return;
  CHECK(n >= 1 && n <= DEBUG_MAX_VALUES, "debug_agree: %d values (1..%d)", n, DEBUG_MAX_VALUES);
  int64_t mins[2 * DEBUG_MAX_VALUES];
  for (int i = 0; i < n; i++) {
    mins[i] = vals[i];
    mins[n + i] = ~vals[i];
  }
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, mins, 2 * n, MPI_INT64_T, MPI_MIN, comm));
  int bad = 0;
  for (int i = 0; i < n; i++) {
    int64_t lo = mins[i], hi = ~mins[n + i];
    if (lo == hi) continue;
    char name[128];
    debug_value_name(names, i, name, sizeof name);
    fprintf(stderr,
            "[rank %d] %s:%d: %s: the ranks of the communicator passed different values: "
            "value %d of %d (%s): min %lld, max %lld, this rank %lld\n",
            common_rank(), file, line, fn, i + 1, n, name, (long long)lo, (long long)hi,
            (long long)vals[i]);
    bad = 1;
  }
  if (!bad) return;
  fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
}
