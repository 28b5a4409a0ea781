"""Quilts (docs/quilts.md): the format, its limits, reading one patch by its range, the command
line's file selection, and the gateway's endpoints over an in-memory blob service."""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import pytest

from walrus_p2p.api import GatewayLimits, GatewayPolicy, build_gateway_app
from walrus_p2p.cli._common import UsageError
from walrus_p2p.cli.quilt import quilt_files, safe_output_path
from walrus_p2p.client import quilt
from walrus_p2p.client.quilt import QuiltError, QuiltFile
from walrus_p2p.testing.app_client import open_app_client
from walrus_p2p.testing.fake_service import FakeBlobService
from walrus_p2p.types import BlobId, blob_id_from_text, blob_id_to_text

PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 300
FILES = [
    QuiltFile("index.html", b"<html>hi</html>", {"kind": "page"}),
    QuiltFile("img/logo.png", PNG, {"kind": "image", "size": "small"}),
    QuiltFile("empty", b""),
    QuiltFile("caf\u00e9.txt", "caf\u00e9".encode(), {"lang": "fr"}),
]


async def test_a_quilt_round_trips_and_each_patch_is_read_by_its_range_alone() -> None:
    service = FakeBlobService()
    stored = await quilt.store_quilt(service, FILES, epochs=3, permanent=False)
    assert service.stores == [(len(service.blobs[stored.quilt_id]), 3, False)]
    entries = await quilt.read_index(service, stored.quilt_id)
    assert entries == stored.patches
    assert [entry.identifier for entry in entries] == [item.identifier for item in FILES]
    for item, entry in zip(FILES, entries, strict=True):
        patch_id = entry.patch_id(stored.quilt_id)
        assert quilt.decode_patch_id(patch_id) == (stored.quilt_id, entry.start, entry.length)
        service.calls.clear()
        patch = await quilt.read_patch(service, patch_id)
        assert (patch.identifier, dict(patch.tags), patch.data) == (
            item.identifier,
            dict(item.tags),
            item.data,
        )
        # One range read of exactly the patch: nothing else of the quilt is asked for.
        reads = [call for call in service.calls if call.startswith("read")]
        assert reads == [f"read_range {entry.start} {entry.length}"]


def test_patches_follow_the_index_without_gaps() -> None:
    data, entries = quilt.build_quilt(FILES)
    assert entries[0].start == quilt.HEADER.size + int.from_bytes(data[8:12], "big")
    for before, after in itertools.pairwise(entries):
        assert after.start == before.start + before.length
    assert entries[-1].start + entries[-1].length == len(data)
    assert quilt.parse_index(b"\x00" * 32, data) == entries


def test_many_files_settle_the_index_length() -> None:
    files = [QuiltFile(f"file-{index:04d}", bytes([index % 256]) * index) for index in range(600)]
    data, entries = quilt.build_quilt(files)
    assert quilt.parse_index(b"\x00" * 32, data) == entries
    assert len(entries) == 600


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ([], "at least one"),
        ([QuiltFile("a", b"1"), QuiltFile("a", b"2")], "twice"),
        ([QuiltFile("_metadata", b"1")], "reserved"),
        ([QuiltFile("bad\nname", b"1")], "control"),
        ([QuiltFile("x" * 257, b"1")], "bytes"),
        ([QuiltFile("a", b"1", {f"k{index}": "v" for index in range(33)})], "tags"),
        ([QuiltFile("a", b"1", {"k": "v" * 1025})], "too long"),
        ([QuiltFile(f"f{index}", b"") for index in range(quilt.MAX_PATCHES + 1)], "at most"),
    ],
    ids=["empty", "duplicate", "reserved", "control", "long-id", "tags", "long-tag", "too-many"],
)
def test_sets_the_format_refuses(files: list[QuiltFile], words: str) -> None:
    with pytest.raises(QuiltError, match=words):
        quilt.build_quilt(files)


async def test_a_blob_that_is_not_a_quilt_is_refused_clearly() -> None:
    service = FakeBlobService()
    plain = blob_id_from_text(service.put(b"just some bytes, no quilt header here"))
    with pytest.raises(QuiltError, match="not a quilt"):
        await quilt.read_index(service, plain)
    data, _ = quilt.build_quilt(FILES)
    # A header that announces more index than the blob has.
    cut = blob_id_from_text(service.put(data[: quilt.HEADER.size + 3]))
    with pytest.raises(QuiltError, match="cut short"):
        await quilt.read_index(service, cut)
    garbage = blob_id_from_text(
        service.put(quilt.HEADER.pack(quilt.MAGIC, 4) + b"\xff\xff\xff\xff")
    )
    with pytest.raises(QuiltError, match="not a quilt"):
        await quilt.read_index(service, garbage)


async def test_a_patch_id_that_names_no_patch_is_refused() -> None:
    service = FakeBlobService()
    stored = await quilt.store_quilt(service, FILES, epochs=1, permanent=False)
    entry = stored.patches[1]
    shifted = quilt.encode_patch_id(stored.quilt_id, entry.start + 1, entry.length - 1)
    with pytest.raises(QuiltError) as refused:
        await quilt.read_patch(service, shifted)
    assert refused.value.reason == "INVALID_PATCH_ID"
    past_end = quilt.encode_patch_id(stored.quilt_id, entry.start, 10**9)
    size = len(service.blobs[stored.quilt_id])
    with pytest.raises(QuiltError, match="past the end"):
        await quilt.read_patch(service, past_end, size)
    for text in ["", "A" * 66, "A" * 65 + "!", blob_id_to_text(stored.quilt_id)]:
        with pytest.raises(QuiltError) as malformed:
            quilt.decode_patch_id(text)
        assert malformed.value.reason == "INVALID_PATCH_ID"


def test_files_from_paths_directories_and_json(tmp_path: Path) -> None:
    (tmp_path / "site" / "img").mkdir(parents=True)
    (tmp_path / "site" / "index.html").write_bytes(b"<html/>")
    (tmp_path / "site" / "img" / "a.png").write_bytes(PNG)
    (tmp_path / "note.txt").write_bytes(b"note")
    from_paths = quilt_files(
        argparse.Namespace(paths=[str(tmp_path / "site"), str(tmp_path / "note.txt")], blobs=None)
    )
    assert [(item.identifier, item.data) for item in from_paths] == [
        ("img/a.png", PNG),
        ("index.html", b"<html/>"),
        ("note.txt", b"note"),
    ]
    blob = json.dumps({"path": str(tmp_path / "note.txt"), "identifier": "n", "tags": {"a": "b"}})
    (from_json,) = quilt_files(argparse.Namespace(paths=None, blobs=[blob]))
    assert (from_json.identifier, from_json.data, dict(from_json.tags)) == (
        "n",
        b"note",
        {"a": "b"},
    )
    with pytest.raises(UsageError, match="not JSON"):
        quilt_files(argparse.Namespace(paths=None, blobs=["{nope"]))
    with pytest.raises(UsageError, match="cannot read"):
        quilt_files(argparse.Namespace(paths=[str(tmp_path / "missing")], blobs=None))


def test_read_quilt_writes_only_inside_its_directory(tmp_path: Path) -> None:
    assert safe_output_path(tmp_path, "img/a.png") == tmp_path / "img" / "a.png"
    for identifier in ["../escape", "/etc/passwd", "a/../../b"]:
        with pytest.raises(UsageError, match="not a relative path"):
            safe_output_path(tmp_path, identifier)


def _multipart(metadata: object | None = None) -> dict[str, object]:
    files: list[tuple[str, tuple[str, bytes, str]]] = [
        ("index.html", ("index.html", b"<html>hi</html>", "text/html")),
        ("img/logo.png", ("logo.png", PNG, "image/png")),
    ]
    data = {} if metadata is None else {"_metadata": json.dumps(metadata)}
    return {"files": files, "data": data}


async def test_gateway_stores_lists_and_serves_patches() -> None:
    service = FakeBlobService()
    app = build_gateway_app(service, GatewayLimits(), GatewayPolicy())
    metadata = [{"identifier": "img/logo.png", "tags": {"kind": "image"}}]
    async with open_app_client(app) as client:
        stored = await client.put("/v1/quilts?epochs=2", **_multipart(metadata))  # type: ignore[arg-type]
        assert stored.status_code == 200, stored.text
        body = stored.json()
        quilt_id = body["blobStoreResult"]["newlyCreated"]["blobObject"]["blobId"]
        patches = {item["identifier"]: item for item in body["storedQuiltBlobs"]}
        assert patches["img/logo.png"]["tags"] == {"kind": "image"}
        assert patches["index.html"]["tags"] == {}

        listed = await client.get(f"/v1/quilts/{quilt_id}/patches")
        assert listed.json() == body["storedQuiltBlobs"]

        logo = await client.get(
            f"/v1/blobs/by-quilt-patch-id/{patches['img/logo.png']['quiltPatchId']}"
        )
        assert logo.status_code == 200
        assert logo.content == PNG
        assert logo.headers["content-type"] == "image/png"
        assert logo.headers["x-quilt-patch-identifier"] == "img/logo.png"
        again = await client.get(
            f"/v1/blobs/by-quilt-patch-id/{patches['img/logo.png']['quiltPatchId']}",
            headers={"If-None-Match": logo.headers["etag"]},
        )
        assert again.status_code == 304

        page = await client.get(f"/v1/blobs/by-quilt-id/{quilt_id}/index.html")
        assert page.content == b"<html>hi</html>"
        assert page.headers["content-type"] == "text/plain; charset=utf-8"  # never as a page
        nested = await client.get(f"/v1/blobs/by-quilt-id/{quilt_id}/img/logo.png")
        assert nested.content == PNG
        missing = await client.get(f"/v1/blobs/by-quilt-id/{quilt_id}/nope")
        assert (missing.status_code, missing.json()["error"]["reason"]) == (404, "PATCH_NOT_FOUND")
        bogus = await client.get("/v1/blobs/by-quilt-patch-id/" + "A" * 66)
        assert bogus.status_code in (400, 404)


@pytest.mark.parametrize(
    ("request_kwargs", "reason"),
    [
        ({"content": b"raw bytes"}, "BAD_REQUEST"),
        (_multipart({"not": "a list"}), "QUILT_INVALID"),
        (_multipart([{"identifier": "ghost", "tags": {}}]), "QUILT_INVALID"),
        (_multipart([{"identifier": "index.html", "tags": {"k": 1}}]), "QUILT_INVALID"),
        ({"files": [("_reserved", ("a", b"1", "text/plain"))]}, "QUILT_INVALID"),
    ],
    ids=[
        "not-multipart",
        "metadata-not-list",
        "metadata-unknown-file",
        "tag-not-text",
        "underscore",
    ],
)
async def test_gateway_refuses_bad_quilt_uploads(
    request_kwargs: dict[str, object], reason: str
) -> None:
    service = FakeBlobService()
    app = build_gateway_app(service, GatewayLimits(), GatewayPolicy())
    async with open_app_client(app) as client:
        reply = await client.put("/v1/quilts?epochs=1", **request_kwargs)  # type: ignore[arg-type]
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["reason"] == reason
    assert service.stores == []


async def test_gateway_policy_applies_to_quilts(tmp_path: Path) -> None:
    service = FakeBlobService()
    big = [QuiltFile("small", b"s"), QuiltFile("large", b"L" * 5000)]
    stored = await quilt.store_quilt(service, big, epochs=1, permanent=False)
    small_id, large_id = (entry.patch_id(stored.quilt_id) for entry in stored.patches)
    blocklist = tmp_path / "blocked.txt"
    blocklist.write_text(blob_id_to_text(BlobId(bytes(32))) + "\n")
    policy = GatewayPolicy(max_read_size=1000, blocklist=blocklist)
    app = build_gateway_app(service, GatewayLimits(), policy)
    async with open_app_client(app) as client:
        # The read size limit holds patch by patch, not for the whole quilt.
        assert (await client.get(f"/v1/blobs/by-quilt-patch-id/{small_id}")).content == b"s"
        large = await client.get(f"/v1/blobs/by-quilt-patch-id/{large_id}")
        assert (large.status_code, large.json()["error"]["reason"]) == (
            403,
            "BLOB_ABOVE_READ_LIMIT",
        )
        quilt_text = blob_id_to_text(stored.quilt_id)
        assert (await client.get(f"/v1/quilts/{quilt_text}/patches")).status_code == 200
    blocklist.write_text(quilt_text + "\n")
    app = build_gateway_app(service, GatewayLimits(), GatewayPolicy(blocklist=blocklist))
    async with open_app_client(app) as client:
        for path in [
            f"/v1/blobs/by-quilt-patch-id/{small_id}",
            f"/v1/blobs/by-quilt-id/{quilt_text}/small",
            f"/v1/quilts/{quilt_text}/patches",
        ]:
            reply = await client.get(path)
            assert (reply.status_code, reply.json()["error"]["reason"]) == (451, "BLOB_BLOCKED")
