"""The import graph of ``walrus_p2p/``: modules, edges, imports inside functions, cycles.

Run from the repository root::

    .venv/bin/python bench/import_graph.py                 # the working tree
    .venv/bin/python bench/import_graph.py --rev 83fea76   # a commit (read with git, not run)
    .venv/bin/python bench/import_graph.py --rev HEAD --edges walrus_p2p.node

It reads the source with :mod:`ast` (nothing is imported), resolves relative imports, counts
edges between ``walrus_p2p`` modules (an import of a package counts as an edge to its
``__init__``), lists imports made inside functions, and prints every strongly connected
component of more than one module (an import cycle). ``--edges PREFIX`` also prints the edges
leaving modules under ``PREFIX``. docs/design.md §11.1 and §12 describe the intended shape;
tests/unit/test_layers.py enforces the layer directions and the absence of cycles.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sources_at(rev: str | None) -> dict[str, str]:
    """Module name -> source text, of the working tree or of a git revision."""
    result: dict[str, str] = {}
    if rev is None:
        for path in sorted((ROOT / "walrus_p2p").rglob("*.py")):
            result[module_name(path.relative_to(ROOT).as_posix())] = path.read_text()
        return result
    listing = subprocess.run(
        ["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", rev, "walrus_p2p"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in listing:
        if name.endswith(".py"):
            text = subprocess.run(
                ["git", "-C", str(ROOT), "show", f"{rev}:{name}"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            result[module_name(name)] = text
    return result


def module_name(relative: str) -> str:
    parts = relative.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
    )


def imports_of(
    module: str, source: str, known: set[str], packages: set[str]
) -> tuple[set[str], set[tuple[str, int]], set[str]]:
    """Runtime edges to other walrus_p2p modules, (target, line) of imports inside functions,
    and the targets imported only for type checking (``if TYPE_CHECKING:``)."""
    tree = ast.parse(source)
    edges: set[str] = set()
    inside: set[tuple[str, int]] = set()
    typing_only: set[str] = set()
    functions = [
        node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    nested = {id(inner) for function in functions for inner in ast.walk(function)}
    blocks = [block for block in ast.walk(tree) if _is_type_checking(block)]
    guarded = {id(inner) for block in blocks for inner in ast.walk(block)}
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve(module, module in packages, node)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        for target in targets:
            if not target.startswith("walrus_p2p"):
                continue
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target not in known or target == module:
                continue
            if id(node) in guarded:
                typing_only.add(target)
                continue
            edges.add(target)
            if id(node) in nested:
                inside.add((target, node.lineno))
    return edges, inside, typing_only


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default=None, help="a git revision (default: the working tree)")
    parser.add_argument("--edges", default=None, help="print edges leaving modules with PREFIX")
    args = parser.parse_args()
    sources = sources_at(args.rev)
    known = set(sources)
    packages = {name for name in known if any(other.startswith(name + ".") for other in known)}
    graph: dict[str, set[str]] = {}
    inside: list[tuple[str, str, int]] = []
    typing_only = 0
    for module, source in sources.items():
        edges, nested, guarded = imports_of(module, source, known, packages)
        graph[module] = edges
        inside.extend((module, target, line) for target, line in nested)
        typing_only += len(guarded - edges)
    print(f"revision: {args.rev or 'working tree'}")
    print(f"modules: {len(graph)}")
    print(f"edges: {sum(len(edges) for edges in graph.values())}")
    print(f"edges only for type checking (if TYPE_CHECKING): {typing_only}")
    cli = [item for item in inside if item[0].startswith("walrus_p2p.cli")]
    print(f"imports inside functions: {len(inside)} ({len(cli)} in cli/, deferred for start-up)")
    for module, target, line in sorted(inside):
        if not module.startswith("walrus_p2p.cli"):
            print(f"  {module}:{line} -> {target}")
    found = cycles(graph)
    print(f"import cycles: {len(found)}")
    for component in found:
        print("  " + " <-> ".join(component))
    if args.edges:
        for module in sorted(graph):
            if module.startswith(args.edges):
                targets = sorted(t for t in graph[module] if t.startswith(args.edges))
                print(f"  {module} -> {', '.join(targets) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
