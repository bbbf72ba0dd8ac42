"""`esl-cb demo`: the simulator and the real controller in one process, under a realistic load.

Callers arrive at random; most wait, some press 1 for a callback, some give up.
Agents answer after a few seconds and talk for a while; some callback numbers
are busy at first. Everything runs --speed times faster than real time: the
simulator scales its delays and the example script's waits are divided too.
"""
from __future__ import annotations

import logging
import random
import re
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import gevent
from sqlalchemy import text

from esl_cb.config import Settings
from esl_cb.controller.service import Controller
from esl_cb.db.migrate import upgrade
from esl_cb.db.store import Store
from esl_cb.domain import script as scripts
from esl_cb.domain.states import AgentState
from esl_cb.sim import api as sim_api
from esl_cb.sim.server import Simulator

log = logging.getLogger(__name__)


@dataclass
class DemoOptions:
    speed: float = 10.0
    callers: int = 30
    agents: int = 3
    duration: float = 60.0          # demo seconds during which callers arrive (real time = duration / speed)
    seed: int = 7
    db: str | None = None


DEMO_OFFER_AFTER = 30.0        # demo seconds of estimated wait past which callers are offered a callback


def scaled_script(speed: float) -> scripts.Script:
    s = scripts.load(scripts.DEFAULT_SCRIPT)
    # Our own waits (music, CallDelaySec) run on the controller's clock: divide them. A menu's
    # TimeoutSec runs in the simulated switch, which already runs `speed` times faster.
    for action in s.actions.values():
        for key in ("MaxDurationSec", "CallDelaySec"):
            if key in action.props:
                action.props[key] = max(float(action.props[key]) / speed, 0.05)
        if action.kind == "If":
            # The estimated wait is in real seconds, from handle times `speed` times shorter: so is
            # the threshold it is compared with. The demo's queue is short (a few agents, a minute of
            # callers), so it offers the callback past 30 s of estimated wait rather than the
            # script's 120 s: otherwise whether anyone is offered one depends on the timing of a run.
            action.props["Condition"] = re.sub(
                r"(\{EWTSec\}\s*[<>]=?\s*)(\d+(?:\.\d+)?)",
                lambda m: f"{m.group(1)}{min(float(m.group(2)), DEMO_OFFER_AFTER) / speed:g}",
                str(action.props["Condition"]))
    return s


class Demo:
    def __init__(self, opts: DemoOptions) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.tmp = None
        if opts.db:
            self.db_url = opts.db
        else:
            self.tmp = tempfile.mkdtemp(prefix="esl-cb-demo-")
            self.db_url = f"sqlite:///{Path(self.tmp) / 'esl-cb.db'}"
        upgrade(self.db_url)
        self.store = Store(self.db_url, "demo")
        with self.store.engine.begin() as conn:
            for table in ("callback_attempts", "legs", "contacts", "agent_skills", "agents", "skills"):
                conn.execute(text(f"DELETE FROM {table}"))
        speed = opts.speed
        self.sim = Simulator(("127.0.0.1", 0), time_scale=1.0 / speed, seed=opts.seed, heartbeat=0).start()
        self.settings = Settings(
            esl=f"127.0.0.1:{self.sim.port}", listen="127.0.0.1:0", db=self.db_url, controller_id="demo",
            retry_interval=30 / speed, max_attempts=3, agent_ring_timeout=15, callback_ring_timeout=20,
            refused_reset=20 / speed, poll_interval=0.2, ports=10).validate()
        self.controller = Controller(self.settings, self.store, scaled_script(speed))
        self.started = time.time()
        self.done_arriving = False

    def sim_cmd(self, line: str) -> str:
        return sim_api.execute(self.sim.switch, "sim", line)

    def setup(self) -> None:
        self.controller.start()
        self.sim.switch.socket_target = ("127.0.0.1", self.controller.listen_port)
        for i in range(1, self.opts.agents + 1):
            name, ext = f"agent{i}", f"{1000 + i}"
            self.store.add_agent(name, f"user/{ext}", ["support"])
            # Answers after 1-4 s, talks 25-60 s (demo time), then hangs up.
            self.sim_cmd(f"endpoint {ext} answer {self.rng.uniform(1, 4):.1f} {self.rng.uniform(25, 60):.0f}")
            self.store.set_agent_state(name, AgentState.AVAILABLE, list(AgentState))
        self.controller.wake_dispatcher()

    def caller_plan(self, number: str) -> str:
        """What this caller will do, in demo seconds after they are answered."""
        r = self.rng.random()
        # The example script's music, "you are number N in line" and the estimated wait (1.5 s each
        # on the simulator), then the menu prompt.
        menu_at = 30 + 1.5 + 1.5 + 1.0
        if r < 0.55:                # asks for a callback
            if self.rng.random() < 0.3:
                self.sim_cmd(f"endpoint +1{number} busy")          # busy at first; answers later
                gevent.spawn_later(self.rng.uniform(40, 90) / self.opts.speed, self.sim_cmd,
                                   f"endpoint +1{number} answer {self.rng.uniform(2, 6):.1f} 40")
            else:
                self.sim_cmd(f"endpoint +1{number} answer {self.rng.uniform(2, 6):.1f} 40")
            return f"dtmf 1 {menu_at + self.rng.uniform(0.2, 2):.1f}"
        if r < 0.7:                 # gives up while waiting
            return f"hangup {self.rng.uniform(10, 80):.1f}"
        return ""                   # waits for an agent as long as it takes

    def arrivals(self) -> None:
        mean_gap = self.opts.duration / max(self.opts.callers, 1)
        for _ in range(self.opts.callers):
            number = f"312555{self.rng.randrange(10000):04d}"
            plan = self.caller_plan(number)
            self.sim_cmd(f"call {number} 3125557000 {plan}".strip())
            gevent.sleep(self.rng.expovariate(1 / mean_gap) / self.opts.speed)
        self.done_arriving = True

    # -- what the operator sees ------------------------------------------------
    def snapshot(self) -> dict:
        now = datetime.now(timezone.utc)
        with self.store.engine.connect() as conn:
            rows = conn.execute(text("SELECT id, state, outcome, callback_requested, attempts, dial_due_at, "
                                     "queued_at, callback_number, original_ani FROM contacts ORDER BY id")).all()
        agents = self.store.agents()
        waiting = [r for r in rows if r.state in ("queued", "callback_queued")]
        callbacks = [r for r in rows if r.callback_requested and r.state != "ended"]
        ended = [r for r in rows if r.state == "ended"]
        return {"now": now, "rows": rows, "agents": agents, "waiting": waiting, "callbacks": callbacks,
                "ended": ended, "ports": self.controller.ports_in_use}

    def render(self, snap: dict):
        from esl_cb.db import queries
        from esl_cb.ui import status_view

        elapsed = (time.time() - self.started) * self.opts.speed
        header = (f"[b]esl-cb demo[/b]  t={elapsed:5.0f}s (x{self.opts.speed:g}, times shown in real seconds)  "
                  f"contacts={len(snap['rows'])}  waiting={len(snap['waiting'])}  ended={len(snap['ended'])}")
        st = queries.status(self.store, self.settings.ports)
        st["ports"]["in_use"] = snap["ports"]
        return status_view(st, header)

    def plain_line(self, snap: dict) -> str:
        elapsed = (time.time() - self.started) * self.opts.speed
        states = {}
        for a in snap["agents"]:
            states[a["state"]] = states.get(a["state"], 0) + 1
        return (f"t={elapsed:5.0f}s contacts={len(snap['rows'])} waiting={len(snap['waiting'])} "
                f"callbacks_open={len(snap['callbacks'])} ended={len(snap['ended'])} agents={states} "
                f"ports={snap['ports']}/{self.settings.ports}")

    # -- the end -----------------------------------------------------------------
    def finish(self, grace: float) -> None:
        """Let open contacts finish; whatever is still waiting at the end is cancelled, so every
        contact has an outcome."""
        deadline = time.time() + grace
        while time.time() < deadline:
            snap = self.snapshot()
            if self.done_arriving and len(snap["ended"]) == len(snap["rows"]):
                return
            gevent.sleep(0.2)
        for r in self.snapshot()["rows"]:
            if r.state != "ended":
                self.store.cancel(r.id, "demo ended", force=True)

    def summary(self) -> list[tuple[str, str]]:
        with self.store.engine.connect() as conn:
            outcomes = conn.execute(text("SELECT outcome, count(*) AS n FROM reporting_contacts "
                                         "GROUP BY outcome ORDER BY outcome")).all()
            total = conn.execute(text("SELECT count(*) FROM reporting_contacts")).scalar()
            cb = conn.execute(text("SELECT count(*) FROM reporting_contacts WHERE callback_requested")).scalar()
            waits = conn.execute(text("SELECT arrived_at, connected_at FROM reporting_contacts "
                                      "WHERE connected_at IS NOT NULL")).all()
            billed = conn.execute(text("SELECT COALESCE(sum(billable_seconds), 0) FROM billing_legs "
                                       "WHERE direction = 'outbound'")).scalar()
            cb_legs = conn.execute(text("SELECT count(*) FROM billing_legs WHERE kind = 'callback'")).scalar()
        def as_dt(v):
            # SQLite hands view columns back as text.
            return datetime.fromisoformat(v) if isinstance(v, str) else v

        def secs(a, b):
            a, b = as_dt(a), as_dt(b)
            if not (a and b):
                return 0
            return (b.replace(tzinfo=None) - a.replace(tzinfo=None)).total_seconds()
        avg_wait = sum(secs(a, c) for a, c in waits) / len(waits) * self.opts.speed if waits else 0
        rows = [("contacts", str(total))]
        rows += [(f"  {o.outcome or 'open'}", str(o.n)) for o in outcomes]
        rows += [("callback rate", f"{cb / total:.0%}" if total else "-"),
                 ("average wait to answer", f"{avg_wait:.1f}s (demo time)"),
                 ("callback legs placed", str(cb_legs)),
                 ("billed outbound seconds", f"{billed}")]
        return rows

    def close(self) -> None:
        self.controller.stop()
        self.sim.stop()
        self.store.close()


def run_demo(opts: DemoOptions, interactive: bool, echo) -> list[tuple[str, str]]:
    demo = Demo(opts)
    try:
        demo.setup()
        arrivals = gevent.spawn(demo.arrivals)
        real_duration = opts.duration / opts.speed
        end = time.time() + real_duration
        if interactive:
            from rich.live import Live

            with Live(demo.render(demo.snapshot()), refresh_per_second=4, transient=False) as live:
                while time.time() < end or not arrivals.dead:
                    gevent.sleep(0.25)
                    live.update(demo.render(demo.snapshot()))
                demo.finish(grace=max(real_duration, 20))
                live.update(demo.render(demo.snapshot()))
        else:
            last = 0.0
            while time.time() < end or not arrivals.dead:
                gevent.sleep(0.25)
                if time.time() - last >= max(real_duration / 10, 1):
                    last = time.time()
                    echo(demo.plain_line(demo.snapshot()))
            demo.finish(grace=max(real_duration, 20))
            echo(demo.plain_line(demo.snapshot()))
        return demo.summary()
    finally:
        demo.close()
