"""The one exception tree of walrus-p2p.

Every error raised on purpose by the package derives from :class:`WalrusError` and carries a stable
``reason`` code (UPPER_SNAKE) that is what goes on the wire and into ``--json`` output::

    WalrusError                      INTERNAL
    ├── ConfigError                  CONFIG_INVALID      (a key, config or genesis file)
    ├── WireError                    WIRE_MALFORMED      (outside bytes malformed or too big)
    ├── EncodingError                ENCODING_INVALID    (bad parameters, too few slivers)
    ├── VerificationError            VERIFICATION_FAILED (hash, proof or signature mismatch)
    │   └── InconsistentBlobError    BLOB_INCONSISTENT   (the writer encoded it wrongly)
    ├── StorageError                 STORAGE_ERROR
    │   ├── StorageFullError         STORAGE_FULL
    │   └── NotFoundError            NOT_FOUND
    ├── NetworkError                 NETWORK_ERROR       (libp2p / trio errors, translated in net/)
    │   ├── PeerUnreachableError     PEER_UNREACHABLE
    │   ├── RequestTimeoutError      TIMEOUT
    │   └── RemoteError              (the reason code the remote peer sent)
    ├── QuorumError                  NOT_ENOUGH_PEERS    (quorum weight unreachable)
    └── OrderRefusedError            ORDER_* and the like (an economy order or settlement refused;
        │                            the codes are in :data:`ORDER_REFUSAL_REASONS`)
        └── InsufficientFundsError   ORDER_OVERDRAWN     (a payment the balance does not cover)

Errors carry their data as attributes; ``str(error)`` is a one-line message for a person.
"""

from __future__ import annotations


class WalrusError(Exception):
    """Root of every error walrus-p2p raises on purpose."""

    reason: str = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class ConfigError(WalrusError):
    """A configuration, key or genesis file is missing or invalid; ``path`` names it."""

    reason = "CONFIG_INVALID"

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class WireError(WalrusError):
    """Bytes received from outside are malformed, oversized or violate the schema."""

    reason = "WIRE_MALFORMED"


class EncodingError(WalrusError):
    """Encoding parameters are invalid, or too few slivers/symbols were given to decode."""

    reason = "ENCODING_INVALID"


class VerificationError(WalrusError):
    """A hash, Merkle proof, signature or quorum check failed."""

    reason = "VERIFICATION_FAILED"


class InconsistentBlobError(VerificationError):
    """The blob was encoded inconsistently by its writer; reads must report it as invalid."""

    reason = "BLOB_INCONSISTENT"


class StorageError(WalrusError):
    """The durable store failed."""

    reason = "STORAGE_ERROR"


class StorageFullError(StorageError):
    """Storing would exceed the configured capacity."""

    reason = "STORAGE_FULL"


class NotFoundError(StorageError):
    """The requested item is not stored here."""

    reason = "NOT_FOUND"


class NetworkError(WalrusError):
    """A network operation failed (translated from libp2p or trio errors)."""

    reason = "NETWORK_ERROR"


class PeerUnreachableError(NetworkError):
    """A peer could not be dialled or its connection dropped."""

    reason = "PEER_UNREACHABLE"


class RequestTimeoutError(NetworkError):
    """A request did not complete within its deadline."""

    reason = "TIMEOUT"


class RemoteError(NetworkError):
    """The remote peer answered with an error reply; ``reason`` is the code it sent."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, reason=reason)


class QuorumError(WalrusError):
    """Not enough shard weight answered to reach the quorum an operation needs."""

    reason = "NOT_ENOUGH_PEERS"


ORDER_REFUSAL_REASONS = frozenset(
    {
        "ORDER_MALFORMED",  # the order cannot be valid in any state (bad range, zero amount, ...)
        "ORDER_FORGED",  # the owner's signature does not verify
        "ORDER_WRONG_NETWORK",  # signed for another network
        "ORDER_WRONG_EPOCH",  # names neither the signer's current epoch nor the one before
        "HANDOVER_PENDING",  # the member still collects the previous committee's locks: retry
        "HANDOVER_NOT_READY",  # asked for its locks of an epoch it has not left yet: retry
        "ORDER_REPLAYED",  # its sequence number was already used by a certified order
        "ORDER_OUT_OF_SEQUENCE",  # an earlier sequence number of the account is not known here
        "ORDER_CONFLICT",  # another order was signed or certified for (account, sequence)
        "ORDER_OVERDRAWN",  # the balance does not cover it
        "ORDER_PRICE_MISMATCH",  # the amount is not what the prices in force ask
        "ORDER_LIFETIME_TOO_LONG",  # ends further ahead than the maximum lifetime
        "RESOURCE_UNKNOWN",  # no such storage resource owned by the account
        "RESOURCE_UNUSABLE",  # attached, not attached, too small or expired for this use
        "RESOURCE_IN_USE",  # a release while the owner's registration of its blob is not deleted
        "STAKE_UNKNOWN",  # no such stake owned by the account
        "STAKE_NOT_WITHDRAWABLE",  # withdrawal already requested, or not complete yet
        "CERTIFICATE_INVALID",  # approvals do not verify or do not hold a quorum
        "SETTLEMENT_INVALID",  # an epoch settlement contradicts the ledger
    }
)
"""Stable reason codes of :class:`OrderRefusedError` (docs/economics.md, "Refusals")."""


class OrderRefusedError(WalrusError):
    """An economy order, certificate or settlement was refused; ``reason`` says why and is one of
    :data:`ORDER_REFUSAL_REASONS`. Whatever raised it changed nothing."""

    reason = "ORDER_MALFORMED"

    def __init__(self, reason: str, message: str) -> None:
        if reason not in ORDER_REFUSAL_REASONS:
            raise ValueError(f"unknown order refusal reason {reason!r}")
        super().__init__(message, reason=reason)


class InsufficientFundsError(OrderRefusedError):
    """A payment (storage, a write fee) that the account's balance does not cover: ``needed``
    is what it costs and ``balance`` what the committee reported, both in FROST."""

    def __init__(self, message: str, *, needed: int, balance: int) -> None:
        super().__init__("ORDER_OVERDRAWN", message)
        self.needed = needed
        self.balance = balance
