// NP: 1 2 3
/* test_ckpt.c: checkpoints written with one layout and read with another, moments as
 * ZeRO-1 flat slices, metadata round trip, retention and `latest`, and the failures a
 * user meets (truncated, corrupted, incomplete, missing file, wrong shape), each with its
 * message on every rank and ckpt_resolve falling back to the previous good checkpoint.
 *
 * Layouts are built by hand (dmat is a plain struct): WHOLE (every rank owns everything,
 * DP replicas), ROWS (rank r owns a band of rows, padded ld) and COLS (a band of columns).
 * Values are a deterministic function of (tensor, global index), so every element is
 * compared exactly, and the checksum attribute is recomputed from the global values.
 */
#include "ckpt.h"
#include "grid.h"
#include "harness.h"

#include <fcntl.h>
#include <ftw.h>
#include <hdf5.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NT 3
enum { L_WHOLE, L_ROWS, L_COLS, N_LAYOUTS };
enum { M_NONE, M_FULL, M_ZERO1, M_ZERO1_REV }; /* moments held by each rank */
static const char *layout_name[] = {"whole", "rows", "cols"};

typedef struct {
  const char *name;
  int64_t rows, cols;
  int is_vector;
} shape;
static const shape SH[NT] = {
    {"encoder.layers.0.fc1.weight", 7, 5, 0},
    {"encoder.layers.0.fc1.bias", 1, 13, 1},
    {"decoder.embed_tokens.weight", 64, 3, 0},
};

static int rank, size;
static MPI_Comm comm;
static const float SENTINEL = -12345.0f;

/* The value of global element gidx of tensor `tag` (exact in float32). */
static float val(int tag, int64_t gidx) {
  return (float)((gidx * 7919 + tag * 104729) % 20011 - 10005) / 64.0f;
}

typedef struct {
  dmat m[NT];
  ckpt_tensor t[NT];
  float *data[NT], *ea[NT], *eas[NT];
} tset;

/* Describe this rank's block of each tensor for `layout`, moments per `mom`; fill with the
 * values of tensor tags 3*i (param), 3*i+1, 3*i+2 (moments) or the sentinel. */
static void tset_make(tset *s, const shape *sh, int layout, int mom, int fill) {
  memset(s, 0, sizeof *s);
  for (int i = 0; i < NT; i++) {
    dmat *m = &s->m[i];
    m->rows = sh[i].rows;
    m->cols = sh[i].cols;
    m->row0 = m->col0 = 0;
    m->rows_local = (int)m->rows;
    m->cols_local = (int)m->cols;
    if (layout == L_ROWS) {
      m->row0 = dmat_block_start(m->rows, rank, size);
      m->rows_local = (int)dmat_block_count(m->rows, rank, size);
    } else if (layout == L_COLS) {
      m->col0 = dmat_block_start(m->cols, rank, size);
      m->cols_local = (int)dmat_block_count(m->cols, rank, size);
    }
    m->ld = m->cols_local + (layout == L_ROWS ? 3 : 0);
    if (m->ld == 0) m->ld = 1;
    s->data[i] = malloc(sizeof(float) * (size_t)(m->rows_local * m->ld + 1));
    for (int64_t k = 0; k < m->rows_local * m->ld; k++)
      s->data[i][k] = SENTINEL;
    if (fill)
      for (int r = 0; r < m->rows_local; r++)
        for (int c = 0; c < m->cols_local; c++)
          s->data[i][r * m->ld + c] = val(3 * i, (m->row0 + r) * m->cols + m->col0 + c);
    m->data = s->data[i];
    ckpt_tensor *t = &s->t[i];
    t->name = sh[i].name;
    t->param = m;
    t->is_vector = sh[i].is_vector;
    t->write_param = layout == L_WHOLE ? rank == 0 : 1;
    int64_t nl = dmat_local_size(m);
    if (mom == M_NONE) continue;
    if (mom == M_FULL) {
      t->opt_lo = 0;
      t->opt_hi = nl;
    } else { /* flat slices of the local block, in rank order or reversed */
      int r = mom == M_ZERO1 ? rank : size - 1 - rank;
      t->opt_lo = dmat_block_start(nl, r, size);
      t->opt_hi = t->opt_lo + dmat_block_count(nl, r, size);
    }
    int64_t ns = t->opt_hi - t->opt_lo;
    s->ea[i] = malloc(sizeof(float) * (size_t)(ns + 1));
    s->eas[i] = malloc(sizeof(float) * (size_t)(ns + 1));
    for (int64_t k = t->opt_lo; k < t->opt_hi; k++) {
      int64_t g = (m->row0 + k / m->cols_local) * m->cols + m->col0 + k % m->cols_local;
      s->ea[i][k - t->opt_lo] = fill ? val(3 * i + 1, g) : SENTINEL;
      s->eas[i][k - t->opt_lo] = fill ? val(3 * i + 2, g) : SENTINEL;
    }
    t->exp_avg = s->ea[i];
    t->exp_avg_sq = s->eas[i];
  }
}

static void tset_free(tset *s) {
  for (int i = 0; i < NT; i++) {
    free(s->data[i]);
    free(s->ea[i]);
    free(s->eas[i]);
  }
}

/* Number of elements of s that differ from the expected values (padding must be untouched). */
static int64_t tset_mismatches(const tset *s, int check_moments) {
  int64_t bad = 0;
  for (int i = 0; i < NT; i++) {
    const dmat *m = &s->m[i];
    for (int r = 0; r < m->rows_local; r++)
      for (int c = 0; c < m->ld; c++) {
        float want =
            c < m->cols_local ? val(3 * i, (m->row0 + r) * m->cols + m->col0 + c) : SENTINEL;
        bad += s->data[i][r * m->ld + c] != want;
      }
    const ckpt_tensor *t = &s->t[i];
    if (!check_moments || !t->exp_avg) continue;
    for (int64_t k = t->opt_lo; k < t->opt_hi; k++) {
      int64_t g = (m->row0 + k / m->cols_local) * m->cols + m->col0 + k % m->cols_local;
      bad += t->exp_avg[k - t->opt_lo] != val(3 * i + 1, g);
      bad += t->exp_avg_sq[k - t->opt_lo] != val(3 * i + 2, g);
    }
  }
  return bad;
}

/* 1 on every rank if the string is the same on every rank. */
static int same_everywhere(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  uint64_t v[2] = {h, ~h}, mx[2];
  MPI_Allreduce(v, mx, 2, MPI_UINT64_T, MPI_MAX, comm);
  return mx[0] == ~mx[1];
}

static int file_exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0;
}

static ckpt_meta meta_for(int64_t step) {
  ckpt_meta m;
  memset(&m, 0, sizeof m);
  m.step = step;
  m.epoch = 1;
  m.config_text = "model = tiny";
  snprintf(m.layout, sizeof m.layout, "test np=%d", size);
  return m;
}

/* The checksum attribute of a dataset, read serially by rank 0. */
static uint64_t read_checksum(const char *file, const char *ds) {
  uint64_t v = 0;
  hid_t f = H5Fopen(file, H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t d = H5Dopen2(f, ds, H5P_DEFAULT);
  hid_t a = H5Aopen(d, "checksum", H5P_DEFAULT);
  H5Aread(a, H5T_NATIVE_UINT64, &v);
  H5Aclose(a);
  H5Dclose(d);
  H5Fclose(f);
  return v;
}

static haddr_t data_offset(const char *file, const char *ds) {
  hid_t f = H5Fopen(file, H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t d = H5Dopen2(f, ds, H5P_DEFAULT);
  haddr_t off = H5Dget_offset(d);
  H5Dclose(d);
  H5Fclose(f);
  return off;
}

static void flip_byte(const char *file, off_t off) {
  int fd = open(file, O_RDWR);
  unsigned char b = 0;
  CHECK(fd >= 0 && pread(fd, &b, 1, off) == 1, "cannot read %s", file);
  b ^= 0x40;
  CHECK(pwrite(fd, &b, 1, off) == 1 && fsync(fd) == 0, "cannot write %s", file);
  close(fd);
}

/* Expect a C_ERR with err starting with `prefix` and containing `want`, same on every rank. */
static void expect_err(int rc, const char *err, const char *prefix, const char *want,
                       const char *what) {
  TEST_EXPECT(rc == C_ERR, "%s: expected C_ERR, got %d", what, rc);
  TEST_EXPECT(strncmp(err, prefix, strlen(prefix)) == 0 && strstr(err, want),
              "%s: error '%s' should start with '%s' and say '%s'", what, err, prefix, want);
  TEST_EXPECT(same_everywhere(err), "%s: ranks disagree on the error '%s'", what, err);
}

/* ---------------------------------------------------------------- tests */

/* Write with every layout (moments as replicas, ZeRO-1 slices or blocks), read with every
 * layout (moments whole or as reversed slices), compare every element; check the checksum
 * attribute against the global values. */
static void test_cross_layout(const char *root) {
  struct {
    int layout, mom;
  } wr[] = {{L_WHOLE, M_ZERO1}, {L_WHOLE, M_FULL}, {L_ROWS, M_FULL}, {L_COLS, M_FULL}},
    rd[] = {{L_WHOLE, M_FULL}, {L_WHOLE, M_ZERO1_REV}, {L_ROWS, M_FULL}, {L_COLS, M_FULL}};
  char dir[600], path[700], err[1024];
  for (size_t w = 0; w < sizeof wr / sizeof wr[0]; w++) {
    snprintf(dir, sizeof dir, "%s/cross%zu", root, w);
    tset s;
    tset_make(&s, SH, wr[w].layout, wr[w].mom, 1);
    ckpt_meta meta = meta_for(100 + (int64_t)w);
    int rc = ckpt_save(dir, s.t, NT, &meta, 0, comm, err, sizeof err);
    TEST_EXPECT(rc == C_OK, "save %s/%d: %s", layout_name[wr[w].layout], wr[w].mom, err);
    tset_free(&s);
    snprintf(path, sizeof path, "%s/ckpt_%08lld.h5", dir, 100LL + (long long)w);
    if (rank == 0) { /* the checksum is a function of the global values only */
      const char *grp[] = {"/model", "/optim/exp_avg", "/optim/exp_avg_sq"};
      for (int i = 0; i < NT; i++)
        for (int k = 0; k < 3; k++) {
          uint64_t want = 0;
          for (int64_t g = 0; g < SH[i].rows * SH[i].cols; g++)
            want += ckpt_hash_element((uint64_t)g, val(3 * i + k, g));
          char ds[256];
          snprintf(ds, sizeof ds, "%s/%s", grp[k], SH[i].name);
          TEST_EXPECT(read_checksum(path, ds) == want, "checksum of %s written by layout %zu", ds,
                      w);
        }
    }
    for (size_t r = 0; r < sizeof rd / sizeof rd[0]; r++) {
      tset in;
      tset_make(&in, SH, rd[r].layout, rd[r].mom, 0);
      int has_optim = -1;
      ckpt_meta got;
      rc = ckpt_load(path, in.t, NT, &got, &has_optim, comm, err, sizeof err);
      TEST_EXPECT(rc == C_OK, "load: %s", err);
      TEST_EXPECT(has_optim == 1, "has_optim %d", has_optim);
      TEST_EXPECT(got.step == 100 + (int64_t)w, "step %lld", (long long)got.step);
      int64_t bad = tset_mismatches(&in, 1);
      TEST_EXPECT(bad == 0, "written %s (moments %d), read %s (moments %d): %lld elements differ",
                  layout_name[wr[w].layout], wr[w].mom, layout_name[rd[r].layout], rd[r].mom,
                  (long long)bad);
      free(got.config_text);
      tset_free(&in);
    }
  }
  /* a checkpoint without moments: has_optim = 0, the caller's moments untouched */
  snprintf(dir, sizeof dir, "%s/nomom", root);
  tset s, in;
  tset_make(&s, SH, L_ROWS, M_NONE, 1);
  ckpt_meta meta = meta_for(7);
  TEST_EXPECT(ckpt_save(dir, s.t, NT, &meta, 0, comm, err, sizeof err) == C_OK, "%s", err);
  tset_make(&in, SH, L_COLS, M_FULL, 0);
  snprintf(path, sizeof path, "%s/ckpt_00000007.h5", dir);
  int has_optim = -1;
  TEST_EXPECT(ckpt_load(path, in.t, NT, NULL, &has_optim, comm, err, sizeof err) == C_OK, "%s",
              err);
  TEST_EXPECT(has_optim == 0, "has_optim %d for a file without moments", has_optim);
  TEST_EXPECT(tset_mismatches(&in, 0) == 0, "params of a file without moments");
  int untouched = 1;
  for (int i = 0; i < NT; i++)
    for (int64_t k = 0; k < in.t[i].opt_hi - in.t[i].opt_lo; k++)
      untouched &= in.ea[i][k] == SENTINEL;
  TEST_EXPECT(untouched, "moments changed although the file has none");
  char got[800];
  int none = -1;
  TEST_EXPECT(ckpt_resolve("auto", dir, got, sizeof got, &none, comm, err, sizeof err) == C_OK &&
                  strcmp(got, path) == 0,
              "resolve of a checkpoint without moments: '%s' (%s)", got, err);
  tset_free(&s);
  tset_free(&in);
}

static void test_meta(const char *root) {
  char dir[600], path[700], err[1024];
  snprintf(dir, sizeof dir, "%s/meta", root);
  size_t big = 100000; /* over HDF5's 64 KB compact attribute limit */
  char *cfg = malloc(big + 1);
  for (size_t i = 0; i < big; i++)
    cfg[i] = (i % 37 == 36) ? '\n' : (char)('a' + i % 26);
  cfg[big] = '\0';
  ckpt_meta m = meta_for(42);
  m.epoch = 3;
  m.batch_in_epoch = 17;
  m.tokens_seen = 987654321012LL;
  m.seed = 0xF00DFACECAFEBEEFULL;
  m.lr = 3.5e-4;
  m.wall_seconds = 123.25;
  snprintf(m.layout, sizeof m.layout, "dp=%d pp=1 tp=1 (1x1) zero=1", size);
  m.config_text = cfg;
  tset s;
  tset_make(&s, SH, L_WHOLE, M_ZERO1, 1);
  TEST_EXPECT(ckpt_save(dir, s.t, NT, &m, 3, comm, err, sizeof err) == C_OK, "%s", err);
  snprintf(path, sizeof path, "%s/ckpt_00000042.h5", dir);
  for (int via = 0; via < 2; via++) {
    ckpt_meta g;
    int rc = via == 0 ? ckpt_read_meta(path, &g, comm, err, sizeof err)
                      : ckpt_load(path, s.t, NT, &g, NULL, comm, err, sizeof err);
    TEST_EXPECT(rc == C_OK, "meta via %d: %s", via, err);
    TEST_EXPECT(g.step == 42 && g.epoch == 3 && g.batch_in_epoch == 17 &&
                    g.tokens_seen == 987654321012LL && g.seed == 0xF00DFACECAFEBEEFULL &&
                    g.lr == 3.5e-4 && g.wall_seconds == 123.25,
                "meta numbers via %d", via);
    TEST_EXPECT(strcmp(g.layout, m.layout) == 0, "layout '%s'", g.layout);
    TEST_EXPECT(g.config_text && strcmp(g.config_text, cfg) == 0, "config text differs");
    free(g.config_text);
  }
  free(cfg);
  tset_free(&s);
}

static void test_retention(const char *root) {
  char dir[600], p[800], err[1024], path[800];
  snprintf(dir, sizeof dir, "%s/keep/sub", root); /* mkdir -p */
  tset s;
  tset_make(&s, SH, L_WHOLE, M_ZERO1, 1);
  for (int step = 1; step <= 4; step++) {
    if (step == 4 && rank == 0) { /* stale temporaries of a killed save */
      snprintf(p, sizeof p, "%s/ckpt_00000099.h5.tmp", dir);
      FILE *f = fopen(p, "w");
      fputs("junk", f);
      fclose(f);
    }
    MPI_Barrier(comm);
    ckpt_meta m = meta_for(step);
    TEST_EXPECT(ckpt_save(dir, s.t, NT, &m, 2, comm, err, sizeof err) == C_OK, "%s", err);
  }
  if (rank == 0) {
    for (int step = 1; step <= 4; step++) {
      snprintf(p, sizeof p, "%s/ckpt_%08d.h5", dir, step);
      TEST_EXPECT(file_exists(p) == (step >= 3), "keep_last=2: %s exists=%d", p, file_exists(p));
    }
    snprintf(p, sizeof p, "%s/ckpt_00000099.h5.tmp", dir);
    TEST_EXPECT(!file_exists(p), "stale tmp not removed");
    snprintf(p, sizeof p, "%s/latest", dir);
    char line[256] = "";
    FILE *f = fopen(p, "r");
    TEST_EXPECT(f && fgets(line, sizeof line, f), "latest unreadable");
    if (f) fclose(f);
    TEST_EXPECT(strcmp(line, "ckpt_00000004.h5\n") == 0, "latest says '%s'", line);
  }
  int none = -1;
  snprintf(p, sizeof p, "%s/ckpt_00000004.h5", dir);
  TEST_EXPECT(ckpt_resolve("auto", dir, path, sizeof path, &none, comm, err, sizeof err) == C_OK,
              "%s", err);
  TEST_EXPECT(strcmp(path, p) == 0 && none == 0, "resolve auto gave '%s'", path);
  TEST_EXPECT(ckpt_resolve(dir, NULL, path, sizeof path, &none, comm, err, sizeof err) == C_OK &&
                  strcmp(path, p) == 0,
              "resolve DIR gave '%s'", path);
  char lat[800];
  snprintf(lat, sizeof lat, "%s/latest", dir);
  TEST_EXPECT(ckpt_resolve(lat, NULL, path, sizeof path, &none, comm, err, sizeof err) == C_OK &&
                  strcmp(path, p) == 0,
              "resolve DIR/latest gave '%s'", path);
  snprintf(lat, sizeof lat, "%s/ckpt_00000003.h5", dir);
  TEST_EXPECT(ckpt_resolve(lat, dir, path, sizeof path, &none, comm, err, sizeof err) == C_OK &&
                  strcmp(path, lat) == 0,
              "resolve FILE gave '%s'", path);

  /* failed saves: nothing changes, every rank gets the error */
  ckpt_meta m = meta_for(5);
  tset gap;
  tset_make(&gap, SH, L_WHOLE, M_ZERO1, 1);
  if (size == 1)
    gap.t[2].opt_lo = 1; /* a hole in the moments */
  else if (rank == size - 1)
    gap.t[2].opt_hi = gap.t[2].opt_lo;
  int rc = ckpt_save(dir, gap.t, NT, &m, 2, comm, err, sizeof err);
  expect_err(rc, err, "ckpt_save", "cover", "moments with a hole");
  tset_free(&gap);
  snprintf(p, sizeof p, "%s/keep/sub/latest/x", root); /* a path under a regular file */
  rc = ckpt_save(p, s.t, NT, &m, 2, comm, err, sizeof err);
  expect_err(rc, err, p, "directory", "save under a file");
  if (rank == 0) {
    snprintf(p, sizeof p, "%s/ckpt_00000005.h5", dir);
    TEST_EXPECT(!file_exists(p), "a failed save left %s", p);
  }
  TEST_EXPECT(ckpt_resolve("auto", dir, path, sizeof path, &none, comm, err, sizeof err) == C_OK &&
                  strstr(path, "ckpt_00000004.h5"),
              "after failed saves resolve gave '%s'", path);
  tset_free(&s);
}

static void test_failures(const char *root) {
  char dir[600], p10[800], p20[800], p30[800], path[800], err[1024];
  snprintf(dir, sizeof dir, "%s/bad", root);
  snprintf(p10, sizeof p10, "%s/ckpt_00000010.h5", dir);
  snprintf(p20, sizeof p20, "%s/ckpt_00000020.h5", dir);
  snprintf(p30, sizeof p30, "%s/ckpt_00000030.h5", dir);
  tset s, in;
  tset_make(&s, SH, L_COLS, M_FULL, 1);
  for (int step = 10; step <= 20; step += 10) {
    ckpt_meta m = meta_for(step);
    TEST_EXPECT(ckpt_save(dir, s.t, NT, &m, 0, comm, err, sizeof err) == C_OK, "%s", err);
  }
  tset_make(&in, SH, L_ROWS, M_FULL, 0);
  int rc = ckpt_load(p20, in.t, NT, NULL, NULL, comm, err, sizeof err);
  TEST_EXPECT(rc == C_OK && tset_mismatches(&in, 1) == 0, "good file: %s", err);

  /* one flipped bit in the last float of /model/decoder.embed_tokens.weight */
  const char *ds = "/model/decoder.embed_tokens.weight";
  if (rank == 0) {
    haddr_t off = data_offset(p20, ds);
    TEST_EXPECT(off != HADDR_UNDEF, "no offset for %s", ds);
    flip_byte(p20, (off_t)(off + 4 * (64 * 3 - 1) + 2));
  }
  MPI_Barrier(comm);
  rc = ckpt_load(p20, in.t, NT, NULL, NULL, comm, err, sizeof err);
  expect_err(rc, err, p20, "checksum mismatch in /model/decoder.embed_tokens.weight (corrupted)",
             "flipped byte");
  int none = -1;
  rc = ckpt_resolve("auto", dir, path, sizeof path, &none, comm, err, sizeof err);
  TEST_EXPECT(rc == C_OK && strcmp(path, p10) == 0 && none == 0,
              "resolve past a corrupted latest gave rc %d '%s' (%s)", rc, path, err);

  /* truncated to half */
  if (rank == 0) {
    struct stat st;
    stat(p20, &st);
    TEST_EXPECT(truncate(p20, st.st_size / 2) == 0, "truncate");
  }
  MPI_Barrier(comm);
  rc = ckpt_load(p20, in.t, NT, NULL, NULL, comm, err, sizeof err);
  expect_err(rc, err, p20, "not a readable HDF5 file (truncated or corrupt?)", "truncated");
  rc = ckpt_read_meta(p20, &(ckpt_meta){0}, comm, err, sizeof err);
  expect_err(rc, err, p20, "not a readable HDF5 file", "truncated, meta only");

  /* a newer file without the 'complete' attribute (as if written by a broken tool) */
  if (rank == 0) {
    hid_t f = H5Fcreate(p30, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hid_t g = H5Gcreate2(f, "/model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Gclose(g);
    H5Fclose(f);
  }
  MPI_Barrier(comm);
  rc = ckpt_load(p30, in.t, NT, NULL, NULL, comm, err, sizeof err);
  expect_err(rc, err, p30, "incomplete checkpoint (no 'complete' attribute)", "incomplete");
  none = -1;
  rc = ckpt_resolve(dir, NULL, path, sizeof path, &none, comm, err, sizeof err);
  TEST_EXPECT(rc == C_OK && strcmp(path, p10) == 0 && none == 0,
              "resolve past truncated latest and incomplete newer file gave rc %d '%s' (%s)", rc,
              path, err);
  rc = ckpt_load(path, in.t, NT, NULL, NULL, comm, err, sizeof err);
  TEST_EXPECT(rc == C_OK && tset_mismatches(&in, 1) == 0, "fallback load: %s", err);

  /* resolve verified p10, so the load above skipped the checksum pass; a file changed in
   * place after resolve (same name, same size) is verified again and the damage found */
  if (rank == 0) {
    usleep(20000); /* past the file-system clock's tick: the mtime must move */
    haddr_t off = data_offset(p10, ds);
    TEST_EXPECT(off != HADDR_UNDEF, "no offset for %s", ds);
    flip_byte(p10, (off_t)(off + 4 * 5 + 1));
  }
  MPI_Barrier(comm);
  rc = ckpt_load(p10, in.t, NT, NULL, NULL, comm, err, sizeof err);
  expect_err(rc, err, p10, "checksum mismatch in /model/decoder.embed_tokens.weight (corrupted)",
             "flipped byte after resolve");

  /* missing file, missing directory, empty directory, nothing usable */
  char p[800];
  snprintf(p, sizeof p, "%s/nope.h5", dir);
  rc = ckpt_load(p, in.t, NT, NULL, NULL, comm, err, sizeof err);
  expect_err(rc, err, p, "no such file", "missing file");
  rc = ckpt_resolve(p, NULL, path, sizeof path, &none, comm, err, sizeof err);
  TEST_EXPECT(rc == C_ERR && none == 0 && strstr(err, "no such file"), "resolve missing: %s", err);
  snprintf(p, sizeof p, "%s/never", root);
  rc = ckpt_resolve("auto", p, path, sizeof path, &none, comm, err, sizeof err);
  TEST_EXPECT(rc == C_ERR && none == 1 && strstr(err, "no checkpoint found"),
              "resolve in a missing dir: rc %d none %d '%s'", rc, none, err);
  if (rank == 0) mkdir(p, 0755);
  MPI_Barrier(comm);
  rc = ckpt_resolve(p, NULL, path, sizeof path, &none, comm, err, sizeof err);
  TEST_EXPECT(rc == C_ERR && none == 1, "resolve in an empty dir: rc %d none %d", rc, none);
  if (rank == 0) unlink(p10);
  MPI_Barrier(comm);
  rc = ckpt_resolve("auto", dir, path, sizeof path, &none, comm, err, sizeof err);
  TEST_EXPECT(rc == C_ERR && none == 0 && strstr(err, "no usable checkpoint"),
              "resolve with only bad files: rc %d none %d '%s'", rc, none, err);

  /* shape mismatches and a missing dataset, on a good file */
  ckpt_meta m = meta_for(40);
  TEST_EXPECT(ckpt_save(dir, s.t, NT, &m, 0, comm, err, sizeof err) == C_OK, "%s", err);
  char p40[800];
  snprintf(p40, sizeof p40, "%s/ckpt_00000040.h5", dir);
  shape sh[NT];
  memcpy(sh, SH, sizeof sh);
  sh[0].rows = 5;
  sh[0].cols = 7;
  tset w;
  tset_make(&w, sh, L_WHOLE, M_NONE, 0);
  rc = ckpt_load(p40, w.t, NT, NULL, NULL, comm, err, sizeof err);
  expect_err(rc, err, p40,
             "/model/encoder.layers.0.fc1.weight has shape (7,5), the model expects (5,7)",
             "2-D shape");
  tset_free(&w);
  memcpy(sh, SH, sizeof sh);
  sh[1].cols = 12;
  tset_make(&w, sh, L_ROWS, M_NONE, 0);
  rc = ckpt_load(p40, w.t, NT, NULL, NULL, comm, err, sizeof err);
  expect_err(rc, err, p40,
             "/model/encoder.layers.0.fc1.bias has shape (13), the model expects (12)",
             "vector shape");
  tset_free(&w);
  memcpy(sh, SH, sizeof sh);
  sh[2].name = "decoder.output_projection.weight";
  tset_make(&w, sh, L_COLS, M_NONE, 0);
  rc = ckpt_load(p40, w.t, NT, NULL, NULL, comm, err, sizeof err);
  expect_err(rc, err, p40, "dataset /model/decoder.output_projection.weight missing",
             "missing dataset");
  tset_free(&w);
  tset_free(&s);
  tset_free(&in);
}

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
  return remove(p);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  grid g;
  char err[1024];
  CHECK(grid_create(&g, 1, 1, 1, 1, err, sizeof err) == C_OK, "%s", err);
  comm = g.world;
  rank = g.world_rank;
  size = g.world_size;
  char root[512];
  int pid = (int)getpid();
  MPI_Bcast(&pid, 1, MPI_INT, 0, comm);
  snprintf(root, sizeof root, "/tmp/test_ckpt_%d", pid);
  if (rank == 0) CHECK(mkdir(root, 0755) == 0, "cannot create %s", root);
  MPI_Barrier(comm);

  test_cross_layout(root);
  test_meta(root);
  test_retention(root);
  test_failures(root);

  MPI_Barrier(comm);
  if (rank == 0) nftw(root, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
  grid_destroy(&g);
  int rc = test_finish();
  MPI_Finalize();
  return rc;
}
