/* evaluate.c: loss/perplexity over a split and BLEU from decoding it (evaluate.h); for
 * the encoder-only tasks loss and accuracy (the batches go through task.c). */
#include "evaluate.h"

#include <math.h>
#include <string.h>

#include "bleu.h"
#include "metrics.h"
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
  int rank = s->g.world_rank;
  task *tk = &s->task;
  if (tk->kind != MODEL_ARCH_TRANSLATION) with_bleu = 0;
  data_plan plan;
  task_plan(tk, &plan, sp, 0, 0, 0, NULL);
  /* this replica's batches dp_rank, dp_rank + dp, ...; the masked-LM masks of batch b are
   * the same at every evaluation (fixed key); a TP grid runs each of its replica's batches
   * together, pipeline stages forward each batch in turn */
  task_pass pass = {.split = sp,
                    .plan = &plan,
                    .first = s->g.dp_rank,
                    .stride = s->g.dp,
                    .n = common_int((plan.n_batches - s->g.dp_rank + s->g.dp - 1) / s->g.dp),
                    .seed = (uint64_t)s->cfg.seed};
  pipe_sched ps;
  pipe_init(&ps, &s->g, m, s->cfg.pp_timeout);
  double sums[MODEL_NSUMS]; /* the world's totals */
  int rc = task_step_run(tk, m, &ps, &s->g, &pass, sums, err, sizeof err);
  pipe_free(&ps);
  if (rc != C_OK) { /* every rank */
    if (rank == 0) fprintf(stderr, "mpiformer: error: %s\n", err);
    data_plan_free(&plan);
    data_split_close(sp);
    return C_ERR;
  }
  double n = sums[MODEL_SUM_COUNT];
  r->has_accuracy = task_has_accuracy(tk);
  r->accuracy = n > 0 ? sums[MODEL_SUM_CORRECT] / n : 0;
  r->n_correct = (int64_t)sums[MODEL_SUM_CORRECT];
  r->n_tokens = (int64_t)n;
  r->n_sentences = data_split_size(sp);
  r->loss = n > 0 ? sums[MODEL_SUM_LOSS] / n : 0;
  r->nll = n > 0 ? sums[MODEL_SUM_NLL] / n : 0;
  r->ppl = exp(r->nll);
  data_plan_free(&plan);

  if (with_bleu) {
    char **h = NULL;
    int64_t nh = 0;
    model *full = model_replicate(m); /* tp or pp > 1: every rank decodes with a full copy */
    decode_split(full, s->data, sp, max_sentences, o, s->g.world, &h, &nh);
    if (full != m) model_free(full);
    snprintf(err, sizeof err, "%s", data_split_error(sp));
    if (common_agree(s->g.world, err[0] != 0, err, sizeof err)) { /* a source read failed */
      if (rank == 0) fprintf(stderr, "mpiformer: error: %s\n", err);
      decode_free_strings(h, nh);
      data_split_close(sp);
      return C_ERR;
    }
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
  int n =
      snprintf(buf, len,
               "\"split\":\"%s\",\"loss\":%.6f,\"nll\":%.6f,\"ppl\":%.4f,\"tokens\":%lld,"
               "\"sentences\":%lld",
               split, r->loss, r->nll, r->ppl, (long long)r->n_tokens, (long long)r->n_sentences);
  if (r->has_accuracy && n > 0 && (size_t)n < len)
    n += snprintf(buf + n, len - (size_t)n, ",\"accuracy\":%.6f,\"correct\":%lld", r->accuracy,
                  (long long)r->n_correct);
  if (r->has_bleu && n > 0 && (size_t)n < len) {
    char esc[300];
    metrics_json_escape(r->bleu_line, esc, sizeof esc);
    snprintf(buf + n, len - (size_t)n, ",\"bleu\":%.4f,\"bleu_line\":\"%s\",\"decoded\":%lld",
             r->bleu, esc, (long long)r->n_decoded);
  }
}
