/* decode.c: greedy and beam search, SentencePiece detokenization, raw-text encoding,
 * and the distributed translate / split-decoding drivers (see decode.h).
 *
 * What it does:
 *   - decode_beam follows fairseq's SequenceGenerator with BeamSearch step by step:
 *     at each step the top 2*beam candidates over (live beams x vocab) of cumulative
 *     log-prob (at step 0 only beam 0, all beams being equal); eos candidates among the
 *     first `beam` of them become finished hypotheses scored sum / (step+1)^lenpen
 *     (step+1 = length incl. eos), at most `beam` per sentence; the first `beam`
 *     non-eos candidates continue; pad and bos are never generated, eos is forbidden at
 *     step 0 (min_len 1) and forced at the maximum length; a sentence is done when it
 *     has `beam` finished hypotheses (or reached its maximum length); the result is
 *     the finished hypothesis with the best normalized score (the first one on ties).
 *     Ties between equal candidate scores go to the lower (beam, token) index.
 *   - decode_greedy is the same rule for beam = 1 written as its own argmax loop.
 *   - detokenization follows spm_decode (checked against it by tests/test_decode.c).
 *   - raw text goes through the spm_encode program with the model bytes stored in the
 *     dataset file; there is no SentencePiece library to link on Debian.
 *
 * What it does not do: compact finished sentences away (the model's decoder state has a
 * fixed n_seq * beam hypotheses, so finished sentences are stepped with dummy eos
 * inputs until the whole batch is done; batches are length-sorted, which keeps that
 * waste small), prefix constraints, sampling, unk penalty, no-repeat-ngram, or
 * tensor-parallel decoding (tp = 1: each rank decodes whole batches on its own).
 */
#include "decode.h"

#include <hdf5.h>
#include <math.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------- */
/* Options                                                                            */

void decode_opts_default(decode_opts *o) {
  o->beam = 5;
  o->lenpen = 1.0;
  o->max_len_a = 1.2;
  o->max_len_b = 10;
  o->max_positions = 1024;
  o->max_tokens = 4096;
}

void decode_opts_from_config(decode_opts *o, const config *c) {
  decode_opts_default(o);
  o->beam = (int)c->beam;
  o->lenpen = c->lenpen;
  o->max_len_a = c->max_len_a;
  o->max_len_b = (int)c->max_len_b;
  o->max_positions = (int)c->max_positions;
  o->max_tokens = c->max_tokens;
}

int decode_max_len(const decode_opts *o, int src_len) {
  double v = o->max_len_a * (double)src_len + (double)o->max_len_b;
  int ml = v > 1e9 ? 1000000000 : (int)v; /* fairseq: int(a * src_len + b) */
  if (o->max_positions > 0 && ml > o->max_positions - 1) ml = o->max_positions - 1;
  return ml < 0 ? 0 : ml;
}

/* Real tokens of one padded source row (incl. eos). */
static int src_real_len(const int32_t *row, int S, int pad) {
  int n = 0;
  for (int j = 0; j < S; j++)
    n += row[j] != pad;
  return n;
}

/* fairseq's normalizer (step + 1) ** lenpen. */
static float len_norm(int len, double lenpen) {
  return (float)pow((double)len, lenpen);
}

/* May token v be generated at `step` by a sentence of maximum length maxlen?
 * fairseq: pad never; at step >= max_len only eos; else at step < min_len (1) no eos.
 * We also never generate bos. */
static inline int token_allowed(const model_dims *d, int v, int step, int maxlen) {
  if (v == d->pad || v == d->bos) return 0;
  if (step >= maxlen) return v == d->eos;
  if (step < 1) return v != d->eos;
  return 1;
}

/* Per-sentence maximum lengths (n_seq) and the decoder steps they need. */
static int batch_max_lens(const model *m, const int32_t *src, int n_seq, int S,
                          const decode_opts *o, int hyp_stride, int *maxlen) {
  int steps = 1;
  for (int i = 0; i < n_seq; i++) {
    maxlen[i] = decode_max_len(o, src_real_len(src + (size_t)i * S, S, m->dims.pad));
    CHECK(maxlen[i] <= hyp_stride, "hyp_stride %d < maximum output length %d", hyp_stride,
          maxlen[i]);
    if (maxlen[i] + 1 > steps) steps = maxlen[i] + 1;
  }
  return steps;
}

/* ---------------------------------------------------------------------------------- */
/* Greedy                                                                             */

void decode_greedy(model *m, const int32_t *src, int n_seq, int S, const decode_opts *o,
                   int32_t *hyp, int hyp_stride, int *hyp_len, float *score) {
  const model_dims *d = &m->dims;
  const int V = d->vocab;
  if (n_seq <= 0) return;
  int *maxlen = common_malloc((size_t)n_seq * sizeof *maxlen);
  int max_steps = batch_max_lens(m, src, n_seq, S, o, hyp_stride, maxlen);
  float *lp = common_malloc((size_t)n_seq * V * sizeof *lp); /* (n_seq, V) */
  int32_t *in = common_malloc((size_t)n_seq * sizeof *in);
  float *cum = common_calloc((size_t)n_seq, sizeof *cum);
  char *done = common_calloc((size_t)n_seq, 1);
  for (int i = 0; i < n_seq; i++) {
    in[i] = d->bos;
    hyp_len[i] = 0;
    if (score) score[i] = -INFINITY;
  }
  model_decoder *st = model_decoder_start(m, src, n_seq, S, 1, max_steps);
  int n_done = 0;
  for (int step = 0; step < max_steps && n_done < n_seq; step++) {
    model_decoder_step(m, st, in, lp);
    for (int i = 0; i < n_seq; i++) {
      if (done[i]) continue;
      const float *row = lp + (size_t)i * V;
      int best = -1;
      float bv = -INFINITY;
      for (int v = 0; v < V; v++) {
        if (!token_allowed(d, v, step, maxlen[i])) continue;
        if (row[v] > bv) { /* NaN and -inf never win */
          bv = row[v];
          best = v;
        }
      }
      if (best < 0) { /* nothing finite: give up on this sentence */
        done[i] = 1;
        n_done++;
        in[i] = d->eos;
        continue;
      }
      cum[i] += bv;
      if (best == d->eos) {
        done[i] = 1;
        n_done++;
        hyp_len[i] = step;
        if (score) score[i] = cum[i] / len_norm(step + 1, o->lenpen);
        in[i] = d->eos; /* dummy input from now on */
      } else {
        hyp[(size_t)i * hyp_stride + step] = best;
        in[i] = best;
      }
    }
  }
  model_decoder_free(st);
  free(maxlen);
  free(lp);
  free(in);
  free(cum);
  free(done);
}

/* ---------------------------------------------------------------------------------- */
/* Beam search                                                                        */

typedef struct cand {
  float s; /* cumulative log-prob */
  int b;   /* beam within the sentence */
  int v;   /* token */
} cand;

/* Insert (s, b, v) into c[0..*n) sorted by descending score, keeping at most k; a new
 * candidate goes after the ones of equal score (candidates arrive in increasing
 * (beam, token) order, so ties go to the lower index). */
static inline void cand_push(cand *c, int *n, int k, float s, int b, int v) {
  if (*n == k && !(s > c[k - 1].s)) return;
  int j = *n < k ? (*n)++ : k - 1;
  while (j > 0 && c[j - 1].s < s) {
    c[j] = c[j - 1];
    j--;
  }
  c[j].s = s;
  c[j].b = b;
  c[j].v = v;
}

void decode_beam(model *m, const int32_t *src, int n_seq, int S, const decode_opts *o, int32_t *hyp,
                 int hyp_stride, int *hyp_len, float *score) {
  const model_dims *d = &m->dims;
  const int V = d->vocab, B = o->beam, K = 2 * o->beam;
  CHECK(B >= 1, "beam %d < 1", B);
  if (n_seq <= 0) return;
  const int n_hyp = n_seq * B;
  int *maxlen = common_malloc((size_t)n_seq * sizeof *maxlen);
  const int max_steps = batch_max_lens(m, src, n_seq, S, o, hyp_stride, maxlen);
  const int L = max_steps + 1; /* tokens kept per hypothesis: bos + one per step */

  /* Every buffer of the search, allocated once. */
  float *lp = common_malloc((size_t)n_hyp * V * sizeof *lp);     /* (n_hyp, V) */
  int32_t *tok = common_malloc((size_t)n_hyp * L * sizeof *tok); /* (n_hyp, L) */
  int32_t *tok2 = common_malloc((size_t)n_hyp * L * sizeof *tok2);
  float *cum = common_malloc((size_t)n_hyp * sizeof *cum),
        *cum2 = common_malloc((size_t)n_hyp * sizeof *cum2);
  char *alive = common_malloc((size_t)n_hyp), *alive2 = common_malloc((size_t)n_hyp);
  int32_t *next = common_malloc((size_t)n_hyp * sizeof *next); /* token appended to slot */
  int32_t *in = common_malloc((size_t)n_hyp * sizeof *in);
  int *from = common_malloc((size_t)n_hyp * sizeof *from);
  cand *c = common_malloc((size_t)K * sizeof *c);
  int *n_fin = common_calloc((size_t)n_seq, sizeof *n_fin);
  float *best = common_malloc((size_t)n_seq * sizeof *best);
  char *done = common_calloc((size_t)n_seq, 1);

  for (int h = 0; h < n_hyp; h++) {
    tok[(size_t)h * L] = d->bos;
    cum[h] = 0.0f;
    alive[h] = (h % B) == 0; /* step 0: only the first beam (fairseq lprobs[:, ::beam]) */
  }
  for (int i = 0; i < n_seq; i++) {
    best[i] = -INFINITY;
    hyp_len[i] = 0;
  }

  model_decoder *st = model_decoder_start(m, src, n_seq, S, B, max_steps);
  int n_done = 0;
  for (int step = 0; step < max_steps && n_done < n_seq; step++) {
    for (int h = 0; h < n_hyp; h++)
      in[h] = alive[h] ? tok[(size_t)h * L + step] : d->eos;
    model_decoder_step(m, st, in, lp);

    for (int i = 0; i < n_seq; i++) {
      const int h0 = i * B;
      for (int k = 0; k < B; k++) {
        from[h0 + k] = h0 + k;
        alive2[h0 + k] = 0;
        cum2[h0 + k] = -INFINITY;
      }
      if (done[i]) continue;

      /* Top 2*beam candidates over live beams x vocab (finite scores only). */
      int nc = 0;
      for (int b = 0; b < B; b++) {
        const int h = h0 + b;
        if (!alive[h]) continue;
        const float *row = lp + (size_t)h * V;
        for (int v = 0; v < V; v++) {
          if (!token_allowed(d, v, step, maxlen[i])) continue;
          float s = cum[h] + row[v];
          if (!(s > -INFINITY)) continue; /* -inf and NaN */
          cand_push(c, &nc, K, s, b, v);
        }
      }

      /* eos among the first `beam` candidates: finished hypotheses. */
      for (int j = 0; j < nc && j < B; j++) {
        if (c[j].v != d->eos || n_fin[i] >= B) continue;
        n_fin[i]++;
        float sc = c[j].s / len_norm(step + 1, o->lenpen);
        if (sc > best[i]) {
          best[i] = sc;
          hyp_len[i] = step;
          memcpy(hyp + (size_t)i * hyp_stride, tok + (size_t)(h0 + c[j].b) * L + 1,
                 (size_t)step * sizeof *hyp);
        }
      }
      if (n_fin[i] >= B || step >= maxlen[i]) {
        done[i] = 1;
        n_done++;
        continue;
      }

      /* The first `beam` non-eos candidates continue. */
      int k = 0;
      for (int j = 0; j < nc && k < B; j++) {
        if (c[j].v == d->eos) continue;
        from[h0 + k] = h0 + c[j].b;
        next[h0 + k] = c[j].v;
        cum2[h0 + k] = c[j].s;
        alive2[h0 + k] = 1;
        k++;
      }
      if (k == 0) { /* nothing left to extend: keep what was finished */
        done[i] = 1;
        n_done++;
      }
    }
    if (n_done == n_seq) break;

    model_decoder_reorder(st, from);
    for (int h = 0; h < n_hyp; h++) {
      int32_t *dst = tok2 + (size_t)h * L;
      memcpy(dst, tok + (size_t)from[h] * L, (size_t)(step + 1) * sizeof *dst);
      dst[step + 1] = alive2[h] ? next[h] : d->eos;
    }
    int32_t *tt = tok;
    tok = tok2;
    tok2 = tt;
    float *tc = cum;
    cum = cum2;
    cum2 = tc;
    char *ta = alive;
    alive = alive2;
    alive2 = ta;
  }
  if (score)
    for (int i = 0; i < n_seq; i++)
      score[i] = best[i];

  model_decoder_free(st);
  free(maxlen);
  free(lp);
  free(tok);
  free(tok2);
  free(cum);
  free(cum2);
  free(alive);
  free(alive2);
  free(next);
  free(in);
  free(from);
  free(c);
  free(n_fin);
  free(best);
  free(done);
}

void decode_batch(model *m, const int32_t *src, int n_seq, int S, const decode_opts *o,
                  int32_t *hyp, int hyp_stride, int *hyp_len, float *score) {
  if (o->beam <= 1)
    decode_greedy(m, src, n_seq, S, o, hyp, hyp_stride, hyp_len, score);
  else
    decode_beam(m, src, n_seq, S, o, hyp, hyp_stride, hyp_len, score);
}

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

/* Read /vocab/spm_model of data_path (serial HDF5) into *bytes (malloc'd). */
static int read_spm_model(const char *data_path, unsigned char **bytes, size_t *n, char *err,
                          size_t err_len) {
  H5E_auto2_t old_fn;
  void *old_data;
  H5Eget_auto2(H5E_DEFAULT, &old_fn, &old_data);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
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
  H5Eset_auto2(H5E_DEFAULT, old_fn, old_data);
  return rc;
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
  if (read_spm_model(data_path, &model_bytes, &model_n, err, err_len) != C_OK) return C_ERR;

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

/* ---------------------------------------------------------------------------------- */
/* Distributed decoding of a list of sentences                                        */

/* Where sentence i's source tokens come from: a split or arrays (off, ids). */
typedef struct dsrc {
  data_split *split;
  const int64_t *off;
  const int32_t *ids;
  int max_src;        /* keep at most this many tokens before eos (0: all) */
  data_batch scratch; /* split loads */
} dsrc;

static int dsrc_len(const dsrc *d, int64_t i) {
  int n = d->split ? data_split_len(d->split, 0, i) : (int)(d->off[i + 1] - d->off[i]);
  return d->max_src > 0 && n > d->max_src ? d->max_src : n;
}

/* Fill src (n, S) with sentences idx[0..n): tokens, eos, pads. */
static void dsrc_load(dsrc *d, const int64_t *idx, int n, int S, int32_t *src, int pad, int eos) {
  if (d->split) data_batch_load_ids(d->split, idx, n, &d->scratch);
  for (int r = 0; r < n; r++) {
    int32_t *row = src + (size_t)r * S;
    int len = dsrc_len(d, idx[r]);
    CHECK(len + 1 <= S, "sentence %lld longer than its batch", (long long)idx[r]);
    if (d->split) {
      CHECK(d->scratch.ids[r] == idx[r], "data_batch_load_ids changed the sentence order");
      memcpy(row, d->scratch.src + (size_t)r * d->scratch.src_len, (size_t)len * sizeof *row);
    } else {
      memcpy(row, d->ids + d->off[idx[r]], (size_t)len * sizeof *row);
    }
    row[len] = eos;
    for (int j = len + 1; j < S; j++)
      row[j] = pad;
  }
}

static const dsrc *sort_src; /* qsort context (not reentrant; decode is single-threaded) */
static int len_cmp(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  int lx = dsrc_len(sort_src, x), ly = dsrc_len(sort_src, y);
  if (lx != ly) return lx < ly ? -1 : 1;
  return x < y ? -1 : (x > y);
}

/* Decode sentences [0, n) of d over comm; rank 0 gets n malloc'd strings in order. */
static char **decode_distributed(model *m, const data_file *f, dsrc *d, int64_t n,
                                 const decode_opts *o, MPI_Comm comm) {
  int rank, size;
  MPI_CHECK(MPI_Comm_rank(comm, &rank));
  MPI_CHECK(MPI_Comm_size(comm, &size));
  const int pad = m->dims.pad, eos = m->dims.eos;
  const int64_t budget = o->max_tokens > 0 ? o->max_tokens : 4096;
  const int64_t beam = o->beam > 1 ? o->beam : 1;

  /* Length-sorted order and batches: n_seq * beam * S <= budget (at least 1 sentence). */
  int64_t *order = common_malloc((size_t)(n > 0 ? n : 1) * sizeof *order);
  for (int64_t i = 0; i < n; i++)
    order[i] = i;
  sort_src = d;
  qsort(order, (size_t)n, sizeof *order, len_cmp);
  int64_t *starts = common_malloc((size_t)(n + 1) * sizeof *starts);
  int64_t n_batches = 0, max_cells = 1;
  int max_seq = 1, max_S = 1;
  for (int64_t j = 0; j < n;) {
    int64_t k = j + 1;
    while (k < n && (k - j + 1) * beam * (dsrc_len(d, order[k]) + 1) <= budget)
      k++;
    int S = dsrc_len(d, order[k - 1]) + 1;
    starts[n_batches++] = j;
    if (k - j > max_seq) max_seq = (int)(k - j);
    if (S > max_S) max_S = S;
    int64_t cells = (k - j) * (int64_t)decode_max_len(o, S);
    if (cells > max_cells) max_cells = cells;
    j = k;
  }
  starts[n_batches] = n;

  /* Buffers sized for the largest batch. */
  int32_t *src = common_malloc((size_t)max_seq * max_S * sizeof *src);
  int32_t *hyp = common_malloc((size_t)max_cells * sizeof *hyp);
  int *hyp_len = common_malloc((size_t)max_seq * sizeof *hyp_len);
  size_t txt_cap = 4096, out_cap = 4096, out_n = 0;
  char *txt = common_malloc(txt_cap), *outb = common_malloc(out_cap);

  for (int64_t b = rank; b < n_batches; b += size) {
    int n_seq = (int)(starts[b + 1] - starts[b]);
    const int64_t *idx = order + starts[b];
    int S = dsrc_len(d, idx[n_seq - 1]) + 1;
    int stride = decode_max_len(o, S);
    if (stride < 1) stride = 1;
    dsrc_load(d, idx, n_seq, S, src, pad, eos);
    decode_batch(m, src, n_seq, S, o, hyp, stride, hyp_len, NULL);
    for (int r = 0; r < n_seq; r++) {
      const int32_t *h = hyp + (size_t)r * stride;
      size_t need = decode_detok(f, h, hyp_len[r], txt, txt_cap);
      if (need + 1 > txt_cap) {
        while (txt_cap < need + 1)
          txt_cap *= 2;
        free(txt);
        txt = common_malloc(txt_cap);
        decode_detok(f, h, hyp_len[r], txt, txt_cap);
      }
      /* record: int64 sentence index, then the NUL-terminated string */
      size_t rec = sizeof(int64_t) + need + 1;
      if (out_n + rec > out_cap) {
        while (out_cap < out_n + rec)
          out_cap *= 2;
        char *grown = realloc(outb, out_cap);
        CHECK(grown, "out of memory");
        outb = grown;
      }
      memcpy(outb + out_n, &idx[r], sizeof(int64_t));
      memcpy(outb + out_n + sizeof(int64_t), txt, need + 1);
      out_n += rec;
    }
  }

  /* Gather every rank's records on rank 0. */
  int mine = common_int((int64_t)out_n);
  int *counts = rank == 0 ? common_malloc((size_t)size * sizeof *counts) : NULL;
  int *displs = rank == 0 ? common_malloc((size_t)size * sizeof *displs) : NULL;
  MPI_CHECK(MPI_Gather(&mine, 1, MPI_INT, counts, 1, MPI_INT, 0, comm));
  char *all = NULL;
  int64_t total = 0;
  if (rank == 0) {
    for (int r = 0; r < size; r++) {
      displs[r] = common_int(total);
      total += counts[r];
    }
    common_int(total);
    all = common_malloc((size_t)(total > 0 ? total : 1));
  }
  MPI_CHECK(MPI_Gatherv(outb, mine, MPI_CHAR, all, counts, displs, MPI_CHAR, 0, comm));
  char **res = NULL;
  if (rank == 0) {
    res = common_calloc((size_t)(n > 0 ? n : 1), sizeof *res);
    for (int64_t p = 0; p < total;) {
      int64_t i;
      memcpy(&i, all + p, sizeof i);
      p += (int64_t)sizeof i;
      CHECK(i >= 0 && i < n && !res[i], "bad or duplicate sentence %lld in gather", (long long)i);
      res[i] = strdup(all + p);
      CHECK(res[i], "out of memory");
      p += (int64_t)strlen(all + p) + 1;
    }
    for (int64_t i = 0; i < n; i++)
      CHECK(res[i], "sentence %lld was not decoded", (long long)i);
  }
  free(all);
  free(counts);
  free(displs);
  free(order);
  free(starts);
  free(src);
  free(hyp);
  free(hyp_len);
  free(txt);
  free(outb);
  return res;
}

void decode_free_strings(char **s, int64_t n) {
  if (!s) return;
  for (int64_t i = 0; i < n; i++)
    free(s[i]);
  free(s);
}

void decode_split(model *m, const data_file *f, data_split *s, int64_t max_sentences,
                  const decode_opts *o, MPI_Comm comm, char ***hyps, int64_t *n_hyps) {
  int64_t n = data_split_size(s);
  if (max_sentences > 0 && max_sentences < n) n = max_sentences;
  dsrc d = {0};
  d.split = s;
  d.max_src = o->max_positions > 1 ? o->max_positions - 1 : 0;
  int64_t n_cut = 0;
  for (int64_t i = 0; i < n && d.max_src > 0; i++)
    n_cut += data_split_len(s, 0, i) > d.max_src;
  int rank;
  MPI_CHECK(MPI_Comm_rank(comm, &rank));
  if (rank == 0 && n_cut > 0)
    fprintf(stderr, "decode: warning: %lld source sentences truncated to %d tokens\n",
            (long long)n_cut, d.max_src);
  *hyps = decode_distributed(m, f, &d, n, o, comm);
  *n_hyps = n;
  data_batch_free(&d.scratch);
}

int decode_translate_file(model *m, const data_file *f, const char *data_path, const decode_opts *o,
                          FILE *in, FILE *out, MPI_Comm comm) {
  int rank;
  MPI_CHECK(MPI_Comm_rank(comm, &rank));
  int64_t n = 0, n_ids = 0;
  int64_t *off = NULL;
  int32_t *ids = NULL;
  int bad = 0;
  if (rank == 0) {
    char **lines = NULL, *line = NULL;
    size_t cap = 0, lines_cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, in)) >= 0) {
      while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
        line[--len] = '\0';
      if ((size_t)n == lines_cap) {
        lines_cap = lines_cap ? 2 * lines_cap : 256;
        char **grown = realloc(lines, lines_cap * sizeof *lines);
        CHECK(grown, "out of memory");
        lines = grown;
      }
      lines[n] = strdup(line);
      CHECK(lines[n], "out of memory");
      n++;
    }
    free(line);
    char err[1024];
    if (n > 2147483647LL) {
      fprintf(stderr, "translate: too many input lines (%lld)\n", (long long)n);
      bad = 1;
    } else if (n > 0 && decode_encode_lines(data_path, (const char *const *)lines, (int)n, &off,
                                            &ids, err, sizeof err) != C_OK) {
      fprintf(stderr, "translate: %s\n", err);
      bad = 1;
    }
    if (!bad && n > 0) {
      n_ids = off[n];
      int V = m->dims.vocab;
      for (int64_t t = 0; t < n_ids && !bad; t++) {
        if (ids[t] < 0 || ids[t] >= V) {
          fprintf(stderr,
                  "translate: spm_encode gave id %d outside the model's vocabulary (%d); is "
                  "the checkpoint trained on this dataset?\n",
                  (int)ids[t], V);
          bad = 1;
        }
      }
    }
    for (int64_t i = 0; i < n; i++)
      free(lines[i]);
    free(lines);
  }
  if (common_any(comm, bad)) {
    free(off);
    free(ids);
    return C_ERR;
  }
  int64_t hdr[2] = {n, n_ids};
  MPI_CHECK(MPI_Bcast(hdr, 2, MPI_INT64_T, 0, comm));
  n = hdr[0];
  n_ids = hdr[1];
  if (n == 0) return C_OK;
  if (rank != 0) {
    off = common_malloc((size_t)(n + 1) * sizeof *off);
    ids = common_malloc((size_t)(n_ids > 0 ? n_ids : 1) * sizeof *ids);
  }
  MPI_CHECK(MPI_Bcast(off, common_int(n + 1), MPI_INT64_T, 0, comm));
  MPI_CHECK(MPI_Bcast(ids, common_int(n_ids), MPI_INT32_T, 0, comm));

  dsrc d = {0};
  d.off = off;
  d.ids = ids;
  d.max_src = o->max_positions > 1 ? o->max_positions - 1 : 0;
  if (rank == 0)
    for (int64_t i = 0; i < n && d.max_src > 0; i++)
      if (off[i + 1] - off[i] > d.max_src)
        fprintf(stderr, "translate: warning: line %lld has %lld tokens, truncated to %d\n",
                (long long)(i + 1), (long long)(off[i + 1] - off[i]), d.max_src);
  char **res = decode_distributed(m, f, &d, n, o, comm);
  int werr = 0;
  if (rank == 0) {
    for (int64_t i = 0; i < n; i++)
      fprintf(out, "%s\n", res[i]);
    werr = fflush(out) != 0 || ferror(out);
    if (werr) fprintf(stderr, "translate: writing the output failed\n");
    decode_free_strings(res, n);
  }
  free(off);
  free(ids);
  return common_any(comm, werr) ? C_ERR : C_OK;
}
