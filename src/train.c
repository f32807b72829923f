/* train.c: the training loop (train.h).
 *
 * One update = update_freq (= microbatches) micro-batches on each of the dp replicas
 * (with pp > 1 a replica is pp stages running them in the 1F1B order, pipe.c): step s
 * consumes the dp * update_freq consecutive batches of the epoch's plan starting at the
 * cursor, rank r taking cursor + r * update_freq + j. So dp=2 update_freq=1 and dp=1
 * update_freq=2 see the same batches and give the same losses. Gradients are of the summed
 * loss, summed over ranks, then divided by the global number of target tokens (sentences
 * for the classifier, masked positions for the masked-LM). What differs between tasks (the
 * plan, the model inputs, the forward call) is task.c's; this loop is the same for all.
 *
 * Stops on max_steps / max_epochs / max_time, on a stop request (SIGUSR1/SIGTERM or
 * OUT/.stop, runctl.h: all ranks agree at a step boundary, save, exit TRAIN_EXIT_REQUEUE), or on a
 * non-finite loss or gradient (nan_policy: stop = "diverged at step N", a result, exit 0; skip =
 * drop the update, and diverge after max_skips). A diverged run saves nothing more: its last
 * checkpoint stays the newest (keep_last would otherwise prune a good state for a broken one).
 *
 * The file reads top-down as the loop does: the run's state, set-up and banner,
 * one update, logging, the eval/save schedule, the stop agreement, the end, train_main.
 */
#include "train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "evaluate.h"
#include "gemm.h"
#include "gradsync.h"
#include "metrics.h"
#include "pipe.h"
#include "runctl.h"
#include "session.h"
#include "task.h"
#include "trace.h"

/* Fault injection for tests/test_nan.sh: MPIFORMER_TEST_NAN=N makes the last rank's loss
 * sum NaN at update attempt N, as an overflow on one rank would ("N+": at every attempt
 * from N on). Attempts count like steps, but a skipped update is an attempt too (its
 * retry reads the next batches). Returns 1 when attempt is hit on this rank. */
static int test_nan_hit(const grid *g, int64_t attempt) {
  const char *e = getenv("MPIFORMER_TEST_NAN");
  if (!e || !e[0] || g->world_rank != g->world_size - 1) return 0;
  char *end;
  long long n = strtoll(e, &end, 10);
  return *end == '+' ? attempt >= n : attempt == n;
}

/* ---- the run's state ------------------------------------------------------------------ */

/* Why the loop ended (TRAIN_RUNNING while it runs). */
enum { TRAIN_RUNNING, TRAIN_LIMIT, TRAIN_EPOCHS, TRAIN_SIGNAL, TRAIN_DIVERGED, TRAIN_FAILED };

/* What a checkpoint records of the progress. */
typedef struct train_state {
  int64_t step, epoch, cursor, tokens_seen, skipped;
  double wall; /* training seconds, accumulated across restarts */
} train_state;

/* Everything the loop's functions share. */
typedef struct trainer {
  session s;
  const config *c;
  const grid *g;
  int rank0;
  data_split *split; /* the training split */
  task *tk;          /* the session's */
  metrics mt;
  decode_opts dopt; /* BLEU at evaluation */
  pipe_sched pipe;  /* pp > 1: the 1F1B schedule of each update */
  gradsync sync;    /* dp > 1, grad_overlap = 1: the gradient buckets */
  data_plan plan;   /* the epoch plan_epoch's batches */
  int64_t plan_epoch;
  int per_step; /* batches one update consumes: dp * update_freq */
  train_state t;
  int stop;                                  /* TRAIN_* */
  double lr, gnorm;                          /* of the last update */
  int64_t start_step, attempt;               /* step at start; updates tried (skipped ones too) */
  int64_t last_eval_step;                    /* -1: none yet */
  double wall_at_start;                      /* t.wall at start (the ETA's rate) */
  double interval[MODEL_NSUMS], interval_t0; /* sums since the last log line, its start */
} trainer;

/* ---- set-up, banner, checkpoints and evaluation --------------------------------------- */

static void write_config(const session *s) {
  if (s->g.world_rank != 0) return;
  char path[1100];
  snprintf(path, sizeof path, "%s/config.conf", s->cfg.out);
  FILE *f = fopen(path, "w");
  if (!f) return;
  char *text = config_dump(&s->cfg);
  fprintf(f, "# resolved configuration of this run (mpiformer train)\n%s", text);
  free(text);
  fclose(f);
}

/* Open the session, the training split, the task and metrics.jsonl, and take the
 * progress of a resumed checkpoint. C_ERR (every rank, message printed) on a failure. */
static int train_setup(trainer *tr, int argc, char **argv) {
  memset(tr, 0, sizeof *tr);
  session *s = &tr->s;
  if (session_open(s, argc, argv, NULL, 0, 1, NULL) != C_OK) return C_ERR;
  if (runctl_lock(s->cfg.out, s->g.world) != C_OK) { /* one writer per run folder */
    session_close(s);
    return C_ERR;
  }
  tr->c = &s->cfg;
  tr->g = &s->g;
  tr->rank0 = s->g.world_rank == 0;
  char err[1024];
  tr->split = data_split_open(s->data, "train", err, sizeof err);
  /* valid is opened now to refuse a missing or empty one before training, not at the
   * first validation */
  data_split *valid = tr->split ? data_split_open(s->data, "valid", err, sizeof err) : NULL;
  data_split_close(valid);
  if (!tr->split || !valid) {
    if (tr->rank0) fprintf(stderr, "mpiformer: error: %s\n", err);
    data_split_close(tr->split);
    session_close(s);
    return C_ERR;
  }
  tr->tk = &s->task;
  write_config(s);
  char path[1100];
  snprintf(path, sizeof path, "%s/metrics.jsonl", tr->c->out);
  if (metrics_open(&tr->mt, path, tr->rank0, tr->g->world, err, sizeof err) != C_OK) {
    if (tr->rank0) fprintf(stderr, "mpiformer: error: %s\n", err);
    data_split_close(tr->split);
    session_close(s);
    return C_ERR;
  }
  decode_opts_from_config(&tr->dopt, tr->c);
  train_state *t = &tr->t;
  t->epoch = 1;
  if (s->resumed) {
    t->step = s->meta.step;
    t->epoch = s->meta.epoch > 0 ? s->meta.epoch : 1;
    t->cursor = s->meta.batch_in_epoch;
    t->wall = s->meta.wall_seconds;
    t->tokens_seen = s->meta.tokens_seen;
  }
  tr->start_step = tr->attempt = t->step;
  tr->wall_at_start = t->wall;
  tr->last_eval_step = -1;
  tr->plan_epoch = -1;
  tr->per_step = tr->g->dp * (int)tr->c->update_freq;
  tr->interval_t0 = common_now();
  pipe_init(&tr->pipe, tr->g, s->model, tr->c->pp_timeout);
  if (tr->c->grad_overlap && tr->g->dp > 1) { /* after pipe_init: its hook chains to pipe's */
    gradsync_init(&tr->sync, &s->opt, s->model, (int64_t)(tr->c->grad_bucket_mb * 1048576.0));
    optim_set_sync(&s->opt, &tr->sync);
  }
  trace_open(tr->g->world);
  return C_OK;
}

static void train_teardown(trainer *tr) {
  trace_close();
  optim_set_sync(&tr->s.opt, NULL);
  gradsync_free(&tr->sync);
  pipe_free(&tr->pipe);
  data_plan_free(&tr->plan);
  data_split_close(tr->split);
  metrics_close(&tr->mt);
  session_close(&tr->s);
}

/* The layout, model size and memory per rank (rank 0), and the "start" metrics line. */
static void train_banner(trainer *tr) {
  const session *s = &tr->s;
  const config *c = tr->c;
  if (tr->rank0) {
    char layout[100];
    grid_describe(tr->g, layout, sizeof layout);
    int64_t n_params = 0;
    for (int i = 0; i < s->model->n_params; i++)
      n_params += s->model->params[i].w.rows * s->model->params[i].w.cols;
    printf("mpiformer train | %s | %s-LN %lld+%lld layers d=%lld ffn=%lld heads=%lld | %.2fM "
           "parameters | vocab %d\n",
           layout, c->norm, (long long)c->enc_layers, (long long)s->model->dims.n_dec,
           (long long)c->d_model, (long long)c->ffn_dim, (long long)c->heads, n_params / 1e6,
           data_vocab_size(s->data));
    double pmib = s->model->n_floats * sizeof(float) / 1048576.0, full = 2.0 * pmib;
    printf("per rank: parameters %.1f MiB, gradients %.1f MiB, adam state %.1f MiB (zero=%d; "
           "%.1f MiB without sharding)\n",
           pmib, pmib, optim_state_bytes(&s->opt) / 1048576.0, (int)c->zero, full);
    char mm[400], warn[300];
    gemm_describe(mm, sizeof mm, warn, sizeof warn);
    printf("%s\n", mm);
    if (tr->g->tp > 1)
      printf("tp=%d: the linear layers are ScaLAPACK psgemm in fp32; the attention products are "
             "local: %s\n",
             tr->g->tp, c->precision);
    if (warn[0]) printf("%s\n", warn);
    if (gradsync_buckets(&tr->sync) > 0)
      printf("dp=%d: gradients summed in %d bucket%s of at most about %g MiB during the "
             "backward (grad_overlap=1%s)\n",
             tr->g->dp, gradsync_buckets(&tr->sync), gradsync_buckets(&tr->sync) == 1 ? "" : "s",
             c->grad_bucket_mb, c->zero ? ", reduce-scatter" : "");
    else if (tr->g->dp > 1)
      printf("dp=%d: gradients summed after the backward (grad_overlap=0)\n", tr->g->dp);
    if (s->resumed)
      printf("resumed from %s at step %lld (epoch %lld, batch %lld)\n", s->ckpt_path,
             (long long)tr->t.step, (long long)tr->t.epoch, (long long)tr->t.cursor);
    fflush(stdout);
  }
  metrics_write(&tr->mt, "\"type\":\"start\",\"step\":%lld,\"resumed\":%d,\"world\":%d,\"dp\":%d",
                (long long)tr->t.step, s->resumed, tr->g->world_size, tr->g->dp);
}

static void fill_meta(const session *s, const train_state *t, double lr, ckpt_meta *meta) {
  memset(meta, 0, sizeof *meta);
  meta->step = t->step;
  meta->epoch = t->epoch;
  meta->batch_in_epoch = t->cursor;
  meta->seed = (uint64_t)s->cfg.seed;
  meta->lr = lr;
  meta->wall_seconds = t->wall;
  meta->tokens_seen = t->tokens_seen;
  char layout[100];
  grid_describe(&s->g, layout, sizeof layout);
  snprintf(meta->layout, sizeof meta->layout, "%s zero=%d", layout, (int)s->cfg.zero);
  meta->config_text = config_dump(&s->cfg);
}

/* Save a checkpoint of the current state. Collective on the world. */
static int train_save(trainer *tr) {
  ckpt_meta meta;
  fill_meta(&tr->s, &tr->t, tr->lr, &meta);
  int rc = session_save(&tr->s, &meta);
  free(meta.config_text);
  return rc;
}

/* Validation loss (and BLEU when eval_bleu) into metrics.jsonl and stdout. Collective on
 * the world. */
static void train_eval(trainer *tr) {
  session *s = &tr->s;
  const train_state *t = &tr->t;
  eval_result r;
  tr->last_eval_step = t->step;
  if (evaluate_split(s, "valid", (int)s->cfg.eval_bleu, s->cfg.eval_max_sentences, &tr->dopt, &r,
                     NULL, NULL) != C_OK) {
    tr->stop = TRAIN_FAILED; /* agreed in evaluate_split; rank 0 said why */
    return;
  }
  char json[1024];
  evaluate_json(&r, "valid", json, sizeof json);
  metrics_write(&tr->mt,
                "\"type\":\"valid\",\"step\":%lld,\"epoch\":%lld,\"wall\":%.3f,%s,"
                "\"eval_seconds\":%.2f",
                (long long)t->step, (long long)t->epoch, t->wall, json, r.seconds);
  if (tr->rank0) {
    printf("valid | step %lld | loss %.3f | nll %.3f | ppl %.2f", (long long)t->step, r.loss, r.nll,
           r.ppl);
    if (r.has_accuracy) printf(" | accuracy %.4f", r.accuracy);
    if (r.has_bleu) printf(" | bleu %.2f (%lld sentences)", r.bleu, (long long)r.n_decoded);
    printf(" | %.1fs\n", r.seconds);
    fflush(stdout);
  }
}

/* ---- one update ----------------------------------------------------------------------- */

/* The plan of the current epoch (made when the epoch changes). */
static void train_plan_epoch(trainer *tr) {
  if (tr->plan_epoch == tr->t.epoch) return;
  int64_t n_dropped = 0;
  data_plan_free(&tr->plan);
  task_plan(tr->tk, &tr->plan, tr->split, 1, (uint64_t)tr->c->seed, tr->t.epoch, &n_dropped);
  if (tr->rank0 && tr->plan_epoch < 0 && n_dropped > 0)
    printf("dropped %lld training pairs longer than max_src_len/max_tgt_len\n",
           (long long)n_dropped);
  tr->plan_epoch = tr->t.epoch;
}

/* A non-finite loss or gradient: skip the update, or end the run as diverged. */
static void train_nonfinite(trainer *tr, double step_t0) {
  train_state *t = &tr->t;
  const config *c = tr->c;
  t->skipped++;
  metrics_write(&tr->mt,
                "\"type\":\"nonfinite\",\"step\":%lld,\"epoch\":%lld,\"wall\":%.3f,"
                "\"skipped\":%lld",
                (long long)t->step + 1, (long long)t->epoch, t->wall, (long long)t->skipped);
  if (!strcmp(c->nan_policy, "stop") || t->skipped > c->max_skips) {
    metrics_write(&tr->mt, "\"type\":\"diverged\",\"step\":%lld,\"epoch\":%lld,\"wall\":%.3f",
                  (long long)t->step + 1, (long long)t->epoch, t->wall);
    if (tr->rank0) {
      printf("diverged at step %lld: the loss or the gradient is not finite (nan_policy=%s, "
             "%lld non-finite steps); no checkpoint written for it: the newest one, if any, "
             "is an earlier step's\n",
             (long long)t->step + 1, c->nan_policy, (long long)t->skipped);
      fflush(stdout);
    }
    tr->stop = TRAIN_DIVERGED;
    return;
  }
  if (tr->rank0)
    printf("step %lld: non-finite loss or gradient, update skipped\n", (long long)t->step + 1);
  t->wall += common_now() - step_t0;
}

/* One update: the micro-batches forward and backward, the gradients summed over the
 * ranks, clipped and applied. Returns 1 when applied, 0 when skipped (non-finite; the
 * run may then have diverged). Collective on the world. */
static int train_update(trainer *tr) {
  const config *c = tr->c;
  const grid *g = tr->g;
  session *s = &tr->s;
  train_state *t = &tr->t;
  double step_t0 = common_now();
  model_zero_grad(s->model);
  /* this replica's update_freq batches from the cursor, in the 1F1B order with pp > 1 */
  task_pass pass = {.split = tr->split,
                    .plan = &tr->plan,
                    .first = t->cursor + (int64_t)g->dp_rank * c->update_freq,
                    .stride = 1,
                    .n = (int)c->update_freq,
                    .dropout = 1,
                    .backward = 1,
                    .seed = (uint64_t)c->seed,
                    .step = t->step + 1,
                    .epoch = t->epoch,
                    .poison = test_nan_hit(g, ++tr->attempt)};
  /* the buckets launch during the last backward of those that have a batch */
  int64_t left = tr->plan.n_batches - pass.first;
  gradsync_arm(&tr->sync, (int)(left < pass.n ? (left > 0 ? left : 0) : pass.n));
  double sums[MODEL_NSUMS]; /* the world's totals: the same on every rank */
  char err[600];
  if (task_step_run(tr->tk, s->model, &tr->pipe, g, &pass, sums, err, sizeof err) != C_OK) {
    gradsync_finish(&tr->sync); /* nothing left in flight (every replica is here) */
    if (tr->rank0) fprintf(stderr, "mpiformer: error: %s; no update made\n", err);
    tr->stop = TRAIN_FAILED; /* agreed: every rank got C_ERR */
    return 0;
  }
  t->cursor += tr->per_step;
  double count = sums[MODEL_SUM_COUNT];
  float scale = count > 0 ? (float)(1.0 / count) : 0.0f;
  double gnorm = optim_sync_grads(&s->opt, s->model->grad_mem, scale);
  if (!(isfinite(sums[MODEL_SUM_LOSS]) && isfinite(gnorm))) {
    train_nonfinite(tr, step_t0);
    return 0;
  }
  float clip = 1.0f;
  if (c->clip_norm > 0 && gnorm > c->clip_norm) clip = (float)(c->clip_norm / (gnorm + 1e-6));
  tr->lr = optim_lr(c, t->step + 1, t->epoch);
  optim_update(&s->opt, s->model->param_mem, s->model->grad_mem, tr->lr, clip);
  t->step++;
  t->tokens_seen += (int64_t)count;
  t->wall += common_now() - step_t0;
  tr->gnorm = gnorm;
  for (int i = 0; i < MODEL_NSUMS; i++)
    tr->interval[i] += sums[i];
  return 1;
}

/* ---- logging -------------------------------------------------------------------------- */

/* Seconds left until the first limit (max_time, max_steps, else max_epochs) at the rate of
 * this process's steps so far; -1 when unknown. */
static double train_eta(const trainer *tr) {
  const config *c = tr->c;
  const train_state *t = &tr->t;
  double per_step_s = (t->wall - tr->wall_at_start) / (double)(t->step - tr->start_step);
  double left = -1;
  if (c->max_time > 0) left = c->max_time - t->wall;
  if (c->max_steps > 0) {
    double l2 = per_step_s * (double)(c->max_steps - t->step);
    left = left < 0 || l2 < left ? l2 : left;
  }
  if (left < 0 && c->max_epochs > 0)
    left = per_step_s * ((double)(tr->plan.n_batches - t->cursor) / tr->per_step +
                         (double)(c->max_epochs - t->epoch) * tr->plan.n_batches / tr->per_step);
  return left;
}

/* Every log_interval steps: the interval's means into metrics.jsonl and a line on stdout. */
static void train_log(trainer *tr) {
  const train_state *t = &tr->t;
  if (t->step % tr->c->log_interval != 0) return;
  const double *iv = tr->interval;
  double n = iv[MODEL_SUM_COUNT], now = common_now(), tps = n / (now - tr->interval_t0);
  double loss = iv[MODEL_SUM_LOSS] / n, nll = iv[MODEL_SUM_NLL] / n;
  char acc[64] = "";
  if (task_has_accuracy(tr->tk))
    snprintf(acc, sizeof acc, ",\"accuracy\":%.6f", n > 0 ? iv[MODEL_SUM_CORRECT] / n : 0.0);
  metrics_write(&tr->mt,
                "\"type\":\"train\",\"step\":%lld,\"epoch\":%lld,\"wall\":%.3f,\"loss\":%.6f,"
                "\"nll\":%.6f,\"ppl\":%.4f,\"lr\":%.6e,\"gnorm\":%.6f,\"tokens_per_s\":%.1f,"
                "\"tokens\":%lld%s",
                (long long)t->step, (long long)t->epoch, t->wall, loss, nll, exp(nll), tr->lr,
                tr->gnorm, tps, (long long)t->tokens_seen, acc);
  if (tr->rank0) {
    double left = train_eta(tr);
    char el[32], lf[32];
    metrics_format_duration(t->wall, el, sizeof el);
    metrics_format_duration(left, lf, sizeof lf);
    printf("step %6lld | epoch %3lld | loss %.3f | nll %.3f | lr %.2e | gnorm %.3f | %7.0f tok/s "
           "| %s elapsed | %s left\n",
           (long long)t->step, (long long)t->epoch, loss, nll, tr->lr, tr->gnorm, tps, el,
           left < 0 ? "?" : lf);
    fflush(stdout);
  }
  memset(tr->interval, 0, sizeof tr->interval);
  tr->interval_t0 = common_now();
}

/* ---- the eval/save schedule ----------------------------------------------------------- */

static void train_save_or_fail(trainer *tr) {
  if (train_save(tr) != C_OK) tr->stop = TRAIN_FAILED;
}

/* An evaluation; with save_interval = 0 a checkpoint goes with it. */
static void train_eval_and_save(trainer *tr) {
  train_eval(tr);
  if (tr->stop == TRAIN_RUNNING && tr->c->save_interval == 0) train_save_or_fail(tr);
}

/* After an update: evaluate every eval_interval steps, save every save_interval. */
static void train_schedule(trainer *tr) {
  const config *c = tr->c;
  int64_t step = tr->t.step;
  if (metrics_failed(&tr->mt)) { /* agreed when the log line failed: stop before a save */
    tr->stop = TRAIN_FAILED;
    return;
  }
  if (c->eval_interval > 0 && step % c->eval_interval == 0) train_eval_and_save(tr);
  if (tr->stop == TRAIN_RUNNING && c->save_interval > 0 && step % c->save_interval == 0)
    train_save_or_fail(tr);
}

/* At an epoch's end: evaluate when eval_interval = 0; stop at max_epochs, else start the
 * next epoch. */
static void train_epoch_end(trainer *tr) {
  const config *c = tr->c;
  if (c->eval_interval == 0) train_eval_and_save(tr);
  if (tr->stop != TRAIN_RUNNING) return;
  if (c->max_epochs > 0 && tr->t.epoch >= c->max_epochs) {
    tr->stop = TRAIN_EPOCHS;
    return;
  }
  tr->t.epoch++;
  tr->t.cursor = 0;
}

/* ---- the stop agreement --------------------------------------------------------------- */

/* 1 when max_steps or max_time is reached (by this rank's clock). */
static int train_at_limit(const trainer *tr) {
  const config *c = tr->c;
  return (c->max_steps > 0 && tr->t.step >= c->max_steps) ||
         (c->max_time > 0 && tr->t.wall >= c->max_time);
}

/* Stop decisions must agree: a signal reaches the ranks at different moments, and each
 * rank's wall clock is its own (max_time). One all-reduce decides for all. Collective on
 * the world. */
static void train_agree_stop(trainer *tr) {
  int flags[2] = {runctl_stop_requested(tr->rank0 ? tr->c->out : NULL), train_at_limit(tr)};
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, flags, 2, MPI_INT, MPI_MAX, tr->g->world));
  if (flags[0])
    tr->stop = TRAIN_SIGNAL;
  else if (flags[1])
    tr->stop = TRAIN_LIMIT;
}

/* ---- the end -------------------------------------------------------------------------- */

/* What follows the loop: a signal saves and asks for a requeue; a run that made steps and
 * reached its limit evaluates (unless it just did), saves and writes "end". Returns the
 * exit status. */
static int train_finish(trainer *tr) {
  const train_state *t = &tr->t;
  int rc = 0;
  switch (tr->stop) {
  case TRAIN_FAILED:
    return 1;
  case TRAIN_DIVERGED:
    return 0;
  case TRAIN_SIGNAL:
    if (tr->rank0)
      printf("stop requested by %s: saving a checkpoint at step %lld\n", runctl_stop_reason(),
             (long long)t->step);
    rc = train_save(tr) != C_OK ? 1 : TRAIN_EXIT_REQUEUE;
    metrics_write(&tr->mt, "\"type\":\"preempted\",\"step\":%lld,\"wall\":%.3f", (long long)t->step,
                  t->wall);
    return rc;
  default: /* TRAIN_LIMIT, TRAIN_EPOCHS */
    if (t->step == tr->start_step) return 0;
    if (tr->stop == TRAIN_LIMIT && tr->last_eval_step != t->step) train_eval(tr);
    if (tr->stop == TRAIN_FAILED) return 1;
    if (train_save(tr) != C_OK) rc = 1;
    metrics_write(&tr->mt, "\"type\":\"end\",\"step\":%lld,\"epoch\":%lld,\"wall\":%.3f",
                  (long long)t->step, (long long)t->epoch, t->wall);
    return rc;
  }
}

int train_main(int argc, char **argv) {
  /* the SIGUSR1/SIGTERM handlers are in place since main's first line (runctl_init) */
  trainer tr;
  if (train_setup(&tr, argc, argv) != C_OK) return 1;
  train_banner(&tr);
  /* a run resumed at its limit (or signalled before its first step) makes no step */
  if (train_at_limit(&tr)) tr.stop = TRAIN_LIMIT;
  while (tr.stop == TRAIN_RUNNING) {
    if (metrics_failed(&tr.mt)) { /* agreed on every rank; rank 0 said why */
      tr.stop = TRAIN_FAILED;
      break;
    }
    train_plan_epoch(&tr);
    if (tr.t.cursor >= tr.plan.n_batches) {
      train_epoch_end(&tr);
      continue;
    }
    if (!train_update(&tr)) continue; /* skipped, or diverged */
    train_log(&tr);
    train_schedule(&tr);
    if (tr.stop == TRAIN_RUNNING) train_agree_stop(&tr);
  }
  int rc = train_finish(&tr);
  if (rc == 0 && metrics_failed(&tr.mt)) rc = 1;
  train_teardown(&tr);
  return rc;
}
