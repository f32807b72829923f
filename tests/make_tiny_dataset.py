#!/usr/bin/python3
"""make_tiny_dataset.py: write a small random dataset in the schema of include/data.h.

Usage: tests/make_tiny_dataset.py OUT.h5 [--vocab 40] [--train 200] [--valid 20]
           [--test 20] [--seed 1] [--max-len 12] [--skew] [--pairs] [--runs]

Ids 0..3 are <pad>, <unk>, <s>, </s>; word ids are in [4, vocab) with pieces "▁w4",
"▁w5", ... The target is a learnable function of the source: the source reversed, each
id shifted by 3 within the word range (4 + (id - 4 + 3) mod (vocab - 4)). Sentence
lengths are uniform in [1, max-len] on each split, independently per sentence, so a
batch that mixes lengths has real padding; with --skew, 1 sentence in 8 has max-len
tokens and the others 1..3, so a batch of a whole split is mostly padding.
Deterministic for a given seed.

With --pairs it writes a sentence-pair classification file instead (the schema of
data_prep/paraphrase.py: task="pair_classification", n_classes=2, sides a/b,
/<split>/label): b is a copy of a (label 1) or, with probability 1/2, a random sentence
of the same length (label 0); so the label is learnable by comparing the two sides.
With --runs every source sentence is a run of consecutive word ids (wrapping around)
from a random start, so a masked word is predictable from its neighbours (masked-LM).

Needs numpy and h5py (on Debian: /usr/bin/python3 with python3-h5py). This is a test
fixture only: it does not use SentencePiece; /vocab/spm_model holds a few dummy bytes.
"""
import argparse
import sys

import h5py
import numpy as np

PAD, UNK, BOS, EOS = 0, 1, 2, 3
FIRST_WORD = 4
SHIFT = 3


def target_of(src, vocab):
    """The target sentence of a source sentence (list of ids): reversed and shifted."""
    n_words = vocab - FIRST_WORD
    return [FIRST_WORD + (t - FIRST_WORD + SHIFT) % n_words for t in reversed(src)]


def write_side(g, sents, pieces):
    """Write tokens, offsets and text of one side (list of id lists) under group g."""
    lens = np.array([len(s) for s in sents], dtype=np.int64)
    offsets = np.zeros(len(sents) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    tokens = np.array([t for s in sents for t in s], dtype=np.int32)
    g.create_dataset("tokens", data=tokens, dtype=np.int32)
    g.create_dataset("offsets", data=offsets, dtype=np.int64)
    text = [" ".join(pieces[t].lstrip("\u2581") for t in s) for s in sents]
    g.create_dataset("text", data=np.array(text, dtype=object),
                     dtype=h5py.string_dtype("utf-8"))


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--vocab", type=int, default=40)
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--valid", type=int, default=20)
    ap.add_argument("--test", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-len", type=int, default=12)
    ap.add_argument("--skew", action="store_true", help="few long sentences, many short ones")
    ap.add_argument("--pairs", action="store_true", help="pair classification: is b a copy of a")
    ap.add_argument("--runs", action="store_true", help="sentences of consecutive word ids")
    a = ap.parse_args(argv)
    if a.vocab < FIRST_WORD + 1:
        ap.error("--vocab must be at least %d" % (FIRST_WORD + 1))
    if a.max_len < 1:
        ap.error("--max-len must be at least 1")
    rng = np.random.default_rng(a.seed)
    pieces = ["<pad>", "<unk>", "<s>", "</s>"] + ["\u2581w%d" % i for i in range(FIRST_WORD, a.vocab)]
    with h5py.File(a.out, "w") as f:
        f.attrs.create("format_version", 1, dtype=np.int32)
        if a.pairs:
            f.attrs["task"] = "pair_classification"
            f.attrs.create("n_classes", 2, dtype=np.int32)
        else:
            f.attrs["src_lang"] = "xx"
            f.attrs["tgt_lang"] = "yy"
        for name, v in (("pad_id", PAD), ("unk_id", UNK), ("bos_id", BOS), ("eos_id", EOS),
                        ("vocab_size", a.vocab)):
            f.attrs.create(name, v, dtype=np.int32)
        f.create_dataset("vocab/pieces", data=np.array(pieces, dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("vocab/spm_model", data=np.frombuffer(b"tiny-dummy-spm", dtype=np.uint8))
        for split, n in (("train", a.train), ("valid", a.valid), ("test", a.test)):
            if a.skew:
                lens = [a.max_len if i % 8 == 0 else int(rng.integers(1, min(3, a.max_len) + 1))
                        for i in range(n)]
            else:
                lens = [int(rng.integers(1, a.max_len + 1)) for _ in range(n)]
            src = [rng.integers(FIRST_WORD, a.vocab, size=k).tolist() for k in lens]
            if a.runs:
                nw = a.vocab - FIRST_WORD
                src = [[FIRST_WORD + (s[0] - FIRST_WORD + i) % nw for i in range(len(s))]
                       for s in src]
            if a.pairs:
                labels = rng.integers(0, 2, size=n).astype(np.int32)
                tgt = [s if y else rng.integers(FIRST_WORD, a.vocab, size=len(s)).tolist()
                       for s, y in zip(src, labels)]
                write_side(f.create_group(split + "/a"), src, pieces)
                write_side(f.create_group(split + "/b"), tgt, pieces)
                f.create_dataset(split + "/label", data=labels, dtype=np.int32)
                continue
            tgt = [target_of(s, a.vocab) for s in src]
            write_side(f.create_group(split + "/src"), src, pieces)
            write_side(f.create_group(split + "/tgt"), tgt, pieces)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
