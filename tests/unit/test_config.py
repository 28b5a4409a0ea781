"""Peer data directories: init/load round trip, key file safety, and one-line errors with paths."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from walrus_p2p import cli
from walrus_p2p.cli import EXIT_USAGE
from walrus_p2p.core.economy import VoteSettings
from walrus_p2p.core.genesis import create_genesis_toml
from walrus_p2p.core.identity import Identity
from walrus_p2p.errors import ConfigError
from walrus_p2p.net.inbound import InboundLimits
from walrus_p2p.node import config

SEED = bytes(range(32))
LISTEN = ["/ip4/127.0.0.1/tcp/4001"]


@pytest.fixture
def genesis_path(tmp_path: Path) -> Path:
    """A devnet genesis whose committee is three peers initialised in tmp_path/peer-<i>."""
    members = []
    for index in range(1, 4):
        result = config.init_peer(
            tmp_path / f"peer-{index}",
            tmp_path / "genesis.toml",
            [f"/ip4/127.0.0.{index}/tcp/4001"],
            seed=bytes([index]) * 32,
            check_genesis=False,
        )
        members.append(config.genesis_member(result.data_dir, weight=index))
    text = create_genesis_toml(
        network="devnet", n_shards=6, members=members, genesis_time=1_800_000_000
    )
    path = tmp_path / "genesis.toml"
    config.write_genesis(path, text)
    return path


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_then_load(tmp_path: Path, genesis_path: Path, permissive_umask: None) -> None:
    data_dir = tmp_path / "alice"
    result = config.init_peer(
        data_dir, genesis_path, LISTEN, capacity_bytes=5 * 2**30, metrics_address="127.0.0.1:9184"
    )
    assert result.created_identity
    assert _mode(data_dir / "identity.key") == 0o600  # even with umask 0
    assert _mode(data_dir) == 0o700
    assert sorted(p.name for p in data_dir.iterdir()) == ["identity.key", "peer.toml"]
    loaded = config.load_peer(data_dir)
    assert loaded.identity == result.identity
    assert loaded.config == result.config
    assert loaded.config.genesis_path == genesis_path.resolve()
    assert loaded.config.listen_addresses == tuple(LISTEN)
    assert loaded.config.capacity_bytes == 5 * 2**30
    assert loaded.config.metrics_address == "127.0.0.1:9184"
    assert loaded.genesis.network == "devnet"
    assert result.identity.seed.hex() not in (data_dir / "peer.toml").read_text()


def test_weight_and_candidacy_come_from_peer_toml(tmp_path: Path, genesis_path: Path) -> None:
    data_dir = tmp_path / "w"
    result = config.init_peer(data_dir, genesis_path, LISTEN, weight=3)
    assert result.config.weight == 3 and result.config.candidate
    config_file = data_dir / "peer.toml"
    text = config_file.read_text()
    assert "weight = 3" in text and "candidate = true" in text
    config_file.write_text(text.replace("candidate = true", "candidate = false"))
    loaded = config.load_peer(data_dir).config
    assert (loaded.weight, loaded.candidate) == (3, False)
    # A config written before these keys existed still loads, with the defaults.
    config_file.write_text(
        "\n".join(
            line for line in text.splitlines() if not line.startswith(("weight", "candidate"))
        )
    )
    loaded = config.load_peer(data_dir).config
    assert (loaded.weight, loaded.candidate) == (config.DEFAULT_WEIGHT, True)


def test_inbound_limits_come_from_an_optional_table(tmp_path: Path, genesis_path: Path) -> None:
    data_dir = tmp_path / "limits"
    config.init_peer(data_dir, genesis_path, LISTEN)
    assert config.load_peer(data_dir).config.inbound == InboundLimits()
    config_file = data_dir / "peer.toml"
    config_file.write_text(
        config_file.read_text() + "\n[inbound]\nmax_streams_per_peer = 16\nmax_bytes = 1048576\n"
    )
    loaded = config.load_peer(data_dir).config.inbound
    assert loaded == InboundLimits(max_streams_per_peer=16, max_bytes=1 << 20)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("max_streams = 0", "inbound: .*max_streams must be a positive integer"),
        ('max_bytes = "1G"', "inbound: .*max_bytes must be a positive integer"),
        ("streams = 5", "inbound.streams: unknown field"),
    ],
)
def test_bad_inbound_limits_are_refused(
    tmp_path: Path, genesis_path: Path, table: str, message: str
) -> None:
    data_dir = tmp_path / "bad-limits"
    config.init_peer(data_dir, genesis_path, LISTEN)
    config_file = data_dir / "peer.toml"
    config_file.write_text(config_file.read_text() + f"\n[inbound]\n{table}\n")
    with pytest.raises(ConfigError, match=message) as caught:
        config.load_peer(data_dir)
    assert caught.value.path == str(config_file)


def test_challenge_settings_come_from_an_optional_table(tmp_path: Path, genesis_path: Path) -> None:
    data_dir = tmp_path / "challenges"
    config.init_peer(data_dir, genesis_path, LISTEN)
    loaded = config.load_peer(data_dir).config
    assert (loaded.challenges_enabled, loaded.challenge_window_seconds) == (True, None)
    config_file = data_dir / "peer.toml"
    config_file.write_text(config_file.read_text() + "\n[challenges]\nwindow_seconds = 12\n")
    loaded = config.load_peer(data_dir).config
    assert (loaded.challenges_enabled, loaded.challenge_window_seconds) == (True, 12.0)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("window_seconds = 0", "challenges.window_seconds: must be a number"),
        ('window_seconds = "10"', "challenges.window_seconds: must be a number"),
        ("window_seconds = true", "challenges.window_seconds: must be a number"),
        ('enabled = "yes"', "challenges.enabled: must be true or false"),
        ("window = 5", "challenges.window: unknown field"),
    ],
)
def test_bad_challenge_settings_are_refused(
    tmp_path: Path, genesis_path: Path, table: str, message: str
) -> None:
    data_dir = tmp_path / "bad-challenges"
    config.init_peer(data_dir, genesis_path, LISTEN)
    config_file = data_dir / "peer.toml"
    config_file.write_text(config_file.read_text() + f"\n[challenges]\n{table}\n")
    with pytest.raises(ConfigError, match=message) as caught:
        config.load_peer(data_dir)
    assert caught.value.path == str(config_file)


def test_devnet_peers_are_in_the_genesis_committee(tmp_path: Path, genesis_path: Path) -> None:
    loaded = config.load_peer(tmp_path / "peer-3")
    assert loaded.identity.peer_id in loaded.genesis.committee
    assert len(loaded.genesis.committee.shards_of(loaded.identity.peer_id)) == 3  # 1:2:3 of 6


def test_seed_gives_the_same_identity(tmp_path: Path, genesis_path: Path) -> None:
    result = config.init_peer(tmp_path / "a", genesis_path, LISTEN, seed=SEED)
    assert result.identity == Identity.from_seed(SEED)
    assert config.load_identity(tmp_path / "a").seed == SEED


def test_reinit_refuses_and_force_keeps_the_key(tmp_path: Path, genesis_path: Path) -> None:
    data_dir = tmp_path / "a"
    first = config.init_peer(data_dir, genesis_path, LISTEN)
    key_bytes = (data_dir / "identity.key").read_bytes()
    with pytest.raises(ConfigError, match="already initialised"):
        config.init_peer(data_dir, genesis_path, ["/ip4/127.0.0.1/tcp/5000"])
    second = config.init_peer(data_dir, genesis_path, ["/ip4/127.0.0.1/tcp/5000"], force=True)
    assert not second.created_identity
    assert second.identity == first.identity
    assert (data_dir / "identity.key").read_bytes() == key_bytes
    assert config.load_config(data_dir).listen_addresses == ("/ip4/127.0.0.1/tcp/5000",)
    with pytest.raises(ConfigError, match="different identity"):
        config.init_peer(data_dir, genesis_path, LISTEN, force=True, seed=SEED)
    assert (data_dir / "identity.key").read_bytes() == key_bytes


def test_a_key_alone_also_blocks_init(tmp_path: Path, genesis_path: Path) -> None:
    data_dir = tmp_path / "a"
    config.init_peer(data_dir, genesis_path, LISTEN)
    (data_dir / "peer.toml").unlink()
    with pytest.raises(ConfigError, match=r"identity\.key exists"):
        config.init_peer(data_dir, genesis_path, LISTEN)


def test_init_checks_its_inputs(tmp_path: Path, genesis_path: Path) -> None:
    with pytest.raises(ConfigError, match="listen_addresses"):
        config.init_peer(tmp_path / "a", genesis_path, ["/ip4/1.2.3.4/udp/1"])
    with pytest.raises(ConfigError, match="metrics_address"):
        config.init_peer(tmp_path / "a", genesis_path, LISTEN, metrics_address="localhost")
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        config.init_peer(tmp_path / "a", tmp_path / "missing.toml", LISTEN)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "version"),
        (b"\xff\xfe", "not UTF-8"),
        (b"seed = ", "not valid TOML"),
        (b'version = 1\ntype = "ed25519"\nseed = "00"\n', "seed"),
        (b"x" * 5000, "larger than"),
    ],
)
def test_corrupt_key_file(tmp_path: Path, genesis_path: Path, content: bytes, message: str) -> None:
    data_dir = tmp_path / "a"
    config.init_peer(data_dir, genesis_path, LISTEN)
    key_file = data_dir / "identity.key"
    key_file.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as caught:
        config.load_peer(data_dir)
    assert caught.value.path == str(key_file)
    assert str(caught.value).startswith(f"{key_file}: ")
    assert "\n" not in str(caught.value)


def test_key_file_that_does_not_match_its_seed(tmp_path: Path, genesis_path: Path) -> None:
    data_dir = tmp_path / "a"
    config.init_peer(data_dir, genesis_path, LISTEN, seed=SEED)
    key_file = data_dir / "identity.key"
    text = key_file.read_text()
    key_file.write_text(text.replace(SEED.hex(), bytes(32).hex()))
    with pytest.raises(ConfigError, match="does not match the seed") as caught:
        config.load_identity(data_dir)
    assert caught.value.path == str(key_file)


def test_key_file_readable_by_others_is_refused(tmp_path: Path, genesis_path: Path) -> None:
    data_dir = tmp_path / "a"
    config.init_peer(data_dir, genesis_path, LISTEN)
    os.chmod(data_dir / "identity.key", 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        config.load_peer(data_dir)


def test_missing_files(tmp_path: Path, genesis_path: Path) -> None:
    with pytest.raises(ConfigError, match="run walrus-peer init"):
        config.load_peer(tmp_path / "nowhere")
    data_dir = tmp_path / "a"
    config.init_peer(data_dir, genesis_path, LISTEN)
    (data_dir / "peer.toml").unlink()
    with pytest.raises(ConfigError) as caught:
        config.load_peer(data_dir)
    assert caught.value.path == str(data_dir / "peer.toml")
    (data_dir / "identity.key").unlink()
    with pytest.raises(ConfigError) as caught:
        config.load_peer(data_dir)
    assert caught.value.path == str(data_dir / "identity.key")


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        (("listen_addresses = [", "listen_addresses = 5 #["), "listen_addresses"),
        (("capacity_bytes = ", "capacity_bytes = -"), "capacity_bytes"),
        (("weight = 1", "weight = 0"), "weight: must be an integer"),
        (("weight = 1", 'weight = "heavy"'), "weight: must be an integer"),
        (("candidate = true", "candidate = 1"), "candidate: must be true or false"),
        (("version = 1", "version = 1\nextra = 2"), "extra: unknown field"),
        (("version = 1", "version = [1"), "not valid TOML"),
        (("version = 1", "version = 1\ninbound = 3"), "inbound: must be a table"),
    ],
)
def test_corrupt_config(
    tmp_path: Path, genesis_path: Path, replace: tuple[str, str], message: str
) -> None:
    data_dir = tmp_path / "a"
    config.init_peer(data_dir, genesis_path, LISTEN)
    config_file = data_dir / "peer.toml"
    config_file.write_text(config_file.read_text().replace(*replace, 1))
    with pytest.raises(ConfigError, match=message) as caught:
        config.load_peer(data_dir)
    assert caught.value.path == str(config_file)


def test_corrupt_or_missing_genesis(tmp_path: Path, genesis_path: Path) -> None:
    data_dir = tmp_path / "a"
    config.init_peer(data_dir, genesis_path, LISTEN)
    genesis_path.write_text(genesis_path.read_text().replace("n_shards = 6", "n_shards = 2"))
    with pytest.raises(ConfigError, match="n_shards") as caught:
        config.load_peer(data_dir)
    assert caught.value.path == str(genesis_path)
    genesis_path.unlink()
    with pytest.raises(ConfigError, match="No such file") as caught:
        config.load_peer(data_dir)
    assert caught.value.path == str(genesis_path)


def test_relative_genesis_path_is_relative_to_the_data_dir(
    tmp_path: Path, genesis_path: Path
) -> None:
    data_dir = tmp_path / "a"
    config.init_peer(data_dir, genesis_path, LISTEN)
    config_file = data_dir / "peer.toml"
    config_file.write_text(
        config_file.read_text().replace(str(genesis_path.resolve()), "../genesis.toml")
    )
    assert config.load_peer(data_dir).config.genesis_path == tmp_path / "genesis.toml"


def test_write_genesis_refuses_to_overwrite(tmp_path: Path, genesis_path: Path) -> None:
    text = genesis_path.read_text()
    with pytest.raises(ConfigError, match="already exists"):
        config.write_genesis(genesis_path, text)
    config.write_genesis(genesis_path, text, force=True)
    with pytest.raises(ConfigError, match="n_shards"):
        config.write_genesis(tmp_path / "bad.toml", text.replace("n_shards = 6", "n_shards = 1"))
    assert not (tmp_path / "bad.toml").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_ensure_identity_takes_the_key_another_process_created_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes on a new key directory at once (found by tests/testnet: a gateway and a CLI
    command): the one whose key lands second uses the first one's key instead of failing."""
    first, created = config.ensure_identity(tmp_path / "client")
    assert created
    real_exists = config._exists
    calls: list[Path] = []

    def raced_exists(path: Path) -> bool:
        calls.append(path)
        return False if len(calls) == 1 else real_exists(path)  # the other process was quicker

    monkeypatch.setattr(config, "_exists", raced_exists)
    second, created = config.ensure_identity(tmp_path / "client")
    assert not created
    assert second.peer_id == first.peer_id
    assert len(calls) == 2


def test_the_home_profile_loads_with_the_default_inbound_limits(tmp_path: Path) -> None:
    profile = Path(__file__).resolve().parents[2] / "peers" / "home.toml"
    (tmp_path / "peer.toml").write_bytes(profile.read_bytes())
    loaded = config.load_config(tmp_path)
    assert loaded.inbound == InboundLimits()
    assert loaded.metrics_address == "127.0.0.1:9464"


def test_votes_come_from_an_optional_table_and_walrus_peer_vote_rewrites_it(
    tmp_path: Path, genesis_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "voter"
    config.init_peer(data_dir, genesis_path, LISTEN, capacity_bytes=5 * 2**30)
    assert config.load_vote(data_dir) is None
    config_file = data_dir / "peer.toml"
    config_file.write_text(config_file.read_text() + "\n[challenges]\nwindow_seconds = 12\n")
    # the first vote needs both prices
    assert cli.main(["vote", "--data-dir", str(data_dir), "--storage-price", "5"]) == EXIT_USAGE
    assert "--write-price" in capsys.readouterr().err
    arguments = ["vote", "--data-dir", str(data_dir), "--storage-price", "150000"]
    assert cli.main([*arguments, "--write-price", "30000", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["vote"] == {
        "storagePrice": 150_000,
        "writePrice": 30_000,
        "capacity": 5 * 2**30,
        "commissionBps": 0,
    }
    # a change keeps the other values and the rest of peer.toml
    assert cli.main(["vote", "--data-dir", str(data_dir), "--commission-bps", "250"]) == 0
    capsys.readouterr()
    loaded = config.load_peer(data_dir).config
    assert loaded.vote == VoteSettings(150_000, 30_000, 5 * 2**30, 250)
    assert loaded.challenge_window_seconds == 12.0
    assert config_file.read_text().count("[vote]") == 1
    assert cli.main(["vote", "--data-dir", str(data_dir), "--commission-bps", "10001"]) == (
        EXIT_USAGE
    )
    assert "commission_bps" in capsys.readouterr().err
    assert config.load_vote(data_dir) == VoteSettings(150_000, 30_000, 5 * 2**30, 250)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("write_price = 1", "vote.storage_price: missing"),
        ("storage_price = 1\nwrite_price = -1", "vote: write_price must be"),
        ("storage_price = 1\nwrite_price = 1\ncommission_bps = 20000", "vote: commission_bps"),
        ('storage_price = "1"\nwrite_price = 1', "vote: storage_price must be"),
        ("storage_price = 1\nwrite_price = 1\nprice = 3", "vote.price: unknown field"),
    ],
)
def test_bad_votes_are_refused(
    tmp_path: Path, genesis_path: Path, table: str, message: str
) -> None:
    data_dir = tmp_path / "bad-vote"
    config.init_peer(data_dir, genesis_path, LISTEN)
    config_file = data_dir / "peer.toml"
    config_file.write_text(config_file.read_text() + f"\n[vote]\n{table}\n")
    with pytest.raises(ConfigError, match=message) as caught:
        config.load_peer(data_dir)
    assert caught.value.path == str(config_file)
