"""`walrus-peer genesis create --bootstrap`: the genesis bootstrap list from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from walrus_p2p.cli import EXIT_OK, EXIT_USAGE, main
from walrus_p2p.node.config import init_peer, load_genesis


def _member(tmp_path: Path) -> tuple[Path, str]:
    data_dir = tmp_path / "peer-01"
    result = init_peer(
        data_dir, tmp_path / "genesis.toml", ["/ip4/10.5.0.11/tcp/4001"], check_genesis=False
    )
    return data_dir, result.identity.peer_id


def test_bootstrap_entries_go_into_the_genesis(tmp_path: Path) -> None:
    data_dir, peer_id = _member(tmp_path)
    entry = f"/ip4/10.5.0.11/tcp/4001/p2p/{peer_id}"
    output = tmp_path / "genesis.toml"
    argv = ["genesis", "create", "--network", "testnet", "--shards", "10"]
    argv += ["--member", str(data_dir), "--bootstrap", entry, "-o", str(output)]
    assert main(argv) == EXIT_OK
    assert load_genesis(output).bootstrap == (entry,)


def test_an_undialable_bootstrap_entry_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir, peer_id = _member(tmp_path)
    argv = ["genesis", "create", "--network", "testnet", "--shards", "10"]
    argv += ["--member", str(data_dir), "--bootstrap", f"/ip4/0.0.0.0/tcp/4001/p2p/{peer_id}"]
    assert main([*argv, "-o", str(tmp_path / "genesis.toml")]) == EXIT_USAGE
    assert "bootstrap" in capsys.readouterr().err
    assert not (tmp_path / "genesis.toml").exists()
