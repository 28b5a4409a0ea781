"""How long a blob is stored, as ``store`` takes it: ``--epochs N|max``, ``--end-epoch E`` or
``--earliest-expiry-time TIME``, and the warning for a blob that expires soon (docs/cli.md,
"Lifetimes").

A blob stored in epoch ``c`` for ``N`` epochs is stored in epochs ``c .. c+N-1`` and expires
when epoch ``c+N`` (its *end epoch*) begins. Epochs begin on the genesis schedule
(``Genesis.epoch_start``: genesis time + epoch x duration), which is what turns a time into an
end epoch and an end epoch into a time.
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from walrus_p2p.cli._common import UsageError, integer

if TYPE_CHECKING:
    from walrus_p2p.core.genesis import Genesis

MAX = "max"
DEFAULT_EXPIRY_WARNING_EPOCHS = 1
"""``store`` warns when the blob's end epoch is at most this many epochs after the current one:
by default, when it expires at the end of the current epoch or of the next."""


def epochs_value(text: str) -> int | str:
    """``--epochs``: a positive integer, or ``max`` (the network's longest lifetime)."""
    if text.strip().lower() == MAX:
        return MAX
    return integer(text, 1, "a number of epochs (or 'max')")


def expiry_time(text: str) -> dt.datetime:
    """``--earliest-expiry-time``: an RFC 3339 time with its offset (``2027-01-31T12:00:00Z``)."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"not an RFC 3339 time: {text!r} (e.g. 2027-01-31T12:00:00Z)"
        ) from error
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no time zone offset; add Z for UTC or e.g. +01:00"
        )
    return moment


@dataclass(frozen=True, slots=True)
class Lifetime:
    """What a store asks for: ``epochs`` from ``current``, ending at ``end_epoch``."""

    current: int
    epochs: int

    @property
    def end_epoch(self) -> int:
        return self.current + self.epochs


def store_lifetime(
    genesis: Genesis,
    current: int,
    *,
    epochs: int | str | None = None,
    end_epoch: int | None = None,
    earliest_expiry: dt.datetime | None = None,
) -> Lifetime:
    """The lifetime of a store from exactly one of the three ways of asking; ``UsageError``
    (naming the flag and what is possible) for a lifetime the network cannot give."""
    given = [value is not None for value in (epochs, end_epoch, earliest_expiry)]
    if sum(given) != 1:
        raise UsageError("give exactly one of --epochs, --end-epoch, --earliest-expiry-time")
    longest = genesis.limits.max_epochs_ahead
    if epochs == MAX:
        return Lifetime(current, longest)
    if isinstance(epochs, int):
        if not 1 <= epochs <= longest:
            raise UsageError(f"--epochs must be between 1 and {longest} (or 'max')")
        return Lifetime(current, epochs)
    if end_epoch is not None:
        if not current < end_epoch <= current + longest:
            raise UsageError(
                f"--end-epoch must be after the current epoch {current} and at most "
                f"{current + longest}"
            )
        return Lifetime(current, end_epoch - current)
    assert earliest_expiry is not None
    wanted = earliest_expiry.timestamp()
    # The first epoch that begins at or after the wanted time (ceiling division).
    since_genesis = wanted - genesis.genesis_time
    first = max(0, -int(-since_genesis // genesis.epoch_duration_seconds))
    end = max(first, current + 1)
    if end > current + longest:
        latest = epoch_time(genesis, current + longest)
        raise UsageError(
            f"--earliest-expiry-time {earliest_expiry.isoformat()} is beyond the longest "
            f"lifetime ({longest} epochs): the latest expiry possible now is {latest}"
        )
    return Lifetime(current, end - current)


def lifetime_of(arguments: argparse.Namespace, genesis: Genesis, current: int) -> Lifetime:
    """:func:`store_lifetime` from the options :func:`add_lifetime_options` added."""
    return store_lifetime(
        genesis,
        current,
        epochs=arguments.epochs,
        end_epoch=arguments.end_epoch,
        earliest_expiry=arguments.earliest_expiry_time,
    )


def epoch_time(genesis: Genesis, epoch: int) -> str:
    """When ``epoch`` begins on the schedule, as RFC 3339 UTC."""
    moment = dt.datetime.fromtimestamp(genesis.epoch_start(epoch), tz=dt.UTC)
    return moment.isoformat().replace("+00:00", "Z")


def expiry_warning(genesis: Genesis, current: int, end_epoch: int, horizon: int) -> str | None:
    """A warning for a blob whose end epoch is within ``horizon`` epochs of ``current``."""
    if horizon < 0 or end_epoch - current > horizon:
        return None
    return (
        f"expires soon: stored until epoch {end_epoch}, which begins at about "
        f"{epoch_time(genesis, end_epoch)} (current epoch {current}); "
        f"`walrus-peer extend BLOB_ID --epochs N` keeps it longer"
    )


def epoch_number(text: str) -> int:
    return integer(text, 0, "an epoch")


def add_lifetime_options(command: argparse.ArgumentParser) -> None:
    """``--epochs N|max | --end-epoch E | --earliest-expiry-time TIME`` (exactly one) and
    ``--expiry-warning-epochs K``: the options of ``store`` and ``store-quilt``."""
    lifetime = command.add_mutually_exclusive_group(required=True)
    lifetime.add_argument(
        "--epochs",
        type=epochs_value,
        metavar="N|max",
        help="store for N epochs from the current one; max: the longest the network allows",
    )
    lifetime.add_argument(
        "--end-epoch",
        type=epoch_number,
        metavar="E",
        help="store until epoch E begins",
    )
    lifetime.add_argument(
        "--earliest-expiry-time",
        type=expiry_time,
        metavar="TIME",
        help="store at least until TIME (RFC 3339, e.g. 2027-01-31T12:00:00Z): until the first "
        "epoch that begins at or after it",
    )
    command.add_argument(
        "--expiry-warning-epochs",
        type=int,
        default=DEFAULT_EXPIRY_WARNING_EPOCHS,
        metavar="K",
        help="warn when the blob expires within K epochs of the current one (default "
        f"{DEFAULT_EXPIRY_WARNING_EPOCHS}; -1: never)",
    )
