#!/usr/bin/env python3
"""Doxygen INPUT_FILTER for softmaxlab's headers (docs/Doxyfile): the headers document themselves
in plain `//` comments (the doc block on top of each header, a comment above each public entry
point, a trailing comment on a field), which Doxygen would ignore. This filter hands them to
Doxygen as documentation without changing a line number:
  - the header's top block becomes the file's documentation, verbatim (formulas keep their layout);
  - a comment block above a declaration becomes that declaration's documentation (`///`), with
    Doxygen's special characters escaped so the text stays text;
  - a trailing `// ...` after a declaration ending in `;`, `,` or `{}` becomes `///< ...`.
Comments inside function bodies are also passed on; Doxygen ignores them there."""
import re
import sys

SPECIAL = re.compile(r'([\\@<>&$#%"])')


def escape(text):
    return SPECIAL.sub(r'\\\1', text)


def main(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    out = []
    i = 0
    # The top block: consecutive // lines from the first line.
    top = 0
    while top < len(lines) and lines[top].startswith("//"):
        top += 1
    if top > 0:
        for k in range(top):
            text = lines[k][2:].replace("*/", "* /")
            prefix = "/** \\verbatim" if k == 0 else ""
            suffix = " \\endverbatim \\file */" if k == top - 1 else ""
            out.append(prefix + text + suffix)
        i = top
    comment = re.compile(r"^(\s*)//(?!/)\s?(.*)$")
    trailing = re.compile(r"^(.*?(?:;|,|\{\}))(\s+)//(?!/)\s?(.*)$")
    for line in lines[i:]:
        m = comment.match(line)
        if m:
            body = m.group(2)
            if "clang-format" in body or body.startswith("NOLINT") or set(body.strip()) <= set("-=*"):
                out.append(line)
            else:
                out.append(m.group(1) + "/// " + escape(body))
            continue
        t = trailing.match(line)
        if t and '"' not in t.group(1):
            out.append(t.group(1) + t.group(2) + "///< " + escape(t.group(3)))
            continue
        out.append(line)
    sys.stdout.write("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
