/* bench_comm.c: the times of the messages a training step sends, against their size, for
 * the alpha + bytes / beta fits of scripts/scaling_model.py (docs/SCALING.md).
 *
 * Usage: mpirun -np N bench_comm [MIN [MAX [OPS]]]
 *   MIN, MAX: message sizes in bytes (suffix K or M: KiB, MiB), default 4K and 128M; the
 *             sizes are MIN, 4 MIN, 16 MIN ... up to MAX, and MAX itself
 *   OPS:      a comma list of allreduce, rs_ag, p2p, overlap, or all (the first three;
 *             default)
 * For every size it times, as the training step calls them (optim.c, pipe.c):
 *   allreduce       MPI_Allreduce in place of bytes/4 floats (sum): the gradient sync;
 *   reduce_scatter  MPI_Reduce_scatter in place, the floats split in N slices as optim.c
 *                   does, then
 *   allgather       MPI_Allgatherv in place of those slices: the ZeRO-1 pair, timed one
 *                   after the other without a barrier between them, and
 *   rs_ag           the two together;
 *   p2p             a one-way pipeline send: MPI_Isend/MPI_Irecv + MPI_Wait of bytes/4
 *                   floats from rank 2k to 2k+1 and back (pairs; an odd last rank idles),
 *                   half the round trip, rank 0's;
 *   overlap         MPI_Iallreduce of bytes (only sizes >= 1 MiB) started before a compute
 *                   loop (small sgemms) that lasts 1.5x the blocking all-reduce of that
 *                   size measured just before (at least 0.2 s); the loop calls MPI_Test
 *                   every P ms, P = 1, 10, 100, or never; then MPI_Wait. Printed per P:
 *                   the compute seconds and the seconds left in MPI_Wait (what overlap
 *                   could not hide). One repetition. The non-blocking all-reduce is Open
 *                   MPI's ring, as bin/mpiformer asks for it (gradsync_mpi_defaults).
 * Each repetition starts after an MPI_Barrier; its time is the slowest rank's. After a
 * warm-up (two repetitions below 1 MiB, one below 32 MiB, none from 32 MiB on, where the
 * median of 3 discards a first slow one) come REPS repetitions (20 up to 256 KiB, 10 up to
 * 4 MiB, 5 up to 32 MiB, 3 above) and the median is printed: one JSON line per (op, bytes),
 *   {"op":"allreduce","bytes":4096,"seconds":...,"ranks":2,"reps":20}
 * Figures, not pass/fail. At 1 Gbit/s between two ranks the default run takes about a
 * minute.
 */
#include <cblas.h>
#include <string.h>

#include "common.h"
#include "gradsync.h"

static int rank, size;

/* "4096", "4K", "128M" -> bytes; aborts on anything else. */
static int64_t parse_bytes(const char *s) {
  char *end;
  long long v = strtoll(s, &end, 10);
  int64_t mult = 1;
  if (*end == 'K' || *end == 'k')
    mult = 1024, end++;
  else if (*end == 'M' || *end == 'm')
    mult = 1024 * 1024, end++;
  CHECK(v > 0 && *end == '\0', "size '%s': give bytes, or a number with K or M", s);
  return (int64_t)v * mult;
}

static int reps_for(int64_t bytes) {
  return bytes <= 256 * 1024 ? 20 : bytes <= 4 << 20 ? 10 : bytes <= 32 << 20 ? 5 : 3;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* The median of t[0..n) (sorts t). */
static double median(double *t, int n) {
  qsort(t, (size_t)n, sizeof *t, cmp_double);
  return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static void print_line(const char *op, int64_t bytes, double seconds, int reps) {
  if (rank == 0)
    printf("{\"op\":\"%s\",\"bytes\":%lld,\"seconds\":%.7f,\"ranks\":%d,\"reps\":%d}\n", op,
           (long long)bytes, seconds, size, reps);
  fflush(stdout);
}

/* The slowest rank's time of each of the n repetitions, on every rank. Collective. */
static void slowest(double *t, int n) {
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, t, n, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
}

/* The dp slices of n floats over size ranks, as optim_init cuts them. */
static void slices(int64_t n, int *counts, int *displs) {
  int64_t per = (n + size - 1) / size;
  for (int r = 0; r < size; r++) {
    int64_t a = per * r < n ? per * r : n, b = per * (r + 1) < n ? per * (r + 1) : n;
    displs[r] = common_int(a);
    counts[r] = common_int(b - a);
  }
}

/* Median seconds of MPI_Allreduce of n floats in place. Collective. */
static double time_allreduce(float *buf, int64_t n, int warm, int reps, double *t) {
  for (int i = -warm; i < reps; i++) {
    MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    double t0 = common_now();
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf, common_int(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
    if (i >= 0) t[i] = common_now() - t0;
  }
  slowest(t, reps);
  return median(t, reps);
}

/* Reduce-scatter then all-gather of n floats, as optim.c's ZeRO-1: medians of each and of
 * the pair into rs, ag, both. Collective. */
static void time_rs_ag(float *buf, int64_t n, int warm, int reps, double *t, double *rs, double *ag,
                       double *both) {
  int *counts = common_calloc((size_t)size, sizeof(int)),
      *displs = common_calloc((size_t)size, sizeof(int));
  slices(n, counts, displs);
  double *t_rs = t, *t_ag = t + reps, *t_both = t + 2 * reps;
  for (int i = -warm; i < reps; i++) {
    MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    double t0 = common_now();
    MPI_CHECK(MPI_Reduce_scatter(MPI_IN_PLACE, buf, counts, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
    double t1 = common_now();
    MPI_CHECK(
        MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, buf, counts, displs, MPI_FLOAT, MPI_COMM_WORLD));
    double t2 = common_now();
    if (i >= 0) t_rs[i] = t1 - t0, t_ag[i] = t2 - t1, t_both[i] = t2 - t0;
  }
  slowest(t, 3 * reps);
  *rs = median(t_rs, reps), *ag = median(t_ag, reps), *both = median(t_both, reps);
  free(counts), free(displs);
}

/* Half the round trip of n floats between ranks 2k and 2k+1 (Isend/Irecv + Wait, as
 * pipe.c), rank 0's median. Collective (every rank takes part in the barriers). */
static double time_p2p(float *buf, int64_t n, int warm, int reps, double *t) {
  int peer = rank ^ 1, active = peer < size;
  for (int i = -warm; i < reps; i++) {
    MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    double t0 = common_now();
    MPI_Request r;
    if (active && rank % 2 == 0) {
      MPI_CHECK(MPI_Isend(buf, common_int(n), MPI_FLOAT, peer, 1, MPI_COMM_WORLD, &r));
      MPI_CHECK(MPI_Wait(&r, MPI_STATUS_IGNORE));
      MPI_CHECK(MPI_Irecv(buf, common_int(n), MPI_FLOAT, peer, 2, MPI_COMM_WORLD, &r));
      MPI_CHECK(MPI_Wait(&r, MPI_STATUS_IGNORE));
    } else if (active) {
      MPI_CHECK(MPI_Irecv(buf, common_int(n), MPI_FLOAT, peer, 1, MPI_COMM_WORLD, &r));
      MPI_CHECK(MPI_Wait(&r, MPI_STATUS_IGNORE));
      MPI_CHECK(MPI_Isend(buf, common_int(n), MPI_FLOAT, peer, 2, MPI_COMM_WORLD, &r));
      MPI_CHECK(MPI_Wait(&r, MPI_STATUS_IGNORE));
    }
    if (i >= 0) t[i] = 0.5 * (common_now() - t0);
  }
  /* rank 0's times on every rank (the barrier of the next size keeps them in step) */
  MPI_CHECK(MPI_Bcast(t, reps, MPI_DOUBLE, 0, MPI_COMM_WORLD));
  return median(t, reps);
}

/* MPI_Iallreduce of n floats under `compute` seconds of small sgemms, MPI_Test every
 * test_ms (0: never), then MPI_Wait; prints the compute and the wait of the slowest rank.
 * Collective. */
static void time_overlap(float *buf, int64_t n, double compute, double test_ms) {
  enum { M = 128 };
  static float a[M * M], b[M * M], c[M * M];
  for (int i = 0; i < M * M; i++)
    a[i] = (float)(i % 7) * 0.01f, b[i] = (float)(i % 5) * 0.01f;
  MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
  MPI_Request r;
  double t0 = common_now(), next = t0 + test_ms * 1e-3;
  MPI_CHECK(
      MPI_Iallreduce(MPI_IN_PLACE, buf, common_int(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r));
  int done = 0;
  while (common_now() - t0 < compute) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, M, M, 1, a, M, b, M, 0, c, M);
    if (test_ms > 0 && !done && common_now() >= next) {
      MPI_CHECK(MPI_Test(&r, &done, MPI_STATUS_IGNORE));
      next = common_now() + test_ms * 1e-3;
    }
  }
  double t1 = common_now();
  MPI_CHECK(MPI_Wait(&r, MPI_STATUS_IGNORE));
  double tw[2] = {t1 - t0, common_now() - t1};
  slowest(tw, 2);
  if (rank == 0)
    printf("{\"op\":\"iallreduce_overlap\",\"bytes\":%lld,\"test_interval_ms\":%g,\"compute_s\":%."
           "4f,\"wait_s\":%.4f,\"ranks\":%d,\"reps\":1}\n",
           (long long)(4 * n), test_ms, tw[0], tw[1], size);
  fflush(stdout);
}

int main(int argc, char **argv) {
  gradsync_mpi_defaults(); /* the non-blocking all-reduce bin/mpiformer's buckets use */
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int64_t lo = argc > 1 ? parse_bytes(argv[1]) : 4096;
  int64_t hi = argc > 2 ? parse_bytes(argv[2]) : 128 << 20;
  const char *ops = argc > 3 ? argv[3] : "all";
  CHECK(lo <= hi && lo % 4 == 0 && hi % 4 == 0 && hi / 4 <= 2147483647,
        "MIN %lld and MAX %lld: need MIN <= MAX, multiples of 4, MAX / 4 an int", (long long)lo,
        (long long)hi);
  int do_ar = 0, do_rs = 0, do_p2p = 0, do_ov = 0;
  char list[128];
  snprintf(list, sizeof list, "%s", ops);
  for (char *save = NULL, *op = strtok_r(list, ",", &save); op; op = strtok_r(NULL, ",", &save)) {
    int all = strcmp(op, "all") == 0;
    do_ar |= all || !strcmp(op, "allreduce"), do_rs |= all || !strcmp(op, "rs_ag");
    do_p2p |= all || !strcmp(op, "p2p"), do_ov |= !strcmp(op, "overlap");
    CHECK(all || !strcmp(op, "allreduce") || !strcmp(op, "rs_ag") || !strcmp(op, "p2p") ||
              !strcmp(op, "overlap"),
          "OPS '%s': a comma list of allreduce, rs_ag, p2p, overlap, all", ops);
  }
  CHECK(!do_p2p || size >= 2, "p2p needs at least 2 ranks");
  /* zeros: sums of zeros cost what other sums cost and never overflow over the repetitions */
  float *buf = common_malloc((size_t)hi);
  memset(buf, 0, (size_t)hi);
  double *t = common_calloc(3 * 20, sizeof(double));
  for (int64_t bytes = lo;; bytes = bytes * 4 > hi ? hi : bytes * 4) {
    int64_t n = bytes / 4;
    int reps = reps_for(bytes), warm = bytes < (1 << 20) ? 2 : bytes < (32 << 20) ? 1 : 0;
    double ar = 0;
    if (do_ar || (do_ov && bytes >= (1 << 20))) {
      ar = time_allreduce(buf, n, warm, reps, t);
      if (do_ar) print_line("allreduce", bytes, ar, reps);
    }
    if (do_rs) {
      double rs, ag, both;
      time_rs_ag(buf, n, warm, reps, t, &rs, &ag, &both);
      print_line("reduce_scatter", bytes, rs, reps);
      print_line("allgather", bytes, ag, reps);
      print_line("rs_ag", bytes, both, reps);
    }
    if (do_p2p) print_line("p2p", bytes, time_p2p(buf, n, warm, reps, t), reps);
    if (do_ov && bytes >= (1 << 20)) {
      double compute = 1.5 * ar > 0.2 ? 1.5 * ar : 0.2;
      const double every_ms[] = {1, 10, 100, 0};
      for (int k = 0; k < 4; k++)
        time_overlap(buf, n, compute, every_ms[k]);
    }
    if (bytes == hi) break;
  }
  free(t);
  free(buf);
  MPI_Finalize();
  return 0;
}
