"""`store`'s lifetimes: --epochs N|max, --end-epoch, --earliest-expiry-time and the expiry
warning (walrus_p2p/cli/lifetime.py, docs/cli.md "Lifetimes")."""

from __future__ import annotations

import argparse
import datetime as dt

import pytest

from walrus_p2p.cli import build_parser
from walrus_p2p.cli._common import UsageError
from walrus_p2p.cli.lifetime import (
    Lifetime,
    epoch_time,
    epochs_value,
    expiry_time,
    expiry_warning,
    store_lifetime,
)
from walrus_p2p.core.genesis import Genesis, Limits
from walrus_p2p.core.identity import Identity
from walrus_p2p.testing.network import make_genesis

GENESIS_TIME = 1_800_000_000  # 2027-01-15T08:00:00Z
DURATION = 3600
LONGEST = 10


@pytest.fixture(scope="module")
def genesis() -> Genesis:
    return make_genesis(
        [Identity.from_seed(bytes([1]) * 32)],
        ["/ip4/127.0.0.1/tcp/1"],
        network="lifetimes",
        n_shards=4,
        limits=Limits(max_epochs_ahead=LONGEST),
        genesis_time=GENESIS_TIME,
        epoch_seconds=DURATION,
    )


def at(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


def test_epochs_and_max(genesis: Genesis) -> None:
    assert store_lifetime(genesis, 5, epochs=3) == Lifetime(5, 3)
    assert store_lifetime(genesis, 5, epochs="max") == Lifetime(5, LONGEST)
    assert store_lifetime(genesis, 5, epochs=LONGEST).end_epoch == 5 + LONGEST
    with pytest.raises(UsageError, match=f"between 1 and {LONGEST}"):
        store_lifetime(genesis, 5, epochs=LONGEST + 1)


def test_end_epoch(genesis: Genesis) -> None:
    assert store_lifetime(genesis, 5, end_epoch=6) == Lifetime(5, 1)
    assert store_lifetime(genesis, 5, end_epoch=5 + LONGEST) == Lifetime(5, LONGEST)
    for bad in (5, 4, 0, 6 + LONGEST):
        with pytest.raises(UsageError, match="--end-epoch must be after the current epoch 5"):
            store_lifetime(genesis, 5, end_epoch=bad)


def test_earliest_expiry_time_ends_at_the_first_epoch_beginning_at_or_after_it(
    genesis: Genesis,
) -> None:
    start_8 = genesis.epoch_start(8)
    assert store_lifetime(genesis, 5, earliest_expiry=at(start_8)) == Lifetime(5, 3)
    assert store_lifetime(genesis, 5, earliest_expiry=at(start_8 + 1)) == Lifetime(5, 4)
    assert store_lifetime(genesis, 5, earliest_expiry=at(start_8 - 1)) == Lifetime(5, 3)
    # A time already past, or before genesis: the shortest lifetime there is.
    assert store_lifetime(genesis, 5, earliest_expiry=at(GENESIS_TIME - 10**6)) == Lifetime(5, 1)
    assert store_lifetime(genesis, 5, earliest_expiry=at(genesis.epoch_start(5) + 1)).epochs == 1
    latest = genesis.epoch_start(5 + LONGEST)
    assert store_lifetime(genesis, 5, earliest_expiry=at(latest)).epochs == LONGEST
    with pytest.raises(UsageError, match=epoch_time(genesis, 5 + LONGEST)):
        store_lifetime(genesis, 5, earliest_expiry=at(latest + 1))


def test_exactly_one_way_of_asking(genesis: Genesis) -> None:
    with pytest.raises(UsageError, match="exactly one"):
        store_lifetime(genesis, 5)
    with pytest.raises(UsageError, match="exactly one"):
        store_lifetime(genesis, 5, epochs=2, end_epoch=9)


def test_flag_parsing() -> None:
    assert epochs_value("MAX") == "max"
    assert epochs_value("7") == 7
    for bad in ("0", "-1", "many", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            epochs_value(bad)
    assert expiry_time("2027-01-31T12:00:00Z") == dt.datetime(2027, 1, 31, 12, tzinfo=dt.UTC)
    assert (
        expiry_time("2027-01-31T13:00:00+01:00").timestamp()
        == expiry_time("2027-01-31T12:00:00Z").timestamp()
    )
    with pytest.raises(argparse.ArgumentTypeError, match="no time zone"):
        expiry_time("2027-01-31T12:00:00")
    with pytest.raises(argparse.ArgumentTypeError, match="RFC 3339"):
        expiry_time("next tuesday")
    parser = build_parser()
    parsed = parser.parse_args(["store", "f", "--earliest-expiry-time", "2027-01-31T12:00:00Z"])
    assert (parsed.epochs, parsed.end_epoch) == (None, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["store", "f", "--epochs", "2", "--end-epoch", "9"])
    with pytest.raises(SystemExit):
        parser.parse_args(["store", "f"])


def test_expiry_warning(genesis: Genesis) -> None:
    warning = expiry_warning(genesis, 5, 6, 1)
    assert warning is not None
    assert "epoch 6" in warning
    assert epoch_time(genesis, 6) in warning
    assert epoch_time(genesis, 6) == "2027-01-15T14:00:00Z"
    assert expiry_warning(genesis, 5, 7, 1) is None
    assert expiry_warning(genesis, 5, 7, 2) is not None
    assert expiry_warning(genesis, 5, 6, -1) is None  # never
