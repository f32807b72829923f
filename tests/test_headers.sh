#!/usr/bin/env bash
# test_headers.sh: every public function declared in include/*.h says whether it is
# collective and on which communicator (issue 10; the rule and the parser are in
# tests/check_headers.py: a comment containing "collective" on the declaration's lines, or
# in the comment block right above it or above the group of adjacent declarations it
# starts). First the checker is shown to catch what it must (and only that) on a made-up
# header, then it runs on include/*.h and prints each offender as file:line name.
source "$(dirname "$0")/lib.sh"
check=tests/check_headers.py

cat >"$tmp/fixture.h" <<'H'
/* fixture.h: a header with one declaration of every kind. */
#ifndef FIXTURE_H
#define FIXTURE_H
#include <stddef.h>
#define FIX_MAX(a, b) ((a) > (b) ? (a) : (b))
#define FIX_LONG(x)                                                                      \
  do {                                                                                   \
    fix_not_a_decl(x);                                                                   \
  } while (0)

typedef struct fix {
  int (*callback)(int); /* a member, not a declaration */
  void *data;
} fix;
typedef void (*fix_fn)(int);

/* Described, and not collective. */
int fix_ok_single(int a);

int fix_bare(int a);

/* A comment that forgets to say. */
void fix_silent(int a);

/* Prints: a multi-line prototype whose comment forgets to say. */
void fix_multi_bare(const char *a, size_t len,
                    int flags);

/* Collective on comm: a multi-line prototype, said. */
void fix_multi_ok(const char *a, size_t len,
                  int flags);

static inline int fix_inline_bare(int x) {
  return x + 1;
}

/* Not collective: a static inline with a body. */
static inline int fix_inline_ok(int x) {
  if (x) { return 2; }
  return x;
}

/* A group of adjacent declarations. Not collective. */
int fix_group_a(void);
int fix_group_b(void);

int fix_after_blank(void);

void fix_trailing(int a); /* not collective */
void fix_trailing_silent(int a); /* y = a + b */

/* ---- a banner ---- */
/* Collective on the TP grid: adjacent comments make one block. */
void fix_banner_ok(int a)
    __attribute__((nonnull));
} fix_struct_end_not_a_decl;
int fix_after_struct(void);
#endif
H
want="$tmp/fixture.h:20 fix_bare
$tmp/fixture.h:23 fix_silent
$tmp/fixture.h:26 fix_multi_bare
$tmp/fixture.h:33 fix_inline_bare
$tmp/fixture.h:47 fix_after_blank
$tmp/fixture.h:50 fix_trailing_silent
$tmp/fixture.h:57 fix_after_struct"
got=$($PY $check "$tmp/fixture.h")
rc=$?
if [ "$got" = "$want" ] && [ $rc -ne 0 ]; then
  ok "the checker names exactly the 7 unannotated declarations of a made-up header, exit $rc"
else
  bad "the checker on a made-up header (exit $rc): got"; echo "$got"; echo "  wanted"; echo "$want"
fi
n=$($PY $check --list "$tmp/fixture.h" | wc -l)
[ "$n" -eq 14 ] && ok "it finds the 14 declarations (no macro, typedef or member)" ||
  bad "it finds $n declarations in the made-up header, not 14"
sed -i 's|^int fix_bare(int a);|int fix_bare(int a); /* Not collective. */|' "$tmp/fixture.h"
$PY $check "$tmp/fixture.h" | grep -q fix_bare && bad "annotating fix_bare did not clear it" ||
  ok "annotating a declaration clears it"

n=$($PY $check --list include/*.h | wc -l)
[ "$n" -ge 150 ] && ok "$n public declarations in include/*.h" ||
  bad "only $n declarations found in include/*.h (the parser lost some)"
if offenders=$($PY $check include/*.h); then
  ok "every declaration in include/*.h says whether it is collective"
else
  bad "$(echo "$offenders" | wc -l) declarations in include/*.h say neither 'collective' nor 'not collective':"
  echo "$offenders" | sed 's/^/    /'
fi
finish
