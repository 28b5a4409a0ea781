"""Fuzzing of framing and the wire decoder, short and reproducible (docs/testing.md, "Fuzzing").

The generators and oracles are ``walrus_p2p/testing/fuzz.py``, shared with ``bench/fuzz.py``
(the long campaign). Hypothesis runs derandomized with a fixed number of examples, so the same
inputs run every time; a failure shrinks to a small input to add below as a regression case.
The handlers of a running peer are fuzzed in ``tests/node/test_fuzz_handlers.py``.
"""

from __future__ import annotations

import random

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from walrus_p2p.core import wire
from walrus_p2p.errors import RequestTimeoutError, WireError
from walrus_p2p.net.framing import StreamEndedError, encode_header
from walrus_p2p.testing import fuzz

SHORT = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _framing(case: fuzz.FramingCase) -> fuzz.Outcome:
    return trio.run(fuzz.run_framing, case, clock=MockClock(autojump_threshold=0))


@SHORT
@given(
    st.sampled_from(fuzz.ALL_TYPES).flatmap(lambda cls: st.tuples(st.just(cls), fuzz.payloads(cls)))
)
def test_wire_decode_raises_only_wire_errors_and_round_trips(case: tuple[type, bytes]) -> None:
    cls, payload = case
    outcome = fuzz.check_wire(payload, cls)
    assert not outcome.failed, outcome.detail


@SHORT
@given(st.randoms(use_true_random=False))
def test_read_frame_returns_exactly_the_frame_or_a_framing_error(rng: random.Random) -> None:
    outcome = _framing(fuzz.framing_case(fuzz.Fuzzer(rng)))
    assert not outcome.failed, outcome.detail


@pytest.mark.parametrize("cls", fuzz.ALL_TYPES, ids=lambda cls: cls.__name__)
def test_valid_messages_from_every_schema_round_trip(cls: type[wire.Message]) -> None:
    """The schema-driven generator builds messages of every registered type that encode; and
    the fuzz inputs are not all rejected at the decoder (they reach the handlers)."""
    fuzzer = fuzz.Fuzzer(random.Random(cls.type_id))
    decoded = 0
    for _ in range(60):
        data = fuzzer.valid_bytes(cls)
        assert wire.encode(wire.decode(data, cls)) == data
        decoded += fuzz.check_wire(fuzzer.payload(cls), cls).kind == "ok"
    assert decoded >= 6


def test_golden_vectors_cover_every_registered_type() -> None:
    assert {vector.cls for vector in fuzz.golden_vectors()} == set(fuzz.ALL_TYPES)


def test_item_spans_walk_every_item_of_a_golden_vector() -> None:
    for vector in fuzz.golden_vectors():
        spans = fuzz.item_spans(vector.data)
        assert spans[0].start == 0 and spans[0].end == len(vector.data), vector.name
        assert spans[1].major == 0 and spans[1].argument == vector.cls.type_id


def test_mutations_stay_bounded_and_vary() -> None:
    fuzzer = fuzz.Fuzzer(random.Random(7))
    seed = fuzz.golden_vectors()[0].data
    mutated = {fuzzer.mutate(seed) for _ in range(200)}
    assert len(mutated) > 150
    assert max(len(data) for data in mutated) <= 1 << 22


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (fuzz.FramingCase(encode_header(3) + b"abc", (1,), True, None, 3), None),
        (fuzz.FramingCase(encode_header(3) + b"abc", (64,), True, None, 2), WireError),
        (fuzz.FramingCase(encode_header(4) + b"abc", (2,), True, None, 9), StreamEndedError),
        (fuzz.FramingCase(encode_header(4) + b"abc", (2,), False, None, 9), RequestTimeoutError),
        (fuzz.FramingCase(encode_header(3) + b"abc", (2,), True, 5, 9), RequestTimeoutError),
        (fuzz.FramingCase(b"\x00\x00", (1,), True, None, 9), StreamEndedError),
    ],
)
def test_framing_oracle(case: fuzz.FramingCase, expected: type[BaseException] | None) -> None:
    assert fuzz.expected_frame(case)[0] is expected
    assert not _framing(case).failed
