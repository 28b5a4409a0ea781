"""The test tree stays collectable: pytest imports test modules by basename (no packages)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_names_are_unique() -> None:
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert len(names) > 10
    assert [name for name, count in names.items() if count > 1] == []
