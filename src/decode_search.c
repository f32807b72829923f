/* decode_search.c: greedy and beam search over the model's incremental decoder, and the
 * decoding options (see decode.h). Pure computation: no MPI, no I/O.
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
 *
 * What it does not do: compact finished sentences away (the model's decoder state has a
 * fixed n_seq * beam hypotheses, so finished sentences are stepped with dummy eos
 * inputs until the whole batch is done; batches are length-sorted, which keeps that
 * waste small), prefix constraints, sampling, unk penalty, no-repeat-ngram. Text in or
 * out: decode_spm.c; batches over ranks: decode_dist.c.
 */
#include "decode.h"

#include <math.h>
#include <string.h>

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
