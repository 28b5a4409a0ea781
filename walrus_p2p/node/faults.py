"""Fault injection for the multi-process tests (tests/testnet). Never set it on a real peer.

A storage peer can be told, through the environment of its ``walrus-peer run`` process, to
misbehave in one specific way so that a test can check that clients detect it and route around
it (docs/design.md §9: a read returns exactly the stored bytes or an error, never wrong bytes):

``WALRUS_FAULT_INJECTION=corrupt-slivers``
    every ``GetSliverRequest`` is answered with the stored sliver with one byte flipped. The
    store itself is untouched (the bytes on disk stay correct); only the reply lies.

``WALRUS_FAULT_INJECTION=forget-slivers``
    the peer stops storing slivers (every write is dropped) but still confirms them: its store
    reports every sliver it was asked to keep as durable. What a storage challenge must catch
    (docs/challenges.md).

The variable is read once at start-up by :func:`fault_from_environment`. Unset or empty, nothing
changes: the plain :class:`StoragePeerService` runs. An unknown value stops the peer with a
``ConfigError`` instead of being ignored, so a typo cannot make a test pass without the fault.
A peer running with a fault logs a warning at start-up. There is deliberately no command-line
flag and no config-file key for it. See docs/testing.md.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any, cast

from walrus_p2p.core import wire
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.core.identity import Identity
from walrus_p2p.errors import ConfigError
from walrus_p2p.node.peer import PeerOptions, StoragePeerService
from walrus_p2p.node.router import Router
from walrus_p2p.storage import BlobStore
from walrus_p2p.types import BlobId, PeerId, SliverKind

logger = logging.getLogger(__name__)

FAULT_ENVIRONMENT_VARIABLE = "WALRUS_FAULT_INJECTION"
CORRUPT_SLIVERS = "corrupt-slivers"
FORGET_SLIVERS = "forget-slivers"
FAULTS = (CORRUPT_SLIVERS, FORGET_SLIVERS)


def fault_from_environment(environment: Mapping[str, str]) -> str | None:
    """The fault named in ``WALRUS_FAULT_INJECTION``, or None; an unknown name raises."""
    value = environment.get(FAULT_ENVIRONMENT_VARIABLE, "").strip()
    if not value:
        return None
    if value not in FAULTS:
        raise ConfigError(
            f"{FAULT_ENVIRONMENT_VARIABLE}={value!r} is not a known fault "
            f"(known: {', '.join(FAULTS)}); unset it to run a normal peer"
        )
    return value


def flip_one_byte(data: bytes) -> bytes:
    """``data`` with its middle byte inverted (empty data stays empty)."""
    if not data:
        return data
    middle = len(data) // 2
    corrupted = bytearray(data)
    corrupted[middle] ^= 0xFF
    return bytes(corrupted)


class CorruptSliversPeer(StoragePeerService):
    """A storage peer that serves every sliver with one byte flipped (testing only)."""

    def configure(self, router: Router) -> None:
        honest = router.handler(wire.GetSliverRequest)

        async def corrupt(request: wire.GetSliverRequest, remote: PeerId) -> wire.GetSliverReply:
            reply: wire.GetSliverReply = await honest(request, remote)
            return dataclasses.replace(reply, data=flip_one_byte(reply.data))

        router.replace(wire.GetSliverRequest, corrupt)


class ForgetfulStore:
    """A store that drops every sliver written to it and still calls them durable."""

    def __init__(self, inner: BlobStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def capacity_bytes(self) -> int:
        return self._inner.capacity_bytes

    def put_sliver(
        self,
        blob_id: BlobId,
        pair_index: int,
        kind: SliverKind,
        data: bytes | bytearray | memoryview,
    ) -> None:
        """Dropped."""

    def is_durable(
        self,
        blob_id: BlobId,
        required: Iterable[tuple[int, SliverKind]],
        *,
        verify: bool = False,
    ) -> bool:
        return self._inner.has_metadata(blob_id)


class ForgetSliversPeer(StoragePeerService):
    """A storage peer that keeps no sliver but confirms every one (testing only)."""

    def __init__(
        self, *, identity: Identity, genesis: Genesis, store: BlobStore, options: PeerOptions
    ) -> None:
        forgetful = cast(BlobStore, ForgetfulStore(store))
        super().__init__(identity=identity, genesis=genesis, store=forgetful, options=options)


def peer_service_class(fault: str | None) -> type[StoragePeerService]:
    """The service class to run for ``fault`` (None: the normal peer)."""
    if fault is None:
        return StoragePeerService
    logger.warning(
        "fault injection active fault=%s: this peer serves wrong data on purpose (testing only)",
        fault,
    )
    if fault == FORGET_SLIVERS:
        return ForgetSliversPeer
    return CorruptSliversPeer
