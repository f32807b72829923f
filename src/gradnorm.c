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

#include <math.h>
#include <string.h>

#include "data.h"
#include "ops.h"
#include "session.h"
#include "task.h"

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
  config *c = &s.cfg;
  task *tk = &s.task;
  model_dims dims = s.model->dims;
  dims.dropout = dims.attn_dropout = dims.act_dropout = 0; /* the theory's model has none */
  int L_enc = dims.n_enc, L_dec = dims.n_dec, L = L_enc + L_dec;
  double *sum = common_calloc((size_t)L + 1, sizeof(double)); /* [L]: batches measured */
  model_param **w2 = common_calloc((size_t)L, sizeof(model_param *));
  for (int seed = 0; seed < seeds; seed++) {
    /* a fresh initialization per seed; batches come from the seed's own shuffle */
    model_free(s.model);
    s.model = model_create(&dims, &s.g, (uint64_t)(c->seed + seed));
    for (int l = 0; l < L; l++) {
      char name[96];
      snprintf(name, sizeof name, "%s.layers.%d.fc2.weight", l < L_enc ? "encoder" : "decoder",
               l < L_enc ? l : l - L_enc);
      w2[l] = model_find(s.model, name);
      CHECK(w2[l], "gradnorm: no parameter %s", name);
    }
    data_plan plan;
    task_plan(tk, &plan, train, 1, (uint64_t)(c->seed + seed), 1, NULL);
    for (int b = s.g.dp_rank; b < batches && b < plan.n_batches; b += s.g.dp) { /* per replica */
      double sums[MODEL_NSUMS] = {0};
      model_zero_grad(s.model);
      /* key: the masked-LM masks of (seed, batch); no dropout to key */
      uint64_t key = ops_hash_key((uint64_t)(c->seed + seed), (uint64_t)b, 0, 0);
      task_run_batch(tk, s.model, train, &plan, b, 1, 1, key, sums);
      double *sq = common_calloc((size_t)L, sizeof(double));
      for (int l = 0; l < L; l++) { /* this rank's block of the matrix, then the TP grid's sum */
        int64_t cnt = dmat_local_size(&w2[l]->g);
        for (int64_t i = 0; i < cnt; i++)
          sq[l] += (double)w2[l]->g.data[i] * w2[l]->g.data[i];
      }
      MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, sq, L, MPI_DOUBLE, MPI_SUM, s.g.tp_comm));
      if (s.g.tp_rank == 0) /* one rank per replica adds: the gradient of the mean loss */
        for (int l = 0; l <= L; l++)
          sum[l] += l < L ? sqrt(sq[l]) / sums[MODEL_SUM_COUNT] : 1;
      free(sq);
    }
    data_plan_free(&plan);
  }
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, sum, L + 1, MPI_DOUBLE, MPI_SUM, s.g.world));
  int used = (int)(sum[L] / seeds + 0.5), rank = s.g.world_rank; /* batches per seed */
  if (rank == 0) {
    char path[1100];
    snprintf(path, sizeof path, "%s/gradnorm.jsonl", c->out);
    FILE *f = fopen(path, "a");
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
    if (f) fclose(f);
    fflush(stdout);
  }
  free(sum);
  free(w2);
  data_split_close(train);
  session_close(&s);
  return 0;
}
