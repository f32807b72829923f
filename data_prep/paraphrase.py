#!/usr/bin/python3
"""Sentence-pair classification from two English Bibles (MRPC-shaped), as HDF5.

A pair is (KJV verse, WEB verse). Label 1 (paraphrase) when both are the same verse
key; label 0 (hard negative) when the WEB verse is a neighbour of the KJV verse in the
same chapter (1 or 2 verses away, chosen with a fixed seed; a neighbour whose text
equals the verse's own, e.g. the repeated offerings of Numbers 7, is never chosen).
Every verse gives one positive and one negative pair, so the labels are balanced; a
verse without a usable neighbour gives neither. Pairs are shuffled with a fixed seed.

Input: the split files of bible.py --split (OUTDIR/{train,valid,test}.{kjv,en,keys}),
built by running bible.py when missing. The split is therefore bible.py's chapter rule
(chapter i -> valid if i % 40 == 13, test if i % 40 == 33, else train), and a
negative's neighbour is always in the same chapter, hence the same split.

Output OUTDIR/kjv-web-pairs.h5 (what pack.py writes, with a/b in place of src/tgt):
  attrs  format_version=1, task="pair_classification", n_classes=2, pad_id=0,
         unk_id=1, bos_id=2, eos_id=3, vocab_size (int32; strings vlen UTF-8),
         a_name="kjv", b_name="web"
  /vocab/pieces, /vocab/spm_model     joint model trained on train KJV + WEB text
  /SPLIT/a/{tokens,offsets,text}      KJV side (int32, int64 [n+1], vlen UTF-8)
  /SPLIT/b/{tokens,offsets,text}      WEB side
  /SPLIT/label                        int32 [n], 1 = same verse, 0 = neighbour
  /SPLIT/keys                         vlen UTF-8 [n], "KJV key|WEB key"

Usage: paraphrase.py [OUTDIR] [--vocab-size 8000] [--out FILE]   (OUTDIR: data/bible)
"""

import argparse
import os
import random
import re
import shutil
import sys
import tempfile

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bible  # noqa: E402
import pack  # noqa: E402

SEED = 1234
MAX_DISTANCE = 2
_RE_KEY = re.compile(r"^(.+) (\d+):(\d+)$")


def make_pairs(keys, kjv, web, rng):
    """Pairs of one split: list of (kjv text, web text, label, key string)."""
    chapters = {}
    for i, k in enumerate(keys):
        m = _RE_KEY.match(k)
        chapters.setdefault((m.group(1), m.group(2)), []).append(i)
    pairs = []
    skipped = 0
    for idx in chapters.values():
        for pos, i in enumerate(idx):
            cands = [idx[p] for p in range(max(0, pos - MAX_DISTANCE),
                                           min(len(idx), pos + MAX_DISTANCE + 1))
                     if p != pos and web[idx[p]] != web[i] and kjv[idx[p]] != kjv[i]]
            if not cands:
                skipped += 1
                continue
            j = rng.choice(cands)
            pairs.append((kjv[i], web[i], 1, f"{keys[i]}|{keys[i]}"))
            pairs.append((kjv[i], web[j], 0, f"{keys[i]}|{keys[j]}"))
    rng.shuffle(pairs)
    return pairs, skipped


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir", nargs="?", default="data/bible")
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--out", help="output file (default OUTDIR/kjv-web-pairs.h5)")
    args = ap.parse_args()
    out = args.out or os.path.join(args.outdir, "kjv-web-pairs.h5")
    need = [os.path.join(args.outdir, f"{s}.{e}") for s in pack.SPLITS
            for e in ("kjv", "en", "keys")]
    if not all(os.path.isfile(p) for p in need):
        bible.build(args.outdir, True)

    rng = random.Random(SEED)
    data = {}
    for sp in pack.SPLITS:
        kjv, web, keys = (pack.read_lines(os.path.join(args.outdir, f"{sp}.{e}"))
                          for e in ("kjv", "en", "keys"))
        if not (len(kjv) == len(web) == len(keys)):
            pack.fail(f"{sp}.kjv, {sp}.en, {sp}.keys differ in line count")
        data[sp] = make_pairs(keys, kjv, web, rng)
        if sp == "train":
            train_text = (kjv, web)  # every train verse once per side

    tmp = tempfile.mkdtemp(prefix="paraphrase_")
    try:
        model_path, model, pieces = pack.train_spm(
            tmp, train_text[0], train_text[1], args.vocab_size, "unigram", 4000000)
        str_t = h5py.string_dtype("utf-8")
        counts = {}
        with h5py.File(out + ".tmp", "w") as f:
            f.attrs["format_version"] = np.int32(pack.FORMAT_VERSION)
            f.attrs["task"] = "pair_classification"
            f.attrs["n_classes"] = np.int32(2)
            for name, v in (("pad_id", pack.PAD_ID), ("unk_id", pack.UNK_ID),
                            ("bos_id", pack.BOS_ID), ("eos_id", pack.EOS_ID),
                            ("vocab_size", len(pieces))):
                f.attrs[name] = np.int32(v)
            f.attrs["a_name"] = "kjv"
            f.attrs["b_name"] = "web"
            f.create_dataset("vocab/pieces", data=np.array(pieces, dtype=object),
                             dtype=str_t)
            f.create_dataset("vocab/spm_model", data=np.frombuffer(model, np.uint8))
            for sp in pack.SPLITS:
                pairs, _ = data[sp]
                enc = [pack.encode(model_path, tmp, [p[s] for p in pairs]) for s in (0, 1)]
                keep = (enc[0][1] > 0) & (enc[1][1] > 0)
                if not keep.all():
                    pack.fail(f"{sp}: {int((~keep).sum())} verse(s) encode to nothing")
                ntok = []
                for side, s, (tokens, cnt) in (("a", 0, enc[0]), ("b", 1, enc[1])):
                    g = f.create_group(f"{sp}/{side}")
                    g.create_dataset("tokens", data=tokens.astype(np.int32))
                    g.create_dataset("offsets", data=np.concatenate(
                        ([0], np.cumsum(cnt))).astype(np.int64))
                    g.create_dataset("text", data=np.array([p[s] for p in pairs],
                                                           dtype=object),
                                     dtype=str_t, shape=(len(pairs),))
                    ntok.append(len(tokens))
                f.create_dataset(f"{sp}/label",
                                 data=np.array([p[2] for p in pairs], dtype=np.int32))
                f.create_dataset(f"{sp}/keys", data=np.array([p[3] for p in pairs],
                                                             dtype=object),
                                 dtype=str_t, shape=(len(pairs),))
                counts[sp] = ntok
        os.replace(out + ".tmp", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"paraphrase: {out}: KJV/WEB pair classification, vocab_size {len(pieces)}")
    for sp in pack.SPLITS:
        pairs, skipped = data[sp]
        pos = sum(p[2] for p in pairs)
        print(f"paraphrase: {sp:5s} {len(pairs):6d} pairs ({pos} positive, "
              f"{len(pairs) - pos} negative), tokens a {counts[sp][0]}, b {counts[sp][1]}, "
              f"{skipped} verse(s) without a distinct neighbour skipped")


if __name__ == "__main__":
    main()
