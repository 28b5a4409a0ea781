"""The small TOML writer reads back identically with tomllib."""

from __future__ import annotations

import tomllib

from hypothesis import given, settings
from hypothesis import strategies as st

from walrus_p2p.core import toml_text


@settings(max_examples=200, deadline=None)
@given(st.text(), st.lists(st.text(max_size=5), max_size=4), st.integers(-(2**63), 2**63 - 1))
def test_round_trip(text: str, texts: list[str], number: int) -> None:
    document = (
        toml_text.assignment("a", toml_text.string(text))
        + toml_text.assignment("b", toml_text.string_array(texts))
        + toml_text.assignment("c", toml_text.integer(number))
    )
    assert tomllib.loads(document) == {"a": text, "b": texts, "c": number}


def test_control_characters_and_quotes() -> None:
    text = 'q"\\\x00\x1f\x7f\n\té'
    assert tomllib.loads("a = " + toml_text.string(text))["a"] == text


def test_utc_datetime() -> None:
    rendered = toml_text.utc_datetime(1_796_083_200)
    assert rendered == "2026-12-01T00:00:00Z"
    assert int(tomllib.loads(f"t = {rendered}")["t"].timestamp()) == 1_796_083_200
