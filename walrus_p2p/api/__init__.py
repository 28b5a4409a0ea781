"""HTTP gateway: the Walrus publisher + aggregator API in front of any `BlobService`.

``serve_gateway`` runs it with hypercorn's trio worker; ``build_gateway_app`` gives the bare ASGI
app. The endpoints, errors and limits are described in docs/http-api.md and served as OpenAPI at
``GET /v1/api``.
"""

from walrus_p2p.api._auth import AuthPolicy
from walrus_p2p.api._gateway import (
    DEFAULT_BODY_TIMEOUT_SECONDS,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_BYTES_IN_FLIGHT,
    DEFAULT_MAX_CONCURRENT_READS,
    DEFAULT_MAX_CONCURRENT_READS_PER_ADDRESS,
    DEFAULT_MAX_CONCURRENT_WRITES,
    DEFAULT_MAX_CONCURRENT_WRITES_PER_ADDRESS,
    DEFAULT_RETRY_AFTER_SECONDS,
    GatewayLimits,
    build_gateway_app,
    serve_gateway,
    store_outcome_json,
)
from walrus_p2p.api._openapi import ERROR_REASONS, openapi_document
from walrus_p2p.api._ranges import ByteRange, UnsatisfiableRangeError, parse_range_header
from walrus_p2p.api._web import (
    DEFAULT_ATTRIBUTE_HEADERS,
    GatewayPolicy,
    attribute_headers_from_text,
    cors_origins_from_text,
    parse_blocklist,
)

__all__ = [
    "DEFAULT_ATTRIBUTE_HEADERS",
    "DEFAULT_BODY_TIMEOUT_SECONDS",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_BYTES_IN_FLIGHT",
    "DEFAULT_MAX_CONCURRENT_READS",
    "DEFAULT_MAX_CONCURRENT_READS_PER_ADDRESS",
    "DEFAULT_MAX_CONCURRENT_WRITES",
    "DEFAULT_MAX_CONCURRENT_WRITES_PER_ADDRESS",
    "DEFAULT_RETRY_AFTER_SECONDS",
    "ERROR_REASONS",
    "AuthPolicy",
    "ByteRange",
    "GatewayLimits",
    "GatewayPolicy",
    "UnsatisfiableRangeError",
    "attribute_headers_from_text",
    "build_gateway_app",
    "cors_origins_from_text",
    "openapi_document",
    "parse_blocklist",
    "parse_range_header",
    "serve_gateway",
    "store_outcome_json",
]
