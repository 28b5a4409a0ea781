"""A storage peer verifies each distinct blob record once (``StoragePeerService.verify_record``)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from walrus_p2p.core import records
from walrus_p2p.core.identity import Identity
from walrus_p2p.errors import VerificationError
from walrus_p2p.node import peer as peer_module
from walrus_p2p.node.peer import StoragePeerService
from walrus_p2p.types import Epoch

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


def _service() -> Any:
    """What ``verify_record`` uses of a service: its genesis, committee lookup and cache."""
    return SimpleNamespace(
        genesis=SimpleNamespace(network_id=NETWORK),
        _committee_of=lambda epoch: None,
        _verified_records=OrderedDict(),
    )


def test_a_record_is_verified_once_and_a_bad_one_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[records.BlobRecord] = []
    original = records.verify_blob_record

    def counting(record: records.BlobRecord, network_id: bytes, committee_of: Any) -> None:
        calls.append(record)
        original(record, network_id, committee_of)

    monkeypatch.setattr(records, "verify_blob_record", counting)
    service = _service()
    good = _register()
    for _ in range(3):
        StoragePeerService.verify_record(service, good)
    assert calls == [good]

    tampered = replace(good, body=replace(good.body, end_epoch=Epoch(50)))
    for attempt in range(3):
        with pytest.raises(VerificationError):
            StoragePeerService.verify_record(service, tampered)
        assert len(calls) == 2 + attempt  # never remembered as verified
    assert len(service._verified_records) == 1


def test_the_remembered_digests_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer_module, "VERIFIED_RECORDS_KEPT", 3)
    service = _service()
    registers = [_register(end_epoch=5 + index) for index in range(5)]
    for register in registers:
        StoragePeerService.verify_record(service, register)
    assert len(service._verified_records) == 3
    # The oldest were forgotten: verifying the first again checks it again, and still passes.
    StoragePeerService.verify_record(service, registers[0])
    assert len(service._verified_records) == 3
