"""Prometheus metrics for a running controller (esl-cb run --metrics-port N)."""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import gevent
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from sqlalchemy import func, or_, select, text
from sqlalchemy.exc import SQLAlchemyError

from esl_cb.db.models import Agent, AgentSkill, Contact, Skill
from esl_cb.db.models import ControllerMember as ControllerRow

if TYPE_CHECKING:
    from .service import Controller

log = logging.getLogger(__name__)
CONTACT_STATES = ("arrived", "queued", "offered", "callback_queued", "accepted", "dialling", "connected")
AGENT_STATES = ("LoggedOut", "Available", "Offered", "OnCall", "WrapUp", "Refused", "OnBreak", "Unavailable")


class Metrics:
    def __init__(self, controller: "Controller", registry: CollectorRegistry | None = None) -> None:
        self.controller = controller
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("esl_cb_queue_depth", "Contacts waiting for an agent", ["skill"], registry=r)
        self.contacts = Gauge("esl_cb_contacts", "Open contacts by state", ["state"], registry=r)
        self.callbacks = Gauge("esl_cb_callbacks", "Open callbacks by state", ["state"], registry=r)
        self.agents = Gauge("esl_cb_agents", "Agents by state", ["state"], registry=r)
        self.ports = Gauge("esl_cb_ports_in_use", "Callback voice ports in use", registry=r)
        self.port_limit = Gauge("esl_cb_ports_limit", "Configured callback port limit", registry=r)
        self.dials = Counter("esl_cb_dial_outcomes", "Callback dial outcomes", ["result"], registry=r)
        self.reconnects = Counter("esl_cb_esl_reconnects", "Reconnections to FreeSWITCH", registry=r)
        self.loop_lag = Gauge("esl_cb_event_loop_lag_seconds", "How late a 100 ms timer fired, last sample",
                              registry=r)
        self.loop_lag_max = Gauge("esl_cb_event_loop_lag_max_seconds", "Worst timer lateness in the last "
                                  "10 s", registry=r)
        # CallDelaySec precision as the controller sees it: due time -> originate sent.
        self.dial_late = Histogram("esl_cb_callback_dial_late_seconds", "How long after its CallDelaySec due "
                                   "time a callback's originate was sent", registry=r,
                                   buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0))
        self.policy_refusals = Counter("esl_cb_policy_refusals", "Callbacks the destination policy refused",
                                       ["stage", "rule"], registry=r)
        self.refused_connections = Counter("esl_cb_outbound_socket_refused", "Connections to our outbound-socket "
                                           "server from addresses not in --allow-from", registry=r)
        # The time-critical path as the controller sees it (issue 12): an agent's answer reaching the
        # controller -> the callback accepted and its dial prepared (or the live caller bridged), and
        # the customer's answer -> bridged to the agent.
        self.answer_handled = Histogram("esl_cb_answer_handled_seconds", "From an answer event's arrival to "
                                        "its handling done (leg=agent: accepted and dial prepared, or bridged "
                                        "live; leg=callback: customer bridged)", ["leg"], registry=r,
                                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0))
        controller.legs.answer_timing = lambda leg, seconds: self.answer_handled.labels(leg).observe(seconds)
        # The offer's path on this controller (issue 18): a NOTIFY's arrival -> the claim it caused
        # starts; the claim (found a pair or not: with several controllers, one woken for nothing, or one
        # that lost the race); the claim -> the agent's originate sent.
        fine = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0)
        self.claims = Counter("esl_cb_claims", "Claims run (esl_cb_claim), by whether they found a pair to offer",
                              ["found"], registry=r)
        self.claim_seconds = Histogram("esl_cb_claim_seconds", "Wall time of one claim as the controller sees it",
                                       ["found"], registry=r, buckets=fine)
        self.notify_to_claim = Histogram("esl_cb_notify_to_claim_seconds", "From a NOTIFY's arrival at the LISTEN "
                                         "session to the start of the claim it woke", registry=r, buckets=fine)
        self.claim_to_originate = Histogram("esl_cb_claim_to_originate_seconds", "From a claim's end to its agent's "
                                            "originate written to the switch", registry=r, buckets=fine)
        self.wakeups = Counter("esl_cb_notify_wakeups", "NOTIFYs that woke the dispatcher: now (this controller "
                               "was chosen to claim first) or later (another was; controller/wakeups.py)", ["when"],
                               registry=r)
        for when in ("now", "later"):
            self.wakeups.labels(when)
        controller.wakeups.counted = lambda when: self.wakeups.labels(when).inc()
        controller.dispatcher.claim_timing = self._claim_timing
        controller.dispatcher.originate_timing = self.claim_to_originate.observe
        for found in ("yes", "no"):
            self.claims.labels(found)
            self.claim_seconds.labels(found)
        self.switch_refusals = Counter("esl_cb_switch_refusals", "Originates FreeSWITCH refused because it was "
                                       "full (max-sessions, sessions-per-second, RTP ports)", registry=r)
        self.backoff = Gauge("esl_cb_dispatch_backoff_seconds", "The dispatcher's current pause after the switch "
                             "refused calls (0: offering normally)", registry=r)
        self.greenlet_restarts = Counter("esl_cb_greenlet_restarts", "Supervised greenlets restarted after they "
                                         "died", ["greenlet"], registry=r)
        self.step_failures = Counter("esl_cb_step_failures", "Leg handlers that failed half way with something "
                                     "other than the database (the contact is reconciled)", ["leg", "event"],
                                     registry=r)
        # Admission control (controller/admission.py): new callers held while the event loop is late.
        self.admission_delayed = Counter("esl_cb_admission_delayed", "New callers who waited before their first "
                                         "prompt because the event loop was late (admission control)", registry=r)
        self.admission_waiting = Gauge("esl_cb_admission_waiting", "New callers waiting now to start (admission "
                                       "control)", registry=r)
        self.db_statements = Counter("esl_cb_db_statements", "SQL statements sent to the database", registry=r)
        # For the alerts of deploy/prometheus/esl-cb.rules.yml and the dashboard.
        self.esl_connected = Gauge("esl_cb_esl_connected", "1 while connected to FreeSWITCH's event socket",
                                   registry=r)
        self.database_up = Gauge("esl_cb_database_up", "1 when the last sample reached the database", registry=r)
        self.notify_queue = Gauge("esl_cb_notification_queue_usage", "Fraction of PostgreSQL's NOTIFY queue in use "
                                  "(pg_notification_queue_usage()); full, every NOTIFY and so every change of "
                                  "state fails: a LISTEN session that stopped reading holds it", registry=r)
        self.heartbeat_age = Gauge("esl_cb_heartbeat_age_seconds", "Seconds since this controller's heartbeat "
                                   "was last stored (past heartbeat_timeout other controllers take its contacts)",
                                   registry=r)
        self.skill_open = Gauge("esl_cb_skill_open", "1 while the skill's opening hours are open", ["skill"],
                                registry=r)
        self.skill_agents = Gauge("esl_cb_skill_agents", "Agents with the skill, by state", ["skill", "state"],
                                  registry=r)
        self.oldest_callback = Gauge("esl_cb_callback_oldest_wait_seconds", "How long the oldest due callback "
                                     "of the skill has waited for an agent during its open hours (0: none "
                                     "waits, or the skill is closed)", ["skill"], registry=r)
        self.callback_target = Gauge("esl_cb_callback_wait_target_seconds", "How long a due callback of the skill "
                                     "may wait for an agent (--callback-wait-target)", ["skill"], registry=r)
        self._heartbeat_at: datetime | None = None
        # When each skill opened, as this controller saw it: a callback waiting since before the
        # opening has waited only since then (no alert each morning for the night's callbacks).
        self._opened_at: dict[str, datetime | None] = {}
        self.port_limit.set(controller.settings.ports)
        from sqlalchemy import event as sa_event

        sa_event.listen(controller.store.engine, "before_cursor_execute",
                        lambda *args, **kw: self.db_statements.inc())
        for s in CONTACT_STATES:
            self.contacts.labels(s)
        for s in AGENT_STATES:
            self.agents.labels(s)
        self.dials.labels("answered")
        # Series at 0 from the start (a counter's first increase counts, the dashboard shows them).
        for leg in ("agent", "callback"):
            self.answer_handled.labels(leg)
        for name in controller.supervisor.greenlets:
            self.greenlet_restarts.labels(name)
        self._greenlets: list[gevent.Greenlet] = []

    def _claim_timing(self, found: bool, seconds: float, since_notify: float | None) -> None:
        label = "yes" if found else "no"
        self.claims.labels(label).inc()
        self.claim_seconds.labels(label).observe(seconds)
        if since_notify is not None:
            self.notify_to_claim.observe(since_notify)

    def start(self, port: int) -> int:
        server, _thread = start_http_server(port, addr="127.0.0.1", registry=self.registry)
        self._greenlets = [gevent.spawn(self._sample_loop), gevent.spawn(self._lag_loop)]
        return server.server_port

    def stop(self) -> None:
        for g in self._greenlets:
            g.kill(block=False)

    def _lag_loop(self) -> None:
        worst, window_start = 0.0, time.monotonic()
        while True:
            t = time.monotonic()
            gevent.sleep(0.1)
            lag = max(time.monotonic() - t - 0.1, 0.0)
            self.loop_lag.set(lag)
            worst = max(worst, lag)
            self.loop_lag_max.set(worst)
            if time.monotonic() - window_start > 10:
                worst, window_start = 0.0, time.monotonic()

    def _sample_loop(self) -> None:
        while True:
            self.esl_connected.set(1 if self.controller.esl_ready.is_set() else 0)
            try:
                self.sample()
                self.database_up.set(1)
            except SQLAlchemyError as e:
                self.database_up.set(0)
                log.warning("metrics: database unavailable (%s)", type(e).__name__)
            if self._heartbeat_at is not None:       # ages on while the database is away
                self.heartbeat_age.set(max((datetime.now(timezone.utc) - self._heartbeat_at).total_seconds(), 0))
            gevent.sleep(1.0)

    def sample(self) -> None:
        c = self.controller
        with c.store.engine.connect() as conn:
            by_state = dict(conn.execute(text("SELECT state, count(*) FROM contacts WHERE state <> 'ended' "
                                              "GROUP BY state")).all())
            cb_state = dict(conn.execute(text("SELECT state, count(*) FROM contacts WHERE state <> 'ended' "
                                              "AND callback_requested GROUP BY state")).all())
            depth = conn.execute(text("SELECT s.name, count(*) FROM contacts c JOIN skills s ON s.id = c.skill_id "
                                      "WHERE c.state IN ('queued', 'callback_queued') GROUP BY s.name")).all()
            agents = dict(conn.execute(text("SELECT state, count(*) FROM agents GROUP BY state")).all())
            skills = conn.execute(select(Skill.name, Skill.callbacks_open)).all()
            skill_agents = conn.execute(select(Skill.name, Agent.state, func.count()).select_from(AgentSkill)
                                        .join(Skill, Skill.id == AgentSkill.skill_id)
                                        .join(Agent, Agent.id == AgentSkill.agent_id)
                                        .group_by(Skill.name, Agent.state)).all()
            now = datetime.now(timezone.utc)
            since = func.min(func.coalesce(Contact.not_before, Contact.callback_requested_at))
            oldest = conn.execute(select(Skill.name, since).join(Skill, Skill.id == Contact.skill_id).where(
                Contact.state == "callback_queued", or_(Contact.not_before.is_(None), Contact.not_before <= now))
                .group_by(Skill.name)).all()
            beat = conn.execute(select(ControllerRow.heartbeat_at).where(
                ControllerRow.id == c.settings.controller_id)).scalar()
            if conn.dialect.name == "postgresql":
                self.notify_queue.set(conn.execute(text("SELECT pg_notification_queue_usage()")).scalar() or 0.0)
        for s in CONTACT_STATES:
            self.contacts.labels(s).set(by_state.get(s, 0))
            self.callbacks.labels(s).set(cb_state.get(s, 0))
        waiting = dict(depth)
        default_target, targets = c.settings.callback_wait_targets()
        oldest_since = {name: _utc(at) for name, at in oldest if at is not None}
        per_skill = {(name, state): n for name, state, n in skill_agents}
        for skill, is_open in skills:
            self.queue_depth.labels(skill).set(waiting.get(skill, 0))     # 0 once a queue empties
            self.skill_open.labels(skill).set(1 if is_open else 0)
            for s in AGENT_STATES:
                self.skill_agents.labels(skill, s).set(per_skill.get((skill, s), 0))
            if not is_open:
                self._opened_at[skill] = now          # opens at the first sample that finds it open
            elif skill not in self._opened_at:
                self._opened_at[skill] = None         # open when this controller started: since unknown
            opened = self._opened_at[skill]
            since_at = oldest_since.get(skill)
            waited = (now - max(since_at, opened) if opened else now - since_at).total_seconds() if since_at else 0
            self.oldest_callback.labels(skill).set(max(waited, 0) if is_open else 0)
            self.callback_target.labels(skill).set(targets.get(skill, default_target))
        for s in AGENT_STATES:
            self.agents.labels(s).set(agents.get(s, 0))
        self.ports.set(c.ports_in_use)
        if beat is not None:
            self._heartbeat_at = _utc(beat)


def _utc(at: datetime) -> datetime:
    """SQLite hands back naive times (stored as UTC)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)
