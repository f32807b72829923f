/* gradnorm.c: gradient norms at initialization (gradnorm.h).
 *
 * Xiong et al. (2020), Figure 3: the expected gradient of W^{2,l} (each layer's second
 * FFN weight) at initialization grows with l for Post-LN and stays flat for Pre-LN; the
 * last layer's shrinks with depth L for Pre-LN only. We measure ||dL/dW2||_F with the
 * model of docs/MODEL.md, Xavier initialization, no dropout, on real training batches:
 * the gradient of each batch's mean loss, averaged over batches and seeds. Every arch
 * works through the task interface (task.h): translation (encoder and decoder layers), and
 * the encoder-only classifier and masked-LM (encoder layers; the loss is averaged over
 * sentences or masked positions), so the encoder's shape can be seen without the decoder.
 */
#include "gradnorm.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "data.h"
#include "ops.h"
#include "session.h"
#include "task.h"

/* The squared Frobenius norm of each layer's fc2 weight gradient, summed over the TP grid
 * (sq has L entries). Collective on the TP grid. */
static void w2_sq_norms(model_param **w2, int L, const grid *g, double *sq) {
  for (int l = 0; l < L; l++) { /* this rank's block of the matrix, then the TP grid's sum */
    sq[l] = 0;
    int64_t cnt = dmat_local_size(&w2[l]->g);
    for (int64_t i = 0; i < cnt; i++)
      sq[l] += (double)w2[l]->g.data[i] * w2[l]->g.data[i];
  }
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, sq, L, MPI_DOUBLE, MPI_SUM, g->tp_comm));
}

/* sum[l] (l < L) += ||dL/dW2_l|| of each batch's mean loss, sum[L] += the batches measured,
 * over `seeds` fresh initializations and the first `batches` batches of each seed's plan
 * (the replicas split them). s->model is replaced per seed. Collective on the world. */
static void gradnorm_measure(session *s, data_split *train, const model_dims *dims, int seeds,
                             int batches, double *sum) {
  const config *c = &s->cfg;
  int L_enc = dims->n_enc, L = dims->n_enc + dims->n_dec;
  model_param **w2 = common_calloc((size_t)L, sizeof(model_param *));
  double *sq = common_calloc((size_t)L, sizeof(double));
  for (int seed = 0; seed < seeds; seed++) {
    /* a fresh initialization per seed; batches come from the seed's own shuffle */
    model_free(s->model);
    s->model = model_create(dims, &s->g, (uint64_t)(c->seed + seed));
    for (int l = 0; l < L; l++) {
      char name[96];
      snprintf(name, sizeof name, "%s.layers.%d.fc2.weight", l < L_enc ? "encoder" : "decoder",
               l < L_enc ? l : l - L_enc);
      w2[l] = model_find(s->model, name);
      CHECK(w2[l], "gradnorm: no parameter %s", name);
    }
    data_plan plan;
    task_plan(&s->task, &plan, train, 1, (uint64_t)(c->seed + seed), 1, NULL);
    for (int b = s->g.dp_rank; b < batches && b < plan.n_batches; b += s->g.dp) { /* replica */
      double sums[MODEL_NSUMS] = {0};
      model_zero_grad(s->model);
      /* key: the masked-LM masks of (seed, batch); no dropout to key */
      uint64_t key = ops_hash_key((uint64_t)(c->seed + seed), (uint64_t)b, 0, 0);
      task_run_batch(&s->task, s->model, train, &plan, b, 1, 1, key, sums);
      w2_sq_norms(w2, L, &s->g, sq);
      if (s->g.tp_rank == 0) /* one rank per replica adds: the gradient of the mean loss */
        for (int l = 0; l <= L; l++)
          sum[l] += l < L ? sqrt(sq[l]) / sums[MODEL_SUM_COUNT] : 1;
    }
    data_plan_free(&plan);
  }
  free(sq);
  free(w2);
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, sum, L + 1, MPI_DOUBLE, MPI_SUM, s->g.world));
}

/* One JSON line per layer on stdout and appended to OUT/gradnorm.jsonl. Rank 0 only. */
static void gradnorm_print(const session *s, const model_dims *dims, int seeds, const double *sum) {
  const config *c = &s->cfg;
  int L_enc = dims->n_enc, L_dec = dims->n_dec, L = L_enc + L_dec;
  int used = (int)(sum[L] / seeds + 0.5); /* batches per seed */
  char path[1100];
  snprintf(path, sizeof path, "%s/gradnorm.jsonl", c->out);
  FILE *f = fopen(path, "a");
  if (!f) fprintf(stderr, "mpiformer: warning: cannot append to %s: %s\n", path, strerror(errno));
  for (int l = 0; l < L; l++) {
    char line[1024];
    snprintf(line, sizeof line,
             "{\"type\":\"gradnorm\",\"arch\":\"%s\",\"norm\":\"%s\",\"enc_layers\":%d,\"dec_"
             "layers\":%d,"
             "\"d_model\":%lld,\"side\":\"%s\",\"layer\":%d,\"grad_norm_fc2\":%.6e,\"seeds\":%d,"
             "\"batches\":%d}",
             c->arch, c->norm, L_enc, L_dec, (long long)c->d_model,
             l < L_enc ? "encoder" : "decoder", (l < L_enc ? l : l - L_enc) + 1, sum[l] / sum[L],
             seeds, used);
    puts(line);
    if (f) fprintf(f, "%s\n", line);
  }
  if (f && fclose(f) != 0)
    fprintf(stderr, "mpiformer: warning: writing %s failed: %s\n", path, strerror(errno));
  fflush(stdout);
}

int gradnorm_main(int argc, char **argv) {
  session_extra ex[2] = {{"seeds", "10", 0}, {"batches", "4", 0}};
  char **rest = common_calloc((size_t)argc + 1, sizeof(char *));
  int n_rest = session_take_extras(argc, argv, ex, 2, rest);
  int seeds = atoi(ex[0].value), batches = atoi(ex[1].value);
  if (seeds < 1 || batches < 1) {
    if (common_rank() == 0) fprintf(stderr, "mpiformer: error: seeds and batches must be >= 1\n");
    free(rest);
    return 1;
  }
  session s;
  if (session_open(&s, n_rest, rest, NULL, 0, 0, "none") != C_OK) {
    free(rest);
    return 1;
  }
  free(rest);
  if (s.g.pp > 1) { /* every rank decides alike: pp comes from the same arguments */
    session_say(&s, "mpiformer: error: gradnorm runs each batch whole on a TP grid: use pp=1 "
                    "(dp and tp work)");
    session_close(&s);
    return 1;
  }
  char err[1024];
  data_split *train = data_split_open(s.data, "train", err, sizeof err);
  if (!train) {
    session_say(&s, "mpiformer: error: %s", err);
    session_close(&s);
    return 1;
  }
  model_dims dims = s.model->dims;
  dims.dropout = dims.attn_dropout = dims.act_dropout = 0; /* the theory's model has none */
  double *sum = common_calloc((size_t)(dims.n_enc + dims.n_dec) + 1, sizeof(double));
  gradnorm_measure(&s, train, &dims, seeds, batches, sum);
  snprintf(err, sizeof err, "%s", data_split_error(train)); /* a batch read that failed */
  int rc = 0;
  if (common_agree(s.g.world, err[0] != 0, err, sizeof err)) {
    session_say(&s, "mpiformer: error: %s", err);
    rc = 1;
  } else if (s.g.world_rank == 0) {
    gradnorm_print(&s, &dims, seeds, sum);
  }
  free(sum);
  data_split_close(train);
  session_close(&s);
  return rc;
}
