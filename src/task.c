/* task.c: the per-task parts of training and evaluation (task.h): batch planning, model
 * inputs (pair concatenation and truncation, masked-LM masking) and the forward call; and
 * task_step_run, which runs a pass of batches on any layout (one rank, TP, pipeline
 * stages) and all-reduces its sums, for the training loop, evaluation and dump alike.
 *
 * Not here: the loop and the optimizer with its gradient sums over ranks (train.c,
 * optim.c), the model itself (model_*.c), reading the file (data.c, ckpt.c).
 *
 * Pair rows. Row j is `bos a eos b eos`. When a + b + 3 exceeds max_len the longer side
 * loses its last token until it fits (ties: a), HuggingFace's "longest_first".
 * Masked-LM rows. A batch of n pairs gives 2n rows, `bos a eos` then `bos b eos` (each
 * truncated to max_len - 2 tokens). The plan is made with max_tokens / 2 so a micro-batch
 * still holds about max_tokens padded tokens. Each word token (not pad/unk/bos/eos) is
 * selected with probability mlm_prob, independently; a selected one becomes the mask id
 * (<unk>, id 1) with probability 0.8, a uniformly random word id with 0.1, and stays
 * with 0.1 (BERT). The draws come from ops_hash_uniform(mask key, 3 * (row * width + col)
 * + 0/1/2), with the mask key derived from the step's key: a function of (seed, step,
 * epoch, batch), the same at any rank count and after a restart.
 *
 * init_from: the tensors named encoder.* that the checkpoint also holds are read into the
 * model (ckpt_load verifies shapes and checksums); other tensors keep their fresh values.
 */
#include "task.h"
#include "debug.h"

#include <math.h>
#include <string.h>

#include "ops.h"

int task_init(task *t, const config *c, int arch, const data_file *f, char *err, size_t err_len) {
  memset(t, 0, sizeof *t);
  t->kind = arch;
  t->max_tokens = c->max_tokens;
  t->max_src_len = (int)c->max_src_len;
  t->max_tgt_len = (int)c->max_tgt_len;
  t->max_len = (int)(c->max_src_len > 0 && c->max_src_len < c->max_positions ? c->max_src_len
                                                                             : c->max_positions);
  t->mlm_prob = (float)c->mlm_prob;
  t->pad = data_pad_id(f), t->bos = data_bos_id(f), t->eos = data_eos_id(f);
  t->vocab = data_vocab_size(f);
  if (t->kind == MODEL_ARCH_CLASSIFIER && data_n_classes(f) < 2) {
    snprintf(err, err_len,
             "arch=encoder_classifier needs a sentence-pair classification dataset (root "
             "attribute task=\"pair_classification\", e.g. data_prep/paraphrase.py); %s is not one",
             c->data);
    return C_ERR;
  }
  if (t->kind != MODEL_ARCH_TRANSLATION && t->max_len < 8) {
    snprintf(err, err_len,
             "arch=%s: the longest row max_src_len (or max_positions) = %d is "
             "below 8 tokens",
             c->arch, t->max_len);
    return C_ERR;
  }
  int first_word = 0;
  const int sp[4] = {t->pad, data_unk_id(f), t->bos, t->eos};
  for (int i = 0; i < 4; i++)
    first_word = sp[i] + 1 > first_word ? sp[i] + 1 : first_word;
  if (t->kind == MODEL_ARCH_MLM && (TASK_MLM_MASK_ID != data_unk_id(f) || first_word >= t->vocab)) {
    snprintf(err, err_len,
             "arch=encoder_mlm uses <unk> (id %d) as the mask, but %s has unk_id "
             "%d or no word ids",
             TASK_MLM_MASK_ID, c->data, data_unk_id(f));
    return C_ERR;
  }
  return C_OK;
}

void task_free(task *t) {
  data_batch_free(&t->raw);
  free(t->tok);
  free(t->tgt);
  memset(t, 0, sizeof *t);
}

int task_has_accuracy(const task *t) {
  return t->kind != MODEL_ARCH_TRANSLATION;
}

void task_plan(task *t, data_plan *p, const data_split *s, int train, uint64_t seed, int64_t epoch,
               int64_t *n_dropped) {
  if (n_dropped) *n_dropped = 0;
  if (t->kind == MODEL_ARCH_CLASSIFIER) {
    data_plan_make_pairs(p, s, t->max_tokens, t->max_len, train, seed, epoch);
  } else if (t->kind == MODEL_ARCH_MLM) {
    int64_t mt = t->max_tokens / 2 > 0 ? t->max_tokens / 2 : 1;
    data_plan_make(p, s, mt, 0, 0, train, seed, epoch, NULL);
  } else if (train) {
    data_plan_make(p, s, t->max_tokens, t->max_src_len, t->max_tgt_len, 1, seed, epoch, n_dropped);
  } else {
    data_plan_make(p, s, t->max_tokens, 0, 0, 0, 0, 0, NULL);
  }
}

/* Grow the input buffers to n tokens. */
static void inputs_reserve(task *t, size_t n) {
  if (n <= t->cap && t->tok) return;
  free(t->tok);
  free(t->tgt);
  t->cap = n + n / 4 + 64;
  t->tok = common_malloc(t->cap * sizeof(int32_t));
  t->tgt = common_malloc(t->cap * sizeof(int32_t));
}

/* Tokens before the eos of a row (eos, then pads, end it). */
static int row_len(const int32_t *row, int width, int eos) {
  int l = 0;
  while (l < width && row[l] != eos)
    l++;
  return l;
}

int task_make_inputs(task *t, uint64_t key, int *width) {
  const data_batch *r = &t->raw;
  int n = r->n_seq, L = t->max_len;
  if (t->kind == MODEL_ARCH_CLASSIFIER) {
    int W = 0;
    for (int j = 0; j < n; j++) {
      int la = row_len(r->src + (size_t)j * r->src_len, r->src_len, t->eos);
      int lb = row_len(r->tgt_out + (size_t)j * r->tgt_len, r->tgt_len, t->eos);
      while (la + lb + 3 > L) {
        if (la >= lb)
          la--;
        else
          lb--;
      }
      W = la + lb + 3 > W ? la + lb + 3 : W;
    }
    inputs_reserve(t, (size_t)n * W);
    for (int j = 0; j < n; j++) {
      const int32_t *a = r->src + (size_t)j * r->src_len, *b = r->tgt_out + (size_t)j * r->tgt_len;
      int la = row_len(a, r->src_len, t->eos), lb = row_len(b, r->tgt_len, t->eos);
      while (la + lb + 3 > L) {
        if (la >= lb)
          la--;
        else
          lb--;
      }
      int32_t *row = t->tok + (size_t)j * W;
      int c = 0;
      row[c++] = t->bos;
      memcpy(row + c, a, (size_t)la * sizeof *row);
      c += la;
      row[c++] = t->eos;
      memcpy(row + c, b, (size_t)lb * sizeof *row);
      c += lb;
      row[c++] = t->eos;
      while (c < W)
        row[c++] = t->pad;
    }
    *width = W;
    return n;
  }
  /* masked-LM: rows 2j (a) and 2j + 1 (b) */
  int keep = L - 2, W = 0;
  for (int j = 0; j < n; j++) {
    int la = row_len(r->src + (size_t)j * r->src_len, r->src_len, t->eos);
    int lb = row_len(r->tgt_out + (size_t)j * r->tgt_len, r->tgt_len, t->eos);
    int l = la > lb ? la : lb;
    l = l > keep ? keep : l;
    W = l + 2 > W ? l + 2 : W;
  }
  int rows = 2 * n;
  inputs_reserve(t, (size_t)rows * W);
  uint64_t mkey = ops_hash_key(key, 0x4d41534bu /* "MASK" */, 0, 0);
  int first_word = TASK_MLM_MASK_ID + 1;
  first_word = t->bos + 1 > first_word ? t->bos + 1 : first_word;
  first_word = t->eos + 1 > first_word ? t->eos + 1 : first_word;
  first_word = t->pad + 1 > first_word ? t->pad + 1 : first_word;
  int n_words = t->vocab - first_word;
  for (int q = 0; q < rows; q++) {
    const int32_t *src =
        (q & 1) ? r->tgt_out + (size_t)(q / 2) * r->tgt_len : r->src + (size_t)(q / 2) * r->src_len;
    int l = row_len(src, (q & 1) ? r->tgt_len : r->src_len, t->eos);
    l = l > keep ? keep : l;
    int32_t *row = t->tok + (size_t)q * W, *tg = t->tgt + (size_t)q * W;
    for (int c = 0; c < W; c++)
      tg[c] = -1;
    row[0] = t->bos;
    memcpy(row + 1, src, (size_t)l * sizeof *row);
    row[l + 1] = t->eos;
    for (int c = l + 2; c < W; c++)
      row[c] = t->pad;
    for (int c = 1; c <= l; c++) {
      int32_t tok = row[c];
      if (tok < first_word) continue; /* special ids are never selected */
      uint64_t idx = 3 * ((uint64_t)q * (uint64_t)W + (uint64_t)c);
      if (ops_hash_uniform(mkey, idx) >= t->mlm_prob) continue;
      tg[c] = tok;
      float u = ops_hash_uniform(mkey, idx + 1);
      if (u < 0.8f) {
        row[c] = TASK_MLM_MASK_ID;
      } else if (u < 0.9f) {
        int k = (int)(ops_hash_uniform(mkey, idx + 2) * (float)n_words);
        row[c] = first_word + (k < n_words ? k : n_words - 1);
      }
    }
  }
  *width = W;
  return rows;
}

void task_run_batch(task *t, model *m, data_split *s, const data_plan *p, int64_t b, int dropout,
                    int backward, uint64_t key, double *sums) {
  data_batch_load(s, p, b, &t->raw);
  model_set_mode(m, dropout, key);
  if (t->kind == MODEL_ARCH_TRANSLATION) {
    const data_batch *r = &t->raw;
    sums[MODEL_SUM_COUNT] += (double)model_forward_backward(
        m, r->src, r->tgt_in, r->tgt_out, r->n_seq, r->src_len, r->tgt_len, 1.0f, backward,
        &sums[MODEL_SUM_LOSS], &sums[MODEL_SUM_NLL]);
    return;
  }
  int W = 0, rows = task_make_inputs(t, key, &W);
  double loss = 0;
  int64_t correct = 0, count;
  if (t->kind == MODEL_ARCH_CLASSIFIER)
    count =
        model_classify(m, t->tok, t->raw.labels, rows, W, 1.0f, backward, &loss, &correct, NULL);
  else
    count = model_mlm(m, t->tok, t->tgt, rows, W, 1.0f, backward, &loss, &correct);
  sums[MODEL_SUM_LOSS] += loss;
  sums[MODEL_SUM_NLL] += loss; /* no label smoothing in the encoder-only heads */
  sums[MODEL_SUM_COUNT] += (double)count;
  sums[MODEL_SUM_CORRECT] += (double)correct;
}

void task_pipe_batch(task *t, data_split *s, const data_plan *p, int64_t b, uint64_t key,
                     pipe_batch *out) {
  data_batch_load(s, p, b, &t->raw);
  memset(out, 0, sizeof *out);
  out->key = key;
  out->valid = 1;
  const data_batch *r = &t->raw;
  if (t->kind == MODEL_ARCH_TRANSLATION) {
    out->src = r->src, out->tgt_in = r->tgt_in, out->tgt_out = r->tgt_out;
    out->B = r->n_seq, out->S = r->src_len, out->T = r->tgt_len;
    return;
  }
  int W = 0, rows = task_make_inputs(t, key, &W);
  out->src = t->tok;
  out->tgt_out = t->kind == MODEL_ARCH_CLASSIFIER ? r->labels : t->tgt;
  out->B = rows, out->S = W, out->T = 0;
}

/* The key of batch b in pass p (task_pass). */
static uint64_t pass_key(const task_pass *p, int64_t b) {
  if (p->dropout) return ops_hash_key(p->seed, (uint64_t)p->step, (uint64_t)p->epoch, (uint64_t)b);
  return ops_hash_key(p->seed, 0x56414c49u /* "VALI" */, (uint64_t)b, 0);
}

/* pp > 1: pipe_run's loader of micro-batch j of a pass. */
typedef struct pass_loader {
  task *t;
  const task_pass *p;
} pass_loader;

static void pass_load(void *ctx, int j, pipe_batch *b) {
  const pass_loader *x = ctx;
  const task_pass *p = x->p;
  int64_t bi = p->first + j * p->stride;
  memset(b, 0, sizeof *b);
  if (bi >= p->plan->n_batches) return; /* past the epoch's end: skipped by every stage */
  task_pipe_batch(x->t, p->split, p->plan, bi, pass_key(p, bi), b);
}

int task_step_run(task *t, model *m, pipe_sched *ps, const grid *g, const task_pass *p,
                  double sums[MODEL_NSUMS], char *err, size_t err_len) {
  /* the replicas split an evaluation's batches (n, first differ over dp); the rest agrees */
  DEBUG_AGREE(g->world, p->stride, p->dropout, p->backward, p->step, p->epoch, (int64_t)p->seed);
  DEBUG_AGREE(g->pp_comm, p->n, p->first);
  DEBUG_AGREE(g->tp_comm, p->n, p->first);
  for (int i = 0; i < MODEL_NSUMS; i++)
    sums[i] = 0.0;
  if (g->pp > 1 && p->backward) {
    /* the replica's micro-batches through its stages; the last stage has the loss */
    pass_loader ld = {t, p};
    pipe_run(ps, p->n, pass_load, &ld, sums);
    pipe_reduce_tied(ps);
  } else {
    for (int i = 0; i < p->n; i++) {
      int64_t b = p->first + i * p->stride;
      if (b >= p->plan->n_batches) continue;
      if (g->pp == 1) {
        task_run_batch(t, m, p->split, p->plan, b, p->dropout, p->backward, pass_key(p, b), sums);
        continue;
      }
      pipe_batch pb; /* forward through the stages */
      task_pipe_batch(t, p->split, p->plan, b, pass_key(p, b), &pb);
      pipe_forward(ps, &pb, sums);
    }
  }
  if (p->poison) sums[MODEL_SUM_LOSS] = NAN;
  /* the stages' sums (the last stage has the loss), then the replicas': every rank of the
   * world holds the same sums, so a verdict on them (finiteness) is the same on all. One
   * more element counts the ranks whose batch reads failed (data_batch_load then gave pad
   * tokens): it rides on the same all-reduces, and only a failure costs a second
   * collective, the one that hands every rank the first failing rank's message. */
  double all[MODEL_NSUMS + 1];
  memcpy(all, sums, sizeof(double) * MODEL_NSUMS);
  int failed = data_split_error(p->split)[0] != 0;
  all[MODEL_NSUMS] = failed;
  if (g->tp > 1) /* the TP ranks hold equal sums; only the flag is theirs to combine */
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &all[MODEL_NSUMS], 1, MPI_DOUBLE, MPI_MAX, g->tp_comm));
  if (g->pp > 1)
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, all, MODEL_NSUMS + 1, MPI_DOUBLE, MPI_SUM, g->pp_comm));
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, all, MODEL_NSUMS + 1, MPI_DOUBLE, MPI_SUM, g->dp_comm));
  memcpy(sums, all, sizeof(double) * MODEL_NSUMS);
  if (all[MODEL_NSUMS] == 0) return C_OK;
  if (failed) snprintf(err, err_len, "%s", data_split_error(p->split));
  common_agree(g->world, failed, err, err_len);
  return C_ERR;
}

int task_init_from(const char *spec, const ckpt_tensor *tensors, int n, int *n_loaded,
                   MPI_Comm comm, char *err, size_t err_len) {
  char path[1100], msg[1024];
  int none_found = 0;
  *n_loaded = 0;
  if (ckpt_resolve(spec, spec, path, sizeof path, &none_found, comm, msg, sizeof msg) != C_OK) {
    snprintf(err, err_len, "init_from=%s: %s", spec, msg);
    return C_ERR;
  }
  uint8_t *has = common_calloc((size_t)n, 1); /* which tensors does the file hold? */
  ckpt_has_tensors(path, tensors, n, has, comm);
  for (int i = 0; i < n; i++) /* the encoder's only */
    if (strncmp(tensors[i].name, "encoder.", 8) != 0) has[i] = 0;
  ckpt_tensor *sub = common_calloc((size_t)n, sizeof *sub);
  int k = 0;
  for (int i = 0; i < n; i++)
    if (has[i]) {
      sub[k] = tensors[i];
      sub[k].exp_avg = sub[k].exp_avg_sq = NULL; /* parameters only: Adam starts fresh */
      sub[k].opt_lo = sub[k].opt_hi = 0;
      k++;
    }
  int rc = C_OK;
  if (k == 0) {
    snprintf(err, err_len, "init_from=%s: %s holds none of this model's encoder tensors", spec,
             path);
    rc = C_ERR;
  } else if (ckpt_load(path, sub, k, NULL, NULL, comm, msg, sizeof msg) != C_OK) {
    snprintf(err, err_len, "init_from=%s: cannot load its encoder into this model: %s", spec, msg);
    rc = C_ERR;
  }
  *n_loaded = rc == C_OK ? k : 0;
  free(sub);
  free(has);
  return rc;
}
