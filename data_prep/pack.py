#!/usr/bin/python3
"""Pack line-aligned parallel text into the mpiformer HDF5 dataset (format_version 1).

Input: a folder holding train.SRC, train.TGT, valid.SRC, valid.TGT, test.SRC,
test.TGT (raw UTF-8 text, one sentence a line, line i of SRC translates line i of
TGT), and optionally SPLIT.keys (one key a line, e.g. Bible verse keys). This is the
layout of data_prep/bible.py's output and the layout users bring IWSLT14 / WMT14 in.

What it does:
  1. checks that every file exists and that the two sides of a split have the same
     number of lines (else: a message and exit 1);
  2. trains ONE joint SentencePiece model (`spm_train`, unigram by default,
     --character_coverage=1.0, ids pad=0 unk=1 bos=2 eos=3) on the train split of
     both sides, interleaved line by line (src 0, tgt 0, src 1, ...), taking the first
     --input-sentence-size sentences without shuffling, so the model is a
     deterministic function of the input;
  3. encodes every split and side with `spm_encode --output_format=id`, drops (and
     counts) the pairs where either side encodes to no token;
  4. writes the HDF5 file (to OUT.tmp, renamed when complete):
       attrs  format_version, pad_id=0, unk_id=1, bos_id=2, eos_id=3, vocab_size
              (int32), src_lang, tgt_lang (variable-length UTF-8 strings)
       /vocab/pieces             vlen UTF-8 [vocab_size]   piece i is id i
       /vocab/spm_model          uint8 [n]                 the .model file's bytes
       /SPLIT/SIDE/tokens        int32 [n_tokens]          sentences back to back,
                                                           no bos/eos
       /SPLIT/SIDE/offsets       int64 [n_sentences + 1]   offsets[0] = 0
       /SPLIT/SIDE/text          vlen UTF-8 [n_sentences]  the raw sentence
       /SPLIT/keys               vlen UTF-8 [n_sentences]  only when SPLIT.keys exists
     for SPLIT in train, valid, test and SIDE in src, tgt;
  5. prints sentences and tokens per split and side.

What it does not do: clean, filter by length or deduplicate the corpus; add bos/eos
(the reader does that); text normalization beyond SentencePiece's nmt_nfkc.

Usage: pack.py INDIR --src es --tgt en [--vocab-size 8000] [--model-type unigram]
               --out FILE.h5 [--keep-model PREFIX]
Python standard library, numpy and h5py (run with /usr/bin/python3).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import h5py
import numpy as np

FORMAT_VERSION = 1
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPLITS = ("train", "valid", "test")
SIDES = ("src", "tgt")


def fail(msg):
    print(f"pack.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def read_lines(path):
    """Lines of a UTF-8 file split on '\\n' only (as spm_encode splits), a trailing
    '\\r' removed. Exits with a message on a missing or non-UTF-8 file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")
    if data.endswith(b"\n"):
        data = data[:-1]
    raw = data.split(b"\n") if data else []
    lines = []
    for i, b in enumerate(raw):
        if b.endswith(b"\r"):
            b = b[:-1]
        try:
            lines.append(b.decode("utf-8"))
        except UnicodeDecodeError:
            fail(f"{path}:{i + 1}: not valid UTF-8")
    return lines


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for s in lines:
            f.write(s)
            f.write("\n")


def run(cmd, **kw):
    try:
        return subprocess.run(cmd, check=True, **kw)
    except FileNotFoundError:
        fail(f"{cmd[0]} not found (install the sentencepiece package)")
    except subprocess.CalledProcessError as e:
        err = e.stderr.decode("utf-8", "replace")[-2000:] if e.stderr else ""
        fail(f"{' '.join(cmd[:2])} ... failed (exit {e.returncode})\n{err}")


def train_spm(tmp, train_src, train_tgt, vocab_size, model_type, sentence_size):
    """Train the joint model on interleaved train lines; return (model bytes, pieces)."""
    inp = os.path.join(tmp, "spm_input.txt")
    with open(inp, "w", encoding="utf-8", newline="\n") as f:
        for s, t in zip(train_src, train_tgt):
            f.write(s + "\n" + t + "\n")
    prefix = os.path.join(tmp, "spm")
    # relative names, run in tmp: the .model file records --input and --model_prefix,
    # and a random temp path there would make the bytes differ from run to run
    cmd = ["spm_train", "--input=spm_input.txt", "--model_prefix=spm",
           f"--vocab_size={vocab_size}", f"--model_type={model_type}",
           "--character_coverage=1.0", "--pad_id=0", "--unk_id=1", "--bos_id=2",
           "--eos_id=3", f"--input_sentence_size={sentence_size}",
           "--shuffle_input_sentence=false", "--random_seed=1",
           "--hard_vocab_limit=false", f"--num_threads={min(os.cpu_count() or 1, 16)}",
           "--minloglevel=2"]
    run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp)
    with open(prefix + ".model", "rb") as f:
        model = f.read()
    pieces = []
    with open(prefix + ".vocab", encoding="utf-8") as f:
        for line in f:
            pieces.append(line.rstrip("\n").split("\t")[0])
    return prefix + ".model", model, pieces


def encode(model_path, tmp, lines):
    """Encode lines with spm_encode; return (tokens int32 [n_tok], counts int64 [n])."""
    path = os.path.join(tmp, "enc_input.txt")
    write_lines(path, lines)
    with open(path, "rb") as f:
        out = run(["spm_encode", f"--model={model_path}", "--output_format=id"],
                  stdin=f, stdout=subprocess.PIPE, stderr=subprocess.PIPE).stdout
    n = len(lines)
    if n == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    buf = np.frombuffer(out, dtype=np.uint8)
    nl = np.flatnonzero(buf == ord("\n"))
    if len(nl) != n:
        fail(f"spm_encode gave {len(nl)} lines for {n} input lines")
    # tokens per line = blanks in the line + 1, or 0 for an empty line
    starts = np.concatenate(([0], nl[:-1] + 1))
    blank_cum = np.concatenate(([0], np.cumsum(buf == ord(" "))))
    blanks = blank_cum[nl] - blank_cum[starts]
    counts = np.where(nl > starts, blanks + 1, 0).astype(np.int64)
    text = out.decode("ascii").split()
    tokens = np.array(text, dtype=np.int64) if text else np.zeros(0, np.int64)
    if len(tokens) != counts.sum():
        fail("spm_encode output does not parse as ids")
    return tokens.astype(np.int32), counts


def main():
    ap = argparse.ArgumentParser(
        description="Pack line-aligned text into the mpiformer HDF5 dataset.")
    ap.add_argument("indir", help="folder with {train,valid,test}.{SRC,TGT}")
    ap.add_argument("--src", required=True, help="source language code (file suffix)")
    ap.add_argument("--tgt", required=True, help="target language code (file suffix)")
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--model-type", default="unigram", choices=("unigram", "bpe"))
    ap.add_argument("--input-sentence-size", type=int, default=4000000,
                    help="train the model on the first N interleaved train sentences")
    ap.add_argument("--out", required=True, help="output .h5 file")
    ap.add_argument("--keep-model", metavar="PREFIX",
                    help="also copy the model to PREFIX.model and PREFIX.vocab")
    args = ap.parse_args()
    if args.src == args.tgt:
        fail("--src and --tgt must differ (they name the files' suffixes)")
    if args.vocab_size < 8:
        fail("--vocab-size must be at least 8")

    # 1. files and line counts
    missing = [os.path.join(args.indir, f"{sp}.{lang}") for sp in SPLITS
               for lang in (args.src, args.tgt)
               if not os.path.isfile(os.path.join(args.indir, f"{sp}.{lang}"))]
    if missing:
        fail("missing input file(s): " + ", ".join(missing))
    data = {}
    for sp in SPLITS:
        src = read_lines(os.path.join(args.indir, f"{sp}.{args.src}"))
        tgt = read_lines(os.path.join(args.indir, f"{sp}.{args.tgt}"))
        if len(src) != len(tgt):
            fail(f"{sp}.{args.src} has {len(src)} lines but {sp}.{args.tgt} has "
                 f"{len(tgt)}: the two sides must be line-aligned")
        keys = None
        kpath = os.path.join(args.indir, f"{sp}.keys")
        if os.path.isfile(kpath):
            keys = read_lines(kpath)
            if len(keys) != len(src):
                fail(f"{kpath} has {len(keys)} lines but {sp}.{args.src} has {len(src)}")
        data[sp] = (src, tgt, keys)
    if not data["train"][0]:
        fail(f"train.{args.src} is empty")

    tmp = tempfile.mkdtemp(prefix="pack_")
    try:
        # 2. joint SentencePiece model
        model_path, model, pieces = train_spm(tmp, data["train"][0], data["train"][1],
                                              args.vocab_size, args.model_type,
                                              args.input_sentence_size)
        vocab_size = len(pieces)
        if vocab_size != args.vocab_size:
            print(f"pack: note: SentencePiece made {vocab_size} pieces "
                  f"(asked for {args.vocab_size}; the corpus is too small for more)")
        if args.keep_model:
            shutil.copyfile(model_path, args.keep_model + ".model")
            shutil.copyfile(model_path[:-6] + ".vocab", args.keep_model + ".vocab")

        # 3. encode, drop empty pairs
        packed = {}
        for sp in SPLITS:
            src, tgt, keys = data[sp]
            enc = [encode(model_path, tmp, lines) for lines in (src, tgt)]
            keep = (enc[0][1] > 0) & (enc[1][1] > 0)
            n_drop = int(len(keep) - keep.sum())
            sides = []
            for (tokens, counts), lines in zip(enc, (src, tgt)):
                if n_drop:
                    tokens = tokens[np.repeat(keep, counts)]
                    counts = counts[keep]
                    lines = [s for s, k in zip(lines, keep) if k]
                offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
                sides.append((tokens, offsets, lines))
            if keys is not None and n_drop:
                keys = [s for s, k in zip(keys, keep) if k]
            packed[sp] = (sides, keys, n_drop)

        # 4. write HDF5
        out_tmp = args.out + ".tmp"
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        str_t = h5py.string_dtype("utf-8")
        with h5py.File(out_tmp, "w") as f:
            f.attrs["format_version"] = np.int32(FORMAT_VERSION)
            f.attrs["src_lang"] = args.src
            f.attrs["tgt_lang"] = args.tgt
            f.attrs["pad_id"] = np.int32(PAD_ID)
            f.attrs["unk_id"] = np.int32(UNK_ID)
            f.attrs["bos_id"] = np.int32(BOS_ID)
            f.attrs["eos_id"] = np.int32(EOS_ID)
            f.attrs["vocab_size"] = np.int32(vocab_size)
            f.create_dataset("vocab/pieces", data=np.array(pieces, dtype=object),
                             dtype=str_t)
            f.create_dataset("vocab/spm_model", data=np.frombuffer(model, np.uint8))
            for sp in SPLITS:
                sides, keys, _ = packed[sp]
                for side, (tokens, offsets, lines) in zip(SIDES, sides):
                    g = f.create_group(f"{sp}/{side}")
                    g.create_dataset("tokens", data=tokens.astype(np.int32))
                    g.create_dataset("offsets", data=offsets)
                    g.create_dataset("text", data=np.array(lines, dtype=object),
                                     dtype=str_t, shape=(len(lines),))
                if keys is not None:
                    f.create_dataset(f"{sp}/keys", data=np.array(keys, dtype=object),
                                     dtype=str_t, shape=(len(keys),))
        os.replace(out_tmp, args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # 5. report
    print(f"pack: {args.out}: {args.src}->{args.tgt}, joint {args.model_type} "
          f"SentencePiece, vocab_size {vocab_size}")
    for sp in SPLITS:
        sides, keys, n_drop = packed[sp]
        n = len(sides[0][2])
        ts, tt = len(sides[0][0]), len(sides[1][0])
        print(f"pack: {sp:5s} {n:8d} pairs, tokens {args.src} {ts:9d} "
              f"({ts / max(n, 1):.1f}/sent), {args.tgt} {tt:9d} ({tt / max(n, 1):.1f}/sent), "
              f"dropped {n_drop} empty pair(s)" + (", keys" if keys is not None else ""))


if __name__ == "__main__":
    main()
