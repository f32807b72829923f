// NP: 1 2
/* test_data.c: the HDF5 dataset reader, batching and shuffling (data.h).
 *
 * Rank 0 writes small datasets with the plain C HDF5 API (sec2 driver) under /tmp, in
 * the layout data_prep/pack.py writes (vlen UTF-8 strings, int32 attributes), then
 * every rank opens them with parallel HDF5 and checks: attributes and pieces; lengths;
 * plans (each sentence once per epoch, dropped count, max_tokens, determinism,
 * different epochs differ, length bucketing, the exact unshuffled order, greedy cuts);
 * batch contents against the written tokens (rank r loads batches r, r+P, ...; the
 * union covers the plan); explicit id lists with duplicates and empty sentences;
 * buffer reuse; the text reader; and every bad input gives NULL with the same clear
 * message on every rank. Also times a plan over 30k sentences and 4096-token loads.
 */
#include "data.h"
#include "harness.h"

#include <hdf5.h>
#include <string.h>
#include <unistd.h>

#define V 50 /* vocab size */
#define PAD 1
#define BOS 0
#define EOS 2
#define UNK 3

/* ---- deterministic generator for the test data (every rank makes the same data) ---- */
static uint64_t tr_state;
static uint64_t tr_next(void) {
  uint64_t z = (tr_state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
static int tr_below(int n) {
  return (int)(tr_next() % (uint64_t)n);
}

typedef struct {
  int64_t n;
  int64_t *off[2];
  int32_t *tok[2];
  char **text[2]; /* NULL: no text datasets */
} tsplit;

static int tlen(const tsplit *t, int k, int64_t i) {
  return (int)(t->off[k][i + 1] - t->off[k][i]);
}

/* n sentences, lengths mostly in [0, maxlen], a few up to 3*maxlen. */
static void gen_split(tsplit *t, int64_t n, int maxlen, int with_text, uint64_t seed) {
  tr_state = seed;
  t->n = n;
  for (int k = 0; k < 2; k++) {
    int *len = malloc((size_t)n * sizeof *len);
    int64_t total = 0;
    for (int64_t i = 0; i < n; i++) {
      len[i] = tr_below(20) == 0 ? tr_below(3 * maxlen + 1) : tr_below(maxlen + 1);
      total += len[i];
    }
    t->off[k] = malloc((size_t)(n + 1) * sizeof(int64_t));
    t->tok[k] = malloc((size_t)(total > 0 ? total : 1) * sizeof(int32_t));
    t->off[k][0] = 0;
    for (int64_t i = 0; i < n; i++)
      t->off[k][i + 1] = t->off[k][i] + len[i];
    for (int64_t j = 0; j < total; j++)
      t->tok[k][j] = 4 + tr_below(V - 4);
    free(len);
    t->text[k] = NULL;
    if (with_text) {
      t->text[k] = malloc((size_t)n * sizeof(char *));
      for (int64_t i = 0; i < n; i++) {
        char buf[256];
        int w = snprintf(buf, sizeof buf, "%s %lld: caf\xc3\xa9 \xe2\x96\x81", k ? "tgt" : "src",
                         (long long)i);
        int extra = tr_below(60);
        for (int c = 0; c < extra && w < 250; c++)
          buf[w++] = (char)('a' + tr_below(26));
        buf[w] = '\0';
        t->text[k][i] = strdup(buf);
      }
    }
  }
}

static void free_split(tsplit *t) {
  for (int k = 0; k < 2; k++) {
    free(t->off[k]);
    free(t->tok[k]);
    if (t->text[k]) {
      for (int64_t i = 0; i < t->n; i++)
        free(t->text[k][i]);
      free(t->text[k]);
    }
  }
}

/* ---- writing with the serial C API ---- */
static hid_t vstr_type(void) {
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, H5T_VARIABLE);
  H5Tset_cset(t, H5T_CSET_UTF8);
  return t;
}

static void put_int_attr(hid_t obj, const char *name, int v) {
  hid_t sp = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(obj, name, H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT);
  CHECK(a >= 0 && H5Awrite(a, H5T_NATIVE_INT, &v) >= 0, "writing attribute %s", name);
  H5Aclose(a);
  H5Sclose(sp);
}

static void put_str_attr(hid_t obj, const char *name, const char *v, int vlen) {
  hid_t sp = H5Screate(H5S_SCALAR), t;
  if (vlen) {
    t = vstr_type();
  } else {
    t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(v) + 1);
  }
  hid_t a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
  CHECK(a >= 0 && H5Awrite(a, t, vlen ? (const void *)&v : (const void *)v) >= 0,
        "writing attribute %s", name);
  H5Aclose(a);
  H5Tclose(t);
  H5Sclose(sp);
}

static void put_dataset(hid_t loc, const char *name, hid_t ftype, hid_t mtype, hsize_t n,
                        const void *buf) {
  hid_t sp = H5Screate_simple(1, &n, NULL);
  hid_t d = H5Dcreate2(loc, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  CHECK(d >= 0 && (n == 0 || H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0),
        "writing dataset %s", name);
  H5Dclose(d);
  H5Sclose(sp);
}

enum { OK_SPLIT, NONMONO, BADEND, BADTOK, BADTOK_MID, NEGTOK, COUNT, NOOFF };

static void put_split(hid_t file, const char *name, const tsplit *t, int mode) {
  hid_t g = H5Gcreate2(file, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  for (int k = 0; k < 2; k++) {
    hid_t gs = H5Gcreate2(g, k ? "tgt" : "src", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int64_t n = t->n, total = t->off[k][n];
    int64_t *off = malloc((size_t)(n + 1) * sizeof *off);
    int32_t *tok = malloc((size_t)(total > 0 ? total : 1) * sizeof *tok);
    memcpy(off, t->off[k], (size_t)(n + 1) * sizeof *off);
    memcpy(tok, t->tok[k], (size_t)total * sizeof *tok);
    if (mode == NONMONO && k == 0) {
      int64_t i = n / 2;
      while (off[i + 1] == off[i])
        i++;
      off[i + 1] = off[i] - 1; /* goes backwards */
    }
    if (mode == BADEND && k == 1) off[n] += 3;
    if (mode == BADTOK && k == 1) tok[total - 1] = V;         /* the last rank's last */
    if (mode == BADTOK_MID && k == 1) tok[total / 2] = V + 5; /* first of rank 1's of 2 */
    if (mode == NEGTOK && k == 0) tok[0] = -1;                /* first of rank 0's */
    int64_t n_off = (mode == COUNT && k == 1) ? n : n + 1;
    put_dataset(gs, "tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, (hsize_t)total, tok);
    if (!(mode == NOOFF && k == 1))
      put_dataset(gs, "offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, (hsize_t)n_off, off);
    if (t->text[k]) {
      hid_t vt = vstr_type();
      put_dataset(gs, "text", vt, vt, (hsize_t)n, t->text[k]);
      H5Tclose(vt);
    }
    free(off);
    free(tok);
    H5Gclose(gs);
  }
  H5Gclose(g);
}

static char *pieces[V];

static hid_t new_file(const char *path, int version) {
  hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  CHECK(f >= 0, "cannot create %s", path);
  put_int_attr(f, "format_version", version);
  put_str_attr(f, "src_lang", "de", 1);
  put_str_attr(f, "tgt_lang", "en", 0); /* fixed-length: both kinds must be accepted */
  put_int_attr(f, "pad_id", PAD);
  put_int_attr(f, "unk_id", UNK);
  put_int_attr(f, "bos_id", BOS);
  put_int_attr(f, "eos_id", EOS);
  put_int_attr(f, "vocab_size", V);
  hid_t g = H5Gcreate2(f, "vocab", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  hid_t vt = vstr_type();
  put_dataset(g, "pieces", vt, vt, V, pieces);
  H5Tclose(vt);
  uint8_t model[16] = {1, 2, 3};
  put_dataset(g, "spm_model", H5T_STD_U8LE, H5T_NATIVE_UINT8, 16, model);
  H5Gclose(g);
  return f;
}

/* ---- checks ---- */
static int rank, nranks;

/* Expect a NULL open on every rank with an error containing `want`, the same text on
 * every rank. */
static void expect_fail(const void *ptr, const char *err, const char *want, const char *what) {
  int any_ok = common_any(MPI_COMM_WORLD, ptr != NULL);
  TEST_EXPECT(ptr == NULL && !any_ok, "%s: should fail on every rank", what);
  TEST_EXPECT(strstr(err, want) != NULL, "%s: error \"%s\" should mention \"%s\"", what, err, want);
  uint64_t h = 1469598103934665603ULL, hmin, hmax;
  for (const char *c = err; *c; c++)
    h = (h ^ (uint8_t)*c) * 1099511628211ULL;
  MPI_Allreduce(&h, &hmin, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(&h, &hmax, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  TEST_EXPECT(hmin == hmax, "%s: every rank should get the same message", what);
  if (rank == 0) printf("  %-22s -> %s\n", what, err);
}

/* Check one loaded batch against the written data. */
static void check_batch(const data_batch *b, const tsplit *t, const int64_t *ids, int n,
                        const char *what) {
  int ok = b->n_seq == n, max_s = 0, max_t = 0;
  int64_t cs = 0, ct = 0;
  for (int j = 0; j < n; j++) {
    max_s = tlen(t, 0, ids[j]) > max_s ? tlen(t, 0, ids[j]) : max_s;
    max_t = tlen(t, 1, ids[j]) > max_t ? tlen(t, 1, ids[j]) : max_t;
  }
  ok = ok && b->src_len == max_s + 1 && b->tgt_len == max_t + 1;
  for (int j = 0; ok && j < n; j++) {
    ok = b->ids[j] == ids[j];
    const int32_t *ts = t->tok[0] + t->off[0][ids[j]], *tt = t->tok[1] + t->off[1][ids[j]];
    int ls = tlen(t, 0, ids[j]), lt = tlen(t, 1, ids[j]);
    const int32_t *src = b->src + (size_t)j * b->src_len;
    const int32_t *in = b->tgt_in + (size_t)j * b->tgt_len,
                  *out = b->tgt_out + (size_t)j * b->tgt_len;
    for (int c = 0; ok && c < b->src_len; c++)
      ok = src[c] == (c < ls ? ts[c] : c == ls ? EOS : PAD);
    for (int c = 0; ok && c < b->tgt_len; c++) {
      ok = in[c] == (c == 0 ? BOS : c <= lt ? tt[c - 1] : PAD);
      ok = ok && out[c] == (c < lt ? tt[c] : c == lt ? EOS : PAD);
    }
    cs += ls + 1;
    ct += lt + 1;
  }
  ok = ok && b->n_src_tokens == cs && b->n_tgt_tokens == ct;
  TEST_EXPECT(ok, "%s: batch contents differ from the written tokens", what);
}

static int key_cmp3(const tsplit *t, int64_t a, int64_t b) { /* (tgt, src) */
  int d = tlen(t, 1, a) - tlen(t, 1, b);
  return d ? d : tlen(t, 0, a) - tlen(t, 0, b);
}

static const tsplit *sort_t;
static int id_cmp(const void *x, const void *y) { /* (tgt, src, id) */
  int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
  int d = key_cmp3(sort_t, a, b);
  return d ? d : (a > b) - (a < b);
}

static int dbl_cmp(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return (a > b) - (a < b);
}

static int64_t width(const tsplit *t, int64_t i) {
  int ls = tlen(t, 0, i), lt = tlen(t, 1, i);
  return (ls > lt ? ls : lt) + 1;
}

static int plans_equal(const data_plan *a, const data_plan *b) {
  if (a->n_batches != b->n_batches) return 0;
  if (memcmp(a->starts, b->starts, (size_t)(a->n_batches + 1) * sizeof(int64_t))) return 0;
  return memcmp(a->ids, b->ids, (size_t)a->starts[a->n_batches] * sizeof(int64_t)) == 0;
}

/* Plan invariants: each kept sentence once, dropped ones never, max_tokens respected. */
static void check_plan(const data_plan *p, const tsplit *t, int64_t max_tokens, int maxl,
                       int64_t dropped, const char *what) {
  int *seen = calloc((size_t)t->n, sizeof *seen);
  int64_t want_dropped = 0;
  for (int64_t i = 0; i < t->n; i++)
    want_dropped += maxl > 0 && (tlen(t, 0, i) > maxl || tlen(t, 1, i) > maxl);
  TEST_EXPECT(dropped == want_dropped, "%s: dropped %lld, expected %lld", what, (long long)dropped,
              (long long)want_dropped);
  int ok_tok = 1, ok_range = p->starts[0] == 0;
  for (int64_t b = 0; b < p->n_batches; b++) {
    int64_t n = p->starts[b + 1] - p->starts[b], w = 0;
    ok_range = ok_range && n > 0;
    for (int64_t q = p->starts[b]; q < p->starts[b + 1]; q++) {
      int64_t id = p->ids[q];
      if (id >= 0 && id < t->n) seen[id]++;
      w = width(t, id) > w ? width(t, id) : w;
    }
    if (n > 1 && n * w > max_tokens) ok_tok = 0;
  }
  TEST_EXPECT(ok_range, "%s: batches must be non-empty and start at 0", what);
  TEST_EXPECT(ok_tok, "%s: a batch exceeds max_tokens=%lld", what, (long long)max_tokens);
  int ok_once = 1;
  for (int64_t i = 0; i < t->n; i++) {
    int drop = maxl > 0 && (tlen(t, 0, i) > maxl || tlen(t, 1, i) > maxl);
    if (seen[i] != (drop ? 0 : 1)) ok_once = 0;
  }
  TEST_EXPECT(ok_once, "%s: every kept sentence must appear exactly once", what);
  free(seen);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &nranks);
  long pid = (long)getpid();
  MPI_Bcast(&pid, 1, MPI_LONG, 0, MPI_COMM_WORLD);
  char good[128], v2[128], bad[128], noth5[128], missing[128];
  snprintf(good, sizeof good, "/tmp/mpiformer_test_data_%ld_good.h5", pid);
  snprintf(v2, sizeof v2, "/tmp/mpiformer_test_data_%ld_v2.h5", pid);
  snprintf(bad, sizeof bad, "/tmp/mpiformer_test_data_%ld_bad.h5", pid);
  snprintf(noth5, sizeof noth5, "/tmp/mpiformer_test_data_%ld_text.h5", pid);
  snprintf(missing, sizeof missing, "/tmp/mpiformer_test_data_%ld_missing.h5", pid);

  for (int i = 0; i < V; i++) {
    char buf[32];
    snprintf(buf, sizeof buf, i < 4 ? "<s%d>" : "\xe2\x96\x81w%d", i);
    pieces[i] = strdup(buf);
  }
  tsplit train, valid, big, small;
  gen_split(&train, 700, 24, 1, 11);
  gen_split(&valid, 37, 30, 1, 12);
  gen_split(&big, 30000, 40, 0, 13);
  gen_split(&small, 40, 10, 0, 14);

  if (rank == 0) {
    hid_t f = new_file(good, 1);
    put_split(f, "train", &train, OK_SPLIT);
    put_split(f, "valid", &valid, OK_SPLIT);
    put_split(f, "big", &big, OK_SPLIT);
    H5Fclose(f);
    f = new_file(v2, 2);
    put_split(f, "train", &small, OK_SPLIT);
    H5Fclose(f);
    f = new_file(bad, 1);
    put_split(f, "nonmono", &small, NONMONO);
    put_split(f, "badend", &small, BADEND);
    put_split(f, "badtok", &small, BADTOK);
    put_split(f, "badtokmid", &small, BADTOK_MID);
    put_split(f, "negtok", &small, NEGTOK);
    put_split(f, "count", &small, COUNT);
    put_split(f, "nooff", &small, NOOFF);
    H5Fclose(f);
    FILE *fp = fopen(noth5, "w");
    fputs("this is not an HDF5 file\n", fp);
    fclose(fp);
  }
  MPI_Barrier(MPI_COMM_WORLD);

  char err[512];
  /* ---- bad inputs ---- */
  if (rank == 0) printf("error messages:\n");
  data_file *bf = data_open(missing, MPI_COMM_WORLD, err, sizeof err);
  expect_fail(bf, err, "no such file", "missing file");
  bf = data_open(noth5, MPI_COMM_WORLD, err, sizeof err);
  expect_fail(bf, err, "not an HDF5 file", "not HDF5");
  bf = data_open(v2, MPI_COMM_WORLD, err, sizeof err);
  expect_fail(bf, err, "format_version 2", "wrong format_version");
  bf = data_open(bad, MPI_COMM_WORLD, err, sizeof err);
  TEST_EXPECT(bf != NULL, "open %s: %s", bad, err);
  if (bf) {
    data_split *bs = data_split_open(bf, "nonmono", err, sizeof err);
    expect_fail(bs, err, "not monotone", "non-monotone offsets");
    bs = data_split_open(bf, "badend", err, sizeof err);
    expect_fail(bs, err, "but /badend/tgt/tokens holds", "offsets/tokens length");
    bs = data_split_open(bf, "badtok", err, sizeof err);
    expect_fail(bs, err, "] = 50 is outside [0, vocab_size=50)", "token id >= vocab_size");
    bs = data_split_open(bf, "badtokmid", err, sizeof err);
    expect_fail(bs, err, "] = 55 is outside", "token id mid-file");
    bs = data_split_open(bf, "negtok", err, sizeof err);
    expect_fail(bs, err, "/negtok/src/tokens[0] = -1 is outside", "negative token id");
    bs = data_split_open(bf, "count", err, sizeof err);
    expect_fail(bs, err, "source but", "src/tgt count mismatch");
    bs = data_split_open(bf, "nooff", err, sizeof err);
    expect_fail(bs, err, "/nooff/tgt/offsets is missing", "missing dataset");
    bs = data_split_open(bf, "test", err, sizeof err);
    expect_fail(bs, err, "no split \"test\"", "missing split");
    data_close(bf);
  }

  /* ---- attributes and pieces ---- */
  data_file *f = data_open(good, MPI_COMM_WORLD, err, sizeof err);
  TEST_EXPECT(f != NULL, "open %s: %s", good, err);
  if (!f) goto end;
  TEST_EXPECT(data_vocab_size(f) == V && data_pad_id(f) == PAD && data_bos_id(f) == BOS &&
                  data_eos_id(f) == EOS && data_unk_id(f) == UNK,
              "attributes read back wrong");
  int ok = 1;
  for (int i = 0; i < V; i++)
    ok = ok && strcmp(data_piece(f, i), pieces[i]) == 0;
  TEST_EXPECT(ok, "pieces differ");
  TEST_EXPECT(strcmp(data_piece(f, -1), "") == 0 && strcmp(data_piece(f, V), "") == 0,
              "out-of-range piece should be \"\"");

  data_split *s = data_split_open(f, "train", err, sizeof err);
  TEST_EXPECT(s != NULL, "open split train: %s", err);
  if (!s) goto end;
  TEST_EXPECT(data_split_size(s) == train.n, "split size %lld", (long long)data_split_size(s));
  ok = 1;
  for (int64_t i = 0; i < train.n; i++)
    for (int k = 0; k < 2; k++)
      ok = ok && data_split_len(s, k, i) == tlen(&train, k, i);
  TEST_EXPECT(ok, "lengths differ");

  /* ---- text ---- */
  ok = 1;
  char buf[300];
  for (int64_t i = 0; i < train.n; i += 7)
    for (int k = 0; k < 2; k++) {
      data_split_text(s, k, i, buf, sizeof buf);
      ok = ok && strcmp(buf, train.text[k][i]) == 0;
    }
  TEST_EXPECT(ok, "text differs from the stored strings");
  data_split_text(s, 1, 3, buf, 5);
  TEST_EXPECT(strncmp(buf, train.text[1][3], 4) == 0 && strlen(buf) == 4, "truncated text: %s",
              buf);

  /* ---- plans ---- */
  const int64_t max_tok = 300;
  const int maxl = 40;
  data_plan p0, p0b, p1, p0s, pu, pu2;
  int64_t dropped = -1;
  data_plan_make(&p0, s, max_tok, maxl, maxl, 1, 42, 0, &dropped);
  check_plan(&p0, &train, max_tok, maxl, dropped, "shuffled epoch 0");
  TEST_EXPECT(dropped > 0, "the test data should have long sentences to drop");
  data_plan_make(&p0b, s, max_tok, maxl, maxl, 1, 42, 0, NULL);
  data_plan_make(&p1, s, max_tok, maxl, maxl, 1, 42, 1, &dropped);
  data_plan_make(&p0s, s, max_tok, maxl, maxl, 1, 43, 0, &dropped);
  check_plan(&p1, &train, max_tok, maxl, dropped, "shuffled epoch 1");
  TEST_EXPECT(plans_equal(&p0, &p0b), "same (seed, epoch) must give the same plan");
  TEST_EXPECT(!plans_equal(&p0, &p1), "different epochs must give different plans");
  TEST_EXPECT(!plans_equal(&p0, &p0s), "different seeds must give different plans");
  TEST_EXPECT(p0.n_batches > 10, "expected many batches, got %lld", (long long)p0.n_batches);

  /* Same plan on every rank (hash of the plan). */
  uint64_t h = 1469598103934665603ULL, hmin, hmax;
  for (int64_t q = 0; q < p0.starts[p0.n_batches]; q++)
    h = (h ^ (uint64_t)p0.ids[q]) * 1099511628211ULL;
  for (int64_t b = 0; b <= p0.n_batches; b++)
    h = (h ^ (uint64_t)p0.starts[b]) * 1099511628211ULL;
  MPI_Allreduce(&h, &hmin, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(&h, &hmax, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  TEST_EXPECT(hmin == hmax, "ranks computed different plans");

  /* Unshuffled: independent of seed/epoch, exactly sorted by (tgt, src, index), and cut
   * greedily (the next sentence would not have fit). */
  data_plan_make(&pu, s, max_tok, maxl, maxl, 0, 1, 0, &dropped);
  data_plan_make(&pu2, s, max_tok, maxl, maxl, 0, 99, 5, NULL);
  check_plan(&pu, &train, max_tok, maxl, dropped, "unshuffled");
  TEST_EXPECT(plans_equal(&pu, &pu2), "shuffle=0 must not depend on seed or epoch");
  int64_t nk = pu.starts[pu.n_batches];
  int64_t *want = malloc((size_t)nk * sizeof *want);
  memcpy(want, pu.ids, (size_t)nk * sizeof *want);
  sort_t = &train;
  qsort(want, (size_t)nk, sizeof *want, id_cmp);
  TEST_EXPECT(memcmp(want, pu.ids, (size_t)nk * sizeof *want) == 0,
              "unshuffled plan is not in (tgt len, src len, index) order");
  ok = 1;
  for (int64_t b = 0; b + 1 < pu.n_batches; b++) {
    int64_t n = pu.starts[b + 1] - pu.starts[b] + 1, w = 0;
    for (int64_t q = pu.starts[b]; q <= pu.starts[b + 1]; q++)
      w = width(&train, pu.ids[q]) > w ? width(&train, pu.ids[q]) : w;
    if (n * w <= max_tok) ok = 0;
  }
  TEST_EXPECT(ok, "batches are not cut greedily (the next sentence would have fit)");

  /* Shuffled: each batch is a run of the (tgt, src) order: keys non-decreasing inside a
   * batch, and batches ordered by (first key, last key) do not overlap. Ties are broken
   * differently from index order somewhere. */
  ok = 1;
  int64_t *bord = malloc((size_t)p0.n_batches * sizeof *bord);
  for (int64_t b = 0; b < p0.n_batches; b++) {
    bord[b] = b;
    for (int64_t q = p0.starts[b] + 1; q < p0.starts[b + 1]; q++)
      if (key_cmp3(&train, p0.ids[q - 1], p0.ids[q]) > 0) ok = 0;
  }
  TEST_EXPECT(ok, "a shuffled batch is not sorted by (tgt len, src len)");
  for (int64_t a = 1; a < p0.n_batches; a++) /* insertion sort of batches by keys */
    for (int64_t c = a; c > 0; c--) {
      int64_t x = bord[c - 1], y = bord[c];
      int d = key_cmp3(&train, p0.ids[p0.starts[x]], p0.ids[p0.starts[y]]);
      if (!d) d = key_cmp3(&train, p0.ids[p0.starts[x + 1] - 1], p0.ids[p0.starts[y + 1] - 1]);
      if (d <= 0) break;
      bord[c - 1] = y;
      bord[c] = x;
    }
  ok = 1;
  int tie_shuffled = 0;
  for (int64_t a = 0; a + 1 < p0.n_batches; a++) {
    int64_t x = bord[a], y = bord[a + 1];
    if (key_cmp3(&train, p0.ids[p0.starts[x + 1] - 1], p0.ids[p0.starts[y]]) > 0) ok = 0;
  }
  for (int64_t q = 1; q < nk; q++)
    if (key_cmp3(&train, p0.ids[q - 1], p0.ids[q]) == 0 && p0.ids[q - 1] > p0.ids[q])
      tie_shuffled = 1;
  TEST_EXPECT(ok, "shuffled batches overlap in length: not length-bucketed");
  TEST_EXPECT(tie_shuffled, "ties in length should be broken by the shuffle, not by index");
  int in_order = 1;
  for (int64_t b = 0; b < p0.n_batches; b++)
    in_order = in_order && bord[b] == b;
  TEST_EXPECT(!in_order, "batch order should be shuffled");
  free(bord);
  free(want);

  /* ---- loads: rank r loads batches r, r+P, ...; together they cover the plan ---- */
  data_batch bt;
  memset(&bt, 0, sizeof bt);
  int *seen = calloc((size_t)train.n, sizeof *seen),
      *seen_all = calloc((size_t)train.n, sizeof *seen);
  int n_loaded = 0, n_loaded_all = 0;
  for (int64_t b = rank; b < p0.n_batches; b += nranks) {
    data_batch_load(s, &p0, b, &bt);
    int n = (int)(p0.starts[b + 1] - p0.starts[b]);
    char what[64];
    snprintf(what, sizeof what, "batch %lld", (long long)b);
    check_batch(&bt, &train, p0.ids + p0.starts[b], n, what);
    for (int j = 0; j < bt.n_seq; j++)
      seen[bt.ids[j]]++;
    n_loaded++;
  }
  MPI_Allreduce(seen, seen_all, (int)train.n, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(&n_loaded, &n_loaded_all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  ok = n_loaded_all == p0.n_batches;
  for (int64_t i = 0; i < train.n; i++) {
    int drop = tlen(&train, 0, i) > maxl || tlen(&train, 1, i) > maxl;
    ok = ok && seen_all[i] == (drop ? 0 : 1);
  }
  TEST_EXPECT(ok, "the ranks' batches do not cover the plan exactly once");
  if (nranks > 1) {
    int mine = n_loaded > 0 && n_loaded < p0.n_batches;
    TEST_EXPECT(mine, "rank %d loaded %d of %lld batches", rank, n_loaded, (long long)p0.n_batches);
  }
  free(seen);
  free(seen_all);

  /* Explicit ids: unsorted, duplicated, empty sentences, the last and first sentence. */
  int64_t e0 = -1, e1 = -1;
  for (int64_t i = 0; i < train.n && (e0 < 0 || e1 < 0); i++) {
    if (tlen(&train, 0, i) == 0 && e0 < 0) e0 = i;
    if (tlen(&train, 1, i) == 0 && e1 < 0) e1 = i;
  }
  TEST_EXPECT(e0 >= 0 && e1 >= 0, "test data should contain empty sentences");
  int64_t ids[] = {5, 3, 5, e0 < 0 ? 1 : e0, train.n - 1, 0, e1 < 0 ? 2 : e1, 3, 4};
  int nid = (int)(sizeof ids / sizeof ids[0]);
  data_batch_load_ids(s, ids, nid, &bt);
  check_batch(&bt, &train, ids, nid, "explicit ids");
  /* A big then a small load reuse the buffers. */
  data_batch_load(s, &p0, 0, &bt);
  int32_t *keep_src = bt.src;
  size_t keep_cap = bt.cap_tok;
  data_batch_load_ids(s, ids, 2, &bt);
  check_batch(&bt, &train, ids, 2, "small after big");
  TEST_EXPECT(bt.src == keep_src && bt.cap_tok == keep_cap, "buffers should be reused");
  data_batch_load_ids(s, ids, 0, &bt);
  TEST_EXPECT(bt.n_seq == 0 && bt.n_src_tokens == 0, "empty batch");
  data_batch_free(&bt);
  data_plan_free(&p0);
  data_plan_free(&p0b);
  data_plan_free(&p1);
  data_plan_free(&p0s);
  data_plan_free(&pu);
  data_plan_free(&pu2);
  data_split_close(s);

  /* Valid split (shuffle = 0, no limits) loads whole. */
  s = data_split_open(f, "valid", err, sizeof err);
  TEST_EXPECT(s != NULL, "open split valid: %s", err);
  if (s) {
    data_plan_make(&pu, s, 200, 0, 0, 0, 0, 0, &dropped);
    check_plan(&pu, &valid, 200, 0, dropped, "valid");
    memset(&bt, 0, sizeof bt);
    for (int64_t b = 0; b < pu.n_batches; b++) {
      data_batch_load(s, &pu, b, &bt);
      check_batch(&bt, &valid, pu.ids + pu.starts[b], (int)(pu.starts[b + 1] - pu.starts[b]),
                  "valid batch");
    }
    data_batch_free(&bt);
    data_plan_free(&pu);
    data_split_close(s);
  }

  /* ---- timings: 30k sentences ---- */
  double t0 = common_now();
  s = data_split_open(f, "big", err, sizeof err);
  double t_open = common_now() - t0;
  TEST_EXPECT(s != NULL, "open split big: %s", err);
  if (s) {
    data_split_text(s, 1, 0, buf, sizeof buf);
    TEST_EXPECT(buf[0] == '\0', "a split without text gives \"\"");
    /* Median of per-call times: robust to the other processes sharing this machine. */
    enum { REPS = 11, NB_MAX = 201 };
    double tp[REPS], tl[NB_MAX];
    for (int r = 0; r < REPS; r++) {
      t0 = common_now();
      data_plan_make(&pu, s, 4096, 0, 0, 1, 7, r, &dropped);
      tp[r] = common_now() - t0;
      if (r + 1 < REPS) data_plan_free(&pu);
    }
    check_plan(&pu, &big, 4096, 0, dropped, "big");
    memset(&bt, 0, sizeof bt);
    int64_t nb = pu.n_batches < NB_MAX ? pu.n_batches : NB_MAX, nseq = 0, ntok = 0;
    data_batch_load(s, &pu, 0, &bt); /* warm */
    for (int64_t b = 0; b < nb; b++) {
      t0 = common_now();
      data_batch_load(s, &pu, b, &bt);
      tl[b] = common_now() - t0;
      nseq += bt.n_seq;
      ntok += bt.n_src_tokens + bt.n_tgt_tokens;
    }
    qsort(tp, REPS, sizeof(double), dbl_cmp);
    qsort(tl, (size_t)nb, sizeof(double), dbl_cmp);
    double t_plan = tp[REPS / 2], t_load = tl[nb / 2];
    for (int64_t b = 0; b < nb; b += 37) {
      data_batch_load(s, &pu, b, &bt);
      check_batch(&bt, &big, pu.ids + pu.starts[b], (int)(pu.starts[b + 1] - pu.starts[b]),
                  "big batch");
    }
    if (rank == 0)
      printf("timings (np=%d): split open+scan of %lld sentences %.2f ms; plan (median of %d) "
             "%.2f ms; load of a 4096-token batch: median %.3f ms, min %.3f ms, max %.3f ms "
             "(%lld batches of %.0f sentences, %.0f non-pad tokens on average)\n",
             nranks, (long long)big.n, 1e3 * t_open, REPS, 1e3 * t_plan, 1e3 * t_load, 1e3 * tl[0],
             1e3 * tl[nb - 1], (long long)nb, (double)nseq / (double)nb, (double)ntok / (double)nb);
    TEST_EXPECT(t_plan < 0.25, "plan over 30k sentences took %.1f ms", 1e3 * t_plan);
    TEST_EXPECT(t_load < 0.05, "a 4096-token load took %.2f ms", 1e3 * t_load);
    data_batch_free(&bt);
    data_plan_free(&pu);
    data_split_close(s);
  }
  data_close(f);

end:
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) {
    unlink(good);
    unlink(v2);
    unlink(bad);
    unlink(noth5);
  }
  free_split(&train);
  free_split(&valid);
  free_split(&big);
  free_split(&small);
  for (int i = 0; i < V; i++)
    free(pieces[i]);
  int rc = test_finish();
  MPI_Finalize();
  return rc;
}
