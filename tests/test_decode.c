// NP: 1 2
/* test_decode.c: greedy and beam search, detokenization, spm encoding, and the
 * distributed drivers, on tiny random models.
 *
 *  1. the incremental decoder equals the full forward: the sum of model_decoder_step's
 *     log-probs along fixed targets equals -nll of model_forward_backward (Pre-LN and
 *     Post-LN, a padded batch and one sentence at a time);
 *  2. greedy equals beam search with beam 1, and both equal a reference greedy search
 *     whose log-probs come from full forwards;
 *  3. beam search equals a reference implementation of fairseq's BeamSearch rules that
 *     scores every prefix with full forwards (beam 2, 3, 4), and with a beam larger than
 *     the search space it equals an exhaustive search over all sequences up to length 3
 *     (vocab 8) for several length penalties;
 *  4. detokenization on hand-made pieces (expected strings taken from spm_decode) and
 *     against the spm_decode program on random id sequences of a model trained here;
 *  5. encoding through spm_encode round-trips through detokenization, and a missing
 *     spm_encode gives a clear error;
 *  6. decode_split over all ranks equals decode_split on rank 0 alone and per-sentence
 *     decoding; decode_translate_file prints, in input order, the per-sentence result.
 */
#include "decode.h"
#include "grid.h"
#include "harness.h"

#include <hdf5.h>
#include <string.h>
#include <unistd.h>

static grid g;
static int rank, nranks;

enum { PAD = 0, UNK = 1, BOS = 2, EOS = 3 };

static uint64_t rng = 88172645463325252ULL;
static int rnd_below(int n) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (int)(rng % (uint64_t)n);
}
/* A random ordinary token (unk or >= 4). */
static int rnd_tok(int V) {
  int v = 4 + rnd_below(V - 3);
  return v == V ? UNK : v;
}

static model *tiny_model(int vocab, uint64_t seed, float out_scale, int pre_ln) {
  model_dims d;
  memset(&d, 0, sizeof d);
  d.n_enc = 2;
  d.n_dec = 2;
  d.d = 16;
  d.ffn = 32;
  d.heads = 2;
  d.vocab = vocab;
  d.pre_ln = pre_ln;
  d.pad = PAD;
  d.bos = BOS;
  d.eos = EOS;
  d.share = 0;
  model *m = model_create(&d, &g, seed);
  CHECK(m, "model_create failed");
  model_set_mode(m, 0, 0);
  float *w = m->out_proj->w.data;
  for (int64_t i = 0; i < dmat_local_size(&m->out_proj->w); i++)
    w[i] *= out_scale;
  return m;
}

/* ---- reference scoring with full forwards ----------------------------------------- */

/* -nll of (bos + y, y + eos) for one source row src (S) and y (n tokens): the sum of
 * log-probs of y and the final eos. */
static double full_logprob(model *m, const int32_t *src, int S, const int32_t *y, int n) {
  int32_t tin[64], tout[64];
  CHECK(n + 1 <= 64, "too long");
  tin[0] = BOS;
  for (int j = 0; j < n; j++)
    tin[j + 1] = tout[j] = y[j];
  tout[n] = EOS;
  double loss = 0, nll = 0;
  model_forward_backward(m, src, tin, tout, 1, S, n + 1, 1.0f, 0, &loss, &nll);
  return -nll;
}

/* log p(v | prefix y[0..n)) for every v (V), from full forwards: the sum of log-probs
 * of the sequence y + v (tgt_in = bos + y, tgt_out = y + v) minus that of y alone. */
static void full_next_lp(model *m, const int32_t *src, int S, const int32_t *y, int n, double *lp) {
  const int V = m->dims.vocab;
  int32_t tin[64], tout[64];
  CHECK(n + 1 <= 64, "too long");
  tin[0] = BOS;
  for (int j = 0; j < n; j++)
    tin[j + 1] = tout[j] = y[j];
  double base = 0;
  if (n > 0) {
    double loss = 0, nll = 0;
    model_forward_backward(m, src, tin, tout, 1, S, n, 1.0f, 0, &loss, &nll);
    base = -nll;
  }
  for (int v = 0; v < V; v++) {
    tout[n] = v;
    double loss = 0, nll = 0;
    if (v == PAD) { /* a pad target is not scored: ask for the others only */
      lp[v] = -INFINITY;
      continue;
    }
    model_forward_backward(m, src, tin, tout, 1, S, n + 1, 1.0f, 0, &loss, &nll);
    lp[v] = -nll - base;
  }
}

static int allowed(int v, int step, int maxlen) {
  if (v == PAD || v == BOS) return 0;
  if (step >= maxlen) return v == EOS;
  if (step < 1) return v != EOS;
  return 1;
}

/* Reference beam search for one sentence, fairseq's rules, written plainly. */
typedef struct rhyp {
  int32_t t[64];
  int n;
  double s;
} rhyp;
typedef struct rcand {
  double s;
  int b, v;
} rcand;
static int rcand_cmp(const void *a, const void *b) {
  const rcand *x = a, *y = b;
  if (x->s != y->s) return x->s > y->s ? -1 : 1;
  int ix = x->b * 1000 + x->v, iy = y->b * 1000 + y->v;
  return ix < iy ? -1 : (ix > iy);
}
static int n_late_eos;   /* eos candidates outside the first beam (the rule was exercised) */
static int n_early_stop; /* sentences done with `beam` hypotheses before the maximum */
static void ref_beam(model *m, const int32_t *src, int S, int beam, double lenpen, int maxlen,
                     int32_t *out, int *out_n, double *out_score) {
  const int V = m->dims.vocab;
  rhyp beams[16], nb[16];
  rcand *c = malloc(sizeof *c * 16 * 64);
  double lp[64];
  int n_beams = 1, n_fin = 0;
  beams[0].n = 0;
  beams[0].s = 0;
  *out_score = -INFINITY;
  *out_n = 0;
  for (int step = 0; step <= maxlen; step++) {
    int nc = 0;
    for (int b = 0; b < n_beams; b++) {
      full_next_lp(m, src, S, beams[b].t, beams[b].n, lp);
      for (int v = 0; v < V; v++)
        if (allowed(v, step, maxlen)) c[nc++] = (rcand){beams[b].s + lp[v], b, v};
    }
    qsort(c, (size_t)nc, sizeof *c, rcand_cmp);
    if (nc > 2 * beam) nc = 2 * beam;
    for (int j = 0; j < nc; j++) {
      if (c[j].v != EOS) continue;
      if (j >= beam) {
        n_late_eos++;
        continue;
      }
      if (n_fin >= beam) continue;
      n_fin++;
      double sc = c[j].s / pow(step + 1, lenpen);
      if (sc > *out_score) {
        *out_score = sc;
        *out_n = beams[c[j].b].n;
        memcpy(out, beams[c[j].b].t, sizeof(int32_t) * (size_t)*out_n);
      }
    }
    if (n_fin >= beam && step < maxlen) n_early_stop++;
    if (n_fin >= beam || step >= maxlen) break;
    int k = 0;
    for (int j = 0; j < nc && k < beam; j++) {
      if (c[j].v == EOS) continue;
      nb[k] = beams[c[j].b];
      nb[k].t[nb[k].n++] = c[j].v;
      nb[k].s = c[j].s;
      k++;
    }
    memcpy(beams, nb, sizeof(rhyp) * (size_t)k);
    n_beams = k;
  }
  free(c);
}

/* A padded source batch (n, S) with the given real lengths (without eos). */
static void make_src(int32_t *src, int n, int S, const int *len, int V) {
  for (int i = 0; i < n; i++) {
    for (int j = 0; j < S; j++)
      src[i * S + j] = PAD;
    for (int j = 0; j < len[i]; j++)
      src[i * S + j] = rnd_tok(V);
    src[i * S + len[i]] = EOS;
  }
}

/* ---- 1. incremental decoder == full forward ---------------------------------------- */
static void test_incremental(int pre_ln) {
  const int V = 12, N = 3, S = 6;
  const int slen[3] = {5, 3, 1}, tlen[3] = {4, 2, 5};
  model *m = tiny_model(V, 11 + pre_ln, 3.0f, pre_ln);
  int32_t src[3 * 6], y[3][8];
  make_src(src, N, S, slen, V);
  for (int i = 0; i < N; i++)
    for (int j = 0; j < tlen[i]; j++)
      y[i][j] = rnd_tok(V);
  const int T = 5;
  model_decoder *st = model_decoder_start(m, src, N, S, 1, T + 1);
  float lp[3 * 12];
  double inc[3] = {0, 0, 0};
  for (int t = 0; t <= T; t++) {
    int32_t in[3];
    for (int i = 0; i < N; i++)
      in[i] = t == 0 ? BOS : (t - 1 < tlen[i] ? y[i][t - 1] : EOS);
    model_decoder_step(m, st, in, lp);
    for (int i = 0; i < N; i++) {
      if (t < tlen[i]) inc[i] += lp[i * V + y[i][t]];
      if (t == tlen[i]) inc[i] += lp[i * V + EOS];
    }
  }
  model_decoder_free(st);

  /* One sentence at a time, unpadded source. */
  double sum_inc = 0;
  for (int i = 0; i < N; i++) {
    double ref = full_logprob(m, src + i * S, slen[i] + 1, y[i], tlen[i]);
    TEST_EXPECT(test_close(inc[i], ref, 1e-4, 1e-5),
                "%s: incremental log-prob %.7f != full forward %.7f (sentence %d)",
                pre_ln ? "pre" : "post", inc[i], ref, i);
    sum_inc += inc[i];
  }
  /* The padded batch at once (source and target padding). */
  int32_t tin[3 * 6], tout[3 * 6];
  for (int i = 0; i < N; i++) {
    for (int t = 0; t < 6; t++)
      tin[i * 6 + t] = tout[i * 6 + t] = PAD;
    tin[i * 6] = BOS;
    for (int j = 0; j < tlen[i]; j++)
      tin[i * 6 + j + 1] = tout[i * 6 + j] = y[i][j];
    tout[i * 6 + tlen[i]] = EOS;
  }
  double loss = 0, nll = 0;
  model_forward_backward(m, src, tin, tout, N, S, 6, 1.0f, 0, &loss, &nll);
  TEST_EXPECT(test_close(sum_inc, -nll, 1e-4, 1e-5),
              "%s: batch: incremental %.7f != full forward %.7f", pre_ln ? "pre" : "post", sum_inc,
              -nll);
  model_free(m);
}

/* ---- 2. greedy == beam 1 == reference greedy --------------------------------------- */
static void test_greedy(void) {
  const int V = 12, N = 4, S = 7;
  const int slen[4] = {6, 2, 4, 1};
  model *m = tiny_model(V, 5, 4.0f, 1);
  int32_t src[4 * 7];
  make_src(src, N, S, slen, V);
  decode_opts o;
  decode_opts_default(&o);
  o.beam = 1;
  o.lenpen = 1.0;
  o.max_len_a = 1.0;
  o.max_len_b = 2;
  const int stride = decode_max_len(&o, S);
  int32_t h1[4 * 16], h2[4 * 16];
  int n1[4], n2[4];
  float s1[4], s2[4];
  decode_greedy(m, src, N, S, &o, h1, stride, n1, s1);
  decode_beam(m, src, N, S, &o, h2, stride, n2, s2);
  int hit_max = 0;
  for (int i = 0; i < N; i++) {
    int same = n1[i] == n2[i] && s1[i] == s2[i] &&
               memcmp(h1 + i * stride, h2 + i * stride, sizeof(int32_t) * (size_t)n1[i]) == 0;
    TEST_EXPECT(same, "greedy != beam 1 on sentence %d (len %d vs %d, score %g vs %g)", i, n1[i],
                n2[i], s1[i], s2[i]);
    /* reference greedy: argmax of full-forward log-probs, step by step */
    int maxlen = decode_max_len(&o, slen[i] + 1);
    int32_t y[64];
    int n = 0;
    double sum = 0, lp[64];
    for (int step = 0; step <= maxlen; step++) {
      full_next_lp(m, src + i * S, slen[i] + 1, y, n, lp);
      int best = -1;
      for (int v = 0; v < V; v++)
        if (allowed(v, step, maxlen) && (best < 0 || lp[v] > lp[best])) best = v;
      sum += lp[best];
      if (best == EOS) break;
      y[n++] = best;
    }
    hit_max += n == maxlen;
    int ok = n == n1[i] && memcmp(y, h1 + i * stride, sizeof(int32_t) * (size_t)n) == 0 &&
             test_close(s1[i], sum / (n + 1), 1e-4, 1e-5);
    TEST_EXPECT(ok, "greedy != reference greedy on sentence %d (len %d vs %d, score %g vs %g)", i,
                n1[i], n, s1[i], sum / (n + 1));
  }
  if (rank == 0) printf("greedy: %d of %d sentences reached max length\n", hit_max, N);
  model_free(m);
}

/* ---- 3. beam == reference fairseq beam; huge beam == exhaustive -------------------- */
static void test_beam_reference(void) {
  const int N = 4, S = 6;
  const int slen[4] = {5, 1, 3, 2};
  /* (vocab, beam, lenpen, max_len_b). Vocab 6 makes eos likely early, so sentences
   * finish with `beam` hypotheses before the maximum length, and a high lenpen with a
   * long maximum makes that stopping rule matter (longer ones would score better). */
  const int vocabs[6] = {12, 12, 12, 12, 6, 6};
  const int beams[6] = {2, 3, 4, 2, 2, 3};
  const double pens[6] = {1.0, 0.3, 2.0, 4.0, 4.0, 1.0};
  const int lens_b[6] = {3, 3, 3, 8, 8, 6};
  n_late_eos = n_early_stop = 0;
  model *m = NULL;
  int32_t src[4 * 6];
  for (int c = 0; c < 6; c++) {
    const int V = vocabs[c], beam = beams[c];
    if (c == 0 || V != vocabs[c - 1]) {
      if (m) model_free(m);
      m = tiny_model(V, 21 + V, 2.5f, 0);
      make_src(src, N, S, slen, V);
    }
    decode_opts o;
    decode_opts_default(&o);
    o.beam = beam;
    o.lenpen = pens[c];
    o.max_len_a = 0.5;
    o.max_len_b = lens_b[c];
    const int stride = decode_max_len(&o, S);
    int32_t h[4 * 16];
    int n[4];
    float s[4];
    decode_batch(m, src, N, S, &o, h, stride, n, s);
    for (int i = 0; i < N; i++) {
      int32_t ry[64];
      int rn;
      double rs;
      ref_beam(m, src + i * S, slen[i] + 1, beam, o.lenpen, decode_max_len(&o, slen[i] + 1), ry,
               &rn, &rs);
      int ok = rn == n[i] && memcmp(ry, h + i * stride, sizeof(int32_t) * (size_t)rn) == 0 &&
               test_close(s[i], rs, 1e-4, 1e-5);
      TEST_EXPECT(ok,
                  "V %d beam %d lenpen %g sentence %d: len %d score %g, reference len %d "
                  "score %g",
                  V, beam, o.lenpen, i, n[i], s[i], rn, rs);
    }
  }
  if (rank == 0)
    printf("beam reference: %d eos candidates fell outside the first beam, %d sentences "
           "stopped with `beam` hypotheses before the maximum length\n",
           n_late_eos, n_early_stop);
  model_free(m);
}

static void test_beam_exhaustive(void) {
  const int V = 8, N = 3, S = 5, L = 3;
  const int slen[3] = {4, 2, 1};
  model *m = tiny_model(V, 31, 2.0f, 1);
  int32_t src[3 * 5];
  make_src(src, N, S, slen, V);
  const int toks[5] = {UNK, 4, 5, 6, 7};
  /* every sequence of 1..3 ordinary tokens, scored by a full forward */
  int32_t seqs[155][3];
  int lens[155], ns = 0;
  for (int len = 1; len <= L; len++) {
    int total = 1;
    for (int j = 0; j < len; j++)
      total *= 5;
    for (int c = 0; c < total; c++) {
      for (int j = 0, x = c; j < len; j++, x /= 5)
        seqs[ns][j] = toks[x % 5];
      lens[ns++] = len;
    }
  }
  double *raw = malloc(sizeof(double) * N * 155);
  for (int i = 0; i < N; i++)
    for (int q = 0; q < ns; q++)
      raw[i * 155 + q] = full_logprob(m, src + i * S, slen[i] + 1, seqs[q], lens[q]);
  const double pens[3] = {0.0, 1.0, 3.0};
  int differ = 0; /* sentences where a beam of 2 misses the optimum (the test has teeth) */
  for (int p = 0; p < 3; p++) {
    decode_opts o;
    decode_opts_default(&o);
    o.beam = 160; /* > 5 + 25 + 125 finished and > 150 candidates per step: exact */
    o.lenpen = pens[p];
    o.max_len_a = 0;
    o.max_len_b = L;
    int32_t h[3 * L];
    int n[3];
    float s[3];
    decode_beam(m, src, N, S, &o, h, L, n, s);
    decode_opts o2 = o;
    o2.beam = 2;
    int32_t h2[3 * L];
    int n2[3];
    float s2[3];
    decode_beam(m, src, N, S, &o2, h2, L, n2, s2);
    for (int i = 0; i < N; i++) {
      int bq = 0, mine = -1;
      for (int q = 0; q < ns; q++) {
        double sc = raw[i * 155 + q] / pow(lens[q] + 1, pens[p]);
        if (sc > raw[i * 155 + bq] / pow(lens[bq] + 1, pens[p])) bq = q;
        if (lens[q] == n[i] && memcmp(seqs[q], h + i * L, sizeof(int32_t) * (size_t)n[i]) == 0)
          mine = q;
      }
      double best = raw[i * 155 + bq] / pow(lens[bq] + 1, pens[p]);
      TEST_EXPECT(mine >= 0 && test_close(raw[i * 155 + mine] / pow(lens[mine] + 1, pens[p]), best,
                                          1e-5, 1e-6),
                  "lenpen %g sentence %d: beam 160 found len %d score %g, exhaustive best len %d "
                  "score %g",
                  pens[p], i, n[i], s[i], lens[bq], best);
      TEST_EXPECT(test_close(s[i], best, 1e-4, 1e-5), "lenpen %g sentence %d: score %g != %g",
                  pens[p], i, s[i], best);
      TEST_EXPECT(s2[i] <= s[i] + 1e-5, "beam 2 beats the exhaustive optimum (%g > %g)", s2[i],
                  s[i]);
      differ += s2[i] < s[i] - 1e-6;
    }
  }
  if (rank == 0) printf("exhaustive: beam 2 missed the optimum in %d of 9 cases\n", differ);
  free(raw);
  model_free(m);
}

/* ---- maximum length: int(a * src_len + b), src_len incl. eos, capped by positions ---- */
static void test_max_len(void) {
  decode_opts o;
  decode_opts_default(&o);
  o.max_len_a = 1.2;
  o.max_len_b = 10;
  o.max_positions = 1024;
  TEST_EXPECT(decode_max_len(&o, 11) == 23, "max_len(11) = %d, want int(1.2*11+10) = 23",
              decode_max_len(&o, 11));
  TEST_EXPECT(decode_max_len(&o, 1) == 11, "max_len(1) = %d, want 11", decode_max_len(&o, 1));
  o.max_positions = 20;
  TEST_EXPECT(decode_max_len(&o, 11) == 19, "max_len capped = %d, want 19", decode_max_len(&o, 11));
  o.max_len_a = 0.5;
  o.max_len_b = 3;
  TEST_EXPECT(decode_max_len(&o, 5) == 5, "max_len(0.5*5+3) = %d, want 5", decode_max_len(&o, 5));
}

/* ---- 4. detokenization on hand-made pieces ----------------------------------------- */
static void test_detok_pieces(void) {
  const char *pieces[] = {"<pad>",
                          "<unk>",
                          "<s>",
                          "</s>",
                          "\xE2\x96\x81",
                          "o",
                          "\xE2\x96\x81world",
                          "\xE2\x96\x81he",
                          "llo",
                          "a\xE2\x96\x81"
                          "b"};
  const int V = 10;
  struct {
    int32_t ids[6];
    int n;
    const char *want; /* what spm_decode prints for the same pieces */
  } cases[] = {
      {{7, 8, 6}, 3, "hello world"},
      {{4, 4, 5}, 3, "o"}, /* leading U+2581 dropped while the output is empty */
      {{4, 6}, 2, "world"},
      {{1, 6}, 2, " \xE2\x81\x87  world"}, /* unk is " ⁇ ", and it is not stripped */
      {{5, 1}, 2, "o \xE2\x81\x87 "},
      {{2, 6, 3, 0}, 4, "world"}, /* control symbols print nothing */
      {{6, 6}, 2, "world world"},
      {{9, 4, 5}, 3, "a b o"},         /* U+2581 inside a piece */
      {{99, 5}, 2, " \xE2\x81\x87 o"}, /* out of range prints like unk */
      {{0}, 0, ""},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    char buf[64];
    size_t n = decode_detok_pieces(pieces, V, PAD, BOS, EOS, UNK, cases[c].ids, cases[c].n, buf,
                                   sizeof buf);
    TEST_EXPECT(strcmp(buf, cases[c].want) == 0 && n == strlen(cases[c].want),
                "detok case %zu: \"%s\" (%zu), want \"%s\"", c, buf, n, cases[c].want);
  }
  /* truncation: returns the full length, writes a NUL-terminated prefix */
  char small[4];
  int32_t ids[3] = {7, 8, 6};
  size_t n = decode_detok_pieces(pieces, V, PAD, BOS, EOS, UNK, ids, 3, small, sizeof small);
  TEST_EXPECT(n == 11 && strcmp(small, "hel") == 0, "truncated detok: %zu \"%s\"", n, small);
}

/* ---- a dataset with a real SentencePiece model -------------------------------------- */

static const char *corpus[] = {
    "hello world",      "the quick brown fox", "jumps over the lazy dog",
    "hello there dog",  "world of foxes",      "the dog is quick",
    "a lazy fox jumps", "over the world",      "brown dogs and brown foxes",
    "quick quick slow",
};
enum { N_CORPUS = sizeof corpus / sizeof corpus[0] };

static char dir[256];
static char h5path[300], spm_prefix[300];
static int spm_vocab;
static char **spm_pieces;

static int run_quiet(const char *cmd) {
  return system(cmd);
}

/* Train a tiny spm model and pack a dataset file (rank 0); every rank gets the paths. */
static int make_dataset(void) {
  int ok = 1;
  if (rank == 0) {
    snprintf(dir, sizeof dir, "/tmp/test_decode_XXXXXX");
    CHECK(mkdtemp(dir), "mkdtemp failed");
    char path[400], cmd[1200];
    snprintf(path, sizeof path, "%s/corpus.txt", dir);
    FILE *fp = fopen(path, "w");
    CHECK(fp, "cannot write %s", path);
    for (int i = 0; i < N_CORPUS; i++)
      fprintf(fp, "%s\n", corpus[i]);
    fclose(fp);
    snprintf(spm_prefix, sizeof spm_prefix, "%s/spm", dir);
    snprintf(cmd, sizeof cmd,
             "spm_train --input=%s --model_prefix=%s --vocab_size=48 --hard_vocab_limit=false "
             "--model_type=unigram --pad_id=0 --unk_id=1 --bos_id=2 --eos_id=3 "
             "--minloglevel=2 >%s/train.log 2>&1",
             path, spm_prefix, dir);
    ok = run_quiet(cmd) == 0;
  }
  MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
  MPI_Bcast(spm_prefix, sizeof spm_prefix, MPI_CHAR, 0, MPI_COMM_WORLD);
  snprintf(h5path, sizeof h5path, "%s/data.h5", dir);
  TEST_EXPECT(ok, "spm_train failed (is the sentencepiece package installed?)");
  if (!ok) return 0;

  /* pieces from spm.vocab (every rank reads it) */
  char vpath[400], line[512];
  snprintf(vpath, sizeof vpath, "%s.vocab", spm_prefix);
  FILE *fp = fopen(vpath, "r");
  CHECK(fp, "cannot read %s", vpath);
  spm_pieces = calloc(256, sizeof *spm_pieces);
  while (fgets(line, sizeof line, fp) && spm_vocab < 256) {
    line[strcspn(line, "\t\n")] = '\0';
    spm_pieces[spm_vocab++] = strdup(line);
  }
  fclose(fp);

  if (rank == 0) {
    char mpath[400];
    snprintf(mpath, sizeof mpath, "%s.model", spm_prefix);
    fp = fopen(mpath, "rb");
    CHECK(fp, "cannot read %s", mpath);
    fseek(fp, 0, SEEK_END);
    long msize = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *mbytes = malloc((size_t)msize);
    CHECK(fread(mbytes, 1, (size_t)msize, fp) == (size_t)msize, "short read");
    fclose(fp);

    hid_t f = H5Fcreate(h5path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    CHECK(f >= 0, "cannot create %s", h5path);
    const char *an[6] = {"format_version", "pad_id", "unk_id", "bos_id", "eos_id", "vocab_size"};
    int av[6] = {1, PAD, UNK, BOS, EOS, spm_vocab};
    for (int k = 0; k < 6; k++) {
      hid_t sp = H5Screate(H5S_SCALAR);
      hid_t a = H5Acreate2(f, an[k], H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT);
      H5Awrite(a, H5T_NATIVE_INT, &av[k]);
      H5Aclose(a);
      H5Sclose(sp);
    }
    hid_t vt = H5Tcopy(H5T_C_S1);
    H5Tset_size(vt, H5T_VARIABLE);
    H5Tset_cset(vt, H5T_CSET_UTF8);
    hid_t gv = H5Gcreate2(f, "vocab", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t n = (hsize_t)spm_vocab;
    hid_t sp = H5Screate_simple(1, &n, NULL);
    hid_t d = H5Dcreate2(gv, "pieces", vt, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, vt, H5S_ALL, H5S_ALL, H5P_DEFAULT, spm_pieces);
    H5Dclose(d);
    H5Sclose(sp);
    n = (hsize_t)msize;
    sp = H5Screate_simple(1, &n, NULL);
    d = H5Dcreate2(gv, "spm_model", H5T_STD_U8LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, mbytes);
    H5Dclose(d);
    H5Sclose(sp);
    H5Gclose(gv);
    free(mbytes);

    /* split "test": 13 random sources of 1..7 tokens; targets with text */
    enum { NS = 13 };
    int32_t tok[2][NS * 8];
    int64_t off[2][NS + 1];
    const char *text[NS];
    off[0][0] = off[1][0] = 0;
    for (int i = 0; i < NS; i++) {
      int l0 = 1 + rnd_below(7), l1 = 1 + rnd_below(5);
      for (int j = 0; j < l0; j++)
        tok[0][off[0][i] + j] = rnd_tok(spm_vocab);
      for (int j = 0; j < l1; j++)
        tok[1][off[1][i] + j] = rnd_tok(spm_vocab);
      off[0][i + 1] = off[0][i] + l0;
      off[1][i + 1] = off[1][i] + l1;
      text[i] = corpus[i % N_CORPUS];
    }
    hid_t gs = H5Gcreate2(f, "test", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    for (int k = 0; k < 2; k++) {
      hid_t gk = H5Gcreate2(gs, k ? "tgt" : "src", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
      n = (hsize_t)off[k][NS];
      sp = H5Screate_simple(1, &n, NULL);
      d = H5Dcreate2(gk, "tokens", H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
      H5Dwrite(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, tok[k]);
      H5Dclose(d);
      H5Sclose(sp);
      n = NS + 1;
      sp = H5Screate_simple(1, &n, NULL);
      d = H5Dcreate2(gk, "offsets", H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
      H5Dwrite(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, off[k]);
      H5Dclose(d);
      H5Sclose(sp);
      n = NS;
      sp = H5Screate_simple(1, &n, NULL);
      d = H5Dcreate2(gk, "text", vt, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
      H5Dwrite(d, vt, H5S_ALL, H5S_ALL, H5P_DEFAULT, text);
      H5Dclose(d);
      H5Sclose(sp);
      H5Gclose(gk);
    }
    H5Gclose(gs);
    H5Tclose(vt);
    H5Fclose(f);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  return 1;
}

/* ---- 4b. detokenization == spm_decode; 5. encode round trip ------------------------- */
static void test_spm(const data_file *f) {
  if (rank != 0) return;
  /* random id sequences through spm_decode and through decode_detok */
  enum { NQ = 40 };
  int32_t q[NQ][8];
  int qn[NQ];
  char ipath[400], opath[400], cmd[1200];
  snprintf(ipath, sizeof ipath, "%s/ids.txt", dir);
  snprintf(opath, sizeof opath, "%s/dec.txt", dir);
  FILE *fp = fopen(ipath, "w");
  for (int i = 0; i < NQ; i++) {
    qn[i] = 1 + rnd_below(7);
    for (int j = 0; j < qn[i]; j++) {
      q[i][j] = rnd_below(spm_vocab); /* every id, specials included */
      fprintf(fp, "%s%d", j ? " " : "", q[i][j]);
    }
    fprintf(fp, "\n");
  }
  fclose(fp);
  snprintf(cmd, sizeof cmd, "spm_decode --model=%s.model --input_format=id <%s >%s", spm_prefix,
           ipath, opath);
  TEST_EXPECT(run_quiet(cmd) == 0, "spm_decode failed");
  fp = fopen(opath, "r");
  char line[512], mine[512];
  int same = 0;
  for (int i = 0; i < NQ && fp && fgets(line, sizeof line, fp); i++) {
    line[strcspn(line, "\n")] = '\0';
    decode_detok(f, q[i], qn[i], mine, sizeof mine);
    TEST_EXPECT(strcmp(line, mine) == 0, "detok of sequence %d: \"%s\", spm_decode: \"%s\"", i,
                mine, line);
    same += strcmp(line, mine) == 0;
  }
  if (fp) fclose(fp);
  TEST_EXPECT(same == NQ, "only %d of %d sequences compared equal to spm_decode", same, NQ);

  /* encode -> detok round trip; an unknown character comes back as " ⁇ " */
  const char *lines[4] = {"the quick brown fox", "hello world", "", "dog QX"};
  int64_t *off;
  int32_t *ids;
  char err[512];
  int rc = decode_encode_lines(h5path, lines, 4, &off, &ids, err, sizeof err);
  TEST_EXPECT(rc == C_OK, "decode_encode_lines: %s", err);
  if (rc == C_OK) {
    for (int i = 0; i < 3; i++) {
      decode_detok(f, ids + off[i], (int)(off[i + 1] - off[i]), mine, sizeof mine);
      TEST_EXPECT(strcmp(mine, lines[i]) == 0, "round trip of \"%s\" gave \"%s\"", lines[i], mine);
    }
    TEST_EXPECT(off[3] == off[2], "an empty line should encode to nothing");
    decode_detok(f, ids + off[3], (int)(off[4] - off[3]), mine, sizeof mine);
    TEST_EXPECT(strncmp(mine, "dog", 3) == 0 && strstr(mine, "\xE2\x81\x87"),
                "\"dog zebra\" (Q, X are unknown) gave \"%s\"", mine);
    free(off);
    free(ids);
  }
  /* clear errors: no spm_encode in PATH, no such dataset */
  char *old = strdup(getenv("PATH") ? getenv("PATH") : "");
  setenv("PATH", "/nonexistent", 1);
  rc = decode_encode_lines(h5path, lines, 1, &off, &ids, err, sizeof err);
  setenv("PATH", old, 1);
  free(old);
  TEST_EXPECT(rc == C_ERR && strstr(err, "spm_encode") && strstr(err, "install"),
              "missing spm_encode: rc %d err \"%s\"", rc, err);
  rc = decode_encode_lines("/nonexistent/x.h5", lines, 1, &off, &ids, err, sizeof err);
  TEST_EXPECT(rc == C_ERR && strstr(err, "/nonexistent/x.h5"), "missing file: rc %d err \"%s\"", rc,
              err);
}

/* Per-sentence reference: decode each source alone (batch of one) and detokenize. */
static void decode_one(model *m, const data_file *f, const int32_t *x, int n, const decode_opts *o,
                       char *buf, size_t len) {
  int32_t src[64], hyp[256];
  int hl;
  memcpy(src, x, sizeof(int32_t) * (size_t)n);
  src[n] = EOS;
  decode_batch(m, src, 1, n + 1, o, hyp, decode_max_len(o, n + 1), &hl, NULL);
  decode_detok(f, hyp, hl, buf, len);
}

/* ---- 6. decode_split and decode_translate_file over ranks --------------------------- */
static void test_drivers(const data_file *f) {
  char err[512];
  data_split *s = data_split_open((data_file *)f, "test", err, sizeof err);
  TEST_EXPECT(s != NULL, "data_split_open: %s", err);
  if (!s) return;
  model *m = tiny_model(spm_vocab, 41, 3.0f, 1);
  for (int beam = 1; beam <= 3; beam += 2) {
    decode_opts o;
    decode_opts_default(&o);
    o.beam = beam;
    o.max_tokens = 12 * beam; /* several batches of several sentences */
    char **all = NULL, **solo = NULL;
    int64_t n_all = 0, n_solo = 0;
    decode_split(m, f, s, 0, &o, MPI_COMM_WORLD, &all, &n_all);
    TEST_EXPECT(n_all == data_split_size(s), "decode_split count %lld", (long long)n_all);
    if (rank == 0) {
      decode_split(m, f, s, 0, &o, MPI_COMM_SELF, &solo, &n_solo);
      int same = n_solo == n_all, nonempty = 0;
      for (int64_t i = 0; same && i < n_all; i++)
        same = strcmp(all[i], solo[i]) == 0;
      TEST_EXPECT(same, "beam %d: decode_split over %d ranks != rank 0 alone", beam, nranks);
      /* per-sentence decoding of the stored tokens */
      data_batch b;
      memset(&b, 0, sizeof b);
      for (int64_t i = 0; i < n_all; i++) {
        data_batch_load_ids(s, &i, 1, &b);
        char ref[1024];
        decode_one(m, f, b.src, b.src_len - 1, &o, ref, sizeof ref);
        TEST_EXPECT(strcmp(ref, all[i]) == 0, "beam %d sentence %lld: split \"%s\" != alone \"%s\"",
                    beam, (long long)i, all[i], ref);
        nonempty += all[i][0] != '\0';
      }
      TEST_EXPECT(nonempty > 0, "every hypothesis is empty");
      data_batch_free(&b);
      /* max_sentences */
      char **few = NULL;
      int64_t n_few = 0;
      decode_split(m, f, s, 5, &o, MPI_COMM_SELF, &few, &n_few);
      same = n_few == 5;
      for (int64_t i = 0; same && i < 5; i++)
        same = strcmp(few[i], all[i]) == 0;
      TEST_EXPECT(same, "max_sentences 5 gave %lld different strings", (long long)n_few);
      decode_free_strings(few, n_few);
    } else {
      TEST_EXPECT(all == NULL, "non-root ranks should get no strings");
    }
    decode_free_strings(all, n_all);
    decode_free_strings(solo, n_solo);
  }

  /* translate: raw lines in, detokenized lines out, input order */
  const char *lines[7] = {"the lazy dog", "hello", "brown foxes jump over the quick world", "",
                          "world",        "a dog", "over the lazy brown fox and the world"};
  char inpath[400], outpath[400];
  snprintf(inpath, sizeof inpath, "%s/in.txt", dir);
  snprintf(outpath, sizeof outpath, "%s/out.txt", dir);
  if (rank == 0) {
    FILE *fp = fopen(inpath, "w");
    for (int i = 0; i < 7; i++)
      fprintf(fp, "%s\n", lines[i]);
    fclose(fp);
  }
  decode_opts o;
  decode_opts_default(&o);
  o.beam = 2;
  o.max_tokens = 20;
  FILE *in = rank == 0 ? fopen(inpath, "r") : NULL;
  FILE *out = rank == 0 ? fopen(outpath, "w") : NULL;
  int rc = decode_translate_file(m, f, h5path, &o, in, out, MPI_COMM_WORLD);
  TEST_EXPECT(rc == C_OK, "decode_translate_file failed");
  if (rank == 0) {
    fclose(in);
    fclose(out);
    int64_t *off;
    int32_t *ids;
    TEST_EXPECT(decode_encode_lines(h5path, lines, 7, &off, &ids, err, sizeof err) == C_OK, "%s",
                err);
    FILE *fp = fopen(outpath, "r");
    char line[1024], ref[1024];
    int n = 0;
    while (fgets(line, sizeof line, fp)) {
      line[strcspn(line, "\n")] = '\0';
      if (n < 7) {
        decode_one(m, f, ids + off[n], (int)(off[n + 1] - off[n]), &o, ref, sizeof ref);
        TEST_EXPECT(strcmp(line, ref) == 0, "translate line %d: \"%s\" != \"%s\"", n, line, ref);
      }
      n++;
    }
    fclose(fp);
    TEST_EXPECT(n == 7, "translate printed %d lines for 7", n);
    free(off);
    free(ids);
  }
  /* an error (no spm model in PATH) is reported on every rank */
  char *old = strdup(getenv("PATH") ? getenv("PATH") : "");
  setenv("PATH", "/nonexistent", 1);
  in = rank == 0 ? fopen(inpath, "r") : NULL;
  rc = decode_translate_file(m, f, h5path, &o, in, stdout, MPI_COMM_WORLD);
  if (in) fclose(in);
  setenv("PATH", old, 1);
  free(old);
  TEST_EXPECT(rc == C_ERR, "translate without spm_encode should fail on every rank");
  model_free(m);
  data_split_close(s);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &nranks);
  char err[256];
  CHECK(grid_create(&g, 1, 1, 1, 1, err, sizeof err) == C_OK, "grid: %s", err);
  double t0 = MPI_Wtime();

  test_incremental(1);
  test_incremental(0);
  test_greedy();
  test_beam_reference();
  test_beam_exhaustive();
  test_max_len();
  test_detok_pieces();
  if (make_dataset()) {
    data_file *f = data_open(h5path, MPI_COMM_WORLD, err, sizeof err);
    TEST_EXPECT(f != NULL, "data_open: %s", err);
    if (f) {
      test_spm(f);
      test_drivers(f);
      data_close(f);
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    run_quiet(cmd);
    printf("test_decode: %.2f s\n", MPI_Wtime() - t0);
  }
  for (int i = 0; i < spm_vocab; i++)
    free(spm_pieces[i]);
  free(spm_pieces);
  int rc = test_finish();
  grid_destroy(&g);
  MPI_Finalize();
  return rc;
}
