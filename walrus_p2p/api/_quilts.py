"""The gateway's side of quilts (docs/quilts.md, "HTTP"): the multipart upload Walrus clients send
and the mapping of quilt errors to HTTP answers. The format itself is
:mod:`walrus_p2p.client.quilt`."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from walrus_p2p.api._errors import ApiError
from walrus_p2p.client.quilt import MAX_PATCHES, QuiltError, QuiltFile

METADATA_FIELD = "_metadata"
"""The multipart field with ``[{"identifier", "tags"}]`` (Walrus's name)."""
MAX_METADATA_BYTES = 1024 * 1024


def quilt_error(error: QuiltError) -> ApiError:
    """A quilt that cannot be built or a patch id that names nothing: the caller's mistake."""
    return ApiError(400, error.reason, error.message)


async def parse_quilt_form(headers: Headers, body: bytes | memoryview) -> list[QuiltFile]:
    """The files of a ``PUT /v1/quilts`` body: every part but ``_metadata`` is a file whose
    identifier is its field name; ``_metadata`` gives tags (and must name only those files).
    The body was already read within the gateway's limits; parts are at most
    :data:`MAX_PATCHES` (+1 for the metadata)."""
    content_type = headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(
            400, "BAD_REQUEST", "a quilt is uploaded as multipart/form-data (one part per file)"
        )

    async def stream() -> AsyncGenerator[bytes, None]:
        yield bytes(body)
        yield b""

    parser = MultiPartParser(
        headers,
        stream(),
        max_files=MAX_PATCHES,
        max_fields=MAX_PATCHES + 1,
        max_part_size=MAX_METADATA_BYTES,
    )
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise ApiError(400, "BAD_REQUEST", f"malformed multipart body: {error.message}") from error
    try:
        files: list[QuiltFile] = []
        tags: dict[str, dict[str, str]] = {}
        for name, value in form.multi_items():
            if name == METADATA_FIELD:
                text = value if isinstance(value, str) else (await value.read()).decode()
                tags = _metadata_tags(text)
                continue
            if isinstance(value, UploadFile):
                data = await value.read()
            else:
                data = value.encode()
            files.append(QuiltFile(name, data))
    finally:
        await form.close()
    names = {item.identifier for item in files}
    unknown = sorted(set(tags) - names)
    if unknown:
        raise ApiError(
            400, "QUILT_INVALID", f"{METADATA_FIELD} names files not uploaded: {unknown[:5]}"
        )
    return [QuiltFile(item.identifier, item.data, tags.get(item.identifier, {})) for item in files]


def _metadata_tags(text: str) -> dict[str, dict[str, str]]:
    problem = (
        f'{METADATA_FIELD} must be a JSON array of {{"identifier": ..., "tags": {{...}}}} objects'
    )
    try:
        entries = json.loads(text)
    except ValueError as error:
        raise ApiError(400, "QUILT_INVALID", f"{problem} ({error})") from error
    if not isinstance(entries, list):
        raise ApiError(400, "QUILT_INVALID", problem)
    tags: dict[str, dict[str, str]] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("identifier"), str):
            raise ApiError(400, "QUILT_INVALID", problem)
        entry_tags = entry.get("tags", {})
        if not isinstance(entry_tags, dict):
            raise ApiError(400, "QUILT_INVALID", problem)
        tags[entry["identifier"]] = entry_tags
    return tags
