"""Storage from the command line, as users run it against a devnet of real peer processes with
an economy and short epochs (4 peers, 8 shards, 20 s epochs; docs/economics.md, "Shared
blobs" and "Storage resources").

Shared blobs: the devnet wallet stores a permanent blob and shares it with 1 WAL of funds; a
second user, paid 2 WAL by the first, funds it with 1.5 WAL; a third user who holds no WAL
cannot fund it (a one-line ``ORDER_OVERDRAWN``) but asks for 3 more epochs, naming the blob by
its blob id. At the next epoch change the blob's end moves by 3 in ``status`` and the funds
shrink by exactly the storage price of those epochs.

Storage resources: a user buys storage ahead (``buy-storage``), splits it (``split-storage``),
stores a deletable blob on one part (``store --storage``: only the write fee), deletes it (the
part is released) and stores another blob on it; ``storage`` shows each step. Every command and
every wait has a timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from walrus_p2p.cli import EXIT_FAILED
from walrus_p2p.client.wallet import create_wallet
from walrus_p2p.core.economy import encoded_size, storage_units
from walrus_p2p.devnet import WALLET_NAME
from walrus_p2p.testing.processes import Devnet, running_devnet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

READY_TIMEOUT = 120.0
EPOCH_SECONDS = 20
CHANGE_TIMEOUT = 4 * EPOCH_SECONDS + 60.0
WAL = 10**9


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    directory = tmp_path_factory.mktemp("storage-devnet")
    with running_devnet(
        "",
        4,
        8,
        ready_timeout=READY_TIMEOUT,
        economy=True,
        epoch_duration=EPOCH_SECONDS,
        directory=directory,
    ) as net:
        yield net


def as_user(devnet: Devnet, wallet: Path, *arguments: str) -> Any:
    return devnet.cli_json(*arguments, "--wallet", str(wallet))


def wait_until(devnet: Devnet, what: str, check: Callable[[], Any]) -> Any:
    return devnet.wait_until(what, check, CHANGE_TIMEOUT)


def test_share_fund_and_extend_a_shared_blob_from_the_command_line(
    devnet: Devnet, tmp_path: Path
) -> None:
    owner = devnet.directory / WALLET_NAME
    funder = devnet.directory / "funder.key"
    asker = devnet.directory / "asker.key"
    funder_address = create_wallet(funder).public_key.hex()
    create_wallet(asker)
    path = tmp_path / "shared.bin"
    path.write_bytes(bytes(range(256)) * 300)

    (stored,) = as_user(devnet, owner, "store", str(path), "--epochs", "3", "--permanent")
    blob_id = stored["newlyCreated"]["blobObject"]["blobId"]
    end = devnet.cli_json("status", blob_id)["endEpoch"]

    shared = as_user(devnet, owner, "share", blob_id, "--amount", "1")
    shared_id = shared["sharedId"]
    assert len(shared_id) == 64 and shared["kind"] == "ShareBlob" and shared["amount"] == WAL
    as_user(devnet, owner, "wallet", "send", funder_address, "2")
    as_user(devnet, funder, "fund-shared-blob", shared_id, "1.5")

    refused = devnet.cli("fund-shared-blob", shared_id, "1", "--wallet", str(asker))
    err = refused.stderr.decode()
    assert refused.returncode == EXIT_FAILED, err
    assert "ORDER_OVERDRAWN" in err.strip().splitlines()[-1] and "Traceback" not in err

    (entry,) = as_user(devnet, asker, "shared", blob_id)["shared"]
    assert entry["sharedId"] == shared_id and entry["blobId"] == blob_id
    assert entry["funds"] == 2_500_000_000 and entry["endEpoch"] == end
    asked = as_user(devnet, asker, "extend", "--shared", blob_id, "--epochs", "3")
    assert asked["kind"] == "ExtendSharedBlob" and asked["sharedId"] == shared_id

    def extended() -> Any:
        status = devnet.cli_json("status", blob_id)
        return status if status["endEpoch"] == end + 3 else None

    wait_until(devnet, "the blob's end moved by 3 epochs", extended)
    (after,) = as_user(devnet, asker, "shared", shared_id)["shared"]
    assert after["endEpoch"] == end + 3 and after["pendingRequests"] == 0
    assert after["funds"] == entry["funds"] - 3 * entry["costPerEpoch"]


def test_buy_split_store_delete_and_reuse_storage_from_the_command_line(
    devnet: Devnet, tmp_path: Path
) -> None:
    owner = devnet.directory / WALLET_NAME
    buyer = devnet.directory / "buyer.key"
    address = create_wallet(buyer).public_key.hex()
    as_user(devnet, owner, "wallet", "send", address, "10")
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(b"first " * 2000)
    second.write_bytes(b"second " * 2000)

    bought = as_user(devnet, buyer, "buy-storage", "--units", "3", "--epochs", "6")
    resource = bought["resourceId"]
    assert bought["kind"] == "BuyStorage" and bought["cost"] > 0
    end = bought["endEpoch"]
    sized = as_user(devnet, buyer, "buy-storage", "--size", "20000", "--epochs", "1")
    assert sized["units"] == storage_units(encoded_size(20000, 8))
    split = as_user(devnet, buyer, "split-storage", resource, "--units", "1")
    small, rest = split["parts"]
    (row,) = [r for r in as_user(devnet, buyer, "storage")["resources"] if r["resourceId"] == small]
    assert row["units"] == 1 and row["blobId"] is None and row["endEpoch"] == end
    balance = as_user(devnet, buyer, "wallet", "balance")["balance"]

    (stored,) = as_user(
        devnet, buyer, "store", str(first), "--end-epoch", str(end), "--storage", small
    )
    created = stored["newlyCreated"]
    blob_id = created["blobObject"]["blobId"]
    after = as_user(devnet, buyer, "wallet", "balance")["balance"]
    assert created["cost"] == balance - after > 0  # the write fee only
    refused = devnet.cli(
        "store", str(second), "--end-epoch", str(end), "--storage", small, "--wallet", str(buyer)
    )
    err = refused.stderr.decode()
    assert refused.returncode == EXIT_FAILED, err
    assert "RESOURCE_UNUSABLE" in err.strip().splitlines()[-1] and "Traceback" not in err

    deleted = as_user(devnet, buyer, "delete", blob_id)
    assert deleted["releasedStorage"] == small
    (row,) = [r for r in as_user(devnet, buyer, "storage")["resources"] if r["resourceId"] == small]
    assert row["blobId"] is None
    (again,) = as_user(
        devnet, buyer, "store", str(second), "--end-epoch", str(end), "--storage", small
    )
    reused = again["newlyCreated"]["blobObject"]["blobId"]
    assert devnet.cli_json("status", reused)["endEpoch"] == end
    rows = {r["resourceId"]: r for r in as_user(devnet, buyer, "storage")["resources"]}
    assert rows[small]["blobId"] == reused and rows[rest]["blobId"] is None
