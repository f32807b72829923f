/* ckpt.c: checkpoints as parallel HDF5 files, written and read block by block (see ckpt.h);
 * this file has the shared helpers and the save, ckpt_load.c the load, verify and resolve.
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
#include "ckpt_internal.h"
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

/* ---------------------------------------------------------------- small helpers */

void ckpt_msgf(char *msg, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, CKPT_MSG, fmt, ap);
  va_end(ap);
}

void ckpt_copy_err(char *err, size_t err_len, const char *msg) {
  if (err && err_len) snprintf(err, err_len, "%s", msg);
}

hid_t ckpt_fapl_mpio(MPI_Comm comm) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  CHECK(fapl >= 0, "H5Pcreate(file access) failed");
  CHECK(H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL) >= 0, "H5Pset_fapl_mpio failed");
  /* 1.8 object format: attributes over 64 KB (a long config) go to dense storage */
  CHECK(H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST) >= 0,
        "H5Pset_libver_bounds failed");
  return fapl;
}

hid_t ckpt_dxpl_collective(void) {
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
int ckpt_parse_name(const char *name, int tmp, long long *step) {
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
uint64_t ckpt_hash_run(uint64_t gidx0, const float *v, int64_t n) {
  uint64_t s = 0;
  for (int64_t k = 0; k < n; k++)
    s += ckpt_hash_element(gidx0 + (uint64_t)k, v[k]);
  return s;
}

/* This rank's rectangle of m: rows_local x cols_local at data (leading dimension ld). */
static uint64_t hash_block(const dmat *m) {
  uint64_t s = 0;
  for (int i = 0; i < m->rows_local; i++)
    s += ckpt_hash_run((uint64_t)((m->row0 + i) * m->cols + m->col0), m->data + (int64_t)i * m->ld,
                       m->cols_local);
  return s;
}

/* Local flat indices [lo, hi) of the local block of m, values v[i - lo]. */
static uint64_t hash_flat(const dmat *m, int64_t lo, int64_t hi, const float *v) {
  uint64_t s = 0;
  int64_t cl = m->cols_local;
  for (int64_t i = lo; i < hi;) {
    int64_t r = i / cl, c = i % cl, len = cl - c < hi - i ? cl - c : hi - i;
    s += ckpt_hash_run((uint64_t)((m->row0 + r) * m->cols + m->col0 + c), v + (i - lo), len);
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
hid_t ckpt_select_block(hid_t fs, const dmat *m, int is_vector, int active) {
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
hid_t ckpt_select_flat(hid_t fs, const dmat *m, int is_vector, int64_t lo, int64_t hi) {
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

int ckpt_get_attr(hid_t loc, const char *name, hid_t mtype, void *v) {
  if (H5Aexists(loc, name) <= 0) return C_ERR;
  hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
  int ok = a >= 0 && H5Aread(a, mtype, v) >= 0;
  if (a >= 0) H5Aclose(a);
  return ok ? C_OK : C_ERR;
}

/* A fixed-length string attribute, malloc'd into *out. */
int ckpt_get_str_attr(hid_t loc, const char *name, char **out) {
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

void ckpt_dsname(char *buf, size_t len, const char *group, const char *name) {
  CHECK(snprintf(buf, len, "%s/%s", group, name) < (int)len, "tensor name too long: %s", name);
}

/* Programming errors in the tensor list abort; a list that differs between ranks too (it
 * would otherwise hang in a collective). Collective on comm. */
void ckpt_check_tensors(const ckpt_tensor *t, int n, int reading, MPI_Comm comm) {
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
      ms = ckpt_select_block(fs, m, is_vector, active);
      buf = active && dmat_local_size(m) ? m->data : &dummy;
    } else {
      ms = ckpt_select_flat(fs, m, is_vector, active ? lo : 0, active ? hi : 0);
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
  ckpt_msgf(msg, "%s: %s failed: %s; checkpoint not saved (latest unchanged)", j->tmp, what,
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
    ckpt_msgf(msg, "%s: path too long", j->dir);
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
      ckpt_msgf(msg,
                "ckpt_save %s: the ranks with write_param=1 own %lld elements of %s, expected %lld",
                j->dir, (long long)cov_sum[3 * i], t[i].name, (long long)total);
      bad = 1;
    } else if (j->with_optim &&
               !(j->mw[i] = moment_writers(total, cov_sum[3 * i + 1], cov_sum[3 * i + 2]))) {
      ckpt_msgf(msg,
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
  hid_t fapl = ckpt_fapl_mpio(comm);
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
  hid_t dxpl = ckpt_dxpl_collective();
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
        ckpt_dsname(path, sizeof path, "/model", x->name);
        fail = put_dataset(j->file, path, x->param, x->is_vector, 0, x->write_param, 0, 0, NULL,
                           cs[0], dcpl, dxpl, &eno) != C_OK;
      } else {
        ckpt_dsname(path, sizeof path, k == 1 ? "/optim/exp_avg" : "/optim/exp_avg_sq", x->name);
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
    ckpt_msgf(msg, "%s: cannot rename to %s: %s", j->tmp, j->final, strerror(errno));
    unlink(j->tmp);
    return C_ERR;
  }
  if (fsync_path(j->dir, 1) != C_OK) {
    ckpt_msgf(msg, "%s: fsync of the directory failed: %s", j->dir, strerror(errno));
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
    ckpt_msgf(msg, "%s: cannot update %s to name %s: %s", j->dir, latest, j->fname,
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
  CHECK(ckpt_parse_name(j->fname, 0, &cur), "bad checkpoint name %s", j->fname);
  int cap = 16, cnt = 0;
  long long *steps = common_malloc(sizeof(long long) * (size_t)cap);
  struct dirent *e;
  char p[CKPT_PATH];
  while ((e = readdir(d))) {
    long long s;
    if (ckpt_parse_name(e->d_name, 1, &s)) { /* a stale .tmp of a killed save */
      snprintf(p, sizeof p, "%s/%s", j->dir, e->d_name);
      if (unlink(p) != 0) fprintf(stderr, "ckpt: warning: cannot remove %s\n", p);
    } else if (ckpt_parse_name(e->d_name, 0, &s) && s != cur) {
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
  ckpt_check_tensors(t, n, 0, comm);
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
  if (rc != C_OK) ckpt_copy_err(err, err_len, msg);
  return rc;
}
