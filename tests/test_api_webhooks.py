"""Webhooks (issue 19): each callback's outcome POSTed, signed, to its token's HTTPS URL, at least once,
from the durable outbox: a receiver that is down first and up later still gets it."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from sqlalchemy import text

from esl_cb.db.store import Store

from .api_helpers import ApiProcess, make_token
from .fixtures import wait_until
from .harness import TABLES
from .procs import free_port


def self_signed(tmp_path):
    """A certificate for 127.0.0.1 and its key, made here (cryptography), as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "receiver.pem", tmp_path / "receiver.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Receiver:
    """An HTTPS server that records what it is sent; `fail_first` answers 500 to that many first."""

    def __init__(self, port: int, cert, key, fail_first: int = 0) -> None:
        self.got: list[tuple[dict, bytes]] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.got.append((dict(self.headers), body))
                failing = len(receiver.got) <= receiver.fail_first
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args):
                pass
        self.server = HTTPServer(("127.0.0.1", port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def store(pg_url):
    st = Store(pg_url)
    with st.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    st.add_skill("support")
    yield st
    st.close()


def outbox(store: Store) -> list:
    with store.engine.connect() as conn:
        return conn.execute(text("SELECT * FROM webhook_outbox ORDER BY id")).mappings().all()


def test_an_outcome_reaches_a_receiver_that_was_down_signed_and_once_marked(store, pg_url, tmp_path):
    cert, key = self_signed(tmp_path)
    port = free_port()
    url = f"https://127.0.0.1:{port}/esl-cb"
    crm, crm_hook = make_token(store, "crm", "booking", webhook=url)
    other, _ = make_token(store, "other", "booking", webhook=f"https://127.0.0.1:{port}/other")
    wall, wall_hook = make_token(store, "wall", "supervisor", webhook=url + "?all")
    api = ApiProcess(tmp_path, pg_url, "--rate-limit", "0", "--webhook-ca", str(cert), "--webhook-retry", "0.2")
    receiver = None
    try:
        with api.client(crm) as c:
            cid = c.post("/api/v1/callbacks", json={"number": "+13125550100", "skill": "support"}).json()["id"]
            assert c.delete(f"/api/v1/callbacks/{cid}").status_code == 200
        # The end of the callback wrote one row per token to tell: its booker and the supervisor, not `other`.
        rows = outbox(store)
        assert sorted(r["token_id"] for r in rows) == [1, 3]
        wait_until(lambda: all(r["attempts"] >= 2 for r in outbox(store)), 15, what="two failed attempts each")
        assert all("ConnectError" in r["last_error"] and r["delivered_at"] is None for r in outbox(store))

        receiver = Receiver(port, cert, key, fail_first=1)           # up now; its first answer is a 500
        wait_until(lambda: all(r["delivered_at"] for r in outbox(store)), 15, what="both delivered")
        by_path = {h["X-EslCb-Delivery"]: (h, b) for h, b in receiver.got}
        assert len(receiver.got) == 3 and len(by_path) == 2             # the 500 was tried again
        for row, secret in zip(sorted(outbox(store), key=lambda r: r["token_id"]), (crm_hook, wall_hook)):
            headers, body = by_path[str(row["id"])]
            expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            assert headers["X-EslCb-Signature"] == expected
            assert headers["X-EslCb-Event"] == "callback.ended" and headers["Content-Type"] == "application/json"
            doc = json.loads(body)
            assert (doc["event"], doc["id"], doc["outcome"], doc["number"], doc["skill"]) == \
                ("callback.ended", cid, "cancelled", "+13125550100", "support")
        assert len(receiver.got) == 3                                     # nothing more once delivered
    finally:
        api.stop()
        if receiver is not None:
            receiver.stop()
