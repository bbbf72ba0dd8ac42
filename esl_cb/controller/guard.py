"""The destination policy at work (esl_cb/domain/policy.py): asked when a callback is requested and
again before every dial. Each refusal is a log line naming the contact, a metric and a row in
policy_refusals; at request time the Callback action takes OnError and the caller stays on the line.
"""
from __future__ import annotations

import logging

from esl_cb.db.store import DialPlan, PolicyRefused, Store
from esl_cb.domain.policy import DestinationPolicy, Verdict
from esl_cb.domain.runtime import ActionFailed

log = logging.getLogger(__name__)


class CallbackGuard:
    def __init__(self, policy: DestinationPolicy, store: Store) -> None:
        self.policy = policy
        self.store = store
        self.metrics = None

    def request(self, contact_id: int, number: str, calling_number: str, store_it) -> int:
        """Check `number`, then store the callback with `store_it(limits, override)` (rate limits are
        counted there, in the database). Raises ActionFailed (the script's OnError) when refused."""
        verdict = self.policy.check(number)
        override = False
        if not verdict.allowed:
            if self.store.overridden(number):
                override = True
                log.warning("contact %s: %s is refused by the policy (%s) but an operator allowed it",
                            contact_id, number, verdict.reason)
            else:
                self.store.record_refusal(contact_id, number, calling_number, "request", verdict.rule, verdict.reason)
                self._refused(contact_id, "request", verdict.rule, verdict.reason)
                raise ActionFailed(f"callbacks to {number} are not allowed: {verdict.reason}")
        try:
            return store_it(self.policy.limits, override)
        except PolicyRefused as e:
            self._refused(contact_id, "request", e.rule, str(e))
            raise ActionFailed(f"callback to {number} refused: {e}") from None

    def dial_verdict(self, plan: DialPlan) -> Verdict:
        """Before a dial, in memory (the due time has no room for database work): an override granted
        when the callback was requested still holds."""
        return self.policy.check(plan.number, override=plan.override)

    def refused_dial(self, plan: DialPlan, verdict: Verdict) -> None:
        self._refused(plan.contact_id, "dial", verdict.rule, verdict.reason)

    def _refused(self, contact_id: int, stage: str, rule: str, reason: str) -> None:
        log.warning("contact %s: callback refused by the destination policy at %s (%s): %s", contact_id, stage, rule,
                    reason)
        if self.metrics is not None:
            self.metrics.policy_refusals.labels(stage, rule).inc()
