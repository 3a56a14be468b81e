#!/usr/bin/env python3
"""Fails when the Rust modules of a crate's source tree import each other in a circle.

Each .rs file is a module (foo.rs and foo/mod.rs are `foo`). A file depends on the module
that every `crate::`/`super::`/`self::` path in it names (the longest prefix that is a module
of the tree; an item of a module is that module). A module naming one of its own ancestors is
no dependency (a child may use its parent's items); a parent naming its children is. The
strongly connected components of that graph with more than one module are the circles,
printed one per line with the paths that close them; none means exit 0.

Usage: scripts/check-module-cycles.py [SRC_DIR ...]   (default: daemon/src)
"""

import re
import sys
from pathlib import Path

PATH = re.compile(r"\b(crate|super|self)((?:::\w+)+)")
BRACES = re.compile(r"\b(crate|super|self)((?:::\w+)*)::\{")


def modules(src):
    """{module path tuple: file} for the tree under `src` (lib.rs/main.rs are the root)."""
    out = {}
    for f in sorted(src.rglob("*.rs")):
        rel = f.relative_to(src).with_suffix("").parts
        if rel[-1] == "mod":
            rel = rel[:-1]
        if len(rel) == 1 and rel[0] in ("lib", "main"):
            rel = ()
        if rel and rel[0] == "bin":
            continue  # binaries are crates of their own
        out.setdefault(rel, f)
    return out


def strip(text):
    """The code without comments and string literals (paths in docs are no imports)."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def group_paths(text, start):
    """The paths of a `{...}` use group starting at `start` (just after the brace), flattened
    one level per nested group: each as a tuple of segments, and the end of the group."""
    depth, i, item, out = 1, start, "", []
    while i < len(text) and depth:
        c = text[i]
        if c == "{":
            inner, i = group_paths(text, i + 1)
            prefix = tuple(s for s in item.strip().strip(":").split("::") if s)
            out.extend(prefix + p for p in inner)
            item = ""
            continue
        if c == "}":
            depth -= 1
        if c in ",}":
            segs = tuple(s for s in re.split(r"\s+as\s+", item.strip())[0].split("::") if s)
            if segs:
                out.append(segs)
            item = ""
        else:
            item += c
        i += 1
    return out, i


def named(text, here):
    """Module paths (absolute tuples) the code of module `here` names."""
    refs = []

    def absolute(kind, segs):
        if kind == "crate":
            return tuple(segs)
        base = list(here)
        if kind == "super":
            while segs and segs[0] == "super" or kind == "super":
                if not base:
                    return None
                base.pop()
                if segs and segs[0] == "super":
                    segs = segs[1:]
                    continue
                kind = ""
        return tuple(base) + tuple(segs)

    for m in BRACES.finditer(text):
        head = [s for s in m.group(2).split("::") if s]
        inner, _ = group_paths(text, m.end())
        for p in inner:
            refs.append(absolute(m.group(1), head + list(p)))
    for m in PATH.finditer(text):
        refs.append(absolute(m.group(1), [s for s in m.group(2).split("::") if s]))
    return [r for r in refs if r is not None]


def resolve(path, mods):
    """The longest prefix of `path` that is a module."""
    for n in range(len(path), -1, -1):
        if path[:n] in mods:
            return path[:n]
    return ()


def graph(src):
    mods = modules(src)
    edges = {m: {} for m in mods}
    for m, f in mods.items():
        # A file's inline `mod tests` is part of it; its `super::` still means the file.
        for p in named(strip(f.read_text()), m):
            t = resolve(p, mods)
            if t == m or t == m[: len(t)]:
                continue  # itself, or an ancestor
            edges[m].setdefault(t, "::".join(p))
    return mods, edges


def circles(edges):
    """Tarjan's strongly connected components with more than one module."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def name(m):
    return "crate::" + "::".join(m) if m else "crate"


def main(argv):
    bad = 0
    for src in [Path(a) for a in argv] or [Path("daemon/src")]:
        mods, edges = graph(src)
        for comp in circles(edges):
            bad += 1
            within = set(comp)
            links = "; ".join(
                f"{name(a)} -> {name(b)} ({edges[a][b]})" for a in comp for b in sorted(edges[a]) if b in within
            )
            print(f"{src}: import circle among {', '.join(name(m) for m in comp)}: {links}")
        print(
            f"{src}: {len(mods)} modules, {sum(len(e) for e in edges.values())} dependencies, "
            f"{'no circle' if not bad else 'circles above'}",
            file=sys.stderr,
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
