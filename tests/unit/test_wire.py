"""The wire format: round trips, schema strictness, size caps before allocation, golden vectors."""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walrus_p2p.core import genesis, health, migration, wire
from walrus_p2p.core.metadata import Metadata, SliverPairMetadata
from walrus_p2p.errors import ConfigError, WireError
from walrus_p2p.testing import wire_vectors
from walrus_p2p.types import BlobId, SliverKind

VECTORS_PATH = Path(__file__).resolve().parents[1] / "vectors" / "wire.json"
ALL_TYPES = tuple(wire.registered_messages().values())
SAMPLES = wire_vectors.sample_messages()
SMALL_LIMITS = wire.WireLimits(max_sliver_size=96, max_symbol_size=40)
FUZZ = settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


def expect_wire_error(data: bytes, expected: object = ALL_TYPES, **kwargs: object) -> WireError:
    with pytest.raises(WireError) as caught:
        wire.decode(data, expected, **kwargs)  # type: ignore[call-overload]
    return caught.value


def decode_or_wire_error(data: bytes) -> wire.Message | None:
    """Decode with every type allowed; only WireError may come out, and never from a bug."""
    try:
        message = wire.decode(data, ALL_TYPES)
    except WireError as error:
        cause = error.__cause__
        assert cause is None or isinstance(cause, cbor2.CBORError), repr(cause)
        return None
    assert wire.encode(message) == data  # what decodes is canonical
    return message


# ----------------------------------------------------------------------------------------------
# Strategies built from the schemas, so a new message type is covered without new test code.


def strategy_for(spec: wire.FieldSpec) -> st.SearchStrategy[object]:
    if isinstance(spec, wire.IntSpec):
        return st.integers(spec.min, spec.max)
    if isinstance(spec, wire.BoolSpec):
        return st.booleans()
    if isinstance(spec, wire.EnumSpec):
        return st.sampled_from(list(spec.enum_type))
    if isinstance(spec, wire.BytesSpec):
        cap = spec.max_length if isinstance(spec.max_length, int) else 64
        return st.binary(min_size=spec.min_length, max_size=min(cap, 64))
    if isinstance(spec, wire.TextSpec):
        if spec.pattern is not None:
            text = st.from_regex(spec.pattern, fullmatch=True)
        else:
            text = st.text(max_size=spec.max_length // 4)
        return text.filter(lambda value: len(value.encode()) <= spec.max_length)
    if isinstance(spec, wire.OptionalSpec):
        return st.none() | strategy_for(spec.inner)
    if isinstance(spec, wire.ListSpec):
        items = st.lists(
            strategy_for(spec.item),
            min_size=spec.min_length,
            max_size=min(spec.max_length, 6),
            unique=spec.strictly_increasing,
        )
        if spec.strictly_increasing:
            return items.map(lambda values: tuple(sorted(values)))  # type: ignore[type-var]
        return items.map(tuple)
    if isinstance(spec, wire.RecordSpec):
        return st.builds(spec.record_type, *(strategy_for(field) for _, field in spec.fields))
    raise AssertionError(f"no strategy for {spec!r}")


any_message = st.sampled_from(ALL_TYPES).flatmap(lambda cls: strategy_for(wire.record_spec(cls)))


def maximal_value(spec: wire.FieldSpec, limits: wire.WireLimits) -> object:
    """The value with the longest encoding the schema allows."""
    if isinstance(spec, wire.IntSpec):
        return spec.max if spec.max >= -1 - spec.min else spec.min
    if isinstance(spec, wire.BoolSpec):
        return True
    if isinstance(spec, wire.EnumSpec):
        return max(spec.enum_type, key=lambda member: member.value)
    if isinstance(spec, wire.BytesSpec):
        cap = spec.max_length
        return b"\xff" * (cap if isinstance(cap, int) else getattr(limits, cap))
    if isinstance(spec, wire.TextSpec):
        return "A" * spec.max_length
    if isinstance(spec, wire.OptionalSpec):
        return maximal_value(spec.inner, limits)
    if isinstance(spec, wire.ListSpec):
        if spec.strictly_increasing and isinstance(spec.item, wire.RecordSpec):
            # Distinct, sorted records: vary the last two characters of a maximal text key.
            (_, key_spec), *others = spec.item.fields
            rest = [maximal_value(field, limits) for _, field in others]
            if isinstance(key_spec, wire.BytesSpec):
                # Distinct keys of the longest length: big-endian counters.
                width = key_spec.max_length
                assert isinstance(width, int)
                return tuple(
                    spec.item.record_type((b"\xff" * width)[:-4] + index.to_bytes(4, "big"), *rest)
                    for index in range(spec.max_length)
                )
            assert isinstance(key_spec, wire.TextSpec)
            alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
            keys = sorted(
                "z" * (key_spec.max_length - 2) + first + second
                for first in alphabet
                for second in alphabet
            )[: spec.max_length]
            return tuple(spec.item.record_type(key, *rest) for key in keys)
        if spec.strictly_increasing and isinstance(spec.item, wire.BytesSpec):
            # Distinct, sorted byte strings of the longest length: big-endian counters.
            length = spec.item.max_length
            assert isinstance(length, int)
            return tuple(index.to_bytes(length, "big") for index in range(spec.max_length))
        if spec.strictly_increasing:
            assert isinstance(spec.item, wire.IntSpec)
            return tuple(range(spec.item.max - spec.max_length + 1, spec.item.max + 1))
        return tuple(maximal_value(spec.item, limits) for _ in range(spec.max_length))
    if isinstance(spec, wire.RecordSpec):
        return spec.record_type(*(maximal_value(field, limits) for _, field in spec.fields))
    raise AssertionError(f"no maximal value for {spec!r}")


# ----------------------------------------------------------------------------------------------
# Registry.

EXPECTED_TYPE_IDS = {
    "ErrorReply": 1,
    "StorageConfirmation": 2,
    "SignedStorageConfirmation": 3,
    "StoreMetadataRequest": 10,
    "StoreMetadataReply": 11,
    "StoreSliverRequest": 12,
    "StoreSliverReply": 13,
    "GetMetadataRequest": 14,
    "GetMetadataReply": 15,
    "GetSliverRequest": 16,
    "GetSliverReply": 17,
    "GetConfirmationRequest": 18,
    "GetConfirmationReply": 19,
    "GetRecoverySymbolRequest": 20,
    "GetRecoverySymbolReply": 21,
    "BlobStatusRequest": 22,
    "BlobStatusReply": 23,
    "GetRecoverySymbolsRequest": 47,
    "GetRecoverySymbolsReply": 48,
}


def test_type_ids_are_pinned() -> None:
    """The sliver protocol's own ids; other modules (records, blob messages) pin theirs."""
    registered = {
        cls.__name__: type_id
        for type_id, cls in wire.registered_messages().items()
        if cls.__module__ == wire.__name__
    }
    assert registered == EXPECTED_TYPE_IDS
    for name, type_id in EXPECTED_TYPE_IDS.items():
        cls = getattr(wire, name)
        assert wire.message_type_id(cls) == type_id == cls.type_id
        assert wire.message_class(type_id) is cls
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        assert params.frozen and "__slots__" in cls.__dict__


def test_message_class_of_unknown_id_is_a_wire_error() -> None:
    with pytest.raises(WireError):
        wire.message_class(999)


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a test register classes without touching the real registry."""
    monkeypatch.setattr(wire, "_MESSAGES_BY_ID", dict(wire._MESSAGES_BY_ID))
    monkeypatch.setattr(wire, "_RECORD_SPECS", dict(wire._RECORD_SPECS))


@pytest.mark.usefixtures("scratch_registry")
def test_duplicate_type_id_is_rejected_at_definition() -> None:
    with pytest.raises(ValueError, match="already used by ErrorReply"):

        @wire.register(1)
        @dataclass(frozen=True, slots=True)
        class Clash(wire.Message):
            blob_id: wire.BlobIdBytes


@pytest.mark.usefixtures("scratch_registry")
def test_fields_without_a_spec_or_mutable_classes_are_rejected() -> None:
    with pytest.raises(TypeError, match="no wire spec"):

        @wire.register(60001)
        @dataclass(frozen=True, slots=True)
        class Unbounded(wire.Message):
            data: bytes

    with pytest.raises(TypeError, match="frozen=True, slots=True"):

        @wire.register(60002)
        @dataclass(frozen=True)
        class NoSlots(wire.Message):
            epoch: wire.U64

    assert 60001 not in wire.registered_messages()
    assert 60002 not in wire.registered_messages()


class Verdict(enum.Enum):
    VALID = 0
    INVALID = 1


@wire.record
@dataclass(frozen=True, slots=True)
class Member:
    public_key: wire.PublicKeyBytes
    shards: Annotated[tuple[int, ...], wire.ListSpec(wire.IntSpec(0, 255), 256)]


@pytest.mark.usefixtures("scratch_registry")
def test_a_later_record_type_is_one_small_dataclass() -> None:
    @wire.register(60003)
    @dataclass(frozen=True, slots=True)
    class EpochRecord(wire.Message):
        network_id: wire.NetworkIdBytes
        epoch: wire.U64
        members: Annotated[tuple[Member, ...], wire.ListSpec(wire.record_spec(Member), 256)]
        verdict: Verdict
        note: Annotated[str, wire.TextSpec(32)] | None

    record = EpochRecord(
        network_id=bytes(32),
        epoch=9,
        members=(Member(bytes(range(32)), (0, 1, 2)), Member(bytes(32), ())),
        verdict=Verdict.INVALID,
        note=None,
    )
    encoded = wire.encode(record)
    assert encoded[:4] == bytes([0x86, 0x19, 0xEA, 0x63])  # array(1 + 5), type id 60003
    assert wire.decode(encoded, EpochRecord) == record
    with pytest.raises(WireError):
        wire.encode(dataclasses.replace(record, note="x" * 33))


# ----------------------------------------------------------------------------------------------
# Round trips.


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=any_message)
def test_every_message_round_trips(message: wire.Message) -> None:
    encoded = wire.encode(message)
    assert wire.encode(message) == encoded
    assert wire.decode(encoded, type(message)) == message
    assert wire.decode(encoded, ALL_TYPES) == message
    assert cbor2.dumps(cbor2.loads(encoded), canonical=True) == encoded


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_round_trips_with_an_error_reply_alternative(name: str) -> None:
    message = SAMPLES[name]
    decoded = wire.decode(wire.encode(message), (type(message), wire.ErrorReply))
    assert decoded == message
    assert type(decoded) is type(message)


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda cls: cls.__name__)
def test_max_encoded_size_is_exact_and_maximal_messages_decode(cls: type[wire.Message]) -> None:
    message = maximal_value(wire.record_spec(cls), SMALL_LIMITS)
    assert isinstance(message, cls)
    encoded = wire.encode(message, limits=SMALL_LIMITS)
    maximum = wire.max_encoded_size(cls, SMALL_LIMITS)
    # Index sets (strictly increasing 0..255): indices 0..23 encode in one byte, not two.
    index_sets = {
        wire.BlobStatusReply: 1,
        wire.GetRecoverySymbolsRequest: 1,
        migration.ShardsInPlaceBody: 1,
        migration.ShardsInPlace: 1,
        migration.GetShardsInPlaceReply: wire.MAX_SHARDS,
        health.PeerHealthReply: 2,
    }
    if cls in index_sets:
        assert maximum - 24 * index_sets[cls] == len(encoded)
    else:
        assert len(encoded) == maximum
    assert wire.decode(encoded, cls, limits=SMALL_LIMITS) == message
    expect_wire_error(encoded + b"\x00", cls, limits=SMALL_LIMITS)


# ----------------------------------------------------------------------------------------------
# Golden vectors.


def load_vectors() -> list[dict[str, object]]:
    document = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    assert document["format"] == wire_vectors.FORMAT
    vectors: list[dict[str, object]] = document["vectors"]
    return vectors


def test_golden_vectors_cover_every_message_type() -> None:
    vectors = load_vectors()
    assert [vector["name"] for vector in vectors] == list(SAMPLES)
    assert {vector["type_id"] for vector in vectors} == set(wire.registered_messages())


@pytest.mark.parametrize("vector", load_vectors(), ids=lambda vector: str(vector["name"]))
def test_golden_vector_bytes_are_unchanged(vector: dict[str, object]) -> None:
    message = SAMPLES[str(vector["name"])]
    golden = bytes.fromhex(str(vector["hex"]))
    assert vector["type"] == type(message).__name__
    assert vector["type_id"] == wire.message_type_id(message)
    assert wire.encode(message).hex() == vector["hex"]
    assert wire.decode(golden, type(message)) == message


def test_golden_vector_file_is_what_the_generator_writes() -> None:
    assert VECTORS_PATH.read_text(encoding="utf-8") == wire_vectors.render()


def test_generator_writes_the_file(tmp_path: Path) -> None:
    target = tmp_path / "wire.json"
    assert wire_vectors.main([str(target)]) == 0
    assert target.read_text(encoding="utf-8") == VECTORS_PATH.read_text(encoding="utf-8")
    assert wire_vectors.main([]) == 2


def test_signing_bytes_are_the_canonical_encoding_and_cover_every_field() -> None:
    body = SAMPLES["StorageConfirmation"]
    assert isinstance(body, wire.StorageConfirmation)
    assert wire.signing_bytes(body) == wire.encode(body)
    variants = [
        dataclasses.replace(body, permanent=False),
        dataclasses.replace(body, epoch=8),
        dataclasses.replace(body, network_id=bytes(32)),
        dataclasses.replace(body, blob_id=BlobId(bytes(32))),
        dataclasses.replace(body, public_key=bytes(32)),
    ]
    assert len({wire.signing_bytes(variant) for variant in [body, *variants]}) == 6


# ----------------------------------------------------------------------------------------------
# Malformed input.


def raw_fields(message: wire.Message) -> list[object]:
    """The message as the plain list cbor2 would produce, for hand-made variations."""
    loaded = cbor2.loads(wire.encode(message))
    assert isinstance(loaded, list)
    return loaded


def dumps(value: object) -> bytes:
    return cbor2.dumps(value, canonical=True)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_truncation_and_extension_is_rejected(name: str) -> None:
    message = SAMPLES[name]
    encoded = wire.encode(message)
    for end in range(len(encoded)):
        expect_wire_error(encoded[:end])
    expect_wire_error(encoded + b"\x00")
    expect_wire_error(encoded + encoded)
    fields = raw_fields(message)
    expect_wire_error(dumps([*fields, 0]))  # one field too many
    expect_wire_error(dumps([*fields, None]))
    if len(fields) > 1:
        expect_wire_error(dumps(fields[:-1]))  # one field too few


WRONG_VALUES: list[object] = [
    True,
    False,
    None,
    0,
    -1,
    2**64 - 1,
    1.0,
    b"",
    bytes(32),
    bytes(64),
    "",
    "X",
    [],
    [0],
    {},
    {0: 0},
    cbor2.CBORTag(2, b"\x01"),
    cbor2.CBORSimpleValue(16),
    cbor2.undefined,
]


def spec_accepts(spec: wire.FieldSpec, value: object) -> bool:
    try:
        spec.from_wire(value, wire.DEFAULT_LIMITS, "test")
    except WireError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_a_wrong_value_in_any_field_is_rejected(name: str) -> None:
    message = SAMPLES[name]
    fields = raw_fields(message)
    specs = [spec for _, spec in wire.record_spec(type(message)).fields]
    for index, spec in enumerate(specs, start=1):
        for wrong in WRONG_VALUES:
            if isinstance(wrong, int | bytes | str | list | type(None)) and spec_accepts(
                spec, wrong
            ):
                continue
            mutated = list(fields)
            mutated[index] = wrong
            expect_wire_error(cbor2.dumps(mutated), type(message))


def test_bool_is_not_an_integer_and_integer_is_not_a_bool() -> None:
    blob_id = bytes(32)
    expect_wire_error(dumps([18, blob_id, True, False]), wire.GetConfirmationRequest)
    expect_wire_error(dumps([18, blob_id, 1, 0]), wire.GetConfirmationRequest)  # permanent
    expect_wire_error(dumps([16, blob_id, False, 0]), wire.GetSliverRequest)
    expect_wire_error(dumps([16, blob_id, 0, True]), wire.GetSliverRequest)  # kind
    expect_wire_error(dumps([23, 1, False, False, [], None, None]), wire.BlobStatusReply)
    assert wire.decode(dumps([18, blob_id, 1, False]), wire.GetConfirmationRequest).epoch == 1


@pytest.mark.parametrize(
    ("label", "data"),
    [
        ("empty", b""),
        ("not an array", b"\x01"),
        ("text at top", b"\x63abc"),
        ("empty array", b"\x80"),
        ("type id not first", bytes([0x82, 0x40, 0x11])),
        ("type id negative", bytes([0x82, 0x20, 0x40])),
        ("unknown type id", bytes([0x82, 0x19, 0x03, 0xE7, 0x00])),
        ("map at top", bytes([0xA1, 0x01, 0x02])),
        ("tag at top", bytes([0xC1, 0x82, 0x11, 0x41, 0x00])),
        ("indefinite array", bytes([0x9F, 0x11, 0x41, 0x00, 0xFF])),
        ("indefinite bytes", bytes([0x82, 0x11, 0x5F, 0x41, 0x00, 0xFF])),
        ("noncanonical type id", bytes([0x82, 0x18, 0x11, 0x41, 0x00])),
        ("noncanonical length", bytes([0x82, 0x11, 0x58, 0x01, 0x00])),
        ("noncanonical length 2", bytes([0x82, 0x11, 0x59, 0x00, 0x01, 0x00])),
        ("noncanonical array head", bytes([0x98, 0x02, 0x11, 0x41, 0x00])),
        ("reserved info 28", bytes([0x82, 0x11, 0x5C, 0x00])),
        ("half float", bytes([0x82, 0x11, 0xF9, 0x3C, 0x00])),
        ("double", bytes([0x82, 0x11, 0xFB]) + bytes(8)),
        ("undefined", bytes([0x82, 0x11, 0xF7])),
        ("simple value", bytes([0x82, 0x11, 0xF0])),
        ("break", bytes([0x82, 0x11, 0xFF])),
        ("tagged bytes", bytes([0x82, 0x11, 0xD8, 0x18, 0x41, 0x00])),
        ("map field", bytes([0x82, 0x11, 0xA0])),
    ],
)
def test_structurally_malformed_input_is_rejected(label: str, data: bytes) -> None:
    expect_wire_error(data)


def test_non_canonical_encodings_of_valid_messages_are_rejected() -> None:
    blob_id = bytes(32)
    canonical = dumps([18, blob_id, 7, False])
    assert wire.decode(canonical, wire.GetConfirmationRequest).epoch == 7
    head, false = canonical[:-2], canonical[-1:]
    long_epoch = head + bytes([0x18, 0x07]) + false
    assert cbor2.loads(long_epoch) == [18, blob_id, 7, False]  # cbor2 alone would accept it
    expect_wire_error(long_epoch, wire.GetConfirmationRequest)
    bignum_epoch = head + dumps(cbor2.CBORTag(2, b"\x07")) + false
    assert cbor2.loads(bignum_epoch) == [18, blob_id, 7, False]
    expect_wire_error(bignum_epoch, wire.GetConfirmationRequest)
    indefinite = bytes([0x9F]) + canonical[1:] + b"\xff"
    expect_wire_error(indefinite, wire.GetConfirmationRequest)


def test_unexpected_type_is_rejected() -> None:
    encoded = wire.encode(SAMPLES["GetSliverRequest"])
    error = expect_wire_error(encoded, (wire.GetSliverReply, wire.ErrorReply))
    assert "unexpected message type id 16" in str(error)


def test_field_values_out_of_range_are_rejected() -> None:
    blob_id = bytes(32)
    for bad in (256, -1):
        expect_wire_error(dumps([16, blob_id, bad, 0]), wire.GetSliverRequest)
    expect_wire_error(dumps([16, blob_id, 0, 2]), wire.GetSliverRequest)  # no such kind
    expect_wire_error(dumps([18, blob_id, -1, False]), wire.GetConfirmationRequest)
    for length in (0, 31, 33):
        expect_wire_error(dumps([22, bytes(length)]), wire.BlobStatusRequest)
    expect_wire_error(dumps([17, b""]), wire.GetSliverReply)  # a sliver is never empty


def test_metadata_bounds() -> None:
    pair = [bytes(32), bytes(32)]
    blob_id = bytes(32)
    assert wire.decode(dumps([15, [1, 10, [pair] * 256]]), wire.GetMetadataReply)
    expect_wire_error(dumps([15, [1, 10, []]]), wire.GetMetadataReply)
    expect_wire_error(dumps([15, [1, 10, [pair] * 257]]), wire.GetMetadataReply)
    expect_wire_error(dumps([15, [256, 10, [pair]]]), wire.GetMetadataReply)
    expect_wire_error(dumps([15, [1, 10, [[bytes(32), bytes(31)]]]]), wire.GetMetadataReply)
    expect_wire_error(dumps([15, [1, 10, [[bytes(32)]]]]), wire.GetMetadataReply)
    expect_wire_error(dumps([15, [1, 10, [pair], 0]]), wire.GetMetadataReply)
    expect_wire_error(dumps([10, blob_id, [1, 10, [[*pair, b""]]]]), wire.StoreMetadataRequest)


def test_proof_and_pair_set_bounds() -> None:
    hashes = [bytes(32)] * 16
    assert wire.decode(dumps([21, b"s", hashes]), wire.GetRecoverySymbolReply)
    expect_wire_error(dumps([21, b"s", [*hashes, bytes(32)]]), wire.GetRecoverySymbolReply)
    expect_wire_error(dumps([21, b"s", [bytes(31)]]), wire.GetRecoverySymbolReply)
    status = [23, True, False, True]
    assert wire.decode(dumps([*status, [1, 2], None, 5]), wire.BlobStatusReply)
    for indices in ([2, 1], [1, 1], [256]):
        expect_wire_error(dumps([*status, indices, None, 5]), wire.BlobStatusReply)


def test_error_reply_text_rules() -> None:
    assert wire.decode(dumps([1, "NOT_FOUND", "é ✓"]), wire.ErrorReply).message == "é ✓"
    for reason in ("", "not_found", "NOT__FOUND", "_NOT", "NOT_", "NOT FOUND", "A" * 65):
        expect_wire_error(dumps([1, reason, ""]), wire.ErrorReply)
        with pytest.raises(WireError):
            wire.encode(wire.ErrorReply(reason=reason, message=""))
    expect_wire_error(dumps([1, "X", "é" * 513]), wire.ErrorReply)
    invalid_utf8 = bytes([0x83, 0x01, 0x61, 0x58, 0x62, 0xFF, 0xFE])
    error = expect_wire_error(invalid_utf8, wire.ErrorReply)
    assert isinstance(error.__cause__, cbor2.CBORError)
    with pytest.raises(WireError):
        wire.encode(wire.ErrorReply(reason="X", message="\ud800"))


def test_error_reply_create_always_encodes() -> None:
    assert wire.ErrorReply.create("NOT_FOUND", "gone") == wire.ErrorReply("NOT_FOUND", "gone")
    reply = wire.ErrorReply.create("not snake", "é" * 2000 + "\ud800")
    assert reply.reason == "INTERNAL"
    assert len(reply.message.encode()) == 1024
    assert wire.decode(wire.encode(reply), wire.ErrorReply) == reply
    odd = wire.ErrorReply.create("X", "a" + "é" * 600)  # the cut falls inside a character
    assert len(odd.message.encode()) == 1023
    assert wire.ErrorReply.create("Y", "\ud800").message == "?"


def test_deep_nesting_fails_fast() -> None:
    bomb = bytes([0x82, 0x0F]) + b"\x81" * 100_000 + b"\x00"
    expect_wire_error(bomb, wire.GetMetadataReply, limits=wire.WireLimits())
    shallow_bomb = bytes([0x82, 0x0F]) + b"\x81" * 5 + b"\x00"
    error = expect_wire_error(shallow_bomb, wire.GetMetadataReply)
    assert "nesting deeper" in str(error)


# ----------------------------------------------------------------------------------------------
# Size caps before allocation.


@pytest.fixture
def loads_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record every call into cbor2 so a test can show a check came before it."""
    calls: list[bytes] = []
    real = wire._loads

    def recording(data: bytes, max_depth: int) -> object:
        calls.append(data)
        return real(data, max_depth)

    monkeypatch.setattr(wire, "_loads", recording)
    return calls


def test_a_huge_declared_bytestring_in_a_small_input_fails_before_cbor2(
    loads_calls: list[bytes],
) -> None:
    one_gib = (1 << 30).to_bytes(4, "big")
    data = bytes([0x82, 0x11, 0x5A]) + one_gib + bytes(13)
    assert len(data) == 20
    error = expect_wire_error(data, wire.GetSliverReply, limits=wire.WireLimits(1 << 31))
    assert "exceeds the remaining input" in str(error)
    huge = bytes([0x82, 0x11, 0x5B]) + (1 << 63).to_bytes(8, "big") + bytes(9)
    expect_wire_error(huge, wire.GetSliverReply, limits=wire.WireLimits(1 << 62))
    assert loads_calls == []


def test_a_huge_declared_array_fails_before_cbor2(loads_calls: list[bytes]) -> None:
    many = bytes([0x83, 0x15, 0x41, 0x00, 0x9A]) + (1 << 24).to_bytes(4, "big") + bytes(1000)
    assert "exceeds" in str(expect_wire_error(many, wire.GetRecoverySymbolReply))
    many_small = bytes([0x83, 0x15, 0x41, 0x00, 0x91]) + bytes(17)  # 17 > 16 hashes
    expect_wire_error(many_small, wire.GetRecoverySymbolReply)
    assert loads_calls == []


def test_oversized_input_is_rejected_before_parsing(loads_calls: list[bytes]) -> None:
    request = wire.encode(SAMPLES["GetSliverRequest"])
    limit = wire.max_encoded_size(wire.GetSliverRequest)
    padded = request + bytes(limit)
    error = expect_wire_error(padded, wire.GetSliverRequest)
    assert "exceeds the maximum" in str(error)
    # a small type id with a big type's budget still gets the small type's cap
    big_enough = wire.max_encoded_size(wire.GetSliverReply, SMALL_LIMITS)
    fake = request[:-1] + bytes(big_enough - len(request))
    error = expect_wire_error(
        fake, (wire.GetSliverRequest, wire.GetSliverReply), limits=SMALL_LIMITS
    )
    assert "GetSliverRequest of" in str(error)
    assert loads_calls == []


def test_sliver_cap_is_a_decode_parameter() -> None:
    sample = SAMPLES["StoreSliverRequest"]
    assert isinstance(sample, wire.StoreSliverRequest)
    message = dataclasses.replace(sample, data=bytes(97))
    encoded = wire.encode(message)  # no limits: only fixed caps are checked
    expect_wire_error(encoded, wire.StoreSliverRequest, limits=SMALL_LIMITS)
    bigger = wire.WireLimits(max_sliver_size=97, max_symbol_size=40)
    assert wire.decode(encoded, wire.StoreSliverRequest, limits=bigger) == message
    with pytest.raises(WireError):
        wire.encode(message, limits=SMALL_LIMITS)
    symbol_reply = wire.GetRecoverySymbolReply(symbol=bytes(41), proof=())
    expect_wire_error(wire.encode(symbol_reply), wire.GetRecoverySymbolReply, limits=SMALL_LIMITS)


def test_limits_for_a_network() -> None:
    small = wire.WireLimits.for_network(shards=10, max_blob_size=10_000)
    # f = 3, kp = 4, ks = 7: S = roundup_even(ceil(10000 / 28)) = 358
    assert small == wire.WireLimits(max_sliver_size=7 * 358, max_symbol_size=358)
    gib = wire.WireLimits.for_network(shards=4, max_blob_size=1 << 30)
    # f = 1, kp = 2, ks = 3: S = roundup_even(ceil(2**30 / 6))
    assert gib.max_symbol_size == 178_956_972
    assert gib.max_sliver_size == 3 * 178_956_972
    assert wire.max_encoded_size(wire.StoreSliverRequest, gib) > gib.max_sliver_size
    for bad in ({"shards": 3, "max_blob_size": 1}, {"shards": 4, "max_blob_size": 0}):
        with pytest.raises(ConfigError):
            wire.WireLimits.for_network(**bad)
    with pytest.raises(ConfigError):
        wire.WireLimits(max_sliver_size=0)


@pytest.mark.parametrize("shards", [4, 5, 7, 10, 20, 100, 256])
@pytest.mark.parametrize("blob_size", [1, 1000, 10**6 + 7, 1 << 30])
def test_limits_for_a_network_agree_with_genesis(shards: int, blob_size: int) -> None:
    limits = wire.WireLimits.for_network(shards=shards, max_blob_size=blob_size)
    assert limits.max_sliver_size == genesis.max_primary_sliver_size(shards, blob_size)
    assert limits.max_symbol_size * (shards - (shards - 1) // 3) == limits.max_sliver_size


# ----------------------------------------------------------------------------------------------
# Encoding refuses what decoding would refuse.


def test_encode_validates_the_schema() -> None:
    blob_id = BlobId(bytes(32))
    bad_messages: list[wire.Message] = [
        wire.GetSliverRequest(
            blob_id=BlobId(bytes(31)), pair_index=0, sliver_kind=SliverKind.PRIMARY
        ),
        wire.GetSliverRequest(blob_id=blob_id, pair_index=256, sliver_kind=SliverKind.PRIMARY),
        wire.GetSliverRequest(blob_id=blob_id, pair_index=True, sliver_kind=SliverKind.PRIMARY),
        wire.GetSliverRequest(blob_id=blob_id, pair_index=0, sliver_kind=0),  # type: ignore[arg-type]
        wire.GetConfirmationRequest(blob_id=blob_id, epoch=2**64, permanent=False),
        wire.GetRecoverySymbolReply(symbol=b"s", proof=[bytes(32)]),  # type: ignore[arg-type]
        wire.GetRecoverySymbolReply(symbol=bytearray(b"s"), proof=()),  # type: ignore[arg-type]
        wire.BlobStatusReply(True, False, True, (3, 1), None, None),
        wire.StoreMetadataRequest(blob_id=blob_id, metadata=Metadata(1, 1, ())),
        wire.StoreMetadataRequest(
            blob_id=blob_id, metadata=Metadata(1, -1, (SliverPairMetadata(bytes(32), bytes(32)),))
        ),
    ]
    for message in bad_messages:
        with pytest.raises(WireError):
            wire.encode(message)


def test_misuse_of_the_api_is_a_type_error() -> None:
    @dataclass(frozen=True, slots=True)
    class Unregistered(wire.Message):
        pass

    with pytest.raises(TypeError):
        wire.encode(Unregistered())
    with pytest.raises(TypeError):
        wire.message_type_id(wire.Message)
    with pytest.raises(ValueError, match="already a wire record"):
        wire.record(Member)
    with pytest.raises(TypeError):
        wire.decode(b"\x81\x0b", Unregistered)
    with pytest.raises(TypeError):
        wire.decode(b"\x81\x0b", ())
    with pytest.raises(WireError):
        wire.decode("\x81\x0b", wire.StoreMetadataReply)  # type: ignore[call-overload]
    assert wire.decode(bytearray(b"\x81\x0b"), wire.StoreMetadataReply) == wire.StoreMetadataReply()


# ----------------------------------------------------------------------------------------------
# Fuzzing: any bytes give a message or a WireError, and nothing else.

VALID_ENCODINGS = [wire.encode(message) for message in SAMPLES.values()]


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    decode_or_wire_error(data)


@FUZZ
@given(
    prefix=st.sampled_from(
        [
            bytes([0x80 + count, type_id])
            for count in range(1, 8)
            for type_id in EXPECTED_TYPE_IDS.values()
        ]
    ),
    rest=st.binary(max_size=200),
)
def test_fuzz_random_bodies_after_a_plausible_head(prefix: bytes, rest: bytes) -> None:
    decode_or_wire_error(prefix + rest)


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID_ENCODINGS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        position = draw(st.integers(0, len(data) - 1)) if data else 0
        if kind == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[position] = draw(st.integers(0, 255))
        elif kind == "insert":
            data.insert(position, draw(st.integers(0, 255)))
        elif data:
            del data[position]
    return bytes(data)


@FUZZ
@given(data=mutated_encodings())
def test_fuzz_mutated_valid_messages(data: bytes) -> None:
    decode_or_wire_error(data)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_single_bit_flip_of_a_small_vector(name: str) -> None:
    encoded = wire.encode(SAMPLES[name])
    for position in range(min(len(encoded), 200)):  # past 200 bytes it is all hash bytes
        for bit in range(8):
            mutated = bytearray(encoded)
            mutated[position] ^= 1 << bit
            decode_or_wire_error(bytes(mutated))


def test_fuzz_helper_really_checks() -> None:
    """Guard against a vacuous fuzz: valid input decodes, junk is a WireError."""
    assert decode_or_wire_error(VALID_ENCODINGS[0]) == SAMPLES["ErrorReply"]
    assert decode_or_wire_error(b"\xff") is None


def test_blob_message_type_ids_are_pinned() -> None:
    from walrus_p2p.core import blob_messages

    expected = {
        "PostBlobRecordsRequest": 24,
        "PostBlobRecordsReply": 25,
        "GetBlobRecordsRequest": 26,
        "GetBlobRecordsReply": 27,
        "ListBlobRecordsRequest": 28,
        "ListBlobRecordsReply": 29,
        "AttestInvalidBlobRequest": 30,
        "AttestInvalidBlobReply": 31,
        "StoreBlobRequest": 49,
        "StoreBlobReply": 50,
        "GetSliversRequest": 51,
        "GetSliversReply": 52,
    }
    for name, type_id in expected.items():
        assert wire.message_type_id(getattr(blob_messages, name)) == type_id


def test_signature_lists_have_one_canonical_order() -> None:
    """A certificate whose signatures arrive out of order is refused, not silently re-sorted."""
    certificate = SAMPLES["BlobCertificate"]
    encoded = wire.encode(certificate)
    raw = cbor2.loads(encoded)
    raw[-1] = list(reversed(raw[-1]))
    reordered = cbor2.dumps(raw, canonical=True)
    assert reordered != encoded
    expect_wire_error(reordered, type(certificate))
    assert wire.decode(encoded, type(certificate)) == certificate


@pytest.mark.parametrize(
    "length", [1, 23, 24, 255, 256, 65_535, 65_536, 65_537, 200_000, (1 << 20) + 3]
)
@pytest.mark.parametrize("as_view", [False, True])
def test_encode_parts_gives_the_same_bytes_without_copying_the_sliver(
    length: int, as_view: bool
) -> None:
    data = bytes((index * 7 + length) % 251 for index in range(length))
    plain = wire.StoreSliverRequest(
        blob_id=BlobId(bytes(range(32))), pair_index=3, sliver_kind=SliverKind.SECONDARY, data=data
    )
    source = bytearray(data)
    field: object = memoryview(source) if as_view else data
    message = dataclasses.replace(plain, data=field)  # type: ignore[arg-type]
    head, tail = wire.encode_parts(message)
    assert head + tail == wire.encode(plain)
    assert wire.decode(head + tail, wire.StoreSliverRequest) == plain
    if as_view or length >= wire.PARTS_MIN_TAIL:
        assert len(tail) == length
        if as_view:  # a view of the caller's buffer, not a copy
            source[0] ^= 0xFF
            assert tail[0] == source[0]
    else:
        assert len(tail) == 0


def test_encode_parts_checks_the_sliver_like_encode() -> None:
    base = wire.StoreSliverRequest(
        blob_id=BlobId(bytes(32)), pair_index=0, sliver_kind=SliverKind.PRIMARY, data=b"x"
    )
    too_long = dataclasses.replace(base, data=memoryview(bytes(97)))  # type: ignore[arg-type]
    with pytest.raises(WireError):
        wire.encode_parts(too_long, limits=SMALL_LIMITS)
    empty = dataclasses.replace(base, data=memoryview(b""))  # type: ignore[arg-type]
    with pytest.raises(WireError):
        wire.encode_parts(empty)
    # A strided view is copied once, and still encodes the same bytes.
    strided = memoryview(bytes(range(200)))[::2]
    message = dataclasses.replace(base, data=strided)  # type: ignore[arg-type]
    head, tail = wire.encode_parts(message)
    assert head + tail == wire.encode(dataclasses.replace(base, data=strided.tobytes()))
    # A message whose last field is not a byte string is encoded whole.
    reply = wire.StoreSliverReply()
    assert wire.encode_parts(reply) == (wire.encode(reply), memoryview(b""))


@pytest.mark.parametrize("length", [1, 65_535, 65_536, 300_001])
def test_decode_view_tail_gives_a_view_of_a_large_trailing_sliver(length: int) -> None:
    data = bytes((index * 13) % 256 for index in range(length))
    encoded = wire.encode(wire.GetSliverReply(data=data))
    viewed = wire.decode(encoded, wire.GetSliverReply, view_tail=True)
    assert bytes(viewed.data) == data
    if length >= wire.PARTS_MIN_TAIL:
        assert isinstance(viewed.data, memoryview) and viewed.data.obj is encoded
    else:
        assert type(viewed.data) is bytes
    request = wire.StoreSliverRequest(
        blob_id=BlobId(bytes(range(32))), pair_index=7, sliver_kind=SliverKind.PRIMARY, data=data
    )
    back = wire.decode(wire.encode(request), wire.StoreSliverRequest, view_tail=True)
    assert (back.blob_id, back.pair_index, back.sliver_kind) == (
        BlobId(bytes(range(32))),
        7,
        SliverKind.PRIMARY,
    )
    assert bytes(back.data) == data


def test_decode_view_tail_rejects_what_decode_rejects() -> None:
    encoded = wire.encode(wire.GetSliverReply(data=bytes(100_000)))
    for bad in (encoded[:-1], encoded + b"\x00", encoded[:3] + b"\xff" + encoded[4:]):
        with pytest.raises(WireError):
            wire.decode(bad, wire.GetSliverReply, view_tail=True)
    limits = wire.WireLimits(max_sliver_size=99_999, max_symbol_size=40)
    with pytest.raises(WireError):
        wire.decode(encoded, wire.GetSliverReply, limits=limits, view_tail=True)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_the_head_of_a_message_names_its_size_cap(name: str) -> None:
    """``max_size_for_head`` sees the type in the first HEAD_PEEK_BYTES bytes and gives that
    type's cap; the whole message is within it."""
    message = SAMPLES[name]
    encoded = wire.encode(message)
    cap = wire.max_size_for_head(encoded[: wire.HEAD_PEEK_BYTES], type(message))
    assert cap == wire.max_encoded_size(type(message)) >= len(encoded)


def test_a_head_that_names_no_expected_type_is_refused() -> None:
    status = wire.encode(wire.BlobStatusRequest(blob_id=bytes(32)))
    expected = (wire.BlobStatusRequest, wire.StoreSliverRequest)
    assert wire.max_size_for_head(status[:18], expected) == 36
    for head in (b"", b"\x82", b"\x82\x19\xff\xf0", b"\x01\x02", b"\x82\x60"):
        with pytest.raises(WireError):
            wire.max_size_for_head(head, expected)
    with pytest.raises(WireError):  # a known type that is not expected here
        wire.max_size_for_head(status[:18], wire.StoreSliverRequest)


def test_message_name_labels_an_encoding_by_its_type_id() -> None:
    """Traffic accounting labels each reply by its wire type (docs/network.md)."""
    reply = health.PeerHealthRequest(epoch=3)
    encoded = wire.encode(reply)
    assert wire.message_name(encoded) == "PeerHealthRequest"
    assert wire.message_name(memoryview(encoded)) == "PeerHealthRequest"
    for bad in (b"", b"\x83", cbor2.dumps([9999, 1]), cbor2.dumps({"a": 1}), b"\xff" * 20):
        assert wire.message_name(bad) is None
