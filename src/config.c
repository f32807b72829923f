/* config.c: key = value configuration, driven by the CONFIG_KEYS table (see config.h).
 *
 * The table gives each key's type, default and range; this file only walks it. The
 * checks that involve several keys live in config_validate.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "common.h"

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
  {#name, T_INT, offsetof(config, name), NULL, (double)(def), (double)(lo), (double)(hi),          \
   NULL,  help},
#define KI_FLOAT(name, def, lo, hi, help)                                                          \
  {#name, T_FLOAT, offsetof(config, name), NULL, (double)(def), (double)(lo), (double)(hi),        \
   NULL,  help},
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
    if (keys[i].type == T_INT)
      *(int64_t *)field = (int64_t)keys[i].def_num;
    else if (keys[i].type == T_FLOAT)
      *(double *)field = keys[i].def_num;
    else
      snprintf(field, 256, "%s", keys[i].def_str);
  }
}

/* Levenshtein distance, for "did you mean". */
static int edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 63 || lb > 63) return 99;
  int d[64][64];
  for (size_t i = 0; i <= la; i++)
    d[i][0] = (int)i;
  for (size_t j = 0; j <= lb; j++)
    d[0][j] = (int)j;
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

/* ---------------------------------------------------------------------------------- */
/* Text as editors, web pages and e-mails write it                                    */
/*                                                                                    */
/* A config file is UTF-8 text. Its keys are ASCII; what else a hand-written file may  */
/* hold is either read as the writer meant (with a warning where the writer would want */
/* to know) or refused with the offending characters rendered visibly (\u00a0), so no  */
/* message ever shows two names that look the same. docs/CONFIG.md lists the rules.    */

/* Decode one UTF-8 sequence at s (n > 0 bytes left) into *cp; returns its length, or 0
 * for an invalid sequence (overlong, surrogate, beyond U+10FFFF, truncated). */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
  if (s[0] < 0x80) return *cp = s[0], 1;
  size_t len = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC0 ? 2 : 0;
  if (!len || len > n || s[0] > 0xF4) return 0;
  uint32_t c = s[0] & (0x7F >> len);
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    c = (c << 6) | (s[i] & 0x3F);
  }
  static const uint32_t min_of[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (c < min_of[len] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
  *cp = c;
  return len;
}

/* Characters that show as nothing or as a space: Unicode spaces, zero-width characters,
 * the BOM, the soft hyphen and the bidirectional controls (ASCII space and tab excluded). */
static int is_invisible(uint32_t c) {
  return c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200F) || c == 0x202F || c == 0x205F ||
         c == 0x3000 || c == 0x2060 || c == 0xFEFF || c == 0xAD || c == 0x180E ||
         (c >= 0x202A && c <= 0x202E) || (c >= 0x2066 && c <= 0x2069);
}

/* Dashes that word processors put where a minus was typed. */
static int is_minus_like(uint32_t c) {
  return c == 0x2212 || (c >= 0x2010 && c <= 0x2014) || c == 0xFE63 || c == 0xFF0D;
}

/* 1: a double quote (" and its typographic forms), 2: a single quote, else 0. */
static int quote_family(uint32_t c) {
  if (c == '"' || c == 0x201C || c == 0x201D || c == 0x201E || c == 0xAB || c == 0xBB) return 1;
  if (c == '\'' || c == 0x2018 || c == 0x2019 || c == 0x201A) return 2;
  return 0;
}

/* Letters of other scripts that look like an ASCII letter or digit, for suggestions only
 * (a key is never accepted through this table). */
static char lookalike_of(uint32_t c, const char **script) {
  static const struct {
    uint32_t cp;
    char ascii;
  } cyr[] = {{0x430, 'a'}, {0x435, 'e'}, {0x43E, 'o'}, {0x440, 'p'}, {0x441, 'c'}, {0x445, 'x'},
             {0x443, 'y'}, {0x456, 'i'}, {0x458, 'j'}, {0x455, 's'}, {0x501, 'd'}, {0x4BB, 'h'},
             {0x4CF, 'l'}, {0x51B, 'q'}, {0x51D, 'w'}, {0x410, 'A'}, {0x412, 'B'}, {0x415, 'E'},
             {0x41A, 'K'}, {0x41C, 'M'}, {0x41D, 'H'}, {0x41E, 'O'}, {0x420, 'P'}, {0x421, 'C'},
             {0x422, 'T'}, {0x425, 'X'}, {0x406, 'I'}, {0x408, 'J'}, {0x405, 'S'}},
    grk[] = {{0x3BF, 'o'}, {0x3B1, 'a'}, {0x3B9, 'i'}, {0x3BA, 'k'}, {0x3BD, 'v'}, {0x3C1, 'p'},
             {0x3C4, 't'}, {0x3C5, 'u'}, {0x3C7, 'x'}, {0x391, 'A'}, {0x392, 'B'}, {0x395, 'E'},
             {0x396, 'Z'}, {0x397, 'H'}, {0x399, 'I'}, {0x39A, 'K'}, {0x39C, 'M'}, {0x39D, 'N'},
             {0x39F, 'O'}, {0x3A1, 'P'}, {0x3A4, 'T'}, {0x3A5, 'Y'}, {0x3A7, 'X'}},
    lat[] = {{0x131, 'i'}, {0x2113, 'l'}, {0x2170, 'i'}, {0x217C, 'l'}, {0x0251, 'a'}};
  for (size_t i = 0; i < sizeof cyr / sizeof cyr[0]; i++)
    if (cyr[i].cp == c) return *script = "Cyrillic", cyr[i].ascii;
  for (size_t i = 0; i < sizeof grk / sizeof grk[0]; i++)
    if (grk[i].cp == c) return *script = "Greek", grk[i].ascii;
  for (size_t i = 0; i < sizeof lat / sizeof lat[0]; i++)
    if (lat[i].cp == c) return *script = "non-ASCII", lat[i].ascii;
  if (c >= 0xFF01 && c <= 0xFF5E) return *script = "fullwidth", (char)(c - 0xFF01 + '!');
  return 0;
}

/* A few words on what c is, e.g. "no-break space" or "Cyrillic letter like 'a'". */
static void char_describe(uint32_t c, char *out, size_t len) {
  static const struct {
    uint32_t cp;
    const char *name;
  } names[] = {{0xA0, "no-break space"},
               {0x202F, "narrow no-break space"},
               {0x3000, "ideographic space"},
               {0x200B, "zero-width space"},
               {0x200C, "zero-width non-joiner"},
               {0x200D, "zero-width joiner"},
               {0x200E, "left-to-right mark"},
               {0x200F, "right-to-left mark"},
               {0x2060, "word joiner"},
               {0xFEFF, "zero-width no-break space (byte-order mark)"},
               {0xAD, "soft hyphen"},
               {0x2212, "minus sign"},
               {0x2010, "hyphen"},
               {0x2011, "non-breaking hyphen"},
               {0x2012, "figure dash"},
               {0x2013, "en dash"},
               {0x2014, "em dash"},
               {0x201C, "left double quotation mark"},
               {0x201D, "right double quotation mark"},
               {0x201E, "low double quotation mark"},
               {0x2018, "left single quotation mark"},
               {0x2019, "right single quotation mark"},
               {0xAB, "left guillemet"},
               {0xBB, "right guillemet"},
               {0xFF1D, "fullwidth equals sign"}};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (names[i].cp == c) {
      snprintf(out, len, "%s", names[i].name);
      return;
    }
  const char *script = NULL;
  char a = lookalike_of(c, &script);
  if (a && !strcmp(script, "fullwidth"))
    snprintf(out, len, "fullwidth form of '%c'", a);
  else if (a)
    snprintf(out, len, "%s letter like '%c'", script, a);
  else if ((c >= 0x2000 && c <= 0x200A) || c == 0x205F || c == 0x1680)
    snprintf(out, len, "Unicode space");
  else if (is_invisible(c))
    snprintf(out, len, "invisible format character");
  else if (c < 0x20 || c == 0x7F)
    snprintf(out, len, "control character");
  else
    snprintf(out, len, "not ASCII");
}

/* Write s into out with everything but printable ASCII escaped: \t, \xNN for other
 * control bytes and invalid UTF-8, \uXXXX for a non-ASCII character, \\ for a
 * backslash. Distinct strings render distinctly, and the rendering is plain ASCII. */
static void render(const char *s, char *out, size_t len) {
  size_t o = 0, n = strlen(s);
  const unsigned char *u = (const unsigned char *)s;
  if (len == 0) return;
  for (size_t i = 0; i < n && o + 12 < len;) {
    uint32_t c;
    size_t l = utf8_decode(u + i, n - i, &c);
    if (l == 1 && c >= 0x20 && c < 0x7F && c != '\\')
      out[o++] = (char)c;
    else if (l == 1 && c == '\\')
      o += (size_t)snprintf(out + o, len - o, "\\\\");
    else if (l == 1 && c == '\t')
      o += (size_t)snprintf(out + o, len - o, "\\t");
    else if (l <= 1)
      o += (size_t)snprintf(out + o, len - o, "\\x%02x", (unsigned)u[i]);
    else if (c <= 0xFFFF)
      o += (size_t)snprintf(out + o, len - o, "\\u%04x", (unsigned)c);
    else
      o += (size_t)snprintf(out + o, len - o, "\\U%08x", (unsigned)c);
    i += l ? l : 1;
  }
  out[o < len ? o : len - 1] = '\0';
}

/* Write "\u00a0 is a no-break space; \u0430 is a Cyrillic letter like 'a'" into out for
 * up to three distinct characters of s that are not printable ASCII ("" if none). */
static void describe_odd_chars(const char *s, char *out, size_t len) {
  const unsigned char *u = (const unsigned char *)s;
  size_t n = strlen(s), o = 0;
  uint32_t seen[3];
  int n_seen = 0;
  out[0] = '\0';
  for (size_t i = 0; i < n && n_seen < 3;) {
    uint32_t c;
    size_t l = utf8_decode(u + i, n - i, &c);
    int invalid = l == 0;
    if (invalid) c = 0x80000000u | u[i]; /* a byte that is not UTF-8 */
    i += l ? l : 1;
    if (!invalid && c >= 0x20 && c < 0x7F) continue;
    int dup = 0;
    for (int j = 0; j < n_seen; j++)
      dup |= seen[j] == c;
    if (dup) continue;
    seen[n_seen++] = c;
    char what[120], d[64];
    char_describe(c, d, sizeof d);
    if (invalid)
      snprintf(what, sizeof what, "\\x%02x is a byte that is not UTF-8: save the file as UTF-8",
               (unsigned)(c & 0xFF));
    else if (c == '\t')
      snprintf(what, sizeof what, "\\t is a tab");
    else if (c < 0x20 || c == 0x7F)
      snprintf(what, sizeof what, "\\x%02x is a control character", (unsigned)c);
    else
      snprintf(what, sizeof what, "\\u%04x is %s %s", (unsigned)c,
               strchr("aeiou", d[0]) ? "an" : "a", d);
    if (o + strlen(what) + 3 < len)
      o += (size_t)snprintf(out + o, len - o, "%s%s", o ? "; " : "", what);
  }
}

/* Drop ASCII whitespace and invisible characters from both ends of s (in place). Returns
 * the first invisible character dropped (0 if only ASCII whitespace went). */
static uint32_t trim_edges(char **s) {
  uint32_t dropped = 0, c;
  unsigned char *u = (unsigned char *)*s;
  size_t n = strlen(*s), l;
  for (;;) {
    if (n && isspace(*u))
      u++, n--;
    else if (n && (l = utf8_decode(u, n, &c)) > 1 && is_invisible(c)) {
      if (!dropped) dropped = c;
      u += l, n -= l;
    } else
      break;
  }
  for (;;) {
    if (n && isspace(u[n - 1])) {
      n--;
      continue;
    }
    size_t k = n >= 3 ? 3 : n; /* the invisible characters we know are 2 or 3 bytes */
    int cut = 0;
    for (; k >= 2 && !cut; k--)
      if (utf8_decode(u + n - k, k, &c) == k && is_invisible(c)) {
        if (!dropped) dropped = c;
        n -= k, cut = 1;
      }
    if (!cut) break;
  }
  u[n] = '\0';
  *s = (char *)u;
  return dropped;
}

/* Does s hold a character that must not be inside a value: a control character (tab
 * included), an invisible one, or a byte that is not UTF-8? Sets *bad to the first. */
static int has_hidden(const char *s, uint32_t *bad) {
  const unsigned char *u = (const unsigned char *)s;
  size_t n = strlen(s);
  for (size_t i = 0; i < n;) {
    uint32_t c;
    size_t l = utf8_decode(u + i, n - i, &c);
    if (!l) return *bad = u[i], 1;
    if (c < 0x20 || c == 0x7F || is_invisible(c)) return *bad = c, 1;
    i += l;
  }
  return 0;
}

/* s with lookalike letters mapped to ASCII, invisible characters dropped, upper case
 * lowered and '-' or ' ' read as '_': the key or choice the writer probably meant. */
static void fold(const char *s, char *out, size_t len) {
  const unsigned char *u = (const unsigned char *)s;
  size_t n = strlen(s), o = 0;
  for (size_t i = 0; i < n && o + 1 < len;) {
    uint32_t c;
    size_t l = utf8_decode(u + i, n - i, &c);
    i += l ? l : 1;
    if (!l || is_invisible(c)) continue;
    const char *script;
    char a = c < 0x80 ? (char)c : lookalike_of(c, &script);
    if (!a) a = '?';
    if (a == '-' || a == ' ') a = '_';
    out[o++] = (char)tolower((unsigned char)a);
  }
  out[o] = '\0';
}

/* The candidate closest to `given` (after folding), or NULL if none is near. */
static const char *suggest(const char *given, const char *const *cands, size_t n_cands) {
  char folded[256];
  fold(given, folded, sizeof folded);
  const char *best = NULL;
  int best_d = 4;
  for (size_t i = 0; i < n_cands; i++) {
    int d = edit_distance(folded, cands[i]);
    if (d < best_d) best_d = d, best = cands[i];
  }
  return best;
}

/* ---------------------------------------------------------------------------------- */
/* Keys and values                                                                    */

static void add_warning(config *c, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void add_warning(config *c, const char *where, const char *fmt, ...) {
  size_t o = strlen(c->warnings);
  if (o + 2 >= sizeof c->warnings) return;
  o += (size_t)snprintf(c->warnings + o, sizeof c->warnings - o, "%s: ", where);
  if (o + 2 >= sizeof c->warnings) return;
  va_list ap;
  va_start(ap, fmt);
  o += (size_t)vsnprintf(c->warnings + o, sizeof c->warnings - o, fmt, ap);
  va_end(ap);
  if (o + 2 < sizeof c->warnings) snprintf(c->warnings + o, sizeof c->warnings - o, "\n");
}

/* The key named by raw (edges trimmed), or NULL with a message in err. */
static const key_info *resolve_key(config *c, char *raw, const char *where, char *err,
                                   size_t err_len) {
  char *key = raw;
  uint32_t dropped = trim_edges(&key);
  char shown[512], d[64];
  const key_info *k = find_key(key);
  if (k && dropped) {
    char_describe(dropped, d, sizeof d);
    add_warning(c, where, "a \\u%04x (%s) beside the key '%s' is dropped", (unsigned)dropped, d,
                k->name);
  }
  if (k) return k;
  render(key, shown, sizeof shown);
  if (!key[0]) {
    snprintf(err, err_len, "%s: a value without a key ('= ...'); write key = value", where);
    return NULL;
  }
  const char *names[sizeof keys / sizeof keys[0]];
  for (size_t i = 0; i < n_keys; i++)
    names[i] = keys[i].name;
  const char *best = suggest(key, names, n_keys);
  char notes[400];
  describe_odd_chars(key, notes, sizeof notes);
  char guess[96] = " (see docs/CONFIG.md for the keys)";
  if (best) snprintf(guess, sizeof guess, " (did you mean '%s'?)", best);
  snprintf(err, err_len, "%s: unknown key '%s'%s%s%s", where, shown, notes[0] ? ": " : "", notes,
           guess);
  return NULL;
}

/* Is v (ASCII) a plain decimal number: [+-] digits [. digits] [e [+-] digits]? */
static int is_decimal(const char *v) {
  const char *p = v;
  int digits = 0;
  if (*p == '+' || *p == '-') p++;
  while (isdigit((unsigned char)*p))
    p++, digits++;
  if (*p == '.') {
    p++;
    while (isdigit((unsigned char)*p))
      p++, digits++;
  }
  if (!digits) return 0;
  if (*p == 'e' || *p == 'E') {
    p++;
    if (*p == '+' || *p == '-') p++;
    if (!isdigit((unsigned char)*p)) return 0;
    while (isdigit((unsigned char)*p))
      p++;
  }
  return *p == '\0';
}

/* Strip one pair of quotes (plain or typographic: the latter with a warning) around
 * *value, in place. C_ERR (err set) on a quote at one end only. */
static int unquote(config *c, const key_info *k, char **value, const char *where, char *err,
                   size_t err_len) {
  char *v = *value, shown[600];
  size_t n = strlen(v);
  const unsigned char *u = (const unsigned char *)v;
  uint32_t first = 0, last = 0;
  size_t first_len = n ? utf8_decode(u, n, &first) : 0, last_len = 0;
  for (size_t l = 1; l <= 3 && l <= n && !last_len; l++)
    if (utf8_decode(u + n - l, l, &last) == l) last_len = l;
  int fq = first_len ? quote_family(first) : 0, lq = last_len ? quote_family(last) : 0;
  if (fq && lq && fq == lq && n >= first_len + last_len) {
    if (first >= 0x80 || last >= 0x80)
      add_warning(c, where,
                  "the value of '%s' is in typographic quotes \\u%04x...\\u%04x; read "
                  "as if plain quotes, which are not part of the value",
                  k->name, (unsigned)first, (unsigned)last);
    v[n - last_len] = '\0';
    *value = v + first_len;
  } else if (fq || lq) {
    render(v, shown, sizeof shown);
    snprintf(err, err_len,
             "%s: the value of '%s' has an unmatched quote: '%s' (quote the whole "
             "value or nothing)",
             where, k->name, shown);
    return C_ERR;
  }
  return C_OK;
}

/* A string key: its length and its choices (with a "did you mean"). */
static int assign_str(const key_info *k, char *field, const char *value, const char *where,
                      char *err, size_t err_len) {
  char shown[600], notes[400] = "";
  if (strlen(value) >= 256) {
    snprintf(err, err_len, "%s: value of '%s' is longer than 255 characters", where, k->name);
    return C_ERR;
  }
  if (!choice_ok(k->choices, value)) {
    render(value, shown, sizeof shown);
    const char *opts[16];
    size_t n_opts = 0;
    char opt_buf[256], *save = NULL;
    snprintf(opt_buf, sizeof opt_buf, "%s", k->choices);
    for (char *t = strtok_r(opt_buf, "|", &save); t && n_opts < 16; t = strtok_r(NULL, "|", &save))
      opts[n_opts++] = t;
    const char *best = suggest(value, opts, n_opts);
    describe_odd_chars(value, notes, sizeof notes);
    snprintf(err, err_len, "%s: '%s' must be one of %s, not '%s'%s%s%s%s%s", where, k->name,
             k->choices, shown, notes[0] ? ": " : "", notes, best ? " (did you mean '" : "",
             best ? best : "", best ? "'?)" : "");
    return C_ERR;
  }
  snprintf(field, 256, "%s", value);
  return C_OK;
}

/* value into num[num_len] with typographic minus signs and dashes read as '-' (with a
 * warning each). */
static void ascii_minus(config *c, const key_info *k, const char *value, const char *where,
                        char *num, size_t num_len) {
  char d[64];
  size_t o = 0, n = strlen(value);
  const unsigned char *u = (const unsigned char *)value;
  for (size_t i = 0; i < n && o + 4 < num_len;) {
    uint32_t ch;
    size_t l = utf8_decode(u + i, n - i, &ch);
    if (l > 1 && is_minus_like(ch)) {
      char_describe(ch, d, sizeof d);
      add_warning(c, where, "the \\u%04x (%s) in the value of '%s' is read as '-'", (unsigned)ch, d,
                  k->name);
      num[o++] = '-';
    } else {
      memcpy(num + o, value + i, l ? l : 1);
      o += l ? l : 1;
    }
    i += l ? l : 1;
  }
  num[o] = '\0';
}

/* A number key (true/yes/on and false/no/off for the 0/1 keys): a decimal number, an
 * integer where the key wants one, inside the key's range. */
static int assign_number(const key_info *k, char *field, const char *num, const char *where,
                         char *err, size_t err_len) {
  char shown[600], notes[400] = "";
  int is_bool = k->type == T_INT && k->lo == 0 && k->hi == 1;
  double v = 0;
  if (is_bool && (!strcasecmp(num, "true") || !strcasecmp(num, "yes") || !strcasecmp(num, "on")))
    v = 1;
  else if (is_bool &&
           (!strcasecmp(num, "false") || !strcasecmp(num, "no") || !strcasecmp(num, "off")))
    v = 0;
  else {
    errno = 0;
    v = is_decimal(num) ? strtod(num, NULL) : NAN;
    if (!isfinite(v) || errno) {
      render(num, shown, sizeof shown);
      const char *hint = "";
      char *end = NULL;
      strtod(num, &end);
      if (strpbrk(num, ",_' "))
        hint = " (write numbers without separators: 1000 for a thousand, 0.5 for a half)";
      else if (end && end != num && *end)
        hint = " (something follows the number; a comment starts with '#')";
      describe_odd_chars(num, notes, sizeof notes);
      snprintf(err, err_len, "%s: '%s' needs a %s, not '%s'%s%s%s%s", where, k->name,
               is_bool ? "0 or 1 (or true/false)" : "number", shown, hint, notes[0] ? " (" : "",
               notes, notes[0] ? ")" : "");
      return C_ERR;
    }
  }
  if (k->type == T_INT && v != floor(v)) {
    render(num, shown, sizeof shown);
    snprintf(err, err_len, "%s: '%s' needs an integer, not '%s'", where, k->name, shown);
    return C_ERR;
  }
  if (v < k->lo || v > k->hi) {
    render(num, shown, sizeof shown);
    snprintf(err, err_len, "%s: '%s' = %s is out of range [%g, %g]", where, k->name, shown, k->lo,
             k->hi);
    return C_ERR;
  }
  if (k->type == T_INT)
    *(int64_t *)field = (int64_t)v;
  else
    *(double *)field = v;
  return C_OK;
}

/* Set key k from the raw value text (edges, quotes and dashes handled as documented). */
static int assign(config *c, const key_info *k, char *raw, const char *where, char *err,
                  size_t err_len) {
  char *value = raw, shown[600], notes[400] = "", d[64];
  uint32_t dropped = trim_edges(&value);
  if (dropped) {
    char_describe(dropped, d, sizeof d);
    add_warning(c, where, "the value of '%s' has a \\u%04x (%s) at its edge; dropped", k->name,
                (unsigned)dropped, d);
  }
  if (unquote(c, k, &value, where, err, err_len) != C_OK) return C_ERR;
  uint32_t bad;
  if (has_hidden(value, &bad)) {
    render(value, shown, sizeof shown);
    describe_odd_chars(value, notes, sizeof notes);
    snprintf(err, err_len,
             "%s: the value of '%s' holds an invisible or invalid character: "
             "'%s' (%s); retype the value",
             where, k->name, shown, notes);
    return C_ERR;
  }
  char *field = (char *)c + k->offset;
  if (k->type == T_STR) return assign_str(k, field, value, where, err, err_len);
  char num[256];
  ascii_minus(c, k, value, where, num, sizeof num);
  return assign_number(k, field, num, where, err, err_len);
}

/* The message for a line (or argument) that has no '=': what it holds, and a guess. */
static void missing_equals(const char *text, const char *where, char *err, size_t err_len) {
  char shown[600], word[64] = "";
  render(text, shown, sizeof shown);
  sscanf(text, "%63[a-z0-9_]", word);
  const char *hint = "";
  char buf[160] = "";
  if (!strncmp(text, "--", 2))
    hint = " (flags are not read: write key=value without '--')";
  else if (strchr(text, ':'))
    hint = " (YAML's 'key: value' is not read: write key = value)";
  else if (word[0] && find_key(word)) {
    snprintf(buf, sizeof buf, " (is the '=' after '%s' missing?)", word);
    hint = buf;
  }
  char notes[300] = "";
  describe_odd_chars(text, notes, sizeof notes);
  snprintf(err, err_len, "%s: expected key = value, got '%s'%s%s%s%s", where, shown, hint,
           notes[0] ? " (" : "", notes, notes[0] ? ")" : "");
}

int config_set(config *c, const char *key_value, const char *where, char *err, size_t err_len) {
  size_t len = strlen(key_value);
  char *buf = malloc(len + 1);
  if (!buf) {
    snprintf(err, err_len, "%s: out of memory", where);
    return C_ERR;
  }
  memcpy(buf, key_value, len + 1);
  char *eq = strchr(buf, '=');
  int rc = C_ERR;
  if (!eq)
    missing_equals(key_value, where, err, err_len);
  else {
    *eq = '\0';
    const key_info *k = resolve_key(c, buf, where, err, err_len);
    if (k) rc = assign(c, k, eq + 1, where, err, err_len);
  }
  free(buf);
  return rc;
}

/* Where the value's comment starts: the first '#' after a quoted value's closing quote,
 * or the first '#' of an unquoted one. NULL if none. */
static char *comment_start(char *value) {
  char *p = value;
  while (*p == ' ' || *p == '\t')
    p++;
  uint32_t q;
  size_t l = *p ? utf8_decode((unsigned char *)p, strlen(p), &q) : 0;
  if (l && quote_family(q)) {
    int fam = quote_family(q);
    for (char *s = p + l; *s;) {
      uint32_t c;
      size_t m = utf8_decode((unsigned char *)s, strlen(s), &c);
      if (m && quote_family(c) == fam) return strchr(s + m, '#');
      s += m ? m : 1;
    }
    return NULL; /* unmatched: assign reports it */
  }
  return strchr(value, '#');
}

#define CONFIG_FILE_MAX (1 << 20)

int config_load_file(config *c, const char *path, char *err, size_t err_len) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(err, err_len, "cannot read config file '%s': %s", path, strerror(errno));
    return C_ERR;
  }
  struct stat st = {0};
  if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
    snprintf(err, err_len, "config file '%s' is a directory: give the file of key = value lines",
             path);
    fclose(f);
    return C_ERR;
  }
  char *text = malloc(CONFIG_FILE_MAX + 1);
  size_t n = text ? fread(text, 1, CONFIG_FILE_MAX + 1, f) : 0;
  int read_err = ferror(f);
  fclose(f);
  if (!text || read_err) {
    snprintf(err, err_len, "cannot read config file '%s': %s", path,
             text ? strerror(EIO) : "out of memory");
    free(text);
    return C_ERR;
  }
  int rc = C_ERR;
  const unsigned char *u = (const unsigned char *)text;
  if (n > CONFIG_FILE_MAX) {
    snprintf(err, err_len, "config file '%s' is larger than %d bytes: is it a config file?", path,
             CONFIG_FILE_MAX);
    goto done;
  }
  if (n == 0 && S_ISCHR(st.st_mode)) { /* /dev/null: the explicit "no file", as in a script */
    rc = C_OK;
    goto done;
  }
  if (n == 0) {
    snprintf(err, err_len,
             "config file '%s' is empty: write key = value lines (docs/CONFIG.md), "
             "or give no config file to use the defaults",
             path);
    goto done;
  }
  if (n >= 2 && ((u[0] == 0xFF && u[1] == 0xFE) || (u[0] == 0xFE && u[1] == 0xFF))) {
    snprintf(err, err_len,
             "config file '%s' is UTF-16 text (it starts with the byte-order mark "
             "%02X %02X): save it as UTF-8",
             path, u[0], u[1]);
    goto done;
  }
  text[n] = '\0';
  char *p = text;
  if (n >= 3 && u[0] == 0xEF && u[1] == 0xBB && u[2] == 0xBF) p += 3; /* UTF-8 BOM */
  int set_at[sizeof keys / sizeof keys[0]] = {0};
  int lineno = 0, n_set = 0;
  char where[600];
  while (p < text + n) {
    /* one line: ends at \n, \r\n or a lone \r */
    char *line = p;
    size_t len = strcspn(p, "\r\n");
    if (line + len < text + n && line[len] == '\0') {
      snprintf(err, err_len, "%s:%d: the line holds a NUL byte: is '%s' a text file?", path,
               lineno + 1, path);
      goto done;
    }
    p += len;
    if (p[0] == '\r' && p[1] == '\n')
      p += 2;
    else if (p[0])
      p += 1;
    line[len] = '\0';
    lineno++;
    snprintf(where, sizeof where, "%s:%d", path, lineno);

    char *eq = strchr(line, '=');
    char *hash = strchr(line, '#');
    if (!eq || (hash && hash < eq)) { /* a comment, a blank line, or no '=' */
      if (hash) *hash = '\0';
      char *s = line;
      trim_edges(&s);
      if (!*s) continue;
      missing_equals(s, where, err, err_len);
      goto done;
    }
    *eq = '\0';
    char *value = eq + 1, *comment = comment_start(value);
    if (comment) *comment = '\0';
    const key_info *k = resolve_key(c, line, where, err, err_len);
    if (!k) goto done;
    size_t ki = (size_t)(k - keys);
    if (set_at[ki]) /* last wins, as with argparse (fairseq, Megatron); but say so */
      add_warning(c, where, "'%s' is set again (first on line %d): the value of line %d wins",
                  k->name, set_at[ki], lineno);
    if (assign(c, k, value, where, err, err_len) != C_OK) goto done;
    set_at[ki] = lineno;
    n_set++;
  }
  if (n_set == 0) {
    snprintf(err, err_len,
             "config file '%s' has no settings, only comments or blank lines: write "
             "key = value lines (docs/CONFIG.md), or give no config file to use the defaults",
             path);
    goto done;
  }
  rc = C_OK;
done:
  free(text);
  return rc;
}

int config_validate(config *c, char *err, size_t err_len) {
  if (c->d_model % c->heads != 0) {
    snprintf(err, err_len, "heads=%lld must divide d_model=%lld", (long long)c->heads,
             (long long)c->d_model);
    return C_ERR;
  }
  if (c->d_model % 2 != 0) {
    snprintf(err, err_len, "d_model=%lld must be even (sinusoidal positions)",
             (long long)c->d_model);
    return C_ERR;
  }
  if (c->lr_decay_epochs[0]) {
    for (const char *p = c->lr_decay_epochs; *p; p++)
      if (!isdigit((unsigned char)*p) && *p != ',') {
        snprintf(err, err_len, "lr_decay_epochs must be comma-separated epochs, e.g. 8 or 6,9");
        return C_ERR;
      }
  }
  if (!strcmp(c->lr_scheduler, "linear") && c->max_steps == 0) {
    snprintf(err, err_len, "lr_scheduler=linear needs max_steps (it decays to end_lr there)");
    return C_ERR;
  }
  if (!strcmp(c->lr_scheduler, "step") && !c->lr_decay_epochs[0]) {
    snprintf(err, err_len, "lr_scheduler=step needs lr_decay_epochs (e.g. lr_decay_epochs=8)");
    return C_ERR;
  }
  /* micro-batches: update_freq and microbatches are one setting (the batches of max_tokens
   * a replica accumulates per update); microbatches is the pipeline's name for it */
  if (c->microbatches != 1 && c->update_freq != 1 && c->microbatches != c->update_freq) {
    snprintf(err, err_len,
             "microbatches=%lld and update_freq=%lld disagree: both are the micro-batches a "
             "replica accumulates per update; set one of them (or both to the same value)",
             (long long)c->microbatches, (long long)c->update_freq);
    return C_ERR;
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
    return C_ERR;
  }
  /* TP grid shape */
  int pr = 0, pc = 0;
  if (c->tp_grid[0]) {
    if (sscanf(c->tp_grid, "%dx%d", &pr, &pc) != 2 || pr < 1 || pc < 1) {
      snprintf(err, err_len, "tp_grid='%s' must look like 2x1 (rows x columns)", c->tp_grid);
      return C_ERR;
    }
    if ((int64_t)pr * pc != c->tp) {
      snprintf(err, err_len, "tp_grid=%s has %d ranks but tp=%lld", c->tp_grid, pr * pc,
               (long long)c->tp);
      return C_ERR;
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
    return C_ERR;
  }
  c->tp_pr = pr;
  c->tp_pc = pc;
  return C_OK;
}

int config_from_args(config *c, int argc, char **argv, char *err, size_t err_len) {
  config_defaults(c);
  int i = 0, rc = C_OK;
  if (argc > 0 && !strchr(argv[0], '=')) {
    rc = config_load_file(c, argv[0], err, err_len);
    i = 1;
  }
  for (; i < argc && rc == C_OK; i++)
    rc = config_set(c, argv[i], "command line", err, err_len);
  if (rc == C_OK) rc = config_validate(c, err, err_len);
  if (c->warnings[0] && common_rank() == 0) { /* every rank read the same; one speaks */
    for (const char *w = c->warnings; *w;) {
      size_t len = strcspn(w, "\n");
      fprintf(stderr, "mpiformer: warning: %.*s\n", (int)len, w);
      w += len + (w[len] == '\n');
    }
    fflush(stderr);
  }
  return rc;
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
    else
      len += snprintf(buf + len, cap - len, "%s = %s\n", keys[i].name, field);
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
