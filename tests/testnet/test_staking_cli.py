"""``walrus-peer stake|stakes|unstake|withdraw`` and the economy in ``info``, as a user runs
them against a devnet of real peer processes with an economy and short epochs (4 peers, 8
shards, 20 s epochs; docs/economics.md, "Staking" and "Settlements in the epoch change").

The devnet wallet stakes with a peer; ``stakes`` shows it pending; after the next epoch change
it is active (the settlement in the epoch value listed it) and ``info`` counts it; a
``withdraw`` before the withdrawal completes is a one-line ``STAKE_NOT_WITHDRAWABLE`` error that
changes nothing; ``unstake``, the next epoch change, ``withdraw``: the principal is back in the
balance. Every command and every wait has a timeout; the fixture stops every process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from walrus_p2p.cli import EXIT_FAILED
from walrus_p2p.devnet import WALLET_NAME
from walrus_p2p.testing.processes import Devnet, running_devnet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

READY_TIMEOUT = 120.0
EPOCH_SECONDS = 20
CHANGE_TIMEOUT = 4 * EPOCH_SECONDS + 60.0
WAL = 10**9


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    directory = tmp_path_factory.mktemp("staking-devnet")
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


def wallet_cli(devnet: Devnet, *arguments: str) -> Any:
    return devnet.cli_json(*arguments, "--wallet", str(devnet.directory / WALLET_NAME))


def wait_until(devnet: Devnet, what: str, check: Callable[[], Any]) -> Any:
    return devnet.wait_until(what, check, CHANGE_TIMEOUT)


def test_stake_then_unstake_then_withdraw_from_the_command_line(devnet: Devnet) -> None:
    peer_id = devnet.peers[1].peer_id
    before = wallet_cli(devnet, "wallet", "balance")["balance"]
    staked = wallet_cli(devnet, "stake", peer_id, "25")
    stake_id = staked["stakeId"]
    assert len(stake_id) == 64 and staked["kind"] == "Stake"
    (listed,) = wallet_cli(devnet, "stakes")["stakes"]
    assert listed["stakeId"] == stake_id and listed["peerId"] == peer_id
    assert listed["principal"] == 25 * WAL and listed["state"] in ("pending", "active")
    assert wallet_cli(devnet, "wallet", "balance")["balance"] == before - 25 * WAL

    def active() -> Any:
        (entry,) = wallet_cli(devnet, "stakes")["stakes"]
        return entry if entry["state"] == "active" else None

    entry = wait_until(devnet, "the stake became active", active)
    assert entry["activeFrom"] >= staked["epoch"] + 1
    info = devnet.cli_json("info")
    assert info["economy"]["settledEpoch"] is not None
    assert info["prices"]["source"] == "committee"

    early = devnet.cli("withdraw", stake_id, "--wallet", str(devnet.directory / WALLET_NAME))
    err = early.stderr.decode()
    assert early.returncode == EXIT_FAILED, err
    assert "STAKE_NOT_WITHDRAWABLE" in err.strip().splitlines()[-1] and "Traceback" not in err

    wallet_cli(devnet, "unstake", stake_id)

    def withdrawable() -> Any:
        (entry,) = wallet_cli(devnet, "stakes")["stakes"]
        return entry if entry["state"] == "withdrawable" else None

    done = wait_until(devnet, "the withdrawal completed", withdrawable)
    balance = wallet_cli(devnet, "wallet", "balance")["balance"]
    wallet_cli(devnet, "withdraw", stake_id)
    assert wallet_cli(devnet, "stakes")["stakes"] == []
    after = wallet_cli(devnet, "wallet", "balance")["balance"]
    assert after == balance + done["principal"] + done["rewards"]
