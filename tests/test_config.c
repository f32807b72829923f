// NP: 1
/* test_config.c: the config table: defaults, files, overrides, and that every kind of
 * bad input is refused with a message naming the key (and the line); hand-written files
 * (CRLF, BOM, Unicode spaces, zero-width characters, typographic quotes and minus signs,
 * duplicates, lookalike letters, ...) are read as meant or refused with the odd
 * characters rendered visibly (docs/CONFIG.md, "How a file is read"). */
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
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

/* Is every byte of s printable ASCII (so no message can show two names that look alike
 * but differ in an invisible or lookalike character)? */
static int ascii_only(const char *s) {
  for (; *s; s++)
    if (((unsigned char)*s < 0x20 && *s != '\n') || (unsigned char)*s > 0x7E) return 0;
  return 1;
}

static char tmp_path[] = "/tmp/mpiformer_test_config_file_XXXXXX";

/* Write n bytes of text to the temporary file, defaults into c, load the file. */
static int load(config *c, const char *text, size_t n, char *err, size_t err_len) {
  FILE *f = fopen(tmp_path, "wb");
  if (!f || fwrite(text, 1, n, f) != n) return -99;
  fclose(f);
  config_defaults(c);
  err[0] = '\0';
  return config_load_file(c, tmp_path, err, err_len);
}
#define LOAD(c, lit, err) load((c), (lit), sizeof(lit) - 1, (err), sizeof(err))

/* The file is refused with an ASCII-only message that contains every one of the parts. */
static int refused(const char *text, size_t n, const char *part1, const char *part2) {
  config c;
  char err[1024];
  int rc = load(&c, text, n, err, sizeof err);
  int ok = rc == C_ERR && strstr(err, part1) && (!part2 || strstr(err, part2)) && ascii_only(err);
  if (!ok)
    fprintf(stderr, "  rc=%d, message lacks '%s'%s%s%s or is not ASCII: %s\n", rc, part1,
            part2 ? " / '" : "", part2 ? part2 : "", part2 ? "'" : "", err);
  return ok;
}
#define REFUSED(lit, p1, p2) refused((lit), sizeof(lit) - 1, (p1), (p2))

/* Hand-written files: what editors, web pages and e-mails put into text. */
static void test_hand_written(void) {
  config c;
  char err[1024];
  int fd = mkstemp(tmp_path);
  close(fd);

  /* read as meant, silently */
  TEST_EXPECT(LOAD(&c, "lr = 1e-3\r\nmax_steps = 10\r\n", err) == C_OK && c.lr == 1e-3 &&
                  c.max_steps == 10 && !c.warnings[0],
              "CRLF line endings: %s", err);
  TEST_EXPECT(LOAD(&c, "lr = 1e-3\rmax_steps = 10\r", err) == C_OK && c.lr == 1e-3 &&
                  c.max_steps == 10,
              "lone CR line endings: %s", err);
  TEST_EXPECT(LOAD(&c, "\xef\xbb\xbflr = 1e-3\n", err) == C_OK && c.lr == 1e-3 && !c.warnings[0],
              "UTF-8 byte-order mark: %s", err);
  TEST_EXPECT(LOAD(&c, "lr\t=\t1e-3\t\n\theads = 2\n", err) == C_OK && c.lr == 1e-3 && c.heads == 2,
              "tabs: %s", err);
  TEST_EXPECT(LOAD(&c, "lr = 1e-3  # peak\nheads = 2# two\n", err) == C_OK && c.lr == 1e-3 &&
                  c.heads == 2,
              "trailing comments: %s", err);
  TEST_EXPECT(LOAD(&c, "data = \"x.h5\"\nout = 'runs/#1'  # c\n", err) == C_OK &&
                  !strcmp(c.data, "x.h5") && !strcmp(c.out, "runs/#1") && !c.warnings[0],
              "plain quotes are not part of the value; '#' inside them is: %s / %s", err, c.out);
  TEST_EXPECT(LOAD(&c, "max_steps = 1e3\nwarmup_steps = 40.0\n", err) == C_OK &&
                  c.max_steps == 1000 && c.warmup_steps == 40,
              "1e3 and 40.0 for integer keys: %s", err);
  const char *yes[] = {"true", "yes", "on", "True", "1"},
             *no[] = {"false", "no", "off", "FALSE", "0"};
  for (int i = 0; i < 5; i++) {
    char line[64];
    config_defaults(&c);
    snprintf(line, sizeof line, "eval_bleu = %s", no[i]);
    int rc1 = config_set(&c, line, "x", err, sizeof err);
    int v1 = (int)c.eval_bleu;
    snprintf(line, sizeof line, "zero = %s", yes[i]);
    int rc2 = config_set(&c, line, "x", err, sizeof err);
    TEST_EXPECT(rc1 == C_OK && v1 == 0 && rc2 == C_OK && c.zero == 1, "booleans %s / %s: %s",
                yes[i], no[i], err);
  }
  TEST_EXPECT(refuses("heads=true", "needs a number"), "true is not a number for heads");

  /* read as meant, with a warning that shows the character */
  TEST_EXPECT(LOAD(&c, "lr\xc2\xa0= 1e-3\n", err) == C_OK && c.lr == 1e-3 &&
                  strstr(c.warnings, ":1: a \\u00a0 (no-break space) beside the key 'lr'") &&
                  ascii_only(c.warnings),
              "no-break space after a key: %s / %s", err, c.warnings);
  TEST_EXPECT(LOAD(&c, "\xe2\x80\x8blr = 1e-3\xe2\x80\x89\n", err) == C_OK && c.lr == 1e-3 &&
                  strstr(c.warnings, "\\u200b (zero-width space)") &&
                  strstr(c.warnings, "\\u2009") && ascii_only(c.warnings),
              "zero-width space before a key, thin space after a value: %s / %s", err, c.warnings);
  TEST_EXPECT(LOAD(&c, "data = \xe2\x80\x9cx.h5\xe2\x80\x9d\nout = \xe2\x80\x98r\xe2\x80\x99\n",
                   err) == C_OK &&
                  !strcmp(c.data, "x.h5") && !strcmp(c.out, "r") &&
                  strstr(c.warnings, "typographic quotes \\u201c...\\u201d") &&
                  strstr(c.warnings, "\\u2018...\\u2019"),
              "typographic quotes: %s / %s", err, c.warnings);
  TEST_EXPECT(LOAD(&c,
                   "lr = 1e\xe2\x88\x92"
                   "3\nlabel_smoothing = 1e\xe2\x80\x93"
                   "1\n",
                   err) == C_OK &&
                  c.lr == 1e-3 && c.label_smoothing == 1e-1 &&
                  strstr(c.warnings, "\\u2212 (minus sign) in the value of 'lr' is read as '-'") &&
                  strstr(c.warnings, "\\u2013 (en dash)"),
              "Unicode minus and en dash in a number: %s / %s", err, c.warnings);
  TEST_EXPECT(REFUSED("lr = \xe2\x88\x92"
                      "1e-3\n",
                      "'lr' = -1e-3 is out of range", NULL),
              "a Unicode minus makes a negative lr, refused by the range");

  /* refused, with the line and the characters shown */
  TEST_EXPECT(LOAD(&c, "lr = 1e-3\nheads = 2\nlr = 2e-3\n", err) == C_OK && c.lr == 2e-3 &&
                  strstr(c.warnings, ":3: 'lr' is set again (first on line 1): the value of "
                                     "line 3 wins"),
              "a key written twice: last wins, with a warning: %s / %s", err, c.warnings);
  TEST_EXPECT(LOAD(&c, "# c\r\nlr = 1e-3\r\nlr\xc2\xa0= 2e-3\r\n", err) == C_OK && c.lr == 2e-3 &&
                  strstr(c.warnings, ":3: 'lr' is set again (first on line 2)") &&
                  strstr(c.warnings, "\\u00a0"),
              "a key written twice, once with a no-break space, CRLF line numbers: %s", c.warnings);
  TEST_EXPECT(REFUSED("l\xd0\xb0r = 1e-3\n", ":1: unknown key 'l\\u0430r'",
                      "\\u0430 is a Cyrillic letter like 'a' (did you mean 'lr'?)"),
              "a Cyrillic letter in a key");
  TEST_EXPECT(REFUSED("he\xce\xb1"
                      "ds = 2\n",
                      "unknown key 'he\\u03b1ds'", "did you mean 'heads'"),
              "a Greek letter in a key");
  TEST_EXPECT(
      REFUSED("warmup\xc2\xa0steps = 2\n", "unknown key 'warmup\\u00a0steps'", "no-break space"),
      "a no-break space inside a key");
  TEST_EXPECT(REFUSED("l\xe2\x80\x8br = 1\n", "unknown key 'l\\u200br'", "zero-width space"),
              "a zero-width space inside a key");
  TEST_EXPECT(REFUSED("norm = pr\xd0\xb5\n", "not 'pr\\u0435'", "did you mean 'pre'"),
              "a Cyrillic letter in a choice");
  TEST_EXPECT(REFUSED("data = a\xe2\x80\x8b"
                      "b.h5\n",
                      "value of 'data' holds an invisible", "'a\\u200bb.h5'"),
              "a zero-width space inside a path");
  TEST_EXPECT(REFUSED("max_steps = 1\xc2\xa0"
                      "000\n",
                      "'1\\u00a0000'", "no-break space"),
              "a no-break space as a thousands separator");
  TEST_EXPECT(REFUSED("data = caf\xe9.h5\n", "\\xe9", "not UTF-8"), "Latin-1 byte");
  TEST_EXPECT(REFUSED("lr 1e-3\n", ":1: expected key = value, got 'lr 1e-3'",
                      "is the '=' after 'lr' missing?"),
              "a missing '='");
  TEST_EXPECT(REFUSED("lr: 1e-3\n", "expected key = value", "YAML"), "YAML's ':'");
  TEST_EXPECT(REFUSED("--lr=1e-3\n", "unknown key '--lr'", NULL), "a '--' flag");
  TEST_EXPECT(refuses("--lr", "flags are not read"), "a '--' flag without '='");
  TEST_EXPECT(REFUSED("lr\xef\xbc\x9d"
                      "1e-3\n",
                      "'lr\\uff1d1e-3'", "fullwidth equals sign"),
              "a fullwidth '='");
  TEST_EXPECT(REFUSED("lr = 1e-3x\n", "'lr' needs a number, not '1e-3x'", "follows the number"),
              "trailing junk after a number");
  TEST_EXPECT(REFUSED("lr = 1e-3 ; peak\n", "needs a number, not '1e-3 ; peak'", NULL),
              "a ';' comment");
  TEST_EXPECT(REFUSED("max_steps = 1,000\n", "not '1,000'", "without separators"),
              "1,000 for an integer");
  TEST_EXPECT(REFUSED("max_steps = 1_000\n", "not '1_000'", NULL), "1_000 for an integer");
  TEST_EXPECT(REFUSED("max_steps = 2.5\n", "needs an integer, not '2.5'", NULL),
              "2.5 for an integer");
  TEST_EXPECT(REFUSED("max_steps = 0x10\n", "needs a number", NULL), "hex");
  TEST_EXPECT(REFUSED("lr = nan\n", "needs a number", NULL), "nan");
  TEST_EXPECT(REFUSED("eval_bleu = maybe\n", "needs a 0 or 1 (or true/false), not 'maybe'", NULL),
              "a boolean word we do not know");
  TEST_EXPECT(REFUSED("data = 'x.h5\n", "unmatched quote", NULL), "an unmatched quote");
  TEST_EXPECT(REFUSED("data = \"x.h5\" y\n", "unmatched quote", NULL), "junk after a quoted value");
  TEST_EXPECT(REFUSED("data = a\tb\n", "'a\\tb'", "a tab"), "a tab inside a value");
  TEST_EXPECT(REFUSED("lr = 1\n\x00\n", ":2: the line holds a NUL byte", NULL), "a NUL byte");
  TEST_EXPECT(REFUSED("\xff\xfel\x00r\x00", "UTF-16", NULL), "UTF-16");
  TEST_EXPECT(REFUSED("", "is empty", tmp_path), "an empty file");
  TEST_EXPECT(REFUSED("# nothing\n\n   \r\n\xc2\xa0\n", "has no settings", tmp_path),
              "a file of comments and blank lines");

  /* a long line (beyond any fixed buffer) is one line */
  char big[3000];
  memset(big, 'x', sizeof big);
  memcpy(big, "# ", 2);
  memcpy(big + 2000, "\nlr = 1e-3\n", 11);
  TEST_EXPECT(load(&c, big, 2011, err, sizeof err) == C_OK && c.lr == 1e-3,
              "a 2000-byte comment: %s", err);

  /* /dev/null is the explicit "no file" (scripts use it); a regular empty file is not */
  config_defaults(&c);
  TEST_EXPECT(config_load_file(&c, "/dev/null", err, sizeof err) == C_OK, "/dev/null: %s", err);

  /* a directory */
  char dir[] = "/tmp/mpiformer_test_config_dir_XXXXXX";
  TEST_EXPECT(mkdtemp(dir) != NULL, "mkdtemp");
  config_defaults(&c);
  int rc = config_load_file(&c, dir, err, sizeof err);
  TEST_EXPECT(rc == C_ERR && strstr(err, "is a directory") && strstr(err, dir), "a directory: %s",
              err);
  char *args[] = {dir, "lr=1e-3"};
  TEST_EXPECT(config_from_args(&c, 2, args, err, sizeof err) == C_ERR && strstr(err, "directory"),
              "a directory through config_from_args");
  rmdir(dir);

  /* a command-line override of a file key is allowed and silent; warnings reach config */
  FILE *f = fopen(tmp_path, "wb");
  fputs("lr = 1e-3\nheads\xc2\xa0= 2\n", f);
  fclose(f);
  char *args2[] = {tmp_path, "lr=2e-3", "lr=3e-3", "d_model=64"};
  TEST_EXPECT(config_from_args(&c, 4, args2, err, sizeof err) == C_OK && c.lr == 3e-3 &&
                  c.heads == 2 && strstr(c.warnings, "\\u00a0") && !strstr(c.warnings, "lr"),
              "command-line overrides of a file key: %s / %s", err, c.warnings);
  remove(tmp_path);
}

int main(void) {
  config c;
  char err[512];
  config_defaults(&c);
  TEST_EXPECT(c.d_model == 512 && c.heads == 4 && !strcmp(c.norm, "pre"), "defaults");
  TEST_EXPECT(config_set(&c, "lr = 1e-3", "x", err, sizeof err) == 0 && c.lr == 1e-3, "set lr");
  TEST_EXPECT(config_set(&c, "norm=post", "x", err, sizeof err) == 0 && !strcmp(c.norm, "post"),
              "set norm");

  TEST_EXPECT(config_set(&c, "lr=abc", "x", err, sizeof err) == C_ERR, "C_ERR on a bad value");
  TEST_EXPECT(config_set(&c, "lr=1e-3", "x", err, sizeof err) == C_OK, "C_OK on a good one");
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
  TEST_EXPECT(refuses("noequals", "expected key = value"), "no '='");

  /* a file with a bad line names the file and the line */
  char path[] = "/tmp/mpiformer_test_config_XXXXXX";
  int fd = mkstemp(path);
  FILE *f = fdopen(fd, "w");
  fprintf(f, "# comment\nlr = 2e-4\n\nwarmup_stesp = 10\n");
  fclose(f);
  config_defaults(&c);
  int rc = config_load_file(&c, path, err, sizeof err);
  TEST_EXPECT(rc != 0 &&
                  strstr(err, ":4: unknown key 'warmup_stesp' (did you mean 'warmup_steps'?)"),
              "file error names line 4: %s", err);
  TEST_EXPECT(c.lr == 2e-4, "lines before the error applied");
  remove(path);
  TEST_EXPECT(config_load_file(&c, "/nonexistent/x.conf", err, sizeof err) != 0 &&
                  strstr(err, "cannot read config file"),
              "missing file");

  test_hand_written();

  /* default TP grid: most square with pc | heads */
  config_defaults(&c);
  config_set(&c, "tp=4", "x", err, sizeof err);
  TEST_EXPECT(config_validate(&c, err, sizeof err) == 0 && c.tp_pr == 2 && c.tp_pc == 2,
              "tp=4 -> 2x2");
  config_set(&c, "tp=3", "x", err, sizeof err);
  TEST_EXPECT(config_validate(&c, err, sizeof err) == 0 && c.tp_pr == 3 && c.tp_pc == 1,
              "tp=3 heads=4 -> 3x1");

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
