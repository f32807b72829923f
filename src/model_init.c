/* model_init.c: the model's parameter registry and lifecycle: dims from the config, the
 * registry with fairseq names in checkpoint order, the pipeline stage plan and which
 * stage owns which parameter, the flat parameter and gradient buffers, the layout-
 * independent initialization, model_free, and model_replicate (gather the whole model
 * onto one rank for decoding).
 *
 * Not here: activations (model_arena.c), forward and backward (model_blocks.c,
 * model_stage.c, model_heads.c), incremental decoding (model_decode.c).
 */
#include "model_internal.h"

#include <math.h>
#include <string.h>

#include "gemm.h"
#include "ops.h"

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
  d->share = !strcmp(c->share_embeddings, "all")          ? 2
             : !strcmp(c->share_embeddings, "decoder_io") ? 1
                                                          : 0;
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
  model_param *w =
      reg_add(rb, name, out, in, 0, MODEL_INIT_NORMAL, sqrtf(2.0f / (float)(in + out)));
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
      if (p->init == MODEL_INIT_ONE)
        v = 1.0f;
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
  double *cost = common_calloc((size_t)n, sizeof(double)),
         *pre = common_calloc((size_t)n + 1, sizeof(double));
  for (int l = 0; l < n; l++)
    cost[l] = l < nE ? 4 * d * d + 2 * d * F : 8 * d * d + 2 * d * F;
  cost[0] += d;                        /* encoder embedding */
  if (D->n_dec > 0) cost[nE] += d;     /* decoder embedding */
  cost[n - 1] += (double)D->vocab * d; /* output projection (or the MLM head) */
  for (int l = 0; l < n; l++)
    pre[l + 1] = pre[l] + cost[l];
  /* best[k][i]: the smallest largest-stage cost of the first i layers in k stages */
  double *best = common_calloc((size_t)(pp + 1) * (n + 1), sizeof(double));
  int *cut = common_calloc((size_t)(pp + 1) * (n + 1), sizeof(int));
#define BEST(k, i) best[(size_t)(k) * (n + 1) + (i)]
#define CUT(k, i) cut[(size_t)(k) * (n + 1) + (i)]
  for (int i = 0; i <= n; i++)
    BEST(1, i) = pre[i], CUT(1, i) = 0;
  for (int k = 2; k <= pp; k++)
    for (int i = k; i <= n; i++) {
      BEST(k, i) = -1;
      for (int j = k - 1; j < i; j++) { /* stage k holds layers [j, i) */
        double v = BEST(k - 1, j) > pre[i] - pre[j] ? BEST(k - 1, j) : pre[i] - pre[j];
        if (BEST(k, i) < 0 || v < BEST(k, i)) BEST(k, i) = v, CUT(k, i) = j;
      }
    }
  first[pp] = n;
  for (int k = pp; k >= 1; k--)
    first[k - 1] = CUT(k, first[k]);
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
    for (int j = 0; j < i; j++)
      seen |= st[j] == st[i];
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
  m->dl = common_int(dmat_block_count(d, pcol, pc)),
  m->d0 = common_int(dmat_block_start(d, pcol, pc));
  m->hl = D->heads / pc, m->h0 = pcol * m->hl;
  m->fl = common_int(dmat_block_count(F, pcol, pc)),
  m->f0 = common_int(dmat_block_start(F, pcol, pc));
  m->vl = common_int(dmat_block_count(V, pcol, pc)),
  m->v0 = common_int(dmat_block_start(V, pcol, pc));
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
  m->dec_l0 = CLAMP(first[stage] - nE, D->n_dec),
  m->dec_l1 = CLAMP(first[stage + 1] - nE, D->n_dec);
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
    m->dec_embed =
        share == 2 ? m->enc_embed
                   : reg_add(&rb, "decoder.embed_tokens.weight", V, d, 0, MODEL_INIT_EMBED, estd);
    int st_io[2] = {st_dec0, last};
    if (share == 1) set_owners(m->dec_embed, stage, st_io, 2);
    for (int i = 0; i < D->n_dec; i++) {
      rb.own = i >= m->dec_l0 && i < m->dec_l1;
      reg_layer(&rb, &m->dec[i], "decoder", i, 1, d, F);
    }
    rb.own = stage == last;
    if (D->pre_ln) m->dec_final = reg_ln(&rb, "decoder.layer_norm", d);
    m->out_proj =
        share ? m->dec_embed
              : reg_add(&rb, "decoder.output_projection.weight", V, d, 0, MODEL_INIT_EMBED, estd);
  } else if (D->arch == MODEL_ARCH_CLASSIFIER) {
    m->cls_dense_w = reg_linear(&rb, "classification_heads.sentence_classification_head.dense", d,
                                d, &m->cls_dense_b);
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
  if (pr * pc == 1) /* bf16: the weights' rounded copy (tp > 1: psgemm, fp32) */
    gemm_shadow_add(m->param_mem, m->n_floats);
  model_use_slot(m, 0);
  return m;
}

void model_free(model *m) {
  if (!m) return;
  model_acts_free(m);
  gemm_shadow_remove(m->param_mem);
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

void model_zero_grad(model *m) {
  memset(m->grad_mem, 0, (size_t)m->n_floats * sizeof(float));
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
  int *counts = common_calloc((size_t)g->pc, sizeof(int)),
      *displs = common_calloc((size_t)g->pc, sizeof(int));
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
      MPI_CHECK(
          MPI_Bcast(q->w.data, common_int(q->w.rows * q->w.cols), MPI_FLOAT, owner[i], g->pp_comm));
  }
  free(owner);
  free(counts);
  free(displs);
  gemm_shadow_refresh(r->param_mem);
  return r;
}
