/* config.c: key = value configuration, driven by the CONFIG_KEYS table (see config.h).
 *
 * The table gives each key's type, default and range; this file only walks it. The
 * checks that involve several keys live in config_validate.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { T_INT, T_FLOAT, T_STR };

typedef struct key_info {
  const char *name;
  int type;
  size_t offset;
  const char *def_str;
  double def_num;
  double lo, hi;
  const char *choices;
  const char *help;
} key_info;

#define KI_INT(name, def, lo, hi, help)                                                            \
  {#name, T_INT, offsetof(config, name), NULL, (double)(def), (double)(lo), (double)(hi), NULL, help},
#define KI_FLOAT(name, def, lo, hi, help)                                                          \
  {#name, T_FLOAT, offsetof(config, name), NULL, (double)(def), (double)(lo), (double)(hi), NULL,  \
   help},
#define KI_STR(name, def, lo, hi, help)                                                            \
  {#name, T_STR, offsetof(config, name), def, 0, 0, 0, lo, help},
#define KI(name, type, def, lo, hi, help) KI_##type(name, def, lo, hi, help)
static const key_info keys[] = {CONFIG_KEYS(KI)};
#undef KI
static const size_t n_keys = sizeof keys / sizeof keys[0];

void config_defaults(config *c) {
  memset(c, 0, sizeof *c);
  for (size_t i = 0; i < n_keys; i++) {
    char *field = (char *)c + keys[i].offset;
    if (keys[i].type == T_INT) *(int64_t *)field = (int64_t)keys[i].def_num;
    else if (keys[i].type == T_FLOAT) *(double *)field = keys[i].def_num;
    else snprintf(field, 256, "%s", keys[i].def_str);
  }
}

/* Levenshtein distance, for "did you mean". */
static int edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 63 || lb > 63) return 99;
  int d[64][64];
  for (size_t i = 0; i <= la; i++) d[i][0] = (int)i;
  for (size_t j = 0; j <= lb; j++) d[0][j] = (int)j;
  for (size_t i = 1; i <= la; i++)
    for (size_t j = 1; j <= lb; j++) {
      int sub = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
      int del = d[i - 1][j] + 1, ins = d[i][j - 1] + 1;
      d[i][j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
    }
  return d[la][lb];
}

static const key_info *find_key(const char *name) {
  for (size_t i = 0; i < n_keys; i++)
    if (strcmp(keys[i].name, name) == 0) return &keys[i];
  return NULL;
}

static int choice_ok(const char *choices, const char *v) {
  if (!choices || !choices[0]) return 1;
  size_t n = strlen(v);
  for (const char *p = choices; *p;) {
    const char *bar = strchr(p, '|');
    size_t len = bar ? (size_t)(bar - p) : strlen(p);
    if (len == n && strncmp(p, v, n) == 0) return 1;
    p += len + (bar ? 1 : 0);
    if (!bar) break;
  }
  return 0;
}

static char *trim(char *s) {
  while (isspace((unsigned char)*s)) s++;
  char *e = s + strlen(s);
  while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
  return s;
}

static int set_value(config *c, const char *key, const char *value, const char *where, char *err,
                     size_t err_len) {
  const key_info *k = find_key(key);
  if (!k) {
    const char *best = NULL;
    int best_d = 4;
    for (size_t i = 0; i < n_keys; i++) {
      int dist = edit_distance(key, keys[i].name);
      if (dist < best_d) best_d = dist, best = keys[i].name;
    }
    if (best)
      snprintf(err, err_len, "%s: unknown key '%s' (did you mean '%s'?)", where, key, best);
    else
      snprintf(err, err_len, "%s: unknown key '%s' (see docs/CONFIG.md for the keys)", where, key);
    return -1;
  }
  char *field = (char *)c + k->offset;
  if (k->type == T_STR) {
    if (strlen(value) >= 256) {
      snprintf(err, err_len, "%s: value of '%s' is longer than 255 characters", where, key);
      return -1;
    }
    if (!choice_ok(k->choices, value)) {
      snprintf(err, err_len, "%s: '%s' must be one of %s, not '%s'", where, key, k->choices,
               value);
      return -1;
    }
    snprintf(field, 256, "%s", value);
    return 0;
  }
  char *end = NULL;
  errno = 0;
  double v = strtod(value, &end);
  if (!value[0] || *end != '\0' || errno || !isfinite(v)) {
    snprintf(err, err_len, "%s: '%s' needs a number, not '%s'", where, key, value);
    return -1;
  }
  if (k->type == T_INT && v != floor(v)) {
    snprintf(err, err_len, "%s: '%s' needs an integer, not '%s'", where, key, value);
    return -1;
  }
  if (v < k->lo || v > k->hi) {
    snprintf(err, err_len, "%s: '%s' = %s is out of range [%g, %g]", where, key, value, k->lo,
             k->hi);
    return -1;
  }
  if (k->type == T_INT) *(int64_t *)field = (int64_t)v;
  else *(double *)field = v;
  return 0;
}

int config_set(config *c, const char *key_value, const char *where, char *err, size_t err_len) {
  char buf[1024];
  snprintf(buf, sizeof buf, "%s", key_value);
  char *eq = strchr(buf, '=');
  if (!eq) {
    snprintf(err, err_len, "%s: expected key=value, got '%s'", where, key_value);
    return -1;
  }
  *eq = '\0';
  return set_value(c, trim(buf), trim(eq + 1), where, err, err_len);
}

int config_load_file(config *c, const char *path, char *err, size_t err_len) {
  FILE *f = fopen(path, "r");
  if (!f) {
    snprintf(err, err_len, "cannot read config file '%s': %s", path, strerror(errno));
    return -1;
  }
  char line[1024], where[600];
  int lineno = 0, rc = 0;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    char *hash = strchr(line, '#');
    if (hash) *hash = '\0';
    char *s = trim(line);
    if (!*s) continue;
    snprintf(where, sizeof where, "%s:%d", path, lineno);
    if (config_set(c, s, where, err, err_len) != 0) {
      rc = -1;
      break;
    }
  }
  fclose(f);
  return rc;
}

int config_validate(config *c, char *err, size_t err_len) {
  if (c->d_model % c->heads != 0) {
    snprintf(err, err_len, "heads=%lld must divide d_model=%lld", (long long)c->heads,
             (long long)c->d_model);
    return -1;
  }
  if (c->d_model % 2 != 0) {
    snprintf(err, err_len, "d_model=%lld must be even (sinusoidal positions)",
             (long long)c->d_model);
    return -1;
  }
  if (c->lr_decay_epochs[0]) {
    for (const char *p = c->lr_decay_epochs; *p; p++)
      if (!isdigit((unsigned char)*p) && *p != ',') {
        snprintf(err, err_len, "lr_decay_epochs must be comma-separated epochs, e.g. 8 or 6,9");
        return -1;
      }
  }
  if (!strcmp(c->lr_scheduler, "linear") && c->max_steps == 0) {
    snprintf(err, err_len, "lr_scheduler=linear needs max_steps (it decays to end_lr there)");
    return -1;
  }
  if (!strcmp(c->lr_scheduler, "step") && !c->lr_decay_epochs[0]) {
    snprintf(err, err_len, "lr_scheduler=step needs lr_decay_epochs (e.g. lr_decay_epochs=8)");
    return -1;
  }
  /* micro-batches: update_freq and microbatches are one setting (the batches of max_tokens
   * a replica accumulates per update); microbatches is the pipeline's name for it */
  if (c->microbatches != 1 && c->update_freq != 1 && c->microbatches != c->update_freq) {
    snprintf(err, err_len,
             "microbatches=%lld and update_freq=%lld disagree: both are the micro-batches a "
             "replica accumulates per update; set one of them (or both to the same value)",
             (long long)c->microbatches, (long long)c->update_freq);
    return -1;
  }
  if (c->microbatches > c->update_freq) c->update_freq = c->microbatches;
  c->microbatches = c->update_freq;
  int translation = strcmp(c->arch, "transformer") == 0;
  int64_t n_layers = c->enc_layers + (translation ? c->dec_layers : 0);
  if (c->pp > 1 && c->pp > n_layers) {
    char parts[96];
    if (translation)
      snprintf(parts, sizeof parts, "enc_layers=%lld + dec_layers=%lld", (long long)c->enc_layers,
               (long long)c->dec_layers);
    else
      snprintf(parts, sizeof parts, "enc_layers=%lld", (long long)c->enc_layers);
    snprintf(err, err_len,
             "pp=%lld exceeds the %lld layers of arch=%s (%s): every pipeline stage needs at "
             "least one layer",
             (long long)c->pp, (long long)n_layers, c->arch, parts);
    return -1;
  }
  /* TP grid shape */
  int pr = 0, pc = 0;
  if (c->tp_grid[0]) {
    if (sscanf(c->tp_grid, "%dx%d", &pr, &pc) != 2 || pr < 1 || pc < 1) {
      snprintf(err, err_len, "tp_grid='%s' must look like 2x1 (rows x columns)", c->tp_grid);
      return -1;
    }
    if ((int64_t)pr * pc != c->tp) {
      snprintf(err, err_len, "tp_grid=%s has %d ranks but tp=%lld", c->tp_grid, pr * pc,
               (long long)c->tp);
      return -1;
    }
  } else { /* most square grid whose pc divides heads */
    pr = (int)c->tp, pc = 1;
    for (int q = 1; q <= c->tp; q++)
      if (c->tp % q == 0 && c->heads % q == 0) {
        int r = (int)c->tp / q;
        if (abs(r - q) < abs(pr - pc) || (abs(r - q) == abs(pr - pc) && q > pc)) pr = r, pc = q;
      }
  }
  if (c->heads % pc != 0) {
    snprintf(err, err_len, "tp_grid %dx%d: the %d process columns must divide heads=%lld", pr, pc,
             pc, (long long)c->heads);
    return -1;
  }
  c->tp_pr = pr;
  c->tp_pc = pc;
  return 0;
}

int config_from_args(config *c, int argc, char **argv, char *err, size_t err_len) {
  config_defaults(c);
  int i = 0;
  if (argc > 0 && !strchr(argv[0], '=')) {
    if (config_load_file(c, argv[0], err, err_len) != 0) return -1;
    i = 1;
  }
  for (; i < argc; i++)
    if (config_set(c, argv[i], "command line", err, err_len) != 0) return -1;
  return config_validate(c, err, err_len);
}

char *config_dump(const config *c) {
  size_t cap = n_keys * 300 + 1, len = 0;
  char *buf = malloc(cap);
  if (!buf) return NULL;
  buf[0] = '\0';
  for (size_t i = 0; i < n_keys; i++) {
    const char *field = (const char *)c + keys[i].offset;
    if (keys[i].type == T_INT)
      len += snprintf(buf + len, cap - len, "%s = %lld\n", keys[i].name,
                      (long long)*(const int64_t *)field);
    else if (keys[i].type == T_FLOAT)
      len += snprintf(buf + len, cap - len, "%s = %.9g\n", keys[i].name, *(const double *)field);
    else len += snprintf(buf + len, cap - len, "%s = %s\n", keys[i].name, field);
  }
  return buf;
}

void config_print_keys(FILE *f) {
  fprintf(f, "| key | type | default | allowed | meaning |\n|---|---|---|---|---|\n");
  for (size_t i = 0; i < n_keys; i++) {
    const key_info *k = &keys[i];
    if (k->type == T_STR)
      fprintf(f, "| `%s` | string | `%s` | %s | %s |\n", k->name, k->def_str,
              k->choices && k->choices[0] ? k->choices : "any", k->help);
    else
      fprintf(f, "| `%s` | %s | `%.10g` | %.10g .. %.10g | %s |\n", k->name,
              k->type == T_INT ? "int" : "float", k->def_num, k->lo, k->hi, k->help);
  }
}
