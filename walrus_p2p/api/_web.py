"""What makes the gateway's reads web-ready: content types, CORS, a blocklist and a size policy.

Described in docs/http-api.md, "Web-ready reads". The content type of a blob is chosen in this
order: a single concrete media type the request's ``Accept`` names (a program that knows what
it stored), else the type sniffed from the blob's first bytes by ``filetype`` (magic numbers of
images, audio, video, fonts, archives and PDF), kept only if it is on :data:`SNIFFABLE` (types a
browser never runs as a page or script), else ``text/plain; charset=utf-8`` for bytes that are
printable UTF-8, else ``application/octet-stream``. Every blob response also carries
``X-Content-Type-Options: nosniff`` so that a browser does not guess further (a blob that looks
like HTML is never rendered as a page of the gateway's origin).

A blob's owner may name its content type, and a few other response headers, in the blob's
attributes (docs/attributes.md): the headers on :attr:`GatewayPolicy.attribute_headers` are then
sent, and an attribute's content type comes before everything above. A type that is not on
:data:`SNIFFABLE` (HTML, SVG, scripts: anything a browser might run) chosen that way is sent
with ``Content-Security-Policy: sandbox``, so the page runs in an opaque origin without scripts
and still cannot act as the gateway's origin.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import filetype

from walrus_p2p.api._auth import Authenticator, AuthPolicy
from walrus_p2p.errors import ConfigError, WireError
from walrus_p2p.types import BlobId, blob_id_from_text

logger = logging.getLogger(__name__)

OCTET_STREAM = "application/octet-stream"
TEXT_PLAIN = "text/plain; charset=utf-8"
SNIFF_BYTES = 2048
"""Bytes of a blob the sniffer looks at: every magic number ``filetype`` knows lies in the first
262 bytes; the rest lets the text check see more than a line."""

SNIFFABLE = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/heic",
        "image/bmp",
        "image/tiff",
        "image/x-icon",
        "audio/mpeg",
        "audio/ogg",
        "audio/x-wav",
        "audio/x-flac",
        "audio/mp4",
        "audio/aac",
        "video/mp4",
        "video/webm",
        "video/quicktime",
        "video/x-matroska",
        "video/mpeg",
        "application/pdf",
        "application/zip",
        "application/gzip",
        "application/x-tar",
        "application/x-bzip2",
        "application/x-xz",
        "application/zstd",
        "application/x-7z-compressed",
        "application/wasm",
        "application/x-brotli",
        "application/x-lz4",
        "application/epub+zip",
        "application/font-woff",
        "application/font-sfnt",
        "image/apng",
        "audio/midi",
        "video/x-m4v",
        "video/3gpp",
        "video/x-msvideo",
    }
)
"""Sniffed types the gateway states: none of them is run by a browser as a document or script.
A sniffed type not listed here is served as ``application/octet-stream``."""

CONTENT_TYPE_CACHE_ENTRIES = 4096
"""Blob ids whose sniffed type is remembered (a blob id commits to the content, so the type
never changes); a HEAD or a range read of a remembered blob needs no read of its first bytes."""

DEFAULT_CORS_ORIGINS = ("*",)
"""Any web page may read blobs and store them (as on public Walrus aggregators): a blob is
public, and the gateway has no cookies or sessions a page could abuse."""
CORS_EXPOSED_HEADERS = ("Content-Range", "Content-Length", "Accept-Ranges", "ETag", "Retry-After")
CORS_ALLOWED_HEADERS = ("Range", "If-Range", "If-None-Match", "Content-Type", "Authorization")
CORS_MAX_AGE_SECONDS = 86400
DEFAULT_ATTRIBUTE_HEADERS = (
    "content-type",
    "content-disposition",
    "content-encoding",
    "content-language",
    "link",
)
"""Blob attributes a read returns as response headers, unless the operator says otherwise."""
RESERVED_HEADERS = frozenset(
    {
        "accept-ranges",
        "cache-control",
        "connection",
        "content-length",
        "content-range",
        "content-security-policy",
        "etag",
        "keep-alive",
        "set-cookie",
        "transfer-encoding",
        "x-content-type-options",
    }
)
"""Headers the gateway sets itself (or that would change how HTTP itself works): an attribute
never overrides them, whatever the operator allows."""
SANDBOX = "sandbox"
"""The ``Content-Security-Policy`` of a blob whose owner chose an active content type."""
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")
BLOCKLIST_CHECK_SECONDS = 5.0
"""How often a read looks at the blocklist file's modification time (a changed file is read
again without a restart)."""

# RFC 9110 token characters, for type/subtype.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"({_TOKEN})/({_TOKEN})")
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")


@dataclass(frozen=True, slots=True)
class GatewayPolicy:
    """The operator's choices about serving blobs to the web; bad values raise ``ConfigError``.

    ``cors_origins``: the origins whose pages may call the gateway (``("*",)``: any; empty: no
    CORS headers at all). ``blocklist``: a file of blob ids (one per line, ``#`` comments) that
    reads refuse with 451. ``max_read_size``: blobs larger than this are refused with 403 (None:
    no such limit; the byte budget still applies).
    """

    cors_origins: tuple[str, ...] = DEFAULT_CORS_ORIGINS
    blocklist: Path | None = None
    max_read_size: int | None = None
    auth: AuthPolicy | None = None
    """Publisher authentication (JWT) for stores; None: stores are open (docs/http-api.md)."""
    attribute_headers: tuple[str, ...] = DEFAULT_ATTRIBUTE_HEADERS
    """Blob attributes (lower-case names) returned as response headers of reads."""

    def __post_init__(self) -> None:
        for origin in self.cors_origins:
            if origin != "*" and _ORIGIN.fullmatch(origin) is None:
                raise ConfigError(
                    f"CORS origin {origin!r} is not '*' or scheme://host[:port] (http or https)"
                )
        if "*" in self.cors_origins and len(self.cors_origins) > 1:
            raise ConfigError("CORS origin '*' cannot be listed with other origins")
        if self.max_read_size is not None and self.max_read_size < 0:
            raise ConfigError(f"max_read_size must be >= 0, got {self.max_read_size}")
        if self.blocklist is not None:
            parse_blocklist(self.blocklist)  # a bad file stops the start, with its line
        for name in self.attribute_headers:
            if _HEADER_NAME.fullmatch(name) is None:
                raise ConfigError(f"{name!r} is not a lower-case HTTP header name")
            if name in RESERVED_HEADERS or name.startswith("access-control-"):
                raise ConfigError(f"header {name!r} is set by the gateway; attributes cannot")


def attribute_headers_from_text(text: str) -> tuple[str, ...]:
    """``--allowed-headers``: names separated by commas (any case), or ``none``."""
    if text.strip().lower() == "none":
        return ()
    return tuple(name.strip().lower() for name in text.split(",") if name.strip())


def attribute_headers(
    attributes: Sequence[tuple[str, str]], allowed: Sequence[str]
) -> dict[str, str]:
    """The response headers a blob's attributes give: keys on ``allowed`` (compared without
    case), values of printable ASCII only (a header is Latin-1 on the wire; others are left
    out rather than mangled). Keys are lower-case."""
    headers: dict[str, str] = {}
    for key, value in attributes:
        name = key.lower()
        if name in allowed and name not in headers and _HEADER_VALUE.fullmatch(value):
            headers[name] = value.strip()
    return headers


def attribute_content_type(value: str) -> tuple[str, bool]:
    """An attribute's content type, and whether it needs the sandbox (not a passive type)."""
    media = value.split(";", 1)[0].strip().lower()
    passive = media in SNIFFABLE or media == "text/plain" or media == OCTET_STREAM
    return value, not passive


def parse_blocklist(path: Path) -> frozenset[BlobId]:
    """The blob ids of a blocklist file; ``ConfigError`` names the first bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"blocklist {path}: cannot be read: {error}") from error
    ids = set()
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            ids.add(blob_id_from_text(entry))
        except WireError as error:
            raise ConfigError(
                f"blocklist {path} line {number}: {entry[:60]!r} is not a blob id ({error})"
            ) from error
    return frozenset(ids)


class Blocklist:
    """The blob ids reads refuse, read again when the file changes.

    A file that becomes unreadable or malformed while the gateway runs keeps the previous list
    (logged as a warning): an operator's typo never unblocks everything at once.
    """

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._ids: frozenset[BlobId] = frozenset()
        self._mtime: int | None = None
        self._checked = float("-inf")
        if path is not None:
            self._ids = parse_blocklist(path)
            self._mtime = _mtime(path)
            self._checked = time.monotonic()

    def __contains__(self, blob_id: BlobId) -> bool:
        if self._path is None:
            return False
        now = time.monotonic()
        if now - self._checked >= BLOCKLIST_CHECK_SECONDS:
            self._checked = now
            self._reload(self._path)
        return blob_id in self._ids

    def _reload(self, path: Path) -> None:
        mtime = _mtime(path)
        if mtime == self._mtime:
            return
        try:
            ids = parse_blocklist(path)
        except ConfigError as error:
            logger.warning("blocklist not reloaded, the previous one stays: %s", error)
            return
        self._mtime = mtime
        logger.info("blocklist reloaded path=%s blobs=%d was=%d", path, len(ids), len(self._ids))
        self._ids = ids


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def requested_type(accept: str | None) -> str | None:
    """The media type an ``Accept`` header asks for, if it names exactly one concrete type.

    ``image/png`` or ``application/json; q=0.9`` name one; a list, a wildcard (browsers always
    send some) or anything malformed names none, and the type is sniffed instead.
    """
    if accept is None or "," in accept:
        return None
    media = accept.split(";", 1)[0].strip()
    match = _MEDIA_TYPE.fullmatch(media)
    if match is None or "*" in media:
        return None
    return media.lower()


def sniff(head: bytes | memoryview, *, complete: bool) -> str:
    """The content type stated for a blob whose first bytes are ``head`` (see the module doc;
    the gateway passes the first ``min(size, SNIFF_BYTES)`` bytes, so one blob always gets one
    type). ``complete``: ``head`` is the whole blob."""
    head = bytes(head[:SNIFF_BYTES])
    if not head:
        return OCTET_STREAM
    guessed = filetype.guess_mime(head)
    if guessed is not None:
        return guessed if guessed in SNIFFABLE else OCTET_STREAM
    return TEXT_PLAIN if _printable_utf8(head, complete=complete) else OCTET_STREAM


def _printable_utf8(head: bytes, *, complete: bool) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        # A multi-byte character cut at the end of the sample is still text.
        if complete or error.start < len(head) - 3:
            return False
        text = head[: error.start].decode("utf-8")
    return all(char.isprintable() or char in "\t\n\r\f" for char in text)


class ContentTypes:
    """Sniffed content types by blob id, the newest :data:`CONTENT_TYPE_CACHE_ENTRIES`."""

    def __init__(self, entries: int = CONTENT_TYPE_CACHE_ENTRIES) -> None:
        self._entries = entries
        self._types: OrderedDict[BlobId, str] = OrderedDict()

    def get(self, blob_id: BlobId) -> str | None:
        found = self._types.get(blob_id)
        if found is not None:
            self._types.move_to_end(blob_id)
        return found

    def put(self, blob_id: BlobId, content_type: str) -> None:
        self._types[blob_id] = content_type
        self._types.move_to_end(blob_id)
        while len(self._types) > self._entries:
            self._types.popitem(last=False)


def cors_origins_from_text(text: str) -> tuple[str, ...]:
    """``--cors-origins``: ``*``, ``none``, or origins separated by commas."""
    value = text.strip()
    if value.lower() == "none":
        return ()
    return tuple(origin.strip().rstrip("/") for origin in value.split(",") if origin.strip())


@dataclass(slots=True)
class WebState:
    """A running gateway's share of the policy: the blocklist and the sniffed types."""

    policy: GatewayPolicy
    blocklist: Blocklist = field(init=False)
    content_types: ContentTypes = field(default_factory=ContentTypes)
    authenticator: Authenticator | None = field(init=False)

    def __post_init__(self) -> None:
        self.blocklist = Blocklist(self.policy.blocklist)
        auth = self.policy.auth
        self.authenticator = None if auth is None else Authenticator(auth)


def cors_settings(origins: Sequence[str], attribute_names: Sequence[str] = ()) -> dict[str, object]:
    """Keyword arguments of Starlette's ``CORSMiddleware`` for ``origins``; the headers blob
    attributes may give (``attribute_names``) are exposed to scripts too."""
    return {
        "allow_origins": list(origins),
        "allow_methods": ["GET", "HEAD", "PUT"],
        "allow_headers": list(CORS_ALLOWED_HEADERS),
        "expose_headers": [*CORS_EXPOSED_HEADERS, *attribute_names],
        "max_age": CORS_MAX_AGE_SECONDS,
    }
