// NP: 1
/* test_config.c: the config table: defaults, files, overrides, and that every kind of
 * bad input is refused with a message naming the key (and the line). */
#include <string.h>

#include "config.h"
#include "harness.h"
#include "optim.h"

static int refuses(const char *kv, const char *must_contain) {
  config c;
  char err[512] = "";
  config_defaults(&c);
  int rc = config_set(&c, kv, "command line", err, sizeof err);
  if (rc == 0) rc = config_validate(&c, err, sizeof err);
  if (rc == 0) return 0;
  if (!strstr(err, must_contain)) {
    fprintf(stderr, "message for '%s' lacks '%s': %s\n", kv, must_contain, err);
    return 0;
  }
  return 1;
}

int main(void) {
  config c;
  char err[512];
  config_defaults(&c);
  TEST_EXPECT(c.d_model == 512 && c.heads == 4 && !strcmp(c.norm, "pre"), "defaults");
  TEST_EXPECT(config_set(&c, "lr = 1e-3", "x", err, sizeof err) == 0 && c.lr == 1e-3, "set lr");
  TEST_EXPECT(config_set(&c, "norm=post", "x", err, sizeof err) == 0 && !strcmp(c.norm, "post"),
              "set norm");

  TEST_EXPECT(refuses("lrr=1", "did you mean 'lr'"), "misspelled key suggests");
  TEST_EXPECT(refuses("d_modle=3", "d_model"), "misspelled key suggests d_model");
  TEST_EXPECT(refuses("zzzzzzzz=1", "unknown key 'zzzzzzzz'"), "unknown key");
  TEST_EXPECT(refuses("heads=abc", "needs a number"), "non-number");
  TEST_EXPECT(refuses("heads=2.5", "needs an integer"), "non-integer");
  TEST_EXPECT(refuses("dropout=1.5", "out of range"), "range");
  TEST_EXPECT(refuses("norm=middle", "must be one of pre|post"), "choice");
  TEST_EXPECT(refuses("heads=3", "must divide d_model"), "heads divide d_model");
  TEST_EXPECT(refuses("lr_scheduler=linear", "needs max_steps"), "linear needs max_steps");
  TEST_EXPECT(refuses("lr_scheduler=step", "needs lr_decay_epochs"), "step needs epochs");
  TEST_EXPECT(refuses("tp_grid=2x2", "has 4 ranks but tp=1"), "tp_grid product");
  TEST_EXPECT(refuses("tp_grid=banana", "must look like"), "tp_grid shape");
  TEST_EXPECT(refuses("noequals", "expected key=value"), "no '='");

  /* a file with a bad line names the file and the line */
  char path[] = "/tmp/mpiformer_test_config_XXXXXX";
  int fd = mkstemp(path);
  FILE *f = fdopen(fd, "w");
  fprintf(f, "# comment\nlr = 2e-4\n\nwarmup_stesp = 10\n");
  fclose(f);
  config_defaults(&c);
  int rc = config_load_file(&c, path, err, sizeof err);
  TEST_EXPECT(rc != 0 && strstr(err, ":4: unknown key 'warmup_stesp' (did you mean 'warmup_steps'?)"),
              "file error names line 4: %s", err);
  TEST_EXPECT(c.lr == 2e-4, "lines before the error applied");
  remove(path);
  TEST_EXPECT(config_load_file(&c, "/nonexistent/x.conf", err, sizeof err) != 0 &&
                  strstr(err, "cannot read config file"),
              "missing file");

  /* default TP grid: most square with pc | heads */
  config_defaults(&c);
  config_set(&c, "tp=4", "x", err, sizeof err);
  TEST_EXPECT(config_validate(&c, err, sizeof err) == 0 && c.tp_pr == 2 && c.tp_pc == 2, "tp=4 -> 2x2");
  config_set(&c, "tp=3", "x", err, sizeof err);
  TEST_EXPECT(config_validate(&c, err, sizeof err) == 0 && c.tp_pr == 3 && c.tp_pc == 1, "tp=3 heads=4 -> 3x1");

  /* dump and reload gives the same config */
  config_defaults(&c);
  config_set(&c, "lr=3.5e-4", "x", err, sizeof err);
  config_set(&c, "lr_decay_epochs=6,9", "x", err, sizeof err);
  char *text = config_dump(&c);
  config c2;
  config_defaults(&c2);
  int ok = 1;
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
    if (config_set(&c2, line, "dump", err, sizeof err) != 0) ok = 0;
  free(text);
  TEST_EXPECT(ok && c2.lr == c.lr && !strcmp(c2.lr_decay_epochs, "6,9"), "dump round trip");

  /* schedules: both readings of "no warm-up", warm-up, step and linear */
  config_defaults(&c);
  c.lr = 1e-3, c.warmup_steps = 0, c.decay_start = 0;
  TEST_EXPECT(test_close(optim_lr(&c, 1, 1), 1e-3, 1e-12, 0) &&
                  test_close(optim_lr(&c, 100, 1), 1e-4, 1e-9, 0),
              "inverse_sqrt without warm-up decays as lr/sqrt(t)");
  c.decay_start = 400;
  TEST_EXPECT(test_close(optim_lr(&c, 399, 1), 1e-3, 1e-12, 0) &&
                  test_close(optim_lr(&c, 1600, 1), 5e-4, 1e-9, 0),
              "inverse_sqrt held at lr_max until decay_start");
  c.decay_start = 0, c.warmup_steps = 4000;
  TEST_EXPECT(test_close(optim_lr(&c, 1000, 1), 2.5e-4, 1e-9, 0) &&
                  test_close(optim_lr(&c, 4000, 1), 1e-3, 1e-9, 0) &&
                  test_close(optim_lr(&c, 16000, 1), 5e-4, 1e-9, 0),
              "linear warm-up then inverse sqrt");
  snprintf(c.lr_scheduler, sizeof c.lr_scheduler, "step");
  snprintf(c.lr_decay_epochs, sizeof c.lr_decay_epochs, "8");
  c.warmup_steps = 0;
  TEST_EXPECT(test_close(optim_lr(&c, 50, 7), 1e-3, 1e-12, 0) &&
                  test_close(optim_lr(&c, 50, 8), 1e-4, 1e-9, 0),
              "step decay at epoch 8");
  snprintf(c.lr_scheduler, sizeof c.lr_scheduler, "linear");
  c.max_steps = 100, c.end_lr = 0;
  TEST_EXPECT(test_close(optim_lr(&c, 50, 1), 5e-4, 1e-9, 0) && optim_lr(&c, 100, 1) == 0,
              "linear decay");
  return test_finish();
}
