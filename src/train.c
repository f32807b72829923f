/* train.c: the training loop (train.h).
 *
 * One update = update_freq (= microbatches) micro-batches on each of the dp replicas
 * (with pp > 1 a replica is pp stages running them in the 1F1B order, pipe.c): step s consumes the
 * dp * update_freq consecutive batches of the epoch's plan starting at the cursor, rank
 * r taking cursor + r * update_freq + j. So dp=2 update_freq=1 and dp=1 update_freq=2
 * see the same batches and give the same losses. Gradients are of the summed loss,
 * summed over ranks, then divided by the global number of target tokens (sentences for
 * the classifier, masked positions for the masked-LM). What differs between tasks (the
 * plan, the model inputs, the forward call) is task.c's; this loop is the same for all.
 *
 * Stops on max_steps / max_epochs / max_time, on SIGUSR1/SIGTERM (all ranks agree at a
 * step boundary, save, exit TRAIN_EXIT_REQUEUE), or on a non-finite loss or gradient
 * (nan_policy: stop = "diverged at step N", a result, exit 0; skip = drop the update, and
 * diverge after max_skips). A diverged run saves nothing more: its last checkpoint stays
 * the newest (keep_last would otherwise prune a good state for a broken one).
 */
#include "train.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "evaluate.h"
#include "metrics.h"
#include "ops.h"
#include "pipe.h"
#include "runctl.h"
#include "session.h"
#include "task.h"

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

typedef struct train_state {
  int64_t step, epoch, cursor, tokens_seen, skipped;
  double wall;           /* training seconds, accumulated across restarts */
  double best_bleu;
} train_state;

/* pp > 1: what pipe_run's loader needs to hand out micro-batch j of this replica. */
typedef struct train_loader {
  task *tk;
  data_split *split;
  const data_plan *plan;
  int64_t first, step, epoch; /* first batch of this replica's micro-batches */
  uint64_t seed;
} train_loader;

static void train_load(void *ctx, int j, pipe_batch *b) {
  train_loader *x = ctx;
  int64_t bi = x->first + j;
  memset(b, 0, sizeof *b);
  if (bi >= x->plan->n_batches) return; /* past the epoch's end: skipped by every stage */
  task_pipe_batch(x->tk, x->split, x->plan, bi,
                  ops_hash_key(x->seed, (uint64_t)x->step + 1, (uint64_t)x->epoch, (uint64_t)bi), b);
}

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

static int save(session *s, const train_state *t, double lr) {
  ckpt_meta meta;
  fill_meta(s, t, lr, &meta);
  int rc = session_save(s, &meta);
  free(meta.config_text);
  return rc;
}

static void run_eval(session *s, metrics *mt, const train_state *t, const decode_opts *dopt,
                     int64_t *last_eval_step) {
  eval_result r;
  *last_eval_step = t->step;
  if (evaluate_split(s, "valid", (int)s->cfg.eval_bleu, s->cfg.eval_max_sentences, dopt, &r, NULL,
                     NULL) != C_OK)
    return;
  char json[1024];
  evaluate_json(&r, "valid", json, sizeof json);
  metrics_write(mt, "\"type\":\"valid\",\"step\":%lld,\"epoch\":%lld,\"wall\":%.3f,%s,\"eval_seconds\":%.2f",
                (long long)t->step, (long long)t->epoch, t->wall, json, r.seconds);
  if (s->g.world_rank == 0) {
    printf("valid | step %lld | loss %.3f | nll %.3f | ppl %.2f", (long long)t->step, r.loss, r.nll,
           r.ppl);
    if (r.has_accuracy) printf(" | accuracy %.4f", r.accuracy);
    if (r.has_bleu) printf(" | bleu %.2f (%lld sentences)", r.bleu, (long long)r.n_decoded);
    printf(" | %.1fs\n", r.seconds);
    fflush(stdout);
  }
}

int train_main(int argc, char **argv) {
  /* SIGUSR1/SIGTERM handlers: runctl_init, main's first line (a signal while MPI, the
   * data or a checkpoint load must not kill a rank); the first step boundary saves */
  session s;
  if (session_open(&s, argc, argv, NULL, 0, 1, NULL) != C_OK) return 1;
  if (runctl_lock(s.cfg.out, s.g.world) != C_OK) { /* one writer per run folder */
    session_close(&s);
    return 1;
  }
  config *c = &s.cfg;
  grid *g = &s.g;
  int rank0 = g->world_rank == 0;
  char err[1024];
  data_split *train = data_split_open(s.data, "train", err, sizeof err);
  if (!train) {
    if (rank0) fprintf(stderr, "mpiformer: error: %s\n", err);
    session_close(&s);
    return 1;
  }
  task tk;
  if (task_init(&tk, c, s.data, err, sizeof err) != C_OK) { /* session_open checked it */
    data_split_close(train);
    session_close(&s);
    return 1;
  }
  write_config(&s);
  metrics mt;
  char path[1100];
  snprintf(path, sizeof path, "%s/metrics.jsonl", c->out);
  if (common_any(g->world, metrics_open(&mt, path, rank0) != 0)) {
    if (rank0) fprintf(stderr, "mpiformer: error: cannot write %s\n", path);
    session_close(&s);
    return 1;
  }
  decode_opts dopt;
  decode_opts_from_config(&dopt, c);

  train_state t = {0};
  t.epoch = 1;
  if (s.resumed) {
    t.step = s.meta.step;
    t.epoch = s.meta.epoch > 0 ? s.meta.epoch : 1;
    t.cursor = s.meta.batch_in_epoch;
    t.wall = s.meta.wall_seconds;
    t.tokens_seen = s.meta.tokens_seen;
  }
  if (rank0) {
    char layout[100];
    grid_describe(g, layout, sizeof layout);
    int64_t n_params = 0;
    for (int i = 0; i < s.model->n_params; i++)
      n_params += s.model->params[i].w.rows * s.model->params[i].w.cols;
    printf("mpiformer train | %s | %s-LN %lld+%lld layers d=%lld ffn=%lld heads=%lld | %.2fM "
           "parameters | vocab %d\n",
           layout, c->norm, (long long)c->enc_layers, (long long)s.model->dims.n_dec,
           (long long)c->d_model, (long long)c->ffn_dim, (long long)c->heads, n_params / 1e6,
           data_vocab_size(s.data));
    double pmib = s.model->n_floats * sizeof(float) / 1048576.0, full = 2.0 * pmib;
    printf("per rank: parameters %.1f MiB, gradients %.1f MiB, adam state %.1f MiB (zero=%d; "
           "%.1f MiB without sharding)\n",
           pmib, pmib, optim_state_bytes(&s.opt) / 1048576.0, (int)c->zero, full);
    if (s.resumed)
      printf("resumed from %s at step %lld (epoch %lld, batch %lld)\n", s.ckpt_path,
             (long long)t.step, (long long)t.epoch, (long long)t.cursor);
    fflush(stdout);
  }
  metrics_write(&mt, "\"type\":\"start\",\"step\":%lld,\"resumed\":%d,\"world\":%d,\"dp\":%d",
                (long long)t.step, s.resumed, g->world_size, g->dp);

  pipe_sched pipe; /* pp > 1: the 1F1B schedule of each update */
  pipe_init(&pipe, g, s.model, c->pp_timeout);
  data_plan plan = {0};
  int64_t plan_epoch = -1, n_dropped = 0;
  int per_step = g->dp * (int)c->update_freq;
  double lr = 0, interval_loss = 0, interval_nll = 0, interval_tok = 0, interval_t0 = common_now();
  double interval_correct = 0;
  double run_t0 = common_now(), wall_at_start = t.wall, last_gnorm = 0;
  int exit_code = 0, done = 0, stopped_by_signal = 0, diverged = 0;
  int64_t start_step = t.step, last_eval_step = -1, attempt = t.step;

  /* a run resumed at its limit (or signalled before its first step) makes no step */
  if ((c->max_steps > 0 && t.step >= c->max_steps) || (c->max_time > 0 && t.wall >= c->max_time))
    done = 1;
  while (!done) {
    if (plan_epoch != t.epoch) {
      data_plan_free(&plan);
      task_plan(&tk, &plan, train, 1, (uint64_t)c->seed, t.epoch, &n_dropped);
      if (rank0 && plan_epoch < 0 && n_dropped > 0)
        printf("dropped %lld training pairs longer than max_src_len/max_tgt_len\n",
               (long long)n_dropped);
      plan_epoch = t.epoch;
    }
    if (t.cursor >= plan.n_batches) { /* epoch end */
      if (c->eval_interval == 0) {
        run_eval(&s, &mt, &t, &dopt, &last_eval_step);
        if (c->save_interval == 0 && save(&s, &t, lr) != C_OK) { exit_code = 1; break; }
      }
      if (c->max_epochs > 0 && t.epoch >= c->max_epochs) break;
      t.epoch++;
      t.cursor = 0;
      continue;
    }
    double step_t0 = common_now();
    model_zero_grad(s.model);
    double sums[TASK_NSUMS] = {0}; /* loss, nll, tokens (sentences, masked), correct */
    if (g->pp > 1) {
      /* the replica's micro-batches through its stages; the last stage has the loss */
      train_loader ld = {&tk, train, &plan, t.cursor + (int64_t)g->dp_rank * c->update_freq,
                         t.step, t.epoch, (uint64_t)c->seed};
      pipe_run(&pipe, (int)c->update_freq, train_load, &ld, sums);
      pipe_reduce_tied(&pipe);
    }
    for (int j = 0; j < c->update_freq && g->pp == 1; j++) {
      int64_t b = t.cursor + (int64_t)g->dp_rank * c->update_freq + j;
      if (b >= plan.n_batches) continue;
      task_run_batch(&tk, s.model, train, &plan, b, 1,
                     ops_hash_key((uint64_t)c->seed, (uint64_t)t.step + 1, (uint64_t)t.epoch,
                                  (uint64_t)b),
                     sums);
    }
    t.cursor += per_step;
    if (test_nan_hit(g, ++attempt)) sums[0] = NAN;
    /* the stages' sums (the last stage has the loss), then the replicas': every rank of
     * the world holds the same sums, so the finiteness verdict below is the same on all */
    if (g->pp > 1)
      MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, sums, TASK_NSUMS, MPI_DOUBLE, MPI_SUM, g->pp_comm));
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, sums, TASK_NSUMS, MPI_DOUBLE, MPI_SUM, g->dp_comm));
    float scale = sums[2] > 0 ? (float)(1.0 / sums[2]) : 0.0f;
    double gnorm = optim_sync_grads(&s.opt, s.model->grad_mem, scale);
    int finite = isfinite(sums[0]) && isfinite(gnorm);
    if (!finite) {
      t.skipped++;
      metrics_write(&mt, "\"type\":\"nonfinite\",\"step\":%lld,\"epoch\":%lld,\"wall\":%.3f,\"skipped\":%lld",
                    (long long)t.step + 1, (long long)t.epoch, t.wall, (long long)t.skipped);
      if (!strcmp(c->nan_policy, "stop") || t.skipped > c->max_skips) {
        metrics_write(&mt, "\"type\":\"diverged\",\"step\":%lld,\"epoch\":%lld,\"wall\":%.3f",
                      (long long)t.step + 1, (long long)t.epoch, t.wall);
        if (rank0) {
          printf("diverged at step %lld: the loss or the gradient is not finite (nan_policy=%s, "
                 "%lld non-finite steps); no checkpoint written for it: the newest one, if any, "
                 "is an earlier step's\n",
                 (long long)t.step + 1, c->nan_policy, (long long)t.skipped);
          fflush(stdout);
        }
        diverged = 1;
        break;
      }
      if (rank0) printf("step %lld: non-finite loss or gradient, update skipped\n", (long long)t.step + 1);
      t.wall += common_now() - step_t0;
      continue;
    }
    float clip = 1.0f;
    if (c->clip_norm > 0 && gnorm > c->clip_norm) clip = (float)(c->clip_norm / (gnorm + 1e-6));
    lr = optim_lr(c, t.step + 1, t.epoch);
    optim_update(&s.opt, s.model->param_mem, s.model->grad_mem, lr, clip);
    t.step++;
    t.tokens_seen += (int64_t)sums[2];
    t.wall += common_now() - step_t0;
    last_gnorm = gnorm;
    interval_loss += sums[0];
    interval_nll += sums[1];
    interval_tok += sums[2];
    interval_correct += sums[TASK_CORRECT];

    if (t.step % c->log_interval == 0) {
      double now = common_now(), tps = interval_tok / (now - interval_t0);
      double loss = interval_loss / interval_tok, nll = interval_nll / interval_tok;
      char acc[64] = "";
      if (task_has_accuracy(&tk))
        snprintf(acc, sizeof acc, ",\"accuracy\":%.6f",
                 interval_tok > 0 ? interval_correct / interval_tok : 0.0);
      metrics_write(&mt,
                    "\"type\":\"train\",\"step\":%lld,\"epoch\":%lld,\"wall\":%.3f,\"loss\":%.6f,"
                    "\"nll\":%.6f,\"ppl\":%.4f,\"lr\":%.6e,\"gnorm\":%.6f,\"tokens_per_s\":%.1f,"
                    "\"tokens\":%lld%s",
                    (long long)t.step, (long long)t.epoch, t.wall, loss, nll, exp(nll), lr, gnorm,
                    tps, (long long)t.tokens_seen, acc);
      if (rank0) {
        double per_step_s = (t.wall - wall_at_start) / (double)(t.step - start_step);
        double left = -1;
        if (c->max_time > 0) left = c->max_time - t.wall;
        if (c->max_steps > 0) {
          double l2 = per_step_s * (double)(c->max_steps - t.step);
          left = left < 0 || l2 < left ? l2 : left;
        }
        if (left < 0 && c->max_epochs > 0)
          left = per_step_s * ((double)(plan.n_batches - t.cursor) / per_step +
                               (double)(c->max_epochs - t.epoch) * plan.n_batches / per_step);
        char el[32], lf[32];
        metrics_format_duration(t.wall, el, sizeof el);
        metrics_format_duration(left, lf, sizeof lf);
        printf("step %6lld | epoch %3lld | loss %.3f | nll %.3f | lr %.2e | gnorm %.3f | %7.0f tok/s "
               "| %s elapsed | %s left\n",
               (long long)t.step, (long long)t.epoch, loss, nll, lr, gnorm, tps, el,
               left < 0 ? "?" : lf);
        fflush(stdout);
      }
      interval_loss = interval_nll = interval_tok = interval_correct = 0;
      interval_t0 = common_now();
    }
    if (c->eval_interval > 0 && t.step % c->eval_interval == 0) {
      run_eval(&s, &mt, &t, &dopt, &last_eval_step);
      if (c->save_interval == 0 && save(&s, &t, lr) != C_OK) { exit_code = 1; break; }
    }
    if (c->save_interval > 0 && t.step % c->save_interval == 0 && save(&s, &t, lr) != C_OK) {
      exit_code = 1;
      break;
    }
    /* Stop decisions must agree: a signal reaches the ranks at different moments, and
     * each rank's wall clock is its own (max_time). One all-reduce decides for all. */
    int flags[2] = {runctl_stop_requested(rank0 ? c->out : NULL),
                    (c->max_steps > 0 && t.step >= c->max_steps) ||
                        (c->max_time > 0 && t.wall >= c->max_time)};
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, flags, 2, MPI_INT, MPI_MAX, g->world));
    if (flags[0]) {
      stopped_by_signal = 1;
      break;
    }
    done = flags[1];
  }
  (void)last_gnorm;
  (void)run_t0;
  if (exit_code == 0) {
    if (stopped_by_signal) {
      if (rank0)
        printf("stop requested by %s: saving a checkpoint at step %lld\n", runctl_stop_reason(),
               (long long)t.step);
      if (save(&s, &t, lr) != C_OK) exit_code = 1;
      else exit_code = TRAIN_EXIT_REQUEUE;
      metrics_write(&mt, "\"type\":\"preempted\",\"step\":%lld,\"wall\":%.3f", (long long)t.step, t.wall);
    } else if (t.step > start_step && !diverged) {
      if (done && last_eval_step != t.step) run_eval(&s, &mt, &t, &dopt, &last_eval_step);
      if (save(&s, &t, lr) != C_OK) exit_code = 1;
      metrics_write(&mt, "\"type\":\"end\",\"step\":%lld,\"epoch\":%lld,\"wall\":%.3f",
                    (long long)t.step, (long long)t.epoch, t.wall);
    }
  }
  pipe_free(&pipe);
  task_free(&tk);
  data_plan_free(&plan);
  data_split_close(train);
  metrics_close(&mt);
  session_close(&s);
  return exit_code;
}
