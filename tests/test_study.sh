#!/usr/bin/env bash
# test_study.sh: `make study` and `make report` end to end, on tiny job files (2 ranks).
# scripts/study.sh runs with STUDY_JOBS = four tiny jobs (two translation runs, a masked-LM
# and a classifier starting from it) and STUDY_OUT = a temporary runs folder:
#  - the gradient norms of scripts/gradnorm_study.sh land in STUDY_OUT/gradnorm, one line
#    per layer (6+6 at the layer level, L+L for each depth, 6 for each encoder-only model);
#  - every run ends with an "end" line and its test split is evaluated (test.json with
#    BLEU or accuracy); the classifier loaded the masked-LM's encoder (init_from);
#  - a second `study.sh` trains nothing ("finished earlier" for each run);
#  - scripts/report.sh writes report.md with a row per run in the translation and
#    classification tables and the gradient-norm sections, and every PNG it announces.
set -u
source "$(dirname "$0")/lib.sh"

$PY tests/make_tiny_dataset.py "$tmp/tiny.h5" --vocab 40 --train 300 --valid 12 --test 12 \
  --max-len 12 --seed 2 >/dev/null &&
  $PY tests/make_tiny_dataset.py "$tmp/pairs.h5" --pairs --vocab 40 --train 300 --valid 40 \
    --test 40 --max-len 8 --seed 3 >/dev/null ||
  { echo "cannot build the tiny datasets"; echo "0 passed, 1 failed"; exit 1; }
jobs=$tmp/jobs
out=$tmp/runs
mkdir -p "$jobs"
common=("enc_layers = 2" "d_model = 32" "ffn_dim = 64" "heads = 4" "dropout = 0.1" "lr = 2e-3"
  "log_interval = 5" "eval_interval = 10" "max_steps = 30" "keep_last = 1" "resume = auto")
mt=("data = $tmp/tiny.h5" "dec_layers = 2" "max_tokens = 256" "eval_bleu = 1"
  "eval_max_sentences = 12" "beam = 1" "lr_scheduler = inverse_sqrt")
printf '%s\n' "${common[@]}" "${mt[@]}" "norm = post" "warmup_steps = 10" > "$jobs/mt-post-wu.conf"
printf '%s\n' "${common[@]}" "${mt[@]}" "norm = pre" "warmup_steps = 0" "decay_start = 10" \
  > "$jobs/mt-pre-nowu.conf"
enc=("data = $tmp/pairs.h5" "max_tokens = 400" "eval_bleu = 0" "lr_scheduler = constant")
printf '%s\n' "${common[@]}" "${enc[@]}" "arch = encoder_mlm" "norm = pre" > "$jobs/mlm-pre.conf"
printf '%s\n' "${common[@]}" "${enc[@]}" "arch = encoder_classifier" "norm = pre" \
  "init_from = $out/study/mlm-pre/ckpt" > "$jobs/clf-pre.conf"
names="mt-post-wu mt-pre-nowu mlm-pre clf-pre"

export STUDY_JOBS=$jobs STUDY_OUT=$out
export GN_MT_CONF=$jobs/mt-pre-nowu.conf GN_SEEDS=1 GN_BATCHES=2 GN_DEPTH_SEEDS=1
export GN_DEPTH_BATCHES=1 GN_DEPTHS="2 3" GN_TOKENS=256 TEST_BEAM=2
bindir=$(dirname "$BIN")
echo "scripts/study.sh on the tiny jobs"
if BIN=$bindir timeout 600 scripts/study.sh >"$tmp/study.log" 2>&1; then ok "study.sh exits 0"
else bad "study.sh failed"; tail -15 "$tmp/study.log"; fi

# lines FILE: JSON gradnorm lines in FILE (0 if missing)
lines() { [ -f "$1" ] && grep -c '"type":"gradnorm"' "$1" || echo 0; }
g=$out/gradnorm
got="$(lines "$g/layers-post.jsonl") $(lines "$g/layers-pre.jsonl") $(lines "$g/depth-post.jsonl")"
got+=" $(lines "$g/depth-pre.jsonl") $(lines "$g/encoder-only-mlm.jsonl") $(lines "$g/encoder-only-clf.jsonl")"
# layers: 2+2 = 4 lines a norm; depth 2 and 3: 4 + 6 = 10; encoder-only: 2 layers x 2 norms
if [ "$got" = "4 4 10 10 4 4" ]; then ok "gradient norms: every file with one line per layer ($got)"
else bad "gradient-norm line counts: $got (want 4 4 10 10 4 4)"; fi

for n in $names; do
  d=$out/study/$n
  last=$(tail -n 1 "$d/metrics.jsonl" 2>/dev/null | $PY -c 'import json,sys; print(json.load(sys.stdin)["type"])' 2>/dev/null)
  metric=bleu
  case $n in mlm-* | clf-*) metric=accuracy ;; esac
  if [ "$last" = end ] && $PY -c 'import json,sys; o=json.load(open(sys.argv[1])); sys.exit(0 if o["split"] == "test" and sys.argv[2] in o else 1)' \
     "$d/test.json" "$metric" 2>/dev/null; then
    ok "$n: ends with an end line; test.json has the test $metric"
  else bad "$n: last line '$last', test.json: $(cat "$d/test.json" 2>/dev/null)"; fi
done
if grep -q "init_from" "$out/study/clf-pre.log" && grep -iq "loaded" "$out/study/clf-pre.log"; then
  ok "clf-pre started from the masked-LM encoder: $(grep -i "init_from" "$out/study/clf-pre.log" | head -n 1)"
else bad "clf-pre did not report loading the masked-LM encoder"; fi

echo "a second study.sh trains nothing"
sums=$(md5sum "$out"/study/*/metrics.jsonl)
if BIN=$bindir STUDY_GRADNORM=0 timeout 300 scripts/study.sh >"$tmp/again.log" 2>&1 &&
   [ "$(grep -c "finished earlier" "$tmp/again.log")" = 4 ] &&
   [ "$(md5sum "$out"/study/*/metrics.jsonl)" = "$sums" ]; then
  ok "each of the 4 runs 'finished earlier'; no metrics changed"
else bad "the second study.sh ran something"; tail -5 "$tmp/again.log"; fi

echo "scripts/report.sh"
if scripts/report.sh "$out" >"$tmp/report.log" 2>&1; then ok "report.sh exits 0"
else bad "report.sh failed"; tail -5 "$tmp/report.log"; fi
r=$out/report.md
missing=""
for n in $names; do grep -q "^| $n |" "$r" 2>/dev/null || missing+=" $n"; done
for s in "## Translation runs" "## Classification runs" "## Gradient norm of each layer" \
  "against depth" "Encoder-only models"; do
  grep -q "$s" "$r" 2>/dev/null || missing+=" '$s'"
done
if [ -z "$missing" ]; then ok "report.md: a row per run and the gradient-norm sections"
else bad "report.md lacks:$missing"; fi
pngs=$(sed -n 's/^wrote \(.*\.png\)$/\1/p' "$tmp/report.log")
bad_png=""
for p in $pngs; do [ -s "$p" ] && [ "$(head -c 4 "$p" | tail -c 3)" = PNG ] || bad_png+=" $p"; done
for want in bleu_vs_wall bleu_vs_steps bleu_lr gradnorm_layers gradnorm_depth gradnorm_encoder_only; do
  [ -s "$out/$want.png" ] || bad_png+=" $want.png(missing)"
done
if [ -n "$pngs" ] && [ -z "$bad_png" ]; then ok "$(echo "$pngs" | wc -l) PNG plots written, all real PNG files"
else bad "plots:$bad_png"; fi

finish
