#!/usr/bin/env python3
"""Two switches against one (issue 18), on the simulator: one database, one `esl-cb sim` per switch
(each refusing past its `--sessions-per-second`, as FreeSWITCH does), one `esl-cb run` per switch,
both switches registered (`esl-cb switch add`) with that limit, so each controller paces at its share.

1. Callbacks connected per second: N callbacks (CallDelaySec 0) waiting, agents answering and
   talking briefly, with only switch A's controller running; then N more with both running. A
   callback costs two sessions on its switch (the agent's leg, the customer's), so one switch gives
   at most sps/2 a second and two should give close to twice that.
2. The offer latency on the wire (an agent made available with a contact waiting -> the agent's
   originate at whichever simulator), one controller against two, in the same run.
3. Arrivals: R callers a second at switch A alone, then R a second at each switch: how long a caller
   waits to start (sent -> its contact stored), and how many admission control held.

    python benchmarks/fleet_bench.py [--sps 20] [--callbacks 100] [--agents 30] [--samples 30] [--rate 50]
The machine is shared: short runs, and say so with the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gevent import monkey  # noqa: E402

monkey.patch_all()
from psycogreen.gevent import patch_psycopg  # noqa: E402

patch_psycopg()

import gevent  # noqa: E402
import psycopg2  # noqa: E402
from sqlalchemy import text  # noqa: E402

from benchmarks.bench import PG_ADMIN, SCRIPT, wait_for  # noqa: E402
from benchmarks.common import REPO, esl_cb, free_port, pct, wait_port  # noqa: E402
from esl_cb.db.migrate import upgrade  # noqa: E402
from esl_cb.db.store import Store  # noqa: E402
from esl_cb.domain.queue import Priority  # noqa: E402
from esl_cb.domain.states import AgentState  # noqa: E402
from esl_cb.esl.inbound import InboundConnection  # noqa: E402


def cli(*args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESL_CB_")}
    subprocess.run([sys.executable, "-c", "from cli import main; main()", *args], cwd=REPO, env=env, check=True,
                   capture_output=True)


class Switch:
    """One simulator and, when started, its controller."""

    def __init__(self, tmp: Path, name: str, sps: int, url: str) -> None:
        self.tmp, self.name, self.url = tmp, name, url
        self.ctl_port, self.port, self.metrics_port = free_port(), free_port(), free_port()
        self.sim = esl_cb("sim", "--listen", f"127.0.0.1:{self.port}", "--socket-target", f"127.0.0.1:{self.ctl_port}",
                          "--event-lag-ms", "10", "--max-sessions", "10000", "--sessions-per-second", str(sps),
                          log=(tmp / f"sim-{name}.log").open("wb"))
        wait_port(self.port)
        self.esl = InboundConnection("127.0.0.1", self.port, "ClueCon", lambda e: None, timeout=30)
        self.esl.connect([])
        cli("switch", "add", name, "--esl", f"127.0.0.1:{self.port}", "--sessions-per-second", str(sps),
            "--ports", "1000", "--db", url)
        self.ctl: subprocess.Popen | None = None
        self.seen = 0

    def start_controller(self, script: Path) -> None:
        config = self.tmp / f"{self.name}.yaml"
        config.write_text(f"heartbeat_interval: 0.5\nheartbeat_timeout: 3\ncontroller_id: ctl-{self.name}\n")
        self.ctl = esl_cb("run", "--config", str(config), "--db", self.url, "--esl", f"127.0.0.1:{self.port}", "--listen",
                          f"127.0.0.1:{self.ctl_port}", "--script", str(script), "--metrics-port", str(self.metrics_port),
                          "--retry-interval", "1", "--agent-ring-timeout", "5", "--callback-ring-timeout", "5",
                          "--ports", "1000",
                          "--log-level", "WARNING", log=(self.tmp / f"controller-{self.name}.log").open("wb"))
        wait_port(self.ctl_port)

    def api(self, line: str) -> str:
        return self.esl.api(line)

    def metric(self, name: str) -> float:
        import urllib.request
        for line in urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics").read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def new_originates(self) -> list[dict]:
        """Only those since the last call: the whole list grows with the run, and polling it costs the
        simulators (and the controllers sharing their CPUs) more and more."""
        rows = json.loads(self.api(f"sim originates {self.seen}"))
        self.seen += len(rows)
        return rows

    def close(self) -> None:
        self.esl.close()
        for p in (self.ctl, self.sim):
            if p is not None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


class Fleet:
    def __init__(self, tmp: Path, sps: int) -> None:
        self.db_name = "eslcb_fleet_" + uuidlib.uuid4().hex[:10]
        admin = psycopg2.connect(PG_ADMIN)
        admin.autocommit = True
        admin.cursor().execute(f'CREATE DATABASE "{self.db_name}"')
        admin.close()
        self.url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://") + "/" + self.db_name
        upgrade(self.url)
        self.store = Store(self.url, "bench-cli")
        self.script = tmp / "bench.yaml"
        self.script.write_text(SCRIPT)
        self.switches = [Switch(tmp, "fs-a", sps, self.url), Switch(tmp, "fs-b", sps, self.url)]

    def endpoint(self, number: str, behaviour: str) -> None:
        for s in self.switches:
            s.api(f"sim endpoint {number} {behaviour}")

    def agent(self, name: str, ext: str, skill: str, behaviour: str) -> None:
        self.store.add_agent(name, f"user/{ext}", [skill])
        self.endpoint(ext, behaviour)

    def available(self, name: str) -> float:
        t0 = time.time()
        self.store.set_agent_state(name, AgentState.AVAILABLE, list(AgentState))
        return t0

    def seed(self, skill: str, n: int, delay: int, tag: str) -> None:
        for i in range(n):
            number = f"+1{tag[:6]}{i:04d}"
            cid = self.store.create_contact(f"{tag}-{i}", number, "3125557000", "bench", number, "3125557000")
            self.store.queue_contact(cid, skill, Priority(10, 0, 10))
            self.store.request_callback(cid, number, "+13125557000", delay, "+13125557000", number)
            self.endpoint(number, "answer 0.02")

    def rows(self, sql: str, **params) -> list:
        with self.store.engine.connect() as conn:
            return conn.execute(text(sql), params).all()

    def close(self) -> None:
        for s in self.switches:
            s.close()
        self.store.close()
        admin = psycopg2.connect(PG_ADMIN)
        admin.autocommit = True
        cur = admin.cursor()
        # FORCE terminates and drops under the database's lock: a closing connection cannot race it
        cur.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        admin.close()


def connected_per_second(f: Fleet, skill: str, n: int, agents: int, tag: str) -> tuple[float, dict]:
    """N callbacks waiting, `agents` agents made available at once: callbacks connected a second, from the
    first connection to the last (the steady rate), and how many went through each switch."""
    for i in range(agents):
        f.agent(f"{skill}{i}", f"7{tag[3:6]}{i:02d}", skill, "answer 0.02 0.5")
    f.seed(skill, n, 0, tag)
    for i in range(agents):
        f.available(f"{skill}{i}")
    wait_for(lambda: f.rows("SELECT count(*) FROM contacts c JOIN skills s ON s.id = c.skill_id WHERE s.name = :s "
                            "AND c.connected_at IS NOT NULL", s=skill)[0][0] >= n, 60 + n, f"{skill}: {n} connected")
    times = sorted(r[0].timestamp() for r in f.rows(
        "SELECT c.connected_at FROM contacts c JOIN skills s ON s.id = c.skill_id WHERE s.name = :s", s=skill))
    by = dict(f.rows("SELECT controller_id, count(*) FROM contacts c JOIN skills s ON s.id = c.skill_id "
                     "WHERE s.name = :s GROUP BY controller_id", s=skill))
    wait_for(lambda: f.rows("SELECT count(*) FROM contacts c JOIN skills s ON s.id = c.skill_id WHERE s.name = :s "
                            "AND c.state = 'ended'", s=skill)[0][0] >= n, 60, f"{skill}: all ended")
    for i in range(agents):
        f.store.set_agent_state(f"{skill}{i}", AgentState.LOGGED_OUT, list(AgentState))
    return (n - 1) / (times[-1] - times[0]), by


def offer_latency(f: Fleet, samples: int, tag: str) -> list[float]:
    """An agent made available with a contact waiting -> the agent's originate at either switch (ms)."""
    name, ext = f"lat{tag}", f"9{tag[-3:]}"
    f.agent(name, ext, name, "reject")
    f.seed(name, 3, 0, tag)
    out = []
    for _ in range(samples):
        for sw in f.switches:
            sw.new_originates()
        t0 = f.available(name)

        def offer():
            return [o for sw in f.switches for o in sw.new_originates() if o["number"] == ext]
        o = wait_for(offer, 10, "the offer")[0]
        out.append((o["t"] - t0) * 1000)
        wait_for(lambda: [a for a in f.store.agents() if a["name"] == name and a["state"] == "Refused"], 10, "refusal")
        time.sleep(0.1)
    f.store.set_agent_state(name, AgentState.LOGGED_OUT, list(AgentState))
    return out


def arrivals(f: Fleet, switches: list[Switch], rate: float, seconds: float, tags: list[str]) -> dict:
    """`rate` callers a second at each of `switches` for `seconds`: each caller's start (ms) and what
    admission control held, per controller."""
    calls = int(rate * seconds)
    held0 = [s.metric("esl_cb_admission_delayed_total") for s in switches]
    sent: dict[str, float] = {}

    def arrive(s: Switch, tag: str) -> None:
        t0 = time.time()
        for i in range(calls):
            number = f"{tag}{i:05d}"
            sent[number] = time.time()
            s.esl.command(f"bgapi sim call {number} 3125557000")
            time.sleep(max(t0 + (i + 1) / rate - time.time(), 0))
    gevent.joinall([gevent.spawn(arrive, s, tag) for s, tag in zip(switches, tags)])
    like = " OR ".join(f"original_ani LIKE '%{tag}%'" for tag in tags)
    wait_for(lambda: f.rows(f"SELECT count(*) FROM contacts WHERE {like}")[0][0] >= calls * len(switches) * 0.99,
             60, "the arrivals stored")
    rows = f.rows(f"SELECT original_ani, arrived_at FROM contacts WHERE {like}")
    start = [(at.timestamp() - sent[ani[-10:]]) * 1000 for ani, at in rows if ani[-10:] in sent]
    return {"callers": len(rows), "start": start,
            "held": [s.metric("esl_cb_admission_delayed_total") - h for s, h in zip(switches, held0)]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sps", type=int, default=20, help="each simulated switch's sessions-per-second")
    ap.add_argument("--callbacks", type=int, default=100)
    ap.add_argument("--agents", type=int, default=30)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--rate", type=float, default=50.0, help="arriving callers a second at each switch")
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        f = Fleet(Path(tmp), args.sps)
        try:
            a, b = f.switches
            a.start_controller(f.script)
            time.sleep(2)
            lat1 = offer_latency(f, args.samples, "3125601")
            one, by1 = connected_per_second(f, "one", args.callbacks, args.agents, "312561")
            b.start_controller(f.script)
            time.sleep(3)                   # a joiner offers nothing for two heartbeats
            lat2 = offer_latency(f, args.samples, "3125621")
            two, by2 = connected_per_second(f, "two", args.callbacks, args.agents, "312563")
            # Last: the callers stay (music) and would load what follows. One switch, then both.
            arr1 = arrivals(f, [a], args.rate, args.seconds, ["31290"])
            for uuid, in f.rows("SELECT caller_uuid FROM contacts WHERE original_ani LIKE '%31290%'"):
                a.api(f"uuid_kill {uuid}")
            time.sleep(2)
            arr2 = arrivals(f, [a, b], args.rate, args.seconds, ["31291", "31292"])
            refused = [s.metric("esl_cb_switch_refusals_total") for s in f.switches]
        finally:
            f.close()
    print(f"esl-cb fleet benchmark {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({os.cpu_count()} cores, "
          f"shared), simulator: sessions-per-second {args.sps} each, event lag 10 ms")
    print(f"callbacks connected a second, one switch: {one:.1f} ({by1}); two switches: {two:.1f} ({by2}); "
          f"ratio {two / one:.2f} (at most {args.sps / 2:g} a switch: two sessions per callback)")
    print("| offer latency on the wire (ms) | p50 | p95 | max | n |")
    print("|---|---|---|---|---|")
    for label, v in (("one controller, one switch", lat1), ("two controllers, two switches", lat2)):
        print(f"| {label} | {pct(v, 50):.1f} | {pct(v, 95):.1f} | {max(v):.1f} | {len(v)} |")
    for label, r in ((f"{args.rate:g}/s at one controller", arr1), (f"{args.rate:g}/s at each of two", arr2)):
        v = r["start"]
        print(f"arrivals, {label}: {r['callers']} callers, start p50 {pct(v, 50):.0f} ms, p95 {pct(v, 95):.0f} ms, "
              f"max {max(v):.0f} ms; held by admission control: {r['held']}")
    print(f"originates the switches refused (each controller's esl_cb_switch_refusals_total): {refused}")
    gevent.sleep(0)


if __name__ == "__main__":
    main()
