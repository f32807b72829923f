#!/usr/bin/python3
"""Verse-aligned Spanish/English Bible from the SWORD modules, and its chapter split.

What it does:
  * runs `mod2imp` for spaRV1909eb (Reina-Valera 1909), engWEB2015eb (World English
    Bible) and engKJV2006eb (King James), and strips the OSIS markup of every verse
    itself (`mod2imp -s` glues words around notes: see strip_osis below);
  * keeps the verses that have text in all three modules, minus the 14 chapters the
    Spanish module stores with Hebrew verse division and Matthew 23:13-14;
  * writes OUTDIR/bible.tsv (`key<TAB>es<TAB>web<TAB>kjv`, canonical book order) and,
    with --split, the line-aligned files OUTDIR/{train,valid,test}.{es,en,kjv,keys}
    that data_prep/pack.py packs (en = WEB);
  * prints the counts (verses, Old/New Testament, words per side, split sizes).

What it does not do: tokenization, vocabularies, HDF5 (pack.py does that).

Split rule (whole chapters, so that verses of one chapter never straddle splits):
number the 1,189 chapters of the 66 books in canonical order starting at 0 (Genesis 1
is chapter 0, Revelation 22 is chapter 1188; the numbering counts dropped chapters
too, so it does not depend on the drop list).  Chapter i goes to valid when
i % 40 == 13, to test when i % 40 == 33, and to train otherwise.

Usage:
  bible.py OUTDIR [--split] [--books B1,B2]
                                 build OUTDIR/bible.tsv (and the split files);
                                 --books keeps only those books (tests)
  bible.py --selftest            run the stripper unit checks only
Python standard library only (runs under /usr/bin/python3).
"""

import argparse
import os
import re
import subprocess
import sys
import unicodedata

MODULES = ("spaRV1909eb", "engWEB2015eb", "engKJV2006eb")  # es, web, kjv

# Chapters where the Spanish module uses the Spanish/Hebrew verse division under KJV
# keys (verses shifted against the English), and two verses WEB swaps.
DROP_CHAPTERS = {
    ("Numbers", 13), ("Numbers", 30), ("Judges", 14), ("I Samuel", 24),
    ("I Kings", 18), ("I Kings", 22), ("I Chronicles", 1), ("I Chronicles", 21),
    ("II Chronicles", 33), ("Job", 39), ("Job", 40), ("Hosea", 12), ("Jonah", 2),
    ("II Corinthians", 13),
}
DROP_VERSES = {("Matthew", 23, 13), ("Matthew", 23, 14)}
FIRST_NT_BOOK = "Matthew"

SPLIT_PERIOD, SPLIT_VALID, SPLIT_TEST = 40, 13, 33

# Tags that end a line or block: a run of tags holding one of them becomes a blank.
# (`title` is here for the kept canonical titles, which precede the verse text.)
BLOCK_TAGS = {"l", "lg", "lb", "div", "p", "chapter", "milestone", "list", "item",
              "verse", "br", "title"}
# Word-level inline tags: a run that closes one of them and opens another is a word
# boundary (`</w><w>`, `</w><transChange>`).  Other inline tags are ignored: notably
# `<q>`, a quotation container spanning many words whose boundaries are not word
# boundaries (WEB `AM.</q><note/><q>”</q>` must give `AM.”`).  Measured: counting `q`
# as a word tag adds 22 WEB words (740,808 against the expected 740,786), counting only
# `w` loses 577 Spanish words (`</w><transChange>` glued).
WORD_TAGS = {"w", "transChange", "divineName", "seg", "foreign", "name", "hi", "rdg"}
ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&apos;": "'"}

_RE_BOOK_END = re.compile(r'<div\b[^>]*\beID="[^"]*"[^>]*\btype="book"[^>]*/>')
_RE_NOTE = re.compile(r"<note\b[^>]*/>|<note\b[^>]*>.*?</note>", re.S)
_RE_TITLE_DROP = re.compile(r'<title\b(?![^>]*canonical="true")[^>]*>.*?</title>', re.S)
_RE_SPEAKER = re.compile(r"<speaker\b[^>]*>.*?</speaker>", re.S)
_RE_TAG = re.compile(r"(<[^>]*>)")
_RE_TAG_NAME = re.compile(r"<\s*(/?)\s*([A-Za-z][A-Za-z0-9]*)[^>]*?(/?)\s*>")
_RE_ENTITY = re.compile(r"&(?:amp|lt|gt|quot|apos);")
_RE_SPACE = re.compile(r"\s+")
NOTE_MARK = "<NOTE/>"  # placeholder for a dropped note
DROP_MARK = "<DROPPED/>"  # placeholder for a dropped title or speaker label (a block)


def _punct_follows(text):
    """True when text starts with punctuation that attaches to the previous word
    (closing quote or bracket, comma, period, dash...); opening quotes do not."""
    if not text:
        return False
    cat = unicodedata.category(text[0])
    return cat in ("Po", "Pe", "Pf", "Pd")


def _run_is_blank(tags, next_text):
    """Decide whether a run of adjacent tags (no text between them) becomes a blank.
    Blank when it holds a block tag, a dropped title/speaker, or closes one word tag
    and then opens another word tag (WORD_TAGS), or holds a dropped note not followed by punctuation;
    nothing otherwise (KJV `give</w>n` stays one word)."""
    closed_word = False
    note = False
    for tag in tags:
        if tag == NOTE_MARK:
            note = True
            continue
        if tag == DROP_MARK:
            return True
        m = _RE_TAG_NAME.match(tag)
        if not m:
            return True  # unparseable tag: be safe, separate
        closing, name, selfclosing = m.group(1) == "/", m.group(2), m.group(3) == "/"
        if name in BLOCK_TAGS:
            return True
        if name not in WORD_TAGS:
            continue
        if closing:
            closed_word = True
        elif not selfclosing and closed_word:
            return True
    return note and not _punct_follows(next_text)


def strip_osis(raw):
    """Plain text of one verse of OSIS markup (data_prep/README.md lists the rules):
    cut after an end-of-book milestone (WEB appends its glossary to Rev 22:21), drop
    notes with their content, drop non-canonical titles and speaker labels (keep the
    text of <title canonical="true">), turn runs of tags into a blank or nothing,
    decode the five XML entities, drop the pilcrow, collapse whitespace."""
    m = _RE_BOOK_END.search(raw)
    if m:
        raw = raw[: m.end()]
    raw = _RE_NOTE.sub(NOTE_MARK, raw)
    raw = _RE_TITLE_DROP.sub(DROP_MARK, raw)
    raw = _RE_SPEAKER.sub(DROP_MARK, raw)
    parts = _RE_TAG.split(raw)  # text, tag, text, tag, ..., text
    out = []
    i = 0
    n = len(parts)
    while i < n:
        if i % 2 == 0:
            out.append(parts[i])
            i += 1
            continue
        # collect a run of tags separated by empty text
        tags = [parts[i]]
        j = i + 1
        while j + 1 < n and parts[j] == "":
            tags.append(parts[j + 1])
            j += 2
        next_text = parts[j] if j < n else ""
        if _run_is_blank(tags, next_text):
            out.append(" ")
        i = j
    text = "".join(out)
    text = _RE_ENTITY.sub(lambda e: ENTITIES[e.group(0)], text)
    text = text.replace("\u00b6", "")
    return _RE_SPACE.sub(" ", text).strip()


_RE_KEY = re.compile(r"^(.+) (\d+):(\d+)$")


def read_module(name, books=None):
    """Run mod2imp NAME; return (ordered list of every verse key (book, chapter,
    verse) it lists with chapter >= 1 and verse >= 1, dict key -> stripped text for
    those keys whose text is not empty). books: if given, a set of book names; only
    their verses are stripped and enter the dict (the key list stays complete)."""
    try:
        res = subprocess.run(["mod2imp", name], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"bible.py: cannot run mod2imp {name}: {e} "
                 "(install libsword-utils and the sword-text-* packages)")
    lines = res.stdout.decode("utf-8").split("\n")
    order, text, seen = [], {}, set()
    key = None
    for line in lines:
        if line.startswith("$$$"):
            m = _RE_KEY.match(line[3:].strip())
            key = None
            if m and int(m.group(2)) >= 1 and int(m.group(3)) >= 1:
                key = (m.group(1), int(m.group(2)), int(m.group(3)))
            continue
        if key is None:
            continue
        if key not in seen:
            seen.add(key)
            order.append(key)
        t = strip_osis(line) if books is None or key[0] in books else ""
        if t:
            text[key] = t
        key = None  # one markup line per key
    if not order:
        sys.exit(f"bible.py: mod2imp {name} gave no verses (module not installed?)")
    return order, text


def key_str(key):
    return f"{key[0]} {key[1]}:{key[2]}"


def canonical_chapters(order):
    """Chapter numbering of the split rule: (book, chapter) -> index in canonical
    order, over every chapter the module lists."""
    index = {}
    for book, ch, _ in order:
        if (book, ch) not in index:
            index[(book, ch)] = len(index)
    return index


def split_of(chapter_index):
    r = chapter_index % SPLIT_PERIOD
    return "valid" if r == SPLIT_VALID else "test" if r == SPLIT_TEST else "train"


def build(outdir, do_split, books=None):
    os.makedirs(outdir, exist_ok=True)
    mods = [read_module(m, books) for m in MODULES]
    es_order, es = mods[0]
    web, kjv = mods[1][1], mods[2][1]
    if books:
        unknown = books - {k[0] for k in es_order}
        if unknown:
            sys.exit(f"bible.py: unknown book(s) {sorted(unknown)}; names are as "
                     "mod2imp spaRV1909eb prints them (e.g. 'I Samuel')")
    both = [k for k in es_order if k in es and k in web]
    books = []
    for k in es_order:
        if not books or books[-1] != k[0]:
            books.append(k[0])
    nt_start = books.index(FIRST_NT_BOOK)
    nt_books = set(books[nt_start:])
    aligned = [k for k in both
               if (k[0], k[1]) not in DROP_CHAPTERS and k not in DROP_VERSES and k in kjv]
    n_ot = sum(1 for k in aligned if k[0] not in nt_books)
    n_nt = len(aligned) - n_ot
    words = [sum(len(side[k].split()) for k in aligned) for side in (es, web, kjv)]
    print(f"bible: keys with text in es and WEB: {len(both)}; "
          f"missing in KJV: {sum(1 for k in both if k not in kjv)}")
    print(f"bible: aligned verses {len(aligned)} (OT {n_ot}, NT {n_nt}) after dropping "
          f"{len(DROP_CHAPTERS)} chapters and Matthew 23:13-14")
    print(f"bible: words es {words[0]}, WEB {words[1]}, KJV {words[2]}")
    tsv = os.path.join(outdir, "bible.tsv")
    with open(tsv + ".tmp", "w", encoding="utf-8") as f:
        for k in aligned:
            f.write(f"{key_str(k)}\t{es[k]}\t{web[k]}\t{kjv[k]}\n")
    os.replace(tsv + ".tmp", tsv)
    print(f"bible: wrote {tsv}")
    if not do_split:
        return
    chap = canonical_chapters(es_order)
    sides = {"es": es, "en": web, "kjv": kjv}
    files = {}
    counts = {}
    for split in ("train", "valid", "test"):
        for ext in list(sides) + ["keys"]:
            path = os.path.join(outdir, f"{split}.{ext}")
            files[(split, ext)] = open(path + ".tmp", "w", encoding="utf-8")
        counts[split] = [0, set(), 0, 0]  # verses, chapters, OT verses, NT verses
    for k in aligned:
        split = split_of(chap[(k[0], k[1])])
        for ext, side in sides.items():
            files[(split, ext)].write(side[k] + "\n")
        files[(split, "keys")].write(key_str(k) + "\n")
        c = counts[split]
        c[0] += 1
        c[1].add((k[0], k[1]))
        c[3 if k[0] in nt_books else 2] += 1
    for (split, ext), f in files.items():
        f.close()
        path = os.path.join(outdir, f"{split}.{ext}")
        os.replace(path + ".tmp", path)
    print(f"bible: split rule: canonical chapter index i (0 = Genesis 1) -> valid if "
          f"i % {SPLIT_PERIOD} == {SPLIT_VALID}, test if i % {SPLIT_PERIOD} == "
          f"{SPLIT_TEST}, else train")
    for split in ("train", "valid", "test"):
        v, ch, ot, nt = counts[split]
        print(f"bible: {split:5s} {v:6d} verses ({100.0 * v / len(aligned):4.1f}%), "
              f"{len(ch):4d} chapters, OT {ot}, NT {nt}")


# ----------------------------------------------------------------------------------
# Unit checks of the stripper on the known pitfalls of the three modules.

SELFTEST_CASES = [
    # WEB Genesis 1:1: a footnote between two words must leave a blank ("Godcreated").
    ('<w lemma="strong:H0430">In</w> <w lemma="strong:H0853">the</w> '
     '<w lemma="strong:H7225">beginning</w>, <w lemma="strong:H0430">God</w><note '
     'placement="foot"><reference type="annotateRef">1:1 </reference>The Hebrew word '
     'rendered “God” is “אֱלֹהִ֑ים” (Elohim).</note><w lemma="strong:H1254">created</w> '
     '<w lemma="strong:H0853">the</w> <w lemma="strong:H8064">heavens</w>',
     "In the beginning, God created the heavens"),
    # KJV: a word split by a closing tag stays one word.
    ('<w lemma="strong:H5414">give</w>n unto <w lemma="x">them</w>.', "given unto them."),
    # word tags back to back without a blank: close one, open another -> blank
    ('<w lemma="a">allí</w><transChange type="added">también</transChange><w '
     'lemma="b">bdelio</w>', "allí también bdelio"),
    # note followed by punctuation: no blank before the punctuation
    ('said<note placement="foot">Or, spoke</note>, and <w>went</w>.', "said, and went."),
    # note followed by an opening quote: blank
    ('said,<note n="a">x</note>“Let there be light,”', "said, “Let there be light,”"),
    # quotation container boundaries are not word boundaries (WEB John 8:58)
    ('<w>I</w> <w>AM</w>.</q><note type="crossReference"><reference>Exodus 3:14'
     '</reference></note><q marker="" who="Jesus">”</q><div eID="g" type="x-p"/>',
     "I AM.”"),
    # canonical title kept (Psalm superscription), block tags separate words
    ('<div type="x-milestone" subType="x-preverse" sID="pv5154"/><title canonical="true" '
     'type="psalm">A Psalm by David.</title> <lg sID="g1"/> <l level="1" sID="g2"/><div '
     'type="x-milestone" subType="x-preverse" eID="pv5154"/><w>Yahweh</w> <w>is</w> '
     '<w>my</w> <w>shepherd</w>;<l eID="g2" level="1"/> <l level="2" sID="g3"/><w>I</w> '
     '<w>shall</w> <w>lack</w> <w>nothing</w>. <l eID="g3" level="2"/>',
     "A Psalm by David. Yahweh is my shepherd; I shall lack nothing."),
    # non-canonical title and speaker dropped with their text
    ('<title><foreign>ב BETH.</foreign></title> <lg sID="x"/>Wherewithal',
     "Wherewithal"),
    ('<speaker>Beloved</speaker> <lg sID="gen16015"/>If you', "If you"),
    # block tag between two words with no blank: blank
    ('shepherd;<l eID="g2"/><l sID="g3"/>I shall', "shepherd; I shall"),
    ('end<lb type="x-p"/>Begin', "end Begin"),
    # entities, pilcrow, whitespace
    ('¶ Tom &amp; Jerry &lt;&gt; &quot;q&quot; &apos;a&apos;   x\t y',
     "Tom & Jerry <> \"q\" 'a' x y"),
    # end-of-book milestone: the glossary after it is cut
    ('<w>Amen</w>.<div canonical="true" eID="gen33" osisID="Rev" type="book"/> '
     '<div sID="g" type="glossary"/>Abba Father', "Amen."),
    # nested word tags that open without closing do not separate
    ('<divineName><w lemma="strong:H3068">LORD</w></divineName> <transChange '
     'type="added">is</transChange> my', "LORD is my"),
]


def selftest():
    passed = failed = 0
    for raw, want in SELFTEST_CASES:
        got = strip_osis(raw)
        if got == want:
            passed += 1
        else:
            failed += 1
            print(f"FAIL strip_osis: got {got!r}, want {want!r}")
    for glued in ("Godcreated", "allítambién", "tambiénbdelio"):
        joined = " ".join(strip_osis(raw) for raw, _ in SELFTEST_CASES)
        if glued in joined:
            failed += 1
            print(f"FAIL glued word {glued!r} in stripper output")
        else:
            passed += 1
    print(f"bible.py selftest: {passed} passed, {failed} failed")
    return failed == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir", nargs="?", help="output folder")
    ap.add_argument("--split", action="store_true",
                    help="also write {train,valid,test}.{es,en,kjv,keys}")
    ap.add_argument("--books", help="comma-separated book names: only these (for tests)")
    ap.add_argument("--selftest", action="store_true", help="run the stripper checks")
    args = ap.parse_args()
    if args.selftest:
        sys.exit(0 if selftest() else 1)
    if not args.outdir:
        ap.error("OUTDIR is required (or --selftest)")
    books = set(b.strip() for b in args.books.split(",")) if args.books else None
    build(args.outdir, args.split, books)


if __name__ == "__main__":
    main()
