/* ckpt_load.c: reading checkpoints (ckpt.h): open and check a file, verify its
 * checksums (the ranks split every dataset by rows; once per resume: the file
 * ckpt_resolve verified is remembered), read each rank's blocks and moment slices,
 * resolve `latest`/`auto` to the newest file that verifies, and list which tensors a
 * file holds (init_from). Writing is ckpt.c's; both share ckpt_internal.h.
 *
 * User-facing failures (missing, truncated, corrupt, wrong shape) return C_ERR on every
 * rank with one message; HDF5's error stack is never printed.
 */
#include "ckpt.h"
#include "ckpt_internal.h"

#include "h5quiet.h"

#include <dirent.h>
#include <errno.h>
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- load */

/* Open PATH read-only on every rank and check that it is a complete checkpoint of our
 * format. Returns the file id, or -1 on every rank with msg set. Collective. */
static hid_t open_ckpt(const char *path, MPI_Comm comm, char *msg) {
  int rank, bad = 0;
  MPI_CHECK(MPI_Comm_rank(comm, &rank));
  if (rank == 0) {
    struct stat st;
    if (stat(path, &st) != 0) {
      ckpt_msgf(msg, "%s: no such file (%s)", path, strerror(errno));
      bad = 1;
    } else if (S_ISDIR(st.st_mode)) {
      ckpt_msgf(msg, "%s: is a directory (name a ckpt_*.h5 file, or resume from the directory)",
                path);
      bad = 1;
    }
  }
  if (common_agree(comm, bad, msg, CKPT_MSG)) return -1;
  hid_t fapl = ckpt_fapl_mpio(comm);
  hid_t file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
  H5Pclose(fapl);
  if (file < 0) ckpt_msgf(msg, "%s: not a readable HDF5 file (truncated or corrupt?)", path);
  if (common_agree(comm, file < 0, msg, CKPT_MSG)) {
    if (file >= 0) H5Fclose(file);
    return -1;
  }
  int32_t complete = 0, version = 0;
  if (ckpt_get_attr(file, "complete", H5T_NATIVE_INT32, &complete) != C_OK || complete != 1) {
    ckpt_msgf(msg, "%s: incomplete checkpoint (no 'complete' attribute)", path);
    bad = 1;
  } else if (ckpt_get_attr(file, "format_version", H5T_NATIVE_INT32, &version) != C_OK ||
             version != CKPT_FORMAT_VERSION) {
    ckpt_msgf(msg, "%s: checkpoint format_version %d, this program reads version %d", path, version,
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
    if (ckpt_get_attr(file, i64n[k], H5T_NATIVE_INT64, i64v[k]) != C_OK) bad = i64n[k];
  if (!bad && ckpt_get_attr(file, "seed", H5T_NATIVE_UINT64, &meta->seed) != C_OK) bad = "seed";
  if (!bad && ckpt_get_attr(file, "lr", H5T_NATIVE_DOUBLE, &meta->lr) != C_OK) bad = "lr";
  if (!bad && ckpt_get_attr(file, "wall_seconds", H5T_NATIVE_DOUBLE, &meta->wall_seconds) != C_OK)
    bad = "wall_seconds";
  char *layout = NULL;
  if (!bad && ckpt_get_str_attr(file, "layout", &layout) != C_OK) bad = "layout";
  if (layout) snprintf(meta->layout, sizeof meta->layout, "%s", layout);
  free(layout);
  if (!bad && ckpt_get_str_attr(file, "config", &meta->config_text) != C_OK) bad = "config";
  if (bad) {
    ckpt_msgf(msg, "%s: attribute '%s' missing or unreadable (corrupt?)", path, bad);
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
  ckpt_dsname(path, sizeof path, group, x->name);
  if (!path_exists(file, path)) {
    ckpt_msgf(msg, "%s: dataset %s missing", file_path, path);
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
    ckpt_msgf(msg, "%s: cannot read dataset %s (corrupt, or not float)?", file_path, path);
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
    ckpt_msgf(msg, "%s: %s has shape %s, the model expects %s", file_path, path, have_s, want_s);
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
    if (ok) *sum += ckpt_hash_run((uint64_t)(r * cols), buf, k * cols);
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
      ckpt_msgf(msg, "%s: group %s missing or unreadable (corrupt?)", file_path, groups[k]);
      bad = 1;
    }
    if (g >= 0) H5Gclose(g);
    for (int i = 0; i < l.n; i++) {
      char p[CKPT_PATH];
      ckpt_dsname(p, sizeof p, groups[k], l.names[i]);
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
    if (!bad) ckpt_msgf(msg, "%s: unreadable group listing (corrupt?)", file_path);
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
    else if (ckpt_get_attr(ds, "checksum", H5T_NATIVE_UINT64, &want[i]) != C_OK)
      st[i] = 2;
    if (ds >= 0) H5Dclose(ds);
  }
  MPI_CHECK(MPI_Allreduce(st, st_max, n, MPI_INT, MPI_MAX, comm));
  MPI_CHECK(MPI_Allreduce(s, s_sum, n, MPI_UINT64_T, MPI_SUM, comm));
  for (int i = 0; i < n && !bad; i++) {
    if (st_max[i] == 1)
      ckpt_msgf(msg, "%s: cannot read %s (truncated or corrupt?)", file_path, all.names[i]);
    else if (st_max[i] == 2)
      ckpt_msgf(msg, "%s: %s has no checksum attribute (corrupt?)", file_path, all.names[i]);
    else if (s_sum[i] != want[i])
      ckpt_msgf(msg, "%s: checksum mismatch in %s (corrupted)", file_path, all.names[i]);
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
  ckpt_dsname(path, sizeof path, group, x->name);
  hid_t ds = H5Dopen2(file, path, H5P_DEFAULT);
  CHECK(ds >= 0, "ckpt: %s vanished between the checks and the read", path);
  hid_t fs = H5Dget_space(ds);
  static float dummy;
  hid_t ms;
  float *buf;
  if (kind == 0) {
    ms = ckpt_select_block(fs, x->param, x->is_vector, 1);
    buf = dmat_local_size(x->param) ? x->param->data : &dummy;
  } else {
    int active = v != NULL;
    ms = ckpt_select_flat(fs, x->param, x->is_vector, active ? x->opt_lo : 0,
                          active ? x->opt_hi : 0);
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
  ckpt_check_tensors(t, n, 1, comm);
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
  hid_t dxpl = ckpt_dxpl_collective();
  for (int i = 0; i < n && !bad; i++) {
    bad = get_dataset(file, "/model", &t[i], 0, NULL, dxpl) != C_OK;
    if (!bad && read_optim)
      bad = get_dataset(file, "/optim/exp_avg", &t[i], 1, t[i].exp_avg, dxpl) != C_OK;
    if (!bad && read_optim)
      bad = get_dataset(file, "/optim/exp_avg_sq", &t[i], 1, t[i].exp_avg_sq, dxpl) != C_OK;
    if (bad) ckpt_msgf(msg, "%s: reading %s failed (truncated or corrupt?)", path, t[i].name);
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
    ckpt_copy_err(err, err_len, msg);
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
    ckpt_copy_err(err, err_len, msg);
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
    if (!ckpt_parse_name(e->d_name, 0, &s) || !strcmp(e->d_name, first)) continue;
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
        ckpt_msgf(msg, "resume=auto needs a checkpoint directory");
    } else if (stat(spec, &st) != 0) {
      ckpt_msgf(msg, "%s: no such file or directory", spec);
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
        ckpt_msgf(msg, "%s: no checkpoint found", d);
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
    ckpt_copy_err(err, err_len, msg);
    return C_ERR;
  }
  if (mode == 1) {
    if ((size_t)snprintf(path, path_len, "%s", spec) >= path_len) {
      ckpt_copy_err(err, err_len, "checkpoint path too long");
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
          ckpt_msgf(msg, "%s: checkpoint path too long", full);
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
    if (last[0])
      ckpt_msgf(msg, "%s: no usable checkpoint (%d tried; the last: %.800s)", d, tried, last);
    ckpt_copy_err(err, err_len, msg);
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
