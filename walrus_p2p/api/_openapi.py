"""The OpenAPI 3.1 description of the gateway, served at ``GET /v1/api``.

Written by hand (the routes are few) and kept honest by tests that check real responses against
the schemas below. Change both together.
"""

from __future__ import annotations

from typing import Any

OPENAPI_VERSION = "3.1.0"

ERROR_REASONS = (
    "BAD_REQUEST",
    "INVALID_BLOB_ID",
    "NOT_FOUND",
    "METHOD_NOT_ALLOWED",
    "REQUEST_TIMEOUT",
    "BLOB_NOT_FOUND",
    "BLOB_INCONSISTENT",
    "PAYLOAD_TOO_LARGE",
    "RANGE_NOT_SATISFIABLE",
    "TOO_MANY_REQUESTS",
    "INTERNAL",
    "BLOB_TOO_LARGE",
    "NETWORK_ERROR",
    "NOT_ENOUGH_PEERS",
    "TIMEOUT",
    "PAYMENT_REQUIRED",
    "PAYMENT_FAILED",
    "BLOB_BLOCKED",
    "BLOB_ABOVE_READ_LIMIT",
    "TOKEN_MISSING",
    "TOKEN_INVALID",
    "TOKEN_EXPIRED",
    "TOKEN_REPLAYED",
    "TOKEN_LIMIT_EXCEEDED",
    "QUILT_INVALID",
    "INVALID_PATCH_ID",
    "PATCH_NOT_FOUND",
)

_BLOB_ID_PATTERN = "^[A-Za-z0-9_-]{43}$"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _integer(minimum: int = 0) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(properties),
        "properties": properties,
        "additionalProperties": False,
    }


def _error(description: str, *, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref("schemas", "Error")}},
    }
    if headers:
        response["headers"] = headers
    return response


def _blob_bytes(description: str, *, partial: bool = False) -> dict[str, Any]:
    headers: dict[str, Any] = {
        "ETag": {"description": "The blob id in quotes.", "schema": {"type": "string"}},
        "Cache-Control": {
            "description": "Always `public, max-age=31536000, immutable`.",
            "schema": {"type": "string"},
        },
        "Content-Length": {"schema": _integer()},
        "X-Content-Type-Options": {
            "description": "Always `nosniff`.",
            "schema": {"type": "string"},
        },
    }
    if partial:
        headers["Content-Range"] = {
            "description": "`bytes first-last/size`.",
            "schema": {"type": "string"},
        }
    return {
        "description": description + " " + _CONTENT_TYPE_NOTE,
        "headers": headers,
        "content": {"*/*": {"schema": {}}},
    }


_CONTENT_TYPE_NOTE = (
    "Content-Type: the blob owner's `content-type` attribute (active types sandboxed), else "
    "the single concrete media type named by `Accept`, else sniffed from the "
    "first bytes (images, audio, video, fonts, archives, PDF; printable UTF-8 is "
    "`text/plain; charset=utf-8`), else `application/octet-stream`."
)


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": _integer(),
    }
}
_CONTENT_RANGE_UNSATISFIED = {
    "Content-Range": {"description": "`bytes */size`.", "schema": {"type": "string"}}
}


_TOO_LARGE_FOR_GATEWAY = _error(
    "The blob (or range) is larger than the gateway's byte budget (`BLOB_TOO_LARGE`)."
)
_READ_POLICY = {
    "403": _error(
        "The blob is larger than the gateway's read size limit (`BLOB_ABOVE_READ_LIMIT`)."
    ),
    "451": _error("The gateway's operator blocklist names this blob (`BLOB_BLOCKED`)."),
}


def _network_errors() -> dict[str, Any]:
    return {
        "429": _error(
            "Too many requests of this kind in flight (on the gateway or from this client "
            "address), or too many blob bytes held by requests in flight.",
            headers=_RETRY_AFTER,
        ),
        "500": _error("Unexpected error; details are in the gateway log only."),
        "502": _error("The storage network could not be reached (`NETWORK_ERROR`)."),
        "504": _error(
            "Not enough storage peers answered (`NOT_ENOUGH_PEERS`) or they timed out (`TIMEOUT`)."
        ),
    }


def _patch_responses() -> dict[str, Any]:
    return {
        "200": {
            "description": (
                "The file's bytes; `X-Quilt-Patch-Identifier` names it; the ETag is the "
                "patch id. Content-Type is sniffed as for blobs."
            ),
            "content": {"*/*": {"schema": {}}},
        },
        "304": {"description": "The client's cached copy is current."},
        "400": _error(
            "A malformed patch id, or one that names no patch (`INVALID_PATCH_ID`); not a "
            "quilt (`QUILT_INVALID`)."
        ),
        "404": _error(
            "No certified quilt with this id (`BLOB_NOT_FOUND`), or no file with this "
            "identifier (`PATCH_NOT_FOUND`)."
        ),
        "503": _TOO_LARGE_FOR_GATEWAY,
        **_READ_POLICY,
        **_network_errors(),
    }


def openapi_document(*, max_body: int, auth: bool = False) -> dict[str, Any]:
    """The OpenAPI document for a gateway whose body limit is ``max_body`` bytes; ``auth``:
    stores need a bearer JWT (docs/http-api.md, "Publisher authentication")."""
    blob_id_parameter = {
        "name": "blobId",
        "in": "path",
        "required": True,
        "description": "Blob id: 43 characters of URL-safe base64 without padding.",
        "schema": {"type": "string", "pattern": _BLOB_ID_PATTERN},
    }
    read_blob = {
        "operationId": "readBlob",
        "summary": "Read a blob, or one byte range of it with a Range header.",
        "parameters": [
            _ref("parameters", "BlobId"),
            {
                "name": "Range",
                "in": "header",
                "required": False,
                "description": (
                    "One range `bytes=first-last`, `bytes=first-` or `bytes=-suffix`. "
                    "Other units, malformed values and multiple ranges are ignored (200)."
                ),
                "schema": {"type": "string"},
            },
            {
                "name": "If-None-Match",
                "in": "header",
                "required": False,
                "description": "The ETag from an earlier read; a match answers 304.",
                "schema": {"type": "string"},
            },
            {
                "name": "If-Range",
                "in": "header",
                "required": False,
                "description": "Honour Range only if this equals the ETag.",
                "schema": {"type": "string"},
            },
            {
                "name": "Accept",
                "in": "header",
                "required": False,
                "description": (
                    "One concrete media type (no list, no wildcard) becomes the response's "
                    "Content-Type; anything else lets the gateway sniff it."
                ),
                "schema": {"type": "string"},
            },
        ],
        "responses": {
            "200": _blob_bytes("The whole blob."),
            "206": _blob_bytes("The requested range of the blob.", partial=True),
            "304": {"description": "The client's cached copy is current."},
            "400": _error("Malformed blob id (`INVALID_BLOB_ID`)."),
            "404": _error("No certified blob with this id (`BLOB_NOT_FOUND`)."),
            "410": _error("The blob was encoded inconsistently (`BLOB_INCONSISTENT`)."),
            "416": _error(
                "The range lies outside the blob (`RANGE_NOT_SATISFIABLE`).",
                headers=_CONTENT_RANGE_UNSATISFIED,
            ),
            "503": _TOO_LARGE_FOR_GATEWAY,
            **_READ_POLICY,
            **_network_errors(),
        },
    }
    head_blob = {
        **read_blob,
        "operationId": "headBlob",
        "summary": "The headers a read would answer (size, type, ETag), without the bytes.",
    }
    store_parameters = [
        {
            "name": "epochs",
            "in": "query",
            "required": True,
            "description": "Number of storage epochs, at least 1.",
            "schema": _integer(1),
        },
        {
            "name": "permanent",
            "in": "query",
            "required": False,
            "description": "`true` stores a permanent (non-deletable) blob.",
            "schema": {"type": "boolean", "default": False},
        },
        {
            "name": "deletable",
            "in": "query",
            "required": False,
            "description": (
                "`false` is the same as `permanent=true`. Blobs are deletable "
                "unless one of these flags says otherwise."
            ),
            "schema": {"type": "boolean", "default": True},
        },
    ]
    store_security: dict[str, Any] = {}
    if auth:
        store_security = {
            "security": [{"publisherJwt": []}],
        }
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "walrus-p2p gateway",
            "version": "1.0.0",
            "description": (
                "Publisher (store) and aggregator (read) API of a walrus-p2p light peer, "
                "following the Walrus HTTP API. Errors are JSON with a stable `reason`. "
                f"This gateway accepts blobs of at most {max_body} bytes."
            ),
        },
        "paths": {
            "/v1/blobs": {
                "put": {
                    "operationId": "storeBlob",
                    "summary": "Store a blob (the request body) for a number of epochs.",
                    **store_security,
                    "parameters": store_parameters,
                    "requestBody": {
                        "required": True,
                        "description": f"The blob bytes, at most {max_body}.",
                        "content": {"application/octet-stream": {"schema": {}}},
                    },
                    "responses": {
                        "200": {
                            "description": "Stored now, or already certified for long enough.",
                            "content": {
                                "application/json": {"schema": _ref("schemas", "StoreResponse")}
                            },
                        },
                        "400": _error("Missing or invalid query parameters (`BAD_REQUEST`)."),
                        "408": _error("The body did not arrive in time (`REQUEST_TIMEOUT`)."),
                        "413": _error(f"The body exceeds {max_body} bytes (`PAYLOAD_TOO_LARGE`)."),
                        **(
                            {
                                "401": _error(
                                    "No valid bearer JWT (`TOKEN_MISSING`, `TOKEN_INVALID`, "
                                    "`TOKEN_EXPIRED`, `TOKEN_REPLAYED`)."
                                ),
                                "403": _error(
                                    "The store exceeds the token's epochs or size claims "
                                    "(`TOKEN_LIMIT_EXCEEDED`)."
                                ),
                            }
                            if auth
                            else {}
                        ),
                        "402": _error(
                            "On a network with an economy: the gateway's wallet cannot pay for "
                            "this store (`PAYMENT_REQUIRED`; `needed` and `balance` in FROST)."
                        ),
                        "503": _error(
                            "The committee refused the gateway's payment for another reason "
                            "(`PAYMENT_FAILED`; `orderReason`)."
                        ),
                        **_network_errors(),
                    },
                }
            },
            "/v1/blobs/{blobId}": {"get": read_blob, "head": head_blob},
            "/v1/blobs/{blobId}/byte-range": {
                "get": {
                    "operationId": "readBlobByteRange",
                    "summary": "Read `length` bytes of a blob from `start` (cut at its end).",
                    "parameters": [
                        _ref("parameters", "BlobId"),
                        {
                            "name": "start",
                            "in": "query",
                            "required": True,
                            "schema": _integer(0),
                        },
                        {
                            "name": "length",
                            "in": "query",
                            "required": True,
                            "schema": _integer(1),
                        },
                    ],
                    "responses": {
                        "200": _blob_bytes("The bytes of the range."),
                        "400": _error("Malformed blob id, start or length."),
                        "404": _error("No certified blob with this id (`BLOB_NOT_FOUND`)."),
                        "410": _error("The blob was encoded inconsistently (`BLOB_INCONSISTENT`)."),
                        "416": _error(
                            "`start` is at or past the end of the blob (`RANGE_NOT_SATISFIABLE`).",
                            headers=_CONTENT_RANGE_UNSATISFIED,
                        ),
                        "503": _TOO_LARGE_FOR_GATEWAY,
                        **_READ_POLICY,
                        **_network_errors(),
                    },
                }
            },
            "/v1/quilts": {
                "put": {
                    "operationId": "storeQuilt",
                    "summary": (
                        "Store many files as one quilt: multipart/form-data, one part per file "
                        "(field name = identifier), `_metadata` = JSON "
                        '`[{"identifier", "tags"}]`.'
                    ),
                    **store_security,
                    "parameters": store_parameters,
                    "requestBody": {
                        "required": True,
                        "description": f"The multipart body, at most {max_body} bytes.",
                        "content": {"multipart/form-data": {"schema": {"type": "object"}}},
                    },
                    "responses": {
                        "200": {
                            "description": "The quilt's store result and its patches' ids.",
                            "content": {
                                "application/json": {"schema": _ref("schemas", "QuiltResponse")}
                            },
                        },
                        "400": _error(
                            "Bad parameters or body; identifiers, tags or counts the quilt "
                            "format refuses (`QUILT_INVALID`)."
                        ),
                        "408": _error("The body did not arrive in time (`REQUEST_TIMEOUT`)."),
                        "413": _error(f"The body exceeds {max_body} bytes (`PAYLOAD_TOO_LARGE`)."),
                        **_network_errors(),
                    },
                }
            },
            "/v1/blobs/by-quilt-patch-id/{quiltPatchId}": {
                "get": {
                    "operationId": "readQuiltPatch",
                    "summary": "One file of a quilt, by its patch id (no index read).",
                    "parameters": [
                        {
                            "name": "quiltPatchId",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{66}$"},
                        }
                    ],
                    "responses": _patch_responses(),
                }
            },
            "/v1/blobs/by-quilt-id/{blobId}/{identifier}": {
                "get": {
                    "operationId": "readQuiltPatchByIdentifier",
                    "summary": "One file of a quilt, by the quilt's id and the file's identifier.",
                    "parameters": [
                        _ref("parameters", "BlobId"),
                        {
                            "name": "identifier",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": _patch_responses(),
                }
            },
            "/v1/quilts/{blobId}/patches": {
                "get": {
                    "operationId": "listQuiltPatches",
                    "summary": "The files of a quilt: identifier, patch id and tags of each.",
                    "parameters": [_ref("parameters", "BlobId")],
                    "responses": {
                        "200": {
                            "description": "The quilt's index.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "array",
                                        "items": _ref("schemas", "QuiltPatch"),
                                    }
                                }
                            },
                        },
                        "400": _error("Not a quilt (`QUILT_INVALID`) or a malformed id."),
                        "404": _error("No certified blob with this id (`BLOB_NOT_FOUND`)."),
                        **_READ_POLICY,
                        **_network_errors(),
                    },
                }
            },
            "/status": {
                "get": {
                    "operationId": "networkStatus",
                    "summary": "The gateway's view of the network.",
                    "responses": {
                        "200": {
                            "description": "The network takes writes.",
                            "content": {
                                "application/json": {"schema": _ref("schemas", "NetworkStatus")}
                            },
                        },
                        "503": {
                            "description": "Too few shards reachable for a write quorum.",
                            "content": {
                                "application/json": {"schema": _ref("schemas", "NetworkStatus")}
                            },
                        },
                        "500": _error("Unexpected error."),
                        "502": _error("The storage network could not be reached."),
                        "504": _error("Not enough storage peers answered."),
                    },
                }
            },
            "/v1/api": {
                "get": {
                    "operationId": "openApi",
                    "summary": "This document.",
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "parameters": {"BlobId": blob_id_parameter},
            "schemas": {
                "BlobId": {"type": "string", "pattern": _BLOB_ID_PATTERN},
                "Error": _object(
                    {
                        "error": {
                            **_object(
                                {
                                    "code": _integer(400),
                                    "reason": {"type": "string", "enum": list(ERROR_REASONS)},
                                    "message": {"type": "string"},
                                }
                            ),
                            "properties": {
                                "code": _integer(400),
                                "reason": {"type": "string", "enum": list(ERROR_REASONS)},
                                "message": {"type": "string"},
                                "needed": _integer(),
                                "balance": _integer(),
                                "orderReason": {"type": "string"},
                            },
                        }
                    }
                ),
                "QuiltPatch": _object(
                    {
                        "identifier": {"type": "string"},
                        "quiltPatchId": {"type": "string"},
                        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                    }
                ),
                "QuiltResponse": _object(
                    {
                        "blobStoreResult": _ref("schemas", "StoreResponse"),
                        "storedQuiltBlobs": {
                            "type": "array",
                            "items": _ref("schemas", "QuiltPatch"),
                        },
                    }
                ),
                "StoreResponse": {
                    "oneOf": [
                        _ref("schemas", "NewlyCreatedResponse"),
                        _ref("schemas", "AlreadyCertifiedResponse"),
                    ]
                },
                "NewlyCreatedResponse": _object(
                    {
                        "newlyCreated": _object(
                            {"blobObject": _ref("schemas", "BlobObject"), "cost": _integer()}
                        )
                    }
                ),
                "AlreadyCertifiedResponse": _object(
                    {
                        "alreadyCertified": _object(
                            {"blobId": _ref("schemas", "BlobId"), "endEpoch": _integer()}
                        )
                    }
                ),
                "BlobObject": _object(
                    {
                        "blobId": _ref("schemas", "BlobId"),
                        "size": _integer(),
                        "encodingType": _integer(),
                        "certifiedEpoch": _integer(),
                        "storage": _object(
                            {
                                "startEpoch": _integer(),
                                "endEpoch": _integer(),
                                "storageSize": _integer(),
                            }
                        ),
                        "deletable": {"type": "boolean"},
                    }
                ),
                "NetworkStatus": _object(
                    {
                        "networkName": {"type": "string"},
                        "networkId": {"type": "string"},
                        "epoch": _integer(),
                        "shards": _integer(),
                        "reachableShards": _integer(),
                        "writable": {"type": "boolean"},
                        "challengeEpoch": {"oneOf": [_integer(1), {"type": "null"}]},
                    }
                ),
            },
        },
    }
    if auth:
        document["components"]["securitySchemes"] = {
            "publisherJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        }
    return document
