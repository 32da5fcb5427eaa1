#!/usr/bin/env bash
# Checks every relative link in the repository's Markdown files: the target
# must exist inside the repository, and a `#fragment` into a Markdown file
# must name one of its headings. A link that leaves the repository (`../`
# beyond the root, an absolute filesystem path, a file: URL) fails too, since
# it is dead for anyone who clones. Links inside code (fenced or indented
# blocks, `code spans`) are not links and are skipped; http(s) and mailto
# URLs are not checked.
#
#     scripts/check-links.sh            # prints each offender, exits 1 if any
#
# Needs only bash and python3 (standard library).
set -euo pipefail
cd "$(dirname "$0")/.."

exec python3 - "$@" <<'PYTHON'
import os
import re
import subprocess
import sys
import urllib.parse

ROOT = os.path.realpath(os.getcwd())
SKIP_DIRS = {".git", "target", "node_modules"}


def markdown_files():
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", "*.md"],
            check=True, capture_output=True,
        ).stdout.decode()
        files = [f for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for dirpath, dirnames, filenames in os.walk(ROOT):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
            for name in filenames:
                if name.endswith(".md"):
                    files.append(os.path.relpath(os.path.join(dirpath, name), ROOT))
    return sorted(f for f in files if os.path.isfile(f))


FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
LIST_ITEM = re.compile(r"^\s*([-*+]|\d+[.)])\s")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
INLINE = re.compile(
    r"!?\[(?:[^\[\]\\]|\\.|\[[^\]]*\])*\]"   # [text], one level of nested brackets
    r"\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"
)
REFDEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML_ATTR = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*\"([^\"]*)\"", re.I)
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ID = re.compile(r"<a\b[^>]*\b(?:name|id)\s*=\s*\"([^\"]+)\"", re.I)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def prose_lines(text):
    """(line number, line) for lines outside code blocks, code spans blanked."""
    fence = None
    in_list = False
    prev_blank = True
    in_indented = False
    for number, line in enumerate(text.split("\n"), 1):
        m = FENCE.match(line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            prev_blank = False
            continue
        if m:
            fence = m.group(1)
            continue
        blank = not line.strip()
        indented = line.startswith("    ") or line.startswith("\t")
        if blank:
            prev_blank = True
            continue
        if LIST_ITEM.match(line):
            in_list = True
        elif not indented and not line.startswith(" "):
            in_list = False
        if indented and not in_list and (prev_blank or in_indented):
            in_indented = True
            prev_blank = False
            continue
        in_indented = False
        prev_blank = False
        yield number, CODE_SPAN.sub(lambda s: " " * len(s.group(0)), line)


def slug(heading):
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links -> their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


anchor_cache = {}


def anchors(path):
    if path not in anchor_cache:
        found = set()
        seen = {}
        with open(path, encoding="utf-8") as f:
            text = f.read()
        fence = None
        for line in text.split("\n"):
            m = FENCE.match(line)
            if fence:
                if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                    fence = None
                continue
            if m:
                fence = m.group(1)
                continue
            for a in HTML_ID.findall(line):
                found.add(a)
            h = HEADING.match(line)
            if h:
                base = slug(h.group(2))
                n = seen.get(base, 0)
                seen[base] = n + 1
                found.add(base if n == 0 else f"{base}-{n}")
        anchor_cache[path] = found
    return anchor_cache[path]


def check(source, target):
    """Why `target`, linked from `source`, is wrong; None when it is fine."""
    if target.startswith("<") and target.endswith(">"):
        target = target[1:-1]
    if not target:
        return "empty link"
    if SCHEME.match(target):
        if target.lower().startswith("file:"):
            return "a file: URL points outside the repository"
        return None  # http(s), mailto, ...: not checked
    if target.startswith("//"):
        return None  # scheme-relative URL
    path, _, fragment = target.partition("#")
    path = urllib.parse.unquote(path.split("?", 1)[0])
    if path.startswith("/"):
        return "absolute path: use a path relative to this file"
    if path:
        resolved = os.path.realpath(os.path.join(ROOT, os.path.dirname(source), path))
        if resolved != ROOT and not resolved.startswith(ROOT + os.sep):
            return "leaves the repository"
        if not os.path.exists(resolved):
            return "no such file in the repository"
    else:
        resolved = os.path.join(ROOT, source)
    if fragment and resolved.endswith(".md") and os.path.isfile(resolved):
        if urllib.parse.unquote(fragment).lower() not in {a.lower() for a in anchors(resolved)}:
            return f"no heading for #{fragment} in {os.path.relpath(resolved, ROOT)}"
    return None


offenders = []
files = markdown_files()
for source in files:
    with open(source, encoding="utf-8") as f:
        text = f.read()
    for number, line in prose_lines(text):
        targets = [m.group(1) for m in INLINE.finditer(line)]
        targets += [m.group(1) for m in REFDEF.finditer(line)]
        targets += HTML_ATTR.findall(line)
        for target in targets:
            why = check(source, target)
            if why:
                offenders.append(f"{source}:{number}: {target}: {why}")

for o in offenders:
    print(o)
if offenders:
    print(f"check-links: {len(offenders)} bad link(s) in {len(files)} Markdown files", file=sys.stderr)
    sys.exit(1)
print(f"check-links: {len(files)} Markdown files, every relative link resolves inside the repository")
PYTHON
