"""Writing the small TOML documents walrus-p2p produces (genesis, peer config, key file).

Owner: TOML *output*; input is the standard library's ``tomllib``. Only what those files need:
bare keys, strings, integers, UTC datetimes, arrays of strings. Every string goes through
:func:`string`, which escapes all that TOML forbids raw in a basic string, so any text written here
reads back identically with ``tomllib``.
"""

from __future__ import annotations

import datetime as _datetime
import re
from collections.abc import Iterable

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def string(value: str) -> str:
    """A TOML basic string: quotes, backslash and control characters (incl. DEL) escaped."""
    parts = ['"']
    for char in value:
        if char in _SHORT_ESCAPES:
            parts.append(_SHORT_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            parts.append(f"\\u{ord(char):04x}")
        elif 0xD800 <= ord(char) <= 0xDFFF:
            raise ValueError("a lone surrogate cannot be written to TOML")
        else:
            parts.append(char)
    parts.append('"')
    return "".join(parts)


def integer(value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"not an integer: {value!r}")
    return str(value)


def string_array(values: Iterable[str]) -> str:
    return "[" + ", ".join(string(value) for value in values) + "]"


def utc_datetime(unix_seconds: int) -> str:
    """An offset datetime in UTC with whole seconds, e.g. ``2026-11-25T18:00:00Z``."""
    moment = _datetime.datetime.fromtimestamp(unix_seconds, tz=_datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def assignment(key: str, rendered_value: str) -> str:
    """One ``key = value`` line for a bare key and an already rendered value."""
    if not _BARE_KEY.match(key):
        raise ValueError(f"not a bare TOML key: {key!r}")
    return f"{key} = {rendered_value}\n"
