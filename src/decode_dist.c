/* decode_dist.c: the distributed decoding drivers (see decode.h): decode_split (the
 * sentences of a dataset split, for BLEU) and decode_translate_file (`mpiformer
 * translate`: raw lines in, detokenized lines out). Sentences are sorted by length and
 * cut into batches of at most max_tokens cells; rank r of comm decodes every size-th
 * batch on its own (tp = 1: a model with tp > 1 or pp > 1 is gathered first with
 * model_replicate by the caller) and rank 0 gathers the strings in input order.
 *
 * Not here: the search itself (decode_search.c), SentencePiece (decode_spm.c), tensor-
 * parallel decoding (none: each rank decodes whole batches).
 */
#include "decode.h"

#include <string.h>

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
