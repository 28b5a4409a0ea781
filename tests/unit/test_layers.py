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
    "api": {"client", "node", "net", "storage", "core", "errors", "types"},
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


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_sources_found() -> None:
    assert len(_sources()) > 5


def test_imports_point_down() -> None:
    violations = []
    for path in _sources():
        layer = _layer_of(path)
        for name in _imports(path):
            if not name.startswith("walrus_p2p."):
                continue
            target = name.split(".")[1]
            if target == "__version__" or target == layer:
                continue
            if target not in ALLOWED.get(layer, set()):
                violations.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert violations == []


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


def test_checker_sees_a_violation(tmp_path: Path) -> None:
    """The checker itself must be able to fail: a core module importing net is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("import walrus_p2p.net.host\nfrom libp2p import new_host\n")
    names = _imports(bad)
    assert "walrus_p2p.net.host" in names
    assert "net" not in ALLOWED["core"]
    assert "libp2p" in names
