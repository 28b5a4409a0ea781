"""The test-only fault injection switch: off unless named exactly, loud when on."""

from __future__ import annotations

import pytest

from walrus_p2p.errors import ConfigError
from walrus_p2p.node import faults
from walrus_p2p.node.peer import StoragePeerService


def test_no_variable_or_empty_means_the_normal_peer() -> None:
    assert faults.fault_from_environment({}) is None
    assert faults.fault_from_environment({"WALRUS_FAULT_INJECTION": " "}) is None
    assert faults.peer_service_class(None) is StoragePeerService


def test_unknown_fault_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="not a known fault"):
        faults.fault_from_environment({"WALRUS_FAULT_INJECTION": "corrupt-sliver"})


def test_corrupt_slivers_selects_the_lying_peer(caplog: pytest.LogCaptureFixture) -> None:
    fault = faults.fault_from_environment({"WALRUS_FAULT_INJECTION": "corrupt-slivers"})
    assert fault == faults.CORRUPT_SLIVERS
    service_class = faults.peer_service_class(fault)
    assert issubclass(service_class, StoragePeerService)
    assert service_class is not StoragePeerService
    assert "fault injection active" in caplog.text


def test_flip_one_byte_changes_exactly_one_byte() -> None:
    data = bytes(range(10))
    flipped = faults.flip_one_byte(data)
    assert len(flipped) == len(data)
    assert [i for i in range(10) if flipped[i] != data[i]] == [5]
    assert faults.flip_one_byte(b"") == b""
