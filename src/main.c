/* main.c: the mpiformer command and its subcommands.
 *
 *   mpiformer train     CONFIG [key=value ...]
 *   mpiformer eval      CONFIG ckpt=PATH [split=valid|test] [key=value ...]
 *   mpiformer translate CONFIG ckpt=PATH [beam=5 ...] < src.txt > hyp.txt
 *   mpiformer bleu      HYP REF [REF ...] [--tokenize 13a|none] ...
 *   mpiformer dump      CONFIG ckpt=PATH dump=OUT.h5 [split=valid] [batch=0]
 *   mpiformer gradnorm  CONFIG [seeds=10] [batches=4]
 *   mpiformer keys
 *
 * Each subcommand lives in its module; this file only dispatches and owns MPI_Init.
 */
#include <string.h>

#include <hdf5.h>

#include "bleu.h"
#include "common.h"
#include "decode.h"
#include "evaluate.h"
#include "gradnorm.h"
#include "gradsync.h"
#include "runctl.h"
#include "session.h"
#include "task.h"
#include "train.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: mpiformer COMMAND ...\n"
          "  train     CONFIG [key=value ...]          train (resume=auto continues a run)\n"
          "  eval      CONFIG ckpt=PATH [split=test]   loss, ppl and BLEU as one JSON object\n"
          "  translate CONFIG ckpt=PATH [beam=5]       raw source lines on stdin -> stdout\n"
          "  bleu      HYP REF [REF ...]               sacreBLEU's score line\n"
          "  dump      CONFIG ckpt=PATH dump=OUT.h5    one batch's loss and gradients (tests)\n"
          "  gradnorm  CONFIG [seeds=10] [batches=4]   per-layer FFN gradient norms at init\n"
          "  keys                                      every config key, default and range\n"
          "CONFIG is a key = value file (see jobs/ and docs/CONFIG.md); key=value overrides it.\n");
}

static int cmd_eval(int argc, char **argv) {
  session_extra ex[2] = {{"ckpt", "", 0}, {"split", "valid", 0}};
  session s;
  int rc = 0;
  session_take_extras(argc, argv, ex, 2, NULL);
  if (!ex[0].given) {
    if (common_rank() == 0)
      fprintf(
          stderr,
          "mpiformer: error: eval needs ckpt=PATH (a checkpoint file or a run's ckpt/ folder)\n");
    return 1;
  }
  if (session_open(&s, argc, argv, ex, 2, 0, ex[0].value) != C_OK) return 1;
  decode_opts o;
  decode_opts_from_config(&o, &s.cfg);
  eval_result r;
  if (evaluate_split(&s, ex[1].value, 1, 0, &o, &r, NULL, NULL) != C_OK)
    rc = 1;
  else if (s.g.world_rank == 0) {
    char json[1024];
    evaluate_json(&r, ex[1].value, json, sizeof json);
    printf("{%s,\"ckpt\":\"%s\",\"step\":%lld,\"beam\":%d,\"seconds\":%.2f}\n", json, s.ckpt_path,
           (long long)s.meta.step, o.beam, r.seconds);
  }
  session_close(&s);
  return rc;
}

static int cmd_translate(int argc, char **argv) {
  session_extra ex[1] = {{"ckpt", "", 0}};
  session s;
  session_take_extras(argc, argv, ex, 1, NULL);
  if (!ex[0].given) {
    if (common_rank() == 0) fprintf(stderr, "mpiformer: error: translate needs ckpt=PATH\n");
    return 1;
  }
  if (session_open(&s, argc, argv, ex, 1, 0, ex[0].value) != C_OK) return 1;
  decode_opts o;
  decode_opts_from_config(&o, &s.cfg);
  model *full = model_replicate(s.model); /* tp > 1: every rank decodes with a full copy */
  int rc =
      decode_translate_file(full, s.data, s.cfg.data, &o, stdin, stdout, s.g.world) == C_OK ? 0 : 1;
  if (full != s.model) model_free(full);
  session_close(&s);
  return rc;
}

/* Write one 2-D int32 or float dataset with serial HDF5. */
static void dump_write(hid_t f, const char *name, hid_t type, const void *data, hsize_t rows,
                       hsize_t cols, int is_vector) {
  hsize_t dims[2] = {rows, cols};
  hid_t space = H5Screate_simple(is_vector ? 1 : 2, is_vector ? &dims[1] : dims, NULL);
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  hid_t d = H5Dcreate2(f, name, type, space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
  CHECK(d >= 0, "dump: cannot create %s", name);
  CHECK(H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0, "dump: cannot write %s", name);
  H5Dclose(d);
  H5Pclose(lcpl);
  H5Sclose(space);
}

static void dump_attr(hid_t f, const char *name, double v) {
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(f, name, H5T_NATIVE_DOUBLE, space, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, H5T_NATIVE_DOUBLE, &v);
  H5Aclose(a);
  H5Sclose(space);
}

/* One forward/backward of batch `batch` of a split, written with the gradients of the mean
 * loss: what the PyTorch reference test compares against. Single rank. */
static int cmd_dump(int argc, char **argv) {
  session_extra ex[4] = {
      {"ckpt", "", 0}, {"dump", "", 0}, {"split", "valid", 0}, {"batch", "0", 0}};
  session s;
  session_take_extras(argc, argv, ex, 4, NULL);
  if (!(ex[0].given && ex[1].given)) {
    if (common_rank() == 0)
      fprintf(stderr, "mpiformer: error: dump needs ckpt=PATH and dump=OUT.h5\n");
    return 1;
  }
  if (session_open(&s, argc, argv, ex, 4, 0, ex[0].value) != C_OK) return 1;
  if (s.g.pp > 1 || s.g.tp > 1 || s.model->dims.arch == MODEL_ARCH_MLM) {
    session_say(&s, "mpiformer: error: dump runs one batch whole on one rank for translation or "
                    "encoder_classifier: use tp=1 pp=1");
    session_close(&s);
    return 1;
  }
  char err[1024];
  data_split *sp = data_split_open(s.data, ex[2].value, err, sizeof err);
  if (!sp) {
    session_say(&s, "mpiformer: error: %s", err);
    session_close(&s);
    return 1;
  }
  task *tk = &s.task;
  data_plan plan;
  task_plan(tk, &plan, sp, 0, 0, 0, NULL); /* in order, as eval */
  int64_t b = atoll(ex[3].value);
  CHECK(b >= 0 && b < plan.n_batches, "dump: batch %lld out of range (%lld batches)", (long long)b,
        (long long)plan.n_batches);
  /* batch b forward and backward without dropout (dp rank 0 runs it; the others add
   * nothing), the same code path as training and evaluation */
  task_pass pass = {.split = sp,
                    .plan = &plan,
                    .first = b,
                    .stride = 1,
                    .n = s.g.dp_rank == 0,
                    .backward = 1,
                    .seed = (uint64_t)s.cfg.seed};
  model *m = s.model;
  model_zero_grad(m);
  double sums[MODEL_NSUMS];
  if (task_step_run(tk, m, NULL, &s.g, &pass, sums, err, sizeof err) != C_OK) { /* pp = 1 */
    session_say(&s, "mpiformer: error: %s", err);
    data_plan_free(&plan);
    data_split_close(sp);
    session_close(&s);
    return 1;
  }
  double loss = sums[MODEL_SUM_LOSS], nll = sums[MODEL_SUM_NLL];
  int64_t n = (int64_t)sums[MODEL_SUM_COUNT], correct = (int64_t)sums[MODEL_SUM_CORRECT];
  int clf = tk->kind == MODEL_ARCH_CLASSIFIER;
  pipe_batch pb;
  task_pipe_batch(tk, sp, &plan, b, 0, &pb); /* the model's inputs of batch b, to write */
  for (int64_t i = 0; i < m->n_floats; i++)
    m->grad_mem[i] /= (float)n; /* of the mean loss */
  if (s.g.world_rank == 0) {
    hid_t f = H5Fcreate(ex[1].value, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    CHECK(f >= 0, "dump: cannot create %s", ex[1].value);
    if (clf) { /* rows `bos a eos b eos` and their labels */
      dump_write(f, "/batch/tokens", H5T_NATIVE_INT32, pb.src, (hsize_t)pb.B, (hsize_t)pb.S, 0);
      dump_write(f, "/batch/labels", H5T_NATIVE_INT32, pb.tgt_out, 1, (hsize_t)pb.B, 1);
    } else {
      dump_write(f, "/batch/src", H5T_NATIVE_INT32, pb.src, (hsize_t)pb.B, (hsize_t)pb.S, 0);
      dump_write(f, "/batch/tgt_in", H5T_NATIVE_INT32, pb.tgt_in, (hsize_t)pb.B, (hsize_t)pb.T, 0);
      dump_write(f, "/batch/tgt_out", H5T_NATIVE_INT32, pb.tgt_out, (hsize_t)pb.B, (hsize_t)pb.T,
                 0);
    }
    for (int i = 0; i < m->n_params; i++) {
      model_param *p = &m->params[i];
      char name[160];
      snprintf(name, sizeof name, "/grad/%s", p->name);
      dump_write(f, name, H5T_NATIVE_FLOAT, p->g.data, (hsize_t)p->g.rows, (hsize_t)p->g.cols,
                 p->is_vector);
    }
    dump_attr(f, "loss", loss / (double)n);
    dump_attr(f, "nll", nll / (double)n);
    dump_attr(f, "ntokens", (double)n);
    if (clf) dump_attr(f, "correct", (double)correct);
    H5Fclose(f);
    printf("{\"loss\":%.8f,\"nll\":%.8f,\"ntokens\":%lld}\n", loss / (double)n, nll / (double)n,
           (long long)n);
  }
  data_plan_free(&plan);
  data_split_close(sp);
  session_close(&s);
  return 0;
}

int main(int argc, char **argv) {
  runctl_init(argc >= 2 && !strcmp(argv[1], "train")); /* first: signals, launcher death */
  if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") ||
      !strcmp(argv[1], "help")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "bleu")) return bleu_cli(argc - 1, argv + 1); /* no MPI needed */
  if (!strcmp(cmd, "keys")) { /* the config keys as Markdown (docs/CONFIG.md) */
    config_print_keys(stdout);
    return 0;
  }
  gradsync_mpi_defaults(); /* the ring for the gradient buckets' non-blocking all-reduce */
  MPI_Init(&argc, &argv);
  int rc;
  if (!strcmp(cmd, "train"))
    rc = train_main(argc - 2, argv + 2);
  else if (!strcmp(cmd, "eval"))
    rc = cmd_eval(argc - 2, argv + 2);
  else if (!strcmp(cmd, "translate"))
    rc = cmd_translate(argc - 2, argv + 2);
  else if (!strcmp(cmd, "dump"))
    rc = cmd_dump(argc - 2, argv + 2);
  else if (!strcmp(cmd, "gradnorm"))
    rc = gradnorm_main(argc - 2, argv + 2);
  else {
    if (common_rank() == 0) {
      fprintf(stderr, "mpiformer: unknown command '%s'\n", cmd);
      usage(stderr);
    }
    rc = 2;
  }
  MPI_Finalize();
  return rc;
}
