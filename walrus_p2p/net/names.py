"""Protocol ids and gossip topics, built from a network id so two networks never mix.

Every stream protocol is ``/walrus-p2p/<network>/<name>/<version>`` and every gossip topic is
``walrus-p2p/<network>/<name>`` (docs/design.md §12, "Names"). ``network`` is the network id (the
hash of the genesis file, in whatever text form the caller chose); it must not contain ``/``
or whitespace, so a protocol id can always be split back into its parts.
"""

from __future__ import annotations

import re

from walrus_p2p.errors import ConfigError

_SEGMENT = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_VERSION = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")


def _check_segment(kind: str, value: str) -> None:
    if not _SEGMENT.match(value):
        raise ConfigError(
            f"{kind} must be 1-128 characters of letters, digits, '.', '_' or '-', got {value!r}"
        )


def protocol_id(network: str, name: str, version: str = "1.0.0") -> str:
    """The libp2p protocol id of the stream protocol ``name`` on ``network``."""
    _check_segment("network id", network)
    _check_segment("protocol name", name)
    if not _VERSION.match(version):
        raise ConfigError(f"protocol version must look like 1.0.0, got {version!r}")
    return f"/walrus-p2p/{network}/{name}/{version}"


def topic(network: str, name: str) -> str:
    """The gossipsub topic ``name`` on ``network``."""
    _check_segment("network id", network)
    _check_segment("topic name", name)
    return f"walrus-p2p/{network}/{name}"
