/* bleu.h: sacreBLEU-compatible corpus BLEU (tokenizers 13a and none, smoothing exp,
 * floor, add-k and none, n-gram orders 1..6, several references, effective order,
 * lowercasing) and the `mpiformer bleu` command.
 *
 * Typical use:
 *   bleu_opts o; bleu_opts_default(&o);              // 13a, exp, 4-gram
 *   bleu_stats s; bleu_stats_init(&s, &o);
 *   bleu_ctx *c = bleu_ctx_create();
 *   for each segment: bleu_add_segment(c, &s, &o, hyp, refs, n_refs);
 *   bleu_result r; bleu_score(&s, &o, &r);
 *   char line[256]; bleu_format(&r, line, sizeof line);
 *   bleu_ctx_destroy(c);
 * or bleu_corpus(...) for all of it at once. Nothing here is collective or uses MPI;
 * statistics are plain sums, so ranks may add them up (bleu_stats_merge) and score once.
 * All text is UTF-8, one segment per string, without its newline.
 */
#ifndef MPIFORMER_BLEU_H
#define MPIFORMER_BLEU_H

#include <stddef.h>
#include <stdint.h>

#define BLEU_MAX_ORDER 6

typedef enum { BLEU_TOK_13A = 0, BLEU_TOK_NONE = 1 } bleu_tokenizer;
typedef enum {
  BLEU_SMOOTH_EXP = 0,
  BLEU_SMOOTH_FLOOR = 1,
  BLEU_SMOOTH_ADD_K = 2,
  BLEU_SMOOTH_NONE = 3
} bleu_smooth;

typedef struct bleu_opts {
  bleu_tokenizer tokenize; /* default 13a */
  bleu_smooth smooth;      /* default exp */
  double smooth_value;     /* floor value or k; negative means the default (0.1, 1) */
  int max_order;           /* 1..BLEU_MAX_ORDER, default 4 */
  int effective_order;     /* 1: average only over orders with a non-zero total */
  int lowercase;           /* 1: lowercase as Python's str.lower() (see bleu.c for coverage) */
} bleu_opts;

/* Sufficient statistics of a corpus (sums over segments). */
typedef struct bleu_stats {
  int max_order;
  int64_t sys_len, ref_len; /* hypothesis tokens; closest reference lengths */
  int64_t correct[BLEU_MAX_ORDER], total[BLEU_MAX_ORDER];
  int64_t n_segments;
} bleu_stats;

typedef struct bleu_result {
  int max_order;
  double score;                      /* percent, 0..100 */
  double precisions[BLEU_MAX_ORDER]; /* percent; 0 past the break / when nothing matched */
  double bp, ratio;                  /* brevity penalty; sys_len / ref_len (0 if ref_len 0) */
  int64_t sys_len, ref_len;
  double counts[BLEU_MAX_ORDER], totals[BLEU_MAX_ORDER]; /* as sacreBLEU returns them:
                                                            add-k already added */
} bleu_result;

/* Scratch space for segment statistics (hash tables, token buffers); grows as needed.
 * Owned by the caller, one per thread. */
typedef struct bleu_ctx bleu_ctx;

/* sacreBLEU defaults: 13a, exp, order 4, no effective order, no lowercasing. Not collective. */
void bleu_opts_default(bleu_opts *o);

/* Check the options (order range, smooth value); on a problem write a message to
 * err and return C_ERR (-1), else C_OK (0). Not collective. */
int bleu_opts_check(const bleu_opts *o, char *err, size_t err_len);

/* Zero the statistics for o->max_order. Not collective. */
void bleu_stats_init(bleu_stats *s, const bleu_opts *o);

/* s += t (same max_order). Not collective. */
void bleu_stats_merge(bleu_stats *s, const bleu_stats *t);

/* Create and free a scratch context (bleu_ctx). Not collective. */
bleu_ctx *bleu_ctx_create(void);
void bleu_ctx_destroy(bleu_ctx *c);

/* The 13a tokenizer of sacreBLEU (mteval-v13a): removes "<skipped>", joins "-\n",
 * turns "\n" into a space, unescapes &quot; &amp; &lt; &gt;, splits off ASCII
 * punctuation, periods and commas next to non-digits and dashes after digits, and
 * joins the tokens (split on Python's Unicode whitespace) with single spaces. `in` is
 * a NUL-terminated UTF-8 string; the result (NUL-terminated) goes to out[0..cap).
 * Returns the length of the full result; if that is >= cap the output was truncated
 * (as snprintf). The result is never longer than 2 * strlen(in). Not collective. */
size_t bleu_tokenize_13a(const char *in, char *out, size_t cap);

/* Lowercase UTF-8 as Python's str.lower(). Checked against Python 3.11 code point by
 * code point: identical for U+0000..U+017F (ASCII, Latin-1, Latin Extended-A, with
 * U+0130 -> "i" U+0307), U+0400..U+052F (Cyrillic), U+1E00..U+1EFF (Latin Extended
 * Additional, U+1E9E -> U+00DF) and fullwidth A-Z; partly for Latin Extended-B (the
 * regular pairs) and Greek (U+0386..U+03AB; no final-sigma rule); other characters are
 * copied unchanged. Same return and truncation rule as bleu_tokenize_13a; the result is
 * never longer than 3/2 * strlen(in). Not collective. */
size_t bleu_lowercase(const char *in, char *out, size_t cap);

/* Number of tokens of `s` split as Python's str.split() (Unicode whitespace). Not
 * collective. */
size_t bleu_count_tokens(const char *s);

/* Add one segment: hypothesis `hyp` and its n_refs references (NUL-terminated UTF-8;
 * a NULL reference is skipped, an empty one counts as a length-0 reference). Each text
 * is lowercased (if asked), right-stripped and tokenized as sacreBLEU does. Reference
 * n-gram counts are merged by maximum; the reference length is the one closest to the
 * hypothesis length, ties to the shorter. Not collective. */
void bleu_add_segment(bleu_ctx *c, bleu_stats *s, const bleu_opts *o, const char *hyp,
                      const char *const *refs, int n_refs);

/* Score statistics as sacreBLEU's BLEU.compute_bleu (with o's smoothing, order and
 * effective order); `s` is not modified. Not collective. */
void bleu_score(const bleu_stats *s, const bleu_opts *o, bleu_result *r);

/* sacreBLEU's line "BLEU = 20.80 54.4/26.6/14.9/8.7 (BP = 1.000 ratio = 1.026 hyp_len
 * = 62880 ref_len = 61287)" with the score printed with 2 decimals. Returns as snprintf.
 * Not collective. */
int bleu_format(const bleu_result *r, char *buf, size_t len);

/* Same with `width` decimals for the score (sacreBLEU's -w). Not collective. */
int bleu_format_width(const bleu_result *r, int width, char *buf, size_t len);

/* Score a whole corpus: hyps[n_segments], refs[n_refs][n_segments] (reference stream
 * j, segment i is refs[j][i]). Fills stats (may be NULL) and r. Not collective. */
void bleu_corpus(const char *const *hyps, const char *const *const *refs, int n_refs,
                 size_t n_segments, const bleu_opts *o, bleu_stats *stats, bleu_result *r);

/* `mpiformer bleu HYP REF [REF...] [--tokenize 13a|none] [--smooth exp|floor|add-k|none]
 * [--smooth-value V] [--max-order N] [--lowercase] [--width N]`; argv[0] is "bleu".
 * Reads line-aligned UTF-8 files, prints sacreBLEU's line on stdout. Returns 0, or 1
 * after printing a message to stderr (bad arguments, unreadable files, line counts
 * that differ). Not collective (call it on one rank). */
int bleu_cli(int argc, char **argv);

#endif
