"""The dependency direction of docs/design.md §12 ("Layers"), checked on the source.

Imports only point down: cli, api -> node, client -> net, storage -> core -> errors, types.
libp2p is imported only in net/, pyeclib only in core's codec modules, and core does no I/O
frameworks (no trio, no libp2p).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "walrus_p2p"

# layer -> the walrus_p2p layers it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "types": {"errors"},
    "core": {"errors", "types"},
    "storage": {"core", "errors", "types"},
    "net": {"core", "errors", "types"},
    "node": {"net", "storage", "core", "errors", "types"},
    "client": {"net", "storage", "core", "errors", "types"},
    # the gateway drives a light client; it serves HTTP with net/http.py, not the peer's code
    "api": {"client", "net", "storage", "core", "errors", "types"},
    "testing": {
        "cli",
        "devnet",
        "api",
        "client",
        "node",
        "net",
        "storage",
        "core",
        "errors",
        "types",
    },
    "devnet": {"api", "client", "node", "net", "storage", "core", "errors", "types"},
    "cli": {
        "devnet",
        "api",
        "client",
        "node",
        "net",
        "storage",
        "core",
        "errors",
        "types",
        "testing",
    },
    "__init__": set(),
}


def _layer_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _module_of(path: Path) -> str:
    parts = ("walrus_p2p", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(path: Path, node: ast.ImportFrom) -> str:
    """The module an ``from ... import`` names, relative imports resolved."""
    if node.level == 0:
        return node.module or ""
    package = _module_of(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, anywhere in it (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.append(_absolute(path, node))
    return names


def _runtime_imports(path: Path) -> list[str]:
    """The walrus_p2p modules ``path`` imports when it is imported: top-level statements only
    (not function bodies, not ``if TYPE_CHECKING:`` blocks)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                names.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                module = _absolute(path, node)
                names.append(module)
                # `from walrus_p2p.net import host` imports the submodule too
                names.extend(f"{module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)

    visit(tree.body)
    return [name for name in names if name.startswith("walrus_p2p")]


def _violations(path: Path, layer: str) -> list[str]:
    found = []
    for name in _imports(path):
        if not name.startswith("walrus_p2p."):
            continue
        target = name.split(".")[1]
        if target == "__version__" or target == layer:
            continue
        if target not in ALLOWED.get(layer, set()):
            found.append(f"{path.name} imports {name}")
    return found


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_sources_found() -> None:
    assert len(_sources()) > 5


def test_imports_point_down() -> None:
    violations = []
    for path in _sources():
        violations.extend(
            f"{path.relative_to(PACKAGE).parent}/{line}"
            for line in _violations(path, _layer_of(path))
        )
    assert violations == []


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` (module -> modules it imports), or []."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[module] = 2
        return []

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return []


def _runtime_graph() -> dict[str, set[str]]:
    modules = {_module_of(path): path for path in _sources()}
    # A module's own parent packages are imported before it anyway: not edges of a cycle.
    return {
        module: {
            name
            for name in _runtime_imports(path)
            if name in modules and not module.startswith(name)
        }
        for module, path in modules.items()
    }


def test_no_import_cycle() -> None:
    assert _cycle(_runtime_graph()) == []


def test_no_imports_inside_functions_except_the_cli() -> None:
    """A function-level import of our own modules usually dodges a cycle. Only the CLI imports
    lazily, on purpose: a command loads only what it runs (start-up time)."""
    offenders = []
    for path in _sources():
        if path.relative_to(PACKAGE).parts[0] == "cli":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and _absolute(path, node).startswith(
                    "walrus_p2p"
                ):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
                if isinstance(node, ast.Import) and any(
                    alias.name.startswith("walrus_p2p") for alias in node.names
                ):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


def test_libp2p_only_in_net() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in _sources()
        if _layer_of(path) != "net"
        and any(name.split(".")[0] in {"libp2p", "multiaddr"} for name in _imports(path))
    ]
    assert offenders == []


def test_core_is_pure() -> None:
    forbidden = {"trio", "libp2p", "socket", "sqlite3", "random", "time", "asyncio"}
    offenders = [
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in _sources()
        if _layer_of(path) == "core"
        for name in _imports(path)
        if name.split(".")[0] in forbidden
    ]
    assert offenders == []


def test_pyeclib_only_in_core_codec() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in _sources()
        if any(name.split(".")[0] == "pyeclib" for name in _imports(path))
        and path.relative_to(PACKAGE).as_posix() not in {"core/encoding.py", "core/isal.py"}
    ]
    assert offenders == []


def test_checkers_see_violations(tmp_path: Path) -> None:
    """The checkers themselves must be able to fail."""
    package = tmp_path / "walrus_p2p"
    (package / "core").mkdir(parents=True)
    bad = package / "core" / "bad.py"
    bad.write_text(
        "from libp2p import new_host\n"
        "from ..net import host\n"
        "def late():\n"
        "    from walrus_p2p.node import peer\n"
    )
    global PACKAGE
    saved = PACKAGE
    PACKAGE = package
    try:
        assert _module_of(bad) == "walrus_p2p.core.bad"
        found = _violations(bad, "core")
        assert "bad.py imports walrus_p2p.net" in found  # relative import resolved
        assert "bad.py imports walrus_p2p.node" in found  # inside a function too
        assert "libp2p" in _imports(bad)
        assert "walrus_p2p.node.peer" not in _runtime_imports(bad)
        assert "walrus_p2p.net.host" in _runtime_imports(bad)
    finally:
        PACKAGE = saved
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []
