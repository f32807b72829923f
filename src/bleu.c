/* bleu.c: corpus BLEU computed exactly as sacreBLEU 2.x computes it.
 *
 * Papineni et al. (2002) BLEU with the conventions of Post (2018), "A Call for
 * Clarity in Reporting BLEU Scores": the mteval-v13a tokenizer, reference n-gram
 * counts merged by maximum, the closest reference length (ties to the shorter),
 * smoothing exp (NIST "method 3"), floor, add-k or none, and sacreBLEU's printed line.
 * The floating-point operations follow sacreBLEU's Python statement by statement
 * ((100.0 * correct) / total, logs summed left to right, log 0 = -9999999999) so the
 * doubles come out bit-identical; never build this file with -ffast-math.
 *
 * Text is UTF-8 handled as bytes: every pattern of the 13a tokenizer is ASCII, so
 * byte-level matching equals Python's character-level matching. Whitespace is
 * Python's str.split() set (29 code points, U+00A0 and U+2000..U+200A included, U+FEFF
 * not). Not done here: the intl, char, zh, ja-mecab and other tokenizers, TER, chrF,
 * significance tests, and the full Unicode case tables (see bleu_lowercase).
 */
#include "bleu.h"

#include "common.h"

#include <errno.h>
#include <math.h>
#include <string.h>

/* ------------------------------------------------------------------ growable buffers */

typedef struct {
  char *p;
  size_t len, cap;
} sbuf;

static void sbuf_reserve(sbuf *b, size_t cap) {
  if (cap <= b->cap) return;
  size_t c = b->cap ? b->cap : 256;
  while (c < cap)
    c *= 2;
  b->p = realloc(b->p, c);
  CHECK(b->p, "out of memory allocating %zu bytes", c);
  b->cap = c;
}

/* Copy a (possibly truncated, NUL-terminated) result as snprintf does. */
static size_t copy_out(const char *src, size_t n, char *out, size_t cap) {
  if (cap > 0) {
    size_t m = n < cap - 1 ? n : cap - 1;
    memcpy(out, src, m);
    out[m] = '\0';
  }
  return n;
}

/* ------------------------------------------------------------------ whitespace */

/* Byte length of the Python whitespace character starting at p (p[0..n)), 0 if none. */
static size_t ws_len(const unsigned char *p, size_t n) {
  unsigned char c = p[0];
  if (c < 0x80) return ((c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20)) ? 1 : 0;
  if (c == 0xc2) return (n >= 2 && (p[1] == 0x85 || p[1] == 0xa0)) ? 2 : 0;
  if (n < 3) return 0;
  if (c == 0xe1) return (p[1] == 0x9a && p[2] == 0x80) ? 3 : 0; /* U+1680 */
  if (c == 0xe2) {
    if (p[1] == 0x80) /* U+2000..U+200A, U+2028, U+2029, U+202F */
      return ((p[2] >= 0x80 && p[2] <= 0x8a) || p[2] == 0xa8 || p[2] == 0xa9 || p[2] == 0xaf) ? 3
                                                                                              : 0;
    return (p[1] == 0x81 && p[2] == 0x9f) ? 3 : 0; /* U+205F */
  }
  if (c == 0xe3) return (p[1] == 0x80 && p[2] == 0x80) ? 3 : 0; /* U+3000 */
  return 0;
}

/* Length of s[0..n) without its trailing whitespace (Python's rstrip()). */
static size_t rstrip_len(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0, end = 0;
  while (i < n) {
    size_t w = ws_len(p + i, n - i);
    if (w) {
      i += w;
    } else {
      i++;
      end = i;
    }
  }
  return end;
}

typedef struct {
  const char *p;
  size_t len;
} token;

/* Split s[0..n) on whitespace; appends to *toks (growing it). Returns the count. */
static size_t split_tokens(const char *s, size_t n, token **toks, size_t *cap) {
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0, count = 0;
  while (i < n) {
    size_t w = ws_len(p + i, n - i);
    if (w) {
      i += w;
      continue;
    }
    size_t start = i;
    while (i < n && !ws_len(p + i, n - i))
      i++;
    if (count == *cap) {
      *cap = *cap ? 2 * *cap : 64;
      *toks = realloc(*toks, *cap * sizeof **toks);
      CHECK(*toks, "out of memory allocating %zu tokens", *cap);
    }
    (*toks)[count].p = s + start;
    (*toks)[count].len = i - start;
    count++;
  }
  return count;
}

size_t bleu_count_tokens(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  size_t n = strlen(s), i = 0, count = 0;
  int in_tok = 0;
  while (i < n) {
    size_t w = ws_len(p + i, n - i);
    if (w) {
      i += w;
      in_tok = 0;
    } else {
      if (!in_tok) count++;
      in_tok = 1;
      i++;
    }
  }
  return count;
}

/* ------------------------------------------------------------------ 13a tokenizer */

/* In-place str.replace(pat, rep) for strlen(rep) <= strlen(pat): non-overlapping, left
 * to right, as Python does. Returns the new length. */
static size_t replace_shrink(char *s, size_t n, const char *pat, const char *rep) {
  size_t pl = strlen(pat), rl = strlen(rep), i = 0, o = 0;
  while (i < n) {
    if (i + pl <= n && s[i] == pat[0] && memcmp(s + i, pat, pl) == 0) {
      memcpy(s + o, rep, rl);
      o += rl;
      i += pl;
    } else {
      s[o++] = s[i++];
    }
  }
  return o;
}

/* Pass 1 character class [{-~[-` -&(-+:-@/]. */
static int is_punct13a(unsigned char c) {
  return (c >= '{' && c <= '~') || (c >= '[' && c <= '`') || (c >= ' ' && c <= '&') ||
         (c >= '(' && c <= '+') || (c >= ':' && c <= '@') || c == '/';
}

static int is_digit(unsigned char c) {
  return c >= '0' && c <= '9';
}

/* The 13a passes on in[0..n) (already right-stripped if the caller wants it); the
 * result, not yet whitespace-normalized, ends up in one of a/b, returned. */
static sbuf *tok13a_raw(const char *in, size_t n, sbuf *a, sbuf *b) {
  /* language-independent part, each replace on the result of the previous one */
  sbuf_reserve(a, n + 3);
  memcpy(a->p + 1, in, n);
  char *s = a->p + 1;
  size_t len = n;
  if (memchr(s, '<', len)) len = replace_shrink(s, len, "<skipped>", "");
  if (memchr(s, '\n', len)) {
    len = replace_shrink(s, len, "-\n", "");
    for (size_t i = 0; i < len; i++)
      if (s[i] == '\n') s[i] = ' ';
  }
  if (memchr(s, '&', len)) {
    len = replace_shrink(s, len, "&quot;", "\"");
    len = replace_shrink(s, len, "&amp;", "&");
    len = replace_shrink(s, len, "&lt;", "<");
    len = replace_shrink(s, len, "&gt;", ">");
  }
  a->p[0] = ' '; /* f' {line} ' */
  a->p[len + 1] = ' ';
  a->len = len + 2;

  /* (1) ([\{-\~\[-\` -\&\(-\+\:-\@\/]) -> ' \1 ' */
  sbuf_reserve(b, 3 * a->len);
  size_t o = 0;
  for (size_t i = 0; i < a->len; i++) {
    unsigned char c = (unsigned char)a->p[i];
    if (is_punct13a(c)) {
      b->p[o++] = ' ';
      b->p[o++] = (char)c;
      b->p[o++] = ' ';
    } else {
      b->p[o++] = (char)c;
    }
  }
  b->len = o;
  int has_pc = memchr(b->p, '.', b->len) || memchr(b->p, ',', b->len);
  if (!has_pc && !memchr(b->p, '-', b->len)) return b;

  /* (2) ([^0-9])([\.,]) -> '\1 \2 ' */
  sbuf_reserve(a, 2 * b->len);
  o = 0;
  for (size_t i = 0; i < b->len;) {
    unsigned char c = (unsigned char)b->p[i];
    if (i + 1 < b->len && !is_digit(c) && (b->p[i + 1] == '.' || b->p[i + 1] == ',')) {
      a->p[o++] = (char)c;
      a->p[o++] = ' ';
      a->p[o++] = b->p[i + 1];
      a->p[o++] = ' ';
      i += 2;
    } else {
      a->p[o++] = (char)c;
      i++;
    }
  }
  a->len = o;

  /* (3) ([\.,])([^0-9]) -> ' \1 \2' */
  sbuf_reserve(b, 2 * a->len);
  o = 0;
  for (size_t i = 0; i < a->len;) {
    unsigned char c = (unsigned char)a->p[i];
    if (i + 1 < a->len && (c == '.' || c == ',') && !is_digit((unsigned char)a->p[i + 1])) {
      b->p[o++] = ' ';
      b->p[o++] = (char)c;
      b->p[o++] = ' ';
      b->p[o++] = a->p[i + 1];
      i += 2;
    } else {
      b->p[o++] = (char)c;
      i++;
    }
  }
  b->len = o;

  /* (4) ([0-9])(-) -> '\1 \2 ' */
  sbuf_reserve(a, 2 * b->len);
  o = 0;
  for (size_t i = 0; i < b->len;) {
    unsigned char c = (unsigned char)b->p[i];
    if (i + 1 < b->len && is_digit(c) && b->p[i + 1] == '-') {
      a->p[o++] = (char)c;
      a->p[o++] = ' ';
      a->p[o++] = '-';
      a->p[o++] = ' ';
      i += 2;
    } else {
      a->p[o++] = (char)c;
      i++;
    }
  }
  a->len = o;
  return a;
}

/* ' '.join(s.split()) of s[0..n) into out (capacity >= n + 1). Returns the length. */
static size_t join_tokens(const char *s, size_t n, char *out) {
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0, o = 0;
  while (i < n) {
    size_t w = ws_len(p + i, n - i);
    if (w) {
      i += w;
      continue;
    }
    if (o) out[o++] = ' ';
    while (i < n && !ws_len(p + i, n - i))
      out[o++] = s[i++];
  }
  out[o] = '\0';
  return o;
}

size_t bleu_tokenize_13a(const char *in, char *out, size_t cap) {
  sbuf a = {0}, b = {0};
  sbuf *r = tok13a_raw(in, strlen(in), &a, &b);
  char *tmp = common_malloc(r->len + 1);
  size_t n = join_tokens(r->p, r->len, tmp);
  copy_out(tmp, n, out, cap);
  free(tmp);
  free(a.p);
  free(b.p);
  return n;
}

/* ------------------------------------------------------------------ lowercasing */

/* Python's str.lower() of code point u for the blocks covered (1:1 mappings only;
 * U+0130 is handled by the caller). */
static uint32_t lower_cp(uint32_t u) {
  if (u < 0x80) return (u >= 'A' && u <= 'Z') ? u + 32 : u;
  if (u < 0x100) return (u >= 0xc0 && u <= 0xde && u != 0xd7) ? u + 32 : u;
  if (u < 0x180) { /* Latin Extended-A */
    if (u == 0x178) return 0xff;
    if (u <= 0x137) return (u != 0x130 && u != 0x131 && !(u & 1)) ? u + 1 : u;
    if (u >= 0x139 && u <= 0x148) return (u & 1) ? u + 1 : u;
    if (u >= 0x14a && u <= 0x177) return (u & 1) ? u : u + 1;
    if (u >= 0x179 && u <= 0x17e) return (u & 1) ? u + 1 : u;
    return u;
  }
  if (u < 0x250) { /* Latin Extended-B: the regular parts */
    if (u == 0x1c4 || u == 0x1c7 || u == 0x1ca || u == 0x1f1) return u + 2;
    if (u == 0x1c5 || u == 0x1c8 || u == 0x1cb || u == 0x1f2) return u + 1;
    if (u >= 0x1cd && u <= 0x1dc) return (u & 1) ? u + 1 : u;
    if ((u >= 0x1de && u <= 0x1ef) || u == 0x1f4 || (u >= 0x1f8 && u <= 0x21f) ||
        (u >= 0x222 && u <= 0x233))
      return (u & 1) ? u : u + 1;
    return u;
  }
  if (u >= 0x370 && u < 0x400) { /* Greek (no final-sigma context rule) */
    if (u == 0x386) return 0x3ac;
    if (u >= 0x388 && u <= 0x38a) return u + 37;
    if (u == 0x38c) return 0x3cc;
    if (u == 0x38e || u == 0x38f) return u + 63;
    if (u >= 0x391 && u <= 0x3ab && u != 0x3a2) return u + 32;
    return u;
  }
  if (u >= 0x400 && u < 0x530) { /* Cyrillic and its supplement */
    if (u <= 0x40f) return u + 80;
    if (u <= 0x42f) return u + 32;
    if ((u >= 0x460 && u <= 0x481) || (u >= 0x48a && u <= 0x4bf) || (u >= 0x4d0 && u <= 0x52f))
      return (u & 1) ? u : u + 1;
    if (u == 0x4c0) return 0x4cf;
    if (u >= 0x4c1 && u <= 0x4ce) return (u & 1) ? u + 1 : u;
    return u;
  }
  if (u >= 0x1e00 && u < 0x1f00) { /* Latin Extended Additional */
    if (u == 0x1e9e) return 0xdf;
    if (u <= 0x1e95 || u >= 0x1ea0) return (u & 1) ? u : u + 1;
    return u;
  }
  if (u == 0x2126) return 0x3c9; /* OHM SIGN */
  if (u == 0x212a) return 'k';   /* KELVIN SIGN */
  if (u == 0x212b) return 0xe5;  /* ANGSTROM SIGN */
  if (u >= 0xff21 && u <= 0xff3a) return u + 32;
  return u;
}

static size_t utf8_encode(uint32_t u, char *o) {
  if (u < 0x80) {
    o[0] = (char)u;
    return 1;
  }
  if (u < 0x800) {
    o[0] = (char)(0xc0 | (u >> 6));
    o[1] = (char)(0x80 | (u & 0x3f));
    return 2;
  }
  o[0] = (char)(0xe0 | (u >> 12));
  o[1] = (char)(0x80 | ((u >> 6) & 0x3f));
  o[2] = (char)(0x80 | (u & 0x3f));
  return 3;
}

/* Lowercase s[0..n) into out (capacity >= 3 * n / 2 + 1). Returns the length. Bytes
 * that are not a 2- or 3-byte sequence in a covered block are copied unchanged. */
static size_t lower_utf8(const char *s, size_t n, char *out) {
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0, o = 0;
  while (i < n) {
    unsigned char c = p[i];
    if (c < 0x80) {
      out[o++] = (char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
      i++;
    } else if ((c & 0xe0) == 0xc0 && i + 1 < n && (p[i + 1] & 0xc0) == 0x80) {
      uint32_t u = ((uint32_t)(c & 0x1f) << 6) | (p[i + 1] & 0x3f);
      if (u == 0x130) { /* 'İ'.lower() == 'i̇' (i + U+0307 COMBINING DOT ABOVE) */
        out[o++] = 'i';
        o += utf8_encode(0x307, out + o);
      } else if (u >= 0x80) {
        o += utf8_encode(lower_cp(u), out + o);
      } else { /* overlong: copy */
        out[o++] = (char)c;
        out[o++] = (char)p[i + 1];
      }
      i += 2;
    } else if ((c & 0xf0) == 0xe0 && i + 2 < n && (p[i + 1] & 0xc0) == 0x80 &&
               (p[i + 2] & 0xc0) == 0x80) {
      uint32_t u =
          ((uint32_t)(c & 0x0f) << 12) | ((uint32_t)(p[i + 1] & 0x3f) << 6) | (p[i + 2] & 0x3f);
      if (u >= 0x800) {
        o += utf8_encode(lower_cp(u), out + o);
      } else {
        memcpy(out + o, s + i, 3);
        o += 3;
      }
      i += 3;
    } else {
      out[o++] = (char)c;
      i++;
    }
  }
  out[o] = '\0';
  return o;
}

size_t bleu_lowercase(const char *in, char *out, size_t cap) {
  size_t n = strlen(in);
  char *tmp = common_malloc(3 * n / 2 + 2);
  size_t m = lower_utf8(in, n, tmp);
  copy_out(tmp, m, out, cap);
  free(tmp);
  return m;
}

/* ------------------------------------------------------------------ options, stats */

void bleu_opts_default(bleu_opts *o) {
  o->tokenize = BLEU_TOK_13A;
  o->smooth = BLEU_SMOOTH_EXP;
  o->smooth_value = -1.0;
  o->max_order = 4;
  o->effective_order = 0;
  o->lowercase = 0;
}

int bleu_opts_check(const bleu_opts *o, char *err, size_t err_len) {
  if (o->max_order < 1 || o->max_order > BLEU_MAX_ORDER) {
    snprintf(err, err_len, "BLEU max n-gram order must be 1..%d, got %d", BLEU_MAX_ORDER,
             o->max_order);
    return C_ERR;
  }
  if (o->tokenize != BLEU_TOK_13A && o->tokenize != BLEU_TOK_NONE) {
    snprintf(err, err_len, "unknown BLEU tokenizer %d (13a or none)", (int)o->tokenize);
    return C_ERR;
  }
  if ((int)o->smooth < 0 || o->smooth > BLEU_SMOOTH_NONE) {
    snprintf(err, err_len, "unknown BLEU smoothing %d", (int)o->smooth);
    return C_ERR;
  }
  if (!isfinite(o->smooth_value)) {
    snprintf(err, err_len, "BLEU smooth value must be a finite number");
    return C_ERR;
  }
  return C_OK;
}

void bleu_stats_init(bleu_stats *s, const bleu_opts *o) {
  memset(s, 0, sizeof *s);
  s->max_order = o->max_order;
}

void bleu_stats_merge(bleu_stats *s, const bleu_stats *t) {
  CHECK(s->max_order == t->max_order, "merging BLEU stats of orders %d and %d", s->max_order,
        t->max_order);
  s->sys_len += t->sys_len;
  s->ref_len += t->ref_len;
  s->n_segments += t->n_segments;
  for (int n = 0; n < BLEU_MAX_ORDER; n++) {
    s->correct[n] += t->correct[n];
    s->total[n] += t->total[n];
  }
}

/* ------------------------------------------------------------------ segment statistics */

/* One distinct hypothesis n-gram: tokens hyp_ids[start .. start+order). */
typedef struct {
  uint64_t hash;
  int32_t order; /* 0 = empty slot */
  int32_t start;
  int32_t hyp_count, ref_max, ref_cur, last_ref;
} ngram_slot;

typedef struct {
  uint64_t hash;
  int32_t id; /* -1 = empty */
  int32_t tok;
} vocab_slot;

struct bleu_ctx {
  sbuf lower, t1, t2; /* text scratch */
  sbuf hyp_text;      /* the preprocessed hypothesis, kept while refs are processed */
  token *toks;        /* tokens of the text being processed */
  size_t toks_cap;
  token *hyp_toks; /* hypothesis tokens (point into hyp_text) */
  size_t hyp_toks_cap;
  int32_t *ids; /* token ids of the current text (hyp ids kept in hyp_ids) */
  int32_t *hyp_ids;
  size_t ids_cap, hyp_ids_cap;
  vocab_slot *vocab;
  size_t vocab_cap;
  ngram_slot *grams;
  size_t grams_cap;
};

bleu_ctx *bleu_ctx_create(void) {
  return common_calloc(1, sizeof(bleu_ctx));
}

void bleu_ctx_destroy(bleu_ctx *c) {
  if (!c) return;
  free(c->lower.p);
  free(c->t1.p);
  free(c->t2.p);
  free(c->hyp_text.p);
  free(c->toks);
  free(c->hyp_toks);
  free(c->ids);
  free(c->hyp_ids);
  free(c->vocab);
  free(c->grams);
  free(c);
}

static uint64_t hash_bytes(const char *p, size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++)
    h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
  return h ^ (h >> 29);
}

static uint64_t mix(uint64_t h, uint64_t x) {
  h ^= x + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  h *= 0xff51afd7ed558ccdull;
  return h ^ (h >> 33);
}

static size_t pow2_at_least(size_t n) {
  size_t c = 16;
  while (c < n)
    c *= 2;
  return c;
}

/* Lowercase (if asked), right-strip and tokenize text; the tokens (into c->toks) point
 * into a buffer of c that stays valid until the next call (or into `keep` if given). */
static size_t preprocess(bleu_ctx *c, const bleu_opts *o, const char *text, sbuf *keep) {
  size_t n = strlen(text);
  const char *s = text;
  if (o->lowercase) {
    sbuf_reserve(&c->lower, 3 * n / 2 + 2);
    n = lower_utf8(text, n, c->lower.p);
    s = c->lower.p;
  }
  n = rstrip_len(s, n);
  if (o->tokenize == BLEU_TOK_13A) {
    sbuf *r = tok13a_raw(s, n, &c->t1, &c->t2);
    s = r->p;
    n = r->len;
  }
  if (keep) {
    sbuf_reserve(keep, n + 1);
    memcpy(keep->p, s, n);
    keep->len = n;
    s = keep->p;
  }
  return split_tokens(s, n, &c->toks, &c->toks_cap);
}

void bleu_add_segment(bleu_ctx *c, bleu_stats *s, const bleu_opts *o, const char *hyp,
                      const char *const *refs, int n_refs) {
  CHECK(s->max_order == o->max_order, "BLEU stats of order %d used with options of order %d",
        s->max_order, o->max_order);
  const int N = o->max_order;

  /* hypothesis tokens -> ids (distinct strings get distinct ids) */
  size_t H = preprocess(c, o, hyp, &c->hyp_text);
  if (H > c->hyp_toks_cap) {
    c->hyp_toks_cap = H;
    c->hyp_toks = realloc(c->hyp_toks, H * sizeof *c->hyp_toks);
    CHECK(c->hyp_toks, "out of memory");
  }
  if (H) memcpy(c->hyp_toks, c->toks, H * sizeof *c->toks);
  CHECK(H < (size_t)INT32_MAX / BLEU_MAX_ORDER, "segment of %zu tokens is too long", H);
  size_t vcap = pow2_at_least(2 * H + 1);
  if (vcap > c->vocab_cap) {
    free(c->vocab);
    c->vocab = common_malloc(vcap * sizeof *c->vocab);
    c->vocab_cap = vcap;
  }
  for (size_t i = 0; i < vcap; i++)
    c->vocab[i].id = -1;
  if (H > c->hyp_ids_cap) {
    c->hyp_ids_cap = H;
    c->hyp_ids = realloc(c->hyp_ids, H * sizeof *c->hyp_ids);
    CHECK(c->hyp_ids, "out of memory");
  }
  int32_t n_vocab = 0;
  for (size_t i = 0; i < H; i++) {
    const token *t = &c->hyp_toks[i];
    uint64_t h = hash_bytes(t->p, t->len);
    size_t k = h & (vcap - 1);
    for (;; k = (k + 1) & (vcap - 1)) {
      vocab_slot *v = &c->vocab[k];
      if (v->id < 0) {
        v->hash = h;
        v->id = n_vocab++;
        v->tok = (int32_t)i;
        break;
      }
      const token *u = &c->hyp_toks[v->tok];
      if (v->hash == h && u->len == t->len && memcmp(u->p, t->p, t->len) == 0) break;
    }
    c->hyp_ids[i] = c->vocab[k].id;
  }

  /* hypothesis n-grams: (B = H * N slots at most) */
  size_t gcap = pow2_at_least(2 * H * (size_t)N + 1);
  if (gcap > c->grams_cap) {
    free(c->grams);
    c->grams = common_malloc(gcap * sizeof *c->grams);
    c->grams_cap = gcap;
  }
  memset(c->grams, 0, gcap * sizeof *c->grams);
  for (size_t i = 0; i < H; i++) {
    uint64_t h = 0x243f6a8885a308d3ull;
    for (int n = 1; n <= N && i + (size_t)n <= H; n++) {
      h = mix(h, (uint64_t)c->hyp_ids[i + n - 1]);
      size_t k = h & (gcap - 1);
      for (;; k = (k + 1) & (gcap - 1)) {
        ngram_slot *g = &c->grams[k];
        if (g->order == 0) {
          *g = (ngram_slot){h, n, (int32_t)i, 1, 0, 0, -1};
          break;
        }
        if (g->hash == h && g->order == n &&
            memcmp(c->hyp_ids + g->start, c->hyp_ids + i, (size_t)n * sizeof(int32_t)) == 0) {
          g->hyp_count++;
          break;
        }
      }
    }
  }

  /* references: count the hypothesis n-grams in each, keep the maximum */
  int64_t closest_len = -1, closest_diff = -1;
  for (int r = 0; r < n_refs; r++) {
    if (!refs[r]) continue;
    size_t R = preprocess(c, o, refs[r], NULL);
    int64_t diff = (int64_t)H - (int64_t)R;
    if (diff < 0) diff = -diff;
    if (closest_diff == -1 || diff < closest_diff) {
      closest_diff = diff;
      closest_len = (int64_t)R;
    } else if (diff == closest_diff && (int64_t)R < closest_len) {
      closest_len = (int64_t)R;
    }
    if (R > c->ids_cap) {
      c->ids_cap = R;
      c->ids = realloc(c->ids, R * sizeof *c->ids);
      CHECK(c->ids, "out of memory");
    }
    for (size_t i = 0; i < R; i++) { /* ids of the hypothesis vocabulary, -1 if absent */
      const token *t = &c->toks[i];
      uint64_t h = hash_bytes(t->p, t->len);
      int32_t id = -1;
      for (size_t k = h & (vcap - 1);; k = (k + 1) & (vcap - 1)) {
        vocab_slot *v = &c->vocab[k];
        if (v->id < 0) break;
        const token *u = &c->hyp_toks[v->tok];
        if (v->hash == h && u->len == t->len && memcmp(u->p, t->p, t->len) == 0) {
          id = v->id;
          break;
        }
      }
      c->ids[i] = id;
    }
    if (H == 0) continue;
    for (size_t i = 0; i < R; i++) {
      uint64_t h = 0x243f6a8885a308d3ull;
      for (int n = 1; n <= N && i + (size_t)n <= R; n++) {
        int32_t id = c->ids[i + n - 1];
        if (id < 0) break; /* no longer n-gram from i can be in the hypothesis */
        h = mix(h, (uint64_t)id);
        for (size_t k = h & (gcap - 1);; k = (k + 1) & (gcap - 1)) {
          ngram_slot *g = &c->grams[k];
          if (g->order == 0) break;
          if (g->hash == h && g->order == n &&
              memcmp(c->hyp_ids + g->start, c->ids + i, (size_t)n * sizeof(int32_t)) == 0) {
            if (g->last_ref != r) {
              g->last_ref = r;
              g->ref_cur = 0;
            }
            g->ref_cur++;
            if (g->ref_cur > g->ref_max) g->ref_max = g->ref_cur;
            break;
          }
        }
      }
    }
  }

  for (size_t k = 0; k < gcap; k++) {
    const ngram_slot *g = &c->grams[k];
    if (g->order == 0) continue;
    s->total[g->order - 1] += g->hyp_count;
    s->correct[g->order - 1] += g->hyp_count < g->ref_max ? g->hyp_count : g->ref_max;
  }
  s->sys_len += (int64_t)H;
  s->ref_len += closest_len < 0 ? 0 : closest_len; /* no reference: length 0 */
  s->n_segments++;
}

/* ------------------------------------------------------------------ scoring */

static double my_log(double x) {
  return x == 0.0 ? -9999999999.0 : log(x);
}

void bleu_score(const bleu_stats *s, const bleu_opts *o, bleu_result *r) {
  const int N = o->max_order;
  CHECK(N >= 1 && N <= BLEU_MAX_ORDER && s->max_order == N, "bad BLEU order %d (stats %d)", N,
        s->max_order);
  double v = o->smooth_value;
  if (v < 0) v = o->smooth == BLEU_SMOOTH_ADD_K ? 1.0 : 0.1;
  memset(r, 0, sizeof *r);
  r->max_order = N;
  r->sys_len = s->sys_len;
  r->ref_len = s->ref_len;
  r->ratio = s->ref_len ? (double)s->sys_len / (double)s->ref_len : 0.0;
  int any = 0;
  for (int n = 0; n < N; n++) {
    r->counts[n] = (double)s->correct[n];
    r->totals[n] = (double)s->total[n];
    any |= s->correct[n] != 0;
  }
  if (!any) return; /* sacreBLEU #141: score 0, BP 0, precisions 0 */

  double smooth_mteval = 1.0;
  int eff_order = N;
  for (int n = 1; n <= N; n++) {
    if (o->smooth == BLEU_SMOOTH_ADD_K && n > 1) {
      r->counts[n - 1] += v;
      r->totals[n - 1] += v;
    }
    double correct = r->counts[n - 1], total = r->totals[n - 1];
    if (total == 0) break;
    if (o->effective_order) eff_order = n;
    if (correct == 0) {
      if (o->smooth == BLEU_SMOOTH_EXP) {
        smooth_mteval *= 2;
        r->precisions[n - 1] = 100.0 / (smooth_mteval * total);
      } else if (o->smooth == BLEU_SMOOTH_FLOOR) {
        r->precisions[n - 1] = (100.0 * v) / total;
      }
    } else {
      r->precisions[n - 1] = (100.0 * correct) / total;
    }
  }
  double sum = 0.0;
  for (int n = 0; n < eff_order; n++)
    sum += my_log(r->precisions[n]);
  double score = exp(sum / eff_order);
  double bp = 1.0;
  if (s->sys_len < s->ref_len)
    bp = s->sys_len > 0 ? exp(1.0 - (double)s->ref_len / (double)s->sys_len) : 0.0;
  r->bp = bp;
  r->score = bp * score;
}

int bleu_format_width(const bleu_result *r, int width, char *buf, size_t len) {
  char prec[BLEU_MAX_ORDER * 16] = "";
  size_t o = 0;
  for (int n = 0; n < r->max_order && n < BLEU_MAX_ORDER; n++)
    o += (size_t)snprintf(prec + o, sizeof prec - o, "%s%.1f", n ? "/" : "", r->precisions[n]);
  return snprintf(buf, len, "BLEU = %.*f %s (BP = %.3f ratio = %.3f hyp_len = %lld ref_len = %lld)",
                  width, r->score, prec, r->bp, r->ratio, (long long)r->sys_len,
                  (long long)r->ref_len);
}

int bleu_format(const bleu_result *r, char *buf, size_t len) {
  return bleu_format_width(r, 2, buf, len);
}

void bleu_corpus(const char *const *hyps, const char *const *const *refs, int n_refs,
                 size_t n_segments, const bleu_opts *o, bleu_stats *stats, bleu_result *r) {
  bleu_stats s;
  bleu_stats_init(&s, o);
  bleu_ctx *c = bleu_ctx_create();
  const char *seg_refs[64];
  const char **rp = n_refs <= 64 ? seg_refs : common_malloc((size_t)n_refs * sizeof *rp);
  for (size_t i = 0; i < n_segments; i++) {
    for (int j = 0; j < n_refs; j++)
      rp[j] = refs[j][i];
    bleu_add_segment(c, &s, o, hyps[i], rp, n_refs);
  }
  if (rp != seg_refs) free(rp);
  bleu_ctx_destroy(c);
  bleu_score(&s, o, r);
  if (stats) *stats = s;
}

/* ------------------------------------------------------------------ command */

/* Read a whole file and cut it into lines on '\n' only (as sacreBLEU opens files with
 * newline="\n"); a last line without '\n' counts. *data owns the text. */
static int read_lines(const char *path, char **data, char ***lines, size_t *n_lines) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "bleu: cannot open %s: %s\n", path, strerror(errno));
    return C_ERR;
  }
  sbuf b = {0};
  sbuf_reserve(&b, 1 << 16);
  size_t got;
  while ((got = fread(b.p + b.len, 1, b.cap - b.len - 1, f)) > 0) {
    b.len += got;
    if (b.cap - b.len < 2) sbuf_reserve(&b, 2 * b.cap);
  }
  int bad = ferror(f);
  fclose(f);
  if (bad) {
    fprintf(stderr, "bleu: error reading %s\n", path);
    free(b.p);
    return C_ERR;
  }
  size_t n = 0;
  for (size_t i = 0; i < b.len; i++)
    n += b.p[i] == '\n';
  if (b.len && b.p[b.len - 1] != '\n') n++;
  char **l = common_malloc((n ? n : 1) * sizeof *l);
  size_t k = 0, start = 0;
  for (size_t i = 0; i < b.len; i++) {
    if (b.p[i] == '\n') {
      b.p[i] = '\0';
      l[k++] = b.p + start;
      start = i + 1;
    }
  }
  b.p[b.len] = '\0';
  if (start < b.len) l[k++] = b.p + start;
  *data = b.p;
  *lines = l;
  *n_lines = n;
  return C_OK;
}

static void cli_usage(void) {
  fprintf(stderr, "usage: mpiformer bleu HYP REF [REF...] [--tokenize 13a|none]\n"
                  "         [--smooth exp|floor|add-k|none] [--smooth-value V] [--max-order N]\n"
                  "         [--effective-order] [--lowercase] [--width N]\n"
                  "Scores the line-aligned UTF-8 file HYP against one or more reference\n"
                  "files with sacreBLEU's defaults and prints sacreBLEU's BLEU line.\n");
}

static int parse_number(const char *s, double *v) {
  char *end = NULL;
  errno = 0;
  *v = strtod(s, &end);
  return (end != s && *end == '\0' && errno == 0 && isfinite(*v)) ? C_OK : C_ERR;
}

int bleu_cli(int argc, char **argv) {
  bleu_opts o;
  bleu_opts_default(&o);
  int width = 2, n_files = 0;
  const char **files = common_calloc((size_t)argc + 1, sizeof *files);
  int rc = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *val = (i + 1 < argc) ? argv[i + 1] : NULL;
    int takes = !strcmp(a, "--tokenize") || !strcmp(a, "-tok") || !strcmp(a, "--smooth") ||
                !strcmp(a, "--smooth-method") || !strcmp(a, "-s") || !strcmp(a, "--smooth-value") ||
                !strcmp(a, "-sv") || !strcmp(a, "--max-order") || !strcmp(a, "--width") ||
                !strcmp(a, "-w");
    if (takes && !val) {
      fprintf(stderr, "bleu: option %s needs a value\n", a);
      goto out;
    }
    double num = 0;
    if (!strcmp(a, "--tokenize") || !strcmp(a, "-tok")) {
      if (!strcmp(val, "13a")) {
        o.tokenize = BLEU_TOK_13A;
      } else if (!strcmp(val, "none")) {
        o.tokenize = BLEU_TOK_NONE;
      } else {
        fprintf(stderr, "bleu: unknown tokenizer '%s' (this build knows 13a and none)\n", val);
        goto out;
      }
      i++;
    } else if (!strcmp(a, "--smooth") || !strcmp(a, "--smooth-method") || !strcmp(a, "-s")) {
      if (!strcmp(val, "exp")) {
        o.smooth = BLEU_SMOOTH_EXP;
      } else if (!strcmp(val, "floor")) {
        o.smooth = BLEU_SMOOTH_FLOOR;
      } else if (!strcmp(val, "add-k")) {
        o.smooth = BLEU_SMOOTH_ADD_K;
      } else if (!strcmp(val, "none")) {
        o.smooth = BLEU_SMOOTH_NONE;
      } else {
        fprintf(stderr, "bleu: unknown smoothing '%s' (exp, floor, add-k or none)\n", val);
        goto out;
      }
      i++;
    } else if (!strcmp(a, "--smooth-value") || !strcmp(a, "-sv")) {
      if (parse_number(val, &num) != C_OK || num < 0) {
        fprintf(stderr, "bleu: --smooth-value wants a number >= 0, got '%s'\n", val);
        goto out;
      }
      o.smooth_value = num;
      i++;
    } else if (!strcmp(a, "--max-order")) {
      if (parse_number(val, &num) != C_OK || num != (int)num || num < 1 || num > BLEU_MAX_ORDER) {
        fprintf(stderr, "bleu: --max-order wants an integer 1..%d, got '%s'\n", BLEU_MAX_ORDER,
                val);
        goto out;
      }
      o.max_order = (int)num;
      i++;
    } else if (!strcmp(a, "--width") || !strcmp(a, "-w")) {
      if (parse_number(val, &num) != C_OK || num != (int)num || num < 0 || num > 17) {
        fprintf(stderr, "bleu: --width wants an integer 0..17, got '%s'\n", val);
        goto out;
      }
      width = (int)num;
      i++;
    } else if (!strcmp(a, "--lowercase") || !strcmp(a, "-lc")) {
      o.lowercase = 1;
    } else if (!strcmp(a, "--effective-order")) {
      o.effective_order = 1;
    } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      cli_usage();
      rc = 0;
      goto out;
    } else if (a[0] == '-' && a[1] != '\0') {
      fprintf(stderr, "bleu: unknown option '%s'\n", a);
      cli_usage();
      goto out;
    } else {
      files[n_files++] = a;
    }
  }
  if (n_files < 2) {
    fprintf(stderr, "bleu: need a hypothesis file and at least one reference file\n");
    cli_usage();
    goto out;
  }

  int n_refs = n_files - 1;
  char **data = common_calloc((size_t)n_files, sizeof *data);
  char ***lines = common_calloc((size_t)n_files, sizeof *lines);
  size_t *n_lines = common_calloc((size_t)n_files, sizeof *n_lines);
  int ok = 1;
  for (int f = 0; f < n_files && ok; f++)
    ok = read_lines(files[f], &data[f], &lines[f], &n_lines[f]) == C_OK;
  for (int f = 1; f < n_files && ok; f++) {
    if (n_lines[f] != n_lines[0]) {
      fprintf(stderr,
              "bleu: %s has %zu lines but the hypothesis file %s has %zu; the files must be "
              "line-aligned (one segment per line)\n",
              files[f], n_lines[f], files[0], n_lines[0]);
      ok = 0;
    }
  }
  if (ok) {
    bleu_result r;
    bleu_corpus((const char *const *)lines[0], (const char *const *const *)(lines + 1), n_refs,
                n_lines[0], &o, NULL, &r);
    char line[512];
    bleu_format_width(&r, width, line, sizeof line);
    printf("%s\n", line);
    fflush(stdout);
    rc = 0;
  }
  for (int f = 0; f < n_files; f++) {
    free(data[f]);
    free(lines[f]);
  }
  free(data);
  free(lines);
  free(n_lines);
out:
  free(files);
  return rc;
}
