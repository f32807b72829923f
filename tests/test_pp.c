/* test_pp.c: pipeline parallelism (alone and combined with TP and DP) computes what one
 * rank computes.
 *
 * For every layout dp x pp x tp of the world size listed below (pp = 2 on 2 ranks; pp = 3
 * on 3, which cuts the 2+2-layer model at the encoder/decoder junction and inside the
 * decoder; on 4: pp = 4 (every boundary kind: inside the encoder, the junction, inside
 * the decoder), pp = 2 x tp = 2 as 1x2 and 2x1, dp = 2 x pp = 2; on 8: dp = 2 x pp = 2 x
 * tp = 2, pp = 4 x tp = 2 and pp = 2 x tp = 4 as 2x2), and for the translation model in
 * both norms (Pre-LN with separate embeddings, Post-LN with all embeddings shared, so
 * the tied table sits on 2 or 3 stages, and Pre-LN with decoder_io sharing), and for the
 * encoder-only archs over 4 encoder layers (the Post-LN sentence-pair classifier, its head
 * on the last stage; the Pre-LN masked-LM, whose output projection is the embedding: tied
 * between the first and the last stage), with all three
 * dropouts on, a pipeline model runs NSTEPS updates of M = 4 micro-batches each through the 1F1B
 * schedule (pipe_run, then pipe_reduce_tied and the DP sum), and a one-rank model (same seed) runs
 * the same dp * M micro-batches as update_freq = dp * M. Micro-batches differ in sentence lengths,
 * so the boundary messages change size. Each update must give:
 *   - the same summed loss within rel 2e-5, the same count (tokens, sentences, masked
 *     positions) and number of correct argmaxes;
 *   - for every parameter this stage holds, this rank's gradient block equal to the same
 *     block of the one-rank gradient: max |g - g_ref| <= 2e-4 * max |g_ref| + 1e-6 (as
 *     test_tp.c: float sums in another order; the tolerance of docs/ARCHITECTURE.md),
 *     and the parameters of other stages hold nothing (empty blocks);
 * then both take the same SGD step. Finally model_replicate gathers the pipeline (and TP)
 * model onto every rank and it equals the one-rank model's parameters.
 * model_stage_plan is also checked: 3 stages over 2+2 layers are [enc0 enc1] [dec0] [dec1].
 */
// NP: 2 3 4 8
#include "harness.h"
#include "model.h"
#include "pipe.h"

#include <stdlib.h>
#include <string.h>

enum { B = 5, SMAX = 8, TMAX = 7, V = 29, NSTEPS = 3, M = 4, MAXMB = 2 * M };

typedef struct mbatch {
  int32_t src[B * SMAX], tin[B * TMAX], tout[B * TMAX];
  int32_t labels[B], mlm_tok[B * SMAX], mlm_tgt[B * SMAX]; /* encoder-only heads */
  int S, T;
  uint64_t key;
} mbatch;

static mbatch mb[MAXMB];

/* micro-batch i of update `step` (i counts over all replicas) */
static void make_batch(mbatch *x, int step, int i) {
  int S = 5 + (i + step) % 3, T = 4 + (i + 2 * step) % 3;
  x->S = S, x->T = T;
  x->key = 1000 + (uint64_t)step * 100 + (uint64_t)i;
  for (int b = 0; b < B; b++) {
    int sl = 2 + (b * 3 + i + step) % (S - 1), tl = 2 + (b * 5 + i) % (T - 1);
    for (int s = 0; s < S; s++) {
      int tok = 4 + (b * 7 + s * 3 + step * 5 + i * 11) % (V - 4);
      x->src[b * S + s] = s < sl - 1 ? tok : s == sl - 1 ? 3 : 0;
      /* masked-LM: every third real position is a target; its input becomes token 1 */
      int sel = s < sl - 1 && (b + s + step + i) % 3 == 0;
      x->mlm_tgt[b * S + s] = sel ? tok : -1;
      x->mlm_tok[b * S + s] = sel ? 1 : x->src[b * S + s];
    }
    x->labels[b] = (b + step + i) % 3;
    for (int t = 0; t < T; t++) {
      int y = 4 + (b * 5 + t * 2 + 1 + step + i * 3) % (V - 4);
      int yprev = 4 + (b * 5 + (t - 1) * 2 + 1 + step + i * 3) % (V - 4);
      x->tin[b * T + t] = t == 0 ? 2 : t < tl ? yprev : 0;
      x->tout[b * T + t] = t < tl - 1 ? y : t == tl - 1 ? 3 : 0;
    }
  }
}

typedef struct load_ctx {
  int first, arch;
} load_ctx;

static void load(void *ctx, int j, pipe_batch *b) {
  const load_ctx *c = ctx;
  const mbatch *x = &mb[c->first + j];
  b->B = B, b->S = x->S, b->T = x->T, b->key = x->key, b->valid = 1;
  b->src = x->src, b->tgt_in = x->tin, b->tgt_out = x->tout;
  if (c->arch == MODEL_ARCH_CLASSIFIER) b->tgt_in = NULL, b->tgt_out = x->labels, b->T = 0;
  if (c->arch == MODEL_ARCH_MLM)
    b->src = x->mlm_tok, b->tgt_in = NULL, b->tgt_out = x->mlm_tgt, b->T = 0;
}

/* loss, nll, count, correct of one-rank micro-batch x (forward and backward) added to a */
static void run_ref(model *m, const mbatch *x, double *a) {
  int64_t correct = 0;
  double loss = 0;
  if (m->dims.arch == MODEL_ARCH_TRANSLATION) {
    a[2] += (double)model_forward_backward(m, x->src, x->tin, x->tout, B, x->S, x->T, 1.0f, 1,
                                           &a[0], &a[1]);
    return;
  }
  if (m->dims.arch == MODEL_ARCH_CLASSIFIER)
    a[2] += (double)model_classify(m, x->src, x->labels, B, x->S, 1.0f, 1, &loss, &correct, NULL);
  else
    a[2] += (double)model_mlm(m, x->mlm_tok, x->mlm_tgt, B, x->S, 1.0f, 1, &loss, &correct);
  a[0] += loss, a[1] += loss, a[3] += (double)correct;
}

static double block_err(const dmat *p, const dmat *r, double *ref_max) {
  double err = 0, mx = 0;
  for (int i = 0; i < p->rows_local; i++)
    for (int j = 0; j < p->cols_local; j++) {
      float a = p->data[(size_t)i * p->ld + j];
      float b = r->data[(size_t)(p->row0 + i) * r->ld + p->col0 + j];
      err = fmax(err, fabs((double)a - b));
    }
  for (int64_t i = 0; i < r->rows; i++)
    for (int64_t j = 0; j < r->cols; j++)
      mx = fmax(mx, fabs((double)r->data[i * r->ld + j]));
  *ref_max = mx;
  return err;
}

static void sgd(model *m) {
  for (int64_t i = 0; i < m->n_floats; i++)
    m->param_mem[i] -= 0.01f * m->grad_mem[i];
}

static void check(const grid *g1, const grid *g, int arch, int pre_ln, int share) {
  int tr = arch == MODEL_ARCH_TRANSLATION;
  model_dims d = {0};
  d.arch = arch;
  d.n_enc = tr ? 2 : 4, d.n_dec = tr ? 2 : 0;
  d.d = 24, d.ffn = 37, d.heads = 12, d.vocab = V;
  d.n_classes = arch == MODEL_ARCH_CLASSIFIER ? 3 : 0;
  d.pre_ln = pre_ln, d.pad = 0, d.bos = 2, d.eos = 3;
  d.dropout = 0.1f, d.attn_dropout = 0.1f, d.act_dropout = 0.1f;
  d.label_smoothing = tr ? 0.1f : 0.0f;
  d.share = share;
  const char *an = tr ? "" : arch == MODEL_ARCH_CLASSIFIER ? " clf" : " mlm";
  model *ref = model_create(&d, g1, 11), *pm = model_create(&d, g, 11);
  pipe_sched ps;
  pipe_init(&ps, g, pm, 60.0);
  char lay[96];
  snprintf(lay, sizeof lay, "dp=%d pp=%d tp=%d (%dx%d)%s %s-LN share=%d", g->dp, g->pp, g->tp,
           g->pr, g->pc, an, pre_ln ? "Pre" : "Post", share);
  int bad_before = test_failed_;
  for (int step = 0; step < NSTEPS; step++) {
    for (int i = 0; i < g->dp * M; i++)
      make_batch(&mb[i], step, i);
    model_zero_grad(ref);
    model_zero_grad(pm);
    double a[4] = {0, 0, 0, 0}, s[4] = {0, 0, 0, 0};
    for (int i = 0; i < g->dp * M; i++) { /* one rank: update_freq = dp * M */
      model_set_mode(ref, 1, mb[i].key);
      run_ref(ref, &mb[i], a);
    }
    load_ctx ctx = {g->dp_rank * M, arch};
    pipe_run(&ps, M, load, &ctx, s);
    pipe_reduce_tied(&ps);
    MPI_Allreduce(MPI_IN_PLACE, s, 4, MPI_DOUBLE, MPI_SUM, g->pp_comm);
    MPI_Allreduce(MPI_IN_PLACE, s, 4, MPI_DOUBLE, MPI_SUM, g->dp_comm);
    MPI_Allreduce(MPI_IN_PLACE, pm->grad_mem, (int)pm->n_floats, MPI_FLOAT, MPI_SUM, g->dp_comm);
    TEST_EXPECT(test_close(s[0], a[0], 2e-5, 1e-6) && s[2] == a[2] && s[3] == a[3],
                "%s step %d: loss %.8g count %g correct %g, one rank %.8g %g %g", lay, step, s[0],
                s[2], s[3], a[0], a[2], a[3]);
    for (int i = 0; i < pm->n_params; i++) {
      model_param *p = &pm->params[i];
      if (!p->pp_owned) {
        TEST_EXPECT(dmat_local_size(&p->w) == 0, "%s: %s belongs to another stage but has a block",
                    lay, p->name);
        continue;
      }
      double mx, err = block_err(&p->g, &ref->params[i].g, &mx);
      TEST_EXPECT(err <= 2e-4 * mx + 1e-6, "%s step %d: grad %s differs by %.3g (max %.3g)", lay,
                  step, p->name, err, mx);
    }
    sgd(ref);
    sgd(pm);
  }
  model *full = model_replicate(pm);
  double worst = 0;
  for (int i = 0; i < full->n_params; i++) {
    dmat *p = &full->params[i].w, *r = &ref->params[i].w;
    for (int64_t k = 0; k < p->rows * p->cols; k++)
      worst = fmax(worst, fabs((double)p->data[k] - r->data[k]));
  }
  TEST_EXPECT(full != pm && worst < 1e-5, "%s: gathered model differs from one rank by %g", lay,
              worst);
  if (full != pm) model_free(full);
  int bad = test_failed_ - bad_before, any = 0;
  MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  int first[9];
  model_stage_plan(&d, g->pp, first);
  char cuts[64] = "";
  for (int k = 1; k < g->pp; k++)
    snprintf(cuts + strlen(cuts), sizeof cuts - strlen(cuts), " %d", first[k]);
  if (g->world_rank == 0)
    printf("%s  %-38s cuts at layer%s: %d updates of %d micro-batches, loss and every gradient\n",
           any ? "FAIL" : "ok  ", lay, cuts, NSTEPS, M);
  pipe_free(&ps);
  model_free(ref);
  model_free(pm);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int size;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  char err[256];
  /* the stage plan: 3 stages over 2+2 layers cut at the junction and inside the decoder */
  model_dims d = {0};
  d.n_enc = 2, d.n_dec = 2, d.d = 24, d.ffn = 37, d.heads = 12, d.vocab = V;
  int first[5];
  TEST_EXPECT(model_stage_plan(&d, 3, first) == C_OK && first[0] == 0 && first[1] == 2 &&
                  first[2] == 3 && first[3] == 4,
              "3 stages over 2+2 layers: %d %d %d %d", first[0], first[1], first[2], first[3]);
  TEST_EXPECT(model_stage_plan(&d, 5, first) == C_ERR, "5 stages over 4 layers accepted");
  grid g1;
  CHECK(grid_create(&g1, 1, 1, 1, 1, err, sizeof err) == C_OK, "%s", err);
  /* layouts {dp, pp, pr, pc} of this world size */
  static const int layouts[][4] = {{1, 2, 1, 1}, {1, 3, 1, 1}, {1, 4, 1, 1},
                                   {1, 2, 1, 2}, {1, 2, 2, 1}, {2, 2, 1, 1},
                                   {2, 2, 1, 2}, {1, 4, 2, 1}, {1, 2, 2, 2}};
  for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++) {
    const int *L = layouts[i];
    if (L[0] * L[1] * L[2] * L[3] != size) continue;
    grid g;
    CHECK(grid_create(&g, L[2] * L[3], L[2], L[3], L[1], err, sizeof err) == C_OK, "%s", err);
    check(&g1, &g, MODEL_ARCH_TRANSLATION, 1, 0);
    check(&g1, &g, MODEL_ARCH_TRANSLATION, 0, 2);
    check(&g1, &g, MODEL_ARCH_TRANSLATION, 1, 1);
    check(&g1, &g, MODEL_ARCH_CLASSIFIER, 0, 0);
    check(&g1, &g, MODEL_ARCH_MLM, 1, 0);
    grid_destroy(&g);
  }
  grid_destroy(&g1);
  int rc = test_finish();
  MPI_Finalize();
  return rc;
}
