"""Availability certificates on the client side: which members proved, in an epoch, that they
still hold their slivers (docs/challenges.md, "Light clients").

A client trusts no peer's word: it asks a few members for the certificates of the epoch and
keeps each one that verifies against the committee of that epoch, from the epoch chain it
verified itself (:mod:`walrus_p2p.client.committee`). A lying member can withhold
certificates, never invent one; asking several members covers one that withholds.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import trio

from walrus_p2p.client.network import LightPeer
from walrus_p2p.core.challenge_messages import (
    AvailabilityCertificate,
    GetAvailabilityCertificatesReply,
    GetAvailabilityCertificatesRequest,
)
from walrus_p2p.core.challenges import verify_availability_certificate
from walrus_p2p.errors import QuorumError, VerificationError, WalrusError
from walrus_p2p.types import Epoch, PeerId

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MemberAvailability:
    """One member of the epoch's committee and its verified certificate, if any was found."""

    peer_id: PeerId
    shards: int
    certificate: AvailabilityCertificate | None

    @property
    def certified(self) -> bool:
        return self.certificate is not None

    @property
    def signers(self) -> int:
        """Members whose PASS the certificate carries (0 without one)."""
        return 0 if self.certificate is None else len(self.certificate.passes)


@dataclass(frozen=True, slots=True)
class AvailabilityReport:
    """Per member of the committee of ``epoch``: whether it holds a verified certificate."""

    epoch: int
    members: tuple[MemberAvailability, ...]
    asked: int
    answered: int

    @property
    def certified(self) -> tuple[PeerId, ...]:
        return tuple(member.peer_id for member in self.members if member.certified)


async def fetch_availability(
    light: LightPeer,
    epoch: int | None = None,
    *,
    sample: int = 4,
    timeout: float = 5.0,
) -> AvailabilityReport:
    """Ask ``sample`` random members of the epoch's committee (the current epoch by default)
    for its certificates; keep those that verify. ``QuorumError`` if no member answered;
    ``VerificationError`` if the epoch is not in the verified chain."""
    await light.refresh_if_stale()
    chosen = light.epoch if epoch is None else epoch
    committee = light.committee_of(chosen)
    if committee is None:
        raise VerificationError(
            f"epoch {chosen} is not in the verified epoch chain (newest: {light.epoch})"
        )
    network_id = light.genesis.network_id
    found: dict[PeerId, AvailabilityCertificate] = {}
    answered = 0
    peers = list(committee.peer_ids)
    random.shuffle(peers)
    asked = peers[:sample]

    async def ask(peer_id: PeerId) -> None:
        nonlocal answered
        try:
            reply = await light.call(
                peer_id,
                GetAvailabilityCertificatesRequest(Epoch(chosen)),
                GetAvailabilityCertificatesReply,
                timeout=timeout,
            )
        except WalrusError as error:
            logger.info("certificates query failed peer=%s reason=%s", peer_id[:12], error.reason)
            return
        answered += 1
        for certificate in reply.certificates:
            if certificate.epoch != chosen or certificate.member in found:
                continue
            try:
                verify_availability_certificate(certificate, network_id, light.committee_of)
            except VerificationError as error:
                logger.warning(
                    "peer sent an invalid availability certificate peer=%s error=%s",
                    peer_id[:12],
                    error,
                )
                continue
            found[certificate.member] = certificate

    async with trio.open_nursery() as nursery:
        for peer_id in asked:
            nursery.start_soon(ask, peer_id)
    if not answered:
        raise QuorumError(f"no member of epoch {chosen} answered")
    members = tuple(
        MemberAvailability(
            peer_id=peer_id,
            shards=len(committee.shards_of(peer_id)),
            certificate=found.get(peer_id),
        )
        for peer_id in sorted(committee.peer_ids)
    )
    return AvailabilityReport(chosen, members, len(asked), answered)
