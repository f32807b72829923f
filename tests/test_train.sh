#!/usr/bin/env bash
# test_train.sh: end-to-end training runs of bin/mpiformer on a tiny random dataset.
#  - the loss of a short real training falls;
#  - 2 data-parallel ranks give the same per-step losses as 1 rank accumulating the same
#    global batch (update_freq=2), dropout on (its masks do not depend on the layout);
#  - zero=1 (sharded Adam) gives the same losses as zero=0;
#  - a run stopped at step 6 and resumed gives the same losses, bit for bit, as one that
#    never stopped; and a DP=2 zero=1 checkpoint resumes with DP=1;
#  - eval prints one JSON object with loss, ppl and BLEU;
#  - bad input (unknown key, bad value, missing dataset, impossible layout, missing
#    checkpoint) exits non-zero with a message naming the problem, without hanging;
#  - an empty valid or train split, an empty config file and a directory given as the
#    config are errors (no loss or ppl of nothing is written); a hand-written config
#    (CRLF, BOM, no-break space, typographic quotes, Unicode minus) trains exactly as the
#    plain one, with its warnings printed once (a key set twice: the later line wins,
#    with a warning), and a key with a lookalike letter is refused with it shown.
set -u
source "$(dirname "$0")/lib.sh"

$PY tests/make_tiny_dataset.py "$tmp/tiny.h5" --vocab 40 --train 400 --valid 24 --test 24 --seed 3 >/dev/null ||
  { echo "cannot build the tiny dataset"; echo "0 passed, 1 failed"; exit 1; }
printf '%s\n' "data = $tmp/tiny.h5" "enc_layers = 2" "dec_layers = 2" "d_model = 32" \
  "ffn_dim = 64" "heads = 4" "norm = pre" "dropout = 0.1" "attn_dropout = 0.1" \
  "act_dropout = 0.1" "lr = 3e-3" "warmup_steps = 0" "lr_scheduler = constant" \
  "max_tokens = 160" "log_interval = 1" "eval_interval = 1000" "eval_bleu = 0" "beam = 2" \
  > "$tmp/tiny.conf"

echo "loss falls in a short training (1 rank, 200 steps, dropout off)"
run 1 train "$tmp/tiny.conf" out="$tmp/fall" max_steps=200 dropout=0 attn_dropout=0 act_dropout=0 \
  >"$tmp/fall.log" 2>&1
losses "$tmp/fall/metrics.jsonl" > "$tmp/fall.loss"
first=$(head -5 "$tmp/fall.loss" | awk '{s+=$2} END {print s/NR}')
last=$(tail -5 "$tmp/fall.loss" | awk '{s+=$2} END {print s/NR}')
echo "    mean loss of the first 5 steps $first, of the last 5 $last"
if awk -v a="$first" -v b="$last" 'BEGIN {exit !(b < 0.75 * a)}'; then ok "loss fell by more than 25%"
else bad "loss did not fall"; tail -5 "$tmp/fall.log"; fi

echo "2 ranks = 1 rank with the same global batch"
run 1 train "$tmp/tiny.conf" out="$tmp/dp1" max_steps=12 update_freq=2 >"$tmp/dp1.log" 2>&1
run 2 train "$tmp/tiny.conf" out="$tmp/dp2" max_steps=12 update_freq=1 >"$tmp/dp2.log" 2>&1
losses "$tmp/dp1/metrics.jsonl" > "$tmp/dp1.loss"
losses "$tmp/dp2/metrics.jsonl" > "$tmp/dp2.loss"
if same "$tmp/dp2.loss" "$tmp/dp1.loss" 2e-5; then ok "dp=2 equals dp=1 x update_freq=2"
else bad "dp=2 differs from dp=1"; fi

echo "zero=1 = zero=0 on 2 ranks"
run 2 train "$tmp/tiny.conf" out="$tmp/z1" max_steps=12 zero=1 >"$tmp/z1.log" 2>&1
grep "adam state" "$tmp/z1.log" | sed 's/^/    /'
losses "$tmp/z1/metrics.jsonl" > "$tmp/z1.loss"
if same "$tmp/z1.loss" "$tmp/dp2.loss" 2e-5; then ok "zero=1 equals zero=0"; else bad "zero=1 differs"; fi

echo "exact restart: stopped at step 6 and resumed = uninterrupted (same layout, bit for bit)"
run 1 train "$tmp/tiny.conf" out="$tmp/full" max_steps=12 >"$tmp/full.log" 2>&1
run 1 train "$tmp/tiny.conf" out="$tmp/half" max_steps=6 >"$tmp/half1.log" 2>&1
run 1 train "$tmp/tiny.conf" out="$tmp/half" max_steps=12 >"$tmp/half2.log" 2>&1
if grep -q "resumed from" "$tmp/half2.log"; then ok "second run resumed"; else bad "second run did not resume"; fi
losses "$tmp/full/metrics.jsonl" > "$tmp/full.loss"
losses "$tmp/half/metrics.jsonl" > "$tmp/half.loss"
if same "$tmp/half.loss" "$tmp/full.loss" 0; then ok "resumed losses identical"; else bad "resumed losses differ"; fi

echo "exact restart on 2 ranks with zero=0 (every replica must get the Adam moments back)"
run 2 train "$tmp/tiny.conf" out="$tmp/half2" max_steps=6 >"$tmp/h2a.log" 2>&1
run 2 train "$tmp/tiny.conf" out="$tmp/half2" max_steps=12 >"$tmp/h2b.log" 2>&1
losses "$tmp/half2/metrics.jsonl" > "$tmp/half2.loss"
if same "$tmp/half2.loss" "$tmp/dp2.loss" 0; then ok "dp=2 resumed losses identical"; else bad "dp=2 resumed losses differ"; fi
run 2 train "$tmp/tiny.conf" out="$tmp/half2" max_steps=12 >"$tmp/h2c.log" 2>&1
if [ "$(losses "$tmp/half2/metrics.jsonl" | wc -l)" -eq 12 ] && ! grep -q "^step" "$tmp/h2c.log"; then
  ok "a run resumed at max_steps makes no step"
else bad "a run resumed at max_steps trained on"; fi

echo "restart with another layout: dp=2 zero=1 checkpoint resumed with dp=1"
run 2 train "$tmp/tiny.conf" out="$tmp/lay" max_steps=6 zero=1 >"$tmp/lay1.log" 2>&1
run 1 train "$tmp/tiny.conf" out="$tmp/lay" max_steps=12 update_freq=2 >"$tmp/lay2.log" 2>&1
losses "$tmp/lay/metrics.jsonl" > "$tmp/lay.loss"
if same "$tmp/lay.loss" "$tmp/z1.loss" 2e-5; then ok "dp=2 -> dp=1 continues the dp=2 run"
else bad "layout change diverged"; fi

echo "eval prints one JSON object"
run 1 eval "$tmp/tiny.conf" out="$tmp/full" ckpt="$tmp/full/ckpt" split=test >"$tmp/eval.out" 2>"$tmp/eval.err"
if $PY -c '
import json, sys
o = json.loads(open(sys.argv[1]).read())
assert o["split"] == "test" and o["loss"] > 0 and o["ppl"] > 1 and 0 <= o["bleu"] <= 100, o
print("    ", {k: o[k] for k in ("loss", "ppl", "bleu")})' "$tmp/eval.out"; then ok "eval JSON"
else bad "eval JSON"; cat "$tmp/eval.out" "$tmp/eval.err"; fi

echo "raw text end to end: pack text with SentencePiece, train, translate on 2 ranks, bleu"
mkdir -p "$tmp/txt"
$PY -c '
import h5py, sys
f = h5py.File(sys.argv[1], "r")
for split in ("train", "valid", "test"):
    for side, lang in (("src", "xx"), ("tgt", "yy")):
        lines = [s.decode() if isinstance(s, bytes) else s for s in f[split][side]["text"][:]]
        open(f"{sys.argv[2]}/{split}.{lang}", "w").write("\n".join(lines) + "\n")' "$tmp/tiny.h5" "$tmp/txt"
$PY data_prep/pack.py "$tmp/txt" --src xx --tgt yy --vocab-size 60 --out "$tmp/text.h5" >"$tmp/pack.log" 2>&1 ||
  bad "pack.py failed: $(tail -2 "$tmp/pack.log")"
run 1 train "$tmp/tiny.conf" data="$tmp/text.h5" out="$tmp/text" max_steps=30 >"$tmp/text.log" 2>&1 ||
  bad "training on the packed text failed: $(tail -2 "$tmp/text.log")"
run 2 translate "$tmp/tiny.conf" data="$tmp/text.h5" out="$tmp/text" ckpt="$tmp/text/ckpt" beam=2 \
  <"$tmp/txt/test.xx" >"$tmp/test.hyp" 2>"$tmp/tr.err"
rc=$?
if [ $rc -eq 0 ] && [ "$(wc -l <"$tmp/test.hyp")" -eq "$(wc -l <"$tmp/txt/test.xx")" ] &&
  grep -q "w" "$tmp/test.hyp"; then
  ok "translate wrote one line of text per input line"
else bad "translate (exit $rc): $(head -3 "$tmp/tr.err")"; fi
line=$("$BIN" bleu "$tmp/test.hyp" "$tmp/txt/test.yy")
if [[ "$line" =~ ^BLEU\ =\ [0-9]+\.[0-9]{2}\ .*hyp_len\ =\ [0-9]+\ ref_len\ =\ [0-9]+\)$ ]]; then
  ok "bleu: $line"
else bad "bleu line: $line"; fi

echo "bad input: clear message, non-zero exit, no hang"
expect_fail() { # np, expected message, args...
  local np=$1 msg=$2
  shift 2
  local out rc
  out=$(run "$np" "$@" 2>&1)
  rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -qF -- "$msg" <<<"$out"; then ok "refused: $msg"
  else bad "expected failure with '$msg' (exit $rc): $(head -3 <<<"$out")"; fi
}
expect_fail 2 "unknown key 'lerning_rate'" train "$tmp/tiny.conf" out="$tmp/bad" lerning_rate=1
expect_fail 2 "'dropout' = 2 is out of range" train "$tmp/tiny.conf" out="$tmp/bad" dropout=2
expect_fail 2 "missing.h5" train "$tmp/tiny.conf" out="$tmp/bad" data="$tmp/missing.h5"
expect_fail 2 "cannot be split" train "$tmp/tiny.conf" out="$tmp/bad" tp=3
expect_fail 2 "pp=4 exceeds the 2 layers" train "$tmp/tiny.conf" out="$tmp/bad" pp=4 enc_layers=1 dec_layers=1
expect_fail 2 "missing.h5" eval "$tmp/tiny.conf" out="$tmp/bad" ckpt="$tmp/missing.h5"
expect_fail 1 "needs ckpt=PATH" eval "$tmp/tiny.conf"

echo "no silent nonsense: an empty split or config file is an error, not a perfect score"
$PY tests/make_tiny_dataset.py "$tmp/novalid.h5" --vocab 40 --train 50 --valid 0 --test 4 \
  >/dev/null &&
  $PY tests/make_tiny_dataset.py "$tmp/notrain.h5" --vocab 40 --train 0 --valid 4 --test 4 \
    >/dev/null ||
  bad "cannot build the datasets with an empty split"
once() { # the output holds the message exactly once (rank 0 speaks for every rank)
  [ "$(grep -cF -- "$1" <<<"$2")" -eq 1 ]
}
out=$(run 2 train "$tmp/tiny.conf" data="$tmp/novalid.h5" out="$tmp/novalid" max_steps=3 \
  eval_interval=2 2>&1)
rc=$?
msg="$tmp/novalid.h5: split \"valid\" has no sentences"
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && once "$msg" "$out" &&
  ! grep -qs '"valid"' "$tmp/novalid/metrics.jsonl"; then
  ok "train with an empty valid split: one error, exit $rc, no valid line in metrics.jsonl"
else bad "empty valid split (exit $rc): $(grep -E 'valid|error' <<<"$out" | head -3)"; fi
out=$(run 2 train "$tmp/tiny.conf" data="$tmp/notrain.h5" out="$tmp/notrain" max_steps=3 2>&1)
rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 124 ] &&
  once "$tmp/notrain.h5: split \"train\" has no sentences" "$out"; then ok "train with an empty train split: one error, exit $rc (it hung before)"
else bad "empty train split (exit $rc): $(head -3 <<<"$out")"; fi
out=$(run 2 eval "$tmp/tiny.conf" data="$tmp/novalid.h5" out="$tmp/full" ckpt="$tmp/full/ckpt" \
  split=valid 2>/dev/null)
rc=$?
err=$(run 2 eval "$tmp/tiny.conf" data="$tmp/novalid.h5" out="$tmp/full" ckpt="$tmp/full/ckpt" \
  split=valid 2>&1 >/dev/null)
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && ! grep -q '"loss"\|"ppl"' <<<"$out" && once "$msg" "$err"
then ok "eval of an empty valid split: one error, exit $rc, no loss or ppl printed"
else bad "eval of an empty split (exit $rc): $out $(head -3 <<<"$err")"; fi
: >"$tmp/empty.conf"
printf '# only a comment\n\n' >"$tmp/comments.conf"
mkdir -p "$tmp/confdir"
expect_fail 2 "config file '$tmp/empty.conf' is empty" train "$tmp/empty.conf" out="$tmp/bad" \
  data="$tmp/tiny.h5"
expect_fail 2 "config file '$tmp/comments.conf' has no settings" train "$tmp/comments.conf" \
  out="$tmp/bad" data="$tmp/tiny.h5"
expect_fail 2 "config file '$tmp/confdir' is a directory" train "$tmp/confdir" out="$tmp/bad"
expect_fail 1 "config file '$tmp/empty.conf' is empty" eval "$tmp/empty.conf" ckpt="$tmp/full/ckpt"
if [ ! -e "$tmp/bad/metrics.jsonl" ]; then ok "no run started from an empty config or a directory"
else bad "a run started from an empty config or a directory"; fi

echo "hand-written config file: CRLF, BOM, no-break space, typographic quotes, Unicode minus"
{ printf '\xef\xbb\xbf'; sed 's/$/\r/' "$tmp/tiny.conf"
  printf 'lr\xc2\xa0= 3e\xe2\x88\x923  # peak\r\nout = \xe2\x80\x9c%s\xe2\x80\x9d\r\n' "$tmp/hand"
} | grep -v '^lr = ' >"$tmp/hand.conf"
lrline=$(wc -l <"$tmp/tiny.conf") # the lr line moved to the end: the same number of lines
out=$(run 2 train "$tmp/hand.conf" max_steps=12 2>&1)
rc=$?
losses "$tmp/hand/metrics.jsonl" >"$tmp/hand.loss" 2>/dev/null
if [ $rc -eq 0 ] && same "$tmp/hand.loss" "$tmp/dp2.loss" 0 &&
  once "warning: $tmp/hand.conf:$lrline: a \\u00a0 (no-break space) beside the key 'lr'" "$out" &&
  once "\\u2212 (minus sign) in the value of 'lr' is read as '-'" "$out"; then
  ok "read as meant (losses identical to the plain file's), each warning once from 2 ranks"
else bad "hand-written config (exit $rc): $(grep -E 'warning|error' <<<"$out" | head -4)"; fi
printf 'lr = 1e-3\nheads = 4\nl\xd0\xb0r = 2e-3\n' >"$tmp/cyr.conf"
expect_fail 2 "cyr.conf:3: unknown key 'l\\u0430r': \\u0430 is a Cyrillic letter like 'a'" \
  train "$tmp/cyr.conf" data="$tmp/tiny.h5" out="$tmp/bad"
printf 'lr = 1e-3\nheads = 4\r\nlr = 3e-3\n' >"$tmp/twice.conf"
cat "$tmp/tiny.conf" "$tmp/twice.conf" >"$tmp/twice2.conf" # lr on lines 11, 19 and 21
out=$(run 2 train "$tmp/twice2.conf" out="$tmp/twice" max_steps=12 2>&1)
rc=$?
losses "$tmp/twice/metrics.jsonl" >"$tmp/twice.loss" 2>/dev/null
if [ $rc -eq 0 ] && same "$tmp/twice.loss" "$tmp/dp2.loss" 0 &&
  once "twice2.conf:21: 'lr' is set again (first on line 19): the value of line 21 wins" "$out"
then
  ok "a key set twice in a file: the later line wins (same losses), one warning naming both lines"
else bad "a key set twice (exit $rc): $(grep -E 'warning|error' <<<"$out" | head -3)"; fi

finish
