"""The epoch payout, paid only to members that proved availability (docs/challenges.md,
"Payout"; docs/economics.md, "Rewards").

:func:`certified_payout` is :func:`walrus_p2p.core.economy.split_payout` followed by one rule:
the share of a member without a verified availability certificate for the epoch, its commission
and its stakers' part alike, is **burned**, not handed to the certified members. Redistributing
it would pay members for withholding PASS signatures: members holding a quorum could starve an
honest minority and split its share. Burning takes the reward from the member that failed and
gives nobody a reason to make it fail. Its stakers lose that epoch's reward too: they chose
the member (their principal is never touched).

Pure and exact: ``burned + member rewards + staker rewards`` is the payout, to the unit. Wiring
it into the settlement of an epoch comes with the settlement work (docs/economics.md, "Not built
yet"): this function is what the settlement's payout step will call, given the certificates the
members verified for that epoch.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from walrus_p2p.core.challenge_messages import AvailabilityCertificate
from walrus_p2p.core.committee import Committee
from walrus_p2p.core.economy import BURN_BPS, PayoutSplit, split_payout
from walrus_p2p.types import PeerId


@dataclass(frozen=True, slots=True)
class CertifiedPayout:
    """A payout split with the uncertified members' shares burned."""

    split: PayoutSplit
    paid: tuple[PeerId, ...]
    """Members with a certificate (and shards), sorted."""
    unpaid: tuple[PeerId, ...]
    """Members with shards but no certificate, sorted: their share is in ``split.burned``."""
    withheld: int
    """How much of ``split.burned`` is the unpaid members' shares."""


def certified_members(
    certificates: Iterable[AvailabilityCertificate], epoch: int
) -> frozenset[PeerId]:
    """The members named by certificates of ``epoch`` (the caller verified them:
    :func:`walrus_p2p.core.challenges.verify_availability_certificate`)."""
    return frozenset(
        certificate.member for certificate in certificates if certificate.epoch == epoch
    )


def certified_payout(
    payout: int,
    committee: Committee,
    certified: Collection[PeerId],
    *,
    commissions: Mapping[PeerId, int],
    stakes: Mapping[PeerId, Mapping[bytes, int]],
    slashed: Collection[PeerId] = (),
    burn_bps: int = BURN_BPS,
) -> CertifiedPayout:
    """Split ``payout`` over ``committee`` as :func:`split_payout` does, then burn what the
    members not in ``certified`` (and their stakes) would have received."""
    split = split_payout(
        payout,
        committee,
        commissions=commissions,
        stakes=stakes,
        slashed=slashed,
        burn_bps=burn_bps,
    )
    members = sorted(peer_id for peer_id in committee.peer_ids if committee.shards_of(peer_id))
    unpaid = tuple(peer_id for peer_id in members if peer_id not in certified)
    paid = tuple(peer_id for peer_id in members if peer_id in certified)
    member_rewards = dict(split.member_rewards)
    staker_rewards = dict(split.staker_rewards)
    withheld = 0
    for peer_id in unpaid:
        withheld += member_rewards.pop(peer_id, 0)
        for stake in stakes.get(peer_id, {}):
            withheld += staker_rewards.pop(stake, 0)
    result = PayoutSplit(split.burned + withheld, member_rewards, staker_rewards)
    return CertifiedPayout(result, paid, unpaid, withheld)
