/* decode_spm.c: SentencePiece text on both sides of decoding (see decode.h):
 *   - detokenization follows spm_decode (checked against it by tests/test_decode.c);
 *   - raw text goes through the spm_encode program, run as a subprocess on temporary
 *     files, with the model bytes stored in the dataset file (data_read_spm_model);
 *     there is no SentencePiece library to link on Debian.
 *
 * Not here: the search (decode_search.c), MPI (decode_dist.c), reading HDF5 (data.c).
 */
#include "decode.h"

#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------- */
/* Detokenization                                                                     */

#define SPM_SPACE "\xE2\x96\x81" /* U+2581 LOWER ONE EIGHTH BLOCK */
#define SPM_UNK " \xE2\x81\x87 " /* spm_decode's unk surface: " U+2047 " */

typedef const char *(*piece_fn)(const void *ctx, int id);

/* Append s[0..n) to buf at *pos (bytes beyond len - 1 are counted, not written). */
static void put_bytes(char *buf, size_t len, size_t *pos, const char *s, size_t n) {
  for (size_t k = 0; k < n; k++, (*pos)++)
    if (len > 0 && *pos < len - 1) buf[*pos] = s[k];
}

static size_t detok(piece_fn piece, const void *ctx, int vocab, int pad, int bos, int eos, int unk,
                    const int32_t *ids, int n, char *buf, size_t len) {
  size_t pos = 0;
  int empty = 1; /* spm: the leading U+2581 is dropped while nothing was printed */
  for (int t = 0; t < n; t++) {
    int id = ids[t];
    if (id == pad || id == bos || id == eos) continue; /* control symbols print nothing */
    if (id == unk || id < 0 || id >= vocab) {
      put_bytes(buf, len, &pos, SPM_UNK, sizeof SPM_UNK - 1);
      empty = 0;
      continue;
    }
    const char *p = piece(ctx, id);
    if (empty && strncmp(p, SPM_SPACE, 3) == 0) p += 3;
    size_t before = pos;
    while (*p) {
      if (strncmp(p, SPM_SPACE, 3) == 0) {
        put_bytes(buf, len, &pos, " ", 1);
        p += 3;
      } else {
        put_bytes(buf, len, &pos, p, 1);
        p++;
      }
    }
    if (pos > before) empty = 0;
  }
  if (len > 0) buf[pos < len - 1 ? pos : len - 1] = '\0';
  return pos;
}

static const char *file_piece(const void *ctx, int id) {
  return data_piece((const data_file *)ctx, id);
}
static const char *array_piece(const void *ctx, int id) {
  return ((const char *const *)ctx)[id];
}

size_t decode_detok(const data_file *f, const int32_t *ids, int n, char *buf, size_t len) {
  return detok(file_piece, f, data_vocab_size(f), data_pad_id(f), data_bos_id(f), data_eos_id(f),
               data_unk_id(f), ids, n, buf, len);
}

size_t decode_detok_pieces(const char *const *pieces, int vocab, int pad, int bos, int eos, int unk,
                           const int32_t *ids, int n, char *buf, size_t len) {
  return detok(array_piece, pieces, vocab, pad, bos, eos, unk, ids, n, buf, len);
}

/* ---------------------------------------------------------------------------------- */
/* Raw text -> ids through spm_encode                                                 */

/* Is `prog` an executable in $PATH? */
static int in_path(const char *prog) {
  const char *path = getenv("PATH");
  if (!path) return 0;
  char dir[4096];
  while (*path) {
    size_t n = strcspn(path, ":");
    if (n > 0 && n < sizeof dir - 64) {
      memcpy(dir, path, n);
      snprintf(dir + n, sizeof dir - n, "/%s", prog);
      if (access(dir, X_OK) == 0) return 1;
    }
    path += n;
    if (*path == ':') path++;
  }
  return 0;
}

/* Create a temporary file; path receives its name. Returns a FILE open for writing. */
static FILE *temp_file(char *path, size_t len, const char *what) {
  const char *dir = getenv("TMPDIR");
  snprintf(path, len, "%s/mpiformer-%s-XXXXXX", dir && *dir ? dir : "/tmp", what);
  int fd = mkstemp(path);
  if (fd < 0) return NULL;
  FILE *fp = fdopen(fd, "wb");
  if (!fp) close(fd);
  return fp;
}

int decode_encode_lines(const char *data_path, const char *const *lines, int n, int64_t **offsets,
                        int32_t **ids, char *err, size_t err_len) {
  *offsets = NULL;
  *ids = NULL;
  if (!in_path("spm_encode")) {
    snprintf(err, err_len,
             "spm_encode was not found in PATH; it encodes raw text with the dataset's "
             "SentencePiece model: install it (apt-get install sentencepiece)");
    return C_ERR;
  }
  unsigned char *model_bytes = NULL;
  size_t model_n = 0;
  if (data_read_spm_model(data_path, &model_bytes, &model_n, err, err_len) != C_OK) return C_ERR;

  int rc = C_ERR;
  char mpath[1024] = "", ipath[1024] = "", cmd[2400];
  FILE *fp = NULL, *pipe = NULL;
  char *line = NULL;
  size_t cap = 0, n_ids = 0, ids_cap = 1024;
  int64_t *off = common_malloc((size_t)(n + 1) * sizeof *off);
  int32_t *out = common_malloc(ids_cap * sizeof *out);

  fp = temp_file(mpath, sizeof mpath, "spm");
  if (!fp || fwrite(model_bytes, 1, model_n, fp) != model_n || fclose(fp) != 0) {
    snprintf(err, err_len, "cannot write a temporary SentencePiece model file %s", mpath);
    goto done;
  }
  fp = temp_file(ipath, sizeof ipath, "src");
  if (!fp) {
    snprintf(err, err_len, "cannot create a temporary input file %s", ipath);
    goto done;
  }
  for (int i = 0; i < n; i++) {
    for (const char *p = lines[i]; *p; p++)
      fputc(*p == '\n' || *p == '\r' ? ' ' : *p, fp);
    fputc('\n', fp);
  }
  if (fclose(fp) != 0) {
    snprintf(err, err_len, "cannot write the temporary input file %s", ipath);
    goto done;
  }
  fp = NULL;
  if (strchr(mpath, '\'') || strchr(ipath, '\'')) {
    snprintf(err, err_len, "TMPDIR must not contain a quote character");
    goto done;
  }
  snprintf(cmd, sizeof cmd, "spm_encode --model='%s' --output_format=id < '%s'", mpath, ipath);
  pipe = popen(cmd, "r");
  if (!pipe) {
    snprintf(err, err_len, "cannot run spm_encode");
    goto done;
  }
  int got = 0;
  ssize_t len;
  off[0] = 0;
  while ((len = getline(&line, &cap, pipe)) >= 0) {
    if (got >= n) {
      got++;
      continue;
    }
    char *p = line, *end;
    for (;;) {
      long v = strtol(p, &end, 10);
      if (end == p) break;
      if (n_ids == ids_cap) {
        ids_cap *= 2;
        int32_t *grown = realloc(out, ids_cap * sizeof *out);
        CHECK(grown, "out of memory");
        out = grown;
      }
      out[n_ids++] = (int32_t)v;
      p = end;
    }
    off[++got] = (int64_t)n_ids;
  }
  int status = pclose(pipe);
  pipe = NULL;
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    snprintf(err, err_len, "spm_encode failed (exit status %d) on the model from %s",
             WIFEXITED(status) ? WEXITSTATUS(status) : -1, data_path);
    goto done;
  }
  if (got != n) {
    snprintf(err, err_len, "spm_encode returned %d lines for %d input lines", got, n);
    goto done;
  }
  rc = C_OK;
done:
  if (fp) fclose(fp);
  if (pipe) pclose(pipe);
  if (mpath[0]) unlink(mpath);
  if (ipath[0]) unlink(ipath);
  free(line);
  free(model_bytes);
  if (rc == C_OK) {
    *offsets = off;
    *ids = out;
  } else {
    free(off);
    free(out);
  }
  return rc;
}
