"""Keep trio exception groups from leaking out of our context managers.

py-libp2p's services run in nurseries, and trio (strict exception groups) wraps anything that
crosses a nursery in an ``ExceptionGroup``. An error raised by *the caller's own code* inside
``async with open_host(...)`` would come back wrapped two or three levels deep. Callers are
promised plain :class:`WalrusError` s (docs/design.md §12, "Errors"), so each ``open_*`` records the
exception thrown into it at its ``yield`` and, if the group that comes out holds nothing else
(besides cancellations), re-raises that exception as it was.
"""

from __future__ import annotations

import trio


def leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        found: list[BaseException] = []
        for inner in error.exceptions:
            found.extend(leaves(inner))
        return found
    return [error]


def sole_body_error(group: BaseException, body: BaseException | None) -> BaseException | None:
    """``body`` if ``group`` holds only it and cancellations; otherwise None."""
    if body is None:
        return None
    rest = [leaf for leaf in leaves(group) if not isinstance(leaf, trio.Cancelled)]
    if rest and all(leaf is body for leaf in rest):
        return body
    return None


def is_nursery_closed(error: BaseException) -> bool:
    """True if ``error`` is only "Nursery is closed to new arrivals" (and cancellations)."""
    rest = [leaf for leaf in leaves(error) if not isinstance(leaf, trio.Cancelled)]
    return bool(rest) and all(
        isinstance(leaf, RuntimeError) and "Nursery is closed to new arrivals" in str(leaf)
        for leaf in rest
    )
