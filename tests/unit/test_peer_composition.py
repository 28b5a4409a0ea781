"""The seams of the composed storage peer (docs/design.md §11.1): one committee writer, one
handler per request type, handlers replaced through the router, and no service importing the
peer that composes it."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from walrus_p2p.core import wire
from walrus_p2p.core.committee import Committee, Member
from walrus_p2p.core.identity import Identity
from walrus_p2p.errors import WalrusError, WireError
from walrus_p2p.node.committee_view import CommitteeView
from walrus_p2p.node.metrics import PeerMetrics
from walrus_p2p.node.ratelimit import RequestRates
from walrus_p2p.node.router import Router
from walrus_p2p.types import BlobId, Epoch, PeerId

NODE = Path(__file__).resolve().parents[2] / "walrus_p2p" / "node"
IDENTITIES = [Identity.from_seed(bytes([index]) * 32) for index in range(1, 5)]
REMOTE = PeerId("12D3KooWremote")


def _committee(epoch: int, members: list[Identity]) -> Committee:
    return Committee.create(
        Epoch(epoch), [Member(ident.peer_id, ident.public_key.raw, 1, ()) for ident in members], 8
    )


def _router() -> Router:
    return Router(limits=wire.DEFAULT_LIMITS, metrics=PeerMetrics(), rates=RequestRates())


def test_the_committee_view_has_one_writer_and_signals_changes() -> None:
    genesis = _committee(0, IDENTITIES)
    view = CommitteeView(genesis)
    writer = view.writer()
    with pytest.raises(RuntimeError, match="writer already"):
        view.writer()
    changed = view.changed
    assert view.current is genesis and view.epoch == 0 and not changed.is_set()
    nxt = _committee(1, IDENTITIES[:3])
    writer.switch(nxt)
    assert changed.is_set() and not view.changed.is_set()
    assert view.current is nxt and view.epoch == 1
    assert view.committee_of(0) is genesis and view.committee_of(1) is nxt
    assert view.committee_of(2) is None
    assert view.known() == [nxt, genesis]
    assert not view.synced.is_set()
    writer.mark_synced()
    assert view.synced.is_set()


async def test_the_router_dispatches_refuses_and_lets_tests_replace_a_handler() -> None:
    router = _router()
    seen: list[Any] = []

    async def status(request: wire.BlobStatusRequest, remote: PeerId) -> wire.BlobStatusReply:
        seen.append((request.blob_id, remote))
        return wire.BlobStatusReply(
            known=True,
            invalid=False,
            has_metadata=False,
            stored_pair_indices=(),
            certified_epoch=None,
            end_epoch=None,
        )

    router.add(wire.BlobStatusRequest, status)
    with pytest.raises(ValueError, match="already has a handler"):
        router.add(wire.BlobStatusRequest, status)
    blob_id = BlobId(bytes(32))
    payload = wire.encode(wire.BlobStatusRequest(blob_id=blob_id))
    reply = wire.decode(await router.dispatch(payload, REMOTE), wire.BlobStatusReply)
    assert reply.known and seen == [(blob_id, REMOTE)]

    async def refuse(request: wire.BlobStatusRequest, remote: PeerId) -> wire.BlobStatusReply:
        raise WalrusError("not today", reason="BLOB_UNKNOWN")

    original = router.replace(wire.BlobStatusRequest, refuse)
    assert original is status
    with pytest.raises(WalrusError) as refused:
        await router.dispatch(payload, REMOTE)
    assert refused.value.reason == "BLOB_UNKNOWN"
    assert len(seen) == 1

    # A request type nobody serves is malformed for this peer; nothing is called.
    other = wire.encode(wire.GetMetadataRequest(blob_id=blob_id))
    with pytest.raises(WireError):
        await router.dispatch(other, REMOTE)
    with pytest.raises(KeyError, match="GetMetadataRequest"):
        router.replace(wire.GetMetadataRequest, refuse)
    samples = router.metrics.registry.get_sample_value(
        "walrus_requests_total", {"type": "BlobStatusRequest", "outcome": "BLOB_UNKNOWN"}
    )
    assert samples == 1.0


def test_the_router_rate_limits_control_requests_per_remote() -> None:
    router = _router()
    limited = 0
    for _ in range(200):
        try:
            router.check_rate(REMOTE, "BlobStatusRequest")
        except WalrusError as error:
            assert error.reason == "RATE_LIMITED"
            limited += 1
    assert 0 < limited < 200
    # Another remote has a bucket of its own.
    router.check_rate(PeerId("12D3KooWother"), "BlobStatusRequest")


def test_no_service_imports_the_peer_that_composes_it() -> None:
    composer = {"peer.py", "faults.py", "runner.py"}
    offenders = []
    for path in sorted(NODE.glob("*.py")):
        if path.name in composer:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in (
                "walrus_p2p.node.peer",
                "peer",
            ):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
