"""Publisher authentication: stores need a JWT (docs/http-api.md, "Publisher authentication").

Off unless the operator gives a key. With one, every ``PUT /v1/blobs`` must carry
``Authorization: Bearer <JWT>`` signed with HS256 (a shared secret) or EdDSA (an Ed25519 key
whose public half the gateway holds); PyJWT checks the signature and the times. On top of it:

- ``exp`` is required, and at most ``max_lifetime`` seconds away (and after ``iat`` if given):
  no token is good for ever;
- ``jti`` is required and **single use**: a token that stored a blob is refused afterwards
  (``TOKEN_REPLAYED``) until it expires; one in use by a store in flight is refused too; a
  store that fails gives its token back, so the client may retry with it;
- the Walrus claims bound the store: ``epochs`` (exactly) and ``max_epochs``, ``size``
  (exactly) and ``max_size`` (bytes of the body).

Reads never need a token.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from walrus_p2p.api._errors import ApiError
from walrus_p2p.errors import ConfigError

ALGORITHMS = ("HS256", "EdDSA")
DEFAULT_MAX_LIFETIME_SECONDS = 3600
DEFAULT_MAX_TOKENS_REMEMBERED = 100_000
"""Used token ids kept until their tokens expire: 100,000 ids of at most 64 characters, about
20 MiB. A full memory refuses new tokens (429) rather than forgetting one: a forgotten id could
be replayed."""
MAX_JTI_LENGTH = 64
LEEWAY_SECONDS = 5
"""Clock skew allowed between the token's issuer and the gateway."""


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """The gateway's publisher authentication: ``algorithm`` and its verification ``key``
    (the HS256 secret, or an Ed25519 public key in PEM)."""

    algorithm: str
    key: bytes
    max_lifetime_seconds: int = DEFAULT_MAX_LIFETIME_SECONDS
    max_tokens_remembered: int = DEFAULT_MAX_TOKENS_REMEMBERED

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"JWT algorithm must be one of {', '.join(ALGORITHMS)}")
        if self.algorithm == "HS256" and len(self.key) < 32:
            raise ConfigError("an HS256 secret needs at least 32 bytes")
        if self.algorithm == "EdDSA":
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            try:
                public = load_pem_public_key(self.key)
            except ValueError as error:
                raise ConfigError(f"the EdDSA key is not a PEM public key: {error}") from error
            if not isinstance(public, Ed25519PublicKey):
                raise ConfigError("the EdDSA key is not an Ed25519 public key")
        if self.max_lifetime_seconds < 1:
            raise ConfigError("the JWT maximum lifetime must be at least 1 second")
        if self.max_tokens_remembered < 1:
            raise ConfigError("the number of remembered token ids must be at least 1")

    @classmethod
    def from_file(cls, algorithm: str, path: Path, **options: int) -> AuthPolicy:
        try:
            key = path.read_bytes()
        except OSError as error:
            raise ConfigError(f"{path}: cannot read the JWT key ({error.strerror})") from error
        if algorithm == "HS256":
            key = key.strip()
        return cls(algorithm, key, **options)


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows, and its id (to mark used or give back)."""

    jti: str
    expires: float
    epochs: int | None
    max_epochs: int | None
    size: int | None
    max_size: int | None

    def check_epochs(self, epochs: int) -> None:
        if self.epochs is not None and epochs != self.epochs:
            raise _forbidden(f"the token allows exactly {self.epochs} epochs, not {epochs}")
        if self.max_epochs is not None and epochs > self.max_epochs:
            raise _forbidden(f"the token allows at most {self.max_epochs} epochs, not {epochs}")

    def check_size(self, size: int) -> None:
        if self.size is not None and size != self.size:
            raise _forbidden(f"the token allows a body of exactly {self.size} bytes, not {size}")
        if self.max_size is not None and size > self.max_size:
            raise _forbidden(f"the token allows at most {self.max_size} bytes, not {size}")


@dataclass(slots=True)
class Authenticator:
    """Verifies tokens and keeps the ids of used and in-flight ones until they expire."""

    policy: AuthPolicy
    _used: dict[str, float] = field(default_factory=dict)
    _expiries: list[tuple[float, str]] = field(default_factory=list)
    _in_flight: set[str] = field(default_factory=set)

    def admit(self, authorization: str | None, now: float | None = None) -> Grant:
        """The grant of a request's ``Authorization`` header, its id now in flight; raises
        ``ApiError`` (401, 403 or 429) otherwise."""
        now = time.time() if now is None else now
        self._forget_expired(now)
        token = _bearer(authorization)
        claims = self._decode(token, now)
        grant = _grant(claims, now, self.policy.max_lifetime_seconds)
        if grant.jti in self._used or grant.jti in self._in_flight:
            raise _unauthorized("TOKEN_REPLAYED", "this token was already used")
        if len(self._used) + len(self._in_flight) >= self.policy.max_tokens_remembered:
            raise ApiError(
                429,
                "TOO_MANY_REQUESTS",
                "too many unexpired tokens are remembered; retry later",
                headers={"Retry-After": "60"},
            )
        self._in_flight.add(grant.jti)
        return grant

    def used(self, grant: Grant) -> None:
        """The store succeeded: the token cannot be used again before it expires."""
        self._in_flight.discard(grant.jti)
        self._used[grant.jti] = grant.expires
        heapq.heappush(self._expiries, (grant.expires, grant.jti))

    def give_back(self, grant: Grant) -> None:
        """The store failed: the token may be used again."""
        self._in_flight.discard(grant.jti)

    @property
    def remembered(self) -> int:
        return len(self._used)

    def _forget_expired(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] + LEEWAY_SECONDS < now:
            _, jti = heapq.heappop(self._expiries)
            self._used.pop(jti, None)

    def _decode(self, token: str, now: float) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.policy.key,
                algorithms=[self.policy.algorithm],
                options={"require": ["exp", "jti"]},
                leeway=LEEWAY_SECONDS,
            )
        except jwt.ExpiredSignatureError as error:
            raise _unauthorized("TOKEN_EXPIRED", "the token has expired") from error
        except jwt.PyJWTError as error:
            raise _unauthorized("TOKEN_INVALID", f"the token is not valid: {error}") from error
        return claims


def _bearer(authorization: str | None) -> str:
    if authorization is None:
        raise _unauthorized("TOKEN_MISSING", "storing needs an Authorization: Bearer token")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("TOKEN_MISSING", "the Authorization header is not a Bearer token")
    return token.strip()


def _grant(claims: dict[str, Any], now: float, max_lifetime: int) -> Grant:
    jti = claims["jti"]
    if not isinstance(jti, str) or not 1 <= len(jti) <= MAX_JTI_LENGTH:
        raise _unauthorized("TOKEN_INVALID", f"jti must be text of 1..{MAX_JTI_LENGTH} characters")
    expires = claims["exp"]
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        raise _unauthorized("TOKEN_INVALID", "exp must be a number")
    if expires - now > max_lifetime + LEEWAY_SECONDS:
        raise _unauthorized(
            "TOKEN_INVALID", f"the token lives longer than this gateway allows ({max_lifetime} s)"
        )
    issued = claims.get("iat")
    if isinstance(issued, int | float) and expires - issued > max_lifetime:
        raise _unauthorized(
            "TOKEN_INVALID", f"the token lives longer than this gateway allows ({max_lifetime} s)"
        )
    limits = {}
    for name in ("epochs", "max_epochs", "size", "max_size"):
        value = claims.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            raise _unauthorized("TOKEN_INVALID", f"claim {name} must be a non-negative integer")
        limits[name] = value
    return Grant(jti=jti, expires=float(expires), **limits)


def _unauthorized(reason: str, message: str) -> ApiError:
    # The body was not read: the connection cannot carry another request.
    return ApiError(
        401, reason, message, headers={"WWW-Authenticate": "Bearer", "Connection": "close"}
    )


def _forbidden(message: str) -> ApiError:
    return ApiError(403, "TOKEN_LIMIT_EXCEEDED", message)
