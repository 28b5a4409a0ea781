"""Structure-aware fuzzing of what strangers send a storage peer (docs/testing.md, "Fuzzing").

Three targets, one input generator:

* **framing**: :func:`walrus_p2p.net.framing.read_frame` over a scripted :class:`ByteStream` that
  delivers fuzzed bytes in random chunkings, then ends or stalls. The outcome is predicted from
  the script alone (:func:`expected_frame`), so a frame of the wrong length, a spurious failure or
  any exception other than ``WireError``/``StreamEndedError``/``RequestTimeoutError`` is found;
* **wire**: :func:`walrus_p2p.core.wire.decode` of every registered type: only ``WireError`` may
  escape, and ``encode(decode(b)) == b`` whenever ``b`` decodes (:func:`check_wire`);
* **handlers**: every request/reply handler a running storage peer set on its host (the storage
  protocol's :meth:`~walrus_p2p.node.router.Router.dispatch`, one target per request type the
  router serves, and the epochs protocol) and every gossip topic validator, called directly with
  fuzzed payloads and remote peer ids (:func:`handler_targets`, :func:`run_rpc`,
  :func:`run_validator`).

Inputs start from the golden vectors (``tests/vectors/wire.json``, built by
:mod:`walrus_p2p.testing.wire_vectors`) and from messages built from each type's wire schema
(:class:`Fuzzer`): valid messages whose fields are drawn to be well formed but hostile (unknown or
stored blob ids, shard indices past n, far-future epochs, bogus or genuine signatures of a
stranger's key, nested records and consensus messages), and mutations of valid encodings that keep
the structure partly valid (one CBOR item replaced by a value of the wrong type, a boundary
integer, an empty or oversized string or array, a non-canonical head, a nesting bomb, a declared
length beyond the input; another type id; truncation, extension, byte flips, splices).

:class:`Fuzzer` draws from a :class:`random.Random`, so the bench (``bench/fuzz.py``) and the test
suite (``tests/unit/test_fuzz.py``, ``tests/node/test_fuzz_handlers.py``) share it, and a seed
reproduces a run; :func:`payloads` wraps it as a hypothesis strategy.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from hypothesis import strategies as st

from walrus_p2p.core import (
    blob_messages,
    consensus,
    economy_messages,
    epochs,
    migration,
    records,
    wire,
)
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.metadata import compute_blob_id
from walrus_p2p.errors import RequestTimeoutError, WalrusError, WireError
from walrus_p2p.net import rpc
from walrus_p2p.net.framing import (
    HEADER_SIZE,
    READ_CHUNK,
    StreamEndedError,
    encode_header,
    read_frame,
)
from walrus_p2p.net.gossip import GossipMessage
from walrus_p2p.net.names import protocol_id, topic
from walrus_p2p.node.economy import CERTIFICATES_TOPIC
from walrus_p2p.node.epochs import EPOCHS_PROTOCOL, EPOCHS_TOPIC, EpochOptions
from walrus_p2p.node.migration import SHARDS_TOPIC
from walrus_p2p.node.peer import StoragePeerService
from walrus_p2p.node.protocol import RECORDS_TOPIC
from walrus_p2p.node.ratelimit import Rate, RequestRates
from walrus_p2p.testing.network import (
    NetworkOptions,
    TestNetwork,
    open_network,
    open_test_client,
)
from walrus_p2p.testing.wire_vectors import build_vectors
from walrus_p2p.types import PeerId

# --------------------------------------------------------------------------------------------
# Seeds: the golden vectors.


@dataclass(frozen=True, slots=True)
class Vector:
    name: str
    cls: type[wire.Message]
    data: bytes


@functools.cache
def golden_vectors() -> tuple[Vector, ...]:
    """The golden vectors (the bytes of ``tests/vectors/wire.json``; ``test_wire`` keeps them
    equal), with their message classes."""
    registry = wire.registered_messages()
    document = build_vectors()
    vectors = document["vectors"]
    assert isinstance(vectors, list)
    return tuple(
        Vector(item["name"], registry[item["type_id"]], bytes.fromhex(item["hex"]))
        for item in vectors
    )


@functools.cache
def golden_by_class() -> dict[type[wire.Message], tuple[bytes, ...]]:
    found: dict[type[wire.Message], list[bytes]] = {}
    for vector in golden_vectors():
        found.setdefault(vector.cls, []).append(vector.data)
    return {cls: tuple(items) for cls, items in found.items()}


ALL_TYPES: tuple[type[wire.Message], ...] = tuple(wire.registered_messages().values())

BLOB_RECORD_TYPES: tuple[type[wire.Message], ...] = records.BLOB_RECORD_TYPES

NESTED: dict[str, tuple[type[wire.Message], ...]] = {
    "PostBlobRecordsRequest.records[]": BLOB_RECORD_TYPES,
    "GetBlobRecordsReply.records[]": BLOB_RECORD_TYPES,
    "BlobRecordsBatch.records[]": BLOB_RECORD_TYPES,
    "ListBlobRecordsReply.entries[].records[]": BLOB_RECORD_TYPES,
    "EpochMessagesRequest.messages[]": (consensus.Proposal, consensus.Vote, records.EpochRecord),
    "EpochMessagesReply.messages[]": (consensus.Proposal, consensus.Vote, records.EpochRecord),
    "GetEpochRecordsReply.records[]": (records.EpochRecord,),
}
"""Byte-string fields that carry encoded messages, by schema path: filled with valid encodings
of these types most of the time, so the handler's inner decoding and checks are reached."""

OWNER_SIGNED: dict[type[wire.Message], tuple[str, str]] = {
    records.BlobRegister: ("owner", records.BLOB_REGISTER_CONTEXT),
    records.BlobExtend: ("owner", records.BLOB_EXTEND_CONTEXT),
    records.BlobDelete: ("owner", records.BLOB_DELETE_CONTEXT),
    records.Candidacy: ("public_key", records.CANDIDACY_CONTEXT),
}
"""Records signed by the key they carry: the fuzzer signs some with a stranger's key for real,
so they pass signature checks and reach what comes after them."""

BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58_TABLE = bytes(ord(BASE58[i % len(BASE58)]) for i in range(256))
_ADDRESS_TABLE = bytes(ord("/ip4/127.0.0.1/tcp/0p2dns_"[i % 26]) for i in range(256))
REASONS = ("INTERNAL", "BUSY", "A", "WIRE_MALFORMED", "X" * 64, "SLIVER_NOT_FOUND")


@dataclass(frozen=True, slots=True)
class Hints:
    """What the fuzzed peer knows, so that valid messages reach its handlers' deeper checks."""

    network_id: bytes = bytes(32)
    blob_ids: tuple[bytes, ...] = ()
    """Blobs the peer stores (and their records)."""
    public_keys: tuple[bytes, ...] = ()
    peer_ids: tuple[PeerId, ...] = ()
    """Committee members: remote ids the peer knows."""
    epoch: int = 0
    n_shards: int = 10
    signer_seed: bytes = bytes(range(32))
    """The stranger whose key signs owner records for real."""


def _u64_edges() -> tuple[int, ...]:
    return (0, 1, 23, 24, 255, 256, 65535, 65536, (1 << 32) - 1, 1 << 32, (1 << 63), (1 << 64) - 1)


INTERESTING_BYTES = (
    0x00, 0x01, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1F, 0x20, 0x3B, 0x40, 0x58, 0x5B, 0x5F,
    0x60, 0x7B, 0x7F, 0x80, 0x98, 0x9B, 0x9F, 0xA0, 0xBF, 0xC0, 0xD8, 0xF4, 0xF5, 0xF6, 0xF7,
    0xF8, 0xF9, 0xFA, 0xFB, 0xFF,
)  # fmt: skip
"""CBOR initial bytes at the edges of each major type (heads, indefinite lengths, floats)."""


@dataclass(frozen=True, slots=True)
class Span:
    """One CBOR data item inside an encoding: ``data[start:end]``, its head ``data[start:body]``."""

    start: int
    body: int
    end: int
    major: int
    argument: int


def _read_head(data: bytes, position: int) -> tuple[int, int, int]:
    """(major type, argument, position after the head); ``ValueError`` for a head this fuzzer
    does not walk into (indefinite lengths, floats, truncation)."""
    initial = data[position]
    major, info = initial >> 5, initial & 0x1F
    if info < 24:
        return major, info, position + 1
    if info > 27 or major == 7:
        raise ValueError("not a definite head")
    width = 1 << (info - 24)
    if position + 1 + width > len(data):
        raise ValueError("truncated head")
    return (
        major,
        int.from_bytes(data[position + 1 : position + 1 + width], "big"),
        position + 1 + width,
    )


def item_spans(data: bytes, *, max_items: int = 4096) -> list[Span]:
    """The items of a definite-length CBOR encoding, outermost first (best effort: stops at the
    first head it cannot walk; at most ``max_items``)."""
    spans: list[Span] = []
    stack: list[list[int]] = []  # [span index of an open array, items it still expects]
    position = 0
    top_left = 1
    try:
        while len(spans) < max_items:
            while stack and stack[-1][1] == 0:
                index = stack.pop()[0]
                spans[index] = dataclasses.replace(spans[index], end=position)
            if stack:
                stack[-1][1] -= 1
            elif top_left:
                top_left -= 1
            else:
                break
            major, argument, body = _read_head(data, position)
            end = body + argument if major in (2, 3) else body
            if end > len(data):
                break
            spans.append(Span(position, body, end, major, argument))
            if major == 4:
                stack.append([len(spans) - 1, argument])
            position = end
    except (ValueError, IndexError):
        pass
    still_open = {index for index, _ in stack}
    return [span for index, span in enumerate(spans) if index not in still_open]


def _head(major: int, argument: int, width: int | None = None) -> bytes:
    """A CBOR head, in shortest form unless ``width`` (1, 2, 4, 8 bytes) forces a longer one."""
    argument = min(argument, (1 << 64) - 1)
    if width is None:
        if argument < 24:
            return bytes([major << 5 | argument])
        width = (
            1 if argument < 1 << 8 else 2 if argument < 1 << 16 else 4 if argument < 1 << 32 else 8
        )
    info = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    return bytes([major << 5 | info]) + argument.to_bytes(width, "big")


class Fuzzer:
    """Fuzzed inputs from one :class:`random.Random`: valid messages built from the schemas,
    and mutations of valid encodings (the golden vectors and those messages)."""

    def __init__(
        self,
        rng: random.Random,
        hints: Hints | None = None,
        limits: wire.WireLimits = wire.DEFAULT_LIMITS,
    ) -> None:
        self.rng = rng
        self.hints = hints or Hints()
        self.limits = limits
        self._signer = Identity.from_seed(self.hints.signer_seed)
        self._signer_key = self._signer.public_key.raw
        self._signer_id = self._signer.peer_id
        self._seeds: dict[type[wire.Message], list[bytes]] = {}
        self._strangers: list[PeerId] = []

    # -- remote peer ids ---------------------------------------------------------------

    def stranger(self) -> PeerId:
        """A fresh peer id nobody knows: strangers have as many identities as they like."""
        return Identity.from_seed(self.rng.randbytes(32)).peer_id

    def remote(self) -> PeerId:
        """The remote id of one request: a fresh stranger, a returning one, or a member."""
        roll = self.rng.random()
        if roll < 0.3 or (roll < 0.6 and not self.hints.peer_ids):
            fresh = self.stranger()
            if len(self._strangers) < 64:
                self._strangers.append(fresh)
            return fresh
        if roll < 0.6:
            return self.rng.choice(self.hints.peer_ids)
        if not self._strangers:
            self._strangers.append(self.stranger())
        return self.rng.choice(self._strangers)

    # -- values from the schema --------------------------------------------------------

    def _int(self, spec: wire.IntSpec, path: str) -> int:
        rng, low, high = self.rng, spec.min, spec.max
        roll = rng.random()
        hints = self.hints
        if roll < 0.25:
            candidates = [low, high, low + 1, high - 1, *_u64_edges()]
        elif roll < 0.5:
            candidates = [hints.epoch, hints.epoch + 1, hints.epoch + 2, hints.epoch - 1]
            candidates += [hints.n_shards - 1, hints.n_shards, 2**40]
        elif roll < 0.75:
            candidates = [rng.randint(0, min(high, 3 * hints.n_shards + 4))]
        else:
            candidates = [rng.randint(low, high)]
        fitting = [value for value in candidates if low <= value <= high]
        return rng.choice(fitting) if fitting else rng.randint(low, high)

    def _exact_bytes(self, length: int, path: str) -> bytes:
        rng, hints = self.rng, self.hints
        roll = rng.random()
        name = path.rsplit(".", 1)[-1].rstrip("?[]")
        if length == 32:
            if name == "network_id" and roll < 0.85:
                return hints.network_id
            if name in ("owner", "public_key") and roll < 0.6:
                pool = [self._signer_key, *hints.public_keys]
                return rng.choice(pool)
            if roll < 0.5 and hints.blob_ids:
                return rng.choice(hints.blob_ids)
            if roll < 0.65:
                return rng.choice((bytes(32), b"\xff" * 32, wire.PING_BLOB_ID))
        elif roll < 0.2:
            return bytes(length)
        return rng.randbytes(length)

    def _bytes(self, spec: wire.BytesSpec, path: str, depth: int) -> bytes:
        rng = self.rng
        cap = spec.max_length
        if isinstance(cap, str):
            cap = int(getattr(self.limits, cap))
        if spec.min_length == cap:
            return self._exact_bytes(cap, path)
        nested = NESTED.get(path)
        if nested and depth < 3 and rng.random() < 0.8:
            inner = self.valid_bytes(rng.choice(nested), depth=depth + 1)
            if spec.min_length <= len(inner) <= cap:
                return inner
        roll = rng.random()
        if roll < 0.01 and cap >= wire.PARTS_MIN_TAIL:
            length = rng.randint(wire.PARTS_MIN_TAIL, min(cap, 3 * wire.PARTS_MIN_TAIL))
        elif roll < 0.05 and cap <= 1 << 16:
            length = cap
        elif roll < 0.1:
            length = spec.min_length
        else:
            length = rng.randint(spec.min_length, max(spec.min_length, min(cap, 300)))
        return rng.randbytes(length)

    def _text(self, spec: wire.TextSpec, path: str) -> str:
        rng = self.rng
        if spec.pattern == wire.ERROR_REASON_PATTERN:
            return rng.choice(REASONS)
        if spec.pattern is not None:  # base58 peer ids
            if self.hints.peer_ids and rng.random() < 0.6:
                return rng.choice(self.hints.peer_ids)
            if rng.random() < 0.3:
                return self._signer_id
            return rng.randbytes(rng.randint(1, spec.max_length)).translate(_BASE58_TABLE).decode()
        roll = rng.random()
        if roll < 0.1:
            return "x" * spec.max_length
        if roll < 0.2:
            return "".join(chr(rng.randint(0x80, 0x10FFF)) for _ in range(rng.randint(1, 8)))
        length = rng.randint(0, min(64, spec.max_length))
        return rng.randbytes(length).translate(_ADDRESS_TABLE).decode()

    def _list(self, spec: wire.ListSpec, path: str, depth: int) -> tuple[Any, ...]:
        rng = self.rng
        roll = rng.random()
        simple = not isinstance(spec.item, wire.RecordSpec | wire.ListSpec | wire.TextSpec)
        if roll < (0.03 if simple else 0.002):
            length = spec.max_length
        elif roll < 0.1:
            length = spec.min_length
        else:
            length = rng.randint(spec.min_length, max(spec.min_length, min(spec.max_length, 6)))
        item_path = path + "[]"
        if spec.strictly_increasing and isinstance(spec.item, wire.IntSpec):
            low, high = spec.item.min, spec.item.max
            if high - low < 1 << 16:
                length = min(length, high - low + 1)
                return tuple(sorted(rng.sample(range(low, high + 1), length)))
        items = [self.value(spec.item, item_path, depth) for _ in range(length)]
        if not spec.strictly_increasing:
            return tuple(items)
        keyed: list[tuple[Any, Any]] = [
            (spec.item.to_wire(item, None, item_path), item) for item in items
        ]
        try:
            keyed.sort(key=lambda pair: pair[0])
        except TypeError:
            return ()
        return tuple(
            item
            for index, (key, item) in enumerate(keyed)
            if not index or keyed[index - 1][0] != key
        )

    def value(self, spec: wire.FieldSpec, path: str, depth: int = 0) -> Any:
        """A value of ``spec`` at schema ``path`` (``Type.field[].field``)."""
        rng = self.rng
        if isinstance(spec, wire.IntSpec):
            return self._int(spec, path)
        if isinstance(spec, wire.BytesSpec):
            return self._bytes(spec, path, depth)
        if isinstance(spec, wire.TextSpec):
            return self._text(spec, path)
        if isinstance(spec, wire.BoolSpec):
            return rng.random() < 0.5
        if isinstance(spec, wire.EnumSpec):
            return rng.choice(list(spec.enum_type))
        if isinstance(spec, wire.OptionalSpec):
            return None if rng.random() < 0.3 else self.value(spec.inner, path + "?", depth)
        if isinstance(spec, wire.ListSpec):
            return self._list(spec, path, depth)
        if isinstance(spec, wire.RecordSpec):
            return self._record(spec, path or spec.record_type.__name__, depth)
        raise TypeError(f"no generator for {spec!r}")

    def _record(self, spec: wire.RecordSpec, path: str, depth: int) -> Any:
        last: Exception | None = None
        for _ in range(4):
            values = [self.value(inner, f"{path}.{name}", depth) for name, inner in spec.fields]
            try:
                built = spec.record_type(*values)
            except Exception as error:  # a __post_init__ refusing the values: draw again
                last = error
                continue
            return self._signed(built)
        golden = golden_by_class().get(spec.record_type)
        if golden:
            return wire.decode(self.rng.choice(golden), spec.record_type)
        raise ValueError(f"cannot build a {spec.record_type.__name__}: {last}")

    def _signed(self, built: Any) -> Any:
        """Owner records signed for real by the stranger's key (half of them)."""
        signing = OWNER_SIGNED.get(type(built))
        if signing is None or self.rng.random() < 0.5:
            return built
        key_field, context = signing
        body = dataclasses.replace(built.body, **{key_field: self._signer_key})
        try:
            signature = self._signer.sign(context, wire.signing_bytes(body))
        except WireError:
            return built
        return dataclasses.replace(built, body=body, signature=signature)

    def message(self, cls: type[wire.Message], *, depth: int = 0) -> wire.Message:
        """A valid message of ``cls`` (one that encodes), hostile in its field values."""
        built = self._record(wire.record_spec(cls), cls.__name__, depth)
        assert isinstance(built, cls)
        if isinstance(built, wire.StoreMetadataRequest) and self.rng.random() < 0.5:
            # Metadata for this network's n whose blob id matches: past the first checks.
            hashes = (built.metadata.hashes * self.hints.n_shards)[: self.hints.n_shards]
            metadata = dataclasses.replace(built.metadata, hashes=hashes)
            try:
                return wire.StoreMetadataRequest(compute_blob_id(metadata), metadata)
            except WalrusError:
                return built
        return built

    def valid_bytes(self, cls: type[wire.Message], *, depth: int = 0) -> bytes:
        """The canonical encoding of :meth:`message` (a golden vector if that fails to encode)."""
        try:
            return wire.encode(self.message(cls, depth=depth), limits=self.limits)
        except (WireError, ValueError):
            golden = golden_by_class().get(cls)
            if not golden:
                raise
            return self.rng.choice(golden)

    # -- mutations ---------------------------------------------------------------------

    def hostile_item(self) -> bytes:
        """One CBOR item a schema does not expect: wrong type, edge value, bad head, bomb."""
        rng = self.rng
        roll = rng.randrange(16)
        if roll == 0:
            return _head(0, rng.choice(_u64_edges()))
        if roll == 1:
            return _head(1, rng.choice(_u64_edges()))
        if roll == 2:
            return rng.choice((b"\x40", b"\x60", b"\x80", b"\xf4", b"\xf5", b"\xf6"))
        if roll == 3:  # byte or text strings of lengths near the usual caps
            length = rng.choice((1, 31, 33, 63, 65, 1000, 70_000))
            major = rng.choice((2, 3))
            return _head(major, length) + (b"a" * length)
        if roll == 4:  # declared length beyond the input
            return _head(rng.choice((2, 3, 4)), rng.choice((1 << 20, (1 << 32) - 1, (1 << 64) - 1)))
        if roll == 5:  # non-canonical heads
            major = rng.choice((0, 1, 2, 3, 4))
            argument = rng.randrange(24)
            body = (
                b"\x00" * argument if major in (2, 3) else b"\x00" * argument if major == 4 else b""
            )
            return _head(major, argument, rng.choice((1, 2, 4, 8))) + body
        if roll == 6:  # floats, undefined, simple values, tags, maps, indefinite lengths
            return rng.choice(
                (
                    b"\xf7", b"\xf0", b"\xf8\x20", b"\xf9\x7e\x00", b"\xfa\x00\x00\x00\x00",
                    b"\xfb" + bytes(8), b"\xc1\x00", b"\xd8\x18\x40", b"\xa1\x00\x00",
                    b"\xa0", b"\x5f\x41\x00\xff", b"\x9f\xff", b"\x7f\x61a\xff", b"\xff",
                    b"\x1c", b"\x3f", b"\x5c",
                )
            )  # fmt: skip
        if roll == 7:  # nesting bomb
            depth = rng.choice((8, 33, 300, 5000))
            return b"\x81" * depth + b"\x00"
        if roll == 8:  # an array of many items
            count = rng.choice((17, 257, 1000, 65_536))
            return _head(4, count) + b"\x00" * min(count, 70_000)
        if roll == 9:  # invalid UTF-8 text
            return rng.choice((b"\x62\xff\xfe", b"\x63\xed\xa0\x80", b"\x61\x80"))
        if roll == 10:  # a record of the wrong arity
            return _head(4, rng.randrange(8)) + b"\x00" * 7
        if roll == 11:  # a whole other message
            return rng.choice(golden_vectors()).data
        if roll == 12:
            return _head(2, 32) + rng.randbytes(32)
        if roll == 13:
            return _head(2, 64) + rng.randbytes(64)
        if roll == 14:
            return _head(0, rng.randrange(300))
        return rng.randbytes(rng.randint(1, 9))

    def mutate(self, data: bytes, rounds: int | None = None) -> bytes:
        """``data`` changed by one to three structure-aware or byte-level mutations."""
        rng = self.rng
        out = bytes(data)
        for _ in range(rounds if rounds is not None else rng.choice((1, 1, 1, 2, 3))):
            out = self._mutate_once(out)
            if len(out) > 1 << 22:
                out = out[: 1 << 22]
        return out

    def _mutate_once(self, data: bytes) -> bytes:
        rng = self.rng
        roll = rng.randrange(13)
        spans = item_spans(data) if roll < 6 else []
        if roll < 6 and len(spans) > 1:
            span = rng.choice(spans[1:])
            if roll <= 2:  # replace one item
                return data[: span.start] + self.hostile_item() + data[span.end :]
            if roll == 3:  # its head claims another length or value
                head = _head(
                    span.major if span.major < 7 else 0,
                    rng.choice((0, 1, span.argument + 1, max(0, span.argument - 1), (1 << 32) - 1)),
                )
                return data[: span.start] + head + data[span.body :]
            if roll == 4 and span.major < 7:  # the same value with a non-canonical head
                width = rng.choice((1, 2, 4, 8))
                if span.argument < 1 << (8 * width):
                    head = _head(span.major, span.argument, width)
                    return data[: span.start] + head + data[span.body :]
            # duplicate or drop one item (field count off by one, wrong list length)
            if rng.random() < 0.5:
                return data[: span.end] + data[span.start : span.end] + data[span.end :]
            return data[: span.start] + data[span.end :]
        if roll == 6 and len(spans := item_spans(data, max_items=2)) == 2:
            # another type id
            span = spans[1]
            new_id = rng.choice((*wire.registered_messages(), 0, 4, 255, 65_535, (1 << 64) - 1))
            return data[: span.start] + _head(0, new_id) + data[span.end :]
        if roll == 7 and data:  # truncate
            return data[: rng.randrange(len(data))]
        if roll == 8:  # extend
            tail = rng.choice((rng.randbytes(rng.randint(1, 16)), data, b"\x00"))
            return data + tail
        if roll == 9 and data:  # flip bits
            buffer = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                buffer[rng.randrange(len(buffer))] ^= 1 << rng.randrange(8)
            return bytes(buffer)
        if roll == 10 and data:  # interesting byte
            buffer = bytearray(data)
            buffer[rng.randrange(len(buffer))] = rng.choice(INTERESTING_BYTES)
            return bytes(buffer)
        if roll == 11:  # splice with another vector
            other = rng.choice(golden_vectors()).data
            cut = rng.randrange(len(data) + 1)
            return data[:cut] + other[rng.randrange(len(other) + 1) :]
        if data:  # delete or insert a run of bytes
            start = rng.randrange(len(data))
            if rng.random() < 0.5:
                return data[:start] + data[start + rng.randint(1, 16) :]
            return data[:start] + rng.randbytes(rng.randint(1, 16)) + data[start:]
        return rng.randbytes(rng.randint(1, 32))

    def _seed(self, cls: type[wire.Message]) -> bytes:
        """A valid encoding to mutate: a fresh one a quarter of the time, else one of the last
        few (building messages costs more than mutating them)."""
        pool = self._seeds.setdefault(cls, [])
        if len(pool) < 8 or self.rng.random() < 0.25:
            fresh = self.valid_bytes(cls)
            if len(pool) < 32:
                pool.append(fresh)
            else:
                pool[self.rng.randrange(32)] = fresh
            return fresh
        return self.rng.choice(pool)

    def payload(self, cls: type[wire.Message]) -> bytes:
        """One fuzzed payload meant as a ``cls``: valid (40%), mutated (55%) or noise (5%)."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.4:
            return self.valid_bytes(cls)
        if roll < 0.95:
            golden = golden_by_class().get(cls, ())
            seed = rng.choice(golden) if golden and rng.random() < 0.3 else self._seed(cls)
            return self.mutate(seed)
        if roll < 0.975:
            return self.mutate(rng.choice(golden_vectors()).data)
        return rng.randbytes(rng.randint(0, 64))


def payloads(cls: type[wire.Message], hints: Hints | None = None) -> st.SearchStrategy[bytes]:
    """A hypothesis strategy of fuzzed payloads for ``cls`` (shrinks through its random draws)."""
    return st.randoms(use_true_random=False).map(lambda rng: Fuzzer(rng, hints).payload(cls))


# --------------------------------------------------------------------------------------------
# Outcomes.


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one input did: ``ok``, ``refused`` (a WalrusError with a proper reason), or one of
    the failures ``internal`` (reason INTERNAL), ``crash`` (any other exception, or a reply that
    does not decode), ``hang`` (past the deadline)."""

    kind: str
    reason: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.kind in FAILURES


FAILURES = frozenset({"internal", "crash", "hang"})
_REASON = re.compile(wire.ERROR_REASON_PATTERN)


def _refusal(error: WalrusError) -> Outcome:
    reason = error.reason
    if reason == WalrusError.reason or len(reason) > 64 or not _REASON.fullmatch(reason):
        return Outcome("internal", "INTERNAL", f"{type(error).__name__}: {error}")
    return Outcome("refused", reason)


def _crash(error: BaseException) -> Outcome:
    return Outcome("crash", type(error).__name__, "".join(traceback.format_exception(error)))


# --------------------------------------------------------------------------------------------
# Target: framing.


@dataclass(frozen=True, slots=True)
class FramingCase:
    """What a scripted stream delivers: ``data`` in reads of at most ``chunks`` (cycled), then
    end of stream (``eof``) or a stall; with ``stall_at``, a stall once that many bytes were
    delivered."""

    data: bytes
    chunks: tuple[int, ...]
    eof: bool
    stall_at: int | None
    max_size: int
    timeout: float = 5.0


class ScriptedStream:
    """A :class:`~walrus_p2p.net.framing.ByteStream` playing a :class:`FramingCase`."""

    def __init__(self, case: FramingCase) -> None:
        self.case = case
        self.position = 0
        self._reads = 0

    async def read(self, max_bytes: int) -> bytes:
        case = self.case
        if not 1 <= max_bytes <= READ_CHUNK:
            raise AssertionError(f"read({max_bytes}) outside 1..{READ_CHUNK}")
        await trio.lowlevel.checkpoint()
        limit = _delivered(case)
        if self.position >= limit:
            if limit == len(case.data) and case.eof:
                return b""
            await trio.sleep_forever()
        chunk = case.chunks[self._reads % len(case.chunks)]
        self._reads += 1
        size = min(max_bytes, chunk, limit - self.position)
        piece = case.data[self.position : self.position + size]
        self.position += size
        return piece

    async def write(self, data: bytes | memoryview) -> None:
        raise AssertionError("framing reads only")


def _delivered(case: FramingCase) -> int:
    """Bytes the stream delivers before it ends or stalls."""
    if case.stall_at is None:
        return len(case.data)
    return min(case.stall_at, len(case.data))


def expected_frame(case: FramingCase) -> tuple[type[BaseException] | None, bytes]:
    """The exception type :func:`read_frame` must raise on ``case`` (None: it returns), and the
    frame it must return."""
    available = _delivered(case)
    ends = case.eof and available == len(case.data)
    missing: type[BaseException] = StreamEndedError if ends else RequestTimeoutError
    if available < HEADER_SIZE:
        return missing, b""
    size = int.from_bytes(case.data[:HEADER_SIZE], "big")
    if size > case.max_size:
        return WireError, b""
    if available < HEADER_SIZE + size:
        return missing, b""
    return None, case.data[HEADER_SIZE : HEADER_SIZE + size]


def framing_case(fuzzer: Fuzzer) -> FramingCase:
    rng = fuzzer.rng
    body = (
        fuzzer.payload(rng.choice(ALL_TYPES))
        if rng.random() < 0.7
        else rng.randbytes(rng.randint(0, 64))
    )
    roll = rng.random()
    if roll < 0.5:
        declared = len(body)
    elif roll < 0.7:
        declared = max(0, len(body) + rng.randint(-8, 8))
    elif roll < 0.8:
        declared = rng.choice(((1 << 32) - 1, 1 << 31, 1 << 24, 4 << 20, 0))
    else:
        declared = rng.randrange(1 << 32)
    data = encode_header(declared) + body
    if rng.random() < 0.1:
        data = data[: rng.randrange(len(data) + 1)]
    elif rng.random() < 0.1:
        data = data + rng.randbytes(rng.randint(1, 8))
    # Tiny reads are the interesting ones for the header, costly for a long body.
    sizes = (1, 2, 3, 5, 7) if len(data) < 300 or rng.random() < 0.05 else (64, 1000, READ_CHUNK)
    chunks = tuple(rng.choice(sizes) for _ in range(rng.randint(1, 4)))
    stall_at = rng.randrange(len(data) + 2) if rng.random() < 0.2 else None
    max_size = rng.choice(
        (len(body), len(body) + 1, max(0, len(body) - 1), 4 << 20, (1 << 32) - 1, 0)
    )
    return FramingCase(data, chunks, rng.random() < 0.8, stall_at, max_size)


async def run_framing(case: FramingCase) -> Outcome:
    """Read one frame from ``case`` and compare with :func:`expected_frame` (a mismatch is a
    ``crash``). Run it under a ``MockClock`` with autojump so that stalls cost no time."""
    expected, frame = expected_frame(case)
    stream = ScriptedStream(case)
    try:
        got = await read_frame(stream, max_size=case.max_size, timeout=case.timeout)
    except (WireError, RequestTimeoutError) as error:
        if expected is None or type(error) is not expected:
            return Outcome(
                "crash", "WRONG_ERROR", f"{type(error).__name__}: {error}; expected {expected}"
            )
        return Outcome("refused", type(error).__name__)
    except Exception as error:
        return _crash(error)
    if expected is not None:
        return Outcome(
            "crash", "UNEXPECTED_FRAME", f"{len(got)} bytes; expected {expected.__name__}"
        )
    if bytes(got) != frame:
        return Outcome("crash", "WRONG_FRAME", f"{len(got)} bytes, expected {len(frame)}")
    try:
        rpc.decode_reply(got)  # the client side parses the same frames as replies
    except WalrusError:
        pass
    except Exception as error:
        return _crash(error)
    return Outcome("ok", "FRAME")


# --------------------------------------------------------------------------------------------
# Target: wire.


def check_wire(
    data: bytes, cls: type[wire.Message], limits: wire.WireLimits = wire.DEFAULT_LIMITS
) -> Outcome:
    """Decode ``data`` as ``cls`` and as any registered type; only WireError may escape, and what
    decodes must re-encode to exactly ``data``."""
    results = []
    for expected in (cls, ALL_TYPES):
        try:
            message = wire.decode(data, expected, limits=limits)
        except WireError as error:
            results.append(Outcome("refused", error.reason))
            continue
        except Exception as error:
            return _crash(error)
        try:
            again = wire.encode(message, limits=limits)
        except Exception as error:
            return _crash(error)
        if again != data:
            return Outcome("crash", "NOT_CANONICAL", f"re-encodes to {again.hex()}")
        results.append(Outcome("ok", type(message).__name__))
    if len(data) >= wire.PARTS_MIN_TAIL:
        try:
            viewed = wire.decode(bytearray(data), cls, limits=limits, view_tail=True)
        except WireError:
            pass
        except Exception as error:
            return _crash(error)
        else:
            head, tail = wire.encode_parts(viewed, limits=limits)
            if head + bytes(tail) != data:
                return Outcome("crash", "NOT_CANONICAL", "view_tail re-encodes differently")
    if results[0].kind != results[1].kind and results[0].kind == "ok":
        return Outcome("crash", "DECODE_DISAGREES", "decodes as its type but not among all types")
    return results[0]


# --------------------------------------------------------------------------------------------
# Target: the handlers of a running storage peer.

RpcCall = Callable[[bytes, PeerId], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class HandlerTarget:
    """One handler of a running peer and the message types its fuzzed payloads are made from."""

    name: str
    types: tuple[type[wire.Message], ...]
    rpc: RpcCall | None = None
    validator: Callable[[GossipMessage], bool] | None = None
    protocol: str = ""
    """The protocol id of a request/reply handler."""
    topic: str = ""


PROTOCOL_TYPES: dict[str, tuple[type[wire.Message], ...]] = {
    EPOCHS_PROTOCOL: (epochs.EpochMessagesRequest,),
}
"""Request types of the protocols other than the storage protocol, by protocol name."""

TOPIC_TYPES: dict[str, tuple[type[wire.Message], ...]] = {
    RECORDS_TOPIC: (blob_messages.BlobRecordsBatch,),
    EPOCHS_TOPIC: (records.Candidacy, records.EpochRecord),
    SHARDS_TOPIC: (migration.ShardsInPlace,),
    CERTIFICATES_TOPIC: (economy_messages.CertificatesBatch,),
}
"""Message types of each gossip topic, by topic name."""


def handler_targets(service: StoragePeerService) -> list[HandlerTarget]:
    """Every request handler and gossip validator ``service`` serves strangers; a protocol or a
    topic missing from :data:`PROTOCOL_TYPES`/:data:`TOPIC_TYPES` raises, so a new one cannot
    go unfuzzed."""
    host = service.host
    network = service.genesis.network_id_text
    targets: list[HandlerTarget] = []
    for protocol, handler in sorted(host.handlers.items()):
        if protocol == service.protocol:
            targets.extend(
                HandlerTarget(f"storage/{cls.__name__}", (cls,), rpc=handler, protocol=protocol)
                for cls in service.router.request_types
            )
            continue
        names = [name for name in PROTOCOL_TYPES if protocol_id(network, name) == protocol]
        if not names:
            raise KeyError(f"protocol {protocol} has no fuzz types in PROTOCOL_TYPES")
        targets.append(
            HandlerTarget(
                f"{names[0]}/{PROTOCOL_TYPES[names[0]][0].__name__}",
                PROTOCOL_TYPES[names[0]],
                rpc=handler,
                protocol=protocol,
            )
        )
    for name_topic, validator in sorted(service.context.gossip.validators.items()):
        names = [name for name in TOPIC_TYPES if topic(network, name) == name_topic]
        if not names:
            raise KeyError(f"gossip topic {name_topic} has no fuzz types in TOPIC_TYPES")
        targets.append(
            HandlerTarget(
                f"gossip/{names[0]}", TOPIC_TYPES[names[0]], validator=validator, topic=name_topic
            )
        )
    return targets


def peer_hints(service: StoragePeerService, blob_ids: tuple[bytes, ...] = ()) -> Hints:
    committee = service.committee
    return Hints(
        network_id=service.genesis.network_id,
        blob_ids=blob_ids,
        public_keys=tuple(member.public_key for member in committee.members),
        peer_ids=tuple(committee.peer_ids),
        epoch=service.epoch,
        n_shards=service.genesis.n_shards,
    )


def raise_rates(service: StoragePeerService) -> None:
    """Make the router's per-peer control-plane rates unreachable for this peer, so fuzzed
    requests reach the handlers instead of ``RATE_LIMITED`` (the fuzzed peer only; the
    production defaults stay as they are)."""
    service.router.rates = RequestRates(
        {kind: Rate(1e9, 1e9) for kind in service.router.rates.rates},
        max_entries=service.router.rates.max_entries,
    )


async def run_rpc(call: RpcCall, payload: bytes, remote: PeerId, deadline: float = 5.0) -> Outcome:
    """One request through a request/reply handler, as :func:`walrus_p2p.net.rpc.serve_stream`
    would run it, classified."""
    started = time.monotonic()
    reply: bytes | None = None
    with trio.move_on_after(deadline):
        try:
            reply = await call(payload, remote)
        except WalrusError as error:
            outcome = _refusal(error)
            if time.monotonic() - started > deadline:
                return Outcome("hang", "HANG", f"{time.monotonic() - started:.1f}s")
            return outcome
        except Exception as error:
            return _crash(error)
    elapsed = time.monotonic() - started
    if reply is None or elapsed > deadline:
        return Outcome("hang", "HANG", f"{elapsed:.1f}s")
    if not isinstance(reply, bytes | bytearray):
        return Outcome("crash", "BAD_REPLY", f"handler returned {type(reply).__name__}")
    try:
        decoded = wire.decode(reply, ALL_TYPES)
    except WireError as error:
        return Outcome("crash", "BAD_REPLY", f"reply does not decode: {error}")
    return Outcome("ok", type(decoded).__name__)


def run_validator(
    target: HandlerTarget, payload: bytes, remote: PeerId, seqno: int, deadline: float = 5.0
) -> Outcome:
    """One gossip message through a topic validator (synchronous, as libp2p calls it)."""
    assert target.validator is not None
    message = GossipMessage(target.topic, payload, remote, remote, seqno)
    started = time.monotonic()
    try:
        accepted = target.validator(message)
    except WalrusError as error:
        outcome = _refusal(error)
    except Exception as error:
        return _crash(error)
    else:
        outcome = Outcome("ok", "ACCEPTED") if accepted else Outcome("refused", "REJECTED")
    elapsed = time.monotonic() - started
    if elapsed > deadline:
        return Outcome("hang", "HANG", f"{elapsed:.1f}s")
    return outcome


@dataclass(frozen=True, slots=True)
class FuzzPeer:
    """The peer under fuzzing in a running network, its targets and what the fuzzer knows."""

    network: TestNetwork
    service: StoragePeerService
    targets: tuple[HandlerTarget, ...]
    hints: Hints


@asynccontextmanager
async def open_fuzz_network(
    *, peers: int = 4, production_rates: bool = False, stored_blobs: int = 1
) -> AsyncIterator[FuzzPeer]:
    """A running in-process network (epochs on, so the epochs protocol and topic are served; an
    epoch lasts a day, so no change happens meanwhile) with ``stored_blobs`` small blobs stored,
    and its peer 1 ready to fuzz. Unless ``production_rates``, peer 1's control-plane rates are
    raised out of reach (:func:`raise_rates`)."""
    options = NetworkOptions(epochs=EpochOptions(), network="fuzz-inproc", request_timeout=20.0)
    async with open_network(peers, options) as network:
        blob_ids: list[bytes] = []
        async with open_test_client(network) as client:
            for index in range(stored_blobs):
                with trio.fail_after(120):
                    stored = await client.store(
                        bytes([index + 1]) * (3000 + index), epochs=5, permanent=index % 2 == 0
                    )
                blob_ids.append(bytes(stored.blob_id))
        service = network[1].running
        if not production_rates:
            raise_rates(service)
        yield FuzzPeer(
            network, service, tuple(handler_targets(service)), peer_hints(service, tuple(blob_ids))
        )


# --------------------------------------------------------------------------------------------
# Bookkeeping.


def rss_mib() -> float:
    """Resident memory of this process now, in MiB."""
    fields = Path("/proc/self/statm").read_text().split()
    return int(fields[1]) * 4096 / (1 << 20)


@dataclass
class Tally:
    """Outcome counts of one target, the failures found (capped), inputs and time."""

    name: str
    inputs: int = 0
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    failure_count: int = 0

    def add(self, outcome: Outcome, payload: bytes, remote: str = "", *, keep: int = 20) -> None:
        self.inputs += 1
        key = f"{outcome.kind}:{outcome.reason}"
        self.counts[key] = self.counts.get(key, 0) + 1
        if outcome.failed:
            self.failure_count += 1
            if len(self.failures) < keep:
                self.failures.append(
                    {
                        "target": self.name,
                        "kind": outcome.kind,
                        "reason": outcome.reason,
                        "detail": outcome.detail[-4000:],
                        "remote": remote,
                        "payload": payload.hex(),
                    }
                )

    def kinds(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for key, count in self.counts.items():
            kind = key.split(":", 1)[0]
            totals[kind] = totals.get(kind, 0) + count
        return totals


def inputs_for(target: HandlerTarget, fuzzer: Fuzzer, count: int) -> Iterator[tuple[bytes, PeerId]]:
    """``count`` fuzzed (payload, remote) pairs for a handler target."""
    for _ in range(count):
        yield fuzzer.payload(fuzzer.rng.choice(target.types)), fuzzer.remote()


__all__ = [
    "ALL_TYPES",
    "FAILURES",
    "NESTED",
    "OWNER_SIGNED",
    "PROTOCOL_TYPES",
    "TOPIC_TYPES",
    "FramingCase",
    "FuzzPeer",
    "Fuzzer",
    "HandlerTarget",
    "Hints",
    "Outcome",
    "ScriptedStream",
    "Span",
    "Tally",
    "Vector",
    "check_wire",
    "expected_frame",
    "framing_case",
    "golden_by_class",
    "golden_vectors",
    "handler_targets",
    "inputs_for",
    "item_spans",
    "open_fuzz_network",
    "payloads",
    "peer_hints",
    "raise_rates",
    "rss_mib",
    "run_framing",
    "run_rpc",
    "run_validator",
]
