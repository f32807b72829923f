// NP: 1
/* test_bleu.c: bleu against sacreBLEU's own numbers (data in tests/data/bleu, which
 * tests/data/bleu/README.md describes, or in the folder MPIFORMER_BLEU_DATA names):
 *   - tok13a.tsv: every tokenizer corner, string and token count;
 *   - cases.tsv + cases_stats.tsv: sacreBLEU's test-suite cases (score within the case's
 *     tolerance, the full-precision score, counts, totals and lengths exactly), except
 *     the 4 cases of the intl and char tokenizers, which this module does not have;
 *   - wmt17/expected.tsv: WMT17 en-de systems (3 here, all 16 in the full set) under
 *     13a/exp, none/exp, 13a/none, 13a/floor 0.1, 13a/add-k 1 and 13a lowercased, the
 *     Moses multi-bleu line on the 13a-tokenized files, and the 13a tokenizer against
 *     those files line by line;
 *   - bleu_cli on one system (stdout captured), and its line-count error.
 */
#include "bleu.h"
#include "harness.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char data_dir[1024];

/* ------------------------------------------------------------------ small helpers */

static char *read_file(const char *dir, const char *name, size_t *len) {
  char path[2048];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = malloc((size_t)n + 1);
  size_t got = fread(s, 1, (size_t)n, f);
  fclose(f);
  s[got] = '\0';
  if (len) *len = got;
  return s;
}

/* Cut s in place at every occurrence of sep; returns a malloc'd array of pieces.
 * With drop_last_empty, a trailing empty piece (file ending in "\n") is dropped. */
static char **split(char *s, const char *sep, size_t *n, int drop_last_empty) {
  size_t cap = 16, k = 0, sl = strlen(sep);
  char **v = malloc(cap * sizeof *v);
  char *p = s;
  for (;;) {
    if (k + 1 >= cap) v = realloc(v, (cap *= 2) * sizeof *v);
    char *q = strstr(p, sep);
    v[k++] = p;
    if (!q) break;
    *q = '\0';
    p = q + sl;
  }
  if (drop_last_empty && k > 0 && v[k - 1][0] == '\0') k--;
  *n = k;
  return v;
}

static void put_utf8(uint32_t u, char **o) {
  unsigned char *p = (unsigned char *)*o;
  if (u < 0x80) {
    *p++ = (unsigned char)u;
  } else if (u < 0x800) {
    *p++ = (unsigned char)(0xc0 | (u >> 6));
    *p++ = (unsigned char)(0x80 | (u & 0x3f));
  } else if (u < 0x10000) {
    *p++ = (unsigned char)(0xe0 | (u >> 12));
    *p++ = (unsigned char)(0x80 | ((u >> 6) & 0x3f));
    *p++ = (unsigned char)(0x80 | (u & 0x3f));
  } else {
    *p++ = (unsigned char)(0xf0 | (u >> 18));
    *p++ = (unsigned char)(0x80 | ((u >> 12) & 0x3f));
    *p++ = (unsigned char)(0x80 | ((u >> 6) & 0x3f));
    *p++ = (unsigned char)(0x80 | (u & 0x3f));
  }
  *o = (char *)p;
}

static uint32_t hex4(const char *s) {
  uint32_t u = 0;
  for (int i = 0; i < 4; i++) {
    char c = s[i];
    u = u * 16 + (uint32_t)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
  }
  return u;
}

/* Unescape a JSON string literal ("..." with quotes) into a malloc'd UTF-8 string
 * (\uXXXX with surrogate pairs included). Returns NULL if it is not a JSON string. */
static char *json_unescape(const char *s) {
  size_t n = strlen(s);
  if (n < 2 || s[0] != '"' || s[n - 1] != '"') return NULL;
  char *out = malloc(2 * n + 8), *o = out;
  for (size_t i = 1; i + 1 < n; i++) {
    if (s[i] != '\\') {
      *o++ = s[i];
      continue;
    }
    char e = s[++i];
    switch (e) {
    case 'n':
      *o++ = '\n';
      break;
    case 't':
      *o++ = '\t';
      break;
    case 'r':
      *o++ = '\r';
      break;
    case 'b':
      *o++ = '\b';
      break;
    case 'f':
      *o++ = '\f';
      break;
    case 'u': {
      uint32_t u = hex4(s + i + 1);
      i += 4;
      if (u >= 0xd800 && u < 0xdc00 && s[i + 1] == '\\' && s[i + 2] == 'u') {
        uint32_t lo = hex4(s + i + 3);
        if (lo >= 0xdc00 && lo < 0xe000) {
          u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
          i += 6;
        }
      }
      put_utf8(u, &o);
      break;
    }
    default:
      *o++ = e;
      break; /* \" \\ \/ */
    }
  }
  *o = '\0';
  return out;
}

static int col_index(char **hdr, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++)
    if (!strcmp(hdr[i], name)) return (int)i;
  fprintf(stderr, "column %s missing\n", name);
  exit(2);
}

/* "counts=1,2;totals=3,4;sys_len=5;ref_len=6" or the bare list "1,2,3". */
static int parse_list(const char *s, int64_t *v, int max) {
  int k = 0;
  while (*s && k < max) {
    char *end;
    v[k++] = strtoll(s, &end, 10);
    if (*end != ',') break;
    s = end + 1;
  }
  return k;
}

static int parse_field(const char *s, const char *key, int64_t *v, int max) {
  char pat[64];
  snprintf(pat, sizeof pat, "%s=", key);
  const char *p = strstr(s, pat);
  if (!p) return 0;
  return parse_list(p + strlen(pat), v, max);
}

/* Split a cases.tsv text column into segments ("@file:PATH" = lines of that file). */
static char **segments(const char *text, size_t *n, char **owned) {
  if (!strncmp(text, "@file:", 6)) {
    *owned = read_file(data_dir, text + 6, NULL);
    if (!*owned) {
      *n = 0;
      return NULL;
    }
    return split(*owned, "\n", n, 1);
  }
  *owned = strdup(text);
  return split(*owned, " ||| ", n, 0);
}

static int same_double(double a, double b) {
  return memcmp(&a, &b, sizeof a) == 0;
}

/* ------------------------------------------------------------------ tok13a.tsv */

static void test_tok13a(void) {
  char *text = read_file(data_dir, "tok13a.tsv", NULL);
  TEST_EXPECT(text, "cannot read %s/tok13a.tsv", data_dir);
  if (!text) return;
  size_t n_lines, checked = 0;
  char **lines = split(text, "\n", &n_lines, 1);
  for (size_t i = 1; i < n_lines; i++) {
    size_t nf;
    char **f = split(lines[i], "\t", &nf, 0);
    TEST_EXPECT(nf == 3, "tok13a.tsv line %zu has %zu fields", i + 1, nf);
    if (nf == 3) {
      char *in = json_unescape(f[0]), *want = json_unescape(f[1]);
      char out[4096];
      size_t len = bleu_tokenize_13a(in, out, sizeof out);
      TEST_EXPECT(!strcmp(out, want) && len == strlen(want), "13a(%s) = \"%s\", want %s", f[0], out,
                  f[1]);
      TEST_EXPECT(bleu_count_tokens(out) == (size_t)atoi(f[2]), "13a(%s): %zu tokens, want %s",
                  f[0], bleu_count_tokens(out), f[2]);
      /* truncation behaves as snprintf */
      char small[4];
      size_t len2 = bleu_tokenize_13a(in, small, sizeof small);
      TEST_EXPECT(len2 == len && strlen(small) == (len < 3 ? len : 3) &&
                      !strncmp(small, want, strlen(small)),
                  "13a(%s) truncated to 4 bytes: '%s'", f[0], small);
      free(in);
      free(want);
      checked++;
    }
    free(f);
  }
  printf("tok13a.tsv: %zu inputs checked\n", checked);
  /* the README says 84 inputs; the file holds 82 rows after its header */
  TEST_EXPECT(checked == 82, "tok13a.tsv: %zu inputs, want 82", checked);
  free(lines);
  free(text);
}

/* ------------------------------------------------------------------ cases.tsv */

static void test_cases(void) {
  char *text = read_file(data_dir, "cases.tsv", NULL);
  char *stext = read_file(data_dir, "cases_stats.tsv", NULL);
  TEST_EXPECT(text && stext, "cannot read cases.tsv / cases_stats.tsv in %s", data_dir);
  if (!text || !stext) return;
  size_t n_lines, n_slines, nh, nsh;
  char **lines = split(text, "\n", &n_lines, 1);
  char **slines = split(stext, "\n", &n_slines, 1);
  char **hdr = split(lines[0], "\t", &nh, 0);
  char **shdr = split(slines[0], "\t", &nsh, 0);
  int c_id = col_index(hdr, nh, "case_id"), c_tok = col_index(hdr, nh, "tokenizer");
  int c_sm = col_index(hdr, nh, "smooth_method"), c_sv = col_index(hdr, nh, "smooth_value");
  int c_hyp = col_index(hdr, nh, "hypotheses"), c_ref = col_index(hdr, nh, "references");
  int c_exp = col_index(hdr, nh, "expected_score");
  int c_ct = col_index(hdr, nh, "expected_counts_totals");
  int c_eff = col_index(hdr, nh, "effective_order"), c_lc = col_index(hdr, nh, "lowercase");
  int c_ord = col_index(hdr, nh, "max_ngram_order"), c_sc = col_index(hdr, nh, "score_scale");
  int c_tol = col_index(hdr, nh, "tolerance");
  int s_id = col_index(shdr, nsh, "case_id");
  int s_full = col_index(shdr, nsh, "full_precision_score_percent");
  int s_cnt = col_index(shdr, nsh, "counts"), s_tot = col_index(shdr, nsh, "totals");
  int s_sys = col_index(shdr, nsh, "sys_len"), s_ref = col_index(shdr, nsh, "ref_len");

  int checked = 0, skipped = 0, bit_identical = 0, with_full = 0;
  for (size_t li = 1; li < n_lines; li++) {
    size_t nf;
    char **f = split(lines[li], "\t", &nf, 0);
    if (nf < nh) {
      TEST_EXPECT(0, "cases.tsv line %zu has %zu fields", li + 1, nf);
      free(f);
      continue;
    }
    const char *id = f[c_id];
    if (!strcmp(f[c_tok], "intl") || !strcmp(f[c_tok], "char")) {
      printf("skip %s: tokenizer '%s' is not implemented (13a and none only)\n", id, f[c_tok]);
      TEST_EXPECT(!strcmp(id, "bleu_corpus_5") || !strcmp(id, "sent_10") ||
                      !strcmp(id, "sent_11") || !strcmp(id, "sent_12"),
                  "unexpected skip of %s", id);
      skipped++;
      free(f);
      continue;
    }
    /* the matching cases_stats.tsv row */
    char **sf = NULL;
    size_t nsf = 0;
    for (size_t k = 1; k < n_slines && !sf; k++) {
      char *copy = strdup(slines[k]);
      char **t = split(copy, "\t", &nsf, 0);
      if (nsf >= 6 && !strcmp(t[s_id], id)) {
        sf = t;
      } else {
        free(t);
        free(copy);
      }
    }
    TEST_EXPECT(sf, "%s: no row in cases_stats.tsv", id);

    bleu_opts o;
    bleu_opts_default(&o);
    o.tokenize = !strcmp(f[c_tok], "none") ? BLEU_TOK_NONE : BLEU_TOK_13A;
    const char *sm = f[c_sm];
    o.smooth = !strcmp(sm, "exp")     ? BLEU_SMOOTH_EXP
               : !strcmp(sm, "floor") ? BLEU_SMOOTH_FLOOR
               : !strcmp(sm, "add-k") ? BLEU_SMOOTH_ADD_K
                                      : BLEU_SMOOTH_NONE;
    TEST_EXPECT(!strcmp(sm, "exp") || !strcmp(sm, "floor") || !strcmp(sm, "add-k") ||
                    !strcmp(sm, "none"),
                "%s: smoothing %s", id, sm);
    o.smooth_value = !strcmp(f[c_sv], "default") ? -1.0 : atof(f[c_sv]);
    o.effective_order = !strcmp(f[c_eff], "yes");
    o.lowercase = !strcmp(f[c_lc], "yes");
    o.max_order = atoi(f[c_ord]);

    bleu_stats st;
    bleu_result r;
    if (!strcmp(f[c_hyp], "-")) { /* score given statistics */
      bleu_stats_init(&st, &o);
      int64_t v[2] = {-1, -1};
      TEST_EXPECT(parse_field(f[c_ct], "counts", st.correct, o.max_order) == o.max_order &&
                      parse_field(f[c_ct], "totals", st.total, o.max_order) == o.max_order,
                  "%s: cannot parse %s", id, f[c_ct]);
      parse_field(f[c_ct], "sys_len", v, 1);
      st.sys_len = v[0];
      parse_field(f[c_ct], "ref_len", v + 1, 1);
      st.ref_len = v[1];
      bleu_score(&st, &o, &r);
    } else {
      size_t n_hyp, n_streams;
      char *hyp_owned, *ref_text = strdup(f[c_ref]);
      char **hyps = segments(f[c_hyp], &n_hyp, &hyp_owned);
      char **streams = split(ref_text, " #### ", &n_streams, 0);
      const char **refs[8];
      char *ref_owned[8];
      int ok = hyps && n_streams <= 8;
      for (size_t j = 0; ok && j < n_streams; j++) {
        size_t n_ref;
        refs[j] = (const char **)segments(streams[j], &n_ref, &ref_owned[j]);
        ok = refs[j] && n_ref == n_hyp;
      }
      TEST_EXPECT(ok, "%s: cannot read its segments", id);
      if (!ok) exit(2);
      bleu_corpus((const char *const *)hyps, (const char *const *const *)refs, (int)n_streams,
                  n_hyp, &o, &st, &r);
      for (size_t j = 0; j < n_streams; j++) {
        free(refs[j]);
        free(ref_owned[j]);
      }
      free(hyps);
      free(hyp_owned);
      free(streams);
      free(ref_text);
    }

    /* statistics as sacreBLEU returns them (add-k included) */
    if (sf) {
      int64_t cnt[BLEU_MAX_ORDER], tot[BLEU_MAX_ORDER];
      int nc = parse_list(sf[s_cnt], cnt, BLEU_MAX_ORDER);
      int nt = parse_list(sf[s_tot], tot, BLEU_MAX_ORDER);
      int same = nc == o.max_order && nt == o.max_order;
      for (int k = 0; same && k < nc; k++)
        same = r.counts[k] == (double)cnt[k] && r.totals[k] == (double)tot[k];
      TEST_EXPECT(same, "%s: counts/totals differ from %s / %s (got %g,%g,%g,%g / %g,%g,%g,%g)", id,
                  sf[s_cnt], sf[s_tot], r.counts[0], r.counts[1], r.counts[2], r.counts[3],
                  r.totals[0], r.totals[1], r.totals[2], r.totals[3]);
      TEST_EXPECT(r.sys_len == atoll(sf[s_sys]) && r.ref_len == atoll(sf[s_ref]),
                  "%s: sys_len %lld ref_len %lld, want %s %s", id, (long long)r.sys_len,
                  (long long)r.ref_len, sf[s_sys], sf[s_ref]);
      if (f[c_exp][0]) { /* the full-precision score (not for the stats-only row) */
        double full = strtod(sf[s_full], NULL);
        with_full++;
        bit_identical += same_double(r.score, full);
        TEST_EXPECT(test_close(r.score, full, 1e-12, 1e-300), "%s: score %.17g, sacreBLEU %.17g",
                    id, r.score, full);
      }
      free(sf[0]);
      free(sf);
    }

    /* the literal expected value with the case's tolerance */
    const char *tol = f[c_tol], *exp_s = f[c_exp];
    double got = !strncmp(f[c_sc], "fraction", 8) ? r.score / 100.0 : r.score;
    char line[512], want[512];
    if (!exp_s[0]) {
      /* stats only (bleu_statistics_1) */
    } else if (!strcmp(tol, "string")) {
      snprintf(line, sizeof line, "%.2f", r.score);
      TEST_EXPECT(!strcmp(line, exp_s), "%s: %s, want %s", id, line, exp_s);
    } else if (!strcmp(tol, "display") || !strcmp(tol, "display4")) {
      bleu_format_width(&r, !strcmp(tol, "display") ? 2 : 4, line, sizeof line);
      const char *verbose = strstr(f[c_ct], "verbose=");
      snprintf(want, sizeof want, "BLEU = %s %s", exp_s, verbose ? verbose + 8 : "?");
      TEST_EXPECT(!strcmp(line, want), "%s:\n  got  %s\n  want %s", id, line, want);
    } else if (!strcmp(tol, "exact(==)")) {
      TEST_EXPECT(got == strtod(exp_s, NULL), "%s: %.17g != %s", id, got, exp_s);
    } else {
      double t = strtod(tol, NULL);
      TEST_EXPECT(t > 0 && fabs(got - strtod(exp_s, NULL)) <= t, "%s: %.12g, want %s +- %s", id,
                  got, exp_s, tol);
    }
    checked++;
    free(f);
  }
  printf("cases.tsv: %d cases checked, %d skipped; full-precision score bit-identical in "
         "%d of %d\n",
         checked, skipped, bit_identical, with_full);
  TEST_EXPECT(checked == 45 && skipped == 4, "cases: %d checked, %d skipped (want 45, 4)", checked,
              skipped);
  free(hdr);
  free(shdr);
  free(lines);
  free(slines);
  free(text);
  free(stext);
}

/* ------------------------------------------------------------------ WMT17 */

typedef struct {
  char *text;
  char **lines;
  size_t n;
} lines_file;

static int load_lines(const char *name, lines_file *lf) {
  char path[512];
  snprintf(path, sizeof path, "wmt17/%s", name);
  lf->text = read_file(data_dir, path, NULL);
  if (!lf->text) return 0;
  lf->lines = split(lf->text, "\n", &lf->n, 1);
  return 1;
}

static void free_lines(lines_file *lf) {
  free(lf->lines);
  free(lf->text);
}

static double corpus(const lines_file *hyp, const lines_file *ref, bleu_tokenizer tok,
                     bleu_smooth sm, double sv, int lc, bleu_stats *st, bleu_result *r) {
  bleu_opts o;
  bleu_opts_default(&o);
  o.tokenize = tok;
  o.smooth = sm;
  o.smooth_value = sv;
  o.lowercase = lc;
  const char *const *refs[1] = {(const char *const *)ref->lines};
  bleu_corpus((const char *const *)hyp->lines, refs, 1, hyp->n, &o, st, r);
  return r->score;
}

static int stats_match(const bleu_stats *st, const char *want) {
  int64_t c[4], t[4], sys, ref;
  if (parse_field(want, "counts", c, 4) != 4 || parse_field(want, "totals", t, 4) != 4 ||
      parse_field(want, "sys_len", &sys, 1) != 1 || parse_field(want, "ref_len", &ref, 1) != 1)
    return 0;
  for (int k = 0; k < 4; k++)
    if (st->correct[k] != c[k] || st->total[k] != t[k]) return 0;
  return st->sys_len == sys && st->ref_len == ref;
}

static int n_bit = 0, n_scores = 0;

static void expect_score(const char *sys, const char *what, double got, const char *want_s) {
  double want = strtod(want_s, NULL);
  n_scores++;
  n_bit += same_double(got, want);
  TEST_EXPECT(test_close(got, want, 1e-12, 0), "%s %s: %.17g, sacreBLEU %s", sys, what, got,
              want_s);
}

static void test_wmt17(void) {
  char *text = read_file(data_dir, "wmt17/expected.tsv", NULL);
  TEST_EXPECT(text, "cannot read %s/wmt17/expected.tsv", data_dir);
  if (!text) return;
  lines_file ref, ref_tok;
  TEST_EXPECT(load_lines("ref.de", &ref) && load_lines("ref.tok13a.de", &ref_tok),
              "cannot read the WMT17 references");
  size_t n_lines, nh;
  char **lines = split(text, "\n", &n_lines, 1);
  char **hdr = split(lines[0], "\t", &nh, 0);
  int c_sys = col_index(hdr, nh, "system"), c_13a = col_index(hdr, nh, "13a_exp");
  int c_13a_st = col_index(hdr, nh, "13a_exp_stats"), c_none = col_index(hdr, nh, "none_exp");
  int c_none_st = col_index(hdr, nh, "none_exp_stats");
  int c_nosm = col_index(hdr, nh, "13a_none"), c_floor = col_index(hdr, nh, "13a_floor0.1");
  int c_addk = col_index(hdr, nh, "13a_addk1"), c_lc = col_index(hdr, nh, "13a_lc_exp");
  int c_mb = col_index(hdr, nh, "multibleu_on_13a_tokens");
  int c_nn = col_index(hdr, nh, "sacrebleu_none_nosmooth_on_13a_tokens");

  /* the 13a tokenizer against the tokenized reference, line by line */
  size_t tok_lines = 0, tok_bad = 0;
  char *buf = malloc(1 << 16);
  for (size_t i = 0; i < ref.n && i < ref_tok.n; i++, tok_lines++) {
    bleu_tokenize_13a(ref.lines[i], buf, 1 << 16);
    tok_bad += strcmp(buf, ref_tok.lines[i]) != 0;
  }
  TEST_EXPECT(ref.n == 3004 && ref_tok.n == 3004 && tok_bad == 0,
              "ref.de: %zu lines, %zu tokenized lines differ", ref.n, tok_bad);

  int systems = 0;
  double t0 = (double)clock() / CLOCKS_PER_SEC;
  for (size_t li = 1; li < n_lines; li++) {
    size_t nf;
    char **f = split(lines[li], "\t", &nf, 0);
    if (nf < nh) {
      TEST_EXPECT(0, "expected.tsv line %zu: %zu fields", li + 1, nf);
      free(f);
      continue;
    }
    const char *sys = f[c_sys];
    char name[256];
    lines_file hyp, hyp_tok;
    snprintf(name, sizeof name, "%s.de", sys);
    int ok = load_lines(name, &hyp);
    snprintf(name, sizeof name, "%s.tok13a.de", sys);
    ok = ok && load_lines(name, &hyp_tok);
    TEST_EXPECT(ok && hyp.n == ref.n && hyp_tok.n == ref.n, "%s: cannot read its outputs", sys);
    if (!ok) exit(2);
    for (size_t i = 0; i < hyp.n; i++, tok_lines++) {
      bleu_tokenize_13a(hyp.lines[i], buf, 1 << 16);
      tok_bad += strcmp(buf, hyp_tok.lines[i]) != 0;
    }

    bleu_stats st;
    bleu_result r;
    expect_score(sys, "13a/exp", corpus(&hyp, &ref, BLEU_TOK_13A, BLEU_SMOOTH_EXP, -1, 0, &st, &r),
                 f[c_13a]);
    TEST_EXPECT(stats_match(&st, f[c_13a_st]), "%s 13a/exp stats differ from %s", sys, f[c_13a_st]);
    /* the printed score is Python's f'{score:.2f}' of the expected double */
    char line[512], want2[64];
    bleu_format(&r, line, sizeof line);
    snprintf(want2, sizeof want2, "BLEU = %.2f ", strtod(f[c_13a], NULL));
    TEST_EXPECT(!strncmp(line, want2, strlen(want2)), "%s: '%s' does not start '%s'", sys, line,
                want2);

    expect_score(sys, "none/exp",
                 corpus(&hyp, &ref, BLEU_TOK_NONE, BLEU_SMOOTH_EXP, -1, 0, &st, &r), f[c_none]);
    TEST_EXPECT(stats_match(&st, f[c_none_st]), "%s none/exp stats differ from %s", sys,
                f[c_none_st]);
    expect_score(sys, "13a/none",
                 corpus(&hyp, &ref, BLEU_TOK_13A, BLEU_SMOOTH_NONE, -1, 0, &st, &r), f[c_nosm]);
    expect_score(sys, "13a/floor 0.1",
                 corpus(&hyp, &ref, BLEU_TOK_13A, BLEU_SMOOTH_FLOOR, 0.1, 0, &st, &r), f[c_floor]);
    expect_score(sys, "13a/add-k 1",
                 corpus(&hyp, &ref, BLEU_TOK_13A, BLEU_SMOOTH_ADD_K, 1, 0, &st, &r), f[c_addk]);
    expect_score(sys, "13a/exp lowercased",
                 corpus(&hyp, &ref, BLEU_TOK_13A, BLEU_SMOOTH_EXP, -1, 1, &st, &r), f[c_lc]);

    /* Moses multi-bleu.perl on the 13a-tokenized files = tokenize none, smooth none */
    double s = corpus(&hyp_tok, &ref_tok, BLEU_TOK_NONE, BLEU_SMOOTH_NONE, -1, 0, &st, &r);
    expect_score(sys, "none/none on tok13a", s, f[c_nn]);
    snprintf(line, sizeof line,
             "BLEU = %.2f, %.1f/%.1f/%.1f/%.1f (BP=%.3f, ratio=%.3f, hyp_len=%lld, ref_len=%lld)",
             r.score, r.precisions[0], r.precisions[1], r.precisions[2], r.precisions[3], r.bp,
             r.ratio, (long long)r.sys_len, (long long)r.ref_len);
    TEST_EXPECT(!strcmp(line, f[c_mb]), "%s multi-bleu:\n  got  %s\n  want %s", sys, line, f[c_mb]);
    free_lines(&hyp);
    free_lines(&hyp_tok);
    free(f);
    systems++;
  }
  double t1 = (double)clock() / CLOCKS_PER_SEC;
  printf("wmt17: %d systems, %d scores (bit-identical: %d), 7 corpus scores per system in "
         "%.3f s CPU\n",
         systems, n_scores, n_bit, t1 - t0);
  printf("wmt17: 13a tokenizer vs *.tok13a.de: %zu lines, %zu differ\n", tok_lines, tok_bad);
  TEST_EXPECT(systems >= 3 && (size_t)systems == n_lines - 1,
              "wmt17: %d systems scored of %zu in expected.tsv, want all and at least 3", systems,
              n_lines - 1);
  TEST_EXPECT(tok_bad == 0, "13a tokenizer differs on %zu WMT17 lines", tok_bad);
  free(buf);
  free(hdr);
  free(lines);
  free(text);
  free_lines(&ref);
  free_lines(&ref_tok);
}

/* ------------------------------------------------------------------ lowercasing */

static void test_lowercase(void) {
  /* pairs from Python 3's str.lower() */
  static const char *pairs[][2] = {
      {"\"ABC \\u00c4\\u00d6\\u00dc\\u00df \\u1e9e xyz\"",
       "\"abc \\u00e4\\u00f6\\u00fc\\u00df \\u00df xyz\""},
      {"\"\\u0130stanbul \\u0178 \\u0141\\u00d3D\\u0179 \\u0218\\u021a\"",
       "\"i\\u0307stanbul \\u00ff \\u0142\\u00f3d\\u017a \\u0219\\u021b\""},
      {"\"\\u0391\\u0398\\u0397\\u039d\\u0391 \\u041c\\u041e\\u0421\\u041a\\u0412\\u0410 "
       "\\u0401\"",
       "\"\\u03b1\\u03b8\\u03b7\\u03bd\\u03b1 \\u043c\\u043e\\u0441\\u043a\\u0432\\u0430 "
       "\\u0451\""},
      {"\"\\u00d7\\u00f7 \\u0131 \\u01c5 \\u212a \\uff21 \\ufeffA\"",
       "\"\\u00d7\\u00f7 \\u0131 \\u01c6 k \\uff41 \\ufeffa\""},
  };
  for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
    char *in = json_unescape(pairs[i][0]), *want = json_unescape(pairs[i][1]);
    char out[256];
    size_t n = bleu_lowercase(in, out, sizeof out);
    TEST_EXPECT(n == strlen(want) && !strcmp(out, want), "lower(%s) = '%s'", pairs[i][0], out);
    free(in);
    free(want);
  }
}

/* ------------------------------------------------------------------ multiple references */

static void test_refs(void) {
  /* closest reference length, ties to the shorter: hyp of 4 tokens, refs of 3 and 5 */
  bleu_opts o;
  bleu_opts_default(&o);
  o.tokenize = BLEU_TOK_NONE;
  bleu_stats st;
  bleu_stats_init(&st, &o);
  bleu_ctx *c = bleu_ctx_create();
  const char *refs[3] = {"a b c d e", "a b c", NULL};
  bleu_add_segment(c, &st, &o, "a b c d", refs, 3);
  TEST_EXPECT(st.ref_len == 3 && st.sys_len == 4, "tie: ref_len %lld, want 3",
              (long long)st.ref_len);
  /* max-merge: "x x x" against refs holding "x" twice and once -> 2 matches */
  const char *refs2[2] = {"x y", "x x"};
  bleu_stats_init(&st, &o);
  bleu_add_segment(c, &st, &o, "x x x", refs2, 2);
  TEST_EXPECT(st.correct[0] == 2 && st.correct[1] == 1 && st.total[0] == 3 && st.total[1] == 2,
              "max-merge: correct %lld,%lld", (long long)st.correct[0], (long long)st.correct[1]);
  /* short hypothesis: BP = exp(1 - 5/4) */
  const char *refs3[1] = {"a b c d e"};
  bleu_stats_init(&st, &o);
  bleu_add_segment(c, &st, &o, "a b c d", refs3, 1);
  bleu_result r;
  bleu_score(&st, &o, &r);
  TEST_EXPECT(r.bp == exp(1.0 - 5.0 / 4.0) && test_close(r.score, r.bp * 100.0, 1e-14, 0),
              "bp %.17g score %.17g", r.bp, r.score);
  /* right-strip before 13a: "x-\n" stays "x-" (without it 13a would join "-\n") */
  o.tokenize = BLEU_TOK_13A;
  const char *refs4[1] = {"x-"};
  bleu_stats_init(&st, &o);
  bleu_add_segment(c, &st, &o, "x-\n", refs4, 1);
  TEST_EXPECT(st.correct[0] == 1 && st.sys_len == 1, "rstrip: correct %lld",
              (long long)st.correct[0]);
  bleu_ctx_destroy(c);

  /* (100.0 * correct) / total and logs summed left to right, as in Python: these
   * statistics give a different last bit with 100.0 * (correct / total) or with the
   * logs summed right to left (values from sacreBLEU's formula in Python 3.11). */
  o.smooth = BLEU_SMOOTH_EXP;
  bleu_stats_init(&st, &o);
  const int64_t cc[4] = {1, 1, 2, 1}, tt[4] = {9, 7, 6, 3};
  for (int k = 0; k < 4; k++) {
    st.correct[k] = cc[k];
    st.total[k] = tt[k];
  }
  st.sys_len = 10;
  st.ref_len = 12;
  bleu_score(&st, &o, &r);
  TEST_EXPECT(r.score == 16.778198914973682, "score %.17g, want 16.778198914973682", r.score);
  st.correct[0] = 1;
  st.total[0] = 3;
  bleu_score(&st, &o, &r);
  TEST_EXPECT(r.precisions[0] == 33.333333333333336, "1/3: %.17g", r.precisions[0]);
}

/* ------------------------------------------------------------------ the command */

static int run_cli_capture(int argc, char **argv, char *out, size_t cap) {
  char tmpl[] = "/tmp/test_bleu_XXXXXX";
  int fd = mkstemp(tmpl);
  fflush(stdout);
  int saved = dup(STDOUT_FILENO);
  dup2(fd, STDOUT_FILENO);
  int rc = bleu_cli(argc, argv);
  fflush(stdout);
  dup2(saved, STDOUT_FILENO);
  close(saved);
  lseek(fd, 0, SEEK_SET);
  ssize_t n = read(fd, out, cap - 1);
  out[n > 0 ? n : 0] = '\0';
  close(fd);
  unlink(tmpl);
  return rc;
}

static void test_cli(void) {
  char hyp[1200], ref[1200], out[1024];
  snprintf(hyp, sizeof hyp, "%s/wmt17/newstest2017.online-A.0.en-de.de", data_dir);
  snprintf(ref, sizeof ref, "%s/wmt17/ref.de", data_dir);
  char *argv1[] = {"bleu", hyp, ref, NULL};
  double t0 = MPI_Wtime();
  int rc = run_cli_capture(3, argv1, out, sizeof out);
  double t1 = MPI_Wtime();
  const char *want = "BLEU = 20.80 54.4/26.6/14.9/8.7 (BP = 1.000 ratio = 1.026 hyp_len = "
                     "62880 ref_len = 61287)\n";
  TEST_EXPECT(rc == 0 && !strcmp(out, want), "bleu_cli rc %d printed '%s'", rc, out);
  TEST_EXPECT(t1 - t0 < 1.0, "bleu_cli took %.3f s on 3004 lines", t1 - t0);
  printf("bleu_cli online-A (3004 lines): %.3f s\n", t1 - t0);

  char *argv2[] = {"bleu", hyp, ref, "-w", "4", "--tokenize", "13a", "--smooth", "exp", NULL};
  rc = run_cli_capture(9, argv2, out, sizeof out);
  TEST_EXPECT(rc == 0 && !strncmp(out, "BLEU = 20.7965 54.4/", 20), "-w 4: rc %d '%s'", rc, out);

  char *argv3[] = {"bleu",           hyp,    ref,           ref,
                   "--tokenize",     "none", "--smooth",    "floor",
                   "--smooth-value", "0.1",  "--lowercase", NULL};
  rc = run_cli_capture(11, argv3, out, sizeof out);
  TEST_EXPECT(rc == 0 && !strncmp(out, "BLEU = ", 7), "options: rc %d '%s'", rc, out);

  /* line counts that differ: an error, not a score */
  char short_ref[] = "/tmp/test_bleu_ref_XXXXXX";
  int fd = mkstemp(short_ref);
  TEST_EXPECT(write(fd, "a b\nc d\n", 8) == 8, "write %s", short_ref);
  close(fd);
  char *argv4[] = {"bleu", hyp, short_ref, NULL};
  rc = run_cli_capture(3, argv4, out, sizeof out);
  TEST_EXPECT(rc == 1 && out[0] == '\0', "mismatched lines: rc %d, stdout '%s'", rc, out);
  unlink(short_ref);

  char *argv5[] = {"bleu", hyp, ref, "--smooth", "bogus", NULL};
  TEST_EXPECT(run_cli_capture(5, argv5, out, sizeof out) == 1, "bad --smooth accepted");
  char *argv6[] = {"bleu", hyp, NULL};
  TEST_EXPECT(run_cli_capture(2, argv6, out, sizeof out) == 1, "missing reference accepted");
  char *argv7[] = {"bleu", hyp, "/nonexistent/ref", NULL};
  TEST_EXPECT(run_cli_capture(3, argv7, out, sizeof out) == 1, "missing file accepted");
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  const char *env = getenv("MPIFORMER_BLEU_DATA");
  snprintf(data_dir, sizeof data_dir, "%s", env && *env ? env : "tests/data/bleu");
  test_tok13a();
  test_cases();
  test_lowercase();
  test_refs();
  test_wmt17();
  test_cli();
  int rc = test_finish();
  MPI_Finalize();
  return rc;
}
