"""What the HTTP API keeps (migration 0008): its tokens, which token booked which callback, the
first answers of idempotent requests, and the webhooks' outbox. Used by the API process only;
nothing here is on a controller's path (the outbox is filled by a trigger when a callback ends)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from .base import NotFound, StaleState, StoreBase, StoreError, as_utc, utcnow
from .models import ApiBooking, ApiEvent, ApiToken, IdempotencyKey, WebhookDelivery

log = logging.getLogger(__name__)
_RECALL = select(IdempotencyKey.__table__).where(IdempotencyKey.token_id == bindparam("t"),
                                                 IdempotencyKey.key == bindparam("k"))
IDEMPOTENCY_TTL = timedelta(hours=24)
# A keyed request's answer (PostgreSQL): a key past its 24 hours (or left running, status 0) is taken
# over; a live one is not touched and no row comes back. A second insert of a key waits for the
# first one's commit, then finds it: the same refusal.
_ANSWER_PG = text("""
INSERT INTO idempotency_keys AS i (token_id, key, request_sha256, status, response, location, created_at)
VALUES (:t, :k, :sha, :status, :response, :location, :now)
ON CONFLICT (token_id, key) DO UPDATE SET request_sha256 = excluded.request_sha256, status = excluded.status,
    response = excluded.response, location = excluded.location, created_at = excluded.created_at
 WHERE i.created_at < :old OR i.status = 0
RETURNING 1
""")
ROLES = ("booking", "agent", "supervisor", "admin")


@dataclass(frozen=True)
class Token:
    id: int
    name: str
    role: str
    agent: str | None
    created_at: datetime
    revoked_at: datetime | None
    webhook_url: str | None

    @classmethod
    def of(cls, row) -> "Token":
        return cls(row.id, row.name, row.role, row.agent, as_utc(row.created_at), as_utc(row.revoked_at),
                   row.webhook_url)


class IdempotencyKeyInUse(StoreError):
    """Another request with the same Idempotency-Key committed first (the API then answers with what
    it kept), or has not finished: retry in a moment."""

    code = "idempotency_key_in_use"
    http_status = 409
    title = "a request with this Idempotency-Key is still running"


@dataclass(frozen=True)
class Remembered:
    """What an Idempotency-Key holds: `state` new (nothing: go on), replay (the first answer is
    `status`/`response`/`location`), mismatch (the key came with another request)."""

    state: str
    status: int = 0
    response: str | None = None
    location: str | None = None


@dataclass(frozen=True)
class Due:
    """A webhook delivery to try now."""

    id: int
    token_id: int
    contact_id: int
    body: str
    attempts: int
    created_at: datetime
    url: str | None
    secret: str | None


class ApiRecords(StoreBase):
    """Tokens, bookings by token, idempotency keys and the webhooks' outbox."""

    # -- tokens ---------------------------------------------------------------------------------
    def create_token(self, name: str, role: str, agent: str | None, secret_sha256: str,
                     webhook_url: str | None = None, webhook_secret: str | None = None,
                     operator: str | None = None) -> Token:
        with self.engine.begin() as conn:
            if conn.execute(select(ApiToken.id).where(ApiToken.name == name)).first() is not None:
                raise StoreError(f"a token named {name!r} exists already; revoke it or pick another name")
            row = conn.execute(insert(ApiToken).values(
                name=name, role=role, agent=agent, secret_sha256=secret_sha256, created_at=utcnow(),
                webhook_url=webhook_url, webhook_secret=webhook_secret).returning(ApiToken.__table__)).one()
            self._audit(conn, operator, "token create", name, f"role {role}" + (f", agent {agent}" if agent else ""))
            return Token.of(row)

    def tokens(self) -> list[Token]:
        with self.engine.connect() as conn:
            return [Token.of(r) for r in conn.execute(select(ApiToken.__table__).order_by(ApiToken.name))]

    def revoke_token(self, name: str, operator: str | None = None) -> Token:
        with self.engine.begin() as conn:
            row = conn.execute(select(ApiToken.__table__).where(ApiToken.name == name).with_for_update()).first()
            if row is None:
                raise NotFound(f"no token named {name!r} (esl-cb token list)", where="name")
            if row.revoked_at is not None:
                raise StaleState(f"token {name!r} was revoked already ({as_utc(row.revoked_at).isoformat()})")
            now = utcnow()
            conn.execute(update(ApiToken).where(ApiToken.id == row.id).values(revoked_at=now))
            self._audit(conn, operator, "token revoke", name)
            return replace(Token.of(row), revoked_at=now)

    def set_webhook(self, name: str, url: str | None, secret: str | None, operator: str | None = None) -> None:
        with self.engine.begin() as conn:
            n = conn.execute(update(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None)).values(
                webhook_url=url, webhook_secret=secret)).rowcount
            if n != 1:
                raise NotFound(f"no valid token named {name!r} (esl-cb token list)", where="name")
            self._audit(conn, operator, "token webhook", name, url or "(none)")

    def token_by_secret(self, secret_sha256: str) -> Token | None:
        """The token with this secret, unless revoked."""
        with (self._autocommit if self._pg else self.engine).connect() as conn:
            row = conn.execute(select(ApiToken.__table__).where(ApiToken.secret_sha256 == secret_sha256,
                                                                ApiToken.revoked_at.is_(None))).first()
        return Token.of(row) if row is not None else None

    # -- bookings by token, and the answers of Idempotency-Keys -------------------------------------
    # Both are written in the booking's own transaction (the tie by the store's schedule_callback, the
    # answer by CallbackService.book_callback's `then`): a callback is never stored without the tie
    # that lets its token see it, nor a keyed request's answer without its callback.
    def booked_by(self, contact_id: int, token_id: int) -> bool:
        with (self._autocommit if self._pg else self.engine).connect() as conn:
            return conn.execute(select(ApiBooking.contact_id).where(
                ApiBooking.contact_id == contact_id, ApiBooking.token_id == token_id)).first() is not None

    def recall(self, token_id: int, key: str, request_sha256: str) -> Remembered:
        """What `key` holds for this token: nothing yet (new), the first answer (replay), or another
        request's (mismatch). One read; a key older than IDEMPOTENCY_TTL is forgotten."""
        with (self._autocommit if self._pg else self.engine).connect() as conn:
            row = conn.execute(_RECALL, {"t": token_id, "k": key}).first()
        if row is None or as_utc(row.created_at) < utcnow() - IDEMPOTENCY_TTL or not row.status:
            return Remembered("new")           # status 0: left by the two-step keys of an earlier version
        if row.request_sha256 != request_sha256:
            return Remembered("mismatch")
        return Remembered("replay", row.status, row.response, row.location)

    @staticmethod
    def answer_key(conn, token_id: int, key: str, request_sha256: str, status: int, response: str,
                   location: str | None) -> None:
        """Keep the answer of a keyed request, in the transaction of what it did. A request with the
        same key that committed meanwhile makes this fail (IdempotencyKeyInUse): its whole
        transaction is undone, and the caller answers with what the other one kept (PostgreSQL makes
        the second insert of a key wait for the first one's commit)."""
        now = utcnow()
        if conn.dialect.name == "postgresql":          # one statement: the delete and insert below as one
            kept = conn.execute(_ANSWER_PG, {"t": token_id, "k": key, "sha": request_sha256, "status": status,
                                             "response": response, "location": location, "now": now,
                                             "old": now - IDEMPOTENCY_TTL}).first()
            if kept is None:
                raise IdempotencyKeyInUse(f"Idempotency-Key {key!r} was answered by another request meanwhile")
            return
        conn.execute(delete(IdempotencyKey).where(IdempotencyKey.token_id == token_id, IdempotencyKey.key == key,
                                                  (IdempotencyKey.created_at < now - IDEMPOTENCY_TTL)
                                                  | (IdempotencyKey.status == 0)))
        try:
            conn.execute(insert(IdempotencyKey).values(token_id=token_id, key=key, request_sha256=request_sha256,
                                                       status=status, response=response, location=location,
                                                       created_at=now))
        except IntegrityError:
            raise IdempotencyKeyInUse(f"Idempotency-Key {key!r} was answered by another request meanwhile") from None

    # -- the live events' log (migration 0012) ----------------------------------------------------------
    def events_after(self, after: int, limit: int, xmin: int | None = None
                     ) -> list[tuple[int, int | None, str]] | None:
        """(id, tx_xmin, document) of the events after event `after`, oldest first, at most
        `limit` + 1 (more than `limit`: too many to replay). With `xmin` (the tx_xmin of event
        `after`), also those at or before it whose transaction may have been in flight then: ids
        commit out of order, such an event may have become visible after `after` was sent (the
        client drops what it had, by event_id). None when event `after` is not kept (pruned, or
        never was): what came after it cannot be known complete."""
        missed = ApiEvent.id > after
        if xmin is not None:
            missed = missed | (ApiEvent.tx_id >= xmin)
        with (self._autocommit if self._pg else self.engine).connect() as conn:
            if conn.execute(select(ApiEvent.id).where(ApiEvent.id == after)).first() is None:
                return None
            return [tuple(r) for r in conn.execute(select(ApiEvent.id, ApiEvent.tx_xmin, ApiEvent.doc).where(
                missed).order_by(ApiEvent.id).limit(limit + 1))]

    def purge_events(self, keep_hours: float) -> int:
        with self.engine.begin() as conn:
            return conn.execute(delete(ApiEvent).where(ApiEvent.at < utcnow() - timedelta(hours=keep_hours))).rowcount

    def purge_idempotency(self) -> int:
        with self.engine.begin() as conn:
            return conn.execute(delete(IdempotencyKey).where(
                IdempotencyKey.created_at < utcnow() - IDEMPOTENCY_TTL)).rowcount

    # -- the webhooks' outbox -----------------------------------------------------------------------
    def due_deliveries(self, limit: int = 20, lease: float = 30.0) -> list[Due]:
        """Deliveries due now, leased for `lease` seconds (another API process skips them meanwhile;
        one that dies leaves them to be tried again when the lease ends)."""
        now = utcnow()
        with self.engine.begin() as conn:
            q = select(WebhookDelivery.id).where(WebhookDelivery.delivered_at.is_(None),
                                                 WebhookDelivery.given_up_at.is_(None),
                                                 WebhookDelivery.next_attempt_at <= now).order_by(
                WebhookDelivery.next_attempt_at).limit(limit)
            if self._pg:
                q = q.with_for_update(skip_locked=True)
            ids = list(conn.execute(q).scalars())
            if not ids:
                return []
            conn.execute(update(WebhookDelivery).where(WebhookDelivery.id.in_(ids)).values(
                next_attempt_at=now + timedelta(seconds=lease)))
            rows = conn.execute(select(WebhookDelivery.__table__, ApiToken.webhook_url, ApiToken.webhook_secret).join(
                ApiToken, ApiToken.id == WebhookDelivery.token_id).where(WebhookDelivery.id.in_(ids)).order_by(
                WebhookDelivery.id)).all()
        return [Due(r.id, r.token_id, r.contact_id, r.body, r.attempts, as_utc(r.created_at), r.webhook_url,
                    r.webhook_secret) for r in rows]

    def delivered(self, delivery_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(
                delivered_at=utcnow(), attempts=WebhookDelivery.attempts + 1, last_error=None))

    def delivery_failed(self, delivery_id: int, error: str, retry_at: datetime | None) -> None:
        """Tried and failed: again at `retry_at`, or never again (None: given up)."""
        values: dict = {"attempts": WebhookDelivery.attempts + 1, "last_error": error[:2000]}
        if retry_at is None:
            values["given_up_at"] = utcnow()
        else:
            values["next_attempt_at"] = retry_at
        with self.engine.begin() as conn:
            conn.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values))

    def deliveries(self, token_id: int | None = None) -> list[dict]:
        with self.engine.connect() as conn:
            q = select(WebhookDelivery.__table__).order_by(WebhookDelivery.id)
            if token_id is not None:
                q = q.where(WebhookDelivery.token_id == token_id)
            return [dict(r._mapping) for r in conn.execute(q)]

    def next_delivery_at(self) -> datetime | None:
        with self.engine.connect() as conn:
            return as_utc(conn.execute(text(
                "SELECT min(next_attempt_at) FROM webhook_outbox WHERE delivered_at IS NULL "
                "AND given_up_at IS NULL")).scalar())
