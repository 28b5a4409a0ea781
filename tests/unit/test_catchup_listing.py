"""The record listing that catch-up pages through (pure part of node/catchup.py)."""

from __future__ import annotations

import pytest

from walrus_p2p.node import catchup
from walrus_p2p.node.catchup import list_page


def entries(blobs: int, per_blob: int, size: int = 10) -> dict[bytes, bytes]:
    return {
        bytes([blob]) * 32 + bytes([record]) * 16: bytes([blob, record]) * (size // 2)
        for blob in range(1, blobs + 1)
        for record in range(per_blob)
    }


def page_of(
    data: dict[bytes, bytes], after: bytes | None, limit: int
) -> tuple[list[catchup.BlobRecordsEntry], bytes | None]:
    return list_page(sorted(data), data.get, after, limit)


def test_pages_cover_every_blob_once_in_order() -> None:
    data = entries(10, 3)
    seen: list[bytes] = []
    after = None
    for _ in range(20):
        page, after = page_of(data, after, 3)
        assert len(page) <= 3
        seen.extend(entry.blob_id for entry in page)
        assert all(len(entry.records) == 3 for entry in page)
        if after is None:
            break
    assert seen == [bytes([blob]) * 32 for blob in range(1, 11)]


def test_last_page_has_no_cursor_and_an_exact_fit_ends_the_listing() -> None:
    data = entries(4, 1)
    page, after = page_of(data, None, 4)
    assert len(page) == 4 and after is None
    page, after = page_of(data, None, 3)
    assert len(page) == 3 and after == bytes([3]) * 32
    page, after = page_of(data, after, 3)
    assert [entry.blob_id for entry in page] == [bytes([4]) * 32] and after is None


def test_byte_budget_bounds_a_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catchup, "PAGE_BYTE_BUDGET", 50)
    page, after = page_of(entries(10, 2, size=20), None, 64)
    assert 1 <= len(page) < 10 and after == page[-1].blob_id


def test_records_that_vanished_are_skipped() -> None:
    data = entries(3, 2)
    keys = sorted(data)
    gone = {keys[2], keys[3]}  # both records of blob 2
    page, after = list_page(keys, lambda key: None if key in gone else data[key], None, 10)
    assert [entry.blob_id for entry in page] == [bytes([1]) * 32, bytes([3]) * 32]
    assert after is None
