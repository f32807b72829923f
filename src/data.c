/* data.c: the HDF5 dataset reader (see data.h for the file layout).
 *
 * What it does: opens the dataset file with parallel HDF5 (MPI-IO driver), reads the
 * attributes, the vocabulary pieces and a split's offsets on every rank, validates
 * them (format version, monotone offsets that end at the tokens' length, token ids in
 * [0, vocab_size)) with every rank agreeing on the verdict, plans the batches of an
 * epoch from the lengths alone, and reads a batch's tokens with one independent
 * H5Dread per side: the file selection is the union of the sentences' ranges.
 *
 * What it does not do: tokenize, detokenize (decode does), keep any token data beyond
 * the current batch, or talk to other ranks after a split is open (loads and text
 * reads are independent). The plan uses no MPI at all: it is a pure function of the
 * lengths and (seed, epoch), so every rank, at any rank count, computes the same one.
 *
 * Validation of token ids happens at data_split_open: the ranks share the scan of the
 * tokens (each reads 1/P of each side, in 1 Mi-token pieces), so a corrupt file fails
 * early on every rank with one clear message instead of mid-epoch on one rank.
 * data_batch_load checks the ids again (cheap: it touches every token anyway) and
 * aborts if the file changed under us.
 */
#include "data.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <hdf5.h>
#include <string.h>
#include <unistd.h>

#include "h5quiet.h"

#define DATA_FORMAT_VERSION 1
#define DATA_SCAN_CHUNK ((hsize_t)1 << 20) /* tokens read at a time by the open-time scan */

#if H5_VERSION_GE(1, 12, 0) /* H5Treclaim is declared in 1.10.8 but only exported from 1.12 */
#define DATA_VLEN_RECLAIM(type, space, buf) H5Treclaim((type), (space), H5P_DEFAULT, (buf))
#else
#define DATA_VLEN_RECLAIM(type, space, buf) H5Dvlen_reclaim((type), (space), H5P_DEFAULT, (buf))
#endif

struct data_file {
  MPI_Comm comm;
  int rank, size;
  hid_t file;
  char *path;
  int format_version, pad_id, unk_id, bos_id, eos_id, vocab_size;
  char src_lang[32], tgt_lang[32];
  char task[64];        /* root attribute "task" ("" for translation files) */
  int n_classes;        /* root attribute "n_classes" of a pair_classification file, else 0 */
  const char *sides[2]; /* group names of the two sides: src/tgt, or a/b for pair files */
  char **pieces;        /* vocab_size pointers into piece_buf */
  char *piece_buf;      /* all pieces, NUL-terminated, back to back */
};

/* A (sentence id, position in the batch) pair, sorted by id to follow file order. */
typedef struct {
  int64_t id;
  int64_t j;
} data_slot;

struct data_split {
  data_file *f;
  char name[64];
  int64_t n;       /* sentences */
  int64_t *off[2]; /* (n + 1) offsets per side */
  int32_t *labels; /* (n) /<split>/label of a pair_classification file, else NULL */
  hid_t tokens[2]; /* /<split>/<side>/tokens */
  hid_t tspace[2]; /* its file dataspace; the selection is rebuilt per load */
  hid_t text[2];   /* /<split>/<side>/text, or -1 when the file has none */
  /* Scratch reused across loads, grown geometrically. */
  int32_t *raw; /* one side's tokens in file order */
  size_t raw_cap;
  data_slot *slots; /* (n_seq) sorted by id */
  int64_t *pos;     /* (n_seq) start of sentence j in raw */
  hsize_t *runs;    /* (n_seq, 2) contiguous file ranges: start, count */
  size_t slot_cap;
  char read_err[512]; /* the first failed batch read ("" while none) */
  int64_t n_reads;    /* side reads so far, for MPIFORMER_TEST_READ_FAIL */
};

/* ---------------------------------------------------------------------------------- */
/* Helpers                                                                            */

static const char *side_name_of(const data_file *f, int side) {
  return f->sides[side ? 1 : 0];
}

/* Grow *buf to hold at least `need` elements of `elem` bytes (contents not kept). */
static void grow(void **buf, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap && *buf) return;
  size_t c = *cap ? *cap : 256;
  while (c < need)
    c *= 2;
  free(*buf);
  *buf = common_malloc(c * elem);
  *cap = c;
}

/* Does the link `path` (absolute, e.g. "/train/src/tokens") exist? Walks it component
 * by component because H5Lexists fails when an intermediate group is missing. */
static int link_exists(hid_t file, const char *path) {
  char buf[256];
  size_t len = strlen(path);
  if (len >= sizeof buf) return 0;
  memcpy(buf, path, len + 1);
  for (size_t i = 1; i <= len; i++) {
    if (buf[i] != '/' && buf[i] != '\0') continue;
    char c = buf[i];
    buf[i] = '\0';
    htri_t e = H5Lexists(file, buf, H5P_DEFAULT);
    buf[i] = c;
    if (e <= 0) return 0;
  }
  return 1;
}

/* Read integer attribute `name` of `obj` into *v. C_ERR (with err) if missing or not a
 * scalar integer. */
static int read_int_attr(hid_t obj, const char *path, const char *name, int *v, char *err,
                         size_t err_len) {
  if (H5Aexists(obj, name) <= 0) {
    snprintf(err, err_len,
             "%s: attribute %s is missing; not a dataset written by data_prep/pack.py", path, name);
    return C_ERR;
  }
  int rc = C_ERR;
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  hid_t t = a >= 0 ? H5Aget_type(a) : -1;
  hid_t sp = a >= 0 ? H5Aget_space(a) : -1;
  if (a < 0 || t < 0 || sp < 0) {
    snprintf(err, err_len, "%s: cannot read attribute %s", path, name);
  } else if (H5Tget_class(t) != H5T_INTEGER || H5Sget_simple_extent_npoints(sp) != 1) {
    snprintf(err, err_len, "%s: attribute %s should be one integer", path, name);
  } else {
    long long x = 0;
    if (H5Aread(a, H5T_NATIVE_LLONG, &x) < 0 || x < -2147483647LL || x > 2147483647LL) {
      snprintf(err, err_len, "%s: cannot read attribute %s as an int32", path, name);
    } else {
      *v = (int)x;
      rc = C_OK;
    }
  }
  if (sp >= 0) H5Sclose(sp);
  if (t >= 0) H5Tclose(t);
  if (a >= 0) H5Aclose(a);
  return rc;
}

/* Read optional string attribute `name` (variable or fixed length) into buf; "" when
 * absent or not a string. */
static void read_str_attr(hid_t obj, const char *name, char *buf, size_t len) {
  buf[0] = '\0';
  if (H5Aexists(obj, name) <= 0) return;
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  if (a < 0) return;
  hid_t ft = H5Aget_type(a);
  if (ft >= 0 && H5Tget_class(ft) == H5T_STRING) {
    hid_t mt = H5Tcopy(H5T_C_S1);
    H5Tset_cset(mt, H5Tget_cset(ft));
    if (H5Tis_variable_str(ft) > 0) {
      H5Tset_size(mt, H5T_VARIABLE);
      char *s = NULL;
      if (H5Aread(a, mt, &s) >= 0 && s) {
        snprintf(buf, len, "%s", s);
        hid_t sp = H5Screate(H5S_SCALAR);
        DATA_VLEN_RECLAIM(mt, sp, &s);
        H5Sclose(sp);
      }
    } else {
      size_t n = H5Tget_size(ft);
      char *s = common_calloc(n + 1, 1);
      H5Tset_size(mt, n + 1);
      H5Tset_strpad(mt, H5T_STR_NULLTERM);
      if (H5Aread(a, mt, s) >= 0) snprintf(buf, len, "%s", s);
      free(s);
    }
    H5Tclose(mt);
  }
  if (ft >= 0) H5Tclose(ft);
  H5Aclose(a);
}

/* Read the 1-D string dataset `d` (vlen or fixed) fully: *out gets `n` pointers into
 * one buffer *out_buf (caller frees both). */
static int read_str_dataset(hid_t d, int64_t *n_out, char ***out, char **out_buf) {
  int rc = C_ERR;
  hid_t ft = H5Dget_type(d), sp = H5Dget_space(d), mt = -1;
  char **vl = NULL, *fixed = NULL;
  if (ft < 0 || sp < 0 || H5Tget_class(ft) != H5T_STRING || H5Sget_simple_extent_ndims(sp) != 1)
    goto done;
  int64_t n = (int64_t)H5Sget_simple_extent_npoints(sp);
  mt = H5Tcopy(H5T_C_S1);
  H5Tset_cset(mt, H5Tget_cset(ft));
  size_t total = 0;
  int vlen = H5Tis_variable_str(ft) > 0;
  size_t fsize = H5Tget_size(ft);
  if (vlen) {
    H5Tset_size(mt, H5T_VARIABLE);
    vl = common_calloc((size_t)n, sizeof *vl);
    if (n > 0 && H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, vl) < 0) goto done;
    for (int64_t i = 0; i < n; i++)
      total += (vl[i] ? strlen(vl[i]) : 0) + 1;
  } else {
    H5Tset_size(mt, fsize + 1);
    H5Tset_strpad(mt, H5T_STR_NULLTERM);
    fixed = common_calloc((size_t)n, fsize + 1);
    if (n > 0 && H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, fixed) < 0) goto done;
    total = (size_t)n * (fsize + 1);
  }
  char **ptrs = common_malloc((size_t)n * sizeof *ptrs);
  char *buf = common_malloc(total + 1), *w = buf;
  for (int64_t i = 0; i < n; i++) {
    const char *s = vlen ? (vl[i] ? vl[i] : "") : fixed + (size_t)i * (fsize + 1);
    size_t l = strlen(s);
    memcpy(w, s, l + 1);
    ptrs[i] = w;
    w += l + 1;
  }
  if (vlen && n > 0) DATA_VLEN_RECLAIM(mt, sp, vl);
  *n_out = n;
  *out = ptrs;
  *out_buf = buf;
  rc = C_OK;
done:
  free(vl);
  free(fixed);
  if (mt >= 0) H5Tclose(mt);
  if (sp >= 0) H5Sclose(sp);
  if (ft >= 0) H5Tclose(ft);
  return rc;
}

/* ---------------------------------------------------------------------------------- */
/* File                                                                               */

data_file *data_open(const char *path, MPI_Comm comm, char *err, size_t err_len) {
  h5quiet q;
  h5quiet_begin(&q); /* our messages replace HDF5's error stack */

  data_file *f = common_calloc(1, sizeof *f);
  f->comm = comm;
  f->file = -1;
  MPI_CHECK(MPI_Comm_rank(comm, &f->rank));
  MPI_CHECK(MPI_Comm_size(comm, &f->size));
  f->path = strdup(path);
  CHECK(f->path, "out of memory");
  err[0] = '\0';

  /* 1. The file exists and is HDF5 (every rank looks, every rank agrees). */
  int bad = 0;
  if (access(path, R_OK) != 0) {
    if (errno == ENOENT)
      snprintf(err, err_len,
               "%s: no such file; build the dataset with data_prep/ (e.g. "
               "data_prep/prepare_bible.sh)",
               path);
    else
      snprintf(err, err_len, "%s: cannot read: %s", path, strerror(errno));
    bad = 1;
  } else if (H5Fis_hdf5(path) <= 0) {
    snprintf(err, err_len,
             "%s: not an HDF5 file (truncated or the wrong file?); rebuild it with "
             "data_prep/pack.py",
             path);
    bad = 1;
  }
  if (common_agree(comm, bad, err, err_len)) goto fail;

  /* 2. Collective open with the MPI-IO driver. */
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  CHECK(fapl >= 0, "H5Pcreate failed");
  CHECK(H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL) >= 0, "H5Pset_fapl_mpio failed");
  f->file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
  H5Pclose(fapl);
  if (f->file < 0)
    snprintf(err, err_len, "%s: parallel HDF5 (MPI-IO) could not open the file", path);
  if (common_agree(comm, f->file < 0, err, err_len)) goto fail;

  /* 3. Attributes. */
  bad = 0;
  if (read_int_attr(f->file, path, "format_version", &f->format_version, err, err_len)) {
    bad = 1;
  } else if (f->format_version != DATA_FORMAT_VERSION) {
    snprintf(err, err_len,
             "%s: format_version %d, but this build reads format_version %d; re-run "
             "data_prep/pack.py (or use a matching mpiformer)",
             path, f->format_version, DATA_FORMAT_VERSION);
    bad = 1;
  } else if (read_int_attr(f->file, path, "vocab_size", &f->vocab_size, err, err_len) ||
             read_int_attr(f->file, path, "pad_id", &f->pad_id, err, err_len) ||
             read_int_attr(f->file, path, "unk_id", &f->unk_id, err, err_len) ||
             read_int_attr(f->file, path, "bos_id", &f->bos_id, err, err_len) ||
             read_int_attr(f->file, path, "eos_id", &f->eos_id, err, err_len)) {
    bad = 1;
  } else if (f->vocab_size <= 0) {
    snprintf(err, err_len, "%s: vocab_size %d must be positive", path, f->vocab_size);
    bad = 1;
  } else {
    const int ids[4] = {f->pad_id, f->unk_id, f->bos_id, f->eos_id};
    const char *names[4] = {"pad_id", "unk_id", "bos_id", "eos_id"};
    for (int i = 0; i < 4 && !bad; i++) {
      if (ids[i] < 0 || ids[i] >= f->vocab_size) {
        snprintf(err, err_len, "%s: %s %d is outside [0, vocab_size=%d)", path, names[i], ids[i],
                 f->vocab_size);
        bad = 1;
      }
    }
  }
  if (!bad) {
    read_str_attr(f->file, "src_lang", f->src_lang, sizeof f->src_lang);
    read_str_attr(f->file, "tgt_lang", f->tgt_lang, sizeof f->tgt_lang);
    read_str_attr(f->file, "task", f->task, sizeof f->task);
    f->sides[0] = "src", f->sides[1] = "tgt";
    if (!strcmp(f->task, "pair_classification")) {
      f->sides[0] = "a", f->sides[1] = "b";
      if (read_int_attr(f->file, path, "n_classes", &f->n_classes, err, err_len)) {
        bad = 1;
      } else if (f->n_classes < 2) {
        snprintf(err, err_len, "%s: n_classes %d must be at least 2", path, f->n_classes);
        bad = 1;
      }
    }
  }
  if (common_agree(comm, bad, err, err_len)) goto fail;

  /* 4. Vocabulary pieces. */
  bad = 0;
  if (!link_exists(f->file, "/vocab/pieces")) {
    snprintf(err, err_len, "%s: dataset /vocab/pieces is missing", path);
    bad = 1;
  } else {
    hid_t d = H5Dopen2(f->file, "/vocab/pieces", H5P_DEFAULT);
    int64_t n = 0;
    if (d < 0 || read_str_dataset(d, &n, &f->pieces, &f->piece_buf) != C_OK) {
      snprintf(err, err_len, "%s: cannot read /vocab/pieces as a 1-D string dataset", path);
      bad = 1;
    } else if (n != f->vocab_size) {
      snprintf(err, err_len, "%s: /vocab/pieces has %lld entries but vocab_size is %d", path,
               (long long)n, f->vocab_size);
      bad = 1;
    }
    if (d >= 0) H5Dclose(d);
  }
  if (common_agree(comm, bad, err, err_len)) goto fail;

  h5quiet_end(&q);
  return f;

fail:
  if (f->file >= 0) H5Fclose(f->file);
  free(f->pieces);
  free(f->piece_buf);
  free(f->path);
  free(f);
  h5quiet_end(&q);
  return NULL;
}

void data_close(data_file *f) {
  if (!f) return;
  CHECK(H5Fclose(f->file) >= 0, "%s: H5Fclose failed (is a split still open?)", f->path);
  free(f->pieces);
  free(f->piece_buf);
  free(f->path);
  free(f);
}

int data_vocab_size(const data_file *f) {
  return f->vocab_size;
}
int data_pad_id(const data_file *f) {
  return f->pad_id;
}
int data_bos_id(const data_file *f) {
  return f->bos_id;
}
int data_eos_id(const data_file *f) {
  return f->eos_id;
}
int data_unk_id(const data_file *f) {
  return f->unk_id;
}
const char *data_task(const data_file *f) {
  return f->task;
}
int data_n_classes(const data_file *f) {
  return f->n_classes;
}

const char *data_piece(const data_file *f, int id) {
  return (id >= 0 && id < f->vocab_size) ? f->pieces[id] : "";
}

/* ---------------------------------------------------------------------------------- */
/* Split                                                                              */

static void split_free(data_split *s) {
  for (int k = 0; k < 2; k++) {
    if (s->text[k] >= 0) H5Dclose(s->text[k]);
    if (s->tspace[k] >= 0) H5Sclose(s->tspace[k]);
    if (s->tokens[k] >= 0) H5Dclose(s->tokens[k]);
    free(s->off[k]);
  }
  free(s->labels);
  free(s->raw);
  free(s->slots);
  free(s->pos);
  free(s->runs);
  free(s);
}

/* Open the datasets of one side and read its offsets. */
static int side_open(data_split *s, int k, char *err, size_t err_len) {
  data_file *f = s->f;
  char p[256];
  const char *sd = side_name_of(f, k);
  snprintf(p, sizeof p, "/%s/%s/tokens", s->name, sd);
  if (!link_exists(f->file, p)) {
    snprintf(err, err_len, "%s: dataset %s is missing", f->path, p);
    return C_ERR;
  }
  s->tokens[k] = H5Dopen2(f->file, p, H5P_DEFAULT);
  if (s->tokens[k] < 0 || (s->tspace[k] = H5Dget_space(s->tokens[k])) < 0 ||
      H5Sget_simple_extent_ndims(s->tspace[k]) != 1) {
    snprintf(err, err_len, "%s: cannot open %s as a 1-D dataset", f->path, p);
    return C_ERR;
  }
  hid_t t = H5Dget_type(s->tokens[k]);
  int is_int = t >= 0 && H5Tget_class(t) == H5T_INTEGER;
  if (t >= 0) H5Tclose(t);
  if (!is_int) {
    snprintf(err, err_len, "%s: %s should hold integer token ids", f->path, p);
    return C_ERR;
  }
  int64_t n_tok = (int64_t)H5Sget_simple_extent_npoints(s->tspace[k]);

  snprintf(p, sizeof p, "/%s/%s/offsets", s->name, sd);
  if (!link_exists(f->file, p)) {
    snprintf(err, err_len, "%s: dataset %s is missing", f->path, p);
    return C_ERR;
  }
  hid_t d = H5Dopen2(f->file, p, H5P_DEFAULT);
  hid_t sp = d >= 0 ? H5Dget_space(d) : -1;
  int rc = C_ERR;
  if (d < 0 || sp < 0 || H5Sget_simple_extent_ndims(sp) != 1 ||
      H5Sget_simple_extent_npoints(sp) < 1) {
    snprintf(err, err_len, "%s: %s should be a 1-D dataset of n+1 offsets", f->path, p);
    goto done;
  }
  int64_t n = (int64_t)H5Sget_simple_extent_npoints(sp) - 1;
  s->off[k] = common_malloc((size_t)(n + 1) * sizeof(int64_t));
  if (H5Dread(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, s->off[k]) < 0) {
    snprintf(err, err_len, "%s: cannot read %s as int64", f->path, p);
    goto done;
  }
  if (k == 1 && n != s->n) {
    snprintf(err, err_len, "%s: split %s has %lld source but %lld target sentences", f->path,
             s->name, (long long)s->n, (long long)n);
    goto done;
  }
  s->n = n;
  const int64_t *o = s->off[k];
  if (o[0] != 0) {
    snprintf(err, err_len, "%s: %s[0] = %lld, should be 0; the file is corrupt", f->path, p,
             (long long)o[0]);
    goto done;
  }
  for (int64_t i = 0; i < n; i++) {
    if (o[i + 1] < o[i] || o[i + 1] - o[i] > 2147483647LL) {
      snprintf(err, err_len,
               "%s: %s is not monotone (offsets[%lld] = %lld, offsets[%lld] = %lld); the file "
               "is corrupt, re-run data_prep/pack.py",
               f->path, p, (long long)i, (long long)o[i], (long long)(i + 1), (long long)o[i + 1]);
      goto done;
    }
  }
  if (o[n] != n_tok) {
    snprintf(err, err_len,
             "%s: %s ends at %lld but /%s/%s/tokens holds %lld tokens; the file is corrupt",
             f->path, p, (long long)o[n], s->name, sd, (long long)n_tok);
    goto done;
  }

  /* Text is optional (decode/BLEU need tgt/text; data_split_text gives "" without). */
  snprintf(p, sizeof p, "/%s/%s/text", s->name, sd);
  if (link_exists(f->file, p)) {
    s->text[k] = H5Dopen2(f->file, p, H5P_DEFAULT);
    hid_t tsp = s->text[k] >= 0 ? H5Dget_space(s->text[k]) : -1;
    hid_t tt = s->text[k] >= 0 ? H5Dget_type(s->text[k]) : -1;
    int ok = tsp >= 0 && tt >= 0 && H5Tget_class(tt) == H5T_STRING &&
             H5Sget_simple_extent_ndims(tsp) == 1 &&
             (int64_t)H5Sget_simple_extent_npoints(tsp) == n;
    if (tsp >= 0) H5Sclose(tsp);
    if (tt >= 0) H5Tclose(tt);
    if (!ok) {
      snprintf(err, err_len, "%s: %s should be a 1-D string dataset of %lld entries", f->path, p,
               (long long)n);
      goto done;
    }
  }
  rc = C_OK;
done:
  if (sp >= 0) H5Sclose(sp);
  if (d >= 0) H5Dclose(d);
  return rc;
}

/* Scan this rank's share of one side's tokens for ids outside [0, vocab_size). */
static int side_scan(data_split *s, int k, char *err, size_t err_len) {
  data_file *f = s->f;
  int64_t total = s->off[k][s->n];
  int64_t lo = total * f->rank / f->size, hi = total * (f->rank + 1) / f->size;
  int rc = C_OK;
  int64_t chunk = hi - lo < (int64_t)DATA_SCAN_CHUNK ? hi - lo : (int64_t)DATA_SCAN_CHUNK;
  grow((void **)&s->raw, &s->raw_cap, (size_t)(chunk > 0 ? chunk : 1), sizeof(int32_t));
  for (int64_t a = lo; a < hi && rc == C_OK; a += (int64_t)DATA_SCAN_CHUNK) {
    hsize_t start = (hsize_t)a, count = (hsize_t)(hi - a);
    if (count > DATA_SCAN_CHUNK) count = DATA_SCAN_CHUNK;
    hid_t ms = H5Screate_simple(1, &count, NULL);
    herr_t e = H5Sselect_hyperslab(s->tspace[k], H5S_SELECT_SET, &start, NULL, &count, NULL);
    if (ms < 0 || e < 0 ||
        H5Dread(s->tokens[k], H5T_NATIVE_INT32, ms, s->tspace[k], H5P_DEFAULT, s->raw) < 0) {
      snprintf(err, err_len, "%s: cannot read /%s/%s/tokens[%lld..%lld)", f->path, s->name,
               side_name_of(s->f, k), (long long)a, (long long)(a + (int64_t)count));
      rc = C_ERR;
    }
    for (hsize_t i = 0; i < count && rc == C_OK; i++) {
      int32_t v = s->raw[i];
      if (v < 0 || v >= f->vocab_size) {
        snprintf(err, err_len,
                 "%s: /%s/%s/tokens[%lld] = %d is outside [0, vocab_size=%d) (checked when "
                 "the split is opened); the file is corrupt or was packed with another "
                 "vocabulary",
                 f->path, s->name, side_name_of(s->f, k), (long long)(a + (int64_t)i), (int)v,
                 f->vocab_size);
        rc = C_ERR;
      }
    }
    if (ms >= 0) H5Sclose(ms);
  }
  return rc;
}

/* Read /<split>/label (n int32, each in [0, n_classes)) of a pair_classification file. */
static int labels_read(data_split *s, char *err, size_t err_len) {
  data_file *f = s->f;
  char p[128];
  snprintf(p, sizeof p, "/%s/label", s->name);
  if (!link_exists(f->file, p)) {
    snprintf(err, err_len, "%s: dataset %s is missing (task=pair_classification)", f->path, p);
    return C_ERR;
  }
  int rc = C_ERR;
  hid_t d = H5Dopen2(f->file, p, H5P_DEFAULT);
  hid_t sp = d >= 0 ? H5Dget_space(d) : -1;
  s->labels = common_malloc((size_t)(s->n > 0 ? s->n : 1) * sizeof(int32_t));
  if (d < 0 || sp < 0 || H5Sget_simple_extent_ndims(sp) != 1 ||
      (int64_t)H5Sget_simple_extent_npoints(sp) != s->n) {
    snprintf(err, err_len, "%s: %s should be a 1-D dataset of %lld labels", f->path, p,
             (long long)s->n);
  } else if (s->n > 0 &&
             H5Dread(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, s->labels) < 0) {
    snprintf(err, err_len, "%s: cannot read %s as int32", f->path, p);
  } else {
    rc = C_OK;
    for (int64_t i = 0; i < s->n && rc == C_OK; i++)
      if (s->labels[i] < 0 || s->labels[i] >= f->n_classes) {
        snprintf(err, err_len, "%s: %s[%lld] = %d is outside [0, n_classes=%d)", f->path, p,
                 (long long)i, (int)s->labels[i], f->n_classes);
        rc = C_ERR;
      }
  }
  if (sp >= 0) H5Sclose(sp);
  if (d >= 0) H5Dclose(d);
  return rc;
}

data_split *data_split_open(data_file *f, const char *split, char *err, size_t err_len) {
  h5quiet quiet;
  h5quiet_begin(&quiet);
  err[0] = '\0';

  data_split *s = common_calloc(1, sizeof *s);
  s->f = f;
  for (int k = 0; k < 2; k++)
    s->tokens[k] = s->tspace[k] = s->text[k] = -1;
  int bad = 0;
  char p[80];
  if (strlen(split) == 0 || strlen(split) >= sizeof s->name || strchr(split, '/')) {
    snprintf(err, err_len, "split name \"%s\" is not valid (train, valid or test)", split);
    bad = 1;
  } else {
    snprintf(s->name, sizeof s->name, "%s", split);
    snprintf(p, sizeof p, "/%s", split);
    if (!link_exists(f->file, p)) {
      snprintf(err, err_len, "%s: the file has no split \"%s\" (group /%s is missing)", f->path,
               split, split);
      bad = 1;
    }
  }
  for (int k = 0; k < 2 && !bad; k++)
    bad = side_open(s, k, err, err_len) != C_OK;
  /* An empty split would give a loss of 0 and a perplexity of 1 over no tokens (a perfect
   * score from no data), and an empty train split an epoch of no batches that never ends:
   * both are refused here, on every rank alike. */
  if (!bad && s->n == 0) {
    snprintf(err, err_len,
             "%s: split \"%s\" has no sentences (/%s/%s/offsets holds only its leading 0): "
             "there is nothing to train on or evaluate; pack the dataset with sentences in it",
             f->path, split, split, side_name_of(f, 0));
    bad = 1;
  }
  for (int k = 0; k < 2 && !bad; k++)
    if (s->off[k][s->n] == 0) {
      snprintf(err, err_len,
               "%s: split \"%s\" has %lld sentences but /%s/%s/tokens is empty (every sentence "
               "has no tokens): there is nothing to train on or evaluate",
               f->path, split, (long long)s->n, split, side_name_of(f, k));
      bad = 1;
    }
  if (common_agree(f->comm, bad, err, err_len)) goto fail;

  for (int k = 0; k < 2 && !bad; k++)
    bad = side_scan(s, k, err, err_len) != C_OK;
  if (common_agree(f->comm, bad, err, err_len)) goto fail;

  if (f->n_classes > 0) bad = labels_read(s, err, err_len) != C_OK;
  if (common_agree(f->comm, bad, err, err_len)) goto fail;

  h5quiet_end(&quiet);
  return s;

fail:
  split_free(s);
  h5quiet_end(&quiet);
  return NULL;
}

void data_split_close(data_split *s) {
  if (s) split_free(s);
}

int64_t data_split_size(const data_split *s) {
  return s->n;
}

int data_split_label(const data_split *s, int64_t i) {
  CHECK(i >= 0 && i < s->n, "sentence %lld outside split %s of %lld", (long long)i, s->name,
        (long long)s->n);
  return s->labels ? s->labels[i] : -1;
}

int data_split_len(const data_split *s, int side, int64_t i) {
  CHECK(side == 0 || side == 1, "side %d must be 0 (src) or 1 (tgt)", side);
  CHECK(i >= 0 && i < s->n, "sentence %lld outside split %s of %lld", (long long)i, s->name,
        (long long)s->n);
  return (int)(s->off[side][i + 1] - s->off[side][i]);
}

void data_split_text(data_split *s, int side, int64_t i, char *buf, size_t len) {
  CHECK(side == 0 || side == 1, "side %d must be 0 (src) or 1 (tgt)", side);
  CHECK(i >= 0 && i < s->n, "sentence %lld outside split %s of %lld", (long long)i, s->name,
        (long long)s->n);
  if (len == 0) return;
  buf[0] = '\0';
  hid_t d = s->text[side];
  if (d < 0) return;
  hid_t ft = H5Dget_type(d), fs = H5Dget_space(d);
  CHECK(ft >= 0 && fs >= 0, "%s: /%s/%s/text: cannot get type", s->f->path, s->name,
        side_name_of(s->f, side));
  hsize_t start = (hsize_t)i, one = 1;
  hid_t ms = H5Screate_simple(1, &one, NULL);
  CHECK(H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, NULL, &one, NULL) >= 0,
        "H5Sselect_hyperslab failed");
  hid_t mt = H5Tcopy(H5T_C_S1);
  H5Tset_cset(mt, H5Tget_cset(ft));
  if (H5Tis_variable_str(ft) > 0) {
    H5Tset_size(mt, H5T_VARIABLE);
    char *str = NULL;
    CHECK(H5Dread(d, mt, ms, fs, H5P_DEFAULT, &str) >= 0, "%s: cannot read /%s/%s/text[%lld]",
          s->f->path, s->name, side_name_of(s->f, side), (long long)i);
    snprintf(buf, len, "%s", str ? str : "");
    DATA_VLEN_RECLAIM(mt, ms, &str);
  } else {
    size_t n = H5Tget_size(ft);
    char *tmp = common_calloc(n + 1, 1);
    H5Tset_size(mt, n + 1);
    H5Tset_strpad(mt, H5T_STR_NULLTERM);
    CHECK(H5Dread(d, mt, ms, fs, H5P_DEFAULT, tmp) >= 0, "%s: cannot read /%s/%s/text[%lld]",
          s->f->path, s->name, side_name_of(s->f, side), (long long)i);
    snprintf(buf, len, "%s", tmp);
    free(tmp);
  }
  H5Tclose(mt);
  H5Sclose(ms);
  H5Sclose(fs);
  H5Tclose(ft);
}

/* ---------------------------------------------------------------------------------- */
/* Plan                                                                               */

/* splitmix64 (Steele, Lea, Flood 2014): a tiny, well-mixed generator; the state is
 * private to each plan so nothing else in the program can perturb the order. */
static uint64_t splitmix64(uint64_t *x) {
  return common_mix64(*x += 0x9e3779b97f4a7c15ULL);
}

static uint64_t rng_init(uint64_t seed, int64_t epoch, uint64_t stream) {
  uint64_t x = seed;
  uint64_t h = splitmix64(&x);
  x = h ^ ((uint64_t)epoch * 0xd1b54a32d192ed03ULL);
  h = splitmix64(&x);
  x = h ^ (stream * 0x8cb92ba72f3d8dd7ULL);
  return x;
}

/* Uniform in [0, n) (Lemire's multiply-shift; the tiny bias is irrelevant here). */
static uint64_t rng_below(uint64_t *x, uint64_t n) {
  return (uint64_t)(((unsigned __int128)splitmix64(x) * n) >> 64);
}

static void shuffle_i64(int64_t *a, int64_t n, uint64_t *rng) {
  for (int64_t i = n - 1; i > 0; i--) {
    int64_t j = (int64_t)rng_below(rng, (uint64_t)i + 1);
    int64_t t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
}

/* Length of sentence id by key k: side 0, side 1, or (k = 2) both sides together. */
static int64_t key_len(const data_split *s, int k, int64_t id) {
  if (k == 2) return key_len(s, 0, id) + key_len(s, 1, id);
  return s->off[k][id + 1] - s->off[k][id];
}

/* Stable counting sort of ids[0..n) by key_len(k) into out. */
static void sort_by_len(const data_split *s, int k, const int64_t *ids, int64_t n, int64_t *out) {
  int64_t maxlen = 0;
  for (int64_t i = 0; i < n; i++) {
    int64_t l = key_len(s, k, ids[i]);
    if (l > maxlen) maxlen = l;
  }
  int64_t *cnt = common_calloc((size_t)maxlen + 2, sizeof *cnt);
  for (int64_t i = 0; i < n; i++)
    cnt[key_len(s, k, ids[i]) + 1]++;
  for (int64_t l = 1; l <= maxlen + 1; l++)
    cnt[l] += cnt[l - 1];
  for (int64_t i = 0; i < n; i++)
    out[cnt[key_len(s, k, ids[i])]++] = ids[i];
  free(cnt);
}

/* Width (padded tokens per row) of sentence id in a batch: max(src+1, tgt+1), or for a
 * concatenated pair min(a + b + 3, max_len) (max_len 0: no cap). */
static int64_t row_width(const data_split *s, int64_t id, int concat, int max_len) {
  int64_t ls = key_len(s, 0, id), lt = key_len(s, 1, id);
  if (!concat) return (ls > lt ? ls : lt) + 1;
  int64_t w = ls + lt + 3;
  return max_len > 0 && w > max_len ? max_len : w;
}

static void plan_make(data_plan *p, const data_split *s, int64_t max_tokens, int max_src_len,
                      int max_tgt_len, int concat, int shuffle, uint64_t seed, int64_t epoch,
                      int64_t *n_dropped) {
  CHECK(max_tokens > 0, "max_tokens %lld must be positive", (long long)max_tokens);
  int64_t n = s->n, kept = 0;
  int64_t *ids = common_malloc((size_t)(n > 0 ? n : 1) * sizeof *ids);
  int64_t *tmp = common_malloc((size_t)(n > 0 ? n : 1) * sizeof *tmp);
  for (int64_t i = 0; i < n; i++) {
    int64_t ls = s->off[0][i + 1] - s->off[0][i], lt = s->off[1][i + 1] - s->off[1][i];
    if (!concat && ((max_src_len > 0 && ls > max_src_len) || (max_tgt_len > 0 && lt > max_tgt_len)))
      continue;
    ids[kept++] = i;
  }
  if (n_dropped) *n_dropped = n - kept;

  /* Order by (tgt len, src len, tie): shuffle (or keep index order), then two stable
   * counting sorts, least significant key first (LSD radix). */
  if (shuffle) {
    uint64_t rng = rng_init(seed, epoch, 1);
    shuffle_i64(ids, kept, &rng);
  }
  sort_by_len(s, 0, ids, kept, tmp);
  sort_by_len(s, concat ? 2 : 1, tmp, kept, ids);

  /* Greedy cut: add sentences while n_seq * max(src+1, tgt+1) <= max_tokens. */
  int64_t *starts = common_malloc((size_t)(kept + 1) * sizeof *starts);
  int64_t nb = 0, cur_n = 0, cur_w = 0;
  for (int64_t i = 0; i < kept; i++) {
    int64_t w = row_width(s, ids[i], concat, max_src_len);
    int64_t nw = w > cur_w ? w : cur_w;
    if (cur_n > 0 && (cur_n + 1) * nw > max_tokens) {
      cur_n = 0;
      nw = w;
    }
    if (cur_n == 0) starts[nb++] = i;
    cur_n++;
    cur_w = nw;
  }
  starts[nb] = kept;

  if (shuffle && nb > 1) {
    int64_t *perm = common_malloc((size_t)nb * sizeof *perm);
    int64_t *ns = common_malloc((size_t)(nb + 1) * sizeof *ns);
    for (int64_t b = 0; b < nb; b++)
      perm[b] = b;
    uint64_t rng = rng_init(seed, epoch, 2);
    shuffle_i64(perm, nb, &rng);
    int64_t w = 0;
    for (int64_t b = 0; b < nb; b++) {
      ns[b] = w;
      for (int64_t i = starts[perm[b]]; i < starts[perm[b] + 1]; i++)
        tmp[w++] = ids[i];
    }
    ns[nb] = w;
    memcpy(ids, tmp, (size_t)kept * sizeof *ids);
    memcpy(starts, ns, (size_t)(nb + 1) * sizeof *ns);
    free(ns);
    free(perm);
  }
  free(tmp);
  p->n_batches = nb;
  p->starts = starts;
  p->ids = ids;
}

void data_plan_make(data_plan *p, const data_split *s, int64_t max_tokens, int max_src_len,
                    int max_tgt_len, int shuffle, uint64_t seed, int64_t epoch,
                    int64_t *n_dropped) {
  plan_make(p, s, max_tokens, max_src_len, max_tgt_len, 0, shuffle, seed, epoch, n_dropped);
}

void data_plan_make_pairs(data_plan *p, const data_split *s, int64_t max_tokens, int max_len,
                          int shuffle, uint64_t seed, int64_t epoch) {
  plan_make(p, s, max_tokens, max_len, 0, 1, shuffle, seed, epoch, NULL);
}

void data_plan_free(data_plan *p) {
  if (!p) return;
  free(p->starts);
  free(p->ids);
  p->starts = NULL;
  p->ids = NULL;
  p->n_batches = 0;
}

/* ---------------------------------------------------------------------------------- */
/* Batches                                                                            */

static int slot_cmp(const void *a, const void *b) {
  const data_slot *x = a, *y = b;
  if (x->id != y->id) return x->id < y->id ? -1 : 1;
  return (x->j > y->j) - (x->j < y->j);
}

/* The union of runs[lo..hi) (pairs start, count) as a new dataspace (caller closes).
 * HDF5 1.10 rebuilds the whole span tree on every H5S_SELECT_OR, so n sequential ORs
 * cost O(n^2) (8 ms for 400 ranges); ORing small groups and merging them pairwise with
 * H5Scombine_select costs O(n log n) (2 ms). */
#define DATA_OR_LEAF 16
static hid_t select_runs(hid_t base, const hsize_t *runs, int64_t lo, int64_t hi) {
  if (hi - lo <= DATA_OR_LEAF) {
    hid_t sp = H5Scopy(base);
    CHECK(sp >= 0, "H5Scopy failed");
    for (int64_t r = lo; r < hi; r++)
      CHECK(H5Sselect_hyperslab(sp, r > lo ? H5S_SELECT_OR : H5S_SELECT_SET, &runs[2 * r], NULL,
                                &runs[2 * r + 1], NULL) >= 0,
            "H5Sselect_hyperslab failed");
    return sp;
  }
  int64_t mid = lo + (hi - lo) / 2;
  hid_t a = select_runs(base, runs, lo, mid), b = select_runs(base, runs, mid, hi);
  hid_t u = H5Scombine_select(a, H5S_SELECT_OR, b);
  CHECK(u >= 0, "H5Scombine_select failed");
  H5Sclose(a);
  H5Sclose(b);
  return u;
}

/* Record the first read error of s (later ones add nothing: the first is the cause). */
static void read_failed(data_split *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void read_failed(data_split *s, const char *fmt, ...) {
  if (s->read_err[0]) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->read_err, sizeof s->read_err, fmt, ap);
  va_end(ap);
}

/* Fault injection for tests/test_io_faults.sh: MPIFORMER_TEST_READ_FAIL=N makes the last
 * rank's N-th side read of a split fail as an I/O error would (EIO). */
static int test_read_fail(const data_split *s) {
  const char *env = getenv("MPIFORMER_TEST_READ_FAIL");
  return env && *env && s->f->rank == s->f->size - 1 && s->n_reads == atoll(env);
}

/* Read side k of the n sentences in s->slots (sorted by id) into s->raw with one
 * H5Dread over the union of their ranges (file order); s->pos[j] = where batch
 * sentence j starts in s->raw. Adjacent sentences merge into one run. */
static void side_read(data_split *s, int k, int n) {
  const int64_t *o = s->off[k];
  hsize_t *runs = s->runs;
  int64_t total = 0, nr = 0, prev = -1;
  for (int q = 0; q < n; q++) {
    int64_t id = s->slots[q].id;
    if (id == prev) { /* duplicate id: same tokens */
      s->pos[s->slots[q].j] = s->pos[s->slots[q - 1].j];
      continue;
    }
    prev = id;
    s->pos[s->slots[q].j] = total;
    int64_t a = o[id], b = o[id + 1];
    total += b - a;
    if (a == b) continue;
    if (nr > 0 && (int64_t)(runs[2 * nr - 2] + runs[2 * nr - 1]) == a) {
      runs[2 * nr - 1] += (hsize_t)(b - a); /* contiguous with the last run */
    } else {
      runs[2 * nr] = (hsize_t)a;
      runs[2 * nr + 1] = (hsize_t)(b - a);
      nr++;
    }
  }
  if (total == 0) return;
  hid_t fs = select_runs(s->tspace[k], runs, 0, nr);
  grow((void **)&s->raw, &s->raw_cap, (size_t)total, sizeof(int32_t));
  hsize_t mt = (hsize_t)total;
  hid_t ms = H5Screate_simple(1, &mt, NULL);
  CHECK(ms >= 0, "H5Screate_simple failed");
  errno = 0;
  int ok = H5Dread(s->tokens[k], H5T_NATIVE_INT32, ms, fs, H5P_DEFAULT, s->raw) >= 0;
  int e = errno;
  s->n_reads++;
  if (ok && test_read_fail(s)) ok = 0, e = EIO;
  H5Sclose(ms);
  H5Sclose(fs);
  const int32_t v = s->f->vocab_size;
  if (!ok) {
    read_failed(s, "%s: reading /%s/%s/tokens for a batch of %d sentences failed: %s", s->f->path,
                s->name, side_name_of(s->f, k), n, e ? strerror(e) : "the HDF5 read failed");
    for (int64_t i = 0; i < total; i++)
      s->raw[i] = s->f->pad_id;
    return;
  }
  for (int64_t i = 0; i < total; i++)
    if (s->raw[i] < 0 || s->raw[i] >= v) {
      read_failed(s,
                  "%s: /%s/%s/tokens holds id %d outside [0, %d): the file changed since it "
                  "was opened",
                  s->f->path, s->name, side_name_of(s->f, k), (int)s->raw[i], (int)v);
      s->raw[i] = s->f->pad_id;
    }
}

const char *data_split_error(const data_split *s) {
  return s->read_err;
}

void data_batch_load_ids(data_split *s, const int64_t *ids, int n, data_batch *out) {
  CHECK(n >= 0, "negative batch size %d", n);
  const data_file *f = s->f;
  if ((size_t)n > s->slot_cap || !s->slots) {
    size_t c = s->slot_cap ? s->slot_cap : 256;
    while (c < (size_t)n)
      c *= 2;
    free(s->slots);
    free(s->pos);
    free(s->runs);
    s->slots = common_malloc(c * sizeof *s->slots);
    s->pos = common_malloc(c * sizeof *s->pos);
    s->runs = common_malloc(2 * c * sizeof *s->runs);
    s->slot_cap = c;
  }
  int max_s = 0, max_t = 0;
  for (int j = 0; j < n; j++) {
    CHECK(ids[j] >= 0 && ids[j] < s->n, "sentence %lld outside split %s of %lld", (long long)ids[j],
          s->name, (long long)s->n);
    s->slots[j].id = ids[j];
    s->slots[j].j = j;
    int ls = data_split_len(s, 0, ids[j]), lt = data_split_len(s, 1, ids[j]);
    if (ls > max_s) max_s = ls;
    if (lt > max_t) max_t = lt;
  }
  qsort(s->slots, (size_t)n, sizeof *s->slots, slot_cmp);

  out->n_seq = n;
  out->src_len = max_s + 1;
  out->tgt_len = max_t + 1;
  size_t need = (size_t)n * (size_t)(max_s > max_t ? max_s + 1 : max_t + 1);
  if (need > out->cap_tok || !out->src) {
    size_t c = out->cap_tok ? out->cap_tok : 1024;
    while (c < need)
      c *= 2;
    free(out->src);
    free(out->tgt_in);
    free(out->tgt_out);
    out->src = common_malloc(c * sizeof(int32_t));
    out->tgt_in = common_malloc(c * sizeof(int32_t));
    out->tgt_out = common_malloc(c * sizeof(int32_t));
    out->cap_tok = c;
  }
  if ((size_t)n > out->cap_seq || !out->ids) {
    size_t c = out->cap_seq ? out->cap_seq : 64;
    while (c < (size_t)n)
      c *= 2;
    free(out->ids);
    free(out->labels);
    out->ids = common_malloc(c * sizeof(int64_t));
    out->labels = common_malloc(c * sizeof(int32_t));
    out->cap_seq = c;
  }
  memcpy(out->ids, ids, (size_t)n * sizeof *ids);
  for (int j = 0; j < n; j++)
    out->labels[j] = s->labels ? s->labels[ids[j]] : -1;
  const int32_t pad = f->pad_id, bos = f->bos_id, eos = f->eos_id;

  /* Source: tokens + eos, pad. */
  side_read(s, 0, n);
  int64_t cnt = 0;
  for (int j = 0; j < n; j++) {
    int32_t *row = out->src + (size_t)j * out->src_len;
    int l = data_split_len(s, 0, ids[j]);
    memcpy(row, s->raw + s->pos[j], (size_t)l * sizeof *row);
    row[l] = eos;
    for (int c = l + 1; c < out->src_len; c++)
      row[c] = pad;
    cnt += l + 1;
  }
  out->n_src_tokens = cnt;

  /* Target: tgt_in = bos + tokens, tgt_out = tokens + eos, pad. */
  side_read(s, 1, n);
  cnt = 0;
  for (int j = 0; j < n; j++) {
    int32_t *in = out->tgt_in + (size_t)j * out->tgt_len;
    int32_t *ou = out->tgt_out + (size_t)j * out->tgt_len;
    int l = data_split_len(s, 1, ids[j]);
    const int32_t *t = s->raw + s->pos[j];
    in[0] = bos;
    memcpy(in + 1, t, (size_t)l * sizeof *in);
    memcpy(ou, t, (size_t)l * sizeof *ou);
    ou[l] = eos;
    for (int c = l + 1; c < out->tgt_len; c++)
      in[c] = ou[c] = pad;
    cnt += l + 1;
  }
  out->n_tgt_tokens = cnt;
}

void data_batch_load(data_split *s, const data_plan *p, int64_t b, data_batch *out) {
  CHECK(b >= 0 && b < p->n_batches, "batch %lld outside plan of %lld", (long long)b,
        (long long)p->n_batches);
  data_batch_load_ids(s, p->ids + p->starts[b], common_int(p->starts[b + 1] - p->starts[b]), out);
}

void data_batch_free(data_batch *b) {
  if (!b) return;
  free(b->src);
  free(b->tgt_in);
  free(b->tgt_out);
  free(b->ids);
  free(b->labels);
  memset(b, 0, sizeof *b);
}

/* ---- the SentencePiece model (raw-text encoding in decode_spm.c) --------------- */

int data_read_spm_model(const char *data_path, unsigned char **bytes, size_t *n, char *err,
                        size_t err_len) {
  h5quiet quiet;
  h5quiet_begin(&quiet);
  int rc = C_ERR;
  hid_t file = -1, dset = -1, sp = -1;
  *bytes = NULL;
  file = H5Fopen(data_path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (file < 0) {
    snprintf(err, err_len, "%s: cannot open the dataset file to read its SentencePiece model",
             data_path);
    goto done;
  }
  if (H5Lexists(file, "/vocab", H5P_DEFAULT) <= 0 ||
      H5Lexists(file, "/vocab/spm_model", H5P_DEFAULT) <= 0) {
    snprintf(err, err_len,
             "%s: /vocab/spm_model is missing, so raw text cannot be encoded; rebuild the "
             "dataset with data_prep/pack.py",
             data_path);
    goto done;
  }
  dset = H5Dopen2(file, "/vocab/spm_model", H5P_DEFAULT);
  sp = dset >= 0 ? H5Dget_space(dset) : -1;
  hssize_t np = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
  if (np <= 0) {
    snprintf(err, err_len, "%s: /vocab/spm_model is empty or unreadable", data_path);
    goto done;
  }
  *n = (size_t)np;
  *bytes = common_malloc(*n);
  if (H5Dread(dset, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, *bytes) < 0) {
    snprintf(err, err_len, "%s: cannot read /vocab/spm_model as bytes", data_path);
    free(*bytes);
    *bytes = NULL;
    goto done;
  }
  rc = C_OK;
done:
  if (sp >= 0) H5Sclose(sp);
  if (dset >= 0) H5Dclose(dset);
  if (file >= 0) H5Fclose(file);
  h5quiet_end(&quiet);
  return rc;
}
