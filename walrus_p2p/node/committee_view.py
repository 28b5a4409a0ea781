"""The committee a storage peer works with: read by every service, written by one.

docs/design.md §11.1. The committee in force decides which sliver pairs this peer stores,
which certificates it accepts and whom it asks for help, so every service reads it; only the
epoch service changes it, after it verified and persisted the record of the next epoch
(docs/epochs.md). :class:`CommitteeView` is the read side handed to everyone;
:meth:`CommitteeView.writer` hands out the one :class:`CommitteeWriter`, once, to the epoch
service: a second call raises, so no other part can switch the committee behind its back.
"""

from __future__ import annotations

import trio

from walrus_p2p.core.committee import Committee
from walrus_p2p.core.identity import Identity
from walrus_p2p.types import PeerId


class CommitteeView:
    """The committee in force, the verified committees of earlier epochs, and change events."""

    def __init__(self, genesis_committee: Committee) -> None:
        self._current = genesis_committee
        self._by_epoch: dict[int, Committee] = {int(genesis_committee.epoch): genesis_committee}
        self._changed = trio.Event()
        self.synced = trio.Event()
        """Set once the epoch service caught up with the network's epoch chain at start."""
        self._writer_taken = False

    @property
    def current(self) -> Committee:
        return self._current

    @property
    def epoch(self) -> int:
        return int(self._current.epoch)

    @property
    def changed(self) -> trio.Event:
        """Set (and replaced by a fresh event) whenever the committee changes."""
        return self._changed

    def committee_of(self, epoch: int) -> Committee | None:
        """The committee of an epoch this peer verified, else None."""
        return self._by_epoch.get(int(epoch))

    def known(self) -> list[Committee]:
        """Every verified committee this peer holds, newest epoch first."""
        return [self._by_epoch[epoch] for epoch in sorted(self._by_epoch, reverse=True)]

    def writer(self) -> CommitteeWriter:
        """The one writer of this view (for the epoch service); a second call raises."""
        if self._writer_taken:
            raise RuntimeError("the committee view has a writer already (the epoch service)")
        self._writer_taken = True
        return CommitteeWriter(self)


class CommitteeWriter:
    """Switches a :class:`CommitteeView` to a new committee; held by the epoch service only."""

    def __init__(self, view: CommitteeView) -> None:
        self._view = view

    def switch(self, committee: Committee) -> None:
        """Make ``committee`` the one in force (its record was verified and persisted)."""
        view = self._view
        view._current = committee
        view._by_epoch[int(committee.epoch)] = committee
        changed, view._changed = view._changed, trio.Event()
        changed.set()

    def mark_synced(self) -> None:
        self._view.synced.set()


class ReadsCommittee:
    """``peer_id``, ``committee`` and ``epoch`` of a peer, for classes that hold its
    ``identity`` and its ``committees`` view (the peer and its context)."""

    __slots__ = ()
    identity: Identity
    committees: CommitteeView

    @property
    def peer_id(self) -> PeerId:
        return self.identity.peer_id

    @property
    def committee(self) -> Committee:
        """The committee in force now (written only by the epoch service)."""
        return self.committees.current

    @property
    def epoch(self) -> int:
        return self.committees.epoch
