#!/usr/bin/env bash
# Test of data_prep/: the OSIS stripper's unit checks, the Bible alignment and chapter
# split on three small books (Ruth, Jonah, Micah: Jonah 2 is a dropped chapter, Ruth 2
# goes to test and Micah 1 to valid by the split rule), packing that corpus with a
# 200-piece vocabulary, and a check of the HDF5 file against the schema with h5py:
# attributes, offsets, id ranges, texts and keys equal to the input lines, and the
# stored SentencePiece model decoding the stored ids back to the text. Also: empty
# pairs are dropped, the model is deterministic, and missing files or mismatched line
# counts are refused with exit code 1; the KJV/WEB pair task (paraphrase.py) on the
# same books. Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
py=/usr/bin/python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0; failed=0
ok()   { passed=$((passed + 1)); echo "  ok    $1"; }
bad()  { failed=$((failed + 1)); echo "  FAIL  $1"; }
check() { local name=$1; shift; if "$@" >"$tmp/log" 2>&1; then ok "$name"; else bad "$name"; sed 's/^/        /' "$tmp/log" | tail -20; fi; }

# 1. stripper unit checks
check "stripper selftest" "$py" data_prep/bible.py --selftest

# 2. alignment and split on three books
check "bible.py --books Ruth,Jonah,Micah --split" \
  "$py" data_prep/bible.py "$tmp/bible" --split --books "Ruth,Jonah,Micah"
c="$tmp/bible"
check "bible.tsv: 4 fields a line, at least 150 verses" \
  awk -F'\t' 'NF != 4 { exit 1 } END { exit NR < 150 }' "$c/bible.tsv"
check "Jonah 2 dropped (misaligned chapter)" bash -c "! grep -q '^Jonah 2:' '$c/bible.tsv'"
check "Ruth 2 in test, Micah 1 in valid, Ruth 1 in train" bash -c \
  "grep -qx 'Ruth 2:1' '$c/test.keys' && grep -qx 'Micah 1:1' '$c/valid.keys' && grep -qx 'Ruth 1:1' '$c/train.keys'"
check "every chapter in exactly one split" bash -c \
  "for s in train valid test; do sed 's/:.*//' '$c/'\$s.keys | sort -u; done | sort | uniq -d | grep -q . && exit 1 || exit 0"
check "split files line-aligned with bible.tsv" bash -c \
  "[ \$(cat '$c'/{train,valid,test}.es | wc -l) = \$(wc -l < '$c/bible.tsv') ] && \
   for s in train valid test; do [ \$(wc -l < '$c/'\$s.es) = \$(wc -l < '$c/'\$s.en) ] || exit 1; \
   [ \$(wc -l < '$c/'\$s.es) -gt 0 ] || exit 1; done"

# 3. pack: one split gets a pair whose source is empty (must be dropped)
d="$tmp/corpus"; mkdir -p "$d"
for s in train valid test; do cp "$c/$s.es" "$c/$s.en" "$c/$s.keys" "$d/"; done
{ echo ""; cat "$c/valid.es"; } > "$d/valid.es"
{ echo "dropped line"; cat "$c/valid.en"; } > "$d/valid.en"
{ echo "Empty 0:0"; cat "$c/valid.keys"; } > "$d/valid.keys"
check "pack.py --vocab-size 200" bash -c \
  "'$py' data_prep/pack.py '$d' --src es --tgt en --vocab-size 200 --out '$tmp/t.h5' > '$tmp/pack.out' && cat '$tmp/pack.out' && grep -q 'valid .*dropped 1 empty' '$tmp/pack.out'"

# 4. schema and round trip
cat > "$tmp/check.py" <<'EOF'
import subprocess, sys, h5py, numpy as np
h5, corpus, ref, tmp = sys.argv[1:5]
passed = failed = 0
def expect(cond, what):
    global passed, failed
    if cond: passed += 1
    else: failed += 1; print("  FAIL  " + what)
def lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")[:-1]
f = h5py.File(h5, "r")
a = f.attrs
for name, want in (("format_version", 1), ("pad_id", 0), ("unk_id", 1), ("bos_id", 2), ("eos_id", 3)):
    expect(name in a and a[name] == want and a[name].dtype == np.int32, f"attr {name} == {want} int32")
expect(a.get("src_lang") == "es" and a.get("tgt_lang") == "en", "src_lang/tgt_lang")
V = int(a["vocab_size"])
expect(a["vocab_size"].dtype == np.int32 and 100 <= V <= 200, f"vocab_size {V} int32 in [100,200]")
pieces = [p.decode() for p in f["vocab/pieces"][:]]
expect(len(pieces) == V, "len(pieces) == vocab_size")
expect(pieces[:4] == ["<pad>", "<unk>", "<s>", "</s>"], f"special pieces {pieces[:4]}")
expect(h5py.check_string_dtype(f["vocab/pieces"].dtype).encoding == "utf-8", "pieces are UTF-8 strings")
model = f["vocab/spm_model"]
expect(model.dtype == np.uint8 and model.ndim == 1 and model.shape[0] > 1000, "spm_model uint8 bytes")
mpath = f"{tmp}/stored.model"
with open(mpath, "wb") as g:
    g.write(model[:].tobytes())
train_chars = set("".join(lines(f"{corpus}/train.es") + lines(f"{corpus}/train.en")))
for split in ("train", "valid", "test"):
    keys_in = lines(f"{corpus}/{split}.keys")
    keep = None
    for side, lang in (("src", "es"), ("tgt", "en")):
        text_in = lines(f"{corpus}/{split}.{lang}")
        if keep is None:
            other = lines(f"{corpus}/{split}.{'en' if lang == 'es' else 'es'}")
            keep = [bool(x.strip()) and bool(y.strip()) for x, y in zip(text_in, other)]
        want = [t for t, k in zip(text_in, keep) if k]
        g = f[f"{split}/{side}"]
        tok, off = g["tokens"][:], g["offsets"][:]
        text = [t.decode() for t in g["text"][:]]
        w = f"{split}/{side}"
        expect(tok.dtype == np.int32 and tok.ndim == 1, f"{w}/tokens int32 1-D")
        expect(off.dtype == np.int64 and len(off) == len(want) + 1, f"{w}/offsets int64 n+1 ({len(off)} vs {len(want) + 1})")
        expect(off[0] == 0 and off[-1] == len(tok), f"{w}/offsets[0]==0, last==len(tokens)")
        expect(bool(np.all(np.diff(off) > 0)), f"{w}/offsets strictly increasing (no empty sentence)")
        expect(len(tok) > 0 and tok.min() >= 0 and tok.max() < V, f"{w}/ids in [0,V)")
        expect(not np.isin(tok, [0, 2, 3]).any(), f"{w}: no pad/bos/eos inside")
        expect(text == want, f"{w}/text equals the input lines")
        ids = "\n".join(" ".join(map(str, tok[off[i]:off[i + 1]])) for i in range(len(off) - 1)) + "\n"
        dec = subprocess.run(["spm_decode", f"--model={mpath}", "--input_format=id"],
                             input=ids.encode(), capture_output=True, check=True).stdout.decode()
        dec = dec.split("\n")[:-1]
        expect(len(dec) == len(want), f"{w}: spm_decode gives one line per sentence")
        # exact round trip, except where a character never seen in train became <unk>
        has_unk = [bool((tok[off[i]:off[i + 1]] == 1).any()) for i in range(len(off) - 1)]
        nbad = sum(1 for x, y, u in zip(dec, want, has_unk) if not u and x != y)
        expect(nbad == 0, f"{w}: spm_decode(stored ids, stored model) == text ({nbad} differ)")
        unexplained = sum(1 for y, u in zip(want, has_unk) if u and set(y) <= train_chars)
        expect(unexplained == 0, f"{w}: <unk> only for characters unseen in train ({unexplained})")
        if split == "train":
            expect(not any(has_unk), f"{w}: no <unk> in train (character_coverage=1.0)")
    keys = [k.decode() for k in f[f"{split}/keys"][:]]
    expect(keys == [k for k, kk in zip(keys_in, keep) if kk], f"{split}/keys equal the input keys")
print(f"PY {passed} {failed}")
EOF
if out=$("$py" "$tmp/check.py" "$tmp/t.h5" "$d" "$c" "$tmp" 2>&1); then :; fi
echo "$out" | grep -v '^PY ' | sed 's/^/  /'
res=$(echo "$out" | sed -n 's/^PY //p')
if [ -n "$res" ]; then
  set -- $res; passed=$((passed + $1)); failed=$((failed + $2)); echo "  schema checks: $1 passed, $2 failed"
else
  bad "schema check script crashed"; echo "$out" | tail -20
fi

# 5. determinism: packing again gives the same model and the same file
check "pack is deterministic (identical HDF5 bytes)" bash -c \
  "'$py' data_prep/pack.py '$d' --src es --tgt en --vocab-size 200 --out '$tmp/t2.h5' >/dev/null && cmp '$tmp/t.h5' '$tmp/t2.h5'"

# 6. refusals
cp -r "$d" "$tmp/short"; sed -i '$d' "$tmp/short/valid.en"
"$py" data_prep/pack.py "$tmp/short" --src es --tgt en --vocab-size 200 --out "$tmp/x.h5" >"$tmp/log" 2>&1
rc=$?
if [ $rc = 1 ] && grep -q 'line' "$tmp/log" && [ ! -e "$tmp/x.h5" ]; then ok "mismatched line counts refused (exit 1)"; else bad "mismatched line counts refused (exit $rc)"; cat "$tmp/log"; fi
cp -r "$d" "$tmp/miss"; rm "$tmp/miss/test.en"
"$py" data_prep/pack.py "$tmp/miss" --src es --tgt en --vocab-size 200 --out "$tmp/y.h5" >"$tmp/log" 2>&1
rc=$?
if [ $rc = 1 ] && grep -q 'test.en' "$tmp/log" && [ ! -e "$tmp/y.h5" ]; then ok "missing file refused (exit 1)"; else bad "missing file refused (exit $rc)"; cat "$tmp/log"; fi

# 7. pair classification (KJV vs WEB) on the same three books
cat > "$tmp/pairs.py" <<'EOF'
import sys, h5py, numpy as np
h5, c = sys.argv[1:3]
f = h5py.File(h5, "r")
a = f.attrs
assert a["task"] == "pair_classification" and a["n_classes"] == 2 and a["format_version"] == 1
assert a["pad_id"] == 0 and a["eos_id"] == 3 and 100 <= a["vocab_size"] <= 200
V = int(a["vocab_size"])
for sp in ("train", "valid", "test"):
    keys_in = open(f"{c}/{sp}.keys", encoding="utf-8").read().split("\n")[:-1]
    kjv = dict(zip(keys_in, open(f"{c}/{sp}.kjv", encoding="utf-8").read().split("\n")))
    web = dict(zip(keys_in, open(f"{c}/{sp}.en", encoding="utf-8").read().split("\n")))
    lab = f[f"{sp}/label"][:]
    keys = [k.decode().split("|") for k in f[f"{sp}/keys"][:]]
    n = len(lab)
    assert lab.dtype == np.int32 and n == 2 * len(keys_in), (sp, n, len(keys_in))
    assert lab.sum() * 2 == n, "labels not balanced"
    for side in ("a", "b"):
        off, tok = f[f"{sp}/{side}/offsets"][:], f[f"{sp}/{side}/tokens"][:]
        assert off.dtype == np.int64 and len(off) == n + 1 and off[0] == 0 and off[-1] == len(tok)
        assert np.all(np.diff(off) > 0) and tok.min() >= 0 and tok.max() < V
        assert not np.isin(tok, [0, 2, 3]).any()
    ta = [t.decode() for t in f[f"{sp}/a/text"][:]]
    tb = [t.decode() for t in f[f"{sp}/b/text"][:]]
    for (ka, kb), l, x, y in zip(keys, lab, ta, tb):
        assert (ka == kb) == (l == 1), (ka, kb, l)
        assert x == kjv[ka] and y == web[kb]
        ca, cb = ka.rsplit(":", 1)[0], kb.rsplit(":", 1)[0]
        assert ca == cb and abs(int(ka.rsplit(":")[1]) - int(kb.rsplit(":")[1])) <= 2
print("pairs ok")
EOF
check "paraphrase.py: balanced KJV/WEB pairs, label 1 iff same key, neighbours in chapter" bash -c \
  "'$py' data_prep/paraphrase.py '$c' --vocab-size 200 --out '$tmp/p.h5' && '$py' '$tmp/pairs.py' '$tmp/p.h5' '$c'"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
