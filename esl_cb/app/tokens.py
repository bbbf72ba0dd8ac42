"""The HTTP API's bearer tokens: made (the secret shown once, only its SHA-256 kept), listed,
revoked, given a webhook; and the check of a secret a request brings."""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from esl_cb.db.api_records import ROLES, ApiRecords, Token
from esl_cb.db.store import NotFound, Store
from esl_cb.domain.errors import InvalidInput

from .database import database_errors

PREFIX = "ecb_"                     # so a leaked token is recognisable (secret scanners, logs)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def sign(secret: str, body: bytes) -> str:
    """The webhook signature of `body`: 'sha256=' + hex HMAC-SHA256 with the webhook's secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class NewToken:
    token: Token
    secret: str                     # shown once; never stored
    webhook_secret: str | None = None


class TokenService:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.records = ApiRecords(store.engine)

    @database_errors
    def create(self, name: str, role: str, agent: str | None = None, webhook_url: str | None = None,
               operator: str | None = None) -> NewToken:
        """A token for `role` (booking | agent | supervisor | admin); an agent token names its agent.
        InvalidInput naming the field; StoreError (conflict) when the name is taken."""
        if not _NAME.fullmatch(name or ""):
            raise InvalidInput(f"name: {name!r}: 1 to 64 letters, digits, '.', '_' or '-'", where="name")
        if role not in ROLES:
            raise InvalidInput(f"role: {role!r} is not one of {', '.join(ROLES)}", where="role")
        if (role == "agent") != bool(agent):
            raise InvalidInput("agent: an agent token names its agent (--agent NAME), and only an agent token does",
                               where="agent")
        if agent:
            try:
                self.store.agent(agent)
            except NotFound:
                raise InvalidInput(f"agent: no agent named {agent!r} (esl-cb agent add)", where="agent") from None
        url = check_webhook_url(webhook_url) if webhook_url else None
        secret = PREFIX + secrets.token_urlsafe(32)
        hook_secret = secrets.token_hex(32) if url else None
        token = self.records.create_token(name, role, agent, digest(secret), url, hook_secret, operator)
        return NewToken(token, secret, hook_secret)

    @database_errors
    def list(self) -> list[Token]:
        return self.records.tokens()

    @database_errors
    def revoke(self, name: str, operator: str | None = None) -> Token:
        return self.records.revoke_token(name, operator)

    @database_errors
    def set_webhook(self, name: str, url: str | None, operator: str | None = None) -> str | None:
        """Set (a new signing secret, returned once) or remove (None) a token's webhook."""
        url = check_webhook_url(url) if url else None
        hook_secret = secrets.token_hex(32) if url else None
        self.records.set_webhook(name, url, hook_secret, operator)
        return hook_secret

    @database_errors
    def authenticate(self, secret: str) -> Token | None:
        """The valid token whose secret this is, or None."""
        if not secret.startswith(PREFIX) or len(secret) > 200:
            return None
        return self.records.token_by_secret(digest(secret))


def check_webhook_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme != "https" or not parts.hostname:
        raise InvalidInput(f"webhook: {url!r} is not an https:// URL (outcomes are sent over TLS only)",
                           where="webhook")
    if len(url) > 2000 or any(c in url for c in "\r\n "):
        raise InvalidInput("webhook: the URL is too long or holds spaces or line breaks", where="webhook")
    return url.strip()
