"""What one storage challenge costs one peer: time, disk bytes, messages and CPU.

Usage::

    PYTHONPATH=. .venv/bin/python bench/challenges.py [--blobs 1000] [--size 1048576]
        [--shards 100] [--members 100] [--dir DIR]

What is measured (docs/challenges.md, "Cost"): one peer of a committee of ``--members``
members over ``--shards`` shards (one shard each at the default), holding ``--blobs`` blobs of
``--size`` bytes, runs its round of one epoch in which every other member challenges it on every
blob and it challenges every other member on every blob (tickets are not sampled below 4,096
blobs). Simulated in-process on this one peer's store; no network is opened:

- **tickets**: the scan of the store for challenged blobs (``make tickets``);
- **the pass** (:func:`walrus_p2p.node.challenges.challenge_pass`, what a peer runs): every
  blob's metadata and slivers of its pair read once from a real on-disk store (fsync off,
  slivers as files; the page cache is warm, as it is for a peer that just stored them), both
  slivers expanded to n symbols, and two digests per other member computed (its response to
  that member's ticket, and the response it expects from that member);
- **signatures**: signing a PASS for every other member, checking every PASS it receives, and
  verifying its own certificate;
- **messages**: counted from the protocol, not sent: per other member one ticket request and
  reply, one response request and reply, one certificate push; their encoded sizes are exact.

The blobs are one encoded blob stored under ``--blobs`` different blob ids (each id picks the
pair this peer holds, so the pair differs from blob to blob): the pass reads, expands and hashes
exactly what it would for distinct blobs, and the setup does not spend minutes encoding. CPU
time is the process's (user + system) during each step. Figures depend on the machine: the CPU
model and the load average are printed with them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import tempfile
import time
from pathlib import Path

from walrus_p2p.core import challenges, wire
from walrus_p2p.core.challenge_messages import (
    MAX_CHALLENGE_BLOBS,
    ChallengeResponseReply,
    ChallengeResponseRequest,
    ChallengeTicketReply,
    ChallengeTicketRequest,
    PostAvailabilityCertificatesRequest,
)
from walrus_p2p.core.committee import Committee, Member
from walrus_p2p.core.encoding import EncodingConfig, pair_secondary_index
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.metadata import encode_blob
from walrus_p2p.node.challenges import challenge_pass
from walrus_p2p.storage import open_store
from walrus_p2p.testing.processes import cpu_model, load_text
from walrus_p2p.types import BlobId, Epoch, PeerId, SliverKind

NETWORK = hashlib.sha256(b"bench challenges").digest()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Step:
    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> Step:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = cpu_seconds() - self.cpu
        print(f"  {self.name:<34} {self.wall:8.2f} s wall {self.cpu:8.2f} s CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blobs", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--dir", type=Path, default=None, help="where the store goes (a tmp dir)")
    args = parser.parse_args()
    n = args.shards
    identities = [
        Identity.from_seed(hashlib.sha256(f"bench member {i}".encode()).digest())
        for i in range(args.members)
    ]
    committee = Committee.create(
        Epoch(5),
        [Member.from_public_key(i.public_key.raw, 1, ["/ip4/127.0.0.1/tcp/1"]) for i in identities],
        n,
    )
    me = identities[0]
    mine = committee.shards_of(me.peer_id)
    stable_of: dict[PeerId, tuple[int, ...]] = {
        member: tuple(committee.shards_of(member)) for member in committee.peer_ids
    }
    others = [member for member in committee.peer_ids if member != me.peer_id]

    print(f"cpu: {cpu_model()}; load: {load_text()}")
    print(
        f"one peer's challenge round: {args.blobs} blobs of {args.size} B, n={n}, "
        f"{args.members} members ({len(mine)} shard(s) here)"
    )
    data = os.urandom(args.size)
    encoded = encode_blob(data, EncodingConfig.for_shards(n))
    metadata_bytes = wire.encode(wire.GetMetadataReply(metadata=encoded.metadata))
    blob_ids = sorted(
        hashlib.sha256(b"bench blob %d" % index).digest() for index in range(args.blobs)
    )
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="walrus-bench-") as directory:
        store = open_store(
            Path(directory) / "store", capacity_bytes=1 << 40, fsync=False, inline_limit=0
        )
        try:
            stored = 0
            with Step("store the slivers (setup)"):
                for blob_id in blob_ids:
                    store.put_metadata(BlobId(blob_id), metadata_bytes)
                    for pair in challenges.challenged_pairs(blob_id, mine, n):
                        primary = encoded.encoded.primary_sliver(pair)
                        secondary = encoded.encoded.secondary_sliver(pair_secondary_index(pair, n))
                        store.put_sliver(BlobId(blob_id), pair, SliverKind.PRIMARY, primary)
                        store.put_sliver(BlobId(blob_id), pair, SliverKind.SECONDARY, secondary)
                        stored += len(primary) + len(secondary)
            with Step("make tickets (scan the store)") as scan:
                held = [bytes(info.blob_id) for info in store.iter_blobs() if info.has_metadata]
                tickets = {
                    member: (
                        os.urandom(32),
                        challenges.sample_blob_ids(held, MAX_CHALLENGE_BLOBS, os.urandom(32)),
                    )
                    for member in others
                }
            received = {member: (os.urandom(32), tickets[member][1]) for member in others}
            with Step("the pass (read, expand, hash)") as one_pass:
                result = challenge_pass(
                    store,
                    network_id=NETWORK,
                    epoch=5,
                    me=me.peer_id,
                    n_shards=n,
                    mine=tuple(mine),
                    received=received,
                    given=tickets,
                    stable_of=stable_of,
                )
            # The others' PASS for this peer: their CPU, made before the timed step.
            passes = {
                i.peer_id: challenges.sign_pass(i, NETWORK, 5, me.peer_id) for i in identities
            }
            with Step("signatures (PASS, checks, cert)") as signing:
                for member in others:
                    challenges.sign_pass(me, NETWORK, 5, PeerId(member))
                for signer, signature in passes.items():
                    challenges.is_valid_pass(
                        committee, signer, signature, network_id=NETWORK, member=me.peer_id
                    )
                certificate = challenges.make_certificate(NETWORK, 5, me.peer_id, passes)
                challenges.verify_availability_certificate(
                    certificate, NETWORK, lambda epoch: committee
                )
        finally:
            store.close()

    some = others[0]
    sizes = {
        "ticket request": len(wire.encode(ChallengeTicketRequest(Epoch(5)))),
        "ticket reply": len(wire.encode(ChallengeTicketReply(Epoch(5), *tickets[some]))),
        "response request": len(wire.encode(ChallengeResponseRequest(Epoch(5), bytes(32)))),
        "response reply": len(wire.encode(ChallengeResponseReply(bytes(64)))),
        "certificate push": len(wire.encode(PostAvailabilityCertificatesRequest((certificate,)))),
    }
    peers = len(others)
    sent = peers * (sizes["ticket request"] + sizes["response request"] + sizes["certificate push"])
    sent += peers * (sizes["ticket reply"] + sizes["response reply"])  # replies to the others
    total_wall = scan.wall + one_pass.wall + signing.wall
    total_cpu = scan.cpu + one_pass.cpu + signing.cpu
    figures = result.figures
    print(
        f"disk: {figures.bytes_read} B read for {figures.blobs} blobs "
        f"(stored here: {stored} B; each sliver read once)"
    )
    print(
        f"messages: {3 * peers} requests sent, {2 * peers} answered; {sent} B sent in all "
        f"(ticket reply {sizes['ticket reply']} B)"
    )
    print(
        f"round (tickets + pass + signatures): {total_wall:.2f} s wall, {total_cpu:.2f} s CPU "
        f"= {100 * total_cpu / 600:.2f} % of a 10-minute epoch on one core"
    )
    assert len(result.responses) == peers and not result.unverifiable


if __name__ == "__main__":
    main()
