"""Blob attributes (docs/attributes.md): the signed record, its merge, what a peer keeps, and the
headers the gateway derives from them."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest

from walrus_p2p.api import (
    GatewayLimits,
    GatewayPolicy,
    attribute_headers_from_text,
    build_gateway_app,
)
from walrus_p2p.api._web import attribute_headers
from walrus_p2p.core import records, wire
from walrus_p2p.core.committee import Committee, Member
from walrus_p2p.core.identity import Identity
from walrus_p2p.errors import ConfigError, VerificationError, WireError
from walrus_p2p.node.committee_view import CommitteeView
from walrus_p2p.node.protocol import RECORDS_NAMESPACE, ProtocolRefusal
from walrus_p2p.node.record_book import RecordBook
from walrus_p2p.storage import open_store
from walrus_p2p.testing.app_client import open_app_client
from walrus_p2p.testing.fake_service import FakeBlobService
from walrus_p2p.types import BlobId, Epoch, PeerId, blob_id_from_text

NETWORK = bytes(range(32))
BLOB = BlobId(b"\x11" * 32)
OWNER = Identity.from_seed(b"\x07" * 32)
OTHER = Identity.from_seed(b"\x08" * 32)


def _attribute(
    attributes: dict[str, str], *, version: int = 0, owner: Identity = OWNER, start: int = 1
) -> records.BlobAttribute:
    return records.sign_attribute(
        owner,
        network_id=NETWORK,
        blob_id=BLOB,
        start_epoch=start,
        version=version,
        attributes=attributes,
    )


def _register(owner: Identity = OWNER, start: int = 1) -> records.BlobRegister:
    return records.sign_register(
        owner,
        network_id=NETWORK,
        blob_id=BLOB,
        size=100,
        start_epoch=start,
        end_epoch=start + 5,
        deletable=True,
    )


def test_an_attribute_record_verifies_and_round_trips() -> None:
    record = _attribute({"content-type": "image/png", "link": "<https://example.org/>"})
    record.verify(NETWORK)
    decoded = wire.decode(wire.encode(record), records.BLOB_RECORD_TYPES)
    assert decoded == record
    assert record.attributes == {"content-type": "image/png", "link": "<https://example.org/>"}
    assert [pair.key for pair in record.body.pairs] == ["content-type", "link"]


def test_a_forged_or_foreign_attribute_record_is_refused() -> None:
    record = _attribute({"content-type": "image/png"})
    forged = replace(record, body=replace(record.body, owner=OTHER.public_key.raw))
    with pytest.raises(VerificationError):
        forged.verify(NETWORK)
    with pytest.raises(VerificationError):
        record.verify(bytes(32))
    changed = replace(record, body=replace(record.body, version=9))
    with pytest.raises(VerificationError):
        changed.verify(NETWORK)


def test_a_key_named_twice_is_refused_even_with_a_good_signature() -> None:
    pairs = (records.AttributePair("a", "1"), records.AttributePair("a", "2"))
    body = records.BlobAttributeBody(NETWORK, BLOB, OWNER.public_key.raw, Epoch(1), 0, pairs)
    record = records.BlobAttribute(
        body, OWNER.sign(records.BLOB_ATTRIBUTE_CONTEXT, wire.signing_bytes(body))
    )
    with pytest.raises(VerificationError, match="twice"):
        record.verify(NETWORK)


@pytest.mark.parametrize(
    "attributes",
    [
        {"content-type": "text/html\r\nSet-Cookie: a=b"},
        {"bad\nkey": "x"},
        {"": "empty key"},
        {"k": "v" * (records.MAX_ATTRIBUTE_VALUE_LENGTH + 1)},
        {"k" * (records.MAX_ATTRIBUTE_KEY_LENGTH + 1): "v"},
        {f"key{index}": "v" for index in range(records.MAX_ATTRIBUTES + 1)},
    ],
    ids=["crlf-value", "newline-key", "empty-key", "long-value", "long-key", "too-many"],
)
def test_sets_the_wire_refuses_are_refused_before_signing(attributes: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="attributes not allowed"):
        _attribute(attributes)


def test_a_decoder_refuses_control_characters_in_a_received_record() -> None:
    record = _attribute({"content-type": "text/plain"})
    encoded = wire.encode(record)
    tampered = encoded.replace(b"text/plain", b"text/\r\nlai")
    assert tampered != encoded
    with pytest.raises(WireError):
        wire.decode(tampered, records.BLOB_RECORD_TYPES)


def test_the_highest_version_wins_in_any_order() -> None:
    versions = [
        _attribute({"content-type": "image/png"}, version=0),
        _attribute({"content-type": "image/gif", "x": "y"}, version=1),
        _attribute({}, version=2),
        _attribute({"content-type": "image/webp"}, version=3),
    ]
    key = (OWNER.public_key.raw, 1)
    for order in itertools.permutations(versions):
        state = records.merge_records(BLOB, [_register(), *order])
        assert state.attributes_of(key) == {"content-type": "image/webp"}
        assert state.attributes[key].body.version == 3


def test_two_sets_of_one_version_resolve_the_same_everywhere() -> None:
    first = _attribute({"a": "1"}, version=4)
    second = _attribute({"a": "2"}, version=4)
    one = records.merge_records(BLOB, [first, second])
    other = records.merge_records(BLOB, [second, first])
    assert one.attributes == other.attributes
    winner = one.attributes[(OWNER.public_key.raw, 1)]
    assert winner in (first, second)
    assert records.newer_attribute(first, second) is records.newer_attribute(second, first)


def test_effective_attributes_come_from_live_registrations_first_registrant_first() -> None:
    early = _attribute({"content-type": "image/png", "link": "<a>"}, owner=OTHER, start=1)
    late = _attribute({"content-type": "text/html", "content-language": "de"}, start=3)
    state = records.merge_records(BLOB, [_register(OTHER, 1), _register(OWNER, 3), early, late])
    assert state.effective_attributes == {
        "content-type": "image/png",
        "link": "<a>",
        "content-language": "de",
    }
    deleted = state.with_record(
        records.sign_delete(OTHER, network_id=NETWORK, blob_id=BLOB, start_epoch=1)
    )
    assert deleted.effective_attributes == {"content-type": "text/html", "content-language": "de"}
    # Attributes of a registration nobody registered are kept but never effective.
    stray = records.merge_records(BLOB, [_attribute({"content-type": "text/html"}, start=7)])
    assert stray.effective_attributes == {}


def _book(tmp_path: Path) -> RecordBook:
    return RecordBook(
        store=open_store(tmp_path, capacity_bytes=1 << 20),
        network_id=NETWORK,
        peer_id=PeerId("peer"),
        committees=CommitteeView(
            Committee.create(Epoch(0), [Member(OWNER.peer_id, OWNER.public_key.raw, 1, ())], 4)
        ),
    )


async def test_a_peer_keeps_one_attribute_record_per_registration(tmp_path: Path) -> None:
    book = _book(tmp_path)
    with pytest.raises(ProtocolRefusal) as refused:
        await book.merge(BLOB, [_attribute({"a": "1"})], announce=False)
    assert refused.value.reason == "ATTRIBUTE_UNREGISTERED"
    assert book.load(BLOB) == []

    # A register and its attribute in one batch, the attribute first: both are kept.
    assert await book.merge(BLOB, [_attribute({"a": "1"}), _register()], announce=False) == 2
    assert await book.merge(BLOB, [_attribute({"a": "2"}, version=1)], announce=False) == 1
    # An older version arriving late is neither kept nor counted.
    assert await book.merge(BLOB, [_attribute({"a": "0"}, version=0)], announce=False) == 0
    stored = [
        wire.decode(raw, records.BLOB_RECORD_TYPES)
        for _, raw in book.store.iter_values(RECORDS_NAMESPACE, prefix=bytes(BLOB))
    ]
    kept = [record for record in stored if isinstance(record, records.BlobAttribute)]
    assert [record.attributes for record in kept] == [{"a": "2"}]
    state = await book.blob_state(BLOB)
    assert state.attributes_of((OWNER.public_key.raw, 1)) == {"a": "2"}

    # Reloaded from disk (a restarted peer), the state is the same.
    reloaded = _book(tmp_path / "other")
    reloaded.store = book.store
    assert (await reloaded.blob_state(BLOB)).attributes_of((OWNER.public_key.raw, 1)) == {"a": "2"}


def test_attribute_headers_keep_allowed_printable_ones() -> None:
    attributes = (
        ("Content-Disposition", 'attachment; filename="a.png"'),
        ("content-language", "fr"),
        ("x-secret", "not allowed"),
        ("link", "caf\u00e9"),
    )
    allowed = GatewayPolicy().attribute_headers
    assert attribute_headers(attributes, allowed) == {
        "content-disposition": 'attachment; filename="a.png"',
        "content-language": "fr",
    }
    assert attribute_headers(attributes, attribute_headers_from_text("none")) == {}


@pytest.mark.parametrize(
    "names", ["content-type,etag", "Content-Length", "access-control-allow-origin", "bad name"]
)
def test_the_gateway_refuses_header_names_it_sets_itself(names: str) -> None:
    with pytest.raises(ConfigError):
        GatewayPolicy(attribute_headers=attribute_headers_from_text(names))


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200


async def test_gateway_reads_send_the_owners_headers() -> None:
    service = FakeBlobService()
    text = service.put(PNG)
    service.attributes[blob_id_from_text(text)] = {
        "content-type": "text/html; charset=utf-8",
        "content-disposition": "inline",
        "x-other": "no",
    }
    other = service.put(b"plain words")
    service.attributes[blob_id_from_text(other)] = {"Content-Type": "image/png"}

    app = build_gateway_app(service, GatewayLimits(), GatewayPolicy())
    async with open_app_client(app) as client:
        whole = await client.get(f"/v1/blobs/{text}", headers={"Accept": "image/gif"})
        assert whole.status_code == 200
        assert whole.content == PNG
        # The owner's type beats Accept and sniffing; an active type runs sandboxed.
        assert whole.headers["content-type"] == "text/html; charset=utf-8"
        assert whole.headers["content-security-policy"] == "sandbox"
        assert whole.headers["content-disposition"] == "inline"
        assert "x-other" not in whole.headers
        ranged = await client.get(f"/v1/blobs/{text}", headers={"Range": "bytes=0-3"})
        assert ranged.status_code == 206
        assert ranged.headers["content-type"] == "text/html; charset=utf-8"
        assert ranged.headers["content-disposition"] == "inline"
        head = await client.head(f"/v1/blobs/{text}")
        assert head.headers["content-disposition"] == "inline"
        by_range = await client.get(
            f"/v1/blobs/{text}/byte-range", params={"start": "1", "length": "2"}
        )
        assert by_range.headers["content-type"] == "text/html; charset=utf-8"
        cross = await client.get(f"/v1/blobs/{text}", headers={"Origin": "https://a.example"})
        exposed = cross.headers["access-control-expose-headers"].lower()
        assert "content-disposition" in exposed and "link" in exposed
        passive = await client.get(f"/v1/blobs/{other}")
        assert passive.headers["content-type"] == "image/png"
        assert "content-security-policy" not in passive.headers


async def test_gateway_without_attribute_headers_sniffs_as_before() -> None:
    service = FakeBlobService()
    text = service.put(PNG)
    service.attributes[blob_id_from_text(text)] = {"content-type": "text/html"}

    app = build_gateway_app(service, GatewayLimits(), GatewayPolicy(attribute_headers=()))
    async with open_app_client(app) as client:
        reply = await client.get(f"/v1/blobs/{text}")
        assert reply.headers["content-type"] == "image/png"
        assert "content-security-policy" not in reply.headers
