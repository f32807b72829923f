/* ckpt.c: checkpoints as parallel HDF5 files, written and read block by block (see ckpt.h).
 *
 * What it does: every tensor becomes a global float32 dataset with its PyTorch shape; each
 * rank writes the rectangle it owns (or, for ZeRO-1 moments, its flat slice of the local
 * block: up to three rectangles joined with H5S_SELECT_OR) with one collective MPI-IO
 * transfer per dataset; ranks with nothing to write select none but take part. A
 * layout-independent checksum per dataset (ckpt_hash_element summed over elements) is
 * verified on load by a pass in which the ranks split every dataset by rows. Saving is
 * atomic (write .tmp, close, fsync, rename, fsync the directory, then replace `latest` the
 * same way), old checkpoints are pruned, and readers fall back to the newest good file.
 * The checksum pass runs once per resume: ckpt_resolve remembers the file it verified, and
 * ckpt_load skips the pass for that file while its identity and mtime are unchanged.
 *
 * What it does not: it never gathers a tensor on one rank, it knows nothing of the model or
 * the optimizer (the caller describes blocks and slices), and it does not convert between
 * dtypes (float32 only). User-facing failures (missing, truncated, corrupt, wrong shape)
 * return C_ERR on every rank with one message; HDF5's error stack is never printed.
 */
#include "ckpt.h"
#include "debug.h"

#include "h5quiet.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define CKPT_FORMAT_VERSION 1
#define CKPT_MSG 1024                /* internal error message buffer */
#define CKPT_VERIFY_FLOATS (1 << 20) /* floats per read of the checksum pass (4 MB) */
#define CKPT_PATH 4096
#define CKPT_CLOSE_MARGIN (64 << 10) /* bytes free beyond the metadata still to write */

/* ---------------------------------------------------------------- small helpers */

static void msgf(char *msg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void msgf(char *msg, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, CKPT_MSG, fmt, ap);
  va_end(ap);
}

static void copy_err(char *err, size_t err_len, const char *msg) {
  if (err && err_len) snprintf(err, err_len, "%s", msg);
}

static hid_t fapl_mpio(MPI_Comm comm) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  CHECK(fapl >= 0, "H5Pcreate(file access) failed");
  CHECK(H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL) >= 0, "H5Pset_fapl_mpio failed");
  /* 1.8 object format: attributes over 64 KB (a long config) go to dense storage */
  CHECK(H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST) >= 0,
        "H5Pset_libver_bounds failed");
  return fapl;
}

static hid_t dxpl_collective(void) {
  hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
  CHECK(dxpl >= 0 && H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE) >= 0,
        "cannot make a collective transfer property list");
  return dxpl;
}

static int fsync_path(const char *path, int is_dir) {
  int fd = open(path, is_dir ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) return C_ERR;
  int rc = fsync(fd);
  close(fd);
  return rc == 0 ? C_OK : C_ERR;
}

/* 1 if name is exactly ckpt_<digits>.h5 (with suffix ".tmp" when tmp), step parsed. */
static int parse_ckpt_name(const char *name, int tmp, long long *step) {
  if (strncmp(name, "ckpt_", 5) != 0) return 0;
  const char *p = name + 5, *q = p;
  while (*q >= '0' && *q <= '9')
    q++;
  if (q == p || q - p > 18) return 0;
  if (strcmp(q, tmp ? ".h5.tmp" : ".h5") != 0) return 0;
  *step = strtoll(p, NULL, 10);
  return 1;
}

/* ---------------------------------------------------------------- checksums */

/* Sum of ckpt_hash_element over a run of n consecutive global flat indices. */
static uint64_t hash_run(uint64_t gidx0, const float *v, int64_t n) {
  uint64_t s = 0;
  for (int64_t k = 0; k < n; k++)
    s += ckpt_hash_element(gidx0 + (uint64_t)k, v[k]);
  return s;
}

/* This rank's rectangle of m: rows_local x cols_local at data (leading dimension ld). */
static uint64_t hash_block(const dmat *m) {
  uint64_t s = 0;
  for (int i = 0; i < m->rows_local; i++)
    s += hash_run((uint64_t)((m->row0 + i) * m->cols + m->col0), m->data + (int64_t)i * m->ld,
                  m->cols_local);
  return s;
}

/* Local flat indices [lo, hi) of the local block of m, values v[i - lo]. */
static uint64_t hash_flat(const dmat *m, int64_t lo, int64_t hi, const float *v) {
  uint64_t s = 0;
  int64_t cl = m->cols_local;
  for (int64_t i = lo; i < hi;) {
    int64_t r = i / cl, c = i % cl, len = cl - c < hi - i ? cl - c : hi - i;
    s += hash_run((uint64_t)((m->row0 + r) * m->cols + m->col0 + c), v + (i - lo), len);
    i += len;
  }
  return s;
}

/* ---------------------------------------------------------------- selections */

static void select_rect(hid_t fs, int is_vector, int first, int64_t r, int64_t c, int64_t nr,
                        int64_t nc) {
  H5S_seloper_t op = first ? H5S_SELECT_SET : H5S_SELECT_OR;
  herr_t rc;
  if (is_vector) { /* a vector has one row: r == 0, nr == 1 */
    hsize_t start = (hsize_t)c, count = (hsize_t)nc;
    rc = H5Sselect_hyperslab(fs, op, &start, NULL, &count, NULL);
  } else {
    hsize_t start[2] = {(hsize_t)r, (hsize_t)c}, count[2] = {(hsize_t)nr, (hsize_t)nc};
    rc = H5Sselect_hyperslab(fs, op, start, NULL, count, NULL);
  }
  CHECK(rc >= 0, "H5Sselect_hyperslab failed");
}

/* A memory space with nothing selected, for ranks that take part without data. */
static hid_t mem_none(void) {
  hsize_t one = 1;
  hid_t ms = H5Screate_simple(1, &one, NULL);
  CHECK(ms >= 0 && H5Sselect_none(ms) >= 0, "H5Sselect_none failed");
  return ms;
}

/* Select this rank's rectangle of m in fs and return the matching memory space of its
 * row-major block (rows_local x ld); none when !active or the block is empty. */
static hid_t select_block(hid_t fs, const dmat *m, int is_vector, int active) {
  if (!active || dmat_local_size(m) == 0) {
    CHECK(H5Sselect_none(fs) >= 0, "H5Sselect_none failed");
    return mem_none();
  }
  select_rect(fs, is_vector, 1, m->row0, m->col0, m->rows_local, m->cols_local);
  hsize_t mdims[2] = {(hsize_t)m->rows_local, (hsize_t)m->ld};
  hsize_t mstart[2] = {0, 0}, mcount[2] = {(hsize_t)m->rows_local, (hsize_t)m->cols_local};
  hid_t ms = H5Screate_simple(2, mdims, NULL);
  CHECK(ms >= 0 && H5Sselect_hyperslab(ms, H5S_SELECT_SET, mstart, NULL, mcount, NULL) >= 0,
        "cannot select the local block in memory");
  return ms;
}

/* Select local flat indices [lo, hi) of m's block in fs: a partial first row, whole middle
 * rows, a partial last row (in global coordinates), joined with OR. Returns a dense 1-D
 * memory space of hi - lo floats (none when empty). HDF5 transfers a hyperslab union in
 * row-major file order, which is the local flat order, so the dense buffer lines up. */
static hid_t select_flat(hid_t fs, const dmat *m, int is_vector, int64_t lo, int64_t hi) {
  if (hi <= lo) {
    CHECK(H5Sselect_none(fs) >= 0, "H5Sselect_none failed");
    return mem_none();
  }
  int64_t cl = m->cols_local;
  int64_t ra = lo / cl, ca = lo % cl, rb = (hi - 1) / cl, cb = (hi - 1) % cl;
  int first = 1;
  if (ra == rb) {
    select_rect(fs, is_vector, 1, m->row0 + ra, m->col0 + ca, 1, cb - ca + 1);
  } else {
    int64_t mid0 = ra, mid1 = rb; /* whole rows [mid0, mid1] */
    if (ca != 0) {
      select_rect(fs, is_vector, first, m->row0 + ra, m->col0 + ca, 1, cl - ca);
      first = 0;
      mid0 = ra + 1;
    }
    if (cb != cl - 1) mid1 = rb - 1;
    if (mid0 <= mid1) {
      select_rect(fs, is_vector, first, m->row0 + mid0, m->col0, mid1 - mid0 + 1, cl);
      first = 0;
    }
    if (cb != cl - 1) select_rect(fs, is_vector, first, m->row0 + rb, m->col0, 1, cb + 1);
  }
  hsize_t n = (hsize_t)(hi - lo);
  hid_t ms = H5Screate_simple(1, &n, NULL);
  CHECK(ms >= 0, "H5Screate_simple failed");
  return ms;
}

/* ---------------------------------------------------------------- attributes */

static int put_attr(hid_t loc, const char *name, hid_t ftype, hid_t mtype, const void *v) {
  hid_t sp = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(loc, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT);
  int ok = a >= 0 && H5Awrite(a, mtype, v) >= 0;
  if (a >= 0) H5Aclose(a);
  H5Sclose(sp);
  return ok ? C_OK : C_ERR;
}

static int put_str_attr(hid_t loc, const char *name, const char *s) {
  if (!s) s = "";
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, strlen(s) + 1);
  H5Tset_strpad(t, H5T_STR_NULLTERM);
  int rc = put_attr(loc, name, t, t, s);
  H5Tclose(t);
  return rc;
}

static int get_attr(hid_t loc, const char *name, hid_t mtype, void *v) {
  if (H5Aexists(loc, name) <= 0) return C_ERR;
  hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
  int ok = a >= 0 && H5Aread(a, mtype, v) >= 0;
  if (a >= 0) H5Aclose(a);
  return ok ? C_OK : C_ERR;
}

/* A fixed-length string attribute, malloc'd into *out. */
static int get_str_attr(hid_t loc, const char *name, char **out) {
  *out = NULL;
  if (H5Aexists(loc, name) <= 0) return C_ERR;
  hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
  if (a < 0) return C_ERR;
  hid_t ft = H5Aget_type(a);
  int ok = ft >= 0 && H5Tget_class(ft) == H5T_STRING && !H5Tis_variable_str(ft);
  if (ok) {
    size_t len = H5Tget_size(ft);
    hid_t mt = H5Tcopy(H5T_C_S1);
    H5Tset_size(mt, len + 1);
    H5Tset_strpad(mt, H5T_STR_NULLTERM);
    char *s = common_calloc(len + 2, 1);
    ok = H5Aread(a, mt, s) >= 0;
    H5Tclose(mt);
    if (ok)
      *out = s;
    else
      free(s);
  }
  if (ft >= 0) H5Tclose(ft);
  H5Aclose(a);
  return ok ? C_OK : C_ERR;
}

/* ---------------------------------------------------------------- argument checks */

static void dsname(char *buf, size_t len, const char *group, const char *name) {
  CHECK(snprintf(buf, len, "%s/%s", group, name) < (int)len, "tensor name too long: %s", name);
}

/* Programming errors in the tensor list abort; a list that differs between ranks too (it
 * would otherwise hang in a collective). Collective on comm. */
static void check_tensors(const ckpt_tensor *t, int n, int reading, MPI_Comm comm) {
  uint64_t h = 1469598103934665603ULL; /* FNV-1a over names and shapes */
  for (int i = 0; i < n; i++) {
    const dmat *m = t[i].param;
    CHECK(t[i].name && t[i].name[0] && !strchr(t[i].name, '/'),
          "ckpt: tensor %d has no name or a '/' in it", i);
    CHECK(m, "ckpt: tensor %s has no param", t[i].name);
    CHECK(m->rows >= 0 && m->cols >= 0 && m->row0 >= 0 && m->col0 >= 0 && m->rows_local >= 0 &&
              m->cols_local >= 0 && m->row0 + m->rows_local <= m->rows &&
              m->col0 + m->cols_local <= m->cols && m->ld >= m->cols_local,
          "ckpt: tensor %s: block rows [%lld,+%d) cols [%lld,+%d) ld %d outside %lldx%lld",
          t[i].name, (long long)m->row0, m->rows_local, (long long)m->col0, m->cols_local, m->ld,
          (long long)m->rows, (long long)m->cols);
    CHECK(!t[i].is_vector || m->rows == 1, "ckpt: vector %s has %lld rows", t[i].name,
          (long long)m->rows);
    CHECK(dmat_local_size(m) == 0 || m->data || (!reading && !t[i].write_param),
          "ckpt: tensor %s has no data", t[i].name);
    if (t[i].exp_avg) {
      CHECK(t[i].exp_avg_sq, "ckpt: tensor %s has exp_avg but no exp_avg_sq", t[i].name);
      CHECK(0 <= t[i].opt_lo && t[i].opt_lo <= t[i].opt_hi && t[i].opt_hi <= dmat_local_size(m),
            "ckpt: tensor %s: moment slice [%lld,%lld) outside its local block of %lld", t[i].name,
            (long long)t[i].opt_lo, (long long)t[i].opt_hi, (long long)dmat_local_size(m));
    }
    for (const char *p = t[i].name; *p; p++)
      h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    int64_t f[3] = {m->rows, m->cols, t[i].is_vector};
    for (int k = 0; k < 3; k++)
      h = (h ^ (uint64_t)f[k]) * 1099511628211ULL;
  }
  uint64_t v[2] = {h, ~h}, mx[2];
  MPI_CHECK(MPI_Allreduce(v, mx, 2, MPI_UINT64_T, MPI_MAX, comm));
  CHECK(mx[0] == ~mx[1], "ckpt: the ranks pass different tensor lists (names or shapes)");
}

/* ---------------------------------------------------------------- save */

/* Which ranks write a tensor's moments. Slices that together cover the tensor once (ZeRO-1,
 * or TP blocks) are all written; if they cover it more than once (zero=0: every DP replica
 * holds all of its block) only the write_param ranks write. Returns 1 = all, 2 =
 * write_param ranks, 0 = neither covers the tensor exactly (an error). */
static int moment_writers(int64_t total, int64_t sum_all, int64_t sum_wp) {
  if (sum_all == total) return 1;
  if (sum_wp == total) return 2;
  return 0;
}

/* Create dataset `path` (float32, contiguous, (rows, cols) or (cols)), write this rank's
 * selection collectively and attach the checksum. kind 0: m's block; kind 1: flat slice
 * [lo, hi) of values v. On failure *eno is errno right after the failing call. Collective;
 * the caller agrees on the result before the next collective call. */
static int put_dataset(hid_t file, const char *path, const dmat *m, int is_vector, int kind,
                       int active, int64_t lo, int64_t hi, const float *v, uint64_t checksum,
                       hid_t dcpl, hid_t dxpl, int *eno) {
  hsize_t dims[2] = {(hsize_t)m->rows, (hsize_t)m->cols};
  hid_t fs = is_vector ? H5Screate_simple(1, &dims[1], NULL) : H5Screate_simple(2, dims, NULL);
  CHECK(fs >= 0, "H5Screate_simple failed");
  errno = 0;
  hid_t ds = H5Dcreate2(file, path, H5T_IEEE_F32LE, fs, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  int ok = ds >= 0;
  *eno = errno;
  if (ok) {
    static const float dummy = 0;
    hid_t ms;
    const float *buf;
    if (kind == 0) {
      ms = select_block(fs, m, is_vector, active);
      buf = active && dmat_local_size(m) ? m->data : &dummy;
    } else {
      ms = select_flat(fs, m, is_vector, active ? lo : 0, active ? hi : 0);
      buf = active && hi > lo ? v : &dummy;
    }
    errno = 0;
    ok = H5Dwrite(ds, H5T_NATIVE_FLOAT, ms, fs, dxpl, buf) >= 0;
    if (ok) ok = put_attr(ds, "checksum", H5T_STD_U64LE, H5T_NATIVE_UINT64, &checksum) == C_OK;
    *eno = errno;
    H5Sclose(ms);
    H5Dclose(ds);
  }
  H5Sclose(fs);
  return ok ? C_OK : C_ERR;
}

/* What the phases of one save share. */
typedef struct save_job {
  const char *dir;
  const ckpt_tensor *t;
  int n;
  char fname[64], tmp[CKPT_PATH], final[CKPT_PATH];
  int with_optim;   /* some rank passed moments */
  int *mw;          /* (n) moment_writers per tensor */
  uint64_t *cs_sum; /* (3n + 1) checksums: param, exp_avg, exp_avg_sq per tensor */
  hid_t file;       /* the open .tmp, or -1 */
} save_job;

/* msg = "<tmp>: <what> failed: <reason>", the reason found from errno or the disk. */
static void write_failed(char *msg, const save_job *j, const char *what, int eno) {
  msgf(msg, "%s: %s failed: %s; checkpoint not saved (latest unchanged)", j->tmp, what,
       common_strerror(common_write_errno(j->dir, eno)));
}

/* Phase 1 (collective): the names, the directory, who writes what, the checksums. Every
 * rank learns of a failure (bad arguments from the caller, an unwritable directory). */
static int save_plan(save_job *j, const ckpt_meta *meta, MPI_Comm comm, char *msg) {
  int rank, bad = 0;
  MPI_CHECK(MPI_Comm_rank(comm, &rank));
  const ckpt_tensor *t = j->t;
  int n = j->n;
  snprintf(j->fname, sizeof j->fname, "ckpt_%08lld.h5", (long long)meta->step);
  bad = snprintf(j->tmp, sizeof j->tmp, "%s/%s.tmp", j->dir, j->fname) >= (int)sizeof j->tmp;
  snprintf(j->final, sizeof j->final, "%s/%s", j->dir, j->fname);
  if (bad)
    msgf(msg, "%s: path too long", j->dir);
  else if (rank == 0)
    bad = common_mkdir_p(j->dir, msg, CKPT_MSG) != C_OK;
  if (common_agree(comm, bad, msg, CKPT_MSG)) return C_ERR;

  /* who writes what: per tensor, the elements owned by writers of params and moments */
  int64_t *cov = common_calloc((size_t)(3 * n + 1), sizeof(int64_t)),
          *cov_sum = common_calloc((size_t)(3 * n + 1), sizeof(int64_t));
  for (int i = 0; i < n; i++) {
    int64_t nm = t[i].exp_avg ? t[i].opt_hi - t[i].opt_lo : 0;
    cov[3 * i] = t[i].write_param ? dmat_local_size(t[i].param) : 0;
    cov[3 * i + 1] = nm;
    cov[3 * i + 2] = t[i].write_param ? nm : 0;
    if (t[i].exp_avg) cov[3 * n] = 1;
  }
  MPI_CHECK(MPI_Allreduce(cov, cov_sum, 3 * n + 1, MPI_INT64_T, MPI_SUM, comm));
  j->with_optim = cov_sum[3 * n] > 0;
  j->mw = common_calloc((size_t)n + 1, sizeof(int));
  for (int i = 0; i < n && !bad; i++) {
    int64_t total = t[i].param->rows * t[i].param->cols;
    if (cov_sum[3 * i] != total) {
      msgf(msg, "ckpt_save %s: the ranks with write_param=1 own %lld elements of %s, expected %lld",
           j->dir, (long long)cov_sum[3 * i], t[i].name, (long long)total);
      bad = 1;
    } else if (j->with_optim &&
               !(j->mw[i] = moment_writers(total, cov_sum[3 * i + 1], cov_sum[3 * i + 2]))) {
      msgf(msg,
           "ckpt_save %s: the moment slices of %s cover %lld elements (%lld on write_param "
           "ranks), expected %lld: slices must be disjoint and cover the tensor",
           j->dir, t[i].name, (long long)cov_sum[3 * i + 1], (long long)cov_sum[3 * i + 2],
           (long long)total);
      bad = 1;
    }
  }
  free(cov);
  free(cov_sum);
  if (bad) return C_ERR; /* every rank computed the same verdict from the same sums */

  /* checksums: each rank sums what it writes, writers are disjoint */
  uint64_t *cs = common_calloc((size_t)(3 * n + 1), sizeof(uint64_t));
  j->cs_sum = common_calloc((size_t)(3 * n + 1), sizeof(uint64_t));
  for (int i = 0; i < n; i++) {
    const ckpt_tensor *x = &t[i];
    if (x->write_param) cs[3 * i] = hash_block(x->param);
    int mine = x->exp_avg && (j->mw[i] == 1 || x->write_param);
    if (j->with_optim && mine) {
      cs[3 * i + 1] = hash_flat(x->param, x->opt_lo, x->opt_hi, x->exp_avg);
      cs[3 * i + 2] = hash_flat(x->param, x->opt_lo, x->opt_hi, x->exp_avg_sq);
    }
  }
  MPI_CHECK(MPI_Allreduce(cs, j->cs_sum, 3 * n + 1, MPI_UINT64_T, MPI_SUM, comm));
  free(cs);
  return C_OK;
}

/* Phase 2 (collective): create DIR/ckpt_<step>.h5.tmp on every rank. */
static int save_open_tmp(save_job *j, MPI_Comm comm, char *msg) {
  hid_t fapl = fapl_mpio(comm);
  errno = 0;
  j->file = H5Fcreate(j->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  int eno = errno;
  H5Pclose(fapl);
  if (j->file < 0) write_failed(msg, j, "creating the file", eno);
  if (common_agree(comm, j->file < 0, msg, CKPT_MSG)) return C_ERR;
  return C_OK;
}

/* Phase 3 (collective): the groups and every dataset. All ranks agree after each dataset,
 * so that a rank whose write failed (disk full on its part of the file) never leaves the
 * others waiting in the next collective create or write. */
static int save_write_tensors(save_job *j, MPI_Comm comm, char *msg) {
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  CHECK(dcpl >= 0 && H5Pset_layout(dcpl, H5D_CONTIGUOUS) >= 0 &&
            H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) >= 0,
        "cannot make the dataset creation property list");
  hid_t dxpl = dxpl_collective();
  const char *groups[] = {"/model", "/optim", "/optim/exp_avg", "/optim/exp_avg_sq"};
  int bad = 0, eno = 0;
  for (int k = 0; k < (j->with_optim ? 4 : 1) && !bad; k++) {
    errno = 0;
    hid_t gr = H5Gcreate2(j->file, groups[k], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (gr < 0) write_failed(msg, j, "creating a group", errno);
    bad = common_agree(comm, gr < 0, msg, CKPT_MSG);
    if (gr >= 0) H5Gclose(gr);
  }
  char path[CKPT_PATH], what[CKPT_PATH + 16];
  for (int i = 0; i < j->n && !bad; i++) {
    const ckpt_tensor *x = &j->t[i];
    const uint64_t *cs = &j->cs_sum[3 * i];
    int mine = x->exp_avg && (j->mw[i] == 1 || x->write_param);
    for (int k = 0; k < (j->with_optim ? 3 : 1) && !bad; k++) {
      int fail;
      if (k == 0) {
        dsname(path, sizeof path, "/model", x->name);
        fail = put_dataset(j->file, path, x->param, x->is_vector, 0, x->write_param, 0, 0, NULL,
                           cs[0], dcpl, dxpl, &eno) != C_OK;
      } else {
        dsname(path, sizeof path, k == 1 ? "/optim/exp_avg" : "/optim/exp_avg_sq", x->name);
        fail = put_dataset(j->file, path, x->param, x->is_vector, 1, mine, x->opt_lo, x->opt_hi,
                           k == 1 ? x->exp_avg : x->exp_avg_sq, cs[k], dcpl, dxpl, &eno) != C_OK;
      }
      if (fail) {
        snprintf(what, sizeof what, "writing %s", path);
        write_failed(msg, j, what, eno);
      }
      bad = common_agree(comm, fail, msg, CKPT_MSG);
    }
  }
  H5Pclose(dcpl);
  H5Pclose(dxpl);
  return bad ? C_ERR : C_OK;
}

/* Rank 0, before the close: room for what the close still writes. HDF5 has allocated file
 * space for its metadata (object headers, attributes) but writes most of it only at the
 * close, from several ranks with barriers in between; a disk that fills during that flush
 * fails one rank and leaves the others in a barrier. So: the file's size less what it has
 * allocated on disk, plus a margin, must be free. C_ERR with *eno = ENOSPC otherwise. */
static int room_to_close(const save_job *j, int *eno) {
  hsize_t size = 0;
  struct stat st;
  struct statvfs vs;
  if (H5Fget_filesize(j->file, &size) < 0 || stat(j->tmp, &st) != 0 || statvfs(j->dir, &vs) != 0)
    return C_OK; /* no estimate: let the close tell */
  uint64_t have = (uint64_t)st.st_blocks * 512, need = size > have ? size - have : 0;
  need += CKPT_CLOSE_MARGIN;
  if ((uint64_t)vs.f_bavail * vs.f_frsize >= need) return C_OK;
  *eno = ENOSPC;
  return C_ERR;
}

/* Phase 4 (collective): the root attributes ("complete" last), then the collective close,
 * which flushes what HDF5 still holds. The file is closed on every path. After a failure
 * rank 0 first empties the .tmp (the disk is full: the close's own writes would fail on
 * one rank and hang the others), and the close goes through. */
static int save_close(save_job *j, const ckpt_meta *meta, int ok_so_far, MPI_Comm comm, char *msg) {
  int rank, bad = !ok_so_far;
  MPI_CHECK(MPI_Comm_rank(comm, &rank));
  if (!bad) {
    int32_t version = CKPT_FORMAT_VERSION, complete = 1;
    hid_t f = j->file;
    errno = 0;
    int ok = put_attr(f, "format_version", H5T_STD_I32LE, H5T_NATIVE_INT32, &version) == C_OK;
    const char *i64n[] = {"step", "epoch", "batch_in_epoch", "tokens_seen"};
    const int64_t *i64v[] = {&meta->step, &meta->epoch, &meta->batch_in_epoch, &meta->tokens_seen};
    for (int k = 0; k < 4; k++)
      ok = ok && put_attr(f, i64n[k], H5T_STD_I64LE, H5T_NATIVE_INT64, i64v[k]) == C_OK;
    ok = ok && put_attr(f, "seed", H5T_STD_U64LE, H5T_NATIVE_UINT64, &meta->seed) == C_OK;
    ok = ok && put_attr(f, "lr", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &meta->lr) == C_OK;
    ok = ok && put_attr(f, "wall_seconds", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE,
                        &meta->wall_seconds) == C_OK;
    ok = ok && put_str_attr(f, "layout", meta->layout) == C_OK;
    ok = ok && put_str_attr(f, "config", meta->config_text) == C_OK;
    ok = ok && put_attr(f, "complete", H5T_STD_I32LE, H5T_NATIVE_INT32, &complete) == C_OK;
    int eno = errno;
    if (ok && rank == 0 && room_to_close(j, &eno) != C_OK) {
      write_failed(msg, j, "closing (no room for the metadata)", eno);
      ok = 0;
    } else if (!ok) {
      write_failed(msg, j, "writing the attributes", eno);
    }
    bad = common_agree(comm, !ok, msg, CKPT_MSG);
  }
  if (bad) {
    if (rank == 0 && truncate(j->tmp, 0) != 0)
      fprintf(stderr, "ckpt: warning: cannot empty %s: %s\n", j->tmp, strerror(errno));
    MPI_CHECK(MPI_Barrier(comm)); /* emptied before any rank's close writes */
  }
  errno = 0;
  int fail = H5Fclose(j->file) < 0; /* collective */
  int eno = errno;
  j->file = -1;
  if (bad) return C_ERR; /* msg is already agreed */
  if (fail) write_failed(msg, j, "closing (flushing) the file", eno);
  return common_agree(comm, fail, msg, CKPT_MSG) ? C_ERR : C_OK;
}

/* Phase 5 (rank 0): make DIR/ckpt_<step>.h5 durable and visible (fsync, rename, fsync the
 * directory), then point DIR/latest at it the same way. A failure before latest is replaced
 * leaves the previous state as it was. */
static int save_publish(const save_job *j, char *msg) {
  char ltmp[CKPT_PATH], latest[CKPT_PATH];
  snprintf(ltmp, sizeof ltmp, "%s/latest.tmp", j->dir);
  snprintf(latest, sizeof latest, "%s/latest", j->dir);
  if (fsync_path(j->tmp, 0) != C_OK) {
    write_failed(msg, j, "fsync", errno);
    unlink(j->tmp);
    return C_ERR;
  }
  if (rename(j->tmp, j->final) != 0) {
    msgf(msg, "%s: cannot rename to %s: %s", j->tmp, j->final, strerror(errno));
    unlink(j->tmp);
    return C_ERR;
  }
  if (fsync_path(j->dir, 1) != C_OK) {
    msgf(msg, "%s: fsync of the directory failed: %s", j->dir, strerror(errno));
    return C_ERR;
  }
  int fd = open(ltmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  size_t len = strlen(j->fname);
  errno = 0;
  int ok = fd >= 0 && write(fd, j->fname, len) == (ssize_t)len && write(fd, "\n", 1) == 1 &&
           fsync(fd) == 0;
  int eno = errno;
  if (fd >= 0) ok = (close(fd) == 0) && ok;
  if (ok && rename(ltmp, latest) != 0) ok = 0, eno = errno;
  if (ok && fsync_path(j->dir, 1) != C_OK) ok = 0, eno = errno;
  if (!ok) {
    msgf(msg, "%s: cannot update %s to name %s: %s", j->dir, latest, j->fname,
         common_strerror(common_write_errno(j->dir, eno)));
    unlink(ltmp);
    return C_ERR;
  }
  return C_OK;
}

/* Phase 6 (rank 0): remove stale .tmp files of killed saves and keep the newest keep_last
 * checkpoints. Failures are warnings: the new checkpoint is safe. */
static void save_prune(const save_job *j, int keep_last) {
  DIR *d = opendir(j->dir);
  if (!d) return;
  long long cur;
  CHECK(parse_ckpt_name(j->fname, 0, &cur), "bad checkpoint name %s", j->fname);
  int cap = 16, cnt = 0;
  long long *steps = common_malloc(sizeof(long long) * (size_t)cap);
  struct dirent *e;
  char p[CKPT_PATH];
  while ((e = readdir(d))) {
    long long s;
    if (parse_ckpt_name(e->d_name, 1, &s)) { /* a stale .tmp of a killed save */
      snprintf(p, sizeof p, "%s/%s", j->dir, e->d_name);
      if (unlink(p) != 0) fprintf(stderr, "ckpt: warning: cannot remove %s\n", p);
    } else if (parse_ckpt_name(e->d_name, 0, &s) && s != cur) {
      if (cnt == cap) steps = realloc(steps, sizeof(long long) * (size_t)(cap *= 2));
      CHECK(steps, "out of memory");
      steps[cnt++] = s;
    }
  }
  closedir(d);
  if (keep_last > 0) {
    /* keep the one just written and the keep_last - 1 highest steps among the others */
    for (int i = 1; i < cnt; i++) /* insertion sort, descending */
      for (int k = i; k > 0 && steps[k] > steps[k - 1]; k--) {
        long long x = steps[k];
        steps[k] = steps[k - 1];
        steps[k - 1] = x;
      }
    for (int i = keep_last - 1; i < cnt; i++) {
      snprintf(p, sizeof p, "%s/ckpt_%08lld.h5", j->dir, steps[i]);
      if (unlink(p) != 0) fprintf(stderr, "ckpt: warning: cannot remove %s\n", p);
    }
    fsync_path(j->dir, 1);
  }
  free(steps);
}

int ckpt_save(const char *dir, const ckpt_tensor *t, int n, const ckpt_meta *meta, int keep_last,
              MPI_Comm comm, char *err, size_t err_len) {
  char msg[CKPT_MSG] = "";
  int rank, rc = C_ERR;
  MPI_CHECK(MPI_Comm_rank(comm, &rank));
  CHECK(dir && meta && meta->step >= 0 && n >= 0, "ckpt_save: bad arguments");
  DEBUG_AGREE(comm, meta->step, meta->epoch, meta->batch_in_epoch, keep_last);
  check_tensors(t, n, 0, comm);
  h5quiet q;
  h5quiet_begin(&q);
  save_job j = {.dir = dir, .t = t, .n = n, .file = -1};
  if (save_plan(&j, meta, comm, msg) != C_OK || save_open_tmp(&j, comm, msg) != C_OK) goto out;
  int ok = save_write_tensors(&j, comm, msg) == C_OK;
  if (save_close(&j, meta, ok, comm, msg) != C_OK) {
    if (rank == 0) unlink(j.tmp);
    goto out;
  }
  int bad = rank == 0 && save_publish(&j, msg) != C_OK;
  if (common_agree(comm, bad, msg, CKPT_MSG)) goto out;
  if (rank == 0) save_prune(&j, keep_last);
  rc = C_OK;
out:
  free(j.mw);
  free(j.cs_sum);
  h5quiet_end(&q);
  if (rc != C_OK) copy_err(err, err_len, msg);
  return rc;
}

/* ---------------------------------------------------------------- load */

/* Open PATH read-only on every rank and check that it is a complete checkpoint of our
 * format. Returns the file id, or -1 on every rank with msg set. Collective. */
static hid_t open_ckpt(const char *path, MPI_Comm comm, char *msg) {
  int rank, bad = 0;
  MPI_CHECK(MPI_Comm_rank(comm, &rank));
  if (rank == 0) {
    struct stat st;
    if (stat(path, &st) != 0) {
      msgf(msg, "%s: no such file (%s)", path, strerror(errno));
      bad = 1;
    } else if (S_ISDIR(st.st_mode)) {
      msgf(msg, "%s: is a directory (name a ckpt_*.h5 file, or resume from the directory)", path);
      bad = 1;
    }
  }
  if (common_agree(comm, bad, msg, CKPT_MSG)) return -1;
  hid_t fapl = fapl_mpio(comm);
  hid_t file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
  H5Pclose(fapl);
  if (file < 0) msgf(msg, "%s: not a readable HDF5 file (truncated or corrupt?)", path);
  if (common_agree(comm, file < 0, msg, CKPT_MSG)) {
    if (file >= 0) H5Fclose(file);
    return -1;
  }
  int32_t complete = 0, version = 0;
  if (get_attr(file, "complete", H5T_NATIVE_INT32, &complete) != C_OK || complete != 1) {
    msgf(msg, "%s: incomplete checkpoint (no 'complete' attribute)", path);
    bad = 1;
  } else if (get_attr(file, "format_version", H5T_NATIVE_INT32, &version) != C_OK ||
             version != CKPT_FORMAT_VERSION) {
    msgf(msg, "%s: checkpoint format_version %d, this program reads version %d", path, version,
         CKPT_FORMAT_VERSION);
    bad = 1;
  }
  if (common_agree(comm, bad, msg, CKPT_MSG)) {
    H5Fclose(file);
    return -1;
  }
  return file;
}

static int read_meta_attrs(hid_t file, const char *path, ckpt_meta *meta, char *msg) {
  memset(meta, 0, sizeof *meta);
  const char *i64n[] = {"step", "epoch", "batch_in_epoch", "tokens_seen"};
  int64_t *i64v[] = {&meta->step, &meta->epoch, &meta->batch_in_epoch, &meta->tokens_seen};
  const char *bad = NULL;
  for (int k = 0; k < 4 && !bad; k++)
    if (get_attr(file, i64n[k], H5T_NATIVE_INT64, i64v[k]) != C_OK) bad = i64n[k];
  if (!bad && get_attr(file, "seed", H5T_NATIVE_UINT64, &meta->seed) != C_OK) bad = "seed";
  if (!bad && get_attr(file, "lr", H5T_NATIVE_DOUBLE, &meta->lr) != C_OK) bad = "lr";
  if (!bad && get_attr(file, "wall_seconds", H5T_NATIVE_DOUBLE, &meta->wall_seconds) != C_OK)
    bad = "wall_seconds";
  char *layout = NULL;
  if (!bad && get_str_attr(file, "layout", &layout) != C_OK) bad = "layout";
  if (layout) snprintf(meta->layout, sizeof meta->layout, "%s", layout);
  free(layout);
  if (!bad && get_str_attr(file, "config", &meta->config_text) != C_OK) bad = "config";
  if (bad) {
    msgf(msg, "%s: attribute '%s' missing or unreadable (corrupt?)", path, bad);
    free(meta->config_text);
    meta->config_text = NULL;
    return C_ERR;
  }
  return C_OK;
}

static void shape_str(char *buf, size_t len, int nd, const hsize_t *d) {
  if (nd == 1)
    snprintf(buf, len, "(%llu)", (unsigned long long)d[0]);
  else if (nd == 2)
    snprintf(buf, len, "(%llu,%llu)", (unsigned long long)d[0], (unsigned long long)d[1]);
  else
    snprintf(buf, len, "(%d dimensions)", nd);
}

/* 1 if every link of an absolute path exists (H5Lexists needs the parents to exist). */
static int path_exists(hid_t file, const char *path) {
  char buf[CKPT_PATH];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1;; p++) {
    if (*p != '/' && *p != '\0') continue;
    char c = *p;
    *p = '\0';
    if (H5Lexists(file, buf, H5P_DEFAULT) <= 0) return 0;
    *p = c;
    if (c == '\0') return 1;
  }
}

/* Check that dataset group/name exists with the tensor's shape. Not collective. */
static int check_shape(hid_t file, const char *file_path, const char *group, const ckpt_tensor *x,
                       char *msg) {
  char path[CKPT_PATH];
  dsname(path, sizeof path, group, x->name);
  if (!path_exists(file, path)) {
    msgf(msg, "%s: dataset %s missing", file_path, path);
    return C_ERR;
  }
  hid_t ds = H5Dopen2(file, path, H5P_DEFAULT);
  hid_t fs = ds >= 0 ? H5Dget_space(ds) : -1;
  int nd = fs >= 0 ? H5Sget_simple_extent_ndims(fs) : -1;
  hsize_t d[2] = {0, 0};
  if (nd >= 1 && nd <= 2) H5Sget_simple_extent_dims(fs, d, NULL);
  hid_t ty = ds >= 0 ? H5Dget_type(ds) : -1;
  int is_float = ty >= 0 && H5Tget_class(ty) == H5T_FLOAT;
  if (ty >= 0) H5Tclose(ty);
  if (fs >= 0) H5Sclose(fs);
  if (ds >= 0) H5Dclose(ds);
  if (nd < 0 || !is_float) {
    msgf(msg, "%s: cannot read dataset %s (corrupt, or not float)?", file_path, path);
    return C_ERR;
  }
  const dmat *m = x->param;
  hsize_t want[2] = {(hsize_t)m->rows, (hsize_t)m->cols};
  int want_nd = x->is_vector ? 1 : 2;
  if (x->is_vector) want[0] = (hsize_t)m->cols;
  if (nd != want_nd || d[0] != want[0] || (nd == 2 && d[1] != want[1])) {
    char have_s[64], want_s[64];
    shape_str(have_s, sizeof have_s, nd, d);
    shape_str(want_s, sizeof want_s, want_nd, want);
    msgf(msg, "%s: %s has shape %s, the model expects %s", file_path, path, have_s, want_s);
    return C_ERR;
  }
  return C_OK;
}

typedef struct {
  char **names;
  int n, cap;
} name_list;

static herr_t list_cb(hid_t g, const char *name, const H5L_info_t *info, void *op) {
  name_list *l = op;
  if (l->n == l->cap) {
    l->cap = l->cap ? 2 * l->cap : 64;
    l->names = realloc(l->names, sizeof(char *) * (size_t)l->cap);
    CHECK(l->names, "out of memory");
  }
  l->names[l->n] = strdup(name);
  CHECK(l->names[l->n], "out of memory");
  l->n++;
  return 0;
}

/* This rank's share of dataset ds in the checksum pass: its contiguous band of rows (1-D:
 * of elements), read independently in pieces of about CKPT_VERIFY_FLOATS. Returns C_ERR if
 * a read fails. Not collective. */
static int hash_share(hid_t ds, int rank, int size, uint64_t *sum) {
  *sum = 0;
  hid_t fs = H5Dget_space(ds);
  int nd = fs >= 0 ? H5Sget_simple_extent_ndims(fs) : -1;
  if (nd < 1 || nd > 2) {
    if (fs >= 0) H5Sclose(fs);
    return C_ERR;
  }
  hsize_t d[2] = {0, 1};
  H5Sget_simple_extent_dims(fs, d, NULL);
  int64_t rows = (int64_t)d[0], cols = nd == 2 ? (int64_t)d[1] : 1;
  int64_t r0 = dmat_block_start(rows, rank, size), nr = dmat_block_count(rows, rank, size);
  int64_t piece = cols > 0 && CKPT_VERIFY_FLOATS / cols > 0 ? CKPT_VERIFY_FLOATS / cols : 1;
  float *buf = nr > 0 && cols > 0 ? common_malloc(sizeof(float) * (size_t)(piece * cols)) : NULL;
  int ok = 1;
  for (int64_t r = r0; r < r0 + nr && cols > 0 && ok; r += piece) {
    int64_t k = r0 + nr - r < piece ? r0 + nr - r : piece;
    hsize_t start[2] = {(hsize_t)r, 0}, count[2] = {(hsize_t)k, (hsize_t)cols},
            mn = (hsize_t)(k * cols);
    ok = H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) >= 0;
    hid_t ms = H5Screate_simple(1, &mn, NULL);
    ok = ok && ms >= 0 && H5Dread(ds, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, buf) >= 0;
    if (ms >= 0) H5Sclose(ms);
    if (ok) *sum += hash_run((uint64_t)(r * cols), buf, k * cols);
  }
  free(buf);
  H5Sclose(fs);
  return ok ? C_OK : C_ERR;
}

/* The checksum pass over every dataset of /model (and of the moments when with_optim and
 * the file has them): each
 * rank hashes its band, one allreduce, then every rank compares with the attributes and
 * reports the first bad dataset in name order. Collective. */
static int verify_file(hid_t file, const char *file_path, int with_optim, MPI_Comm comm,
                       char *msg) {
  int rank, size;
  MPI_CHECK(MPI_Comm_rank(comm, &rank));
  MPI_CHECK(MPI_Comm_size(comm, &size));
  const char *groups[] = {"/model", "/optim/exp_avg", "/optim/exp_avg_sq"};
  name_list all = {0};
  int bad = 0;
  for (int k = 0; k < (with_optim ? 3 : 1) && !bad; k++) {
    if (k > 0 && !path_exists(file, "/optim")) break; /* saved without moments */
    name_list l = {0};
    hid_t g = path_exists(file, groups[k]) ? H5Gopen2(file, groups[k], H5P_DEFAULT) : -1;
    if (g < 0 || H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, NULL, list_cb, &l) < 0) {
      msgf(msg, "%s: group %s missing or unreadable (corrupt?)", file_path, groups[k]);
      bad = 1;
    }
    if (g >= 0) H5Gclose(g);
    for (int i = 0; i < l.n; i++) {
      char p[CKPT_PATH];
      dsname(p, sizeof p, groups[k], l.names[i]);
      free(l.names[i]);
      if (all.n == all.cap) {
        all.cap = all.cap ? 2 * all.cap : 64;
        all.names = realloc(all.names, sizeof(char *) * (size_t)all.cap);
        CHECK(all.names, "out of memory");
      }
      all.names[all.n++] = strdup(p);
    }
    free(l.names);
  }
  /* the listing is read from the same file by every rank, but agree before collectives */
  int n = bad ? -1 : all.n, nmin, nmax;
  MPI_CHECK(MPI_Allreduce(&n, &nmin, 1, MPI_INT, MPI_MIN, comm));
  MPI_CHECK(MPI_Allreduce(&n, &nmax, 1, MPI_INT, MPI_MAX, comm));
  if (nmin != nmax) {
    if (!bad) msgf(msg, "%s: unreadable group listing (corrupt?)", file_path);
    bad = 1;
  }
  if (common_agree(comm, bad, msg, CKPT_MSG)) goto out;
  /* per dataset: [0] status (0 ok, 1 unreadable, 2 no checksum) max-reduced, sums summed */
  int *st = common_calloc((size_t)n + 1, sizeof(int)),
      *st_max = common_calloc((size_t)n + 1, sizeof(int));
  uint64_t *s = common_calloc((size_t)n + 1, sizeof(uint64_t)),
           *s_sum = common_calloc((size_t)n + 1, sizeof(uint64_t)),
           *want = common_calloc((size_t)n + 1, sizeof(uint64_t));
  for (int i = 0; i < n; i++) {
    hid_t ds = H5Dopen2(file, all.names[i], H5P_DEFAULT);
    if (ds < 0 || hash_share(ds, rank, size, &s[i]) != C_OK)
      st[i] = 1;
    else if (get_attr(ds, "checksum", H5T_NATIVE_UINT64, &want[i]) != C_OK)
      st[i] = 2;
    if (ds >= 0) H5Dclose(ds);
  }
  MPI_CHECK(MPI_Allreduce(st, st_max, n, MPI_INT, MPI_MAX, comm));
  MPI_CHECK(MPI_Allreduce(s, s_sum, n, MPI_UINT64_T, MPI_SUM, comm));
  for (int i = 0; i < n && !bad; i++) {
    if (st_max[i] == 1)
      msgf(msg, "%s: cannot read %s (truncated or corrupt?)", file_path, all.names[i]);
    else if (st_max[i] == 2)
      msgf(msg, "%s: %s has no checksum attribute (corrupt?)", file_path, all.names[i]);
    else if (s_sum[i] != want[i])
      msgf(msg, "%s: checksum mismatch in %s (corrupted)", file_path, all.names[i]);
    bad = st_max[i] != 0 || s_sum[i] != want[i];
  }
  /* every rank read the same attribute, but a rank with a different view must not diverge */
  bad = common_agree(comm, bad, msg, CKPT_MSG);
  free(st);
  free(st_max);
  free(s);
  free(s_sum);
  free(want);
out:
  for (int i = 0; i < all.n; i++)
    free(all.names[i]);
  free(all.names);
  return bad ? C_ERR : C_OK;
}

/* Read this rank's selection of group/name collectively (kind 0: param block; kind 1: the
 * moment slice into v). */
static int get_dataset(hid_t file, const char *group, const ckpt_tensor *x, int kind, float *v,
                       hid_t dxpl) {
  char path[CKPT_PATH];
  dsname(path, sizeof path, group, x->name);
  hid_t ds = H5Dopen2(file, path, H5P_DEFAULT);
  CHECK(ds >= 0, "ckpt: %s vanished between the checks and the read", path);
  hid_t fs = H5Dget_space(ds);
  static float dummy;
  hid_t ms;
  float *buf;
  if (kind == 0) {
    ms = select_block(fs, x->param, x->is_vector, 1);
    buf = dmat_local_size(x->param) ? x->param->data : &dummy;
  } else {
    int active = v != NULL;
    ms = select_flat(fs, x->param, x->is_vector, active ? x->opt_lo : 0, active ? x->opt_hi : 0);
    buf = active && x->opt_hi > x->opt_lo ? v : &dummy;
  }
  int ok = H5Dread(ds, H5T_NATIVE_FLOAT, ms, fs, dxpl, buf) >= 0;
  H5Sclose(ms);
  H5Sclose(fs);
  H5Dclose(ds);
  return ok ? C_OK : C_ERR;
}

/* ---------------------------------------------------------------- verified once */

/* The file ckpt_resolve verified last on this rank: ckpt_load of the same, unchanged file
 * right after it (a resume) need not read every dataset a second time. A file replaced,
 * rewritten or touched since (another inode, size or mtime) is verified again. */
static struct {
  int valid;
  char path[CKPT_PATH];
  struct stat st;
} last_verified;

static void remember_verified(const char *path) {
  last_verified.valid = stat(path, &last_verified.st) == 0 &&
                        (size_t)snprintf(last_verified.path, sizeof last_verified.path, "%s",
                                         path) < sizeof last_verified.path;
}

/* 1 on every rank when every rank verified path and it is unchanged since. Collective. */
static int verified_before(const char *path, MPI_Comm comm) {
  struct stat st;
  const struct stat *v = &last_verified.st;
  int same = last_verified.valid && !strcmp(path, last_verified.path) && stat(path, &st) == 0 &&
             st.st_dev == v->st_dev && st.st_ino == v->st_ino && st.st_size == v->st_size &&
             st.st_mtim.tv_sec == v->st_mtim.tv_sec && st.st_mtim.tv_nsec == v->st_mtim.tv_nsec;
  int all = 0;
  MPI_CHECK(MPI_Allreduce(&same, &all, 1, MPI_INT, MPI_MIN, comm));
  return all;
}

int ckpt_load(const char *path, ckpt_tensor *t, int n, ckpt_meta *meta, int *has_optim,
              MPI_Comm comm, char *err, size_t err_len) {
  char msg[CKPT_MSG] = "";
  int bad = 0, rc = C_ERR;
  CHECK(path && n >= 0, "ckpt_load: bad arguments");
  check_tensors(t, n, 1, comm);
  if (has_optim) *has_optim = 0;
  h5quiet q;
  h5quiet_begin(&q);
  ckpt_meta local_meta;
  ckpt_meta *mt = meta ? meta : &local_meta;
  memset(mt, 0, sizeof *mt);
  hid_t file = open_ckpt(path, comm, msg);
  if (file < 0) goto out;
  bad = read_meta_attrs(file, path, mt, msg) != C_OK;
  int file_optim = path_exists(file, "/optim/exp_avg") && path_exists(file, "/optim/exp_avg_sq");
  int want = 0, want_any = 0;
  for (int i = 0; i < n; i++)
    want |= t[i].exp_avg != NULL;
  MPI_CHECK(MPI_Allreduce(&want, &want_any, 1, MPI_INT, MPI_MAX, comm));
  int read_optim = file_optim && want_any;
  for (int i = 0; i < n && !bad; i++) {
    bad = check_shape(file, path, "/model", &t[i], msg) != C_OK;
    if (!bad && read_optim) bad = check_shape(file, path, "/optim/exp_avg", &t[i], msg) != C_OK;
    if (!bad && read_optim) bad = check_shape(file, path, "/optim/exp_avg_sq", &t[i], msg) != C_OK;
  }
  if (common_agree(comm, bad, msg, CKPT_MSG)) goto out_close;
  if (!verified_before(path, comm) && verify_file(file, path, read_optim, comm, msg) != C_OK)
    goto out_close;
  hid_t dxpl = dxpl_collective();
  for (int i = 0; i < n && !bad; i++) {
    bad = get_dataset(file, "/model", &t[i], 0, NULL, dxpl) != C_OK;
    if (!bad && read_optim)
      bad = get_dataset(file, "/optim/exp_avg", &t[i], 1, t[i].exp_avg, dxpl) != C_OK;
    if (!bad && read_optim)
      bad = get_dataset(file, "/optim/exp_avg_sq", &t[i], 1, t[i].exp_avg_sq, dxpl) != C_OK;
    if (bad) msgf(msg, "%s: reading %s failed (truncated or corrupt?)", path, t[i].name);
  }
  H5Pclose(dxpl);
  if (common_agree(comm, bad, msg, CKPT_MSG)) goto out_close;
  if (has_optim) *has_optim = file_optim;
  rc = C_OK;
out_close:
  H5Fclose(file);
out:
  h5quiet_end(&q);
  if (rc != C_OK) {
    free(mt->config_text);
    mt->config_text = NULL;
    copy_err(err, err_len, msg);
  } else if (!meta) {
    free(mt->config_text);
  }
  return rc;
}

int ckpt_read_meta(const char *path, ckpt_meta *meta, MPI_Comm comm, char *err, size_t err_len) {
  char msg[CKPT_MSG] = "";
  CHECK(path && meta, "ckpt_read_meta: bad arguments");
  memset(meta, 0, sizeof *meta);
  h5quiet q;
  h5quiet_begin(&q);
  int rc = C_ERR;
  hid_t file = open_ckpt(path, comm, msg);
  if (file >= 0) {
    int bad = read_meta_attrs(file, path, meta, msg) != C_OK;
    if (!common_agree(comm, bad, msg, CKPT_MSG)) rc = C_OK;
    H5Fclose(file);
  }
  h5quiet_end(&q);
  if (rc != C_OK) {
    free(meta->config_text);
    meta->config_text = NULL;
    copy_err(err, err_len, msg);
  }
  return rc;
}

/* ---------------------------------------------------------------- resolve */

static int cmp_desc(const void *a, const void *b) {
  long long x = *(const long long *)a, y = *(const long long *)b;
  return (x < y) - (x > y);
}

/* Rank 0: the candidate file names of directory d, best first: the one `latest` names,
 * then every ckpt_<step>.h5 by decreasing step. Returns a malloc'd "\n"-joined list. */
static char *list_candidates(const char *d) {
  size_t cap = 4096, len = 0;
  char *out = common_calloc(cap, 1), first[256] = "", p[CKPT_PATH];
  snprintf(p, sizeof p, "%s/latest", d);
  FILE *f = fopen(p, "r");
  if (f) {
    if (fgets(first, sizeof first, f)) first[strcspn(first, "\r\n")] = '\0';
    fclose(f);
    if (strchr(first, '/') || !strcmp(first, ".") || !strcmp(first, "..")) first[0] = '\0';
    if (first[0]) len += (size_t)snprintf(out, cap, "%s\n", first);
  }
  DIR *dd = opendir(d);
  if (!dd) return out;
  int n = 0, scap = 16;
  long long *steps = common_malloc(sizeof(long long) * (size_t)scap);
  struct dirent *e;
  while ((e = readdir(dd))) {
    long long s;
    if (!parse_ckpt_name(e->d_name, 0, &s) || !strcmp(e->d_name, first)) continue;
    if (n == scap) steps = realloc(steps, sizeof(long long) * (size_t)(scap *= 2));
    CHECK(steps, "out of memory");
    steps[n++] = s;
  }
  closedir(dd);
  qsort(steps, (size_t)n, sizeof *steps, cmp_desc);
  for (int i = 0; i < n; i++) {
    if (len + 64 > cap) {
      out = realloc(out, cap *= 2);
      CHECK(out, "out of memory");
    }
    len += (size_t)snprintf(out + len, cap - len, "ckpt_%08lld.h5\n", steps[i]);
  }
  free(steps);
  return out;
}

int ckpt_resolve(const char *spec, const char *dir, char *path, size_t path_len, int *none_found,
                 MPI_Comm comm, char *err, size_t err_len) {
  char msg[CKPT_MSG] = "", d[CKPT_PATH] = "";
  int rank, mode = 0; /* 0 error, 1 file as is, 2 directory */
  MPI_CHECK(MPI_Comm_rank(comm, &rank));
  *none_found = 0;
  path[0] = '\0';
  char *list = NULL;
  int list_len = 0;
  if (rank == 0) {
    struct stat st;
    const char *base = spec ? strrchr(spec, '/') : NULL;
    base = base ? base + 1 : spec;
    if (!spec || !spec[0] || !strcmp(spec, "auto")) {
      if (dir && dir[0]) {
        snprintf(d, sizeof d, "%s", dir);
        mode = 2;
      } else
        msgf(msg, "resume=auto needs a checkpoint directory");
    } else if (stat(spec, &st) != 0) {
      msgf(msg, "%s: no such file or directory", spec);
    } else if (S_ISDIR(st.st_mode)) {
      snprintf(d, sizeof d, "%s", spec);
      mode = 2;
    } else if (!strcmp(base, "latest")) { /* DIR/latest: resolve in its directory */
      snprintf(d, sizeof d, "%.*s", base == spec ? 1 : (int)(base - spec - 1),
               base == spec ? "." : spec);
      mode = 2;
    } else {
      mode = 1;
    }
    if (mode == 2) {
      list = list_candidates(d);
      list_len = (int)strlen(list) + 1;
      if (list_len == 1) {
        msgf(msg, "%s: no checkpoint found", d);
        *none_found = 1;
        mode = 0;
      }
    }
  }
  int hdr[3] = {mode, list_len, *none_found};
  MPI_CHECK(MPI_Bcast(hdr, 3, MPI_INT, 0, comm));
  mode = hdr[0];
  *none_found = hdr[2];
  MPI_CHECK(MPI_Bcast(msg, CKPT_MSG, MPI_CHAR, 0, comm));
  MPI_CHECK(MPI_Bcast(d, CKPT_PATH, MPI_CHAR, 0, comm));
  if (mode == 0) {
    free(list);
    copy_err(err, err_len, msg);
    return C_ERR;
  }
  if (mode == 1) {
    if ((size_t)snprintf(path, path_len, "%s", spec) >= path_len) {
      copy_err(err, err_len, "checkpoint path too long");
      return C_ERR;
    }
    return C_OK;
  }
  if (rank != 0) list = common_malloc((size_t)hdr[1]);
  MPI_CHECK(MPI_Bcast(list, hdr[1], MPI_CHAR, 0, comm));
  h5quiet q;
  h5quiet_begin(&q);
  int rc = C_ERR, tried = 0;
  char last[CKPT_MSG] = "";
  for (char *name = strtok(list, "\n"); name && rc != C_OK; name = strtok(NULL, "\n")) {
    char full[CKPT_PATH];
    if (snprintf(full, sizeof full, "%s/%s", d, name) >= (int)sizeof full)
      continue; /* too long to exist; every rank skips it (same list) */
    tried++;
    hid_t file = open_ckpt(full, comm, msg);
    if (file >= 0) {
      int ok = verify_file(file, full, 1, comm, msg) == C_OK;
      H5Fclose(file);
      if (ok) {
        remember_verified(full);
        if ((size_t)snprintf(path, path_len, "%s", full) >= path_len) {
          msgf(msg, "%s: checkpoint path too long", full);
          break;
        }
        rc = C_OK;
        break;
      }
    }
    if (rank == 0) fprintf(stderr, "ckpt: warning: skipping %s; trying an older checkpoint\n", msg);
    snprintf(last, sizeof last, "%s", msg);
  }
  h5quiet_end(&q);
  free(list);
  if (rc != C_OK) {
    if (last[0]) msgf(msg, "%s: no usable checkpoint (%d tried; the last: %.800s)", d, tried, last);
    copy_err(err, err_len, msg);
  }
  return rc;
}

/* ---- which tensors a checkpoint holds (init_from) ------------------------------------ */

void ckpt_has_tensors(const char *path, const ckpt_tensor *t, int n, uint8_t *has, MPI_Comm comm) {
  int rank;
  MPI_CHECK(MPI_Comm_rank(comm, &rank));
  memset(has, 0, (size_t)n);
  if (rank == 0) { /* rank 0 looks, everyone is told; HDF5's error stack stays quiet */
    h5quiet quiet;
    h5quiet_begin(&quiet);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f >= 0) {
      char link[160];
      int has_model = H5Lexists(f, "/model", H5P_DEFAULT) > 0;
      for (int i = 0; i < n && has_model; i++) {
        snprintf(link, sizeof link, "/model/%s", t[i].name);
        has[i] = H5Lexists(f, link, H5P_DEFAULT) > 0;
      }
      H5Fclose(f);
    }
    h5quiet_end(&quiet);
  }
  MPI_CHECK(MPI_Bcast(has, n, MPI_UINT8_T, 0, comm));
}
