/* session.c: common set-up of the subcommands (see session.h). */
#include "session.h"

#include "gemm.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>

#include <cblas.h>

static int rank0(void) {
  return common_rank() == 0;
}

void session_say(const session *s, const char *fmt, ...) {
  (void)s;
  if (!rank0()) return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  fflush(stderr);
}

static void say_error(const char *msg) {
  if (rank0()) {
    fprintf(stderr, "mpiformer: error: %s\n", msg);
    fflush(stderr);
  }
}

/* 1 when this rank writes parameter p (and its moments) into a checkpoint. Every rank of a
 * replica reads all it holds, but writes less: a vector sits on every TP process row, and
 * process row 0 writes it; with pp > 1 another stage's tensors are empty blocks here, and a
 * tied embedding held by several stages is written by its first holder (p->pp_copy = 0). */
static int writes_here(const model_param *p, const grid *g) {
  if (p->is_vector && g->prow != 0) return 0;
  return p->pp_owned && !p->pp_copy;
}

/* The checkpoint's tensor lists: what this rank reads (tensors) and writes (save_tensors):
 * each parameter's block, and the Adam moments the optimizer says this rank names. */
static void build_tensors(session *s) {
  model *m = s->model;
  s->n_tensors = m->n_params;
  s->tensors = common_calloc((size_t)m->n_params, sizeof(ckpt_tensor));
  s->save_tensors = common_calloc((size_t)m->n_params, sizeof(ckpt_tensor));
  for (int i = 0; i < m->n_params; i++) {
    model_param *p = &m->params[i];
    ckpt_tensor *t = &s->tensors[i];
    t->name = p->name;
    t->param = &p->w;
    t->is_vector = p->is_vector;
    t->write_param = s->g.dp_rank == 0; /* one replica writes */
    if (s->with_optim)
      optim_moments_of(&s->opt, p->offset, dmat_local_size(&p->w), &t->opt_lo, &t->opt_hi,
                       &t->exp_avg, &t->exp_avg_sq);
    s->save_tensors[i] = *t;
    if (!writes_here(p, &s->g)) {
      s->save_tensors[i].write_param = 0;
      s->save_tensors[i].opt_lo = s->save_tensors[i].opt_hi = 0;
    }
  }
}

/* Load the checkpoint spec names ("none" or "": none; "auto": the newest good one in
 * cfg.out/ckpt, if any), or else the encoder of init_from. C_ERR (reported) on every rank
 * when it cannot be loaded. Collective on the world. */
static int load_checkpoint(session *s, const char *spec) {
  const config *c = &s->cfg;
  char err[2048];
  if (strcmp(spec, "none") != 0 && spec[0]) {
    char dir[1100], path[1100];
    snprintf(dir, sizeof dir, "%s/ckpt", c->out);
    int none_found = 0, is_auto = strcmp(spec, "auto") == 0;
    if (ckpt_resolve(spec, dir, path, sizeof path, &none_found, s->g.world, err, sizeof err) !=
        C_OK) {
      if (!(is_auto && none_found)) {
        say_error(err);
        return C_ERR;
      }
    } else {
      int has_optim = 0;
      if (ckpt_load(path, s->tensors, s->n_tensors, &s->meta, &has_optim, s->g.world, err,
                    sizeof err) != C_OK) {
        say_error(err);
        return C_ERR;
      }
      if (s->with_optim && !has_optim)
        session_say(s, "warning: %s has no optimizer state; Adam moments start at zero", path);
      if (s->with_optim) s->opt.step = s->meta.step;
      /* With zero=0 only dp rank 0's tensor list names the moments (one replica writes
       * them), so only it read them: give every replica the same moments. */
      if (s->with_optim && has_optim && !s->opt.zero && s->g.dp > 1) {
        int64_t n = s->opt.hi - s->opt.lo;
        MPI_CHECK(MPI_Bcast(s->opt.exp_avg, common_int(n), MPI_FLOAT, 0, s->g.dp_comm));
        MPI_CHECK(MPI_Bcast(s->opt.exp_avg_sq, common_int(n), MPI_FLOAT, 0, s->g.dp_comm));
      }
      s->resumed = 1;
      snprintf(s->ckpt_path, sizeof s->ckpt_path, "%s", path);
    }
  }
  /* a fresh run may start its encoder from another run's checkpoint (e.g. masked-LM) */
  if (!s->resumed && c->init_from[0]) {
    int n_loaded = 0;
    if (task_init_from(c->init_from, s->tensors, s->n_tensors, &n_loaded, s->g.world, err,
                       sizeof err) != C_OK) {
      say_error(err);
      return C_ERR;
    }
    session_say(s, "init_from %s: loaded %d encoder tensors", c->init_from, n_loaded);
  }
  return C_OK;
}

int session_take_extras(int argc, char **argv, session_extra *extras, int n_extras, char **rest) {
  int n_rest = 0;
  for (int i = 0; i < argc; i++) {
    int taken = 0;
    for (int e = 0; e < n_extras; e++) {
      size_t len = strlen(extras[e].name);
      if (!strncmp(argv[i], extras[e].name, len) && argv[i][len] == '=') {
        snprintf(extras[e].value, sizeof extras[e].value, "%s", argv[i] + len + 1);
        extras[e].given = 1;
        taken = 1;
      }
    }
    if (!taken && rest) rest[n_rest++] = argv[i];
  }
  return n_rest;
}

int session_open(session *s, int argc, char **argv, session_extra *extras, int n_extras,
                 int with_optim, const char *ckpt_spec) {
  memset(s, 0, sizeof *s);
  char err[2048];
  char **args = common_calloc((size_t)argc + 1, sizeof(char *));
  int n_args = session_take_extras(argc, argv, extras, n_extras, args);
  int rc = config_from_args(&s->cfg, n_args, args, err, sizeof err);
  free(args);
  if (rc != 0) {
    say_error(err);
    return C_ERR;
  }
  config *c = &s->cfg;
  if (c->threads > 0) openblas_set_num_threads((int)c->threads);
  /* the local matmuls' engine and precision (gemm.h); oneDNN runs c->threads, else 1 */
  if (gemm_setup(c->gemm, c->precision, c->threads > 0 ? (int)c->threads : 1, err, sizeof err) !=
      C_OK) {
    say_error(err);
    return C_ERR;
  }
  if (grid_create(&s->g, (int)c->tp, c->tp_pr, c->tp_pc, (int)c->pp, err, sizeof err) != C_OK) {
    say_error(err);
    return C_ERR;
  }
  s->data = data_open(c->data, s->g.world, err, sizeof err);
  if (!s->data) {
    say_error(err);
    grid_destroy(&s->g);
    return C_ERR;
  }
  model_dims dims; /* arch parsed here, once */
  model_dims_from_config(&dims, c, data_vocab_size(s->data), data_pad_id(s->data),
                         data_bos_id(s->data), data_eos_id(s->data));
  dims.n_classes = data_n_classes(s->data);
  /* does the dataset fit the arch? (a classifier needs a pair file) */
  if (task_init(&s->task, c, dims.arch, s->data, err, sizeof err) != C_OK) {
    say_error(err);
    data_close(s->data);
    grid_destroy(&s->g);
    return C_ERR;
  }
  s->model = model_create(&dims, &s->g, (uint64_t)c->seed);
  s->with_optim = with_optim;
  if (with_optim) {
    optim_init(&s->opt, c, s->model->n_floats, s->g.dp_comm);
    if (s->g.tp > 1) /* the vectors of process rows > 0 are copies: counted once */
      optim_set_tp(&s->opt, s->g.tp_comm, s->g.prow == 0 ? s->model->n_floats : s->model->vec_lo);
    if (s->g.pp > 1) /* stages hold different layers; a tied copy is counted by its first holder */
      optim_set_pp(&s->opt, s->g.pp_comm, s->model->norm_lo);
  }
  build_tensors(s);

  if (load_checkpoint(s, ckpt_spec ? ckpt_spec : c->resume) != C_OK) {
    session_close(s);
    return C_ERR;
  }
  gemm_shadow_refresh(s->model->param_mem); /* bf16: the weights loaded, rounded */
  int bad = rank0() && common_mkdir_p(c->out, err, sizeof err) != C_OK;
  MPI_CHECK(MPI_Barrier(s->g.world)); /* then every rank must see it */
  struct stat st;
  if (!bad && (stat(c->out, &st) != 0 || !S_ISDIR(st.st_mode))) {
    snprintf(err, sizeof err, "cannot see the run directory out=%s on this rank", c->out);
    bad = 1;
  }
  if (common_agree(s->g.world, bad, err, sizeof err)) {
    say_error(err);
    session_close(s);
    return C_ERR;
  }
  return C_OK;
}

int session_save(session *s, const ckpt_meta *meta) {
  char dir[1100], err[2048];
  snprintf(dir, sizeof dir, "%s/ckpt", s->cfg.out);
  if (ckpt_save(dir, s->save_tensors, s->n_tensors, meta, (int)s->cfg.keep_last, s->g.world, err,
                sizeof err) != C_OK) {
    say_error(err);
    return C_ERR;
  }
  return C_OK;
}

void session_close(session *s) {
  free(s->tensors);
  free(s->save_tensors);
  free(s->meta.config_text);
  if (s->with_optim) optim_free(&s->opt);
  model_free(s->model);
  task_free(&s->task);
  if (s->data) data_close(s->data);
  grid_destroy(&s->g);
  memset(s, 0, sizeof *s);
}
