#!/usr/bin/env bash
# test_ckpt_faults.sh: checkpoints survive crashes and corruption.
#  (a) a 2-rank run (d_model 192, with Adam state 25 MB a checkpoint, save_interval=1) has
#      one rank killed with SIGKILL while a checkpoint is being written (ckpt_*.h5.tmp
#      present), at least 3 times and until one kill leaves a half-written .tmp behind (a
#      kill can land after the collective part, when rank 0 still finishes the file; at
#      most 8 rounds), each run resuming the last; after every kill `latest`
#      names a complete file (eval of that exact path succeeds; after the last kill eval of
#      the directory uses it without a warning), and resume=auto continues from it;
#  (b) the newest checkpoint truncated and the next one with a flipped byte: eval of each
#      path exits non-zero with "truncated or corrupt" / "checksum mismatch"; resume=auto
#      skips both with a warning each, resumes from the newest good one and finishes.
set -u
source "$(dirname "$0")/lib.sh"
mpid=""
cleanup() {
  [ -n "$mpid" ] && kill -KILL "$mpid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
out="$tmp/run"
ck="$out/ckpt"
evalrun() { timeout 120 mpirun --oversubscribe -np 1 "$BIN" eval "$tmp/big.conf" out="$out" split=valid "$@"; }
tmp_files() { compgen -G "$ck/ckpt_*.h5.tmp" >/dev/null; }

[ -x "$BIN" ] || { bad "$BIN not built"; finish; }
$PY tests/make_tiny_dataset.py "$tmp/tiny.h5" --vocab 40 --train 400 --valid 24 --test 24 --seed 3 >/dev/null ||
  { bad "cannot build the tiny dataset"; finish; }
printf '%s\n' "data = $tmp/tiny.h5" "enc_layers = 2" "dec_layers = 2" "d_model = 192" \
  "ffn_dim = 768" "heads = 4" "norm = pre" "dropout = 0.1" "lr = 1e-3" "warmup_steps = 0" \
  "lr_scheduler = constant" "max_tokens = 160" "log_interval = 1" "eval_interval = 100000" \
  "eval_bleu = 0" "beam = 1" "save_interval = 1" "keep_last = 3" "zero = 1" \
  "max_steps = 100000" > "$tmp/big.conf"

echo "(a) SIGKILL of one rank while a checkpoint is written"
mid_write=0
round=0
while [ $round -lt 8 ] && { [ $round -lt 3 ] || [ $mid_write -eq 0 ]; }; do
  round=$((round + 1))
  timeout 120 mpirun --oversubscribe -np 2 "$BIN" train "$tmp/big.conf" out="$out" \
    >"$tmp/a$round.log" 2>&1 &
  mpid=$!
  # wait for a checkpoint of this run (latest changes), then for the next write to begin
  before=$(cat "$ck/latest" 2>/dev/null)
  for _ in $(seq 600); do
    now=$(cat "$ck/latest" 2>/dev/null)
    [ -n "$now" ] && [ "$now" != "$before" ] && break
    kill -0 $mpid 2>/dev/null || break
    sleep 0.05
  done
  sleep "0.$((RANDOM % 4))"
  for _ in $(seq 2000); do tmp_files && break; sleep 0.005; done
  sleep "0.00$((RANDOM % 8))"  # a 25 MB write lasts ~50 ms
  # $mpid is `timeout`; its child is mpirun, whose children are the ranks
  ranks=($(pgrep -P "$(pgrep -P "$mpid" | head -1)" 2>/dev/null))
  if [ ${#ranks[@]} -ne 2 ]; then
    bad "round $round: expected 2 ranks, found '${ranks[*]}'"; tail -3 "$tmp/a$round.log"; break
  fi
  victim=${ranks[$((RANDOM % 2))]}
  writing=no; tmp_files && writing=yes
  kill -KILL "$victim"
  wait "$mpid"
  rc=$?
  mpid=""
  left=$(cd "$ck" && ls ckpt_*.h5.tmp 2>/dev/null | tr '\n' ' ')
  [ -n "$left" ] && mid_write=$((mid_write + 1))
  latest=$(cat "$ck/latest" 2>/dev/null)
  echo "    round $round: killed rank pid $victim (tmp present: $writing), mpirun exit $rc," \
    "latest = $latest, left behind: ${left:-nothing}"
  if [ "$round" -gt 1 ] && ! grep -q "resumed from" "$tmp/a$round.log"; then
    bad "round $round did not resume after the previous kill"
  fi
  if [ $rc -ne 0 ] && [ -n "$latest" ] && [ -f "$ck/$latest" ]; then ok "round $round: latest names an existing file"
  else bad "round $round: exit $rc, latest '$latest'"; continue; fi
  if evalrun ckpt="$ck/$latest" >"$tmp/e$round.out" 2>"$tmp/e$round.err" && grep -q '"loss"' "$tmp/e$round.out"; then
    ok "round $round: eval of $latest (that file, no fallback) succeeds"
  else bad "round $round: eval of $latest failed: $(head -3 "$tmp/e$round.err")"; fi
  [ $round -ge 3 ] && [ $mid_write -ge 1 ] || [ $round -eq 8 ] || continue
  if evalrun ckpt="$ck" >/dev/null 2>"$tmp/d$round.err" && ! grep -q "warning" "$tmp/d$round.err"; then
    ok "round $round: eval of the directory resolves latest without a warning"
  else bad "round $round: eval of the directory: $(head -3 "$tmp/d$round.err")"; fi
done
if [ $mid_write -ge 1 ]; then ok "$mid_write of $round kills left a half-written .tmp (killed mid-write)"
else bad "no kill hit a checkpoint write: the test did not test anything"; fi
# resume=auto continues after the crashes
step=$($PY -c 'import h5py, sys; print(int(h5py.File(sys.argv[1], "r").attrs["step"]))' "$ck/$(cat "$ck/latest")")
timeout 120 mpirun --oversubscribe -np 2 "$BIN" train "$tmp/big.conf" out="$out" max_steps=$((step + 2)) \
  >"$tmp/resume_a.log" 2>&1
rc=$?
if [ $rc -eq 0 ] && grep -q "resumed from $ck/$(printf 'ckpt_%08d.h5' "$step") at step $step" "$tmp/resume_a.log" &&
  [ "$(cat "$ck/latest")" = "$(printf 'ckpt_%08d.h5' $((step + 2)))" ]; then
  ok "resume=auto continued from step $step to $((step + 2))"
else bad "resume after the crashes (exit $rc): $(grep -i "resumed\|error" "$tmp/resume_a.log" | head -3)"; fi

echo "(b) truncated and corrupted checkpoints"
newest=$(printf 'ckpt_%08d.h5' $((step + 2)))
second=$(printf 'ckpt_%08d.h5' $((step + 1)))
good=$(printf 'ckpt_%08d.h5' "$step")
if [ -f "$ck/$newest" ] && [ -f "$ck/$second" ] && [ -f "$ck/$good" ]; then
  ok "three checkpoints: $good $second $newest"
else bad "expected $good $second $newest in $ck: $(ls "$ck")"; finish; fi
size=$(stat -c %s "$ck/$newest")
truncate -s $((size / 2)) "$ck/$newest"
# flip one byte inside the raw data of a weight matrix (the file stays valid HDF5)
$PY -c '
import h5py, sys
p = sys.argv[1]
with h5py.File(p, "r") as f:
    off = f["model/encoder.layers.0.fc1.weight"].id.get_offset()
with open(p, "r+b") as f:
    f.seek(off + 1001); b = f.read(1); f.seek(off + 1001); f.write(bytes([b[0] ^ 0x10]))' "$ck/$second"
expect_eval_fail() { # file, message
  local rc
  evalrun ckpt="$ck/$1" >"$tmp/bad.out" 2>&1
  rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -qF "$2" "$tmp/bad.out"; then
    ok "eval of $1: exit $rc, '$(grep -F "$2" "$tmp/bad.out" | head -1 | cut -c1-150)'"
  else bad "eval of $1: exit $rc, no '$2': $(head -3 "$tmp/bad.out")"; fi
}
expect_eval_fail "$newest" "truncated or corrupt"
expect_eval_fail "$second" "checksum mismatch"
timeout 120 mpirun --oversubscribe -np 2 "$BIN" train "$tmp/big.conf" out="$out" max_steps=$((step + 4)) \
  >"$tmp/resume_b.log" 2>&1
rc=$?
warn=$(grep -c "warning: skipping" "$tmp/resume_b.log")
grep "warning: skipping" "$tmp/resume_b.log" | cut -c1-160 | sed 's/^/    /'
if [ $rc -eq 0 ] && grep -q "resumed from $ck/$good at step $step" "$tmp/resume_b.log" &&
  [ "$warn" -eq 2 ] && grep "warning: skipping" "$tmp/resume_b.log" | grep -q "$newest" &&
  grep "warning: skipping" "$tmp/resume_b.log" | grep -q "$second"; then
  ok "resume=auto skipped both with a warning each and resumed from $good"
else bad "fallback resume (exit $rc, $warn warnings): $(grep -i "resumed\|error" "$tmp/resume_b.log" | head -3)"; fi
if [ "$(cat "$ck/latest")" = "$(printf 'ckpt_%08d.h5' $((step + 4)))" ] &&
  evalrun ckpt="$ck" >/dev/null 2>&1; then ok "the run went on to step $((step + 4)); its checkpoint evaluates"
else bad "after the fallback: latest = $(cat "$ck/latest")"; fi
finish
