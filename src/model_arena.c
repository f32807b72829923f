/* model_arena.c: the activation arena of the model (docs/MODEL.md): one allocation per
 * arena, laid out for a batch shape (only this pipeline stage's layers), grown only, so
 * after the first few steps no step allocates; one arena per micro-batch in flight
 * (model_use_slot); and this process row's token rows of a batch (model_local_rows).
 *
 * Not here: what the arena holds is computed by model_blocks.c, model_stage.c and
 * model_heads.c; the structs are in model_internal.h.
 */
#include "model_internal.h"

#include <string.h>

#include "ops.h"

static float *take(float *base, size_t *cursor, size_t n) {
  float *p = base ? base + *cursor : NULL;
  *cursor += (n + 15) & ~(size_t)15;
  return p;
}

/* A dropout mask of n rows of cols elements (ops_dropout_row_bytes), carved from the floats. */
static uint8_t *take_mask(float *base, size_t *cursor, size_t n, int cols) {
  size_t bytes = n * (size_t)ops_dropout_row_bytes(cols);
  return (uint8_t *)take(base, cursor, (bytes + sizeof(float) - 1) / sizeof(float));
}

/* Lay the arena out for a (B, S, T) batch; returns the floats needed (base NULL: size only). */
static size_t acts_layout(model *m, model_acts *a, int B, int S, int T, float *base) {
  const model_dims *D = &m->dims;
  size_t c = 0, d = (size_t)m->dl, F = (size_t)m->fl, H = (size_t)m->hl;
  size_t nS = (size_t)B * S, nT = (size_t)B * T, nmax = nS > nT ? nS : nT;
  size_t Tmax = S > T ? S : T;
  /* only this stage's layers: streams [2 e0, 2 e1] and [3 d0, 3 d1] */
  int has_enc = m->enc_l1 > m->enc_l0, has_dec = m->dec_l1 > m->dec_l0,
      last = m->stage == m->n_stages - 1;
  int enc_last = has_enc && m->enc_l1 == D->n_enc;
  /* F's output before the residual dropout is read only by the forward, right after it is
   * computed: one buffer for every sublayer, which stays in cache (a buffer per sublayer
   * made each bias copy into it a write to cold memory). */
  float *core = take(base, &c, nmax * d);
  for (int i = 0; i <= 2 * D->n_enc; i++)
    a->enc_s[i] =
        has_enc && i >= 2 * m->enc_l0 && i <= 2 * m->enc_l1 ? take(base, &c, nS * d) : NULL;
  for (int i = 0; i <= 3 * D->n_dec; i++)
    a->dec_s[i] =
        has_dec && i >= 3 * m->dec_l0 && i <= 3 * m->dec_l1 ? take(base, &c, nT * d) : NULL;
  for (int l = m->enc_l0; l < m->enc_l1; l++)
    for (int j = 0; j < 2; j++) {
      sub_acts *s = &a->enc_sub[2 * l + j];
      memset(s, 0, sizeof *s);
      s->ln_out = D->pre_ln ? take(base, &c, nS * d) : NULL;
      s->resid = D->pre_ln ? NULL : take(base, &c, nS * d);
      s->mean = take(base, &c, nS);
      s->rstd = take(base, &c, nS);
      s->core = core;
      s->drop = take_mask(base, &c, nS, m->dl);
      if (j == 0) {
        s->q = take(base, &c, nS * d);
        s->k = take(base, &c, nS * d);
        s->v = take(base, &c, nS * d);
        s->o = take(base, &c, nS * d);
        s->probs = take(base, &c, (size_t)B * H * S * S);
      } else {
        s->h = take(base, &c, nS * F);
        s->hd = D->act_dropout > 0 ? take(base, &c, nS * F) : s->h;
      }
    }
  for (int l = m->dec_l0; l < m->dec_l1; l++)
    for (int j = 0; j < 3; j++) {
      sub_acts *s = &a->dec_sub[3 * l + j];
      memset(s, 0, sizeof *s);
      s->ln_out = D->pre_ln ? take(base, &c, nT * d) : NULL;
      s->resid = D->pre_ln ? NULL : take(base, &c, nT * d);
      s->mean = take(base, &c, nT);
      s->rstd = take(base, &c, nT);
      s->core = core;
      s->drop = take_mask(base, &c, nT, m->dl);
      if (j < 2) {
        size_t nk = j == 0 ? nT : nS, Tk = j == 0 ? (size_t)T : (size_t)S;
        s->q = take(base, &c, nT * d);
        s->k = take(base, &c, nk * d);
        s->v = take(base, &c, nk * d);
        s->o = take(base, &c, nT * d);
        s->probs = take(base, &c, (size_t)B * H * T * Tk);
      } else {
        s->h = take(base, &c, nT * F);
        s->hd = D->act_dropout > 0 ? take(base, &c, nT * F) : s->h;
      }
    }
  /* the encoder output: computed by the stage of the last encoder layer, received by the
   * decoder's stages (Post-LN: the last stream itself where this stage computes it) */
  a->enc_out = D->pre_ln || !enc_last ? take(base, &c, nS * d) : a->enc_s[2 * D->n_enc];
  a->enc_mean = take(base, &c, nS);
  a->enc_rstd = take(base, &c, nS);
  a->dec_out = !(has_dec && last) ? NULL
               : D->pre_ln        ? take(base, &c, nT * d)
                                  : a->dec_s[3 * D->n_dec];
  a->dec_mean = take(base, &c, nT);
  a->dec_rstd = take(base, &c, nT);
  a->logits = take(base, &c, last ? nT * (size_t)m->vl : 0);
  a->gs_a = take(base, &c, nmax * d);
  a->gs_b = take(base, &c, nmax * d);
  a->g_core = take(base, &c, nmax * d);
  a->g_ln = take(base, &c, nmax * d);
  a->g_o = take(base, &c, nmax * d);
  a->g_q = take(base, &c, nmax * d);
  a->g_k = take(base, &c, nmax * d);
  a->g_v = take(base, &c, nmax * d);
  a->g_h = take(base, &c, nmax * F);
  a->g_enc = take(base, &c, nS * d);
  a->scratch = take(base, &c, 2 * Tmax * Tmax);
  a->ln_scratch = take(base, &c, 2 * nmax);
  a->xent_scratch = (double *)take(base, &c, 8 * nmax);
  int pr = m->g ? m->g->pr : 1;
  a->table = pr > 1 ? take(base, &c, (size_t)D->vocab * d) : NULL;
  a->vec_saved = pr > 1 ? take(base, &c, (size_t)(m->n_floats - m->vec_lo)) : NULL;
  return c;
}

/* Make the arena fit this process row's share of a batch of B sequences (B, S, T): the
 * batch is padded to pr * Bl sequences and process row p takes [p*Bl, (p+1)*Bl). Sets
 * a->B = Bl and a->b0. Grows only, so steady-state steps do not allocate. */
void model_acts_prepare(model *m, int B_global, int S, int T) {
  model_acts *a = m->acts;
  int pr = grid_pr(m), B = (B_global + pr - 1) / pr;
  a->b0 = (int64_t)(m->g ? m->g->prow : 0) * B;
  size_t need = acts_layout(m, a, B, S, T, NULL);
  if (need > a->cap) {
    free(a->mem);
    size_t cap = need + need / 4;
    a->mem = common_malloc(cap * sizeof(float));
    a->cap = cap;
  }
  acts_layout(m, a, B, S, T, a->mem);
  a->B = B, a->S = S, a->T = T;
  if ((size_t)B * S > a->src_pad_cap) {
    free(a->src_pad);
    a->src_pad_cap = (size_t)B * S * 2;
    a->src_pad = common_malloc(a->src_pad_cap);
  }
  size_t L = (size_t)(S > T ? S : T);
  int copy = pr > 1 || (m->g && m->g->pp > 1); /* pp > 1: the backward runs later */
  if (copy && 4 * (size_t)B * L > a->tok_cap) {
    free(a->tok);
    a->tok_cap = 4 * (size_t)B * L;
    a->tok = common_malloc(a->tok_cap * sizeof(int32_t));
  }
}

/* This process row's rows of x (B_global, L): rows [b0, b0 + a->B) (pad rows past the
 * batch filled with `fill`), copied into token slot `slot` (0..3) when pr > 1. */
const int32_t *model_local_rows(model *m, int slot, const int32_t *x, int B_global, int L,
                                int32_t fill) {
  model_acts *a = m->acts;
  if (grid_pr(m) == 1 && !(m->g && m->g->pp > 1)) return x;
  int32_t *dst = a->tok + (size_t)slot * (a->tok_cap / 4);
  for (int b = 0; b < a->B; b++) {
    int64_t gb = a->b0 + b;
    for (int t = 0; t < L; t++)
      dst[(size_t)b * L + t] = gb < B_global ? x[gb * L + t] : fill;
  }
  return dst;
}

static model_acts *acts_new(const model *m) {
  const model_dims *D = &m->dims;
  model_acts *a = common_calloc(1, sizeof(model_acts));
  a->enc_s = common_calloc((size_t)(2 * D->n_enc + 1), sizeof(float *));
  a->dec_s = common_calloc((size_t)(3 * D->n_dec + 1), sizeof(float *));
  a->enc_sub = common_calloc((size_t)(2 * D->n_enc), sizeof(sub_acts));
  a->dec_sub = common_calloc((size_t)(3 * D->n_dec), sizeof(sub_acts));
  return a;
}

void model_use_slot(model *m, int slot) {
  CHECK(slot >= 0, "model_use_slot: slot %d", slot);
  if (slot >= m->n_slots) {
    m->slots = realloc(m->slots, (size_t)(slot + 1) * sizeof *m->slots);
    CHECK(m->slots, "out of memory");
    for (int i = m->n_slots; i <= slot; i++)
      m->slots[i] = acts_new(m);
    m->n_slots = slot + 1;
  }
  m->acts = m->slots[slot];
}

void model_acts_free(model *m) {
  for (int i = 0; i < m->n_slots; i++) {
    model_acts *a = m->slots[i];
    free(a->mem);
    free(a->src_pad);
    free(a->tok);
    free(a->head);
    free(a->head_idx);
    free(a->enc_s);
    free(a->dec_s);
    free(a->enc_sub);
    free(a->dec_sub);
    free(a);
  }
  free(m->slots);
  m->slots = NULL;
  m->n_slots = 0;
  m->acts = NULL;
}
