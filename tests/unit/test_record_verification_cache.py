"""A storage peer verifies each distinct blob record once (``RecordBook.verify``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from walrus_p2p.core import records
from walrus_p2p.core.committee import Committee, Member
from walrus_p2p.core.identity import Identity
from walrus_p2p.errors import VerificationError
from walrus_p2p.node import record_book as record_book_module
from walrus_p2p.node.committee_view import CommitteeView
from walrus_p2p.node.record_book import RecordBook
from walrus_p2p.storage import open_store
from walrus_p2p.types import Epoch, PeerId

NETWORK = bytes(range(32))
OWNER = Identity.from_seed(b"\x07" * 32)


def _register(end_epoch: int = 5) -> records.BlobRegister:
    return records.sign_register(
        OWNER,
        network_id=NETWORK,
        blob_id=b"\x11" * 32,
        size=100,
        start_epoch=1,
        end_epoch=end_epoch,
        deletable=True,
    )


def _book(tmp_path: Path) -> RecordBook:
    """A record book over an empty store; registers need no committee to verify."""
    return RecordBook(
        store=open_store(tmp_path, capacity_bytes=1 << 20),
        network_id=NETWORK,
        peer_id=PeerId("peer"),
        committees=CommitteeView(
            Committee.create(Epoch(0), [Member(OWNER.peer_id, OWNER.public_key.raw, 1, ())], 4)
        ),
    )


def test_a_record_is_verified_once_and_a_bad_one_every_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[records.BlobRecord] = []
    original = records.verify_blob_record

    def counting(record: records.BlobRecord, network_id: bytes, committee_of: Any) -> None:
        calls.append(record)
        original(record, network_id, committee_of)

    monkeypatch.setattr(records, "verify_blob_record", counting)
    book = _book(tmp_path)
    good = _register()
    for _ in range(3):
        book.verify(good)
    assert calls == [good]

    tampered = replace(good, body=replace(good.body, end_epoch=Epoch(50)))
    for attempt in range(3):
        with pytest.raises(VerificationError):
            book.verify(tampered)
        assert len(calls) == 2 + attempt  # never remembered as verified
    assert book.remembered == 1


def test_the_remembered_digests_are_bounded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(record_book_module, "VERIFIED_RECORDS_KEPT", 3)
    book = _book(tmp_path)
    registers = [_register(end_epoch=5 + index) for index in range(5)]
    for register in registers:
        book.verify(register)
    assert book.remembered == 3
    # The oldest were forgotten: verifying the first again checks it again, and still passes.
    book.verify(registers[0])
    assert book.remembered == 3
