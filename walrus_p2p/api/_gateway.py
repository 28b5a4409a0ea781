"""The HTTP gateway: the Walrus publisher (store) and aggregator (read) API over a `BlobService`.

The gateway owns HTTP concerns only: parsing and validating requests, the body size limit, load
shedding, ranges, caching headers and the error mapping. Storing, reading and verifying blobs is
the service's job (a light peer in production, an in-memory fake in tests).

Every service call happens before a response starts, so a failure always becomes a proper JSON
error; only the sending of an already-read blob is streamed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import trio
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, request_response

from walrus_p2p.api._admission import (
    Admission,
    AdmissionControl,
    ByteBudget,
    Refusals,
    RequestSlots,
    client_address,
    reservation_of,
)
from walrus_p2p.api._auth import Grant
from walrus_p2p.api._errors import (
    ApiError,
    api_error_response,
    blob_inconsistent,
    blob_not_found,
    http_exception_handler,
    internal_exception_handler,
    unexpected_error_response,
    walrus_error_to_api,
)
from walrus_p2p.api._openapi import openapi_document
from walrus_p2p.api._quilts import parse_quilt_form, quilt_error
from walrus_p2p.api._ranges import ByteRange, UnsatisfiableRangeError, parse_range_header
from walrus_p2p.api._web import (
    SANDBOX,
    SNIFF_BYTES,
    GatewayPolicy,
    WebState,
    attribute_content_type,
    attribute_headers,
    cors_settings,
    requested_type,
    sniff,
)
from walrus_p2p.client.quilt import (
    INDEX_READ_BYTES,
    PatchEntry,
    QuiltError,
    build_quilt,
    decode_patch_id,
    patch_ids_json,
    read_index,
    read_patch,
)
from walrus_p2p.client.results import AlreadyCertified, BlobService, StoreOutcome
from walrus_p2p.errors import ConfigError, WalrusError, WireError
from walrus_p2p.net.http import (
    DEFAULT_HEADER_TIMEOUT_SECONDS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_SEND_TIMEOUT_SECONDS,
    ConnectionStats,
    HttpLimits,
    serve_http,
    warn_if_few_file_descriptors,
)
from walrus_p2p.types import BlobId, blob_id_from_text, blob_id_to_text, short_id

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 10 * 1024 * 1024
"""10 MiB, the request limit of public Walrus publishers."""
DEFAULT_MAX_CONCURRENT_WRITES = 8
"""Stores into the network at once: each encodes its blob and talks to the whole committee."""
DEFAULT_MAX_CONCURRENT_UPLOADS = 256
"""Request bodies being received at once. A body holds only the bytes that have arrived (taken
from the byte budget as they do), so many slow uploads cost little; the write slot is taken only
once a body is complete, so they cannot hold the stores hostage."""
DEFAULT_MAX_CONCURRENT_READS = 32
DEFAULT_MAX_CONCURRENT_WRITES_PER_ADDRESS = 2
"""Uploads (body and store) from one address: a quarter of the gateway's writes, so one address
cannot take them all, and one uploader rarely gains from more than two stores at once (each is
bound by the network, not by the gateway)."""
DEFAULT_MAX_CONCURRENT_READS_PER_ADDRESS = 8
"""A quarter of the gateway's reads, and more than the 6 connections a browser opens per host."""
GUARANTEED_READS_PER_ADDRESS = 1
"""An address with no read in flight is admitted even when every read slot is taken (slow
readers from many addresses must not lock a newcomer out: docs/http-api.md, "Limits")."""
DEFAULT_MAX_BYTES_IN_FLIGHT = 1 << 30
"""1 GiB of blob bytes held by requests in flight: the largest blob a default network accepts
(reads hold a whole blob), so every blob can be served, one such at a time."""
DEFAULT_RETRY_AFTER_SECONDS = 1
DEFAULT_BODY_TIMEOUT_SECONDS = 120.0
DEFAULT_MIN_BODY_RATE = 8 * 1024
"""Bytes per second a body must average after the grace period: 64 kbit/s, below any uplink a
real uploader has, far above the drip of a client holding a write slot on purpose."""
BODY_GRACE_SECONDS = 10.0
"""A body's first seconds are not paced (connection warm-up, a client reading its file)."""

STREAM_CHUNK_SIZE = 64 * 1024
"""Blob bodies go out in pieces of this size, so one send never carries a whole large blob."""

IMMUTABLE_CACHE_CONTROL = "public, max-age=31536000, immutable"

# ASCII digits only (``\d`` would take other scripts' digits), bounded so int() stays cheap.
_UNSIGNED = re.compile(r"[0-9]{1,18}")
_BOOLEANS = {"true": True, "false": False}

Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    """The limits a gateway enforces; bad values raise ``ConfigError`` (they come from flags).

    Each is described, with the reason for its default, in docs/http-api.md, "Limits".
    """

    max_body: int = DEFAULT_MAX_BODY
    max_concurrent_writes: int = DEFAULT_MAX_CONCURRENT_WRITES
    max_concurrent_reads: int = DEFAULT_MAX_CONCURRENT_READS
    max_concurrent_uploads: int = DEFAULT_MAX_CONCURRENT_UPLOADS
    max_concurrent_writes_per_address: int = DEFAULT_MAX_CONCURRENT_WRITES_PER_ADDRESS
    max_concurrent_reads_per_address: int = DEFAULT_MAX_CONCURRENT_READS_PER_ADDRESS
    max_bytes_in_flight: int = DEFAULT_MAX_BYTES_IN_FLIGHT
    retry_after_seconds: int = DEFAULT_RETRY_AFTER_SECONDS
    body_timeout_seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS
    min_body_rate: int = DEFAULT_MIN_BODY_RATE
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    header_timeout_seconds: float = DEFAULT_HEADER_TIMEOUT_SECONDS
    send_timeout_seconds: float = DEFAULT_SEND_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        if self.max_body < 0:
            raise ConfigError(f"max_body must be >= 0, got {self.max_body}")
        for name in (
            "max_concurrent_writes",
            "max_concurrent_reads",
            "max_concurrent_uploads",
            "max_concurrent_writes_per_address",
            "max_concurrent_reads_per_address",
        ):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.max_bytes_in_flight < max(self.max_body, 1):
            # A body the size limit allows could otherwise never be admitted (429 forever).
            raise ConfigError(
                f"max_bytes_in_flight ({self.max_bytes_in_flight}) must be at least max_body "
                f"({self.max_body}) and >= 1"
            )
        if self.retry_after_seconds < 0:
            raise ConfigError(f"retry_after_seconds must be >= 0, got {self.retry_after_seconds}")
        if not self.body_timeout_seconds > 0:
            raise ConfigError(f"body_timeout_seconds must be > 0, got {self.body_timeout_seconds}")
        if self.min_body_rate < 1:
            raise ConfigError(f"min_body_rate must be >= 1, got {self.min_body_rate}")
        self.http_limits()  # validates the connection limits

    def http_limits(self) -> HttpLimits:
        """The connection-level part, enforced by `serve_http`."""
        return HttpLimits(
            max_connections=self.max_connections,
            max_header_bytes=self.max_header_bytes,
            header_timeout_seconds=self.header_timeout_seconds,
            send_timeout_seconds=self.send_timeout_seconds,
        )

    def describe(self) -> str:
        """One log line's worth: every limit as name=value."""
        return " ".join(f"{field.name}={getattr(self, field.name)}" for field in fields(self))


def store_outcome_json(outcome: StoreOutcome) -> dict[str, Any]:
    """The Walrus publisher's JSON for a store: exactly one of newlyCreated / alreadyCertified."""
    if isinstance(outcome, AlreadyCertified):
        return {
            "alreadyCertified": {
                "blobId": blob_id_to_text(outcome.blob_id),
                "endEpoch": outcome.end_epoch,
            }
        }
    return {
        "newlyCreated": {
            "blobObject": {
                "blobId": blob_id_to_text(outcome.blob_id),
                "size": outcome.size,
                "encodingType": outcome.encoding_type,
                "certifiedEpoch": outcome.certified_epoch,
                "storage": {
                    "startEpoch": outcome.start_epoch,
                    "endEpoch": outcome.end_epoch,
                    "storageSize": outcome.storage_size,
                },
                "deletable": outcome.deletable,
            },
            "cost": outcome.cost,
        }
    }


def build_gateway_app(
    service: BlobService,
    limits: GatewayLimits | None = None,
    policy: GatewayPolicy | None = None,
) -> Starlette:
    """The gateway as an ASGI app (run it on trio, e.g. with `serve_gateway`).

    ``policy``: CORS origins, the blocklist and the read size limit (docs/http-api.md,
    "Web-ready reads"); the default allows any origin and blocks nothing.

    The app's ``state.admission`` is its `AdmissionControl` (requests in flight, blob bytes held,
    refusals counted by reason), for tests and benchmarks to look at.
    """
    limits = limits or GatewayLimits()
    control = AdmissionControl(
        reads=RequestSlots(
            "read",
            total=limits.max_concurrent_reads,
            per_address=limits.max_concurrent_reads_per_address,
            guaranteed_per_address=GUARANTEED_READS_PER_ADDRESS,
        ),
        uploads=RequestSlots(
            "upload",
            total=limits.max_concurrent_uploads,
            per_address=limits.max_concurrent_writes_per_address,
        ),
        # Taken once the body is complete; the per-address bound was applied to the upload.
        writes=RequestSlots(
            "write",
            total=limits.max_concurrent_writes,
            per_address=limits.max_concurrent_writes,
        ),
        budget=ByteBudget(limits.max_bytes_in_flight),
        refusals=Refusals(),
        retry_after_seconds=limits.retry_after_seconds,
    )
    policy = policy or GatewayPolicy()
    gateway = _Gateway(service, limits, control, WebState(policy))

    def admitted(handler: Handler, slots: RequestSlots, name: str) -> Admission:
        return Admission(request_response(_guarded(handler, name)), control, slots)

    routes = [
        Route(
            "/v1/blobs",
            admitted(gateway.put_blob, control.uploads, "store_blob"),
            methods=["PUT"],
            name="store_blob",
        ),
        Route(
            "/v1/blobs/{blob_id}",
            admitted(gateway.get_blob, control.reads, "read_blob"),
            methods=["GET"],
            name="read_blob",
        ),
        Route(
            "/v1/blobs/{blob_id}/byte-range",
            admitted(gateway.get_byte_range, control.reads, "read_byte_range"),
            methods=["GET"],
            name="read_byte_range",
        ),
        Route(
            "/v1/quilts",
            admitted(gateway.put_quilt, control.uploads, "store_quilt"),
            methods=["PUT"],
            name="store_quilt",
        ),
        Route(
            "/v1/blobs/by-quilt-patch-id/{patch_id}",
            admitted(gateway.get_patch, control.reads, "read_quilt_patch"),
            methods=["GET"],
            name="read_quilt_patch",
        ),
        Route(
            "/v1/blobs/by-quilt-id/{blob_id}/{identifier:path}",
            admitted(gateway.get_patch_by_identifier, control.reads, "read_quilt_patch_by_name"),
            methods=["GET"],
            name="read_quilt_patch_by_name",
        ),
        Route(
            "/v1/quilts/{blob_id}/patches",
            admitted(gateway.list_patches, control.reads, "list_quilt_patches"),
            methods=["GET"],
            name="list_quilt_patches",
        ),
        Route("/status", _guarded(gateway.status, "status"), methods=["GET"]),
        Route("/v1/api", _guarded(gateway.api, "api"), methods=["GET"]),
    ]
    middleware = (
        [Middleware(CORSMiddleware, **cors_settings(policy.cors_origins, policy.attribute_headers))]  # type: ignore[arg-type]
        if policy.cors_origins
        else []
    )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            HTTPException: http_exception_handler,
            Exception: internal_exception_handler,
        },
    )
    app.state.admission = control
    return app


async def serve_gateway(
    service: BlobService,
    bind: str,
    limits: GatewayLimits | None = None,
    *,
    policy: GatewayPolicy | None = None,
    stats: ConnectionStats | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the gateway on ``bind`` ("host:port", port 0 picks one) until cancelled.

    Use with ``nursery.start``: the started value is the list of bound URLs, e.g.
    ``["http://127.0.0.1:31415"]``. ``stats``, if given, is kept up to date with the connections.
    """
    limits = limits or GatewayLimits()
    app = build_gateway_app(service, limits, policy)
    logger.info("gateway starting bind=%s %s", bind, limits.describe())
    warn_if_few_file_descriptors(limits.max_connections)
    await serve_http(app, bind, limits=limits.http_limits(), stats=stats, task_status=task_status)


def _guarded(handler: Handler, name: str) -> Handler:
    """Turn every failure of a handler into the JSON error reply (the one mapping place)."""

    def context(request: Request) -> str:
        blob = request.path_params.get("blob_id")
        blob_field = f" blob={str(blob)[:8]}" if blob is not None else ""
        return f"endpoint={name} method={request.method}{blob_field}"

    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as error:
            return api_error_response(error)
        except ClientDisconnect:
            logger.debug("client went away %s", context(request))
            return Response(status_code=400)
        except WalrusError as error:
            mapped = walrus_error_to_api(error)
            if mapped is None:
                return unexpected_error_response(error, context(request))
            # A 5xx is the network failing a user (an operator wants to see why, with the
            # default log level); a 4xx is the caller's mistake.
            logger.log(
                logging.WARNING if mapped.status >= 500 else logging.INFO,
                "request failed %s reason=%s error=%s",
                context(request),
                mapped.reason,
                error,
            )
            return api_error_response(mapped)
        except Exception as error:
            return unexpected_error_response(error, context(request))

    return guarded


class _Gateway:
    """The request handlers, sharing the service and the limits."""

    def __init__(
        self,
        service: BlobService,
        limits: GatewayLimits,
        control: AdmissionControl,
        web: WebState,
    ) -> None:
        self._service = service
        self._limits = limits
        self._control = control
        self._web = web
        self._openapi = openapi_document(max_body=limits.max_body, auth=web.policy.auth is not None)

    async def _authorized(
        self, request: Request, action: Callable[[Request, Grant | None], Awaitable[T]]
    ) -> T:
        """Run a store under the publisher's token, if the gateway wants one: checked before a
        byte of the body is read, given back if the store fails (docs/http-api.md, "Publisher
        authentication")."""
        authenticator = self._web.authenticator
        grant = None
        if authenticator is not None:
            grant = authenticator.admit(request.headers.get("authorization"))
        try:
            result = await action(request, grant)
        except BaseException:
            if grant is not None and authenticator is not None:
                authenticator.give_back(grant)
            raise
        if grant is not None and authenticator is not None:
            authenticator.used(grant)
        return result

    async def put_blob(self, request: Request) -> Response:
        outcome, size = await self._authorized(request, self._store)
        logger.info(
            "blob stored blob=%s size=%d outcome=%s",
            short_id(outcome.blob_id),
            size,
            "alreadyCertified" if isinstance(outcome, AlreadyCertified) else "newlyCreated",
        )
        return JSONResponse(store_outcome_json(outcome), headers={"Cache-Control": "no-store"})

    async def _store(self, request: Request, grant: Grant | None) -> tuple[StoreOutcome, int]:
        epochs, permanent, data = await self._store_request(request, grant)
        # The write slot is taken only now: a client still sending its body (slowly, or on
        # purpose) holds an upload slot and the bytes it sent, never a store (docs/http-api.md,
        # "Limits").
        with self._control.writes.held(self._control, client_address(request.scope)):
            outcome = await self._service.store(data, epochs=epochs, permanent=permanent)
        return outcome, len(data)

    async def _store_request(
        self, request: Request, grant: Grant | None
    ) -> tuple[int, bool, memoryview]:
        """A store's epochs, permanence and body, within the token's claims."""
        params = request.query_params
        epochs = _unsigned_param(params, "epochs", minimum=1)
        permanent = _permanence(params)
        if grant is not None:
            grant.check_epochs(epochs)
            declared = request.headers.get("content-length")
            if declared is not None and _UNSIGNED.fullmatch(declared):
                grant.check_size(int(declared))
        data = await self._read_body(request)
        if grant is not None:
            grant.check_size(len(data))
        return epochs, permanent, data

    async def put_quilt(self, request: Request) -> Response:
        """``PUT /v1/quilts``: a multipart upload stored as one quilt (docs/quilts.md)."""
        outcome, entries = await self._authorized(request, self._store_quilt)
        logger.info("quilt stored blob=%s patches=%d", short_id(outcome.blob_id), len(entries))
        body = {
            "blobStoreResult": store_outcome_json(outcome),
            "storedQuiltBlobs": patch_ids_json(outcome.blob_id, entries),
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def _store_quilt(
        self, request: Request, grant: Grant | None
    ) -> tuple[StoreOutcome, tuple[PatchEntry, ...]]:
        epochs, permanent, body = await self._store_request(request, grant)
        # The parts and then the quilt are further copies of the body: held from the budget.
        reservation = reservation_of(request)
        reservation.take(len(body))
        files = await parse_quilt_form(request.headers, body)
        try:
            data, entries = build_quilt(files)
        except QuiltError as error:
            raise quilt_error(error) from error
        del files
        reservation.take(len(data))
        with self._control.writes.held(self._control, client_address(request.scope)):
            outcome = await self._service.store(
                memoryview(data), epochs=epochs, permanent=permanent
            )
        return outcome, entries

    async def get_patch(self, request: Request) -> Response:
        """``GET /v1/blobs/by-quilt-patch-id/{patch_id}``."""
        text = str(request.path_params["patch_id"])
        try:
            quilt_id, _, length = decode_patch_id(text)
        except QuiltError as error:
            raise quilt_error(error) from error
        self._check_not_blocked(quilt_id)
        return await self._send_patch(request, quilt_id, text, length)

    async def get_patch_by_identifier(self, request: Request) -> Response:
        """``GET /v1/blobs/by-quilt-id/{quilt_id}/{identifier}``."""
        quilt_id, _ = self._readable_id(request)
        identifier = str(request.path_params["identifier"])
        for entry in await self._quilt_index(request, quilt_id):
            if entry.identifier == identifier:
                patch_id = entry.patch_id(quilt_id)
                return await self._send_patch(request, quilt_id, patch_id, entry.length)
        raise ApiError(404, "PATCH_NOT_FOUND", f"the quilt has no patch {identifier!r}")

    async def list_patches(self, request: Request) -> Response:
        """``GET /v1/quilts/{quilt_id}/patches``."""
        quilt_id, _ = self._readable_id(request)
        entries = await self._quilt_index(request, quilt_id)
        return JSONResponse(
            patch_ids_json(quilt_id, entries),
            headers={"Cache-Control": IMMUTABLE_CACHE_CONTROL},
        )

    async def _quilt_index(self, request: Request, quilt_id: BlobId) -> tuple[PatchEntry, ...]:
        size, _ = await self._readable(quilt_id, whole=False)
        reservation_of(request).take(min(size, INDEX_READ_BYTES))
        try:
            return await read_index(self._service, quilt_id, size)
        except QuiltError as error:
            raise quilt_error(error) from error

    async def _send_patch(
        self, request: Request, quilt_id: BlobId, patch_id: str, length: int
    ) -> Response:
        size, _ = await self._readable(quilt_id, whole=False)
        limit = self._web.policy.max_read_size
        if limit is not None and length > limit:
            raise ApiError(
                403,
                "BLOB_ABOVE_READ_LIMIT",
                f"the patch has {length} bytes; this gateway serves at most {limit} bytes",
            )
        headers = {
            "Cache-Control": IMMUTABLE_CACHE_CONTROL,
            "ETag": f'"{patch_id}"',
            "X-Content-Type-Options": "nosniff",
        }
        if _etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
            return Response(status_code=304, headers=headers)
        reservation_of(request).take(min(length, size))
        try:
            patch = await read_patch(self._service, patch_id, size)
        except QuiltError as error:
            raise quilt_error(error) from error
        headers["X-Quilt-Patch-Identifier"] = _header_text(patch.identifier)
        complete = len(patch.data) <= SNIFF_BYTES
        headers["Content-Type"] = sniff(patch.data[:SNIFF_BYTES], complete=complete)
        if request.method == "HEAD":
            return _head_response(200, len(patch.data), headers)
        return _stream(patch.data, 200, headers)

    async def get_blob(self, request: Request) -> Response:
        blob_id, text = self._readable_id(request)
        headers = _blob_headers(text)
        headers["Accept-Ranges"] = "bytes"
        if _etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
            return Response(status_code=304, headers=headers)
        size, owner_headers = await self._readable(blob_id)
        headers.update(owner_headers)
        range_header = request.headers.get("range")
        if range_header is not None and request.headers.get("if-range") in (None, headers["ETag"]):
            try:
                byte_range = parse_range_header(range_header, size)
            except UnsatisfiableRangeError as error:
                raise _unsatisfiable(size, str(error)) from error
            if byte_range is not None:
                headers["Content-Range"] = byte_range.content_range(size)
                return await self._send_range(request, blob_id, size, byte_range, 206, headers)
        if request.method == "HEAD":
            await self._set_content_type(headers, request, blob_id, size)
            return _head_response(200, size, headers)
        # The size comes first so that the bytes are taken from the budget before they are read.
        reservation = reservation_of(request)
        reservation.take(size)
        data = await self._service.read(blob_id)
        if len(data) > size:
            reservation.take(len(data) - size)
        await self._set_content_type(headers, request, blob_id, len(data), data)
        return _stream(data, 200, headers)

    async def get_byte_range(self, request: Request) -> Response:
        blob_id, text = self._readable_id(request)
        start = _unsigned_param(request.query_params, "start", minimum=0)
        length = _unsigned_param(request.query_params, "length", minimum=1)
        headers = _blob_headers(text)
        size, owner_headers = await self._readable(blob_id)
        headers.update(owner_headers)
        if start >= size:
            raise _unsatisfiable(size, f"start {start} is not inside the {size}-byte blob")
        byte_range = ByteRange(start, min(start + length, size) - 1)
        return await self._send_range(request, blob_id, size, byte_range, 200, headers)

    async def status(self, request: Request) -> Response:
        status = await self._service.network_status()
        body = {
            "networkName": status.network_name,
            "networkId": status.network_id,
            "epoch": status.epoch,
            "shards": status.shards,
            "reachableShards": status.reachable_shards,
            "writable": status.writable,
            "challengeEpoch": status.challenge_epoch,
        }
        return JSONResponse(
            body,
            status_code=200 if status.writable else 503,
            headers={"Cache-Control": "no-store"},
        )

    async def api(self, request: Request) -> Response:
        return JSONResponse(self._openapi)

    async def _read_body(self, request: Request) -> memoryview:
        """The request body, refused with 413 as soon as it is known to exceed the limit.

        A declared Content-Length is checked against the limit before reading anything; the
        body is taken from the byte budget as it arrives (429 once it does not fit), so a slow
        or stalled upload holds only what it sent, at most ``max_body`` bytes plus one
        transport chunk are ever held, and never more than the budget allows.
        """
        max_body = self._limits.max_body
        reservation = reservation_of(request)
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isascii() or not declared.isdigit():
                raise ApiError(400, "BAD_REQUEST", "Content-Length is not a number")
            if len(declared) > 18 or int(declared) > max_body:
                raise _too_large(max_body)
        body = bytearray()
        pace = _BodyPace(self._limits)
        with trio.CancelScope(deadline=pace.deadline(0)) as deadline:
            async with aclosing(request.stream()) as chunks:
                async for chunk in chunks:
                    if len(body) + len(chunk) > max_body:
                        raise _too_large(max_body)
                    if len(body) + len(chunk) > reservation.held:
                        reservation.take(len(body) + len(chunk) - reservation.held)
                    body += chunk
                    deadline.deadline = pace.deadline(len(body))
        if deadline.cancelled_caught:
            logger.info("request body too slow received=%d %s", len(body), pace.describe())
            raise ApiError(
                408,
                "REQUEST_TIMEOUT",
                f"the request body did not arrive in time ({pace.describe()})",
                headers={"Connection": "close"},
            )
        # A read-only view of what arrived, not a copy: a 32 MiB upload held twice cost the
        # gateway 32 MiB of peak memory for nothing.
        return memoryview(body).toreadonly()

    async def _readable(self, blob_id: BlobId, *, whole: bool = True) -> tuple[int, dict[str, str]]:
        """The size of a certified blob and the headers its attributes give (docs/attributes.md;
        ``content-type`` among them stays lower-case for :meth:`_set_content_type`); 404 or
        410 (via ApiError) for anything else. ``whole``: the read size limit applies to the
        blob's size (a quilt's patches are held to it one by one instead)."""
        status = await self._service.blob_status(blob_id)
        if status.state == "invalid":
            raise blob_inconsistent()
        if status.state != "certified":
            raise blob_not_found()
        if status.size is None:
            raise RuntimeError(f"certified blob {short_id(blob_id)} has no size")
        limit = self._web.policy.max_read_size
        if whole and limit is not None and status.size > limit:
            raise ApiError(
                403,
                "BLOB_ABOVE_READ_LIMIT",
                f"the blob has {status.size} bytes; this gateway serves blobs of at most "
                f"{limit} bytes",
            )
        return status.size, attribute_headers(status.attributes, self._web.policy.attribute_headers)

    async def _set_content_type(
        self,
        headers: dict[str, str],
        request: Request,
        blob_id: BlobId,
        size: int,
        start: bytes | memoryview | None = None,
    ) -> None:
        """``Content-Type`` from the owner's attribute (sandboxed if active), else
        :meth:`_content_type`."""
        chosen = headers.pop("content-type", None)
        if chosen is None:
            headers["Content-Type"] = await self._content_type(request, blob_id, size, start)
            return
        headers["Content-Type"], active = attribute_content_type(chosen)
        if active:
            headers["Content-Security-Policy"] = SANDBOX

    def _readable_id(self, request: Request) -> tuple[BlobId, str]:
        """The blob id of a read, refused with 451 if the operator's blocklist names it."""
        blob_id, text = _blob_id_param(request)
        self._check_not_blocked(blob_id)
        return blob_id, text

    def _check_not_blocked(self, blob_id: BlobId) -> None:
        """451 if the operator's blocklist names the blob (a quilt's patches: the quilt)."""
        if blob_id in self._web.blocklist:
            raise ApiError(
                451, "BLOB_BLOCKED", "this gateway does not serve this blob (operator blocklist)"
            )

    async def _content_type(
        self,
        request: Request,
        blob_id: BlobId,
        size: int,
        start: bytes | memoryview | None = None,
    ) -> str:
        """The blob's content type (docs/http-api.md, "Web-ready reads"): what the request's
        ``Accept`` names, else sniffed from the first bytes (``start`` when they begin the blob
        and reach far enough, else read, at most :data:`SNIFF_BYTES`, once per blob id)."""
        asked = requested_type(request.headers.get("accept"))
        if asked is not None:
            return asked
        known = self._web.content_types.get(blob_id)
        if known is not None:
            return known
        wanted = min(size, SNIFF_BYTES)
        if start is None or len(start) < wanted:
            start = await self._service.read_range(blob_id, 0, wanted) if wanted else b""
        found = sniff(start[:wanted], complete=size <= SNIFF_BYTES)
        self._web.content_types.put(blob_id, found)
        return found

    async def _send_range(
        self,
        request: Request,
        blob_id: BlobId,
        size: int,
        byte_range: ByteRange,
        status_code: int,
        headers: dict[str, str],
    ) -> Response:
        if request.method == "HEAD":
            await self._set_content_type(headers, request, blob_id, size)
            return _head_response(status_code, byte_range.length, headers)
        reservation_of(request).take(byte_range.length)
        data = await self._service.read_range(blob_id, byte_range.first, byte_range.length)
        if len(data) != byte_range.length:
            raise RuntimeError(
                f"read_range returned {len(data)} bytes, {byte_range.length} were asked"
            )
        start = data if byte_range.first == 0 else None
        await self._set_content_type(headers, request, blob_id, size, start)
        return _stream(data, status_code, headers)


class _BodyPace:
    """When a request body must have arrived: a floor on its rate, and a bound on its time.

    After a grace period the body must keep up ``min_body_rate`` on average, so a client
    dripping a byte a second gives its write slot back within seconds, not only at the body
    timeout; the whole body must arrive within the body timeout in any case.
    """

    def __init__(self, limits: GatewayLimits) -> None:
        self._started = trio.current_time()
        self._limits = limits

    def deadline(self, received: int) -> float:
        paced = BODY_GRACE_SECONDS + received / self._limits.min_body_rate
        return self._started + min(paced, self._limits.body_timeout_seconds)

    def describe(self) -> str:
        return (
            f"at least {self._limits.min_body_rate} bytes/s after {BODY_GRACE_SECONDS:g} s, "
            f"all within {self._limits.body_timeout_seconds:g} s"
        )


def _blob_id_param(request: Request) -> tuple[BlobId, str]:
    text = str(request.path_params["blob_id"])
    try:
        return blob_id_from_text(text), text
    except WireError as error:
        raise ApiError(400, "INVALID_BLOB_ID", error.message) from error


def _single_param(params: QueryParams, name: str) -> str | None:
    values = params.getlist(name)
    if len(values) > 1:
        raise ApiError(400, "BAD_REQUEST", f"query parameter {name} is given more than once")
    return values[0] if values else None


def _unsigned_param(params: QueryParams, name: str, *, minimum: int) -> int:
    value = _single_param(params, name)
    if value is None:
        raise ApiError(400, "BAD_REQUEST", f"query parameter {name} is required")
    if _UNSIGNED.fullmatch(value) is None or int(value) < minimum:
        raise ApiError(
            400, "BAD_REQUEST", f"query parameter {name} must be an integer >= {minimum}"
        )
    return int(value)


def _bool_param(params: QueryParams, name: str) -> bool | None:
    value = _single_param(params, name)
    if value is None:
        return None
    parsed = _BOOLEANS.get(value.lower())
    if parsed is None:
        raise ApiError(400, "BAD_REQUEST", f"query parameter {name} must be true or false")
    return parsed


def _permanence(params: QueryParams) -> bool:
    """``permanent=true`` or ``deletable=false`` make a permanent blob; deletable is the default.

    This follows current Walrus publishers, which store new blobs as deletable unless asked
    otherwise. Contradicting flags are refused rather than guessed.
    """
    permanent = _bool_param(params, "permanent")
    deletable = _bool_param(params, "deletable")
    if permanent is not None and deletable is not None and permanent == deletable:
        raise ApiError(400, "BAD_REQUEST", "permanent and deletable contradict each other")
    if permanent is not None:
        return permanent
    if deletable is not None:
        return not deletable
    return False


def _blob_headers(blob_id_text: str) -> dict[str, str]:
    # A blob id commits to the content, so the bytes at a blob URL never change; nosniff keeps
    # browsers to the stated content type (docs/http-api.md, "Web-ready reads").
    return {
        "Cache-Control": IMMUTABLE_CACHE_CONTROL,
        "ETag": f'"{blob_id_text}"',
        "X-Content-Type-Options": "nosniff",
    }


def _header_text(text: str) -> str:
    """``text`` as a header value: printable ASCII kept, anything else percent-encoded (UTF-8),
    as a file name in a header would be."""
    from urllib.parse import quote

    return quote(text, safe=" !#$&'()*+,-./:;<=>?@[]^_`{|}~")


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Weak comparison (RFC 9110 §13.1.2), as If-None-Match asks; ``*`` is not special-cased."""
    if if_none_match is None:
        return False
    candidates = (candidate.strip().removeprefix("W/") for candidate in if_none_match.split(","))
    return etag in candidates


def _too_large(max_body: int) -> ApiError:
    # The rest of the body is never read, so the connection cannot be reused.
    return ApiError(
        413,
        "PAYLOAD_TOO_LARGE",
        f"the blob exceeds this gateway's limit of {max_body} bytes",
        headers={"Connection": "close"},
    )


def _unsatisfiable(size: int, message: str) -> ApiError:
    return ApiError(
        416, "RANGE_NOT_SATISFIABLE", message, headers={"Content-Range": f"bytes */{size}"}
    )


def _head_response(status_code: int, length: int, headers: dict[str, str]) -> Response:
    return Response(status_code=status_code, headers={**headers, "Content-Length": str(length)})


def _stream(
    data: bytes | memoryview, status_code: int, headers: dict[str, str]
) -> StreamingResponse:
    return StreamingResponse(
        _chunks(data),
        status_code=status_code,
        headers={**headers, "Content-Length": str(len(data))},
    )


async def _chunks(data: bytes | memoryview) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for offset in range(0, len(view), STREAM_CHUNK_SIZE):
        yield bytes(view[offset : offset + STREAM_CHUNK_SIZE])
