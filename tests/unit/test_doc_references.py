"""Every document the repository cites ships with it, and every cited design section exists.

The rule (docs/design.md §12, "Documents"): code, tests and docs point only at documents in this
repository. The design lives in ``docs/design.md``, whose sections are cited as
``docs/design.md`` followed by a section sign and a number. This test reads every file of the
checkout (tracked, or new and not ignored; ``CHANGELOG.md`` is history and is left alone) and
fails on:

- a section of "the design" cited without naming ``docs/design.md``;
- the starting notes that lived next to the checkout (the conventions file, anything under the
  shared directory beside it, absolute paths into the build machine's work area);
- a section sign that belongs to no document (only ``docs/design.md`` and RFCs have numbered
  sections here);
- a ``docs/design.md`` section number that is not a heading of ``docs/design.md``.

The patterns are built from pieces so that this file does not match them itself; it is scanned
like every other file.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DESIGN = "docs/" + "design.md"
SECTION_SIGN = "\u00a7"
LEFT_ALONE = {"CHANGELOG.md"}
SCANNED_WHEN_NO_GIT = ("walrus_p2p", "tests", "bench", "docs", "bootstrap", "peers", "docker")
GIT_SELECTION = ("--cached", "--others", "--exclude-standard")
TEXT_SUFFIXES = {".py", ".md", ".toml", ".sh", ".c", ".yml", ".yaml", ".json", ".txt", ".cfg"}
ATTRIBUTION_WINDOW = 80
"""How far before a section sign the document it belongs to must be named (characters)."""

_SECTION_NUMBER = r"(\d+(?:\.\d+)?)"
FORBIDDEN: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"\bdesign\s+" + SECTION_SIGN, re.IGNORECASE),
        "cites a design section without naming " + DESIGN,
    ),
    (re.compile(re.escape("conventions" + ".md")), "cites the conventions file outside the repo"),
    (re.compile(re.escape(".." + "/shared")), "points into the shared directory beside the repo"),
    (re.compile(re.escape("/work" + "/")), "points at an absolute path on the build machine"),
)
SIGN = re.compile(SECTION_SIGN + r"\s*" + _SECTION_NUMBER)
OWNERS = re.compile(re.escape(DESIGN) + r"|\bRFC\s*\d+")
TOP_HEADING = re.compile(r"^## (\d+)\. ", re.MULTILINE)
SUB_HEADING = re.compile(r"^### (\d+\.\d+) ", re.MULTILINE)


def design_sections(text: str) -> set[str]:
    return set(TOP_HEADING.findall(text)) | set(SUB_HEADING.findall(text))


def problems_in(text: str, *, is_design: bool, sections: set[str]) -> list[str]:
    """What in ``text`` breaks the rule, one line each (with the line number)."""

    def where(offset: int) -> str:
        return f"line {text.count(chr(10), 0, offset) + 1}"

    found = [
        f"{where(match.start())}: {why}: {match.group(0)!r}"
        for pattern, why in FORBIDDEN
        for match in pattern.finditer(text)
    ]
    for match in SIGN.finditer(text):
        number = match.group(1)
        if is_design:
            owner = DESIGN
        else:
            before = text[max(0, match.start() - ATTRIBUTION_WINDOW) : match.start()]
            owners = OWNERS.findall(before)
            if not owners:
                found.append(f"{where(match.start())}: section sign of no document: {number}")
                continue
            owner = owners[-1]
        if owner == DESIGN and number not in sections:
            found.append(f"{where(match.start())}: {DESIGN} has no section {number}")
    return found


def repository_files() -> list[str]:
    """Paths relative to the root: git's tracked and new unignored files, else a directory walk."""
    try:
        listing = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z", *GIT_SELECTION],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout.decode()
        names = [name for name in listing.split("\0") if name]
    except (OSError, subprocess.SubprocessError):
        names = [
            path.relative_to(ROOT).as_posix()
            for top in SCANNED_WHEN_NO_GIT
            for path in (ROOT / top).rglob("*")
            if path.is_file() and path.suffix in TEXT_SUFFIXES and "__pycache__" not in path.parts
        ]
        names.append("README.md")
    return sorted(name for name in set(names) if name not in LEFT_ALONE)


def test_design_sections_are_numbered_in_order() -> None:
    text = (ROOT / DESIGN).read_text(encoding="utf-8")
    numbers = [int(number) for number in TOP_HEADING.findall(text)]
    assert len(numbers) >= 10
    assert numbers == list(range(1, len(numbers) + 1))
    for sub in SUB_HEADING.findall(text):
        assert sub.split(".")[0] in {str(number) for number in numbers}, sub


def test_no_reference_leaves_the_repository() -> None:
    sections = design_sections((ROOT / DESIGN).read_text(encoding="utf-8"))
    names = repository_files()
    assert DESIGN in names
    assert "tests/unit/test_doc_references.py" in names
    problems = []
    for name in names:
        path = ROOT / name
        if not path.is_file():
            continue  # deleted in the work tree, not yet in the index
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        problems.extend(
            f"{name} {problem}"
            for problem in problems_in(text, is_design=name == DESIGN, sections=sections)
        )
    assert problems == []


def test_checker_catches_each_kind() -> None:
    """The checker must be able to fail: one sample of each mistake, and citations that pass."""
    sign = SECTION_SIGN
    sections = {"3", "5", "6", "6.3"}
    bad = [
        f"(the design {sign}5)",
        f"Design {sign}3: pair p lives on shard ...",
        "the dependency direction of conventions" + ".md",
        "run with `.." + "/shared/anchors/`",
        "the results of /wo" + "rk/shared/bench.sh",
        f"catch-up (design, {sign}5)",
        f"({DESIGN} {sign}9)",
        f"({DESIGN} {sign}6.7)",
    ]
    for sample in bad:
        assert problems_in(sample, is_design=False, sections=sections), sample
    good = [
        f"({DESIGN} {sign}5)",
        f"({DESIGN} {sign}3, {sign}6.3)",
        f"({DESIGN} {sign}5 transition, {sign}6 migration)",
        f"{DESIGN}\n    {sign}6",
        f"(RFC 9110 {sign}13.1.2)",
        'docs/network.md, "Gossip cost"',
    ]
    for sample in good:
        assert problems_in(sample, is_design=False, sections=sections) == [], sample
    assert problems_in(f"see {sign}6.3", is_design=True, sections=sections) == []
    assert problems_in(f"see {sign}14", is_design=True, sections=sections)
