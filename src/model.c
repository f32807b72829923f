/* model.c: the encoder-decoder Transformer of docs/MODEL.md, forward and backward by
 * hand on local blocks, plus incremental decoding, and the encoder-only classifier and
 * masked-LM heads (the same encoder; a head on its output instead of a decoder).
 *
 * Structure. A layer is a list of sublayers (attention or FFN), each wrapped the same
 * way: Pre-LN `s' = s + D(F(LN(s)))`, Post-LN `s' = LN(s + D(F(s)))`. The residual
 * stream s_k is saved between sublayers; a sublayer saves what its backward needs (LN
 * statistics, q/k/v, attention probabilities, FFN hidden). Linear layers go through
 * dmat_gemm (one cblas_sgemm on the 1x1 grid). Dropout masks are regenerated in
 * backward from counter-based keys, so nothing stores a mask.
 *
 * Tensor parallelism (pr x pc grid). Every activation is a dmat whose process row holds
 * whole sequences (the batch is padded with all-pad sequences to a multiple of pr, so
 * the row blocks fall on sequence boundaries) and whose process column holds a block of
 * the features, which is whole heads. Hence: linear layers are p?gemm (dmat_gemm);
 * attention, ReLU, dropout and the residual adds are local; LayerNorm and the
 * cross-entropy all-reduce row statistics over the process row (tpops); the embedding
 * lookup gathers the table's rows over the process column and its gradient is
 * reduce-scattered back; vectors (biases, LN gains) sit on every process row and their
 * gradients are summed over the process column once per backward. Masks and initial
 * values are functions of global indices, so any grid computes what one rank computes.
 *
 * Not here: the optimizer (optim.c), batching (data.c), beam search (decode.c).
 */
#include "model.h"

#include <math.h>
#include <string.h>

#include "ops.h"
#include "tpops.h"

#define LN_EPS 1e-5f

/* ---- activation arena ------------------------------------------------------------ */

typedef struct sub_acts {
  float *ln_out;       /* pre: LN(s_in) (n,d) */
  float *resid;        /* post: s_in + D(F(s_in)) (n,d) */
  float *mean, *rstd;  /* LN statistics (n) */
  float *q, *k, *v;    /* attention: (n,d), (nk,d), (nk,d) */
  float *probs;        /* attention: (B,H,Tq,Tk) */
  float *o;            /* attention: heads concatenated (n,d) */
  float *h, *hd;       /* ffn: relu(fc1) (n,F), after act dropout (n,F) (== h if p = 0) */
  float *core;         /* F's output (n,d) */
} sub_acts;

typedef struct model_acts {
  size_t cap;          /* floats allocated */
  float *mem;
  int B, S, T;         /* local batch: B sequences of this process row */
  int64_t b0;          /* global index of its first sequence */
  float **enc_s, **dec_s;   /* residual streams: 2*n_enc+1, 3*n_dec+1 entries */
  sub_acts *enc_sub, *dec_sub;
  float *enc_out, *enc_mean, *enc_rstd; /* Pre-LN final LN (else enc_out = last stream) */
  float *dec_out, *dec_mean, *dec_rstd;
  float *logits;       /* (B*T, V), overwritten by dlogits */
  /* backward scratch */
  float *gs_a, *gs_b;  /* stream gradients (max(nS,nT), d) */
  float *g_core, *g_ln, *g_resid, *g_o, *g_q, *g_k, *g_v; /* (n, d) each (g_k, g_v: nk) */
  float *g_h;          /* (n, F) */
  float *g_enc;        /* (B*S, d) */
  float *scratch;      /* attention scratch: 2 * Tmax * Tmax */
  float *ln_scratch;   /* tpops_layernorm_backward: 2 * max(nS, nT) */
  double *xent_scratch;/* tpops_xent: 4 * nT */
  float *table;        /* pr > 1: an embedding table's rows gathered (V, dl), or its gradient */
  float *vec_saved;    /* pr > 1: vector gradients from before this backward */
  int32_t *tok;        /* pr > 1: this process row's token rows, 4 slots of (B, max(S,T)) */
  size_t tok_cap;
  uint8_t *src_pad;    /* (B, S) */
  size_t src_pad_cap;
  float *head;         /* encoder-only heads' scratch (head_prepare), grown only */
  size_t head_cap;
  int32_t *head_idx;   /* (rows) selected positions / targets of the MLM head */
  size_t head_idx_cap;
  /* what the backward of a staged forward needs again (model_stage_forward) */
  const int32_t *src, *tgt_in; /* this process row's token rows */
  uint64_t key;        /* dropout key of the forward */
  int train;
  int mlm_n, mlm_n_mine; /* masked-LM head: rows it ran on, of which this process row's */
} model_acts;

static float *take(float *base, size_t *cursor, size_t n) {
  float *p = base ? base + *cursor : NULL;
  *cursor += (n + 15) & ~(size_t)15;
  return p;
}

/* Lay the arena out for a (B, S, T) batch; returns the floats needed (base NULL: size only). */
static size_t acts_layout(model *m, model_acts *a, int B, int S, int T, float *base) {
  const model_dims *D = &m->dims;
  size_t c = 0, d = (size_t)m->dl, F = (size_t)m->fl, H = (size_t)m->hl;
  size_t nS = (size_t)B * S, nT = (size_t)B * T, nmax = nS > nT ? nS : nT;
  size_t Tmax = S > T ? S : T;
  /* only this stage's layers: streams [2 e0, 2 e1] and [3 d0, 3 d1] */
  int has_enc = m->enc_l1 > m->enc_l0, has_dec = m->dec_l1 > m->dec_l0, last = m->stage == m->n_stages - 1;
  int enc_last = has_enc && m->enc_l1 == D->n_enc;
  for (int i = 0; i <= 2 * D->n_enc; i++)
    a->enc_s[i] = has_enc && i >= 2 * m->enc_l0 && i <= 2 * m->enc_l1 ? take(base, &c, nS * d) : NULL;
  for (int i = 0; i <= 3 * D->n_dec; i++)
    a->dec_s[i] = has_dec && i >= 3 * m->dec_l0 && i <= 3 * m->dec_l1 ? take(base, &c, nT * d) : NULL;
  for (int l = m->enc_l0; l < m->enc_l1; l++)
    for (int j = 0; j < 2; j++) {
      sub_acts *s = &a->enc_sub[2 * l + j];
      memset(s, 0, sizeof *s);
      s->ln_out = D->pre_ln ? take(base, &c, nS * d) : NULL;
      s->resid = D->pre_ln ? NULL : take(base, &c, nS * d);
      s->mean = take(base, &c, nS);
      s->rstd = take(base, &c, nS);
      s->core = take(base, &c, nS * d);
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
      s->core = take(base, &c, nT * d);
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
  a->dec_out = !(has_dec && last) ? NULL : D->pre_ln ? take(base, &c, nT * d) : a->dec_s[3 * D->n_dec];
  a->dec_mean = take(base, &c, nT);
  a->dec_rstd = take(base, &c, nT);
  a->logits = take(base, &c, last ? nT * (size_t)m->vl : 0);
  a->gs_a = take(base, &c, nmax * d);
  a->gs_b = take(base, &c, nmax * d);
  a->g_core = take(base, &c, nmax * d);
  a->g_ln = take(base, &c, nmax * d);
  a->g_resid = take(base, &c, nmax * d);
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

static int grid_pr(const model *m) { return m->g ? m->g->pr : 1; }
static int grid_pc(const model *m) { return m->g ? m->g->pc : 1; }

/* Make the arena fit this process row's share of a batch of B sequences (B, S, T): the
 * batch is padded to pr * Bl sequences and process row p takes [p*Bl, (p+1)*Bl). Sets
 * a->B = Bl and a->b0. Grows only, so steady-state steps do not allocate. */
static void acts_prepare(model *m, int B_global, int S, int T) {
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
static const int32_t *local_rows(model *m, int slot, const int32_t *x, int B_global, int L,
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

/* ---- registry and initialization ------------------------------------------------- */

void model_dims_from_config(model_dims *d, const config *c, int vocab, int pad, int bos, int eos) {
  memset(d, 0, sizeof *d);
  d->arch = !strcmp(c->arch, "encoder_classifier") ? MODEL_ARCH_CLASSIFIER
            : !strcmp(c->arch, "encoder_mlm")      ? MODEL_ARCH_MLM
                                                   : MODEL_ARCH_TRANSLATION;
  d->n_enc = (int)c->enc_layers;
  d->n_dec = d->arch == MODEL_ARCH_TRANSLATION ? (int)c->dec_layers : 0;
  d->d = (int)c->d_model;
  d->ffn = (int)c->ffn_dim;
  d->heads = (int)c->heads;
  d->vocab = vocab;
  d->pre_ln = strcmp(c->norm, "pre") == 0;
  d->pad = pad, d->bos = bos, d->eos = eos;
  d->dropout = (float)c->dropout;
  d->attn_dropout = (float)c->attn_dropout;
  d->act_dropout = (float)c->act_dropout;
  d->label_smoothing = (float)c->label_smoothing;
  d->share = !strcmp(c->share_embeddings, "all") ? 2 : !strcmp(c->share_embeddings, "decoder_io") ? 1 : 0;
}

typedef struct reg_builder {
  model *m;
  int cap;
  int own; /* the parameters registered next belong to this pipeline stage */
} reg_builder;

static model_param *reg_add(reg_builder *rb, const char *name, int64_t rows, int64_t cols,
                            int is_vector, int init, float std) {
  model *m = rb->m;
  CHECK(m->n_params < rb->cap, "parameter registry overflow");
  model_param *p = &m->params[m->n_params++];
  memset(p, 0, sizeof *p);
  snprintf(p->name, sizeof p->name, "%s", name);
  dmat_init(&p->w, m->g, rows, cols, NULL);
  if (is_vector) { /* one row, held by every process row */
    CHECK(rows == 1, "reg_add: vector %s has %lld rows", name, (long long)rows);
    p->w.row0 = 0;
    p->w.rows_local = 1;
  }
  p->pp_owned = rb->own;
  p->pp_owners = 1;
  if (!rb->own) { /* another stage's: an empty block keeps the registry the same */
    p->w.rows_local = p->w.cols_local = 0;
    p->w.ld = 1;
  }
  p->g = p->w;
  p->is_vector = is_vector;
  p->init = init;
  p->init_std = std;
  return p;
}

/* dst = a + b, checked (parameter names are short; this keeps the compiler's
 * truncation analysis quiet without snprintf). */
static void join(char *dst, size_t cap, const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  CHECK(la + lb < cap, "parameter name too long: %s%s", a, b);
  memcpy(dst, a, la);
  memcpy(dst + la, b, lb + 1);
}

static model_param *reg_linear(reg_builder *rb, const char *prefix, int64_t out, int64_t in,
                               model_param **bias) {
  char name[112];
  join(name, sizeof name, prefix, ".weight");
  model_param *w = reg_add(rb, name, out, in, 0, MODEL_INIT_NORMAL, sqrtf(2.0f / (float)(in + out)));
  join(name, sizeof name, prefix, ".bias");
  *bias = reg_add(rb, name, 1, out, 1, MODEL_INIT_ZERO, 0);
  return w;
}

static model_ln reg_ln(reg_builder *rb, const char *prefix, int64_t d) {
  char name[112];
  model_ln ln;
  join(name, sizeof name, prefix, ".weight");
  ln.w = reg_add(rb, name, 1, d, 1, MODEL_INIT_ONE, 0);
  join(name, sizeof name, prefix, ".bias");
  ln.b = reg_add(rb, name, 1, d, 1, MODEL_INIT_ZERO, 0);
  return ln;
}

static model_attn reg_attn(reg_builder *rb, const char *prefix, int64_t d) {
  char name[112];
  model_attn a;
  join(name, sizeof name, prefix, ".q_proj");
  a.q_w = reg_linear(rb, name, d, d, &a.q_b);
  join(name, sizeof name, prefix, ".k_proj");
  a.k_w = reg_linear(rb, name, d, d, &a.k_b);
  join(name, sizeof name, prefix, ".v_proj");
  a.v_w = reg_linear(rb, name, d, d, &a.v_b);
  join(name, sizeof name, prefix, ".out_proj");
  a.o_w = reg_linear(rb, name, d, d, &a.o_b);
  return a;
}

static void reg_layer(reg_builder *rb, model_layer *L, const char *side, int i, int decoder,
                      int64_t d, int64_t F) {
  char pre[96], name[112];
  snprintf(pre, sizeof pre, "%s.layers.%d", side, i);
  join(name, sizeof name, pre, ".self_attn");
  L->self = reg_attn(rb, name, d);
  join(name, sizeof name, pre, ".self_attn_layer_norm");
  L->ln_self = reg_ln(rb, name, d);
  if (decoder) {
    join(name, sizeof name, pre, ".encoder_attn");
    L->cross = reg_attn(rb, name, d);
    join(name, sizeof name, pre, ".encoder_attn_layer_norm");
    L->ln_cross = reg_ln(rb, name, d);
  }
  join(name, sizeof name, pre, ".fc1");
  L->fc1_w = reg_linear(rb, name, F, d, &L->fc1_b);
  join(name, sizeof name, pre, ".fc2");
  L->fc2_w = reg_linear(rb, name, d, F, &L->fc2_b);
  join(name, sizeof name, pre, ".final_layer_norm");
  L->ln_ffn = reg_ln(rb, name, d);
}

static void param_init(model *m, model_param *p, int index, uint64_t seed) {
  float *w = p->w.data;
  uint64_t key = ops_hash_key(seed, 0x494e4954u /* "INIT" */, (uint64_t)index, 0);
  for (int i = 0; i < p->w.rows_local; i++)
    for (int j = 0; j < p->w.cols_local; j++) {
      int64_t gi = p->w.row0 + i, gj = p->w.col0 + j;
      float v = 0.0f;
      if (p->init == MODEL_INIT_ONE) v = 1.0f;
      else if (p->init == MODEL_INIT_NORMAL || p->init == MODEL_INIT_EMBED)
        v = p->init_std * ops_hash_normal(key, (uint64_t)(gi * p->w.cols + gj));
      if (p->init == MODEL_INIT_EMBED && gi == m->dims.pad) v = 0.0f;
      w[(size_t)i * p->w.ld + j] = v;
    }
}

int model_stage_plan(const model_dims *D, int pp, int *first) {
  int nE = D->n_enc, n = D->n_enc + D->n_dec;
  if (pp < 1 || pp > n) return C_ERR;
  double d = D->d, F = D->ffn;
  double *cost = common_calloc((size_t)n, sizeof(double)), *pre = common_calloc((size_t)n + 1, sizeof(double));
  for (int l = 0; l < n; l++) cost[l] = l < nE ? 4 * d * d + 2 * d * F : 8 * d * d + 2 * d * F;
  cost[0] += d;                            /* encoder embedding */
  if (D->n_dec > 0) cost[nE] += d;         /* decoder embedding */
  cost[n - 1] += (double)D->vocab * d;     /* output projection (or the MLM head) */
  for (int l = 0; l < n; l++) pre[l + 1] = pre[l] + cost[l];
  /* best[k][i]: the smallest largest-stage cost of the first i layers in k stages */
  double *best = common_calloc((size_t)(pp + 1) * (n + 1), sizeof(double));
  int *cut = common_calloc((size_t)(pp + 1) * (n + 1), sizeof(int));
#define BEST(k, i) best[(size_t)(k) * (n + 1) + (i)]
#define CUT(k, i) cut[(size_t)(k) * (n + 1) + (i)]
  for (int i = 0; i <= n; i++) BEST(1, i) = pre[i], CUT(1, i) = 0;
  for (int k = 2; k <= pp; k++)
    for (int i = k; i <= n; i++) {
      BEST(k, i) = -1;
      for (int j = k - 1; j < i; j++) { /* stage k holds layers [j, i) */
        double v = BEST(k - 1, j) > pre[i] - pre[j] ? BEST(k - 1, j) : pre[i] - pre[j];
        if (BEST(k, i) < 0 || v < BEST(k, i)) BEST(k, i) = v, CUT(k, i) = j;
      }
    }
  first[pp] = n;
  for (int k = pp; k >= 1; k--) first[k - 1] = CUT(k, first[k]);
#undef BEST
#undef CUT
  free(best);
  free(cut);
  free(cost);
  free(pre);
  return C_OK;
}

/* Record which stages hold a (possibly tied) parameter: stages st[0..n) (repeats allowed). */
static void set_owners(model_param *p, int stage, const int *st, int n) {
  int distinct = 0, lowest = st[0], mine = 0;
  for (int i = 0; i < n; i++) {
    int seen = 0;
    for (int j = 0; j < i; j++) seen |= st[j] == st[i];
    distinct += !seen;
    lowest = st[i] < lowest ? st[i] : lowest;
    mine |= st[i] == stage;
  }
  p->pp_owners = distinct;
  p->pp_copy = mine && stage != lowest;
}

model *model_create(const model_dims *dims, const grid *g, uint64_t seed) {
  model *m = common_calloc(1, sizeof *m);
  m->dims = *dims;
  m->g = g;
  if (m->dims.arch != MODEL_ARCH_TRANSLATION) m->dims.n_dec = 0;
  CHECK(m->dims.arch != MODEL_ARCH_CLASSIFIER || m->dims.n_classes >= 2,
        "model_create: a classifier needs n_classes >= 2 (got %d)", m->dims.n_classes);
  const model_dims *D = &m->dims;
  int64_t d = D->d, F = D->ffn, V = D->vocab;
  int pr = grid_pr(m), pc = grid_pc(m), pcol = g ? g->pcol : 0;
  CHECK(D->heads % pc == 0 && (pr == 1 || g->tp_col != MPI_COMM_NULL),
        "model_create: %d process columns do not divide heads=%d", pc, D->heads);
  m->dl = common_int(dmat_block_count(d, pcol, pc)), m->d0 = common_int(dmat_block_start(d, pcol, pc));
  m->hl = D->heads / pc, m->h0 = pcol * m->hl;
  m->fl = common_int(dmat_block_count(F, pcol, pc)), m->f0 = common_int(dmat_block_start(F, pcol, pc));
  m->vl = common_int(dmat_block_count(V, pcol, pc)), m->v0 = common_int(dmat_block_start(V, pcol, pc));
  m->cl = common_int(dmat_block_count(D->n_classes, pcol, pc));
  m->c0 = common_int(dmat_block_start(D->n_classes, pcol, pc));
  CHECK(m->dl == m->hl * (D->d / D->heads), "model_create: the feature block is not whole heads");
  int cap = 8 + D->n_enc * 20 + D->n_dec * 32;
  m->params = common_calloc((size_t)cap, sizeof *m->params);
  m->enc = common_calloc((size_t)D->n_enc, sizeof *m->enc);
  m->dec = common_calloc((size_t)D->n_dec, sizeof *m->dec);
  /* pipeline stage: which layers (and so which parameters) this rank holds */
  int pp = g ? g->pp : 1, stage = g ? g->stage : 0, nE = D->n_enc;
  int *first = common_calloc((size_t)pp + 1, sizeof(int));
  CHECK(model_stage_plan(D, pp, first) == C_OK, "model_create: pp=%d exceeds the %d layers", pp,
        D->n_enc + D->n_dec);
#define CLAMP(x, hi) ((x) < 0 ? 0 : (x) > (hi) ? (hi) : (x))
  m->stage = stage, m->n_stages = pp;
  m->enc_l0 = CLAMP(first[stage], nE), m->enc_l1 = CLAMP(first[stage + 1], nE);
  m->dec_l0 = CLAMP(first[stage] - nE, D->n_dec), m->dec_l1 = CLAMP(first[stage + 1] - nE, D->n_dec);
#undef CLAMP
  int st_dec0 = 0, st_enc_last = 0; /* the stages of decoder layer 0 and encoder layer nE-1 */
  for (int k = 0; k < pp; k++) {
    if (first[k] <= nE && nE < first[k + 1]) st_dec0 = k;
    if (first[k] <= nE - 1 && nE - 1 < first[k + 1]) st_enc_last = k;
  }
  free(first);
  int last = pp - 1;
  reg_builder rb = {m, cap, stage == 0};
  float estd = 1.0f / sqrtf((float)d);
  int share = D->arch == MODEL_ARCH_TRANSLATION ? D->share : 0;
  int mlm = D->arch == MODEL_ARCH_MLM; /* its output projection is the encoder embedding */
  if (share == 2) rb.own = stage == 0 || stage == st_dec0 || stage == last;
  if (mlm) rb.own = stage == 0 || stage == last;
  m->enc_embed = reg_add(&rb, "encoder.embed_tokens.weight", V, d, 0, MODEL_INIT_EMBED, estd);
  int st_all[3] = {0, st_dec0, last};
  int st_mlm[2] = {0, last};
  if (share == 2) set_owners(m->enc_embed, stage, st_all, 3);
  if (mlm) set_owners(m->enc_embed, stage, st_mlm, 2);
  for (int i = 0; i < D->n_enc; i++) {
    rb.own = i >= m->enc_l0 && i < m->enc_l1;
    reg_layer(&rb, &m->enc[i], "encoder", i, 0, d, F);
  }
  rb.own = stage == st_enc_last;
  if (D->pre_ln) m->enc_final = reg_ln(&rb, "encoder.layer_norm", d);
  if (D->arch == MODEL_ARCH_TRANSLATION) {
    rb.own = share == 1 ? stage == st_dec0 || stage == last : stage == st_dec0;
    m->dec_embed = share == 2 ? m->enc_embed
                              : reg_add(&rb, "decoder.embed_tokens.weight", V, d, 0,
                                        MODEL_INIT_EMBED, estd);
    int st_io[2] = {st_dec0, last};
    if (share == 1) set_owners(m->dec_embed, stage, st_io, 2);
    for (int i = 0; i < D->n_dec; i++) {
      rb.own = i >= m->dec_l0 && i < m->dec_l1;
      reg_layer(&rb, &m->dec[i], "decoder", i, 1, d, F);
    }
    rb.own = stage == last;
    if (D->pre_ln) m->dec_final = reg_ln(&rb, "decoder.layer_norm", d);
    m->out_proj = share ? m->dec_embed
                        : reg_add(&rb, "decoder.output_projection.weight", V, d, 0,
                                  MODEL_INIT_EMBED, estd);
  } else if (D->arch == MODEL_ARCH_CLASSIFIER) {
    m->cls_dense_w = reg_linear(&rb, "classification_heads.sentence_classification_head.dense",
                                d, d, &m->cls_dense_b);
    m->cls_out_w = reg_linear(&rb, "classification_heads.sentence_classification_head.out_proj",
                              D->n_classes, d, &m->cls_out_b);
  } else {
    m->out_proj = m->enc_embed; /* masked-LM output tied to the embedding, no bias */
  }
  /* flat layout: the tied copies of later pipeline stages (norm_lo), the split
   * matrices, then the replicated vectors (vec_lo..n_floats) */
  for (int pass = 0; pass < 3; pass++) {
    if (pass == 1) m->norm_lo = m->n_floats;
    if (pass == 2) m->vec_lo = m->n_floats;
    for (int i = 0; i < m->n_params; i++) {
      model_param *p = &m->params[i];
      int which = p->pp_copy ? 0 : p->is_vector ? 2 : 1;
      if (which != pass) continue;
      p->offset = m->n_floats;
      m->n_floats += (dmat_local_size(&p->w) + 15) & ~(int64_t)15;
    }
  }
  m->param_mem = common_calloc((size_t)m->n_floats, sizeof(float));
  m->grad_mem = common_calloc((size_t)m->n_floats, sizeof(float));
  for (int i = 0; i < m->n_params; i++) {
    model_param *p = &m->params[i];
    p->w.data = m->param_mem + p->offset;
    p->g.data = m->grad_mem + p->offset;
    param_init(m, p, i, seed);
  }
  model_use_slot(m, 0);
  return m;
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
    for (int i = m->n_slots; i <= slot; i++) m->slots[i] = acts_new(m);
    m->n_slots = slot + 1;
  }
  m->acts = m->slots[slot];
}

void model_free(model *m) {
  if (!m) return;
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
  free(m->param_mem);
  free(m->grad_mem);
  free(m->params);
  free(m->enc);
  free(m->dec);
  free(m);
}

model_param *model_find(model *m, const char *name) {
  for (int i = 0; i < m->n_params; i++)
    if (strcmp(m->params[i].name, name) == 0) return &m->params[i];
  return NULL;
}

void model_set_mode(model *m, int train, uint64_t key) {
  m->train = train;
  m->dropout_key = key;
}

void model_zero_grad(model *m) { memset(m->grad_mem, 0, (size_t)m->n_floats * sizeof(float)); }

/* ---- building blocks ------------------------------------------------------------- */

/* y(n,out) = x(n,in) W^T + b through dmat_gemm (cblas on the 1x1 grid). n is this
 * process row's row count: the global activation has n * pr rows. */
static void linear_fwd(model *m, float *y, const float *x, const model_param *w,
                       const model_param *b, int n) {
  int64_t out = w->w.rows, in = w->w.cols, rows = (int64_t)n * grid_pr(m);
  dmat X, Y;
  dmat_init(&X, m->g, rows, in, (float *)x);
  dmat_init(&Y, m->g, rows, out, y);
  if (b) {
    for (int i = 0; i < n; i++)
      memcpy(y + (size_t)i * Y.ld, b->w.data, (size_t)Y.cols_local * sizeof(float));
  }
  dmat_gemm('N', 'T', 1.0f, &X, &w->w, b ? 1.0f : 0.0f, &Y);
}

/* dx(n,in) += dy W (if dx); dW += dy^T x; db += column sums of dy (this process row's
 * rows: vec_grads_end sums them over the process column). */
static void linear_bwd(model *m, float *dx, const float *dy, const float *x, const model_param *w,
                       const model_param *b, int n) {
  int64_t out = w->w.rows, in = w->w.cols, rows = (int64_t)n * grid_pr(m);
  dmat DY, X;
  dmat_init(&DY, m->g, rows, out, (float *)dy);
  dmat_init(&X, m->g, rows, in, (float *)x);
  if (dx) {
    dmat DX;
    dmat_init(&DX, m->g, rows, in, dx);
    dmat_gemm('N', 'N', 1.0f, &DY, &w->w, 1.0f, &DX);
  }
  dmat_gemm('T', 'N', 1.0f, &DY, &X, 1.0f, (dmat *)&w->g);
  if (b) {
    float *db = b->g.data;
    int ol = DY.cols_local;
    for (int i = 0; i < n; i++) {
      const float *row = dy + (size_t)i * DY.ld;
      for (int j = 0; j < ol; j++) db[j] += row[j];
    }
  }
}

/* LayerNorm of n local rows (this rank's dl columns): the local kernel on one process
 * column, else with row statistics all-reduced over the process row. */
static void ln_fwd(model *m, float *y, float *mean, float *rstd, const float *x, const model_ln *ln,
                   int n) {
  if (grid_pc(m) == 1)
    ops_layernorm_forward(y, mean, rstd, x, ln->w->w.data, ln->b->w.data, n, m->dl, LN_EPS);
  else
    tpops_layernorm_forward(y, mean, rstd, x, ln->w->w.data, ln->b->w.data, n, m->dl, m->dims.d,
                            LN_EPS, m->g->tp_row);
}

static void ln_bwd(model *m, float *dx, const float *dy, const float *x, const float *mean,
                   const float *rstd, const model_ln *ln, int n) {
  if (grid_pc(m) == 1)
    ops_layernorm_backward(dx, ln->w->g.data, ln->b->g.data, dy, x, mean, rstd, ln->w->w.data, n,
                           m->dl);
  else
    tpops_layernorm_backward(dx, ln->w->g.data, ln->b->g.data, dy, x, mean, rstd, ln->w->w.data, n,
                             m->dl, m->dims.d, m->g->tp_row, m->acts->ln_scratch);
}

/* Cross-entropy of n local logit rows (cols columns of V starting at c0): ops_xent on one
 * process column, else vocabulary-parallel. argmax (n) may be NULL. The sums and the
 * count are this process row's. */
static int64_t xent(model *m, float *logits, const int32_t *targets, int n, int cols, int c0, int V,
                    int pad, float eps, float grad_scale, int backward, double *loss_sum,
                    double *nll_sum, int32_t *argmax);

/* Replicated vectors: their gradients from this backward are partial sums over this
 * process row's tokens. vec_grads_begin sets the earlier (complete) ones aside and
 * zeroes them; vec_grads_end sums the new ones over the process column and adds the
 * earlier back. Nothing on one process row. */
static void vec_grads_begin(model *m) {
  if (grid_pr(m) == 1) return;
  size_t n = (size_t)(m->n_floats - m->vec_lo);
  memcpy(m->acts->vec_saved, m->grad_mem + m->vec_lo, n * sizeof(float));
  memset(m->grad_mem + m->vec_lo, 0, n * sizeof(float));
}

static void vec_grads_end(model *m) {
  if (grid_pr(m) == 1) return;
  int64_t n = m->n_floats - m->vec_lo;
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, m->grad_mem + m->vec_lo, common_int(n), MPI_FLOAT, MPI_SUM,
                          m->g->tp_col));
  ops_acc(m->grad_mem + m->vec_lo, m->acts->vec_saved, n);
}

/* The batch totals on every rank: sums over the process rows of one process column. */
static void tp_totals(model *m, double *sums, int n) {
  if (!m->g || m->g->tp == 1) return;
  if (m->g->pcol != 0)
    for (int i = 0; i < n; i++) sums[i] = 0.0;
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, sums, n, MPI_DOUBLE, MPI_SUM, m->g->tp_comm));
}

/* Dropout site keys: one per (layer stream, slot), mixed with the step key. */
static uint64_t site_key(const model *m, int site) {
  return ops_hash_key(m->dropout_key, 0x44524f50u /* "DROP" */, (uint64_t)site, 0);
}
static float p_if_train(const model *m, float p) { return m->train ? p : 0.0f; }

/* Which core function a sublayer runs. */
enum { CORE_SELF, CORE_SELF_CAUSAL, CORE_CROSS, CORE_FFN };

typedef struct sublayer {
  int kind;
  const model_attn *attn;
  const model_layer *L;
  const model_ln *ln;
  int site; /* dropout site base */
} sublayer;

/* F(x): x (n,d) -> s->core (n,d). kv = encoder output for cross-attention. */
static void core_fwd(model *m, const sublayer *sl, sub_acts *s, const float *x, const float *kv,
                     int B, int Tq, int Tk, const uint8_t *key_pad) {
  const model_dims *D = &m->dims;
  int n = B * Tq, d = m->dl;
  int64_t row0 = m->acts->b0 * Tq;
  if (sl->kind == CORE_FFN) {
    linear_fwd(m, s->h, x, sl->L->fc1_w, sl->L->fc1_b, n);
    ops_relu_forward(s->h, s->h, (int64_t)n * m->fl);
    float p = p_if_train(m, D->act_dropout);
    if (s->hd != s->h)
      ops_dropout(s->hd, s->h, n, m->fl, row0, m->f0, D->ffn, p, site_key(m, sl->site + 1));
    linear_fwd(m, s->core, s->hd, sl->L->fc2_w, sl->L->fc2_b, n);
    return;
  }
  const model_attn *A = sl->attn;
  const float *src_kv = sl->kind == CORE_CROSS ? kv : x;
  int nk = B * Tk;
  linear_fwd(m, s->q, x, A->q_w, A->q_b, n);
  linear_fwd(m, s->k, src_kv, A->k_w, A->k_b, nk);
  linear_fwd(m, s->v, src_kv, A->v_w, A->v_b, nk);
  ops_attention_forward(s->o, d, s->probs, s->q, d, s->k, s->v, d,
                        sl->kind == CORE_SELF_CAUSAL ? NULL : key_pad,
                        sl->kind == CORE_SELF_CAUSAL, B, Tq, Tk, m->hl, D->d / D->heads,
                        p_if_train(m, D->attn_dropout), site_key(m, sl->site + 1), m->acts->b0,
                        m->h0, D->heads, m->acts->scratch);
  linear_fwd(m, s->core, s->o, A->o_w, A->o_b, n);
}

/* Backward of F: dcore (n,d) -> dx (n,d) += ; dkv (nk,d) += for cross-attention. */
static void core_bwd(model *m, const sublayer *sl, sub_acts *s, const float *x, const float *kv,
                     float *dcore, float *dx, float *dkv, int B, int Tq, int Tk) {
  const model_dims *D = &m->dims;
  model_acts *a = m->acts;
  int n = B * Tq, d = m->dl;
  if (sl->kind == CORE_FFN) {
    size_t nf = (size_t)n * m->fl;
    memset(a->g_h, 0, nf * sizeof(float));
    linear_bwd(m, a->g_h, dcore, s->hd, sl->L->fc2_w, sl->L->fc2_b, n);
    if (s->hd != s->h)
      ops_dropout(a->g_h, a->g_h, n, m->fl, a->b0 * Tq, m->f0, D->ffn,
                  p_if_train(m, D->act_dropout), site_key(m, sl->site + 1));
    /* relu backward in place: g_h *= (h > 0) */
    for (size_t i = 0; i < nf; i++)
      if (!(s->h[i] > 0.0f)) a->g_h[i] = 0.0f;
    linear_bwd(m, dx, a->g_h, x, sl->L->fc1_w, sl->L->fc1_b, n);
    return;
  }
  const model_attn *A = sl->attn;
  int cross = sl->kind == CORE_CROSS;
  const float *src_kv = cross ? kv : x;
  float *dsrc = cross ? dkv : dx;
  int nk = B * Tk;
  memset(a->g_o, 0, (size_t)n * d * sizeof(float));
  linear_bwd(m, a->g_o, dcore, s->o, A->o_w, A->o_b, n);
  memset(a->g_q, 0, (size_t)n * d * sizeof(float));
  memset(a->g_k, 0, (size_t)nk * d * sizeof(float));
  memset(a->g_v, 0, (size_t)nk * d * sizeof(float));
  ops_attention_backward(a->g_q, a->g_k, a->g_v, a->g_o, d, s->probs, s->q, d, s->k, s->v, d, B,
                         Tq, Tk, m->hl, D->d / D->heads, p_if_train(m, D->attn_dropout),
                         site_key(m, sl->site + 1), a->b0, m->h0, D->heads, a->scratch);
  linear_bwd(m, dx, a->g_q, x, A->q_w, A->q_b, n);
  linear_bwd(m, dsrc, a->g_k, src_kv, A->k_w, A->k_b, nk);
  linear_bwd(m, dsrc, a->g_v, src_kv, A->v_w, A->v_b, nk);
}

/* One sublayer forward: s_in -> s_out (n,d). */
static void sublayer_fwd(model *m, const sublayer *sl, sub_acts *s, const float *s_in,
                         float *s_out, const float *kv, int B, int Tq, int Tk,
                         const uint8_t *key_pad) {
  const model_dims *D = &m->dims;
  int n = B * Tq, d = m->dl;
  int64_t row0 = m->acts->b0 * Tq;
  float p = p_if_train(m, D->dropout);
  if (D->pre_ln) {
    ln_fwd(m, s->ln_out, s->mean, s->rstd, s_in, sl->ln, n);
    core_fwd(m, sl, s, s->ln_out, kv, B, Tq, Tk, key_pad);
    ops_dropout(s->core, s->core, n, d, row0, m->d0, D->d, p, site_key(m, sl->site));
    ops_add(s_out, s_in, s->core, (int64_t)n * d);
  } else {
    core_fwd(m, sl, s, s_in, kv, B, Tq, Tk, key_pad);
    ops_dropout(s->core, s->core, n, d, row0, m->d0, D->d, p, site_key(m, sl->site));
    ops_add(s->resid, s_in, s->core, (int64_t)n * d);
    ln_fwd(m, s_out, s->mean, s->rstd, s->resid, sl->ln, n);
  }
}

/* One sublayer backward: ds_out (n,d) -> ds_in (n,d) +=, dkv +=. */
static void sublayer_bwd(model *m, const sublayer *sl, sub_acts *s, const float *s_in,
                         const float *ds_out, float *ds_in, const float *kv, float *dkv, int B,
                         int Tq, int Tk) {
  const model_dims *D = &m->dims;
  model_acts *a = m->acts;
  int n = B * Tq, d = m->dl;
  size_t nd = (size_t)n * d;
  int64_t row0 = a->b0 * Tq;
  float p = p_if_train(m, D->dropout);
  if (D->pre_ln) {
    ops_acc(ds_in, ds_out, (int64_t)nd);
    ops_dropout(a->g_core, ds_out, n, d, row0, m->d0, D->d, p, site_key(m, sl->site));
    memset(a->g_ln, 0, nd * sizeof(float));
    core_bwd(m, sl, s, s->ln_out, kv, a->g_core, a->g_ln, dkv, B, Tq, Tk);
    ln_bwd(m, ds_in, a->g_ln, s_in, s->mean, s->rstd, sl->ln, n);
  } else {
    memset(a->g_resid, 0, nd * sizeof(float));
    ln_bwd(m, a->g_resid, ds_out, s->resid, s->mean, s->rstd, sl->ln, n);
    ops_acc(ds_in, a->g_resid, (int64_t)nd);
    ops_dropout(a->g_core, a->g_resid, n, d, row0, m->d0, D->d, p, site_key(m, sl->site));
    core_bwd(m, sl, s, s_in, kv, a->g_core, ds_in, dkv, B, Tq, Tk);
  }
}

static sublayer enc_sublayer(const model *m, int l, int j) {
  const model_layer *L = &m->enc[l];
  sublayer sl = {j == 0 ? CORE_SELF : CORE_FFN, &L->self, L, j == 0 ? &L->ln_self : &L->ln_ffn,
                 (l * 3 + j) * 4};
  return sl;
}

static sublayer dec_sublayer(const model *m, int l, int j) {
  const model_layer *L = &m->dec[l];
  static const int kinds[3] = {CORE_SELF_CAUSAL, CORE_CROSS, CORE_FFN};
  sublayer sl = {kinds[j], j == 0 ? &L->self : &L->cross, L,
                 j == 0 ? &L->ln_self : j == 1 ? &L->ln_cross : &L->ln_ffn,
                 (1 << 20) + (l * 3 + j) * 4};
  return sl;
}

/* An embedding table's rows with this rank's columns: (V, dl). Its own block when the
 * table is not split by rows (pr = 1), else the blocks of the process column gathered
 * into a->table. Collective on the process column. */
static const float *embed_table(model *m, const model_param *E) {
  if (grid_pr(m) == 1) return E->w.data;
  const grid *g = m->g;
  int *counts = common_calloc((size_t)g->pr, sizeof(int)), *displs = common_calloc((size_t)g->pr, sizeof(int));
  for (int p = 0; p < g->pr; p++) {
    counts[p] = common_int(dmat_block_count(E->w.rows, p, g->pr) * m->dl);
    displs[p] = common_int(dmat_block_start(E->w.rows, p, g->pr) * m->dl);
  }
  MPI_CHECK(MPI_Allgatherv(E->w.data, counts[g->prow], MPI_FLOAT, m->acts->table, counts, displs,
                           MPI_FLOAT, g->tp_col));
  free(counts);
  free(displs);
  return m->acts->table;
}

/* Embedding + positions + dropout: s0 (B*T, dl), B and tok this process row's. */
static void embed_fwd(model *m, float *s0, const model_param *E, const int32_t *tok, int B, int T,
                      int site) {
  const model_dims *D = &m->dims;
  int n = B * T;
  ops_embedding_forward(s0, tok, embed_table(m, E), n, m->dl, sqrtf((float)D->d));
  ops_positions_add_cols(s0, m->dl, B, T, D->d, m->d0, m->dl, 0);
  ops_dropout(s0, s0, n, m->dl, m->acts->b0 * T, m->d0, D->d, p_if_train(m, D->dropout),
              site_key(m, site));
}

/* dE += the lookup's gradient: into E's block directly on one process row, else over the
 * whole (V, dl) table in a->table, reduce-scattered over the process column. */
static void embed_bwd(model *m, float *ds0, const model_param *E, const int32_t *tok, int B, int T,
                      int site) {
  const model_dims *D = &m->dims;
  int n = B * T;
  ops_dropout(ds0, ds0, n, m->dl, m->acts->b0 * T, m->d0, D->d, p_if_train(m, D->dropout),
              site_key(m, site));
  float scale = sqrtf((float)D->d);
  if (grid_pr(m) == 1) {
    ops_embedding_backward(E->g.data, ds0, tok, n, m->dl, scale, D->pad);
    return;
  }
  const grid *g = m->g;
  float *full = m->acts->table;
  memset(full, 0, (size_t)E->w.rows * m->dl * sizeof(float));
  ops_embedding_backward(full, ds0, tok, n, m->dl, scale, D->pad);
  int *counts = common_calloc((size_t)g->pr, sizeof(int));
  for (int p = 0; p < g->pr; p++) counts[p] = common_int(dmat_block_count(E->w.rows, p, g->pr) * m->dl);
  MPI_CHECK(MPI_Reduce_scatter(MPI_IN_PLACE, full, counts, MPI_FLOAT, MPI_SUM, g->tp_col));
  ops_acc(E->g.data, full, counts[g->prow]);
  free(counts);
}

#define SITE_ENC_EMBED (1 << 24)
#define SITE_DEC_EMBED ((1 << 24) + 1)

/* Encoder layers [l0, l1) forward over the arena's streams (local B, S); with
 * l1 = n_enc also the final LayerNorm (Pre-LN) into a->enc_out. */
static void enc_layers_fwd(model *m, int l0, int l1, int B, int S) {
  const model_dims *D = &m->dims;
  model_acts *a = m->acts;
  for (int l = l0; l < l1; l++)
    for (int j = 0; j < 2; j++) {
      sublayer sl = enc_sublayer(m, l, j);
      sublayer_fwd(m, &sl, &a->enc_sub[2 * l + j], a->enc_s[2 * l + j], a->enc_s[2 * l + j + 1],
                   NULL, B, S, S, a->src_pad);
      if (m->progress) m->progress(m->progress_ctx);
    }
  if (l1 == D->n_enc && D->pre_ln)
    ln_fwd(m, a->enc_out, a->enc_mean, a->enc_rstd, a->enc_s[2 * D->n_enc], &m->enc_final, B * S);
}

/* Encoder forward over the arena's current local (B, S); output in a->enc_out. */
static void encoder_fwd(model *m, const int32_t *src, int B, int S) {
  const model_dims *D = &m->dims;
  model_acts *a = m->acts;
  CHECK(m->n_stages == 1, "encoder_fwd: the whole encoder is not on this pipeline stage");
  for (size_t i = 0; i < (size_t)B * S; i++) a->src_pad[i] = src[i] == D->pad;
  embed_fwd(m, a->enc_s[0], m->enc_embed, src, B, S, SITE_ENC_EMBED);
  enc_layers_fwd(m, 0, D->n_enc, B, S);
}

/* Backward of encoder layers [l0, l1): the gradient of their output is a->g_enc (that of
 * enc_out) when l1 = n_enc, else already in a->gs_a (that of stream 2 l1). Accumulates
 * the layers' parameter gradients; returns the buffer (gs_a or gs_b) holding the
 * gradient of stream 2 l0. */
static float *enc_layers_bwd(model *m, int l0, int l1, int B, int S) {
  const model_dims *D = &m->dims;
  model_acts *a = m->acts;
  int nS = B * S, d = m->dl;
  float *gs_out = a->gs_a, *gs_in = a->gs_b;
  if (l1 == D->n_enc) {
    if (D->pre_ln) {
      memset(gs_out, 0, (size_t)nS * d * sizeof(float));
      ln_bwd(m, gs_out, a->g_enc, a->enc_s[2 * D->n_enc], a->enc_mean, a->enc_rstd, &m->enc_final, nS);
    } else {
      memcpy(gs_out, a->g_enc, (size_t)nS * d * sizeof(float));
    }
  }
  for (int l = l1 - 1; l >= l0; l--)
    for (int j = 1; j >= 0; j--) {
      sublayer sl = enc_sublayer(m, l, j);
      memset(gs_in, 0, (size_t)nS * d * sizeof(float));
      sublayer_bwd(m, &sl, &a->enc_sub[2 * l + j], a->enc_s[2 * l + j], gs_out, gs_in, NULL, NULL,
                   B, S, S);
      float *t = gs_out; gs_out = gs_in; gs_in = t;
      if (m->progress) m->progress(m->progress_ctx);
    }
  return gs_out;
}

/* Decoder layers [l0, l1) forward (local B, T; cross-attention over a->enc_out). */
static void dec_layers_fwd(model *m, int l0, int l1, int B, int S, int T) {
  model_acts *a = m->acts;
  for (int l = l0; l < l1; l++)
    for (int j = 0; j < 3; j++) {
      sublayer sl = dec_sublayer(m, l, j);
      sublayer_fwd(m, &sl, &a->dec_sub[3 * l + j], a->dec_s[3 * l + j], a->dec_s[3 * l + j + 1],
                   a->enc_out, B, T, j == 1 ? S : T, a->src_pad);
      if (m->progress) m->progress(m->progress_ctx);
    }
}

/* Backward of decoder layers [l0, l1): gs (gs_a or gs_b) holds the gradient of stream
 * 3 l1; the encoder output's gradient is ACCUMULATED into a->g_enc. Returns the buffer
 * holding the gradient of stream 3 l0. */
static float *dec_layers_bwd(model *m, int l0, int l1, float *gs, int B, int S, int T) {
  model_acts *a = m->acts;
  int nT = B * T, d = m->dl;
  float *gs_out = gs, *gs_in = gs == a->gs_a ? a->gs_b : a->gs_a;
  for (int l = l1 - 1; l >= l0; l--)
    for (int j = 2; j >= 0; j--) {
      sublayer sl = dec_sublayer(m, l, j);
      memset(gs_in, 0, (size_t)nT * d * sizeof(float));
      sublayer_bwd(m, &sl, &a->dec_sub[3 * l + j], a->dec_s[3 * l + j], gs_out, gs_in, a->enc_out,
                   a->g_enc, B, T, j == 1 ? S : T);
      float *t = gs_out; gs_out = gs_in; gs_in = t;
      if (m->progress) m->progress(m->progress_ctx);
    }
  return gs_out;
}

void model_stage_msg(const model *m, int side, int B_global, int S, int T, int64_t *n_enc,
                     int64_t *n_dec) {
  int pr = grid_pr(m), B = (B_global + pr - 1) / pr, nE = m->dims.n_enc;
  *n_enc = *n_dec = 0;
  if ((side == 0 && m->stage == 0) || (side == 1 && m->stage == m->n_stages - 1)) return;
  /* the global layer index at the boundary: encoder stream inside the encoder, the
   * encoder output at the junction, the encoder output and the decoder stream after it */
  int l = side == 0 ? (m->enc_l1 > m->enc_l0 ? m->enc_l0 : nE + m->dec_l0) : (m->enc_l1 < nE ? m->enc_l1 : nE + m->dec_l1);
  *n_enc = (int64_t)B * S * m->dl;
  *n_dec = l > nE ? (int64_t)B * T * m->dl : 0;
}

/* the encoder-only heads (below) */
static int64_t enc_only_stage_fwd(model *m, const int32_t *tokens_g, const int32_t *aux_g,
                                  int B_global, int S, float grad_scale, int backward,
                                  const float *in_msg, float *out_msg, double *sums, int32_t *pred);
static void cls_head_bwd(model *m);
static void mlm_head_bwd(model *m);

int64_t model_stage_forward(model *m, const int32_t *src_g, const int32_t *tgt_in_g,
                            const int32_t *tgt_out_g, int B_global, int S, int T, float grad_scale,
                            int backward, const float *in_msg, float *out_msg, double *sums) {
  const model_dims *D = &m->dims;
  if (D->arch != MODEL_ARCH_TRANSLATION)
    return enc_only_stage_fwd(m, src_g, tgt_out_g, B_global, S, grad_scale, backward, in_msg,
                              out_msg, sums, NULL);
  acts_prepare(m, B_global, S, T);
  model_acts *a = m->acts;
  int B = a->B, nS = B * S, nT = B * T, d = m->dl;
  size_t ne = (size_t)nS * d, nd = (size_t)nT * d;
  const int32_t *src = local_rows(m, 0, src_g, B_global, S, D->pad);
  const int32_t *tgt_in = local_rows(m, 1, tgt_in_g, B_global, T, D->pad);
  const int32_t *tgt_out = local_rows(m, 2, tgt_out_g, B_global, T, D->pad);
  a->src = src, a->tgt_in = tgt_in, a->key = m->dropout_key, a->train = m->train;
  int has_enc = m->enc_l1 > m->enc_l0, has_dec = m->dec_l1 > m->dec_l0, last = m->stage == m->n_stages - 1;
  for (size_t i = 0; i < (size_t)nS; i++) a->src_pad[i] = src[i] == D->pad;
  if (has_enc) {
    if (m->enc_l0 == 0) embed_fwd(m, a->enc_s[0], m->enc_embed, src, B, S, SITE_ENC_EMBED);
    else memcpy(a->enc_s[2 * m->enc_l0], in_msg, ne * sizeof(float));
    enc_layers_fwd(m, m->enc_l0, m->enc_l1, B, S);
  } else {
    memcpy(a->enc_out, in_msg, ne * sizeof(float));
  }
  if (has_dec) {
    if (m->dec_l0 == 0) embed_fwd(m, a->dec_s[0], m->dec_embed, tgt_in, B, T, SITE_DEC_EMBED);
    else memcpy(a->dec_s[3 * m->dec_l0], in_msg + ne, nd * sizeof(float));
    dec_layers_fwd(m, m->dec_l0, m->dec_l1, B, S, T);
  }
  if (!last) { /* the message for the next stage (model_stage_msg's layout) */
    if (m->enc_l1 < D->n_enc) {
      memcpy(out_msg, a->enc_s[2 * m->enc_l1], ne * sizeof(float));
    } else {
      memcpy(out_msg, a->enc_out, ne * sizeof(float));
      if (m->dec_l1 > 0) memcpy(out_msg + ne, a->dec_s[3 * m->dec_l1], nd * sizeof(float));
    }
    return 0;
  }
  if (D->pre_ln)
    ln_fwd(m, a->dec_out, a->dec_mean, a->dec_rstd, a->dec_s[3 * D->n_dec], &m->dec_final, nT);
  /* logits (nT, V) = dec_out W_out^T */
  linear_fwd(m, a->logits, a->dec_out, m->out_proj, NULL, nT);
  double t[3] = {0, 0, 0};
  t[2] = (double)xent(m, a->logits, tgt_out, nT, m->vl, m->v0, D->vocab, D->pad,
                      D->label_smoothing, grad_scale, backward, &t[0], &t[1], NULL);
  tp_totals(m, t, 3);
  sums[0] += t[0], sums[1] += t[1];
  return (int64_t)t[2];
}

void model_stage_backward(model *m, const float *g_in, float *g_out) {
  const model_dims *D = &m->dims;
  model_acts *a = m->acts;
  m->dropout_key = a->key, m->train = a->train; /* the masks of this arena's forward */
  int B = a->B, S = a->S, T = a->T, nT = B * T, d = m->dl;
  size_t ne = (size_t)B * S * d, nd = (size_t)nT * d;
  int has_enc = m->enc_l1 > m->enc_l0, has_dec = m->dec_l1 > m->dec_l0, last = m->stage == m->n_stages - 1;
  vec_grads_begin(m);
  if (D->arch != MODEL_ARCH_TRANSLATION) { /* encoder layers, the head on the last stage */
    if (!last) memcpy(a->gs_a, g_in, ne * sizeof(float));
    else if (D->arch == MODEL_ARCH_CLASSIFIER) cls_head_bwd(m);
    else mlm_head_bwd(m);
    float *gs = enc_layers_bwd(m, m->enc_l0, m->enc_l1, B, S);
    if (m->enc_l0 == 0) embed_bwd(m, gs, m->enc_embed, a->src, B, S, SITE_ENC_EMBED);
    else memcpy(g_out, gs, ne * sizeof(float));
    vec_grads_end(m);
    return;
  }
  if (has_dec) {
    float *gs = a->gs_a;
    if (last) {
      memset(gs, 0, nd * sizeof(float));
      linear_bwd(m, gs, a->logits, a->dec_out, m->out_proj, NULL, nT);
      if (D->pre_ln) {
        memset(a->gs_b, 0, nd * sizeof(float));
        ln_bwd(m, a->gs_b, gs, a->dec_s[3 * D->n_dec], a->dec_mean, a->dec_rstd, &m->dec_final, nT);
        gs = a->gs_b;
      }
      memset(a->g_enc, 0, ne * sizeof(float));
    } else {
      memcpy(gs, g_in + ne, nd * sizeof(float));
      memcpy(a->g_enc, g_in, ne * sizeof(float));
    }
    gs = dec_layers_bwd(m, m->dec_l0, m->dec_l1, gs, B, S, T);
    if (m->dec_l0 == 0) embed_bwd(m, gs, m->dec_embed, a->tgt_in, B, T, SITE_DEC_EMBED);
    else memcpy(g_out + ne, gs, nd * sizeof(float));
    if (!has_enc) memcpy(g_out, a->g_enc, ne * sizeof(float));
  }
  if (has_enc) {
    if (m->enc_l1 < D->n_enc) memcpy(a->gs_a, g_in, ne * sizeof(float));
    else if (!has_dec) memcpy(a->g_enc, g_in, ne * sizeof(float));
    float *gs = enc_layers_bwd(m, m->enc_l0, m->enc_l1, B, S);
    if (m->enc_l0 == 0) embed_bwd(m, gs, m->enc_embed, a->src, B, S, SITE_ENC_EMBED);
    else memcpy(g_out, gs, ne * sizeof(float));
  }
  vec_grads_end(m);
}

int64_t model_forward_backward(model *m, const int32_t *src_g, const int32_t *tgt_in_g,
                               const int32_t *tgt_out_g, int B_global, int S, int T,
                               float grad_scale, int backward, double *loss_sum, double *nll_sum) {
  CHECK(m->dims.arch == MODEL_ARCH_TRANSLATION, "model_forward_backward: not a translation model");
  CHECK(m->n_stages == 1, "model_forward_backward: pp > 1 runs the stages (pipe.c)");
  double sums[4] = {0, 0, 0, 0};
  int64_t ntok = model_stage_forward(m, src_g, tgt_in_g, tgt_out_g, B_global, S, T, grad_scale,
                                     backward, NULL, NULL, sums);
  if (loss_sum) *loss_sum += sums[0];
  if (nll_sum) *nll_sum += sums[1];
  if (backward) model_stage_backward(m, NULL, NULL);
  return ntok;
}

/* ---- encoder-only heads ------------------------------------------------------------ */

/* *buf with room for at least n items of elem bytes (grown by a quarter more, never shrunk). */
static void *grow(void *buf_ptr, size_t *cap, size_t n, size_t elem) {
  void **buf = buf_ptr;
  if (n > *cap) {
    free(*buf);
    *cap = n + n / 4;
    *buf = common_malloc(*cap * elem);
  }
  return *buf;
}

/* At least n floats of head scratch, n int32 of head index scratch. */
static float *head_prepare(model *m, size_t n) {
  return grow(&m->acts->head, &m->acts->head_cap, n, sizeof(float));
}
static int32_t *head_idx_prepare(model *m, size_t n) {
  return grow(&m->acts->head_idx, &m->acts->head_idx_cap, n, sizeof(int32_t));
}

/* Index of the largest of row[0..n) (the first on ties). */
static int argmax_row(const float *row, int n) {
  int best = 0;
  for (int j = 1; j < n; j++)
    if (row[j] > row[best]) best = j;
  return best;
}

static int64_t xent(model *m, float *logits, const int32_t *targets, int n, int cols, int c0, int V,
                    int pad, float eps, float grad_scale, int backward, double *loss_sum,
                    double *nll_sum, int32_t *argmax) {
  if (grid_pc(m) > 1) {
    const model_acts *a = m->acts;
    CHECK(n <= a->B * (a->S > a->T ? a->S : a->T), "xent: %d rows exceed the scratch", n);
    return tpops_xent(backward ? logits : NULL, logits, targets, n, cols, c0, V, pad, eps,
                      grad_scale, loss_sum, nll_sum, argmax, m->g->tp_row, m->acts->xent_scratch);
  }
  if (argmax)
    for (int i = 0; i < n; i++) argmax[i] = argmax_row(logits + (size_t)i * V, V);
  return ops_xent(backward ? logits : NULL, logits, targets, n, V, pad, eps, grad_scale, loss_sum,
                  nll_sum);
}

/* Classifier head forward on a->enc_out (this process row's B rows, labels local, -1 on
 * padding rows): sums[0] += loss, sums[1] += correct (batch totals). With backward the
 * logits' gradient stays in the head scratch for cls_head_bwd. */
static void cls_head_fwd(model *m, const int32_t *labels, int B_global, int S, float grad_scale,
                         int backward, double *sums, int32_t *pred) {
  const model_dims *D = &m->dims;
  model_acts *a = m->acts;
  int d = m->dl, C = D->n_classes, B = a->B;
  /* scratch: x (B,dl) pooled rows, h (B,dl) = tanh(dense(x)), logits (B,cl), g (B,dl) */
  size_t Bd = (size_t)B * d;
  float *x = head_prepare(m, 3 * Bd + (size_t)B * (m->cl + 1) + 64);
  float *h = x + Bd, *logits = h + Bd;
  int32_t *arg = head_idx_prepare(m, 2 * (size_t)B * grid_pr(m));
  for (int b = 0; b < B; b++) memcpy(x + (size_t)b * d, a->enc_out + (size_t)b * S * d, d * sizeof(float));
  linear_fwd(m, h, x, m->cls_dense_w, m->cls_dense_b, B);
  for (size_t i = 0; i < Bd; i++) h[i] = tanhf(h[i]);
  linear_fwd(m, logits, h, m->cls_out_w, m->cls_out_b, B); /* (B,C) */
  double t[2] = {0, 0};
  xent(m, logits, labels, B, m->cl, m->c0, C, -1, 0.0f, grad_scale, backward, &t[0], NULL, arg);
  for (int b = 0; b < B; b++) t[1] += labels[b] >= 0 && arg[b] == labels[b];
  tp_totals(m, t, 2);
  sums[0] += t[0], sums[1] += t[1];
  if (pred) { /* every process row's predictions, in batch order */
    int32_t *all = arg;
    if (grid_pr(m) > 1) {
      all = arg + B;
      MPI_CHECK(MPI_Allgather(arg, B, MPI_INT32_T, all, B, MPI_INT32_T, m->g->tp_col));
    }
    memcpy(pred, all, (size_t)B_global * sizeof(int32_t));
  }
}

/* Classifier head backward: a->g_enc = the gradient of enc_out (nonzero on row 0 of each
 * sequence only). */
static void cls_head_bwd(model *m) {
  model_acts *a = m->acts;
  int d = m->dl, B = a->B, S = a->S;
  size_t Bd = (size_t)B * d;
  float *x = a->head, *h = x + Bd, *logits = h + Bd, *g = logits + (size_t)B * (m->cl + 1);
  memset(g, 0, Bd * sizeof(float));
  linear_bwd(m, g, logits, h, m->cls_out_w, m->cls_out_b, B); /* g = dL/dh */
  for (size_t i = 0; i < Bd; i++) g[i] *= 1.0f - h[i] * h[i];  /* through tanh */
  memset(a->g_enc, 0, (size_t)B * S * d * sizeof(float));
  memset(h, 0, Bd * sizeof(float)); /* dL/dx lands on row (b, 0) of enc_out */
  linear_bwd(m, h, g, x, m->cls_dense_w, m->cls_dense_b, B);
  for (int b = 0; b < B; b++) memcpy(a->g_enc + (size_t)b * S * d, h + (size_t)b * d, d * sizeof(float));
}

/* Masked-LM head forward on a->enc_out (targets local, -1 where not selected): sums[0] +=
 * loss, sums[1] += correct; returns the selected positions of the batch. The selection
 * (rows, their number) stays in the arena for mlm_head_bwd. */
static int64_t mlm_head_fwd(model *m, const int32_t *targets, float grad_scale, int backward,
                            double *sums) {
  const model_dims *D = &m->dims;
  model_acts *a = m->acts;
  int d = m->dl, V = D->vocab, B = a->B, S = a->S;
  size_t nS = (size_t)B * S;
  /* the selected positions of this process row; every process row runs the head on
   * n = the most any of them has (the rest are -1 rows), so the rows stay aligned */
  int32_t *idx = head_idx_prepare(m, 3 * nS + 1);
  int32_t *rows = idx, *tgt = idx + nS, *arg = idx + 2 * nS;
  int n_mine = 0;
  for (size_t i = 0; i < nS; i++)
    if (targets[i] >= 0) {
      rows[n_mine] = (int32_t)i;
      tgt[n_mine++] = targets[i];
    }
  int n = n_mine;
  if (grid_pr(m) > 1) MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &n, 1, MPI_INT, MPI_MAX, m->g->tp_col));
  for (int i = n_mine; i < n; i++) tgt[i] = -1;
  a->mlm_n = n, a->mlm_n_mine = n_mine;
  if (n == 0) return 0;
  /* scratch: x (n,dl) selected rows of enc_out, logits (n,vl), g (n,dl) */
  size_t nd = (size_t)n * d;
  float *x = head_prepare(m, 2 * nd + (size_t)n * (m->vl + 1) + 64);
  float *logits = x + nd;
  for (int i = 0; i < n_mine; i++) memcpy(x + (size_t)i * d, a->enc_out + (size_t)rows[i] * d, d * sizeof(float));
  memset(x + (size_t)n_mine * d, 0, (size_t)(n - n_mine) * d * sizeof(float));
  linear_fwd(m, logits, x, m->out_proj, NULL, n); /* (n,V) = x W_emb^T */
  double t[3] = {0, 0, 0};
  t[2] = (double)xent(m, logits, tgt, n, m->vl, m->v0, V, -1, 0.0f, grad_scale, backward, &t[0],
                      NULL, arg);
  for (int i = 0; i < n_mine; i++) t[1] += arg[i] == tgt[i];
  tp_totals(m, t, 3);
  sums[0] += t[0], sums[1] += t[1];
  return (int64_t)t[2];
}

/* Masked-LM head backward: a->g_enc = the gradient of enc_out (zero when nothing was
 * selected); also dW_emb += dlogits^T x into the output projection (the tied table). */
static void mlm_head_bwd(model *m) {
  model_acts *a = m->acts;
  int d = m->dl, n = a->mlm_n, n_mine = a->mlm_n_mine;
  size_t nS = (size_t)a->B * a->S, nd = (size_t)n * d;
  memset(a->g_enc, 0, nS * d * sizeof(float));
  if (n == 0) return;
  float *x = a->head, *logits = x + nd, *g = logits + (size_t)n * (m->vl + 1);
  const int32_t *rows = a->head_idx;
  memset(g, 0, nd * sizeof(float));
  linear_bwd(m, g, logits, x, m->out_proj, NULL, n);
  for (int i = 0; i < n_mine; i++) memcpy(a->g_enc + (size_t)rows[i] * d, g + (size_t)i * d, d * sizeof(float));
}

/* The encoder-only archs' stage forward (see model_stage_forward): tokens (B,S) and
 * aux = labels (B) or MLM targets (B,S). */
static int64_t enc_only_stage_fwd(model *m, const int32_t *tokens_g, const int32_t *aux_g,
                                  int B_global, int S, float grad_scale, int backward,
                                  const float *in_msg, float *out_msg, double *sums, int32_t *pred) {
  const model_dims *D = &m->dims;
  int cls = D->arch == MODEL_ARCH_CLASSIFIER;
  if (cls)
    for (int b = 0; b < B_global; b++)
      CHECK(aux_g[b] >= 0 && aux_g[b] < D->n_classes, "model_classify: label %d outside [0, %d)",
            aux_g[b], D->n_classes);
  else
    for (size_t i = 0; i < (size_t)B_global * S; i++)
      CHECK(aux_g[i] < D->vocab, "model_mlm: target %d outside the vocabulary", aux_g[i]);
  acts_prepare(m, B_global, S, 0);
  model_acts *a = m->acts;
  int B = a->B, last = m->stage == m->n_stages - 1;
  size_t ne = (size_t)B * S * m->dl;
  const int32_t *tokens = local_rows(m, 0, tokens_g, B_global, S, D->pad);
  const int32_t *aux = local_rows(m, 1, aux_g, B_global, cls ? 1 : S, -1); /* -1: padding rows */
  a->src = tokens, a->key = m->dropout_key, a->train = m->train;
  for (size_t i = 0; i < (size_t)B * S; i++) a->src_pad[i] = tokens[i] == D->pad;
  if (m->enc_l0 == 0) embed_fwd(m, a->enc_s[0], m->enc_embed, tokens, B, S, SITE_ENC_EMBED);
  else memcpy(a->enc_s[2 * m->enc_l0], in_msg, ne * sizeof(float));
  enc_layers_fwd(m, m->enc_l0, m->enc_l1, B, S);
  if (!last) {
    memcpy(out_msg, a->enc_s[2 * m->enc_l1], ne * sizeof(float));
    return 0;
  }
  double t[2] = {0, 0};
  int64_t count = B_global;
  if (cls) cls_head_fwd(m, aux, B_global, S, grad_scale, backward, t, pred);
  else count = mlm_head_fwd(m, aux, grad_scale, backward, t);
  sums[0] += t[0], sums[1] += t[0], sums[3] += t[1]; /* no label smoothing: nll = loss */
  return count;
}

int64_t model_classify(model *m, const int32_t *tokens_g, const int32_t *labels_g, int B_global,
                       int S, float grad_scale, int backward, double *loss_sum,
                       int64_t *n_correct, int32_t *pred) {
  CHECK(m->dims.arch == MODEL_ARCH_CLASSIFIER, "model_classify: not a classifier");
  CHECK(m->n_stages == 1, "model_classify: pp > 1 runs the stages (pipe.c)");
  double sums[4] = {0, 0, 0, 0};
  int64_t count = enc_only_stage_fwd(m, tokens_g, labels_g, B_global, S, grad_scale, backward,
                                     NULL, NULL, sums, pred);
  if (loss_sum) *loss_sum += sums[0];
  if (n_correct) *n_correct += (int64_t)sums[3];
  if (backward) model_stage_backward(m, NULL, NULL);
  return count;
}

int64_t model_mlm(model *m, const int32_t *tokens_g, const int32_t *targets_g, int B_global, int S,
                  float grad_scale, int backward, double *loss_sum, int64_t *n_correct) {
  CHECK(m->dims.arch == MODEL_ARCH_MLM, "model_mlm: not a masked-LM");
  CHECK(m->n_stages == 1, "model_mlm: pp > 1 runs the stages (pipe.c)");
  double sums[4] = {0, 0, 0, 0};
  int64_t count = enc_only_stage_fwd(m, tokens_g, targets_g, B_global, S, grad_scale, backward,
                                     NULL, NULL, sums, NULL);
  if (loss_sum) *loss_sum += sums[0];
  if (n_correct) *n_correct += (int64_t)sums[3];
  /* nothing selected: the gradient is zero (no backward, as before the pipeline) */
  if (backward && count > 0) model_stage_backward(m, NULL, NULL);
  return count;
}

model *model_replicate(model *m) {
  if (!m->g || (m->g->tp == 1 && m->g->pp == 1)) return m;
  const grid *g = m->g;
  model *r = model_create(&m->dims, NULL, 0);
  /* the stage that writes each parameter (its first owner) sends it over pp_comm */
  int *owner = common_calloc((size_t)m->n_params, sizeof(int));
  for (int i = 0; i < m->n_params; i++)
    owner[i] = m->params[i].pp_owned && !m->params[i].pp_copy ? g->stage : -1;
  if (g->pp > 1)
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, owner, m->n_params, MPI_INT, MPI_MAX, g->pp_comm));
  int *counts = common_calloc((size_t)g->pc, sizeof(int)), *displs = common_calloc((size_t)g->pc, sizeof(int));
  for (int i = 0; i < m->n_params; i++) {
    model_param *p = &m->params[i], *q = &r->params[i];
    CHECK(owner[i] >= 0, "model_replicate: no stage holds %s", p->name);
    if (owner[i] == g->stage) {
      if (!p->is_vector) {
        dmat_gather(&p->w, q->w.data);
      } else { /* every process row has it: gather the column blocks along the row */
        for (int c = 0; c < g->pc; c++) {
          counts[c] = common_int(dmat_block_count(p->w.cols, c, g->pc));
          displs[c] = common_int(dmat_block_start(p->w.cols, c, g->pc));
        }
        MPI_CHECK(MPI_Allgatherv(p->w.data, p->w.cols_local, MPI_FLOAT, q->w.data, counts, displs,
                                 MPI_FLOAT, g->tp_row));
      }
    }
    if (g->pp > 1)
      MPI_CHECK(MPI_Bcast(q->w.data, common_int(q->w.rows * q->w.cols), MPI_FLOAT, owner[i],
                          g->pp_comm));
  }
  free(owner);
  free(counts);
  free(displs);
  return r;
}

/* ---- incremental decoding ---------------------------------------------------------- */

struct model_decoder {
  int n_hyp, beam, S, max_steps, t;
  int n_layers, d;
  float **self_k, **self_v;   /* per decoder layer: (n_hyp, max_steps, d) caches */
  float **cross_k, **cross_v; /* per decoder layer: (n_hyp * S, d) */
  uint8_t *src_pad;           /* (n_hyp, S) */
  float *x, *y, *ln, *q, *o, *core, *h, *mean, *rstd; /* (n_hyp, d|F) and (n_hyp) */
  float *kt, *vt;             /* this step's self-attention keys/values (n_hyp, d) */
  float *probs, *scratch;
  float *perm;                /* reorder scratch: (n_hyp, max(max_steps*d, S*d)) */
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
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) *bufs[i] = common_malloc(hd * sizeof(float));
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
  acts_prepare(m, n_seq, S, 1);
  encoder_fwd(m, src, n_seq, S);
  model_acts *a = m->acts;
  float *tmp = a->g_enc; /* (n_seq * S, d) scratch */
  for (int l = 0; l < L; l++) {
    const model_attn *A = &m->dec[l].cross;
    for (int which = 0; which < 2; which++) {
      linear_fwd(m, tmp, a->enc_out, which ? A->v_w : A->k_w, which ? A->v_b : A->k_b, n_seq * S);
      float *dst = which ? st->cross_v[l] : st->cross_k[l];
      for (int i = 0; i < n_hyp; i++)
        memcpy(dst + (size_t)i * S * d, tmp + (size_t)(i / beam) * S * d,
               (size_t)S * d * sizeof(float));
    }
  }
  for (int i = 0; i < n_hyp; i++)
    for (int s = 0; s < S; s++) st->src_pad[(size_t)i * S + s] = src[(size_t)(i / beam) * S + s] == D->pad;
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
    linear_fwd(m, st->q, in, L->self.q_w, L->self.q_b, n);
    linear_fwd(m, st->kt, in, L->self.k_w, L->self.k_b, n);
    linear_fwd(m, st->vt, in, L->self.v_w, L->self.v_b, n);
    size_t stride = (size_t)st->max_steps * d;
    for (int i = 0; i < n; i++) {
      memcpy(st->self_k[l] + i * stride + (size_t)t * d, st->kt + (size_t)i * d, d * sizeof(float));
      memcpy(st->self_v[l] + i * stride + (size_t)t * d, st->vt + (size_t)i * d, d * sizeof(float));
      ops_attention_forward(st->o + (size_t)i * d, d, st->probs, st->q + (size_t)i * d, d,
                            st->self_k[l] + i * stride, st->self_v[l] + i * stride, d, NULL, 0, 1,
                            1, t + 1, H, dh, 0.0f, 0, 0, 0, H, st->scratch);
    }
    linear_fwd(m, st->core, st->o, L->self.o_w, L->self.o_b, n);
    dec_sub_out(m, st, &L->ln_self, n);
    /* cross-attention over the cached encoder keys/values */
    in = dec_sub_in(m, st, &L->ln_cross, n);
    linear_fwd(m, st->q, in, L->cross.q_w, L->cross.q_b, n);
    ops_attention_forward(st->o, d, st->probs, st->q, d, st->cross_k[l], st->cross_v[l], d,
                          st->src_pad, 0, n, 1, st->S, H, dh, 0.0f, 0, 0, 0, H, st->scratch);
    linear_fwd(m, st->core, st->o, L->cross.o_w, L->cross.o_b, n);
    dec_sub_out(m, st, &L->ln_cross, n);
    /* feed-forward */
    in = dec_sub_in(m, st, &L->ln_ffn, n);
    linear_fwd(m, st->h, in, L->fc1_w, L->fc1_b, n);
    ops_relu_forward(st->h, st->h, (int64_t)n * D->ffn);
    linear_fwd(m, st->core, st->h, L->fc2_w, L->fc2_b, n);
    dec_sub_out(m, st, &L->ln_ffn, n);
  }
  const float *out = st->x;
  if (D->pre_ln) {
    ops_layernorm_forward(st->ln, st->mean, st->rstd, st->x, m->dec_final.w->w.data,
                          m->dec_final.b->w.data, n, d, LN_EPS);
    out = st->ln;
  }
  linear_fwd(m, logprobs, out, m->out_proj, NULL, n);
  int V = D->vocab;
  for (int i = 0; i < n; i++) { /* log_softmax in place */
    float *row = logprobs + (size_t)i * V, mx = row[0];
    for (int j = 1; j < V; j++) mx = row[j] > mx ? row[j] : mx;
    float sum = 0.0f; /* expf in float: the decoder's hot loop (relative error ~1e-5) */
    for (int j = 0; j < V; j++) sum += expf(row[j] - mx);
    float lse = mx + logf(sum);
    for (int j = 0; j < V; j++) row[j] -= lse;
  }
  st->t++;
  m->train = saved_train;
}

/* Gather rows: buf[i] = old[from[i]] for n items of `len` floats each. */
static void permute_rows(float *data, float *tmp, const int *from, int n, size_t len) {
  for (int i = 0; i < n; i++) memcpy(tmp + (size_t)i * len, data + (size_t)from[i] * len, len * sizeof(float));
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
  for (int i = 0; i < n; i++) memcpy(pad + (size_t)i * st->S, st->src_pad + (size_t)from[i] * st->S, (size_t)st->S);
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
  float *bufs[] = {st->x, st->y, st->ln, st->q, st->o, st->core, st->kt, st->vt, st->h,
                   st->mean, st->rstd, st->probs, st->scratch, st->perm};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
  free(st->src_pad);
  free(st);
}
