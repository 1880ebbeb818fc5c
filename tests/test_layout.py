"""The package's layout (issue 21): folders by stage, imports only downward, no import cycles (counting imports
placed inside functions: a lazy import that hides a cycle is still a cycle), modules of about 400 lines at most
unless their top says why. Read from the source with `ast`; nothing is imported."""

from __future__ import annotations

import ast
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "actstore"

STAGES = {"errors": 0, "cache": 0, "options": 0, "kernels": 0, "cluster": 0, "tasks": 1, "store": 2, "extract": 3, "saes": 4,
          "score": 4, "run": 5, "report": 6, "api": 7, "world": 7, "cli": 7, "__main__": 8, "": 0}
"""Each top-level module or subpackage of actstore and its stage: a module may import its own stage and lower ones."""
MAX_LINES = 400
LONG_REASON = "This module is long"
"""A module over MAX_LINES says why in its docstring with this phrase."""
ALLOWED_CYCLES = [{"actstore.__main__", "actstore.cli.main"}]
ALLOWED_UPWARD = {("actstore.cli.main", "actstore.__main__")}
"""The entry point imports the CLI inside main() after installing its signal handlers, and `python -m
actstore.cli.main` calls back into the entry point, so a command has one signal path (actstore/__main__.py)."""


def modules() -> dict[str, Path]:
    """Every module of the package, actstore/kernels (a link to the repo root's kernels/) included."""
    out = {}
    files = [Path(folder) / name for folder, _, names in os.walk(PACKAGE, followlinks=True) for name in names]
    for path in sorted(f for f in files if f.suffix == ".py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(path: Path, mods: dict[str, Path]) -> set[str]:
    """The package's modules a file imports anywhere (module level, functions, classes), but not under
    `if TYPE_CHECKING:`; `from X import name` counts X.name when it is a module."""
    found: set[str] = set()
    me = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")

    def walk(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for c in child.orelse:
                    walk(c)
                continue
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
                    base = ".".join(anchor[:len(anchor) - child.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in child.names]
            else:
                walk(child)
                continue
            for name in names:
                parts = name.split(".")
                while parts and ".".join(parts) not in mods:
                    parts.pop()
                if parts and ".".join(parts) != me:
                    found.add(".".join(parts))

    walk(ast.parse(path.read_text(), str(path)))
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, mods) for m, p in mods.items()}


def stage(module: str) -> int:
    return STAGES[module.split(".")[1] if "." in module else ""]


def cycles(g: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, n = {}, {}, set(), [], [], 0
    for root in g:
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = n
        n += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        x = stack.pop()
                        on.discard(x)
                        comp.add(x)
                        if x == v:
                            break
                    if len(comp) > 1:
                        out.append(comp)
            elif w not in index:
                index[w] = low[w] = n
                n += 1
                stack.append(w)
                on.add(w)
                work.append((w, iter(sorted(g[w]))))
            elif w in on:
                low[v] = min(low[v], index[w])
    return out


def test_the_checker_finds_a_cycle_and_an_upward_import():
    """The checks below can fail: a planted two-module cycle is found, and so is an import from a later stage."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert stage("actstore.store.zarrstore") < stage("actstore.score.scorer") < stage("actstore.cli.main")


def test_every_module_is_in_a_stage_and_imports_only_its_own_or_earlier_stages():
    g = graph()
    upward = sorted(f"{m} (stage {stage(m)}) imports {t} (stage {stage(t)})"
                    for m, targets in g.items() for t in targets
                    if stage(t) > stage(m) and (m, t) not in ALLOWED_UPWARD)
    assert not upward, "\n".join(upward)


def test_no_import_cycles_even_through_imports_inside_functions():
    found = [c for c in cycles(graph()) if c not in ALLOWED_CYCLES]
    assert not found, found


def test_modules_are_short_or_say_why():
    long = []
    for module, path in modules().items():
        lines = path.read_text().count("\n")
        if lines > MAX_LINES and LONG_REASON not in (ast.get_docstring(ast.parse(path.read_text())) or ""):
            long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not long, long


def test_the_flat_package_is_gone():
    """At the top of actstore/ only the stage folders and the few modules every stage shares."""
    top = sorted(p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p.is_dir() and p.name != "__pycache__"))
    assert top == sorted(["__init__.py", "__main__.py", "api.py", "cache.py", "cluster.py", "errors.py", "options.py", "cli",
                          "extract", "kernels", "report", "run", "saes", "score", "store", "tasks", "world"])
