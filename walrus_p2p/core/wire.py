"""The wire format: message classes, one registry, canonical CBOR, size caps (docs/design.md §9).

Every message is a frozen, slotted dataclass registered once under a small, stable type id. On the
wire a message is one CBOR array ``[type_id, field_1, ..., field_k]`` in field order; nested
records (metadata, a confirmation inside its signed wrapper) are arrays of their fields without a
type id. Only a small CBOR subset is used:

- unsigned and negative integers, byte strings, UTF-8 text strings, arrays, ``false``, ``true``
  and ``null``;
- never maps, tags, floats, ``undefined`` or other simple values, never indefinite lengths;
- every integer and length in its shortest form, and nothing after the message.

With that subset a value has exactly one encoding, so ``encode(decode(b)) == b`` for every ``b``
that decodes: what is hashed or signed (:func:`signing_bytes`) cannot be re-encoded differently.

Decoding treats the bytes as hostile. In order, before anything is allocated for them:

1. the input length is checked against the largest encoded size of the expected types, computed
   from their schemas and the network's :class:`WireLimits`;
2. the type id is read from the first bytes and must be one of the expected types, whose own
   maximum size then applies;
3. a scan over the item heads (no values are built) checks the subset above, that every declared
   length fits in the remaining input, the nesting depth, array lengths and the item count
   against bounds derived from the type's schema;
4. only then does cbor2 build the values, which are checked field by field against the schema
   (exact field count, exact types with ``bool`` never accepted as an integer, integer ranges,
   byte and text lengths, list lengths).

Anything that fails raises :class:`~walrus_p2p.errors.WireError`, and nothing else: unexpected
exceptions from cbor2 or from constructing a value are translated too.

Adding a message is one small dataclass::

    @register(40)
    @dataclass(frozen=True, slots=True)
    class BlobDeleteRecord(Message):
        blob_id: BlobIdBytes
        epoch: U64
        owner_key: PublicKeyBytes

Field types carry their wire schema through :data:`typing.Annotated` (see the aliases below, and
build more with :class:`IntSpec`, :class:`BytesSpec`, :class:`TextSpec`, :class:`ListSpec`);
``bool``, :class:`enum.Enum` subclasses with integer values, ``X | None`` and registered records
and messages need no annotation. The aliases must be importable at module level in the module that
defines the message (``typing.get_type_hints`` resolves them there).

Type ids: 1–9 shared values (errors, confirmations), 10–31 the storage peer request/reply pairs,
32–63 reserved for signed system-log records, 64–95 for gossip and sync, 96–127 for the economy
(orders, approvals, certificates, votes, settlements: ``core/economy_messages.py``), 128–159 for
storage challenges (tickets, responses, availability certificates: ``core/challenge_messages.py``).
A type id is never reused.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import functools
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, ClassVar, TypeVar, overload

import cbor2

from walrus_p2p.core.metadata import Metadata, SliverPairMetadata
from walrus_p2p.errors import ConfigError, WireError
from walrus_p2p.types import BlobId, SliverKind

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_SLIVER_SIZE",
    "ERROR_REASON_PATTERN",
    "HASH_LENGTH",
    "HEAD_PEEK_BYTES",
    "MAX_ERROR_MESSAGE_LENGTH",
    "MAX_ERROR_REASON_LENGTH",
    "MAX_PROOF_LENGTH",
    "MAX_SHARDS",
    "PING_BLOB_ID",
    "PUBLIC_KEY_LENGTH",
    "SIGNATURE_LENGTH",
    "U8",
    "U16",
    "U32",
    "U64",
    "BlobIdBytes",
    "BlobStatusReply",
    "BlobStatusRequest",
    "BoolSpec",
    "BytesSpec",
    "EnumSpec",
    "ErrorReason",
    "ErrorReply",
    "ErrorText",
    "FieldSpec",
    "GetConfirmationReply",
    "GetConfirmationRequest",
    "GetMetadataReply",
    "GetMetadataRequest",
    "GetRecoverySymbolReply",
    "GetRecoverySymbolRequest",
    "GetSliverReply",
    "GetSliverRequest",
    "Hash32",
    "IntSpec",
    "ListSpec",
    "MerkleProof",
    "Message",
    "NetworkIdBytes",
    "OptionalSpec",
    "PairIndex",
    "PairIndexSet",
    "PublicKeyBytes",
    "RecordSpec",
    "SignatureBytes",
    "SignedStorageConfirmation",
    "SizeCap",
    "SliverData",
    "StorageConfirmation",
    "StoreMetadataReply",
    "StoreMetadataRequest",
    "StoreSliverReply",
    "StoreSliverRequest",
    "SymbolData",
    "TextSpec",
    "WireLimits",
    "decode",
    "encode",
    "encode_parts",
    "max_encoded_size",
    "max_size_for_head",
    "message_class",
    "message_type_id",
    "record",
    "record_spec",
    "register",
    "registered_messages",
    "signing_bytes",
]

MAX_SHARDS = 256
"""Largest n the wire accepts (docs/design.md §2: 4 ≤ n ≤ 256); indices are 0..255."""

HASH_LENGTH = 32
PUBLIC_KEY_LENGTH = 32
"""An Ed25519 public key."""
SIGNATURE_LENGTH = 64
"""An Ed25519 signature."""

MAX_PROOF_LENGTH = 16
"""Most hashes in a Merkle proof. A tree over ≤ 256 leaves needs 8; the rest is headroom."""

MAX_ERROR_REASON_LENGTH = 64
MAX_ERROR_MESSAGE_LENGTH = 1024
ERROR_REASON_PATTERN = r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*"
"""UPPER_SNAKE, as the error tree's reason codes."""

DEFAULT_MAX_SLIVER_SIZE = 64 * 1024 * 1024
"""Default cap on one sliver's bytes when no genesis limits are given.

It admits a 64 MiB blob at n = 4 and ~450 MiB at n = 20. Networks that store bigger blobs set
their own limit (see :meth:`WireLimits.for_network`); the wire itself has no upper bound.
"""

_U64_MAX = (1 << 64) - 1


# --------------------------------------------------------------------------------------------
# Limits that come from the network (genesis), not from the schema.


@dataclass(frozen=True, slots=True)
class WireLimits:
    """Caps that a network chooses in its genesis; a :class:`BytesSpec` may name one of them.

    Decoding needs them to bound the sizes of slivers and recovery symbols before reading them.
    """

    max_sliver_size: int = DEFAULT_MAX_SLIVER_SIZE
    max_symbol_size: int = DEFAULT_MAX_SLIVER_SIZE

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if type(value) is not int or not 1 <= value <= _U64_MAX:
                raise ConfigError(f"wire limit {field.name} must be an integer in 1..2**64-1")

    @classmethod
    def for_network(cls, *, shards: int, max_blob_size: int) -> WireLimits:
        """The tightest limits that still carry every sliver and symbol of the largest blob.

        Follows docs/design.md §3: ``S = roundup_even(max(1, ceil(L / (kp*ks))))``; a primary
        sliver holds ks symbols, a secondary sliver kp ≤ ks, and a recovery symbol is one symbol.
        """
        if not 4 <= shards <= MAX_SHARDS:
            raise ConfigError(f"shards must be in 4..{MAX_SHARDS}, got {shards}")
        if not 1 <= max_blob_size <= _U64_MAX:
            raise ConfigError(f"max_blob_size must be in 1..2**64-1, got {max_blob_size}")
        f = (shards - 1) // 3
        primary_symbols = shards - 2 * f
        secondary_symbols = shards - f
        symbol_size = max(1, -(-max_blob_size // (primary_symbols * secondary_symbols)))
        symbol_size += symbol_size % 2
        return cls(max_sliver_size=secondary_symbols * symbol_size, max_symbol_size=symbol_size)


DEFAULT_LIMITS = WireLimits()

_LIMIT_NAMES = frozenset(field.name for field in dataclasses.fields(WireLimits))


# --------------------------------------------------------------------------------------------
# CBOR head arithmetic.


def _head_size(argument: int) -> int:
    """Bytes of a CBOR head (initial byte plus argument) in shortest form."""
    if argument < 24:
        return 1
    if argument < 1 << 8:
        return 2
    if argument < 1 << 16:
        return 3
    if argument < 1 << 32:
        return 5
    return 9


# --------------------------------------------------------------------------------------------
# Field specs: the schema of one value.


class FieldSpec(abc.ABC):
    """How one value maps to CBOR: validation both ways plus the bounds the scanner needs.

    ``to_wire`` turns a Python value into plain CBOR-ready data (``int``, ``bytes``, ``str``,
    ``bool``, ``None``, ``list``); ``from_wire`` checks what cbor2 built and turns it back.
    Both raise :class:`WireError` naming ``path``.
    """

    __slots__ = ()

    @abc.abstractmethod
    def to_wire(self, value: object, limits: WireLimits | None, path: str) -> object: ...

    @abc.abstractmethod
    def from_wire(self, raw: object, limits: WireLimits, path: str) -> object: ...

    @abc.abstractmethod
    def max_size(self, limits: WireLimits) -> int:
        """Largest encoded size of a valid value, in bytes."""

    def max_items(self) -> int:
        """Largest number of CBOR data items (array heads included) in a valid value."""
        return 1

    def max_depth(self) -> int:
        """Deepest array nesting in a valid value (a scalar is 0)."""
        return 0

    def max_array_length(self) -> int:
        """Longest array in a valid value."""
        return 0


@dataclass(frozen=True, slots=True)
class IntSpec(FieldSpec):
    """An integer in ``min..max`` (inclusive); ``bool`` is rejected both ways."""

    min: int
    max: int

    def __post_init__(self) -> None:
        if not -(1 << 64) <= self.min <= self.max <= _U64_MAX:
            raise ValueError(f"bad integer range {self.min}..{self.max}")

    def _check(self, value: object, path: str) -> int:
        if type(value) is not int:
            raise WireError(f"{path}: expected an integer, got {type(value).__name__}")
        if not self.min <= value <= self.max:
            raise WireError(f"{path}: {value} is outside {self.min}..{self.max}")
        return value

    def to_wire(self, value: object, limits: WireLimits | None, path: str) -> object:
        return self._check(value, path)

    def from_wire(self, raw: object, limits: WireLimits, path: str) -> object:
        return self._check(raw, path)

    def max_size(self, limits: WireLimits) -> int:
        return max(_head_size(max(self.max, 0)), _head_size(-1 - min(self.min, -1)))


SizeCap = int | str
"""A length cap: a fixed number, or the name of a :class:`WireLimits` field."""


def _check_cap(cap: SizeCap, what: str) -> None:
    if isinstance(cap, str):
        if cap not in _LIMIT_NAMES:
            raise ValueError(f"{what}: {cap!r} is not a WireLimits field")
    elif type(cap) is not int or not 0 <= cap <= _U64_MAX:
        raise ValueError(f"{what}: bad cap {cap!r}")


def _resolve_cap(cap: SizeCap, limits: WireLimits | None) -> int | None:
    if isinstance(cap, int):
        return cap
    return None if limits is None else int(getattr(limits, cap))


@dataclass(frozen=True, slots=True)
class BytesSpec(FieldSpec):
    """A byte string of ``min_length..max_length`` bytes; ``max_length`` may name a limit."""

    min_length: int = 0
    max_length: SizeCap = 0

    def __post_init__(self) -> None:
        _check_cap(self.min_length, "BytesSpec.min_length")
        _check_cap(self.max_length, "BytesSpec.max_length")
        if isinstance(self.max_length, int) and self.max_length < self.min_length:
            raise ValueError("BytesSpec: max_length < min_length")

    @classmethod
    def exact(cls, length: int) -> BytesSpec:
        return cls(min_length=length, max_length=length)

    def _check(self, value: object, limits: WireLimits | None, path: str) -> bytes:
        if not isinstance(value, bytes):
            raise WireError(f"{path}: expected bytes, got {type(value).__name__}")
        self.check_length(len(value), limits, path)
        return value

    def check_length(self, length: int, limits: WireLimits | None, path: str) -> None:
        cap = _resolve_cap(self.max_length, limits)
        if length < self.min_length or (cap is not None and length > cap):
            bound = f"{self.min_length}..{cap if cap is not None else self.max_length}"
            raise WireError(f"{path}: {length} bytes, expected {bound}")

    def to_wire(self, value: object, limits: WireLimits | None, path: str) -> object:
        return self._check(value, limits, path)

    def from_wire(self, raw: object, limits: WireLimits, path: str) -> object:
        return self._check(raw, limits, path)

    def max_size(self, limits: WireLimits) -> int:
        cap = _resolve_cap(self.max_length, limits)
        assert cap is not None  # limits given
        return _head_size(cap) + cap


@dataclass(frozen=True, slots=True)
class TextSpec(FieldSpec):
    """A UTF-8 string of at most ``max_length`` encoded bytes, optionally matching ``pattern``."""

    max_length: int
    pattern: str | None = None

    def __post_init__(self) -> None:
        _check_cap(self.max_length, "TextSpec.max_length")
        if self.pattern is not None:
            re.compile(self.pattern)

    def _check(self, value: object, path: str) -> str:
        if type(value) is not str:
            raise WireError(f"{path}: expected text, got {type(value).__name__}")
        try:
            length = len(value.encode("utf-8"))
        except UnicodeError as error:  # lone surrogates cannot be sent
            raise WireError(f"{path}: text is not valid Unicode") from error
        if length > self.max_length:
            raise WireError(f"{path}: text of {length} bytes exceeds {self.max_length}")
        if self.pattern is not None and _compiled(self.pattern).fullmatch(value) is None:
            raise WireError(f"{path}: text does not match {self.pattern}")
        return value

    def to_wire(self, value: object, limits: WireLimits | None, path: str) -> object:
        return self._check(value, path)

    def from_wire(self, raw: object, limits: WireLimits, path: str) -> object:
        return self._check(raw, path)

    def max_size(self, limits: WireLimits) -> int:
        return _head_size(self.max_length) + self.max_length


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@dataclass(frozen=True, slots=True)
class BoolSpec(FieldSpec):
    """``true`` or ``false``; integers are rejected."""

    def _check(self, value: object, path: str) -> bool:
        if type(value) is not bool:
            raise WireError(f"{path}: expected a boolean, got {type(value).__name__}")
        return value

    def to_wire(self, value: object, limits: WireLimits | None, path: str) -> object:
        return self._check(value, path)

    def from_wire(self, raw: object, limits: WireLimits, path: str) -> object:
        return self._check(raw, path)

    def max_size(self, limits: WireLimits) -> int:
        return 1


@dataclass(frozen=True, slots=True)
class EnumSpec(FieldSpec):
    """A member of an :class:`enum.Enum` whose values are small non-negative integers."""

    enum_type: type[enum.Enum]

    def __post_init__(self) -> None:
        for member in self.enum_type:
            if type(member.value) is not int or not 0 <= member.value <= _U64_MAX:
                raise ValueError(f"{self.enum_type.__name__}: wire enums need integer values")

    def to_wire(self, value: object, limits: WireLimits | None, path: str) -> object:
        if not isinstance(value, self.enum_type):
            raise WireError(f"{path}: expected {self.enum_type.__name__}, got {value!r}")
        return value.value

    def from_wire(self, raw: object, limits: WireLimits, path: str) -> object:
        if type(raw) is not int:
            raise WireError(f"{path}: expected an integer code, got {type(raw).__name__}")
        try:
            return self.enum_type(raw)
        except ValueError:
            raise WireError(f"{path}: {raw} is not a {self.enum_type.__name__}") from None

    def max_size(self, limits: WireLimits) -> int:
        return max(_head_size(member.value) for member in self.enum_type)


@dataclass(frozen=True, slots=True)
class OptionalSpec(FieldSpec):
    """``null`` or a value of ``inner``."""

    inner: FieldSpec

    def to_wire(self, value: object, limits: WireLimits | None, path: str) -> object:
        return None if value is None else self.inner.to_wire(value, limits, path)

    def from_wire(self, raw: object, limits: WireLimits, path: str) -> object:
        return None if raw is None else self.inner.from_wire(raw, limits, path)

    def max_size(self, limits: WireLimits) -> int:
        return max(1, self.inner.max_size(limits))

    def max_items(self) -> int:
        return self.inner.max_items()

    def max_depth(self) -> int:
        return self.inner.max_depth()

    def max_array_length(self) -> int:
        return self.inner.max_array_length()


@dataclass(frozen=True, slots=True)
class ListSpec(FieldSpec):
    """An array of ``min_length..max_length`` items, a ``tuple`` in Python.

    With ``strictly_increasing`` the items (integers, bytes, or records of an ordered dataclass,
    compared field by field) must be sorted without repeats, which gives sets one canonical
    encoding: a decoder never accepts a reordering that re-encodes differently.
    """

    item: FieldSpec
    max_length: int
    min_length: int = 0
    strictly_increasing: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.min_length <= self.max_length <= 1 << 20:
            raise ValueError(f"bad list bounds {self.min_length}..{self.max_length}")
        if self.strictly_increasing and not isinstance(self.item, IntSpec | BytesSpec | RecordSpec):
            raise ValueError("strictly_increasing needs integer, bytes or record items")

    def _check_length(self, length: int, path: str) -> None:
        if not self.min_length <= length <= self.max_length:
            raise WireError(
                f"{path}: {length} items, expected {self.min_length}..{self.max_length}"
            )

    def _check_order(self, items: list[object], path: str) -> None:
        if self.strictly_increasing:
            for index in range(1, len(items)):
                previous, current = items[index - 1], items[index]
                try:
                    increasing = bool(previous < current)  # type: ignore[operator]
                except TypeError as error:
                    raise WireError(f"{path}: items are not comparable") from error
                if not increasing:
                    raise WireError(f"{path}: items must be strictly increasing")

    def to_wire(self, value: object, limits: WireLimits | None, path: str) -> object:
        if type(value) is not tuple:
            raise WireError(f"{path}: expected a tuple, got {type(value).__name__}")
        self._check_length(len(value), path)
        items = [self.item.to_wire(item, limits, f"{path}[{i}]") for i, item in enumerate(value)]
        self._check_order(items, path)
        return items

    def from_wire(self, raw: object, limits: WireLimits, path: str) -> object:
        if type(raw) is not list:
            raise WireError(f"{path}: expected an array, got {type(raw).__name__}")
        self._check_length(len(raw), path)
        items = [self.item.from_wire(item, limits, f"{path}[{i}]") for i, item in enumerate(raw)]
        self._check_order(items, path)
        return tuple(items)

    def max_size(self, limits: WireLimits) -> int:
        return _head_size(self.max_length) + self.max_length * self.item.max_size(limits)

    def max_items(self) -> int:
        return 1 + self.max_length * self.item.max_items()

    def max_depth(self) -> int:
        return 1 + self.item.max_depth()

    def max_array_length(self) -> int:
        return max(self.max_length, self.item.max_array_length())


@dataclass(frozen=True, slots=True)
class RecordSpec(FieldSpec):
    """A dataclass as an array of its fields in declaration order (no names, no type id)."""

    record_type: type
    fields: tuple[tuple[str, FieldSpec], ...]

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.record_type):
            raise TypeError(f"{self.record_type.__name__} is not a dataclass")
        declared = tuple(field.name for field in dataclasses.fields(self.record_type))
        if declared != tuple(name for name, _ in self.fields):
            raise TypeError(
                f"wire schema of {self.record_type.__name__} lists {self.fields!r} "
                f"but the class has fields {declared!r}"
            )

    def encode_fields(self, value: object, limits: WireLimits | None, path: str) -> list[object]:
        if type(value) is not self.record_type:
            raise WireError(
                f"{path}: expected {self.record_type.__name__}, got {type(value).__name__}"
            )
        return [
            spec.to_wire(getattr(value, name), limits, f"{path}.{name}")
            for name, spec in self.fields
        ]

    def decode_fields(self, raw: list[object], limits: WireLimits, path: str) -> object:
        if len(raw) != len(self.fields):
            raise WireError(f"{path}: {len(raw)} fields, expected {len(self.fields)}")
        values = [
            spec.from_wire(item, limits, f"{path}.{name}")
            for (name, spec), item in zip(self.fields, raw, strict=True)
        ]
        try:
            return self.record_type(*values)
        except WireError:
            raise
        except Exception as error:  # a __post_init__ of a foreign record may refuse the values
            raise WireError(f"{path}: {error}") from error

    def to_wire(self, value: object, limits: WireLimits | None, path: str) -> object:
        return self.encode_fields(value, limits, path)

    def from_wire(self, raw: object, limits: WireLimits, path: str) -> object:
        if type(raw) is not list:
            raise WireError(f"{path}: expected an array, got {type(raw).__name__}")
        return self.decode_fields(raw, limits, path)

    def max_size(self, limits: WireLimits) -> int:
        return _head_size(len(self.fields)) + sum(spec.max_size(limits) for _, spec in self.fields)

    def max_items(self) -> int:
        return 1 + sum(spec.max_items() for _, spec in self.fields)

    def max_depth(self) -> int:
        return 1 + max((spec.max_depth() for _, spec in self.fields), default=0)

    def max_array_length(self) -> int:
        nested = (spec.max_array_length() for _, spec in self.fields)
        return max(len(self.fields), *nested) if self.fields else 0


# --------------------------------------------------------------------------------------------
# Reusable annotated field types.


def _uint(bits: int) -> IntSpec:
    return IntSpec(0, (1 << bits) - 1)


U8 = Annotated[int, _uint(8)]
U16 = Annotated[int, _uint(16)]
U32 = Annotated[int, _uint(32)]
U64 = Annotated[int, _uint(64)]
PairIndex = Annotated[int, IntSpec(0, MAX_SHARDS - 1)]
"""A sliver pair or shard index, 0..255."""
Hash32 = Annotated[bytes, BytesSpec.exact(HASH_LENGTH)]
BlobIdBytes = Annotated[BlobId, BytesSpec.exact(HASH_LENGTH)]
NetworkIdBytes = Annotated[bytes, BytesSpec.exact(HASH_LENGTH)]
"""The network id: the hash of the genesis file."""
PublicKeyBytes = Annotated[bytes, BytesSpec.exact(PUBLIC_KEY_LENGTH)]
SignatureBytes = Annotated[bytes, BytesSpec.exact(SIGNATURE_LENGTH)]
SliverData = Annotated[bytes, BytesSpec(min_length=1, max_length="max_sliver_size")]
SymbolData = Annotated[bytes, BytesSpec(min_length=1, max_length="max_symbol_size")]
MerkleProof = Annotated[tuple[bytes, ...], ListSpec(BytesSpec.exact(HASH_LENGTH), MAX_PROOF_LENGTH)]
ErrorReason = Annotated[str, TextSpec(MAX_ERROR_REASON_LENGTH, ERROR_REASON_PATTERN)]
ErrorText = Annotated[str, TextSpec(MAX_ERROR_MESSAGE_LENGTH)]
PairIndexSet = Annotated[
    tuple[int, ...],
    ListSpec(IntSpec(0, MAX_SHARDS - 1), MAX_SHARDS, strictly_increasing=True),
]
"""A set of pair indices, sent sorted and without repeats."""


# --------------------------------------------------------------------------------------------
# The registry.


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every registered message; ``type_id`` is set by :func:`register`."""

    type_id: ClassVar[int]


M = TypeVar("M", bound=Message)
A = TypeVar("A", bound=Message)
B = TypeVar("B", bound=Message)
C = TypeVar("C", bound=Message)
T = TypeVar("T")

_MESSAGES_BY_ID: dict[int, type[Message]] = {}
_RECORD_SPECS: dict[type, RecordSpec] = {}


def _spec_for_type(hint: object, where: str) -> FieldSpec:
    """The wire spec of one field from its (resolved) type hint."""
    if typing.get_origin(hint) is Annotated:
        for extra in getattr(hint, "__metadata__", ()):
            if isinstance(extra, FieldSpec):
                return extra
        hint = typing.get_args(hint)[0]
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        arguments = [argument for argument in typing.get_args(hint) if argument is not type(None)]
        if len(arguments) == 1 and len(typing.get_args(hint)) == 2:
            return OptionalSpec(_spec_for_type(arguments[0], where))
    if hint is bool:
        return BoolSpec()
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return EnumSpec(hint)
    if isinstance(hint, type) and hint in _RECORD_SPECS:
        return _RECORD_SPECS[hint]
    raise TypeError(f"{where}: no wire spec for {hint!r}; annotate it with a FieldSpec")


def _build_record_spec(cls: type) -> RecordSpec:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass")
    parameters = getattr(cls, "__dataclass_params__", None)
    if parameters is None or not parameters.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} must be @dataclass(frozen=True, slots=True)")
    hints = typing.get_type_hints(cls, include_extras=True)
    return RecordSpec(
        cls,
        tuple(
            (field.name, _spec_for_type(hints[field.name], f"{cls.__name__}.{field.name}"))
            for field in dataclasses.fields(cls)
        ),
    )


def record(cls: type[T]) -> type[T]:
    """Make a frozen, slotted dataclass usable as a nested field (an array of its fields)."""
    if cls in _RECORD_SPECS:
        raise ValueError(f"{cls.__name__} is already a wire record")
    _RECORD_SPECS[cls] = _build_record_spec(cls)
    return cls


def register(type_id: int) -> Callable[[type[M]], type[M]]:
    """Register a message class under ``type_id``; a repeated id or class fails at import."""
    if type(type_id) is not int or not 1 <= type_id <= 0xFFFF:
        raise ValueError(f"type id must be in 1..65535, got {type_id!r}")

    def decorate(cls: type[M]) -> type[M]:
        if not issubclass(cls, Message) or cls is Message:
            raise TypeError(f"{cls.__name__} must subclass Message")
        if type_id in _MESSAGES_BY_ID:
            other = _MESSAGES_BY_ID[type_id].__name__
            raise ValueError(f"type id {type_id} of {cls.__name__} is already used by {other}")
        if cls in _RECORD_SPECS:
            raise ValueError(f"{cls.__name__} is already registered")
        spec = _build_record_spec(cls)
        if len(spec.fields) + 1 >= 1 << 16:
            raise TypeError(f"{cls.__name__} has too many fields")
        _RECORD_SPECS[cls] = spec
        _MESSAGES_BY_ID[type_id] = cls
        cls.type_id = type_id
        return cls

    return decorate


def registered_messages() -> Mapping[int, type[Message]]:
    """Every registered message class by type id (read-only)."""
    return types.MappingProxyType(_MESSAGES_BY_ID)


def message_class(type_id: int) -> type[Message]:
    """The class registered under ``type_id``; ``WireError`` if there is none."""
    try:
        return _MESSAGES_BY_ID[type_id]
    except KeyError:
        raise WireError(f"unknown message type id {type_id}") from None


def message_type_id(message: Message | type[Message]) -> int:
    """The type id of a registered message class or instance."""
    cls = message if isinstance(message, type) else type(message)
    type_id: object = getattr(cls, "type_id", None)
    if type(type_id) is not int or _MESSAGES_BY_ID.get(type_id) is not cls:
        raise TypeError(f"{cls.__name__} is not a registered message")
    return type_id


def record_spec(cls: type) -> RecordSpec:
    """The wire schema of a registered message or record class."""
    try:
        return _RECORD_SPECS[cls]
    except KeyError:
        raise TypeError(f"{cls.__name__} is not a registered message or record") from None


# Metadata belongs to core.metadata; its wire form is fixed here.
_RECORD_SPECS[SliverPairMetadata] = RecordSpec(
    SliverPairMetadata,
    (
        ("primary_hash", BytesSpec.exact(HASH_LENGTH)),
        ("secondary_hash", BytesSpec.exact(HASH_LENGTH)),
    ),
)
_RECORD_SPECS[Metadata] = RecordSpec(
    Metadata,
    (
        ("encoding_type", _uint(8)),
        ("unencoded_length", _uint(64)),
        ("hashes", ListSpec(_RECORD_SPECS[SliverPairMetadata], MAX_SHARDS, min_length=1)),
    ),
)


# --------------------------------------------------------------------------------------------
# Sizes and bounds per message type.


@dataclass(frozen=True, slots=True)
class _Bounds:
    max_size: int
    max_items: int
    max_depth: int
    max_array_length: int
    field_count: int


_BOUNDS_CACHE: dict[tuple[int, WireLimits], _Bounds] = {}


def _bounds(cls: type[Message], limits: WireLimits) -> _Bounds:
    key = (cls.type_id, limits)
    cached = _BOUNDS_CACHE.get(key)
    if cached is None:
        if len(_BOUNDS_CACHE) >= 1024:
            _BOUNDS_CACHE.clear()
        cached = _BOUNDS_CACHE[key] = _compute_bounds(cls, limits)
    return cached


def _compute_bounds(cls: type[Message], limits: WireLimits) -> _Bounds:
    spec = record_spec(cls)
    field_count = len(spec.fields) + 1  # the type id comes first
    return _Bounds(
        max_size=_head_size(field_count)
        + _head_size(cls.type_id)
        + sum(field.max_size(limits) for _, field in spec.fields),
        max_items=spec.max_items() + 1,
        max_depth=spec.max_depth(),
        max_array_length=max(field_count, spec.max_array_length()),
        field_count=field_count,
    )


def max_encoded_size(cls: type[Message], limits: WireLimits = DEFAULT_LIMITS) -> int:
    """Largest valid encoding of ``cls`` under ``limits``: the frame cap for net/ to use."""
    message_type_id(cls)
    return _bounds(cls, limits).max_size


# --------------------------------------------------------------------------------------------
# Encoding.


def encode(message: Message, *, limits: WireLimits | None = None) -> bytes:
    """Canonical CBOR bytes of ``message``; ``WireError`` if it violates its schema.

    Fixed caps (hash lengths, ranges, list lengths) are always checked; caps named after a
    network limit (sliver and symbol sizes) only when ``limits`` is given.
    """
    cls = type(message)
    message_type_id(cls)
    fields = record_spec(cls).encode_fields(message, limits, cls.__name__)
    try:
        return cbor2.dumps([cls.type_id, *fields], canonical=True)
    except Exception as error:  # cannot happen for schema-checked values; keep the promise
        raise WireError(f"{cls.__name__}: cannot encode: {error}") from error


PARTS_MIN_TAIL = 64 * 1024
"""From this size a trailing byte string is handed out as a view by :func:`encode_parts`."""


def _bytes_head(length: int) -> bytes:
    """The canonical (shortest) CBOR head of a byte string of ``length`` bytes."""
    if length < 24:
        return bytes([0x40 | length])
    size = _head_size(length)
    return bytes([0x40 | {2: 24, 3: 25, 5: 26, 9: 27}[size]]) + length.to_bytes(size - 1, "big")


def encode_parts(message: Message, *, limits: WireLimits | None = None) -> tuple[bytes, memoryview]:
    """``encode(message)`` as ``(head, tail)`` with ``head + tail`` the same bytes, without
    copying a large trailing byte string.

    When the message's last field is a byte string that is a ``memoryview`` or at least
    :data:`PARTS_MIN_TAIL` bytes, ``tail`` is a view of it and ``head`` the encoding up to its
    CBOR head; otherwise ``tail`` is empty. A sliver then goes from the encoder's buffer to the
    muxer without the two copies of ``bytes(sliver)`` and ``cbor2.dumps``. That field alone may
    be a (C-contiguous) ``memoryview`` here; its length is checked as ``encode`` checks it.
    """
    cls = type(message)
    spec = record_spec(cls)
    if spec.fields:
        name, field_spec = spec.fields[-1]
        value = getattr(message, name)
        if isinstance(field_spec, BytesSpec) and (
            isinstance(value, memoryview)
            or (isinstance(value, bytes) and len(value) >= PARTS_MIN_TAIL)
        ):
            view = memoryview(value)
            view = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
            # The placeholder passes the field's own checks; the view's length is checked here.
            placeholder = bytes(field_spec.min_length)
            field_spec.check_length(len(view), limits, f"{cls.__name__}.{name}")
            head = encode(dataclasses.replace(message, **{name: placeholder}), limits=limits)
            cut = len(head) - _head_size(len(placeholder)) - len(placeholder)
            return head[:cut] + _bytes_head(len(view)), view
    return encode(message, limits=limits), memoryview(b"")


def signing_bytes(body: Message) -> bytes:
    """The bytes a signer signs for ``body``: its canonical encoding.

    The leading type id separates the kinds of signed body, and decoding rejects every other
    encoding of the same value, so a signature covers exactly one message.
    """
    return encode(body)


# --------------------------------------------------------------------------------------------
# Decoding.

_MIN_ARGUMENT = {24: 24, 25: 1 << 8, 26: 1 << 16, 27: 1 << 32}
_MAJOR_UNSIGNED, _MAJOR_NEGATIVE, _MAJOR_BYTES, _MAJOR_TEXT, _MAJOR_ARRAY = 0, 1, 2, 3, 4
_SIMPLE_ALLOWED = frozenset({20, 21, 22})  # false, true, null


def _read_head(data: bytes | bytearray, position: int) -> tuple[int, int, int]:
    """(major type, argument, next position) of the head at ``position``, shortest form only."""
    size = len(data)
    if position >= size:
        raise WireError("truncated input")
    initial = data[position]
    position += 1
    major, info = initial >> 5, initial & 0x1F
    if major == 7:
        if info not in _SIMPLE_ALLOWED:
            raise WireError(f"unsupported CBOR simple value or float (0x{initial:02x})")
        return major, info, position
    if info < 24:
        return major, info, position
    if info > 27:
        raise WireError(f"indefinite length or reserved CBOR head (0x{initial:02x})")
    width = 1 << (info - 24)
    if width > size - position:
        raise WireError("truncated input")
    argument = int.from_bytes(data[position : position + width], "big")
    if argument < _MIN_ARGUMENT[info]:
        raise WireError("non-canonical CBOR: integer or length not in shortest form")
    return major, argument, position + width


def _scan(data: bytes | bytearray, bounds: _Bounds) -> None:
    """Walk the item heads without building values: subset, lengths in range, bounded shape."""
    size = len(data)
    position = 0
    items = 0
    open_arrays = [1]  # items still expected at each open nesting level
    while open_arrays:
        if open_arrays[-1] == 0:
            open_arrays.pop()
            continue
        open_arrays[-1] -= 1
        items += 1
        if items > bounds.max_items:
            raise WireError(f"more than {bounds.max_items} CBOR items")
        major, argument, position = _read_head(data, position)
        if major in (_MAJOR_UNSIGNED, _MAJOR_NEGATIVE) or major == 7:
            continue
        if major in (_MAJOR_BYTES, _MAJOR_TEXT):
            if argument > size - position:
                raise WireError(f"declared length {argument} exceeds the remaining input")
            position += argument
            continue
        if major == _MAJOR_ARRAY:
            if argument > bounds.max_array_length:
                raise WireError(f"array of {argument} items exceeds {bounds.max_array_length}")
            if len(open_arrays) > bounds.max_depth:
                raise WireError(f"nesting deeper than {bounds.max_depth}")
            open_arrays.append(argument)
            continue
        raise WireError("CBOR maps and tags are not allowed")
    if position != size:
        raise WireError(f"{size - position} bytes after the end of the message")


def _cbor_loads(data: bytes | bytearray, max_depth: int) -> object:
    return cbor2.loads(data, max_depth=max_depth, allow_indefinite=False)


def _cbor_loads_plain(
    data: bytes | bytearray, max_depth: int
) -> object:  # cbor2 < 6: no such options
    return cbor2.loads(data)


def _pick_loads() -> Callable[[bytes | bytearray, int], object]:
    try:
        cbor2.loads(b"\x80", max_depth=2, allow_indefinite=False)
    except TypeError:
        return _cbor_loads_plain  # the scan already enforces both
    return _cbor_loads


_loads = _pick_loads()


def _expected_classes(expected: object) -> tuple[type[Message], ...]:
    classes = expected if isinstance(expected, tuple) else (expected,)
    if not classes:
        raise TypeError("expected names no message type")
    for cls in classes:
        if not isinstance(cls, type) or not issubclass(cls, Message):
            raise TypeError(f"expected must be message classes, got {cls!r}")
        message_type_id(cls)
    return classes


@overload
def decode(
    data: bytes | bytearray, expected: type[M], *, limits: WireLimits = ..., view_tail: bool = ...
) -> M: ...
@overload
def decode(
    data: bytes | bytearray,
    expected: tuple[type[A], type[B]],
    *,
    limits: WireLimits = ...,
    view_tail: bool = ...,
) -> A | B: ...
@overload
def decode(
    data: bytes | bytearray,
    expected: tuple[type[A], type[B], type[C]],
    *,
    limits: WireLimits = ...,
    view_tail: bool = ...,
) -> A | B | C: ...
@overload
def decode(
    data: bytes | bytearray,
    expected: tuple[type[Message], ...],
    *,
    limits: WireLimits = ...,
    view_tail: bool = ...,
) -> Message: ...
def decode(
    data: bytes | bytearray,
    expected: type[Message] | tuple[type[Message], ...],
    *,
    limits: WireLimits = DEFAULT_LIMITS,
    view_tail: bool = False,
) -> Message:
    """Parse one message of an ``expected`` type from untrusted ``data``.

    ``limits`` are the network's caps (from genesis); any malformed, oversized, non-canonical or
    unexpected input raises :class:`WireError` and nothing else. With ``view_tail``, a last
    field that is a byte string of at least :data:`PARTS_MIN_TAIL` bytes comes out as a
    ``memoryview`` of ``data`` instead of a copy (the counterpart of :func:`encode_parts`; for
    callers that only read the field, such as a client verifying a sliver). A ``bytearray``
    (a big received frame: :func:`walrus_p2p.net.framing.read_exactly`) is read where it lies,
    not copied into ``bytes`` first; its owner must not change it while the message is used.
    """
    classes = _expected_classes(expected)
    if not isinstance(data, bytes | bytearray):
        raise WireError(f"expected bytes, got {type(data).__name__}")
    largest = max(_bounds(cls, limits).max_size for cls in classes)
    if len(data) > largest:
        raise WireError(f"message of {len(data)} bytes exceeds the maximum of {largest}")
    try:
        return _decode_checked(data, classes, limits, view_tail)
    except WireError:
        raise
    except Exception as error:  # a decoder bug must not become a crash; tests look for these
        raise WireError(f"undecodable message: {type(error).__name__}") from error


def _skip_item(data: bytes | bytearray, position: int) -> int:
    """The position after the item at ``position`` (in data that :func:`_scan` accepted)."""
    pending = 1
    while pending:
        pending -= 1
        major, argument, position = _read_head(data, position)
        if major in (_MAJOR_BYTES, _MAJOR_TEXT):
            position += argument
        elif major == _MAJOR_ARRAY:
            pending += argument
    return position


def _tail_view(
    data: bytes | bytearray, cls: type[Message], field_count: int, limits: WireLimits
) -> tuple[bytes | bytearray, str, memoryview] | None:
    """For ``view_tail``: the message with its large last byte string replaced by the field's
    shortest allowed placeholder, the field's name and a view of the real bytes; or None."""
    name, spec = record_spec(cls).fields[-1]
    if not isinstance(spec, BytesSpec):
        return None
    _, _, position = _read_head(data, 0)
    for _ in range(field_count - 1):
        position = _skip_item(data, position)
    major, length, start = _read_head(data, position)
    if major != _MAJOR_BYTES or length < PARTS_MIN_TAIL:
        return None
    spec.check_length(length, limits, f"{cls.__name__}.{name}")
    placeholder = data[:position] + _bytes_head(spec.min_length) + bytes(spec.min_length)
    return placeholder, name, memoryview(data)[start : start + length]


HEAD_PEEK_BYTES = 18
"""Bytes that always hold a message's array head and type id (two CBOR heads of at most 9
bytes): what :func:`max_size_for_head` needs to see."""


def _message_class_at_start(
    data: bytes | bytearray, classes: tuple[type[Message], ...]
) -> tuple[type[Message], int]:
    """The expected class named by the type id at the start of ``data``, and the array length."""
    major, field_count, position = _read_head(data, 0)
    if major != _MAJOR_ARRAY:
        raise WireError("a message must be a CBOR array")
    major, type_id, _ = _read_head(data, position)
    if major != _MAJOR_UNSIGNED:
        raise WireError("a message must start with its type id")
    cls = _MESSAGES_BY_ID.get(type_id)
    if cls is None or cls not in classes:
        names = ", ".join(expected.__name__ for expected in classes)
        raise WireError(f"unexpected message type id {type_id}, expected {names}")
    return cls, field_count


def message_name(data: bytes | bytearray | memoryview) -> str | None:
    """The registered message class name that an encoding starts with, or None (a label for
    traffic accounting: nothing is decoded or checked beyond the two first heads)."""
    try:
        head = bytes(data[:HEAD_PEEK_BYTES])
        major, _, position = _read_head(head, 0)
        if major != _MAJOR_ARRAY:
            return None
        major, type_id, _ = _read_head(head, position)
    except WireError:
        return None
    cls = _MESSAGES_BY_ID.get(type_id) if major == _MAJOR_UNSIGNED else None
    return None if cls is None else cls.__name__


def max_size_for_head(
    head: bytes | bytearray,
    expected: type[Message] | tuple[type[Message], ...],
    *,
    limits: WireLimits = DEFAULT_LIMITS,
) -> int:
    """The largest valid encoding of the message type that ``head`` (the first
    :data:`HEAD_PEEK_BYTES` bytes of a message, or all of a shorter one) announces.

    A server reads this much of a request, then refuses a frame larger than its type allows
    before reading (or budgeting) the rest: a status request needs a few hundred bytes, not
    the sliver cap (docs/network.md, "Inbound limits"). ``WireError`` if the head names no
    expected type."""
    cls, _ = _message_class_at_start(head, _expected_classes(expected))
    return _bounds(cls, limits).max_size


def _decode_checked(
    data: bytes | bytearray,
    classes: tuple[type[Message], ...],
    limits: WireLimits,
    view_tail: bool = False,
) -> Message:
    cls, field_count = _message_class_at_start(data, classes)
    bounds = _bounds(cls, limits)
    if len(data) > bounds.max_size:
        raise WireError(f"{cls.__name__} of {len(data)} bytes exceeds {bounds.max_size}")
    if field_count != bounds.field_count:
        raise WireError(
            f"{cls.__name__}: {field_count - 1} fields, expected {bounds.field_count - 1}"
        )
    _scan(data, bounds)
    tail = _tail_view(data, cls, field_count, limits) if view_tail and field_count > 1 else None
    try:
        raw = _loads(data if tail is None else tail[0], bounds.max_depth)
    except Exception as error:  # cbor2 errors, invalid UTF-8, MemoryError
        raise WireError(f"{cls.__name__}: malformed CBOR: {error}") from error
    if type(raw) is not list or not raw or raw[0] != cls.type_id:
        raise WireError(f"{cls.__name__}: malformed message")
    message = record_spec(cls).decode_fields(raw[1:], limits, cls.__name__)
    assert isinstance(message, cls)
    if tail is not None:
        _, name, view = tail
        message = dataclasses.replace(message, **{name: view})
    return message


# --------------------------------------------------------------------------------------------
# Messages. Type ids are part of the protocol: never change or reuse one.


@register(1)
@dataclass(frozen=True, slots=True)
class ErrorReply(Message):
    """Any request can be answered with this: a stable UPPER_SNAKE reason and a short text."""

    reason: ErrorReason
    message: ErrorText

    @classmethod
    def create(cls, reason: str, message: str) -> ErrorReply:
        """An error reply that always encodes: an invalid reason becomes ``INTERNAL`` and the
        message is cut to its byte cap on a character boundary."""
        if len(reason) > MAX_ERROR_REASON_LENGTH or not _compiled(ERROR_REASON_PATTERN).fullmatch(
            reason
        ):
            reason = "INTERNAL"
        raw = message.encode("utf-8", "replace")[:MAX_ERROR_MESSAGE_LENGTH]
        return cls(reason=reason, message=raw.decode("utf-8", "ignore"))


@register(2)
@dataclass(frozen=True, slots=True)
class StorageConfirmation(Message):
    """The signed body: "I hold all slivers of ``blob_id`` for my shards in ``epoch``".

    Signers sign :func:`signing_bytes` of this body with the key given in ``public_key``.
    """

    network_id: NetworkIdBytes
    epoch: U64
    blob_id: BlobIdBytes
    permanent: bool
    public_key: PublicKeyBytes


@register(3)
@dataclass(frozen=True, slots=True)
class SignedStorageConfirmation(Message):
    """A confirmation and the signature over ``signing_bytes(confirmation)`` (unverified here)."""

    confirmation: StorageConfirmation
    signature: SignatureBytes


@register(10)
@dataclass(frozen=True, slots=True)
class StoreMetadataRequest(Message):
    blob_id: BlobIdBytes
    metadata: Metadata


@register(11)
@dataclass(frozen=True, slots=True)
class StoreMetadataReply(Message):
    """The metadata was verified against the blob id and stored."""


@register(12)
@dataclass(frozen=True, slots=True)
class StoreSliverRequest(Message):
    """One sliver of pair ``pair_index``: for a secondary sliver that is sliver n-1-pair_index."""

    blob_id: BlobIdBytes
    pair_index: PairIndex
    sliver_kind: SliverKind
    data: SliverData


@register(13)
@dataclass(frozen=True, slots=True)
class StoreSliverReply(Message):
    """The sliver was verified against the metadata and written durably."""


@register(14)
@dataclass(frozen=True, slots=True)
class GetMetadataRequest(Message):
    blob_id: BlobIdBytes


@register(15)
@dataclass(frozen=True, slots=True)
class GetMetadataReply(Message):
    metadata: Metadata


@register(16)
@dataclass(frozen=True, slots=True)
class GetSliverRequest(Message):
    blob_id: BlobIdBytes
    pair_index: PairIndex
    sliver_kind: SliverKind


@register(17)
@dataclass(frozen=True, slots=True)
class GetSliverReply(Message):
    data: SliverData


@register(18)
@dataclass(frozen=True, slots=True)
class GetConfirmationRequest(Message):
    """Ask for a signed confirmation that the peer holds all its slivers of the blob; the
    writer names the permanence it registered, and the confirmation signs it."""

    blob_id: BlobIdBytes
    epoch: U64
    permanent: bool


@register(19)
@dataclass(frozen=True, slots=True)
class GetConfirmationReply(Message):
    confirmation: SignedStorageConfirmation


@register(20)
@dataclass(frozen=True, slots=True)
class GetRecoverySymbolRequest(Message):
    """Ask the holder of pair ``source_pair_index`` for the symbol its ``source_kind`` sliver
    shares with the lost sliver ``target_index`` (docs/design.md §3, repair)."""

    blob_id: BlobIdBytes
    source_pair_index: PairIndex
    source_kind: SliverKind
    target_index: PairIndex


@register(21)
@dataclass(frozen=True, slots=True)
class GetRecoverySymbolReply(Message):
    """The symbol and its Merkle proof against the source sliver's hash in the metadata."""

    symbol: SymbolData
    proof: MerkleProof


@record
@dataclass(frozen=True, slots=True)
class RecoverySymbolItem:
    """One symbol of a :class:`GetRecoverySymbolsReply`: from the holder's sliver of pair
    ``source_pair_index``, with its Merkle proof against that sliver's hash in the metadata."""

    source_pair_index: PairIndex
    symbol: SymbolData
    proof: MerkleProof


@register(47)
@dataclass(frozen=True, slots=True)
class GetRecoverySymbolsRequest(Message):
    """Ask one holder, in one request, for the symbols that its ``source_kind`` slivers of the
    pairs ``source_pair_indices`` share with the lost sliver ``target_index``: a rebuild asks each
    helper once instead of once per symbol (docs/healing.md, "Blob sync")."""

    blob_id: BlobIdBytes
    source_kind: SliverKind
    source_pair_indices: PairIndexSet
    target_index: PairIndex


@register(48)
@dataclass(frozen=True, slots=True)
class GetRecoverySymbolsReply(Message):
    """The symbols the holder has, in the order asked; pairs it does not hold are left out."""

    symbols: Annotated[
        tuple[RecoverySymbolItem, ...], ListSpec(record_spec(RecoverySymbolItem), MAX_SHARDS)
    ]


PING_BLOB_ID = BlobId(bytes(HASH_LENGTH))
"""A blob id nobody stores: a :class:`BlobStatusRequest` for it is the cheapest request a
storage peer answers, so clients and peers use it as a ping."""


@register(22)
@dataclass(frozen=True, slots=True)
class BlobStatusRequest(Message):
    blob_id: BlobIdBytes


@register(23)
@dataclass(frozen=True, slots=True)
class BlobStatusReply(Message):
    """What one storage peer knows and holds of a blob."""

    known: bool
    """The peer has a register record for the blob."""
    invalid: bool
    """The blob was marked invalid (inconsistent encoding)."""
    has_metadata: bool
    stored_pair_indices: PairIndexSet
    """Sliver pairs held completely (both slivers), sorted."""
    certified_epoch: U64 | None
    end_epoch: U64 | None
