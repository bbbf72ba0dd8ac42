"""The destination policy's records: operators' overrides, the refusals reports show, and the
audit log of operators' actions (who, what, when)."""
from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import delete, func, insert, or_, select

from .base import StoreBase, StoreError, utcnow
from .models import AuditEntry, PolicyOverride, PolicyRefusal

log = logging.getLogger(__name__)


class PolicyStore(StoreBase):
    """Overrides, refusals and the audit log."""

    # -- overrides ------------------------------------------------------------
    def overridden(self, number: str) -> bool:
        """An operator allowed this number (and the override has not expired)."""
        now = utcnow()
        with self.engine.connect() as conn:
            return conn.execute(select(PolicyOverride.number).where(
                PolicyOverride.number == number,
                or_(PolicyOverride.until.is_(None), PolicyOverride.until > now))).first() is not None

    def add_override(self, number: str, operator: str, reason: str, until: datetime | None = None) -> None:
        if not reason.strip():
            raise StoreError("an override needs a reason (--reason): it goes into the audit log")
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(delete(PolicyOverride).where(PolicyOverride.number == number))
            conn.execute(insert(PolicyOverride).values(number=number, until=until, operator=operator, reason=reason,
                                                       created_at=now))
            self._audit(conn, operator, "policy override", number,
                        f"{reason} (until {until.isoformat() if until else 'removed'})")
        log.warning("operator %s allowed %s past the destination policy: %s", operator, number, reason)

    def remove_override(self, number: str, operator: str) -> None:
        with self.engine.begin() as conn:
            if conn.execute(delete(PolicyOverride).where(PolicyOverride.number == number)).rowcount == 0:
                raise StoreError(f"no override for {number}")
            self._audit(conn, operator, "policy override removed", number, "")

    def overrides(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(PolicyOverride.__table__).order_by(
                PolicyOverride.created_at))]

    def recent_requests(self, number: str) -> int:
        """Callbacks requested for `number` in the last 24 hours (what the per-number limit counts)."""
        from datetime import timedelta

        from .models import Contact
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(Contact).where(
                Contact.callback_number == number, Contact.callback_requested.is_(True),
                Contact.callback_requested_at >= utcnow() - timedelta(days=1),
                or_(Contact.outcome.is_(None), Contact.outcome != "merged"))).scalar()

    # -- refusals -----------------------------------------------------------------
    def record_refusal(self, contact_id: int | None, number: str, calling_number: str, stage: str, rule: str,
                       reason: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(PolicyRefusal).values(at=utcnow(), contact_id=contact_id, number=number,
                                                      calling_number=calling_number or "", stage=stage, rule=rule,
                                                      reason=reason))

    def refusals(self, limit: int = 100) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(PolicyRefusal.__table__).order_by(
                PolicyRefusal.id.desc()).limit(limit))]

    # -- the audit log ---------------------------------------------------------------
    def audit(self, operator: str, action: str, target: str, detail: str = "") -> None:
        with self.engine.begin() as conn:
            self._audit(conn, operator, action, target, detail)

    def audit_log(self, since: datetime | None = None, limit: int = 200) -> list[dict]:
        with self.engine.connect() as conn:
            q = select(AuditEntry.__table__).order_by(AuditEntry.id.desc()).limit(limit)
            if since is not None:
                q = q.where(AuditEntry.at >= since)
            return [dict(r._mapping) for r in conn.execute(q)]
