"""Crash safety of the store, with real processes killed by SIGKILL.

A child process puts slivers in a loop and prints each one only after ``put_sliver`` returned.
The parent kills it (-9) at a random moment, reopens the store and checks that every sliver
reported as put is present and verifies, and that nothing half-written is ever returned. The
same store is crashed several times in a row. A second test stops the child at each step of
a file sliver's write path, so every crash window is hit deterministically.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from walrus_p2p.errors import NotFoundError
from walrus_p2p.storage import CorruptDataError, DiskStore, SliverKey, SliverKind, open_store
from walrus_p2p.types import BlobId

REPOSITORY = Path(__file__).resolve().parents[2]
INLINE_LIMIT = 4096
BLOB_PERIOD = 60
"""Puts per blob: the first 30 create 30 slivers, the next 30 replace them."""
SIZES = (0, 100, 5000, 70_000, 300_000)

CHILD = """
import sys
sys.path.insert(0, sys.argv[4])
from tests.unit.test_storage_durability import BLOB_PERIOD, INLINE_LIMIT, blob_for, content, key_for
from walrus_p2p.storage import open_store

path, start, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = open_store(path, capacity_bytes=1 << 40, inline_limit=INLINE_LIMIT)
print("ready", flush=True)
index = start
while True:
    if index % BLOB_PERIOD == 0:
        store.put_metadata(blob_for(index), b"metadata")
    pair_index, kind = key_for(index)
    store.put_sliver(blob_for(index), pair_index, kind, content(seed, index))
    print(index, flush=True)
    index += 1
"""


def blob_for(index: int) -> BlobId:
    return BlobId(hashlib.blake2b(b"blob %d" % (index // BLOB_PERIOD), digest_size=32).digest())


def key_for(index: int) -> tuple[int, SliverKind]:
    step = index % BLOB_PERIOD % 30
    return step % 15, SliverKind.PRIMARY if step < 15 else SliverKind.SECONDARY


def content(seed: int, index: int) -> bytes:
    size = SIZES[index % len(SIZES)] + index % 7
    block = hashlib.blake2b(b"%d/%d" % (seed, index)).digest()
    return (block * (size // len(block) + 1))[:size]


def _environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPOSITORY), *filter(None, [environment.get("PYTHONPATH")])]
    )
    return environment


def _start_child(path: Path, start: int, seed: int) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(start), str(seed), str(REPOSITORY)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(),
        cwd=REPOSITORY,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if line.strip() != "ready":
        child.kill()
        _, errors = child.communicate()
        pytest.fail(f"child did not start: {line!r} {errors}")
    return child


Key = tuple[BlobId, int, SliverKind]


def _check_store(store: DiskStore, allowed: dict[Key, set[bytes | None]]) -> None:
    """Each key holds one of its allowed values (None: absent); nothing else is stored."""
    for (blob_id, pair_index, kind), values in allowed.items():
        try:
            data: bytes | None = store.get_sliver(blob_id, pair_index, kind)
        except CorruptDataError:
            pytest.fail(f"sliver {pair_index}/{kind.name} is corrupt after a crash")
        except NotFoundError:
            data = None
        assert data in values, f"sliver {pair_index}/{kind.name}: {data!r:.40} not allowed"
    listed = {
        (info.blob_id, key.pair_index, key.kind)
        for info in store.iter_blobs()
        for key in store.list_slivers(info.blob_id)
    }
    assert listed <= set(allowed), "a sliver that was never put appeared"
    assert list((store.path / "tmp").iterdir()) == []
    files = [path for path in (store.path / "slivers").rglob("*") if path.is_file()]
    with_files = [key for key in listed if len(store.get_sliver(*key)) > INLINE_LIMIT]
    assert len(files) == len(with_files), "orphaned or missing sliver files"
    assert store.used_bytes() == sum(info.stored_bytes for info in store.iter_blobs())


def test_kill_9_at_random_moments_loses_nothing_reported(tmp_path: Path) -> None:
    rng_seed = random.randrange(1 << 32)
    print(f"rng seed {rng_seed} (shown on failure; pass it to random.Random to replay)")
    rng = random.Random(rng_seed)
    path = tmp_path / "store"
    committed: dict[Key, bytes] = {}
    start = 0
    for _round in range(4):
        seed = rng.randrange(1 << 30)
        child = _start_child(path, start, seed)
        assert child.stdout is not None
        target = rng.randrange(5, 45)
        reported: list[int] = []
        while len(reported) < target:
            line = child.stdout.readline()
            if not line:
                pytest.fail(f"child died early: {child.communicate()[1]}")
            reported.append(int(line))
        time.sleep(rng.uniform(0, 0.02))
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=10)
        assert child.returncode == -signal.SIGKILL
        reported += [int(line) for line in rest.split()]
        assert reported == list(range(start, start + len(reported)))

        for index in reported:
            pair_index, kind = key_for(index)
            committed[(blob_for(index), pair_index, kind)] = content(seed, index)
        # The put in flight at the kill may or may not have landed, but never half.
        in_flight = start + len(reported)
        pair_index, kind = key_for(in_flight)
        flight_key = (blob_for(in_flight), pair_index, kind)
        allowed: dict[Key, set[bytes | None]] = {key: {value} for key, value in committed.items()}
        allowed.setdefault(flight_key, {None}).add(content(seed, in_flight))

        with open_store(path, capacity_bytes=1 << 40, inline_limit=INLINE_LIMIT) as store:
            _check_store(store, allowed)
            if store.has_sliver(*flight_key):
                committed[flight_key] = store.get_sliver(*flight_key)
        # The child puts metadata at period boundaries: restart on the next one.
        start = (in_flight // BLOB_PERIOD + 1) * BLOB_PERIOD


CRASH_CHILD = """
import os, sys
sys.path.insert(0, sys.argv[3])
from walrus_p2p.storage import _disk, open_store
from walrus_p2p.types import SliverKind

path, point = sys.argv[1], sys.argv[2]
store = open_store(path, capacity_bytes=1 << 30, inline_limit=16)
blob_id = bytes(32)
store.put_metadata(blob_id, b"m")
store.put_sliver(blob_id, 0, SliverKind.PRIMARY, b"old " * 100)
print("ready", flush=True)

real_rename, real_fsync, real_unlink = os.rename, os.fsync, _disk.Path.unlink
calls = {"fsync": 0}

def die():
    os.kill(os.getpid(), 9)

def rename(source, target):
    if point == "before-rename":
        die()
    real_rename(source, target)
    if point == "after-rename":
        die()

def fsync(fd):
    real_fsync(fd)
    calls["fsync"] += 1
    if point == "after-directory-fsync" and calls["fsync"] == 2:
        die()

def unlink(self, *args, **kwargs):
    if point == "before-old-unlink" and "slivers" in str(self):
        die()
    return real_unlink(self, *args, **kwargs)

_disk.os.rename = rename
_disk.os.fsync = fsync
_disk.Path.unlink = unlink
store.put_sliver(blob_id, 0, SliverKind.PRIMARY, b"new " * 100)
print("returned", flush=True)
die()
"""


@pytest.mark.parametrize(
    ("point", "survivor"),
    [
        ("before-rename", b"old " * 100),
        ("after-rename", b"old " * 100),
        ("after-directory-fsync", b"old " * 100),
        ("before-old-unlink", b"new " * 100),
    ],
)
def test_crash_at_each_step_of_a_replacement(tmp_path: Path, point: str, survivor: bytes) -> None:
    path = tmp_path / "store"
    result = subprocess.run(
        [sys.executable, "-c", CRASH_CHILD, str(path), point, str(REPOSITORY)],
        capture_output=True,
        text=True,
        env=_environment(),
        cwd=REPOSITORY,
        timeout=30,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert result.stdout.split() == ["ready"], "the put must not have returned"
    with open_store(path, capacity_bytes=1 << 30, inline_limit=16) as store:
        blob_id = BlobId(bytes(32))
        assert store.get_sliver(blob_id, 0, SliverKind.PRIMARY) == survivor
        assert store.list_slivers(blob_id) == [SliverKey(0, SliverKind.PRIMARY)]
        files = [p for p in (path / "slivers").rglob("*") if p.is_file()]
        assert len(files) == 1, "the other copy must have been cleaned up"
        assert list((path / "tmp").iterdir()) == []
        assert store.used_bytes() == 1 + len(survivor)
