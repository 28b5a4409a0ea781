"""Genesis parsing, validation errors, the network id, and the genesis committee."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from walrus_p2p.core import genesis as g
from walrus_p2p.core.committee import Member
from walrus_p2p.core.identity import Identity
from walrus_p2p.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "bootstrap" / "example-genesis.toml"
GENESIS_TIME = 1_796_083_200  # 2026-12-01T00:00:00Z


def _member(index: int, weight: int = 1) -> Member:
    key = Identity.from_seed(bytes([index]) * 32).public_key.raw
    return Member.from_public_key(key, weight, [f"/ip4/10.0.0.{index}/tcp/4001"])


def _text(**overrides: object) -> str:
    arguments: dict[str, object] = {
        "network": "devnet",
        "n_shards": 10,
        "members": [_member(1), _member(2), _member(3, 2)],
        "genesis_time": GENESIS_TIME,
        "epoch_duration_seconds": 600,
    }
    arguments.update(overrides)
    return g.create_genesis_toml(**arguments)  # type: ignore[arg-type]


BASE = _text()


def test_example_file_parses() -> None:
    genesis = g.parse_genesis(EXAMPLE.read_text(), source=str(EXAMPLE))
    assert genesis.network == "example"
    assert genesis.n_shards == 10
    assert genesis.network_id_text in EXAMPLE.read_text()
    assert sorted(len(genesis.committee.shards_of(m.peer_id)) for m in genesis.members) == [
        2,
        2,
        2,
        4,
    ]


def test_create_then_parse_round_trip() -> None:
    genesis = g.parse_genesis(BASE)
    assert genesis.network == "devnet"
    assert genesis.genesis_time == GENESIS_TIME
    assert genesis.limits.max_sliver_size == g.max_primary_sliver_size(10, 2**30)
    assert g.parse_genesis(g.genesis_to_toml(genesis)) == genesis
    # committee: weights 1:1:2 over 10 shards by D'Hondt -> 3, 2, 5 (tie at the last seat)
    weights = {m.peer_id: m.weight for m in genesis.members}
    counts = {p: len(genesis.committee.shards_of(p)) for p in weights}
    assert sum(counts.values()) == 10
    heavy = max(weights, key=lambda p: weights[p])
    assert counts[heavy] == 5
    assert genesis.committee.epoch == 0


def test_network_id_text() -> None:
    genesis = g.parse_genesis(BASE)
    assert len(genesis.network_id) == 32
    assert re.fullmatch(r"devnet-[0-9a-f]{16}", genesis.network_id_text)
    assert genesis.network_id_text.endswith(genesis.network_id.hex()[:16])


def test_network_id_ignores_formatting() -> None:
    reference = g.parse_genesis(BASE).network_id
    header, *members = BASE.split("\n[[committee]]")
    reformatted = (
        "# a different comment\n\n"
        + header.replace("n_shards = 10", "n_shards   =   0xA   # hex")
        .replace("epoch_duration_seconds = 600", "epoch_duration_seconds = 6_00")
        .replace("2026-12-01T00:00:00Z", "2026-12-01T01:00:00+01:00")
        + "".join("\n[[committee]]" + member for member in reversed(members))
    )
    # the limits written out equal the defaults, so leaving them out is the same network
    without_limits = re.sub(r"\[limits\]\n(?:max_\w+ = \d+\n)+", "", BASE)
    assert "max_blob_size" not in without_limits
    for text in (reformatted, without_limits):
        assert g.parse_genesis(text).network_id == reference


@pytest.mark.parametrize(
    "change",
    [
        {"network": "devnet2"},
        {"n_shards": 11},
        {"epoch_duration_seconds": 601},
        {"genesis_time": GENESIS_TIME + 1},
        {"max_shards_per_peer": 6},
        {"limits": g.Limits(max_blob_size=2**30 + 2**20)},
        {"limits": g.Limits(max_sliver_size=2**29)},
        {"limits": g.Limits(max_frame_size=2**25)},
        {"limits": g.Limits(max_gossip_message_size=2**21)},
        {"limits": g.Limits(max_epochs_ahead=52)},
        {"members": [_member(1), _member(2), _member(3, 3)]},
        {"members": [_member(1), _member(2), _member(4, 2)]},
        {"members": [_member(1), _member(2)]},
        {"bootstrap": [f"/dns4/boot.example.org/tcp/4001/p2p/{_member(9).peer_id}"]},
    ],
)
def test_network_id_changes_with_any_value(change: dict[str, object]) -> None:
    assert g.parse_genesis(_text(**change)).network_id != g.parse_genesis(BASE).network_id


def test_network_id_changes_with_an_address() -> None:
    changed = BASE.replace("/ip4/10.0.0.1/tcp/4001", "/ip4/10.0.0.1/tcp/4002")
    assert changed != BASE
    assert g.parse_genesis(changed).network_id != g.parse_genesis(BASE).network_id


def _replace(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


FIRST_KEY = _member(1).public_key.hex()
FIRST_ID = _member(1).peer_id
# the writer sorts members by peer id: where is member 1 (address 10.0.0.1) in the file?
M1 = "committee[{}]".format(
    [FIRST_KEY in block for block in BASE.split("[[committee]]")[1:]].index(True)
)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("version = [", "not valid TOML"),
        (_replace("version = 1\n", ""), "version"),
        (_replace("version = 1", "version = 2"), "version"),
        (_replace('network = "devnet"', 'network = "Dev Net"'), "network"),
        (_replace('network = "devnet"', "network = 5"), "network"),
        (_replace("n_shards = 10", "n_shards = 3"), "n_shards"),
        (_replace("n_shards = 10", "n_shards = 257"), "n_shards"),
        (_replace("n_shards = 10", "n_shards = true"), "n_shards"),
        (_replace("epoch_duration_seconds = 600", "epoch_duration_seconds = 0"), "epoch_duration"),
        (_replace("2026-12-01T00:00:00Z", "2026-12-01T00:00:00"), "genesis_time"),
        (_replace("2026-12-01T00:00:00Z", "2026-12-01T00:00:00.5Z"), "genesis_time"),
        (_replace("version = 1", "version = 1\ncolour = 1"), "colour"),
        (_replace("[limits]", "[limits]\nmax_colour = 1"), "limits.max_colour"),
        (_replace("max_frame_size = 16777216", "max_frame_size = 100"), "limits.max_frame_size"),
        (_replace("max_sliver_size = ", "max_sliver_size = 1000 # "), "limits.max_sliver_size"),
        (_replace("max_epochs_ahead = 53", 'max_epochs_ahead = "53"'), "limits.max_epochs_ahead"),
        (_replace("weight = 1", "weight = 0"), "committee[0].weight"),
        (_replace("weight = 1", "weight = -3"), "committee[0].weight"),
        (_replace("weight = 1", "weight = 1.5"), "committee[0].weight"),
        (_replace("weight = 1\n", ""), "committee[0].weight"),
        (_replace("weight = 1", "weight = 1\nstake = 3"), "committee[0].stake"),
        (_replace(FIRST_KEY, FIRST_KEY[:-2]), f"{M1}.public_key"),
        (_replace(FIRST_KEY, "zz" + FIRST_KEY[2:]), f"{M1}.public_key"),
        (_replace(FIRST_KEY, _member(7).public_key.hex()), f"{M1}.peer_id"),
        (_replace("/ip4/10.0.0.1/tcp/4001", "/ip4/10.0.0.1/udp/4001"), f"{M1}.addresses[0]"),
        (_replace("/ip4/10.0.0.1/tcp/4001", "/ip4/10.0.0.300/tcp/4001"), f"{M1}.addresses"),
        (_replace("/ip4/10.0.0.1/tcp/4001", "/ip4/0.0.0.0/tcp/4001"), f"{M1}.addresses"),
        (_replace("/ip4/10.0.0.1/tcp/4001", "/ip4/10.0.0.1/tcp/0"), f"{M1}.addresses"),
        (_replace("/ip4/10.0.0.1/tcp/4001", "/ip4/10.0.0.1/tcp/99999"), f"{M1}.addresses"),
        (_replace("/ip4/10.0.0.1/tcp/4001", "/quic/1"), f"{M1}.addresses"),
        (
            _replace("/ip4/10.0.0.1/tcp/4001", f"/ip4/10.0.0.1/tcp/1/p2p/{_member(5).peer_id}"),
            f"{M1}.addresses[0]",
        ),
        (_replace('["/ip4/10.0.0.1/tcp/4001"]', "[]"), f"{M1}.addresses"),
        (_replace("version = 1", "version = 1\nbootstrap = ['/dns4/x/tcp/1']"), "bootstrap[0]"),
        (_replace("version = 1", "version = 1\nmax_shards_per_peer = 2"), "committee:"),
        (_replace("version = 1", "version = 1\nmax_shards_per_peer = 0"), "max_shards_per_peer"),
        (BASE.split("\n[[committee]]")[0], "committee"),
        (
            BASE + f'\n[[committee]]\npeer_id = "{FIRST_ID}"\npublic_key = "{FIRST_KEY}"\n'
            'weight = 1\naddresses = ["/ip4/1.2.3.4/tcp/1"]\n',
            "committee[3].peer_id",
        ),
    ],
)
def test_validation_errors_name_the_field(text: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        g.parse_genesis(text, source="bootstrap/devnet.toml")
    message = str(caught.value)
    assert message.startswith(f"bootstrap/devnet.toml: {field}"), message
    assert caught.value.path == "bootstrap/devnet.toml"
    assert "\n" not in message


def test_member_order_in_the_file_is_free() -> None:
    genesis = g.parse_genesis(BASE)
    assert [m.peer_id for m in genesis.members] == sorted(m.peer_id for m in genesis.members)


def test_multiaddr_checker() -> None:
    peer = _member(1).peer_id
    assert g.check_tcp_multiaddr("/dns4/peer-1/tcp/4001") is None
    assert g.check_tcp_multiaddr(f"/ip6/::1/tcp/4001/p2p/{peer}") == peer
    assert g.check_tcp_multiaddr("/ip4/0.0.0.0/tcp/0", listen=True) is None
    for bad in ["", "ip4/1.2.3.4/tcp/1", "/ip4/1.2.3.4/tcp/01", "/dns4/-x/tcp/1", "/ip4/1.2.3.4"]:
        with pytest.raises(ConfigError):
            g.check_tcp_multiaddr(bad)


def test_epoch_schedule() -> None:
    genesis = g.parse_genesis(BASE)
    assert genesis.epoch_start(0) == GENESIS_TIME
    assert genesis.epoch_start(3) == GENESIS_TIME + 1800
    assert genesis.scheduled_epoch(GENESIS_TIME - 5) == 0
    assert genesis.scheduled_epoch(GENESIS_TIME + 1799) == 2
    assert genesis.scheduled_epoch(GENESIS_TIME + 1800) == 3


def test_genesis_value_is_frozen() -> None:
    genesis = g.parse_genesis(BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        genesis.n_shards = 4  # type: ignore[misc]
