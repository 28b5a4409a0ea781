"""The settlement of an epoch inside the epoch value: what a proposer puts there, what a
validator accepts.

Owner: the economy's part of an epoch change (docs/economics.md, "What is agreed where" and
"Settlements in the epoch change"). Pure, like :mod:`walrus_p2p.core.epochs`: the node gives
its ledger and what it verified (parameter votes, availability certificates) and gets a
settlement to propose or a verdict.

On a network whose genesis has an economy, every epoch value carries the settlement of the
epoch it ends (:attr:`walrus_p2p.core.records.EpochValue.settlement`); without an economy it
carries none. Because every value of the chain carries one, a ledger applies settlements
0, 1, 2, ... in order and every peer and light client derives the same balances, pools, stake
and prices from the chain and the certified orders.

The proposer (:func:`propose_settlement`) lists what its ledger knows: the payout is everything
payable (the fund and the pools of the ending epoch and before, less payouts agreed but not
applied), every pending stake order and withdrawal request (at most
:data:`MAX_SETTLEMENT_MOVES`; the rest wait for the next settlement), the verified votes of the
ending committee's members for the epoch (each with its signature) and, when a storage
challenge ran, the members holding an availability certificate of the epoch, and the shared-blob
extensions its ledger can carry out (docs/economics.md, "Shared blobs"), and the members it
holds conflict evidence against (once per piece, docs/economics.md, "Slashing").

A validator (:func:`check_settlement`) accepts only what it can check against its own
knowledge, which is a subset of what is certified: every listed order is known to it, the
payout is at most what it knows to be payable, every paid member holds a certificate it
verified, every shared-blob extension is one its own ledger would carry out, to the same end,
with funds it knows of. Votes carry their voters' signatures, so a validator checks them against the
committee without having received them (a vote it lacks must not block the epoch change). So a
value a quorum accepted (at least one honest validator among them) never pays more than the
fund will hold, never activates an unknown stake, never invents a vote or a certificate.
Omissions are allowed (views differ for a few seconds): an omitted stake is listed in the next
settlement, an omitted payout stays in the fund, an omitted vote counts as no vote for one
epoch; an omitted certified member loses one epoch's reward, the same bound as a faulty
proposer dropping a live member for one epoch (docs/epochs.md).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from walrus_p2p.core import wire
from walrus_p2p.core.committee import Committee
from walrus_p2p.core.economy_messages import (
    EpochSettlement,
    ParameterVote,
    VoteEntry,
    check_settlement_form,
    verify_settlement_votes,
)
from walrus_p2p.core.ledger import Ledger
from walrus_p2p.core.records import EpochValue
from walrus_p2p.errors import OrderRefusedError, VerificationError, WireError
from walrus_p2p.types import Epoch, PeerId

MAX_SETTLEMENT_MOVES = 256
"""Stake activations plus withdrawal requests one settlement lists (keeps the encoded
settlement under ``MAX_SETTLEMENT_SIZE`` with every member voting); more wait one epoch."""
MAX_SHARED_EXTENSIONS = 256
"""Shared-blob extensions one settlement carries out (about 110 bytes each); more wait one
epoch (a request may be listed by the settlement of its own epoch or of the next one)."""

__all__ = [
    "MAX_SETTLEMENT_MOVES",
    "MAX_SHARED_EXTENSIONS",
    "check_settlement",
    "encode_settlement",
    "propose_settlement",
    "settlement_of",
]


def settlement_of(value: EpochValue) -> EpochSettlement | None:
    """The settlement a value carries; ``VerificationError`` if it does not decode."""
    if value.settlement is None:
        return None
    try:
        return wire.decode(value.settlement, EpochSettlement)
    except WireError as error:
        raise VerificationError(f"epoch value {value.epoch}: settlement: {error}") from error


def encode_settlement(settlement: EpochSettlement) -> bytes:
    return wire.encode(settlement)


def propose_settlement(
    ledger: Ledger,
    committee: Committee,
    *,
    votes: Mapping[PeerId, ParameterVote],
    certified: Collection[PeerId] | None,
    evidence: Mapping[PeerId, int] | None = None,
) -> EpochSettlement:
    """The settlement of ``committee.epoch`` this peer proposes (see module). ``votes``: the
    newest verified vote this peer holds of each voter; a member's vote is listed when it was
    cast in the epoch or before and is newer than the one in force (a vote stays in force
    until its voter casts another, so unchanged votes cost nothing). ``evidence``: for each
    member, how many distinct pieces of verified conflict evidence this peer holds against it;
    a member of the committee is slashed once per piece (:func:`slashable`)."""
    epoch = committee.epoch
    payable = ledger.payable(epoch)
    activations = ledger.stakes_to_activate()[:MAX_SETTLEMENT_MOVES]
    requests = ledger.requests_to_list()[: MAX_SETTLEMENT_MOVES - len(activations)]
    listed = sorted(
        (VoteEntry(peer, *_prices_of(vote)), vote.signature, Epoch(vote.body.epoch))
        for peer, vote in votes.items()
        if peer in committee and vote.body.epoch <= epoch and _newer(ledger, peer, vote)
    )
    return EpochSettlement(
        network_id=ledger.parameters.network_id,
        epoch=Epoch(epoch),
        payout=payable or 0,
        votes=tuple(entry for entry, _, _ in listed),
        stake_activations=tuple(activations),
        withdrawal_requests=tuple(requests),
        slashed=tuple(slashable(ledger, committee, evidence or {})),
        certified=None if certified is None else tuple(sorted(set(certified))),
        vote_signatures=tuple(signature for _, signature, _ in listed),
        vote_epochs=tuple(cast for _, _, cast in listed),
        shared_extensions=tuple(ledger.shared_extensions_to_list(epoch, MAX_SHARED_EXTENSIONS)),
    )


def slashable(ledger: Ledger, committee: Committee, evidence: Mapping[PeerId, int]) -> list[PeerId]:
    """Members of ``committee`` with more pieces of conflict evidence against them than
    settlements that slashed them, sorted; none unless every earlier settlement is applied here
    (the count must be the one every validator has)."""
    if ledger.settled_epoch != committee.epoch - 1:
        return []
    return sorted(
        peer
        for peer, pieces in evidence.items()
        if peer in committee and pieces > ledger.slash_count(peer)
    )


def _newer(ledger: Ledger, peer: PeerId, vote: ParameterVote) -> bool:
    in_force = ledger.vote_in_force(peer)
    if in_force is None:
        return True
    entry, cast = in_force
    return vote.body.epoch > cast and VoteEntry(peer, *_prices_of(vote)) != entry


def _prices_of(vote: ParameterVote) -> tuple[int, int, int, int]:
    body = vote.body
    return body.storage_price, body.write_price, body.capacity, body.commission_bps


def check_settlement(
    ledger: Ledger | None,
    committee: Committee,
    value: EpochValue,
    *,
    certified: Collection[PeerId] | None,
    evidence: Mapping[PeerId, int] | None = None,
) -> EpochSettlement | None:
    """Accept the settlement ``value`` carries for ``committee.epoch``, or raise
    ``VerificationError`` saying why not (see module). ``ledger`` is None on a network without
    an economy: then the value must carry none. ``certified`` is the set of members whose
    availability certificate of the epoch this peer verified, None if it knows of none;
    ``evidence`` the pieces of conflict evidence it verified per member."""
    settlement = settlement_of(value)
    if ledger is None:
        if settlement is not None:
            raise VerificationError("a settlement on a network without an economy")
        return None
    if settlement is None:
        raise VerificationError(f"epoch value {value.epoch} carries no settlement")
    epoch = committee.epoch
    try:
        check_settlement_form(settlement, ledger.parameters.network_id)
    except OrderRefusedError as error:
        raise VerificationError(str(error)) from error
    if settlement.epoch != epoch:
        raise VerificationError(f"settlement of epoch {settlement.epoch}, expected {epoch}")
    if settlement.slashed:
        # A member is slashed only on conflict evidence this validator verified itself.
        allowed = set(slashable(ledger, committee, evidence or {}))
        strangers = [peer for peer in settlement.slashed if peer not in allowed]
        if strangers:
            raise VerificationError(
                f"settlement slashes {len(strangers)} members without conflict evidence here"
            )
    moves = len(settlement.stake_activations) + len(settlement.withdrawal_requests)
    if moves > MAX_SETTLEMENT_MOVES:
        raise VerificationError(f"settlement lists {moves} stake moves")
    unknown = [s for s in settlement.stake_activations if not ledger.knows_stake_order(s)]
    if unknown:
        raise VerificationError(f"settlement activates {len(unknown)} unknown stake orders")
    unknown = [r for r in settlement.withdrawal_requests if not ledger.knows_withdrawal_request(r)]
    if unknown:
        raise VerificationError(f"settlement lists {len(unknown)} unknown withdrawal requests")
    if len(settlement.shared_extensions) > MAX_SHARED_EXTENSIONS:
        raise VerificationError(
            f"settlement carries out {len(settlement.shared_extensions)} shared-blob extensions"
        )
    try:
        ledger.check_shared_extensions(settlement)
    except OrderRefusedError as error:
        raise VerificationError(str(error)) from error
    payable = ledger.payable(epoch) or 0
    if settlement.payout > payable:
        raise VerificationError(
            f"settlement pays {settlement.payout}, more than the {payable} known payable"
        )
    verify_settlement_votes(settlement, committee)
    for entry, cast in zip(settlement.votes, settlement.vote_epochs, strict=True):
        in_force = ledger.vote_in_force(entry.peer_id)
        if in_force is not None and cast < in_force[1]:
            raise VerificationError(f"vote of {entry.peer_id} is older than the one in force")
    if settlement.certified is None:
        if certified:
            raise VerificationError("settlement pays everyone though availability was certified")
    else:
        known = set(certified or ())
        strangers = [peer for peer in settlement.certified if peer not in known]
        if strangers:
            raise VerificationError(
                f"settlement pays {len(strangers)} members without a certificate known here"
            )
    return settlement
