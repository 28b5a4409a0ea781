"""Genesis allocations: old files keep their network id, allocations change it, the ledger starts
from them with the total supply."""

from __future__ import annotations

from pathlib import Path

import pytest

from walrus_p2p.core import genesis as g
from walrus_p2p.core.committee import Member
from walrus_p2p.core.economy import Prices
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.ledger import Ledger
from walrus_p2p.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "bootstrap" / "example-genesis.toml"
ACCOUNTS = [Identity.from_seed(bytes([50, i]) * 16).public_key.raw for i in range(3)]


def _member(index: int) -> Member:
    key = Identity.from_seed(bytes([index]) * 32).public_key.raw
    return Member.from_public_key(key, 1, [f"/ip4/10.0.0.{index}/tcp/4001"])


def _text(economy: g.EconomyGenesis | None) -> str:
    return g.create_genesis_toml(
        network="devnet",
        n_shards=10,
        members=[_member(1), _member(2)],
        genesis_time=1_796_083_200,
        epoch_duration_seconds=600,
        economy=economy,
    )


ECONOMY = g.EconomyGenesis(
    allocations=(g.Allocation(ACCOUNTS[1], 500), g.Allocation(ACCOUNTS[0], 10**18)),
    storage_price=7,
    write_price=3,
)


def test_a_genesis_without_economy_keeps_its_network_id() -> None:
    text = EXAMPLE.read_text()
    genesis = g.parse_genesis(text)
    assert genesis.economy is None
    assert genesis.network_id_text in text  # the id written in the file when it was made
    assert genesis.total_supply == 0
    assert "[economy]" not in g.genesis_to_toml(genesis)


def test_allocations_round_trip_and_change_the_network_id() -> None:
    plain = g.parse_genesis(_text(None))
    text = _text(ECONOMY)
    funded = g.parse_genesis(text)
    assert funded.network_id != plain.network_id
    assert funded.economy is not None
    assert [item.account for item in funded.economy.allocations] == sorted(ACCOUNTS[:2])
    assert funded.total_supply == 10**18 + 500
    assert g.parse_genesis(g.genesis_to_toml(funded)) == funded
    # every economy value is part of the id
    for other in (
        g.EconomyGenesis(ECONOMY.allocations, 8, 3),
        g.EconomyGenesis(ECONOMY.allocations, 7, 4),
        g.EconomyGenesis(ECONOMY.allocations[:1], 7, 3),
        g.EconomyGenesis((g.Allocation(ACCOUNTS[1], 501), ECONOMY.allocations[1]), 7, 3),
    ):
        assert g.parse_genesis(_text(other)).network_id != funded.network_id
    # an empty economy table is still a statement (the default prices), and a different network
    assert g.parse_genesis(_text(g.EconomyGenesis())).network_id != plain.network_id


def test_the_ledger_starts_from_the_allocations() -> None:
    genesis = g.parse_genesis(_text(ECONOMY))
    ledger = Ledger.from_genesis(genesis)
    assert ledger.supply == ledger.total() == genesis.total_supply
    assert ledger.balance(ACCOUNTS[0]) == 10**18
    assert ledger.balance(ACCOUNTS[2]) == 0
    assert ledger.prices(0) == Prices(7, 3)
    assert ledger.parameters.max_lifetime_epochs == genesis.limits.max_epochs_ahead
    assert ledger.parameters.network_id == genesis.network_id
    empty = Ledger.from_genesis(g.parse_genesis(_text(None)))
    assert empty.supply == 0
    assert empty.prices(0) == Prices(g.DEFAULT_STORAGE_PRICE, g.DEFAULT_WRITE_PRICE)


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ("[economy]\ncolour = 1\n", "economy.colour"),
        ("[economy]\nstorage_price = -1\n", "economy.storage_price"),
        ("[economy]\nwrite_price = true\n", "economy.write_price"),
        ('[[economy.allocation]]\naccount = "00"\namount = 1\n', "account"),
        (f'[[economy.allocation]]\naccount = "{ACCOUNTS[0].hex()}"\n', "amount"),
        (f'[[economy.allocation]]\naccount = "{ACCOUNTS[0].hex()}"\namount = 0\n', "amount"),
        (
            f'[[economy.allocation]]\naccount = "{ACCOUNTS[0].hex()}"\namount = 1\n'
            f'[[economy.allocation]]\naccount = "{ACCOUNTS[0].hex()}"\namount = 2\n',
            "listed twice",
        ),
        (
            f'[[economy.allocation]]\naccount = "{ACCOUNTS[0].hex()}"\namount = {2**62}\n'
            f'[[economy.allocation]]\naccount = "{ACCOUNTS[1].hex()}"\namount = {2**62}\n',
            "total",
        ),
    ],
)
def test_bad_economy_tables_name_their_field(table: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        g.parse_genesis(_text(None) + "\n" + table)
