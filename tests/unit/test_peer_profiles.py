"""The example peer profiles under peers/ stay loadable by the real config loader."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from walrus_p2p.errors import ConfigError
from walrus_p2p.node.config import CONFIG_FILE_NAME, load_config

PROFILES = sorted((Path(__file__).resolve().parents[2] / "peers").glob("*.toml"))


def test_profiles_exist() -> None:
    assert PROFILES


@pytest.mark.parametrize("profile", PROFILES, ids=lambda path: path.name)
def test_profile_loads(profile: Path, tmp_path: Path) -> None:
    shutil.copy(profile, tmp_path / CONFIG_FILE_NAME)
    config = load_config(tmp_path)
    assert config.listen_addresses
    assert config.capacity_bytes > 0


def test_a_broken_profile_is_refused(tmp_path: Path) -> None:
    text = PROFILES[0].read_text().replace("listen_addresses", "listen_adresses")
    (tmp_path / CONFIG_FILE_NAME).write_text(text)
    with pytest.raises(ConfigError):
        load_config(tmp_path)
