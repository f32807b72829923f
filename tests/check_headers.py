"""check_headers.py HEADER...: every public function declaration says whether it is
collective (issue 10: PETSc's rule, each collective says so and on which communicator).

A declaration is a function prototype or a static inline definition at file scope (not
inside a struct, enum or function body; typedefs and macros are not declarations). It is
annotated when a comment containing "collective" (any case; "not collective" counts) is
  - on one of its own lines (a trailing comment, or one inside a multi-line prototype), or
  - in the comment block right above it: the comment lines directly above, with no blank
    line in between (adjacent comments merge into one block), or
  - the block above a group: declarations on consecutive lines with no blank line or
    comment between them share the block above the first (dmat_block_count/start).
Prints each unannotated declaration as file:line name and exits 1 if there is one.
With --list first, prints every declaration found (file:line name) and exits 0.
"""
import re
import sys

KEYWORDS = {"if", "while", "for", "switch", "return", "sizeof", "__attribute__", "_Alignas",
            "_Static_assert", "defined"}


def scan(text):
    """(code, comments): code with comments and preprocessor lines blanked (newlines
    kept), and a list of (first_line, last_line, comment_text), lines 1-based."""
    out, comments = [], []
    i, n, line = 0, len(text), 1
    at_line_start = True
    while i < n:
        c = text[i]
        if at_line_start and c == "#" or (at_line_start and text[i:].lstrip(" \t")[:1] == "#"
                                           and c in " \t"):
            while i < n:  # a preprocessor line, with its continuations
                if text[i] == "\\" and i + 1 < n and text[i + 1] == "\n":
                    out.append("  \n"); i += 2; line += 1; continue
                if text[i] == "\n":
                    break
                out.append(" "); i += 1
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            body = text[i:j]
            comments.append((line, line + body.count("\n"), body))
            out.append("".join("\n" if ch == "\n" else " " for ch in body))
            line += body.count("\n"); i = j; at_line_start = False
            continue
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            comments.append((line, line, text[i:j]))
            out.append(" " * (j - i)); i = j
            continue
        if c in "\"'":  # skip a literal
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(" " * (j + 1 - i)); i = j + 1
            continue
        out.append(c)
        if c == "\n":
            line += 1; at_line_start = True
        elif c not in " \t":
            at_line_start = False
        i += 1
    return "".join(out), comments


def declarations(code):
    """[(first_line, last_line, name)] of the function declarations at file scope."""
    decls = []
    depth, head, head_line, line = 0, [], None, 1
    body_of_function = None  # name of the inline function whose body we are in
    for c in code:
        if depth == 0:
            if c == ";" or c == "{":
                stmt = "".join(head)
                name = function_name(stmt)
                if c == "{":
                    depth = 1
                    body_of_function = (head_line, name) if name else None
                    if not name:  # struct/enum/union body: the statement goes on after it
                        head.append(" ")
                        if c == "\n":
                            line += 1
                        continue
                elif name:
                    decls.append((head_line, line, name))
                head, head_line = [], None
            elif c == "}":
                pass
            else:
                if head_line is None and not c.isspace():
                    head_line = line
                head.append(c)
        else:
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0 and body_of_function:
                    decls.append((body_of_function[0], line, body_of_function[1]))
                    body_of_function = None
                    head, head_line = [], None
        if c == "\n":
            line += 1
    return decls


def function_name(stmt):
    s = " ".join(stmt.split())
    if not s or re.match(r"(typedef|struct|enum|union)\b", s) and "(" not in s.split("{")[0]:
        return None
    if s.startswith("typedef"):
        return None
    s = re.sub(r"__attribute__\s*\(\(.*?\)\)", " ", s)
    m = re.search(r"([A-Za-z_]\w*)\s*\(", s)
    if not m or m.group(1) in KEYWORDS:
        return None
    if re.match(r"\(\s*\*", s[m.end() - 1:]):  # a pointer to function, not a function
        return None
    prefix = s[:m.start()].strip()
    if not prefix or "=" in prefix:  # a call or an initializer, not a declaration
        return None
    return m.group(1)


def main(paths):
    bad = 0
    listing = paths[:1] == ["--list"]
    if listing:
        paths = paths[1:]
    for path in paths:
        text = open(path, encoding="utf-8").read()
        code, comments = scan(text)
        lines = code.split("\n")
        decls = declarations(code)
        decl_at = {}  # last line of a declaration -> its first line
        for first, last, _ in decls:
            decl_at[last] = first
        comment_end = {}  # last line -> first line, for comments alone on their lines
        for first, last, body in comments:
            comment_end[last] = first

        def says(body):
            return "collective" in body.lower()

        for first, last, name in decls:
            if listing:
                print(f"{path}:{first} {name}")
                continue
            own = [b for f, l, b in comments if l >= first and f <= last]
            ok = any(says(b) for b in own)
            ln = first - 1
            while not ok and ln >= 1:
                if ln in comment_end and not lines[ln - 1].strip():
                    # a comment block alone on its lines: merge adjacent ones above
                    block = []
                    while ln in comment_end and not lines[ln - 1].strip():
                        f = comment_end[ln]
                        block += [b for cf, cl, b in comments if cl == ln]
                        ln = f - 1
                    ok = any(says(b) for b in block)
                    break
                if ln in decl_at:  # an earlier declaration of the same group
                    ln = decl_at[ln] - 1
                    continue
                break
            if not ok:
                print(f"{path}:{first} {name}")
                bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
