"""``walrus-peer wallet``: arguments, amounts, the wallet key file and the errors a user sees
without a network (the commands against a running network: tests/testnet/test_wallet_cli.py)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from walrus_p2p import cli
from walrus_p2p.cli._common import UsageError
from walrus_p2p.cli.wallet import parse_amount
from walrus_p2p.client.wallet import create_wallet, format_wal, load_wallet, parse_address
from walrus_p2p.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "frost", "expected"),
    [
        ("1", False, 10**9),
        ("1.5", False, 1_500_000_000),
        ("0.000000001", False, 1),
        ("42", True, 42),
        ("18446744073709551615", True, 2**64 - 1),
    ],
)
def test_amounts_in_wal_or_frost(text: str, frost: bool, expected: int) -> None:
    assert parse_amount(text, frost=frost) == expected
    assert parse_amount(format_wal(expected), frost=False) == expected


@pytest.mark.parametrize(
    ("text", "frost"),
    [
        ("0", False),
        ("-1", False),
        ("0.0000000001", False),
        ("abc", False),
        ("inf", False),
        ("1.5", True),
        ("18446744073709551616", True),
    ],
)
def test_bad_amounts_are_usage_errors(text: str, frost: bool) -> None:
    with pytest.raises(UsageError):
        parse_amount(text, frost=frost)


def test_wallet_file_is_private_created_once_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "wallet.key"
    owner = create_wallet(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_wallet(path).public_key.raw == owner.public_key.raw
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        create_wallet(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="accessible by others"):
        load_wallet(path)
    os.chmod(path, 0o600)
    path.write_text(path.read_text().replace(owner.public_key.hex(), "00" * 32))
    with pytest.raises(ConfigError, match="does not match"):
        load_wallet(path)


def test_address_creates_then_shows_the_same_account(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wallet = str(tmp_path / "w.key")
    assert cli.main(["wallet", "address", "--wallet", wallet]) == cli.EXIT_USAGE
    assert "--create" in capsys.readouterr().err
    assert cli.main(["wallet", "address", "--create", "--wallet", wallet, "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["created"] is True and created["wallet"] == wallet
    assert cli.main(["wallet", "address", "--wallet", wallet]) == 0
    assert capsys.readouterr().out.strip() == created["address"]
    assert parse_address(created["address"]) == load_wallet(wallet).public_key.raw


@pytest.mark.parametrize(
    "argv",
    [
        ["wallet", "send", "not-an-address", "1"],
        ["wallet", "send", "11" * 32, "0"],
        ["wallet", "balance", "zz"],
        ["wallet", "history", "--genesis", "/nonexistent/genesis.toml"],
    ],
)
def test_errors_are_one_line_before_any_network(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wallet = tmp_path / "w.key"
    create_wallet(wallet)
    code = cli.main([*argv, "--wallet", str(wallet), "--genesis", str(tmp_path / "none.toml")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert err.startswith("error: ") and "Traceback" not in err


def test_wallet_commands_share_the_client_options() -> None:
    parser = cli.build_parser()
    for argv in (["wallet", "balance"], ["wallet", "send", "a", "1"], ["wallet", "history"]):
        parsed = parser.parse_args([*argv, "--json", "--log-level", "debug", "--wallet", "w"])
        assert parsed.json and parsed.log_level == "debug" and parsed.wallet == "w"
    assert parser.parse_args(["wallet", "history", "--limit", "3"]).limit == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["wallet", "history", "--limit", "11"])


def test_an_economy_devnet_funds_its_wallet_and_gateway_and_the_banner_names_it(
    tmp_path: Path,
) -> None:
    from walrus_p2p.devnet import (
        CLIENT_KEY_DIR,
        WALLET_FUNDS,
        WALLET_NAME,
        DevnetOptions,
        _instructions,
        gateway_owner,
        prepare,
    )
    from walrus_p2p.node.config import load_identity

    plain = prepare(DevnetOptions(directory=tmp_path / "plain", peers=4, shards=8))
    assert plain.economy is None  # without --economy: no economy, no wallet
    assert not (tmp_path / "plain" / WALLET_NAME).exists()
    options = DevnetOptions(directory=tmp_path, peers=4, shards=8, economy=True)
    genesis = prepare(options)
    owner = load_wallet(tmp_path / WALLET_NAME)
    gateway = load_identity(tmp_path / CLIENT_KEY_DIR)
    allocations = genesis.economy_or_default.allocations
    assert sorted((item.account, item.amount) for item in allocations) == sorted(
        [(owner.public_key.raw, WALLET_FUNDS), (gateway.public_key.raw, WALLET_FUNDS)]
    )
    assert gateway_owner(tmp_path, genesis).public_key == gateway.public_key
    assert prepare(options).network_id == genesis.network_id  # reused, not rewritten
    banner = _instructions(options)
    assert f"WALRUS_WALLET={tmp_path / WALLET_NAME}" in banner
    assert owner.public_key.hex() in banner
