"""``walrus-peer wallet``, ``price`` and paid ``store`` against a devnet of real peer processes
(4 peers, 8 shards).

First a paid store (docs/economics.md, "Paid storage"): ``price`` quotes a file, ``store`` pays
exactly that from the wallet it is given and the file reads back; a wallet without funds gets a
one-line ``ORDER_OVERDRAWN`` error with the amount needed. Then the wallet: the devnet's
genesis funds its wallet (``DIR/wallet.key``); the test runs the commands a user runs: balance,
send, the recipient's balance and the history, an overdrawn send (a one-line error with its
reason, nothing changed), and balance once every peer is stopped (the committee is unreachable:
exit code 4). Every command has a timeout; the fixture stops every process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from walrus_p2p.cli import EXIT_FAILED, EXIT_NOT_ENOUGH_PEERS
from walrus_p2p.client.wallet import create_wallet
from walrus_p2p.devnet import CLIENT_KEY_DIR, WALLET_FUNDS, WALLET_NAME
from walrus_p2p.node.config import load_identity
from walrus_p2p.testing.processes import Devnet, running_devnet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

READY_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    directory = tmp_path_factory.mktemp("wallet-devnet")
    with running_devnet(
        "", 4, 8, ready_timeout=READY_TIMEOUT, economy=True, directory=directory
    ) as net:
        yield net


def wallet(devnet: Devnet, *arguments: str) -> Any:
    path = str(devnet.directory / WALLET_NAME)
    return devnet.cli_json("wallet", *arguments, "--wallet", path)


def test_price_then_paid_store_then_unfunded_store(devnet: Devnet, tmp_path: Path) -> None:
    # The gateway's account (DIR/client) is funded by the genesis too: a wallet file with its
    # seed pays here, leaving the devnet wallet to the test below.
    seed = load_identity(devnet.directory / CLIENT_KEY_DIR).seed
    paying = devnet.directory / "paying.key"
    create_wallet(paying, seed=seed)
    data = bytes(range(256)) * 400
    path = tmp_path / "paid.bin"
    path.write_bytes(data)
    quote = devnet.cli_json("price", str(path), "--epochs", "2")["quote"]
    assert quote["size"] == len(data) and quote["total"] > 0
    assert quote["total"] == quote["storageCost"] + quote["writeFee"]

    (stored,) = devnet.cli_json("store", str(path), "--epochs", "2", "--wallet", str(paying))
    assert stored["newlyCreated"]["cost"] == quote["total"]
    balance = devnet.cli_json("wallet", "balance", "--wallet", str(paying))
    assert balance["balance"] == WALLET_FUNDS - quote["total"]
    blob_id = stored["newlyCreated"]["blobObject"]["blobId"]
    devnet.cli("read", blob_id, "-o", str(tmp_path / "back.bin"), check=True)
    assert (tmp_path / "back.bin").read_bytes() == data

    poor = devnet.directory / "poor.key"
    create_wallet(poor)
    other = tmp_path / "other.bin"
    other.write_bytes(data[::-1])
    refused = devnet.cli("store", str(other), "--epochs", "2", "--wallet", str(poor))
    err = refused.stderr.decode()
    assert refused.returncode == EXIT_FAILED, err
    last = err.strip().splitlines()[-1]
    assert "ORDER_OVERDRAWN" in last and f"needs {quote['total']} FROST" in last, err
    assert "Traceback" not in err


def test_send_balance_history_and_refusals(devnet: Devnet) -> None:
    recipient = create_wallet(devnet.directory / "recipient.key").public_key.hex()
    assert wallet(devnet, "balance")["balance"] == WALLET_FUNDS

    sent = wallet(devnet, "send", recipient, "1.5")
    assert sent["amount"] == 1_500_000_000 and sent["sequence"] == 0
    assert 3 * sent["approvedShards"] >= 2 * sent["shards"] + 1

    seen = wallet(devnet, "balance", recipient)
    assert seen["balance"] == 1_500_000_000 and seen["nextSequence"] == 0
    history = wallet(devnet, "history")
    assert [entry["orderId"] for entry in history["sent"]] == [sent["orderId"]]
    assert history["balance"] == WALLET_FUNDS - 1_500_000_000
    received = wallet(devnet, "history", recipient)["received"]
    assert [(entry["from"], entry["amountWal"]) for entry in received] == [(sent["from"], "1.5")]

    overdrawn = devnet.cli(
        "wallet",
        "send",
        recipient,
        str(WALLET_FUNDS),
        "--frost",
        "--wallet",
        str(devnet.directory / WALLET_NAME),
    )
    err = overdrawn.stderr.decode()
    assert overdrawn.returncode == EXIT_FAILED, err
    assert "ORDER_OVERDRAWN" in err and "Traceback" not in err
    assert wallet(devnet, "balance")["nextSequence"] == 1

    for index in devnet.peers:
        devnet.stop_peer(index)
    unreachable = devnet.cli("wallet", "balance", recipient)
    err = unreachable.stderr.decode()
    assert unreachable.returncode == EXIT_NOT_ENOUGH_PEERS, err
    # libp2p may log its failed dials first; the command's own report is the last line.
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "NOT_ENOUGH_PEERS" in last, err
    assert "Traceback" not in err
