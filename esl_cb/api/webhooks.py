"""Webhooks: each callback's outcome POSTed to its token's HTTPS URL, at least once.

When a callback ends, migration 0008's trigger writes one row per token to tell into
`webhook_outbox`, in the transaction that ended it: the outcome is durable however the API process
fares. This loop (a thread of the API process) sends the due rows, each signed with its webhook's
secret: header X-EslCb-Signature: sha256=<hex HMAC-SHA256 of the body>. A 2xx answer marks a row
delivered; anything else (an error, a timeout, a refused connection) tries it again after
webhook_retry seconds, doubled each time up to an hour, until webhook_give_up has passed (then it
is given up, and logged). A receiver may get a delivery twice (sent, then the API stopped before
marking it): X-EslCb-Delivery is the same each time, so it can tell."""
from __future__ import annotations

import logging
import random
import threading
from datetime import timedelta

import httpx

from esl_cb.app.tokens import sign
from esl_cb.db.api_records import Due
from esl_cb.db.store import utcnow

from .views import Services

log = logging.getLogger(__name__)
MAX_BACKOFF = 3600.0
PURGE_EVERY = 600.0            # seconds between purges: idempotency keys past 24 h, events past event_log_hours
SIGNATURE_HEADER = "X-EslCb-Signature"


class Deliverer:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.settings = svc.settings
        self.records = svc.records
        self.woken = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="esl-cb-webhooks", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.woken.set()
        if self.thread.is_alive():
            self.thread.join(5)

    def on_event(self, doc: dict) -> None:
        """From the event listener: a callback ended, so a delivery may be due now."""
        if doc.get("kind") == "contact" and doc.get("state") == "ended" and doc.get("callback"):
            self.woken.set()

    def _run(self) -> None:
        verify = self.settings.webhook_ca or True
        since_purge = PURGE_EVERY
        with httpx.Client(verify=verify, timeout=self.settings.webhook_timeout, follow_redirects=False,
                          headers={"User-Agent": "esl-cb webhooks"}) as client:
            while not self.stopping.is_set():
                try:
                    sent = self.deliver_due(client)
                    if since_purge >= PURGE_EVERY:
                        self.records.purge_idempotency()
                        self.records.purge_events(self.settings.event_log_hours)
                        since_purge = 0.0
                except Exception as e:              # the database away: try again in a moment
                    log.warning("webhooks: %s", e)
                    sent = 0
                if sent:
                    continue
                self.woken.wait(1.0)
                self.woken.clear()
                since_purge += 1.0

    def deliver_due(self, client: httpx.Client) -> int:
        due = self.records.due_deliveries(lease=self.settings.webhook_timeout * 3)
        for d in due:
            if self.stopping.is_set():
                break
            self._send(client, d)
        return len(due)

    def _send(self, client: httpx.Client, d: Due) -> None:
        if not d.url or not d.secret:
            self.records.delivery_failed(d.id, "the token has no webhook any more", None)
            return
        body = d.body.encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(d.secret, body),
                   "X-EslCb-Delivery": str(d.id), "X-EslCb-Event": "callback.ended"}
        try:
            answer = client.post(d.url, content=body, headers=headers)
            error = None if 200 <= answer.status_code < 300 else f"HTTP {answer.status_code}"
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}: {e}"
        if error is None:
            self.records.delivered(d.id)
            log.info("webhook %s: contact %s's outcome delivered to %s", d.id, d.contact_id, d.url)
            return
        now = utcnow()
        if now - d.created_at > timedelta(seconds=self.settings.webhook_give_up):
            self.records.delivery_failed(d.id, error, None)
            log.error("webhook %s: contact %s's outcome given up after %d attempts (%s)", d.id, d.contact_id,
                      d.attempts + 1, error)
            return
        wait = min(self.settings.webhook_retry * 2 ** d.attempts, MAX_BACKOFF) * random.uniform(0.9, 1.1)
        self.records.delivery_failed(d.id, error, now + timedelta(seconds=wait))
        log.warning("webhook %s: contact %s to %s failed (%s); again in %.1fs", d.id, d.contact_id, d.url, error, wait)
