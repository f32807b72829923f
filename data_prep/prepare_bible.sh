#!/usr/bin/env bash
# Build the default mpiformer data set: the verse-aligned Bible, Spanish (Reina-Valera
# 1909) -> English (World English Bible), packed as OUTDIR/es-en.h5.
#   1. data_prep/bible.py OUTDIR --split: strip and align the SWORD modules, write
#      OUTDIR/bible.tsv and OUTDIR/{train,valid,test}.{es,en,kjv,keys} (chapter split);
#   2. data_prep/pack.py: joint SentencePiece model (VOCAB pieces) + HDF5.
# Idempotent: a step runs only when its output is missing or older than its inputs
# (the scripts, the SWORD modules, the previous step's files, the VOCAB argument).
# Usage: data_prep/prepare_bible.sh [OUTDIR] [VOCAB]     (defaults: data/bible 8000)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-data/bible}
vocab=${2:-8000}
py=/usr/bin/python3
[[ "$vocab" =~ ^[0-9]+$ ]] || { echo "prepare_bible.sh: VOCAB must be a number, got '$vocab'" >&2; exit 1; }
mkdir -p "$out"

# up_to_date OUTPUT INPUT...: OUTPUT exists and is newer than every INPUT
up_to_date() {
  local target=$1; shift
  [ -e "$target" ] || return 1
  local f
  for f in "$@"; do
    [ "$f" -nt "$target" ] && return 1
  done
  return 0
}

mods=()
for m in spaRV1909eb engWEB2015eb engKJV2006eb; do
  conf=/usr/share/sword/mods.d/$m.conf
  [ -e "$conf" ] || { echo "prepare_bible.sh: SWORD module $m not installed ($conf missing)" >&2; exit 1; }
  mods+=("$conf" /usr/share/sword/modules/texts/ztext/$m/*)
done

t0=$SECONDS
split_files=()
for s in train valid test; do for e in es en kjv keys; do split_files+=("$out/$s.$e"); done; done
fresh=1
for f in "$out/bible.tsv" "${split_files[@]}"; do
  up_to_date "$f" "$here/bible.py" "${mods[@]}" || fresh=0
done
if [ $fresh = 1 ]; then
  echo "prepare_bible: $out/bible.tsv and split files up to date"
else
  "$py" "$here/bible.py" "$out" --split
fi
t1=$SECONDS

stamp="$out/es-en.h5.args"
args="vocab=$vocab"
if [ -e "$stamp" ] && [ "$(cat "$stamp")" = "$args" ] && \
   up_to_date "$out/es-en.h5" "$here/pack.py" "$stamp" "${split_files[@]}"; then
  echo "prepare_bible: $out/es-en.h5 up to date ($args)"
else
  [ -e "$stamp" ] && [ "$(cat "$stamp")" = "$args" ] || echo "$args" > "$stamp"
  "$py" "$here/pack.py" "$out" --src es --tgt en --vocab-size "$vocab" \
    --out "$out/es-en.h5" --keep-model "$out/spm"
fi
echo "prepare_bible: done in $((SECONDS - t0)) s (align+split $((t1 - t0)) s, pack $((SECONDS - t1)) s): $out/es-en.h5"
