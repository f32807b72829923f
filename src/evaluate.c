/* evaluate.c: loss/perplexity over a split and BLEU from decoding it (evaluate.h); for
 * the encoder-only tasks loss and accuracy (the batches go through task.c). */
#include "evaluate.h"

#include <math.h>
#include <string.h>

#include "bleu.h"
#include "metrics.h"
#include "ops.h"
#include "pipe.h"
#include "task.h"

int evaluate_split(session *s, const char *split, int with_bleu, int64_t max_sentences,
                   const decode_opts *o, eval_result *r, char ***hyps, int64_t *n_hyps) {
  memset(r, 0, sizeof *r);
  double t0 = common_now();
  char err[1024];
  data_split *sp = data_split_open(s->data, split, err, sizeof err);
  if (!sp) {
    if (common_rank() == 0) fprintf(stderr, "mpiformer: error: %s\n", err);
    return C_ERR;
  }
  model *m = s->model;
  task tk;
  CHECK(task_init(&tk, &s->cfg, s->data, err, sizeof err) == C_OK, "%s", err);
  if (tk.kind != TASK_TRANSLATION) with_bleu = 0;
  data_plan plan;
  task_plan(&tk, &plan, sp, 0, 0, 0, NULL);
  double sums[TASK_NSUMS] = {0}; /* loss, nll, tokens (sentences, masked), correct */
  int rank = s->g.world_rank;
  /* the masked-LM masks of batch b are the same at every evaluation (fixed key); a TP grid
   * runs each of its replica's batches together and every rank gets the batch totals */
  if (s->g.pp > 1) { /* each batch forward through the stages; the last has the loss */
    pipe_sched ps;
    pipe_init(&ps, &s->g, m, s->cfg.pp_timeout);
    for (int64_t b = s->g.dp_rank; b < plan.n_batches; b += s->g.dp) {
      pipe_batch pb;
      task_pipe_batch(&tk, sp, &plan, b,
                      ops_hash_key((uint64_t)s->cfg.seed, 0x56414c49u /* "VALI" */, (uint64_t)b, 0),
                      &pb);
      pipe_forward(&ps, &pb, sums);
    }
    pipe_free(&ps);
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, sums, TASK_NSUMS, MPI_DOUBLE, MPI_SUM, s->g.pp_comm));
  } else {
    for (int64_t b = s->g.dp_rank; b < plan.n_batches; b += s->g.dp)
      task_run_batch(&tk, m, sp, &plan, b, 0,
                     ops_hash_key((uint64_t)s->cfg.seed, 0x56414c49u /* "VALI" */, (uint64_t)b, 0),
                     sums);
  }
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, sums, TASK_NSUMS, MPI_DOUBLE, MPI_SUM, s->g.dp_comm));
  r->has_accuracy = task_has_accuracy(&tk);
  r->accuracy = sums[2] > 0 ? sums[TASK_CORRECT] / sums[2] : 0;
  r->n_correct = (int64_t)sums[TASK_CORRECT];
  task_free(&tk);
  r->n_tokens = (int64_t)sums[2];
  r->n_sentences = data_split_size(sp);
  r->loss = sums[2] > 0 ? sums[0] / sums[2] : 0;
  r->nll = sums[2] > 0 ? sums[1] / sums[2] : 0;
  r->ppl = exp(r->nll);
  data_plan_free(&plan);

  if (with_bleu) {
    char **h = NULL;
    int64_t nh = 0;
    model *full = model_replicate(m); /* tp or pp > 1: every rank decodes with a full copy */
    decode_split(full, s->data, sp, max_sentences, o, s->g.world, &h, &nh);
    if (full != m) model_free(full);
    double score = 0;
    if (rank == 0) {
      bleu_opts bo;
      bleu_opts_default(&bo);
      bleu_stats st;
      bleu_stats_init(&st, &bo);
      bleu_ctx *ctx = bleu_ctx_create();
      char *ref = common_malloc(1 << 16);
      for (int64_t i = 0; i < nh; i++) {
        data_split_text(sp, 1, i, ref, 1 << 16);
        const char *refs[1] = {ref};
        bleu_add_segment(ctx, &st, &bo, h[i], refs, 1);
      }
      free(ref);
      bleu_ctx_destroy(ctx);
      bleu_result br;
      bleu_score(&st, &bo, &br);
      bleu_format(&br, r->bleu_line, sizeof r->bleu_line);
      score = br.score;
    }
    MPI_CHECK(MPI_Bcast(&score, 1, MPI_DOUBLE, 0, s->g.world));
    MPI_CHECK(MPI_Bcast(r->bleu_line, sizeof r->bleu_line, MPI_CHAR, 0, s->g.world));
    r->bleu = score;
    r->has_bleu = 1;
    r->n_decoded = nh;
    MPI_CHECK(MPI_Bcast(&r->n_decoded, 1, MPI_INT64_T, 0, s->g.world));
    if (hyps && rank == 0) {
      *hyps = h;
      *n_hyps = nh;
    } else {
      decode_free_strings(h, nh);
    }
  }
  data_split_close(sp);
  r->seconds = common_now() - t0;
  return C_OK;
}

void evaluate_json(const eval_result *r, const char *split, char *buf, size_t len) {
  int n = snprintf(buf, len,
                   "\"split\":\"%s\",\"loss\":%.6f,\"nll\":%.6f,\"ppl\":%.4f,\"tokens\":%lld,"
                   "\"sentences\":%lld",
                   split, r->loss, r->nll, r->ppl, (long long)r->n_tokens,
                   (long long)r->n_sentences);
  if (r->has_accuracy && n > 0 && (size_t)n < len)
    n += snprintf(buf + n, len - (size_t)n, ",\"accuracy\":%.6f,\"correct\":%lld", r->accuracy,
                  (long long)r->n_correct);
  if (r->has_bleu && n > 0 && (size_t)n < len) {
    char esc[300];
    metrics_json_escape(r->bleu_line, esc, sizeof esc);
    snprintf(buf + n, len - (size_t)n, ",\"bleu\":%.4f,\"bleu_line\":\"%s\",\"decoded\":%lld", r->bleu,
             esc, (long long)r->n_decoded);
  }
}
