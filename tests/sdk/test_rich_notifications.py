"""Rich change notifications, decrypted by an independent implementation.

The subscription is created through the official Python Graph SDK; the receiver decrypts each
notification with Python's `cryptography`, following Graph's documented steps exactly
(https://learn.microsoft.com/graph/change-notifications-with-resource-data):
1. RSA-OAEP (SHA-1) decrypts `dataKey` with the certificate's private key -> symmetric key;
2. HMAC-SHA256(symmetric key, base64-decoded `data`) must equal `dataSignature`;
3. AES-CBC with PKCS7 padding and IV = the first 16 bytes of the key decrypts `data`.
"""
from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import jwt
import pytest
from conftest import TENANT
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID
from msgraph.generated.models.subscription import Subscription
from msgraph.generated.users.item.presence.set_presence.set_presence_post_request_body import (
    SetPresencePostRequestBody,
)


def make_certificate() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "presenced-test-receiver")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.DER)


def decrypt(key: rsa.RSAPrivateKey, content: dict) -> dict:
    symmetric = key.decrypt(
        base64.b64decode(content["dataKey"]),
        asym_padding.OAEP(mgf=asym_padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
    )
    ciphertext = base64.b64decode(content["data"])
    expected = hmac.new(symmetric, ciphertext, hashlib.sha256).digest()
    assert hmac.compare_digest(expected, base64.b64decode(content["dataSignature"])), "signature mismatch"
    decryptor = Cipher(algorithms.AES(symmetric), modes.CBC(symmetric[:16])).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return json.loads(unpadder.update(padded) + unpadder.finalize())


class Receiver:
    """A webhook endpoint: answers the validation handshake and keeps every notification item."""

    def __init__(self) -> None:
        self.items: list[dict] = []
        self.posts: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                token = parse_qs(urlparse(self.path).query).get("validationToken")
                if token:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    self.wfile.write(token[0].encode())
                    return
                post = json.loads(body)
                receiver.posts.append(post)
                receiver.items.extend(post["value"])
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/notify"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.items) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(self.items) >= count, f"expected {count} notifications, got {self.items}"
        return self.items


def test_rich_notifications_decrypt_with_graphs_documented_algorithm(server, mint_token, graph, new_user):
    private_key, cert_der = make_certificate()
    receiver = Receiver()
    user = new_user()
    subscriber = graph(mint_token(user=new_user(), scopes=["Presence.Read.All"]))
    writer = graph(mint_token())

    async def scenario() -> None:
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=50)
        created = await subscriber.subscriptions.post(
            Subscription(
                change_type="updated",
                notification_url=receiver.url,
                resource=f"/communications/presences?$filter=id in ('{user}')",
                expiration_date_time=expiry,
                client_state="rich-secret",
                include_resource_data=True,
                encryption_certificate=base64.b64encode(cert_der).decode(),
                encryption_certificate_id="receiver-cert-1",
            )
        )
        assert created.id and created.include_resource_data is True

        await writer.users.by_user_id(user).presence.set_presence.post(
            SetPresencePostRequestBody(
                session_id="rich-app",
                availability="DoNotDisturb",
                activity="Presenting",
                expiration_duration=datetime.timedelta(hours=1),
            )
        )
        [item] = await receiver.wait_for(1)
        assert item["subscriptionId"] == created.id
        assert item["clientState"] == "rich-secret"
        content = item["encryptedContent"]
        assert content["encryptionCertificateId"] == "receiver-cert-1"
        assert content["encryptionCertificateThumbprint"].upper() == hashlib.sha1(cert_der).hexdigest().upper()
        data = decrypt(private_key, content)
        assert data["id"] == user
        assert data["availability"] == "DoNotDisturb"
        assert data["activity"] == "Presenting"
        assert data["@odata.type"] == "#microsoft.graph.presence"
        assert data["sequenceNumber"] == item["resourceData"]["sequenceNumber"]

        # validationTokens, checked as Microsoft's guidance says (signature against the issuer's
        # published keys, audience = our app id, issuer, expiry, appid = Graph change tracking),
        # with the keys fetched from presenced instead of login.microsoftonline.com.
        [token] = receiver.posts[0]["validationTokens"]
        signing_key = jwt.PyJWKClient(f"{server.base_url}/common/discovery/v2.0/keys").get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            signing_key.key,
            algorithms=["RS256"],
            audience=created.application_id,
            issuer=f"https://sts.windows.net/{TENANT}/",
            options={"require": ["exp", "iat", "nbf", "aud", "iss"]},
        )
        assert claims["appid"] == "0bf30f3b-4a52-48df-9a82-234910c4a086"
        with pytest.raises(jwt.InvalidAudienceError):
            jwt.decode(token, signing_key.key, algorithms=["RS256"], audience="another-app")

        # Every notification uses a fresh symmetric key.
        await writer.users.by_user_id(user).presence.set_presence.post(
            SetPresencePostRequestBody(session_id="rich-app", availability="Away", activity="Away")
        )
        first, second = (await receiver.wait_for(2))[:2]
        assert first["encryptedContent"]["dataKey"] != second["encryptedContent"]["dataKey"]
        assert decrypt(private_key, second["encryptedContent"])["availability"] == "Away"

    try:
        asyncio.run(scenario())
    finally:
        receiver.httpd.shutdown()
