"""A simulator, a controller and a clean database, wired together for end-to-end tests."""
from __future__ import annotations

from sqlalchemy import text

from esl_cb.config import Settings
from esl_cb.controller.service import Controller
from esl_cb.db.store import NotFound, Store
from esl_cb.domain import script as scripts
from esl_cb.domain.states import AgentState
from esl_cb.sim import api
from esl_cb.sim.server import Simulator

from .fixtures import LAB, wait_until

TABLES = ("phone_registrations, api_events, agent_state_history, webhook_outbox, idempotency_keys, api_bookings, callback_assignments, api_tokens, "
          "policy_refusals, policy_overrides, audit_log, callback_attempts, legs, contacts, agent_skills, agents, "
          "skills, controllers, switches")


class Looking:
    """Reading the database of a test (shared by the simulator and real-switch rigs)."""

    store: Store

    def contact(self, contact_id: int = 1):
        return self.store.contact(contact_id)

    def wait_state(self, state: str, contact_id: int = 1, timeout: float = 15.0):
        def reached():
            try:
                c = self.contact(contact_id)
            except NotFound:
                return None
            return c if c.state == state else None
        try:
            return wait_until(reached, timeout, what=f"contact {contact_id} to be {state}")
        except AssertionError as e:
            raise AssertionError(f"{e} (it is {self._safe_state(contact_id)})") from None

    def _safe_state(self, cid: int) -> str:
        try:
            return self.contact(cid).state
        except Exception as e:
            return repr(e)

    def rows(self, sql: str, **params) -> list:
        with self.store.engine.connect() as conn:
            return conn.execute(text(sql), params).mappings().all()

    def count(self, sql: str, **params) -> int:
        with self.store.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def count_attempts_per_contact(self) -> set[int]:
        return {r["n"] for r in self.rows("SELECT contact_id, count(*) AS n FROM callback_attempts "
                                          "GROUP BY contact_id")}


class Harness(Looking):
    def __init__(self, db_url: str, script: scripts.Script | None = None, **settings) -> None:
        self.sim = Simulator(("127.0.0.1", 0), identity=LAB, heartbeat=0, time_scale=settings.pop("time_scale", 1.0))
        self.sim.start()
        self.store = Store(db_url, "test")
        with self.store.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
        base = dict(esl=f"127.0.0.1:{self.sim.port}", listen="127.0.0.1:0", db=db_url,
                    dial_template="sofia/gateway/pstn/{number}", retry_interval=0.5, max_attempts=3,
                    agent_ring_timeout=3, callback_ring_timeout=3, poll_interval=0.2, controller_id="test")
        base.update(settings)
        self.settings = Settings(**base).validate()
        self.controller = Controller(self.settings, self.store, script or scripts.load(scripts.DEFAULT_SCRIPT))
        self.controller.start()
        self.sim.switch.socket_target = ("127.0.0.1", self.controller.listen_port)
        wait_until(self.controller.esl_ready.is_set, 5, what="the controller's ESL connection")

    # -- driving --------------------------------------------------------
    def sim_api(self, line: str) -> str:
        return api.execute(self.sim.switch, "sim", line)

    def agent(self, name: str, number: str, skill: str = "support", answer: float = 0.2,
              available: bool = False) -> int:
        aid = self.store.add_agent(name, f"user/{number}", [skill])
        assert self.sim_api(f"endpoint {number} answer {answer}") == "+OK\n"
        if available:
            self.available(name)
        return aid

    def available(self, name: str) -> None:
        self.store.set_agent_state(name, AgentState.AVAILABLE, list(AgentState))
        self.controller.wake_dispatcher()

    def call(self, from_number: str, to_did: str = "3125557000", plan: str = "") -> str:
        reply = self.sim_api(f"call {from_number} {to_did} {plan}".strip())
        assert reply.startswith("+OK "), reply
        return reply.split()[1]

    def wait_connected(self, contact_id: int = 1, timeout: float = 15.0):
        """Connected and bridged. 'connected' is stored before the bridge: a test that hangs up a leg
        the moment it reads 'connected' races the bridge (a customer gone before it is a counted,
        retried attempt)."""
        c = self.wait_state("connected", contact_id, timeout)
        leg = c.callback_leg_uuid if c.callback_requested else c.caller_uuid

        def bridged() -> bool:
            ch = self.sim.switch.channels.get(leg)
            return ch is not None and ch.peer is not None and ch.peer.uuid == c.agent_leg_uuid
        wait_until(bridged, 5, what=f"contact {contact_id}'s leg {leg} bridged to agent leg {c.agent_leg_uuid}")
        return c

    # -- looking (the simulator's records) ------------------------------
    def originates_to(self, number: str) -> list[dict]:
        return [o for o in self.sim.switch.originates if o["number"] == number]

    def commands(self, prefix: str) -> list[str]:
        return [c for _, _, c in self.sim.switch.command_log if c.startswith(prefix)]

    def close(self) -> None:
        self.controller.stop()
        self.sim.stop()
        self.store.close()
