/* bench_ckpt.c: checkpoint write and read throughput against plain POSIX I/O.
 *
 * Usage: mpirun -np N bench_ckpt [MB [DIR [REPS]]]   (defaults: 500 MB, /tmp, 2 reps)
 *
 * Builds a model-like tensor list whose parameters plus two Adam moments total MB
 * megabytes (1 MB = 1e6 bytes): matrices of 1024 x 512 and one vector for the rest, held
 * as with tp=1 and zero=1: every rank holds all params (rank 0 writes them) and a flat
 * 1/N slice of each tensor's moments. Times ckpt_save (which includes fsync and the
 * atomic rename) and ckpt_load (which includes the checksum pass over the whole file),
 * and, on rank 0 in the same folder, write(2) of the same bytes + fsync and read(2) back,
 * and a resume (ckpt_resolve of the folder, then ckpt_load: one checksum pass in all).
 * The reads are likely served from the page cache (nothing here drops it). Prints a table.
 */
#include "ckpt.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAT_ROWS 1024
#define MAT_COLS 512

static int rank, size;

/* rank 0: write `bytes` from buf (cycled) to path with write(2), fsync; seconds. */
static double posix_write(const char *path, const char *buf, size_t chunk, size_t bytes) {
  double t0 = common_now();
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  CHECK(fd >= 0, "cannot create %s", path);
  for (size_t done = 0; done < bytes;) {
    size_t n = bytes - done < chunk ? bytes - done : chunk;
    ssize_t w = write(fd, buf, n);
    CHECK(w > 0, "write %s failed", path);
    done += (size_t)w;
  }
  CHECK(fsync(fd) == 0 && close(fd) == 0, "fsync %s failed", path);
  return common_now() - t0;
}

static double posix_read(const char *path, char *buf, size_t chunk) {
  double t0 = common_now();
  int fd = open(path, O_RDONLY);
  CHECK(fd >= 0, "cannot open %s", path);
  while (read(fd, buf, chunk) > 0) {
  }
  close(fd);
  return common_now() - t0;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm comm = MPI_COMM_WORLD;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  double mb = argc > 1 ? atof(argv[1]) : 500;
  const char *base = argc > 2 ? argv[2] : "/tmp";
  int reps = argc > 3 ? atoi(argv[3]) : 2;
  CHECK(mb > 0 && reps > 0, "usage: bench_ckpt [MB [DIR [REPS]]]");
  int pid = (int)getpid();
  MPI_Bcast(&pid, 1, MPI_INT, 0, comm);
  char dir[1024], err[1024];
  snprintf(dir, sizeof dir, "%s/bench_ckpt_%d", base, pid);

  /* the tensor list: n_mat matrices and one remainder vector */
  int64_t n_params = (int64_t)(mb * 1e6 / 12.0);
  int64_t per_mat = (int64_t)MAT_ROWS * MAT_COLS;
  int n_mat = (int)(n_params / per_mat), n = n_mat + 1;
  int64_t rest = n_params - (int64_t)n_mat * per_mat;
  if (rest == 0) rest = 1;
  n_params = (int64_t)n_mat * per_mat + rest;
  float *params = common_malloc(sizeof(float) * (size_t)n_params);
  for (int64_t i = 0; i < n_params; i++)
    params[i] = (float)(i % 1000) * 1e-3f - 0.5f;
  dmat *m = common_calloc((size_t)n, sizeof(dmat));
  ckpt_tensor *t = common_calloc((size_t)n, sizeof(ckpt_tensor));
  char(*names)[64] = common_calloc((size_t)n, 64);
  int64_t off = 0, slice_total = 0;
  for (int i = 0; i < n; i++) {
    int64_t rows = i < n_mat ? MAT_ROWS : 1, cols = i < n_mat ? MAT_COLS : rest;
    dmat_init(&m[i], NULL, rows, cols, params + off);
    off += rows * cols;
    snprintf(names[i], 64, i < n_mat ? "encoder.layers.%d.fc.weight" : "final.bias%d", i);
    t[i].name = names[i];
    t[i].param = &m[i];
    t[i].is_vector = i == n_mat;
    t[i].write_param = rank == 0;
    t[i].opt_lo = dmat_block_start(rows * cols, rank, size);
    t[i].opt_hi = t[i].opt_lo + dmat_block_count(rows * cols, rank, size);
    slice_total += t[i].opt_hi - t[i].opt_lo;
  }
  float *mom = common_malloc(sizeof(float) * (size_t)(2 * slice_total + 1));
  for (int64_t i = 0; i < 2 * slice_total; i++)
    mom[i] = (float)(i % 777) * 1e-6f;
  off = 0;
  for (int i = 0; i < n; i++) {
    int64_t k = t[i].opt_hi - t[i].opt_lo;
    t[i].exp_avg = mom + off;
    t[i].exp_avg_sq = mom + slice_total + off;
    off += k;
  }
  double bytes = 12.0 * (double)n_params;

  double best[6] = {1e30, 1e30, 1e30, 1e30, 1e30, 1e30}, sum[6] = {0};
  ckpt_meta meta;
  memset(&meta, 0, sizeof meta);
  meta.config_text = "bench = 1";
  char path[1200];
  for (int r = 0; r < reps; r++) {
    meta.step = r + 1;
    MPI_Barrier(comm);
    double t0 = common_now();
    CHECK(ckpt_save(dir, t, n, &meta, 1, comm, err, sizeof err) == C_OK, "%s", err);
    double dt = common_now() - t0, mx;
    MPI_Allreduce(&dt, &mx, 1, MPI_DOUBLE, MPI_MAX, comm);
    best[0] = mx < best[0] ? mx : best[0];
    sum[0] += mx;
    snprintf(path, sizeof path, "%s/ckpt_%08d.h5", dir, r + 1);
    MPI_Barrier(comm);
    t0 = common_now();
    int has_optim = 0;
    CHECK(ckpt_load(path, t, n, NULL, &has_optim, comm, err, sizeof err) == C_OK, "%s", err);
    dt = common_now() - t0;
    MPI_Allreduce(&dt, &mx, 1, MPI_DOUBLE, MPI_MAX, comm);
    best[1] = mx < best[1] ? mx : best[1];
    sum[1] += mx;
    /* a resume: find the newest good file (its checksum pass), then load it (no second pass) */
    MPI_Barrier(comm);
    t0 = common_now();
    char found[1200];
    int none = 0;
    CHECK(ckpt_resolve("auto", dir, found, sizeof found, &none, comm, err, sizeof err) == C_OK,
          "%s", err);
    double t_resolve = common_now() - t0;
    CHECK(ckpt_load(found, t, n, NULL, &has_optim, comm, err, sizeof err) == C_OK, "%s", err);
    dt = common_now() - t0;
    double both[2] = {dt, t_resolve}, mxs[2];
    MPI_Allreduce(both, mxs, 2, MPI_DOUBLE, MPI_MAX, comm);
    for (int k = 0; k < 2; k++) {
      best[4 + k] = mxs[k] < best[4 + k] ? mxs[k] : best[4 + k];
      sum[4 + k] += mxs[k];
    }
    if (rank == 0) {
      size_t chunk = 8 << 20;
      char raw[1200];
      snprintf(raw, sizeof raw, "%s/posix.bin", dir);
      double w = posix_write(raw, (const char *)params, chunk, (size_t)bytes);
      double rd = posix_read(raw, (char *)params, chunk);
      unlink(raw);
      best[2] = w < best[2] ? w : best[2];
      best[3] = rd < best[3] ? rd : best[3];
      sum[2] += w;
      sum[3] += rd;
    }
  }
  if (rank == 0) {
    struct stat st;
    stat(path, &st);
    printf("ckpt bench: %.0f MB (3 x %.1f M floats: params + 2 Adam moments, %d tensors), "
           "%d ranks, %d reps, file %.1f MB in %s\n",
           bytes / 1e6, (double)n_params / 1e6, n, size, reps, (double)st.st_size / 1e6, dir);
    printf("%-40s %9s %9s %9s\n", "operation", "best s", "mean s", "MB/s");
    const char *what[6] = {"ckpt_save (collective HDF5, fsync)", "ckpt_load (+ checksum pass)",
                           "posix write(2)+fsync, rank 0", "posix read(2), rank 0 (cached?)",
                           "resume: ckpt_resolve + ckpt_load",
                           "  of which ckpt_resolve (checksums)"};
    for (int k = 0; k < 6; k++)
      printf("%-40s %9.3f %9.3f %9.1f\n", what[k], best[k], sum[k] / reps, bytes / 1e6 / best[k]);
    fflush(stdout);
  }
  MPI_Barrier(comm);
  if (rank == 0) { /* keep_last=1 left one checkpoint and latest */
    unlink(path);
    char p[1200];
    snprintf(p, sizeof p, "%s/latest", dir);
    unlink(p);
    rmdir(dir);
  }
  free(names);
  free(t);
  free(m);
  free(mom);
  free(params);
  MPI_Finalize();
  return 0;
}
