"""The optional C helper ``walrus_p2p/core/_native.c``, loaded with ctypes.

The install compiles it where a C compiler is found (``setup.py``, an optional extension); it is
not a Python module, only a shared library of plain C functions, like the ISA-L library that
:mod:`walrus_p2p.core.isal` loads. Each user binds and checks the function it needs against the
pure-Python path when it loads (:mod:`walrus_p2p.core.merkle`: the leaf hasher;
:mod:`walrus_p2p.core.isal`: the block loop), and falls back to that path when the helper is
missing or disagrees. ``WALRUS_P2P_NATIVE=0`` in the environment turns the helper off, to compare
or to rule it out.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os


@functools.cache
def library() -> ctypes.CDLL | None:
    """The helper library, or None (not built, not loadable, or turned off)."""
    if os.environ.get("WALRUS_P2P_NATIVE", "1") == "0":
        return None
    try:
        spec = importlib.util.find_spec("walrus_p2p.core._native")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    try:
        # CDLL, not PyDLL: every call releases the GIL, so the codec threads run in parallel.
        return ctypes.CDLL(spec.origin)
    except OSError:
        return None
