/* model_decode.c: incremental decoding on one rank: the encoder once per sentence, the
 * cross-attention keys and values cached per hypothesis, then one decoder position per
 * step over a self-attention cache (model_decoder_step gives log-probabilities), and
 * the reordering of the caches when beams move.
 *
 * Not here: the search that picks tokens (decode_search.c); decoding with tp > 1 or
 * pp > 1 (gather the model first with model_replicate).
 */
#include "model_internal.h"

#include <math.h>
#include <string.h>

#include "ops.h"

/* ---- incremental decoding ---------------------------------------------------------- */

struct model_decoder {
  int n_hyp, beam, S, max_steps, t;
  int n_layers, d;
  float **self_k, **self_v;   /* per decoder layer: (n_hyp, max_steps, d) caches */
  float **cross_k, **cross_v; /* per decoder layer: (n_hyp * S, d) */
  uint8_t *src_pad;           /* (n_hyp, S) */
  float *x, *y, *ln, *q, *o, *core, *h, *mean, *rstd; /* (n_hyp, d|F) and (n_hyp) */
  float *kt, *vt; /* this step's self-attention keys/values (n_hyp, d) */
  float *probs, *scratch;
  float *perm; /* reorder scratch: (n_hyp, max(max_steps*d, S*d)) */
};

model_decoder *model_decoder_start(model *m, const int32_t *src, int n_seq, int S, int beam,
                                   int max_steps) {
  const model_dims *D = &m->dims;
  CHECK(!m->g || (m->g->tp == 1 && m->g->pp == 1),
        "model_decoder_start: decode with model_replicate(m) when tp > 1 or pp > 1");
  int d = D->d, n_hyp = n_seq * beam;
  model_decoder *st = common_calloc(1, sizeof *st);
  st->n_hyp = n_hyp, st->beam = beam, st->S = S, st->max_steps = max_steps;
  st->n_layers = D->n_dec, st->d = d;
  int L = D->n_dec;
  st->self_k = common_calloc((size_t)L, sizeof(float *));
  st->self_v = common_calloc((size_t)L, sizeof(float *));
  st->cross_k = common_calloc((size_t)L, sizeof(float *));
  st->cross_v = common_calloc((size_t)L, sizeof(float *));
  size_t hd = (size_t)n_hyp * d;
  for (int l = 0; l < L; l++) {
    st->self_k[l] = common_malloc((size_t)max_steps * hd * sizeof(float));
    st->self_v[l] = common_malloc((size_t)max_steps * hd * sizeof(float));
    st->cross_k[l] = common_malloc((size_t)S * hd * sizeof(float));
    st->cross_v[l] = common_malloc((size_t)S * hd * sizeof(float));
  }
  st->src_pad = common_malloc((size_t)n_hyp * S);
  float **bufs[] = {&st->x, &st->y, &st->ln, &st->q, &st->o, &st->core, &st->kt, &st->vt};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
    *bufs[i] = common_malloc(hd * sizeof(float));
  st->h = common_malloc((size_t)n_hyp * D->ffn * sizeof(float));
  st->mean = common_malloc((size_t)n_hyp * sizeof(float));
  st->rstd = common_malloc((size_t)n_hyp * sizeof(float));
  int Tk = S > max_steps ? S : max_steps;
  st->probs = common_malloc((size_t)n_hyp * D->heads * Tk * sizeof(float));
  st->scratch = common_malloc((size_t)2 * Tk * sizeof(float));
  size_t per = (size_t)(max_steps > S ? max_steps : S) * d;
  st->perm = common_malloc((size_t)n_hyp * per * sizeof(float));

  /* encoder once per sentence, then keys/values of each cross-attention, copied per beam */
  int saved_train = m->train;
  m->train = 0;
  model_acts_prepare(m, n_seq, S, 1);
  model_encoder_fwd(m, src, n_seq, S);
  model_acts *a = m->acts;
  float *tmp = a->g_enc; /* (n_seq * S, d) scratch */
  for (int l = 0; l < L; l++) {
    const model_attn *A = &m->dec[l].cross;
    for (int which = 0; which < 2; which++) {
      model_linear_fwd(m, tmp, a->enc_out, which ? A->v_w : A->k_w, which ? A->v_b : A->k_b,
                       n_seq * S);
      float *dst = which ? st->cross_v[l] : st->cross_k[l];
      for (int i = 0; i < n_hyp; i++)
        memcpy(dst + (size_t)i * S * d, tmp + (size_t)(i / beam) * S * d,
               (size_t)S * d * sizeof(float));
    }
  }
  for (int i = 0; i < n_hyp; i++)
    for (int s = 0; s < S; s++)
      st->src_pad[(size_t)i * S + s] = src[(size_t)(i / beam) * S + s] == D->pad;
  m->train = saved_train;
  return st;
}

/* Pre-LN: core input = LN(x); Post-LN: x. Then x = x + core (pre) or LN(x + core) (post). */
static const float *dec_sub_in(model *m, model_decoder *st, const model_ln *ln, int n) {
  if (!m->dims.pre_ln) return st->x;
  ops_layernorm_forward(st->ln, st->mean, st->rstd, st->x, ln->w->w.data, ln->b->w.data, n,
                        m->dims.d, LN_EPS);
  return st->ln;
}

static void dec_sub_out(model *m, model_decoder *st, const model_ln *ln, int n) {
  int64_t nd = (int64_t)n * m->dims.d;
  if (m->dims.pre_ln) {
    ops_acc(st->x, st->core, nd);
  } else {
    ops_add(st->y, st->x, st->core, nd);
    ops_layernorm_forward(st->x, st->mean, st->rstd, st->y, ln->w->w.data, ln->b->w.data, n,
                          m->dims.d, LN_EPS);
  }
}

void model_decoder_step(model *m, model_decoder *st, const int32_t *tokens, float *logprobs) {
  const model_dims *D = &m->dims;
  int n = st->n_hyp, d = D->d, H = D->heads, dh = d / H, t = st->t;
  CHECK(t < st->max_steps, "model_decoder_step: more than %d steps", st->max_steps);
  int saved_train = m->train;
  m->train = 0;
  ops_embedding_forward(st->x, tokens, m->dec_embed->w.data, n, d, sqrtf((float)d));
  ops_positions_add(st->x, n, 1, d, t);
  for (int l = 0; l < D->n_dec; l++) {
    const model_layer *L = &m->dec[l];
    /* self-attention over the cache of positions 0..t */
    const float *in = dec_sub_in(m, st, &L->ln_self, n);
    model_linear_fwd(m, st->q, in, L->self.q_w, L->self.q_b, n);
    model_linear_fwd(m, st->kt, in, L->self.k_w, L->self.k_b, n);
    model_linear_fwd(m, st->vt, in, L->self.v_w, L->self.v_b, n);
    size_t stride = (size_t)st->max_steps * d;
    for (int i = 0; i < n; i++) {
      memcpy(st->self_k[l] + i * stride + (size_t)t * d, st->kt + (size_t)i * d, d * sizeof(float));
      memcpy(st->self_v[l] + i * stride + (size_t)t * d, st->vt + (size_t)i * d, d * sizeof(float));
      ops_attention_forward(st->o + (size_t)i * d, d, st->probs, st->q + (size_t)i * d, d,
                            st->self_k[l] + i * stride, st->self_v[l] + i * stride, d, NULL, 0, 1,
                            1, t + 1, H, dh, 0.0f, 0, 0, 0, H, st->scratch);
    }
    model_linear_fwd(m, st->core, st->o, L->self.o_w, L->self.o_b, n);
    dec_sub_out(m, st, &L->ln_self, n);
    /* cross-attention over the cached encoder keys/values */
    in = dec_sub_in(m, st, &L->ln_cross, n);
    model_linear_fwd(m, st->q, in, L->cross.q_w, L->cross.q_b, n);
    ops_attention_forward(st->o, d, st->probs, st->q, d, st->cross_k[l], st->cross_v[l], d,
                          st->src_pad, 0, n, 1, st->S, H, dh, 0.0f, 0, 0, 0, H, st->scratch);
    model_linear_fwd(m, st->core, st->o, L->cross.o_w, L->cross.o_b, n);
    dec_sub_out(m, st, &L->ln_cross, n);
    /* feed-forward */
    in = dec_sub_in(m, st, &L->ln_ffn, n);
    model_linear_fwd(m, st->h, in, L->fc1_w, L->fc1_b, n);
    ops_relu_forward(st->h, st->h, (int64_t)n * D->ffn);
    model_linear_fwd(m, st->core, st->h, L->fc2_w, L->fc2_b, n);
    dec_sub_out(m, st, &L->ln_ffn, n);
  }
  const float *out = st->x;
  if (D->pre_ln) {
    ops_layernorm_forward(st->ln, st->mean, st->rstd, st->x, m->dec_final.w->w.data,
                          m->dec_final.b->w.data, n, d, LN_EPS);
    out = st->ln;
  }
  model_linear_fwd(m, logprobs, out, m->out_proj, NULL, n);
  int V = D->vocab;
  for (int i = 0; i < n; i++) { /* log_softmax in place */
    float *row = logprobs + (size_t)i * V, mx = row[0];
    for (int j = 1; j < V; j++)
      mx = row[j] > mx ? row[j] : mx;
    float sum = 0.0f; /* expf in float: the decoder's hot loop (relative error ~1e-5) */
    for (int j = 0; j < V; j++)
      sum += expf(row[j] - mx);
    float lse = mx + logf(sum);
    for (int j = 0; j < V; j++)
      row[j] -= lse;
  }
  st->t++;
  m->train = saved_train;
}

/* Gather rows: buf[i] = old[from[i]] for n items of `len` floats each. */
static void permute_rows(float *data, float *tmp, const int *from, int n, size_t len) {
  for (int i = 0; i < n; i++)
    memcpy(tmp + (size_t)i * len, data + (size_t)from[i] * len, len * sizeof(float));
  memcpy(data, tmp, (size_t)n * len * sizeof(float));
}

void model_decoder_reorder(model_decoder *st, const int *from) {
  int n = st->n_hyp, cross = 0;
  for (int i = 0; i < n; i++) {
    CHECK(from[i] >= 0 && from[i] < n, "model_decoder_reorder: bad index %d", from[i]);
    if (from[i] / st->beam != i / st->beam) cross = 1;
  }
  /* self caches move with their hypothesis (only positions 0..t-1 matter) */
  for (int l = 0; l < st->n_layers; l++) {
    permute_rows(st->self_k[l], st->perm, from, n, (size_t)st->max_steps * st->d);
    permute_rows(st->self_v[l], st->perm, from, n, (size_t)st->max_steps * st->d);
  }
  /* cross caches and padding depend on the sentence only: move them only when a
   * hypothesis changes sentence (a caller compacting finished sentences) */
  if (!cross) return;
  for (int l = 0; l < st->n_layers; l++) {
    permute_rows(st->cross_k[l], st->perm, from, n, (size_t)st->S * st->d);
    permute_rows(st->cross_v[l], st->perm, from, n, (size_t)st->S * st->d);
  }
  uint8_t *pad = common_malloc((size_t)n * st->S);
  for (int i = 0; i < n; i++)
    memcpy(pad + (size_t)i * st->S, st->src_pad + (size_t)from[i] * st->S, (size_t)st->S);
  memcpy(st->src_pad, pad, (size_t)n * st->S);
  free(pad);
}

void model_decoder_free(model_decoder *st) {
  if (!st) return;
  for (int l = 0; l < st->n_layers; l++) {
    free(st->self_k[l]);
    free(st->self_v[l]);
    free(st->cross_k[l]);
    free(st->cross_v[l]);
  }
  free(st->self_k);
  free(st->self_v);
  free(st->cross_k);
  free(st->cross_v);
  float *bufs[] = {st->x,  st->y, st->ln,   st->q,    st->o,     st->core,    st->kt,
                   st->vt, st->h, st->mean, st->rstd, st->probs, st->scratch, st->perm};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
    free(bufs[i]);
  free(st->src_pad);
  free(st);
}
