"""Publisher authentication over real HTTP (walrus_p2p/api/_auth.py, docs/http-api.md
"Publisher authentication"): stores need a single-use bearer JWT within its claims; reads
never need one."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import jwt
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from walrus_p2p.api import AuthPolicy, GatewayLimits, GatewayPolicy, build_gateway_app
from walrus_p2p.api._auth import Authenticator
from walrus_p2p.errors import ConfigError, NetworkError
from walrus_p2p.testing.app_client import open_app_client
from walrus_p2p.testing.fake_service import FakeBlobService

TIMEOUT = 10
SECRET = b"s" * 32
HS256 = AuthPolicy("HS256", SECRET, max_lifetime_seconds=600)


def token(claims: dict[str, Any] | None = None, key: Any = SECRET, alg: str = "HS256") -> str:
    now = int(time.time())
    body: dict[str, Any] = {"exp": now + 300, "iat": now, "jti": f"t-{time.monotonic_ns()}"}
    body.update(claims or {})
    body = {name: value for name, value in body.items() if value is not None}
    return jwt.encode(body, key, algorithm=alg)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def gateway(
    service: FakeBlobService, auth: AuthPolicy | None = HS256
) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    return open_app_client(build_gateway_app(service, GatewayLimits(), GatewayPolicy(auth=auth)))


def reason(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["reason"]


async def test_a_store_needs_a_valid_token_and_a_token_stores_once() -> None:
    fake = FakeBlobService()
    blob_id = fake.put(b"readable by anyone")
    good = token()
    async with gateway(fake) as client:
        with trio.fail_after(TIMEOUT):
            missing = await client.put("/v1/blobs?epochs=1", content=b"abc")
            not_bearer = await client.put(
                "/v1/blobs?epochs=1", content=b"abc", headers={"Authorization": "Basic eA=="}
            )
            forged = await client.put(
                "/v1/blobs?epochs=1", content=b"abc", headers=bearer(token(key=b"x" * 32))
            )
            unsigned = await client.put(
                "/v1/blobs?epochs=1", content=b"abc", headers=bearer(token(alg="none", key=None))
            )
            expired = await client.put(
                "/v1/blobs?epochs=1",
                content=b"abc",
                headers=bearer(token({"exp": int(time.time()) - 60, "iat": None})),
            )
            no_jti = await client.put(
                "/v1/blobs?epochs=1", content=b"abc", headers=bearer(token({"jti": None}))
            )
            no_exp = await client.put(
                "/v1/blobs?epochs=1", content=b"abc", headers=bearer(token({"exp": None}))
            )
            too_long = await client.put(
                "/v1/blobs?epochs=1",
                content=b"abc",
                headers=bearer(token({"exp": int(time.time()) + 86400, "iat": None})),
            )
            calls_before = list(fake.stores)
            stored = await client.put("/v1/blobs?epochs=1", content=b"abc", headers=bearer(good))
            replayed = await client.put("/v1/blobs?epochs=1", content=b"abd", headers=bearer(good))
            read = await client.get(f"/v1/blobs/{blob_id}")  # reads need no token
    assert reason(missing) == (401, "TOKEN_MISSING")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert reason(not_bearer) == (401, "TOKEN_MISSING")
    for refused in (forged, unsigned, no_jti, no_exp, too_long):
        assert reason(refused) == (401, "TOKEN_INVALID"), refused.text
    assert reason(expired) == (401, "TOKEN_EXPIRED")
    assert calls_before == []  # nothing refused reached the network
    assert stored.status_code == 200
    assert reason(replayed) == (401, "TOKEN_REPLAYED")
    assert len(fake.stores) == 1
    assert read.status_code == 200


async def test_claims_bound_epochs_and_size() -> None:
    fake = FakeBlobService()
    async with gateway(fake) as client:
        with trio.fail_after(TIMEOUT):
            exact = token({"epochs": 3, "size": 3})
            wrong_epochs = await client.put(
                "/v1/blobs?epochs=2", content=b"abc", headers=bearer(exact)
            )
            wrong_size = await client.put(
                "/v1/blobs?epochs=3", content=b"abcd", headers=bearer(exact)
            )
            right = await client.put("/v1/blobs?epochs=3", content=b"abc", headers=bearer(exact))
            bounded = token({"max_epochs": 5, "max_size": 10})
            too_many = await client.put(
                "/v1/blobs?epochs=6", content=b"abc", headers=bearer(bounded)
            )

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(4):
                    yield b"abc"

            too_big_chunked = await client.put(
                "/v1/blobs?epochs=5", content=chunks(), headers=bearer(bounded)
            )
            within = await client.put(
                "/v1/blobs?epochs=5", content=b"x" * 10, headers=bearer(bounded)
            )
    assert reason(wrong_epochs) == (403, "TOKEN_LIMIT_EXCEEDED")
    assert reason(wrong_size) == (403, "TOKEN_LIMIT_EXCEEDED")
    assert right.status_code == 200  # refusals gave the token back
    assert reason(too_many) == (403, "TOKEN_LIMIT_EXCEEDED")
    assert reason(too_big_chunked) == (403, "TOKEN_LIMIT_EXCEEDED")
    assert within.status_code == 200
    assert [size for size, _, _ in fake.stores] == [3, 10]


async def test_a_failed_store_gives_the_token_back() -> None:
    fake = FakeBlobService()
    fake.failure = NetworkError("down")
    once = token()
    async with gateway(fake) as client:
        with trio.fail_after(TIMEOUT):
            failed = await client.put("/v1/blobs?epochs=1", content=b"abc", headers=bearer(once))
            fake.failure = None
            retried = await client.put("/v1/blobs?epochs=1", content=b"abc", headers=bearer(once))
    assert reason(failed) == (502, "NETWORK_ERROR")
    assert retried.status_code == 200


async def test_eddsa_tokens() -> None:
    private = Ed25519PrivateKey.generate()
    public_pem = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    policy = AuthPolicy("EdDSA", public_pem)
    fake = FakeBlobService()
    async with gateway(fake, policy) as client:
        with trio.fail_after(TIMEOUT):
            signed = await client.put(
                "/v1/blobs?epochs=1",
                content=b"abc",
                headers=bearer(token(key=private, alg="EdDSA")),
            )
            other = await client.put(
                "/v1/blobs?epochs=1",
                content=b"abc",
                headers=bearer(token(key=Ed25519PrivateKey.generate(), alg="EdDSA")),
            )
            # A token of another algorithm (HS256) is refused by an EdDSA gateway.
            confused = await client.put(
                "/v1/blobs?epochs=1", content=b"abc", headers=bearer(token(key=b"k" * 32))
            )
            document = (await client.get("/v1/api")).json()
    assert signed.status_code == 200
    assert reason(other) == (401, "TOKEN_INVALID")
    assert reason(confused) == (401, "TOKEN_INVALID")
    store = document["paths"]["/v1/blobs"]["put"]
    assert store["security"] == [{"publisherJwt": []}]
    assert {"401", "403"} <= set(store["responses"])
    assert document["components"]["securitySchemes"]["publisherJwt"]["scheme"] == "bearer"


async def test_without_a_key_stores_are_open_and_the_document_says_so() -> None:
    fake = FakeBlobService()
    async with gateway(fake, None) as client:
        with trio.fail_after(TIMEOUT):
            stored = await client.put("/v1/blobs?epochs=1", content=b"abc")
            document = (await client.get("/v1/api")).json()
    assert stored.status_code == 200
    assert "security" not in document["paths"]["/v1/blobs"]["put"]


def test_used_ids_are_bounded_and_forgotten_after_expiry() -> None:
    authenticator = Authenticator(AuthPolicy("HS256", SECRET, max_tokens_remembered=2))
    now = time.time()
    for number in range(2):
        grant = authenticator.admit(
            "Bearer " + token({"jti": f"id-{number}", "exp": int(now) + 30}), now
        )
        authenticator.used(grant)
    from walrus_p2p.api._errors import ApiError

    with pytest.raises(ApiError) as refused:
        authenticator.admit("Bearer " + token({"jti": "id-3", "exp": int(now) + 30}), now)
    assert refused.value.status == 429
    later = now + 60
    fresh = jwt.encode({"jti": "id-4", "exp": int(later) + 30}, SECRET, algorithm="HS256")
    authenticator.admit("Bearer " + fresh, later)
    assert authenticator.remembered == 0  # both expired ids were forgotten


@pytest.mark.parametrize(
    ("algorithm", "key", "message"),
    [
        ("HS256", b"short", "at least 32 bytes"),
        ("RS256", SECRET, "must be one of"),
        ("EdDSA", b"not pem", "not a PEM public key"),
    ],
)
def test_bad_policies_are_refused(algorithm: str, key: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AuthPolicy(algorithm, key)
