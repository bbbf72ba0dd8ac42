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
   For each offer, from each controller's metrics: the claims it ran (found a pair or not), and the
   winner's NOTIFY -> claim, claim, claim -> originate. At the end, one controller again (the control
   for a drift over the run).
3. Arrivals: R callers a second at switch A alone, then R/2 at each switch (the same total), then R at
   each: how long a caller waits to start (sent -> its contact stored), how many admission control
   held, and each controller's CPU ms per arriving caller (/proc/<pid>/stat, less its idle rate), the
   database backends' and the simulators'.

    python benchmarks/fleet_bench.py [--sps 20] [--callbacks 100] [--agents 30] [--samples 30] [--rate 40] [--seconds 6]
                                     [--notify-others-after S]   (0: every controller claims at each NOTIFY at once)
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
from benchmarks.common import REPO, esl_cb, free_port, pct, proc_stats, wait_port  # noqa: E402
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

    def start_controller(self, script: Path, others_after: float | None = None) -> None:
        config = self.tmp / f"{self.name}.yaml"
        config.write_text(f"heartbeat_interval: 0.5\nheartbeat_timeout: 3\ncontroller_id: ctl-{self.name}\n"
                          + ("" if others_after is None else f"notify_others_after: {others_after}\n"))
        self.ctl = esl_cb("run", "--config", str(config), "--db", self.url, "--esl", f"127.0.0.1:{self.port}", "--listen",
                          f"127.0.0.1:{self.ctl_port}", "--script", str(script), "--metrics-port", str(self.metrics_port),
                          "--retry-interval", "1", "--agent-ring-timeout", "5", "--callback-ring-timeout", "5",
                          "--ports", "1000",
                          "--log-level", "WARNING", log=(self.tmp / f"controller-{self.name}.log").open("wb"))
        wait_port(self.ctl_port)

    def api(self, line: str) -> str:
        return self.esl.api(line)

    def metrics(self) -> dict[str, float]:
        """Every series of the controller's /metrics, by its name with labels."""
        import urllib.request
        out = {}
        for line in urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics").read().decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def cpu(self) -> float:
        """The controller process's CPU seconds so far (utime + stime)."""
        return proc_stats(self.ctl.pid)[0]

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


# Per sample and per controller, from the difference of its /metrics before and after the sample (one
# offer at a time, so each difference is that offer's): claims that found a pair, claims that found none,
# and the winner's NOTIFY -> claim start, claim, claim -> originate (ms).
CLAIMS = ('esl_cb_claims_total{found="yes"}', 'esl_cb_claims_total{found="no"}')
STAGES = {"notify->claim": "esl_cb_notify_to_claim_seconds", "claim": 'esl_cb_claim_seconds{found="yes"}',
          "claim->originate": "esl_cb_claim_to_originate_seconds"}


def _series(m: dict[str, float], histogram: str, part: str) -> float:
    if "{" in histogram:
        name, labels = histogram.split("{", 1)
        return m.get(f"{name}_{part}{{{labels}", 0.0)
    return m.get(f"{histogram}_{part}", 0.0)


def offer_latency(f: Fleet, samples: int, tag: str, running: list[Switch]) -> dict:
    """An agent made available with a contact waiting -> the agent's originate at either switch (ms); and,
    from each running controller's metrics, who ran claims for it and where the winner's time went."""
    name, ext = f"lat{tag}", f"9{tag[-3:]}"
    f.agent(name, ext, name, "reject")
    f.seed(name, 3, 0, tag)
    out: dict = {"wire": [], "won_by": [], "claims": [], "empty": [], "stages": {k: [] for k in STAGES},
                 "empty_ms": []}
    for _ in range(samples):
        for sw in f.switches:
            sw.new_originates()
        before = [s.metrics() for s in running]
        t0 = f.available(name)

        def offer():
            return [o for sw in f.switches for o in sw.new_originates() if o["number"] == ext]
        o = wait_for(offer, 10, "the offer")[0]
        out["wire"].append((o["t"] - t0) * 1000)
        wait_for(lambda: [a for a in f.store.agents() if a["name"] == name and a["state"] == "Refused"], 10, "refusal")
        after = [s.metrics() for s in running]
        won = [a.get(CLAIMS[0], 0) - b.get(CLAIMS[0], 0) for a, b in zip(after, before)]
        empty = [a.get(CLAIMS[1], 0) - b.get(CLAIMS[1], 0) for a, b in zip(after, before)]
        out["claims"].append([w + e for w, e in zip(won, empty)])
        out["empty"].append(empty)
        empty_s = sum(_series(a, 'esl_cb_claim_seconds{found="no"}', "sum") -
                      _series(b, 'esl_cb_claim_seconds{found="no"}', "sum") for a, b in zip(after, before))
        if sum(empty):
            out["empty_ms"].append(empty_s / sum(empty) * 1000)
        if won.count(1) == 1:
            w = won.index(1)
            out["won_by"].append(running[w].name)
            for stage, h in STAGES.items():
                n = _series(after[w], h, "count") - _series(before[w], h, "count")
                if n == 1:
                    out["stages"][stage].append((_series(after[w], h, "sum") - _series(before[w], h, "sum")) * 1000)
        time.sleep(0.1)
    f.store.set_agent_state(name, AgentState.LOGGED_OUT, list(AgentState))
    return out


def idle_cpu(switches: list[Switch], seconds: float = 3.0) -> list[float]:
    """Each controller's CPU seconds a second with no caller arriving (heartbeats, polls, metrics)."""
    c0, t0 = [s.cpu() for s in switches], time.time()
    time.sleep(seconds)
    return [(s.cpu() - c) / (time.time() - t0) for s, c in zip(switches, c0)]


def db_backends(f: Fleet) -> list[int]:
    """The PostgreSQL backends serving the benchmark's database now (the controllers' pools)."""
    return [pid for pid, in f.rows("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                   "AND pid <> pg_backend_pid()")]


def cpu_of(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            out[pid] = proc_stats(pid)[0]
        except OSError:
            pass
    return out


def arrivals(f: Fleet, switches: list[Switch], rate: float, seconds: float, tags: list[str]) -> dict:
    """`rate` callers a second at each of `switches` for `seconds`: each caller's start (ms), what
    admission control held, and the CPU seconds each controller (and the database's backends for this
    database, and each simulator) spent per arriving caller: from the first call sent to every contact
    stored and 2 s more (a caller's script costs over its first second), less the controller's idle
    rate over the same time."""
    calls = int(rate * seconds)
    idle = idle_cpu(switches)
    held0 = [s.metric("esl_cb_admission_delayed_total") for s in switches]
    backends = db_backends(f)
    cpu0, db0, sim0 = [s.cpu() for s in switches], cpu_of(backends), [proc_stats(s.sim.pid)[0] for s in switches]
    w0 = time.time()
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
    time.sleep(2.0)
    window = time.time() - w0
    cpu1, db1, sim1 = [s.cpu() for s in switches], cpu_of(backends), [proc_stats(s.sim.pid)[0] for s in switches]
    rows = f.rows(f"SELECT original_ani, arrived_at FROM contacts WHERE {like}")
    start = [(at.timestamp() - sent[ani[-10:]]) * 1000 for ani, at in rows if ani[-10:] in sent]
    per = len(rows) / len(switches)
    return {"callers": len(rows), "start": start, "window": window, "idle": idle,
            "held": [s.metric("esl_cb_admission_delayed_total") - h for s, h in zip(switches, held0)],
            "cpu_raw": [(b - a) / per * 1000 for a, b in zip(cpu0, cpu1)],
            "cpu": [(b - a - i * window) / per * 1000 for a, b, i in zip(cpu0, cpu1, idle)],
            "db": sum(db1[p] - db0[p] for p in db1 if p in db0) / len(rows) * 1000,
            "sim": [(b - a) / per * 1000 for a, b in zip(sim0, sim1)]}


def kill_callers(f: Fleet, tag: str) -> None:
    for sw in f.switches:
        for uuid, in f.rows(f"SELECT caller_uuid FROM contacts WHERE original_ani LIKE '%{tag}%' AND state <> 'ended'"):
            sw.api(f"uuid_kill {uuid}")
    time.sleep(2)


def report_offers(label: str, r: dict, names: list[str]) -> None:
    v = r["wire"]
    st = r["stages"]
    n = len(v)
    claims = [sum(c[i] for c in r["claims"]) / n for i in range(len(names))]
    empty = [sum(c[i] for c in r["empty"]) / n for i in range(len(names))]
    won = {nm: r["won_by"].count(nm) for nm in names}
    print(f"| {label} | {pct(v, 50):.1f} | {pct(v, 95):.1f} | {n} | "
          + " | ".join(f"{pct(st[k], 50):.2f}" for k in STAGES)
          + f" | {pct(r['empty_ms'], 50):.2f} | "
          + ", ".join(f"{nm} {c:.2f} ({e:.2f} empty, won {won[nm]})" for nm, c, e in zip(names, claims, empty)) + " |")


def report_arrivals(label: str, r: dict, names: list[str]) -> None:
    v = r["start"]
    print(f"| {label} | {r['callers']} | {pct(v, 50):.0f} / {pct(v, 95):.0f} | {r['held']} | "
          + ", ".join(f"{nm} {c:.2f} ({raw:.2f} raw, idle {i * 1000:.0f} ms/s)"
                      for nm, c, raw, i in zip(names, r["cpu"], r["cpu_raw"], r["idle"]))
          + f" | {r['db']:.2f} | " + ", ".join(f"{x:.2f}" for x in r["sim"]) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sps", type=int, default=20, help="each simulated switch's sessions-per-second")
    ap.add_argument("--callbacks", type=int, default=100)
    ap.add_argument("--agents", type=int, default=30)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--rate", type=float, default=40.0,
                    help="arriving callers a second in all (one controller: all of them; two: half at each)")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--notify-others-after", type=float, default=None,
                    help="the controllers' notify_others_after (0: every controller claims at each NOTIFY at once, "
                         "as before; default: the controller's own default)")
    args = ap.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        f = Fleet(Path(tmp), args.sps)
        try:
            a, b = f.switches
            a.start_controller(f.script, args.notify_others_after)
            time.sleep(2)
            lat1 = offer_latency(f, args.samples, "3125601", [a])
            one, by1 = connected_per_second(f, "one", args.callbacks, args.agents, "312561")
            # The callers stay (music) and would load what follows: each arrivals run ends with them hung up.
            arr1 = arrivals(f, [a], args.rate, args.seconds, ["31290"])
            kill_callers(f, "31290")
            b.start_controller(f.script, args.notify_others_after)
            time.sleep(3)                   # a joiner offers nothing for two heartbeats
            lat2 = offer_latency(f, args.samples, "3125621", [a, b])
            two, by2 = connected_per_second(f, "two", args.callbacks, args.agents, "312563")
            arr2 = arrivals(f, [a, b], args.rate / 2, args.seconds, ["31291", "31292"])
            kill_callers(f, "3129")
            arr3 = arrivals(f, [a, b], args.rate, args.seconds, ["31293", "31294"])
            refused = [s.metric("esl_cb_switch_refusals_total") for s in f.switches]
            # The control: one controller again, late in the run (the tables have grown, the processes
            # warmed up): a drift over the run shows here, not as a cost of the second controller.
            kill_callers(f, "3129")
            b.ctl.terminate()
            b.ctl.wait(10)
            time.sleep(4)                   # past heartbeat_timeout: A no longer counts B among its peers
            lat3 = offer_latency(f, args.samples, "3125641", [a])
        finally:
            f.close()
    print(f"esl-cb fleet benchmark {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC on {platform.node()} "
          f"({os.cpu_count()} cores, shared; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
          f"at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}), simulator: sessions-per-second {args.sps} "
          f"each, event lag 10 ms; notify_others_after {args.notify_others_after if args.notify_others_after is not None else 'default'}")
    print(f"callbacks connected a second, one switch: {one:.1f} ({by1}); two switches: {two:.1f} ({by2}); "
          f"ratio {two / one:.2f} (at most {args.sps / 2:g} a switch: two sessions per callback)")
    print()
    print("Offer latency: an agent made available (commit + NOTIFY) -> the agent's originate at the simulator (ms); "
          "the winner's stages (p50, ms, from its metrics); an empty claim's time (p50, ms); claims run per offer "
          "by each controller")
    print("| controllers | wire p50 | wire p95 | n | " + " | ".join(f"{k} p50" for k in STAGES)
          + " | empty claim p50 | claims per offer |")
    print("|---|---|---|---|" + "---|" * len(STAGES) + "---|---|")
    report_offers("one (fs-a)", lat1, ["fs-a"])
    report_offers("two (fs-a, fs-b)", lat2, ["fs-a", "fs-b"])
    report_offers("one again, fs-b stopped (the control)", lat3, ["fs-a"])
    print()
    print("Arrivals: a caller's start (sent -> contact stored, ms), held by admission control, and CPU ms per "
          "arriving caller (each controller's, less its idle rate; the database's backends for this database; "
          "each simulator's)")
    print("| run | callers | start p50 / p95 | held | controller CPU ms per caller | database | simulators |")
    print("|---|---|---|---|---|---|---|")
    report_arrivals(f"{args.rate:g}/s at one controller", arr1, ["fs-a"])
    report_arrivals(f"{args.rate / 2:g}/s at each of two (same total)", arr2, ["fs-a", "fs-b"])
    report_arrivals(f"{args.rate:g}/s at each of two (twice the total)", arr3, ["fs-a", "fs-b"])
    per_core = 1000 / arr1["cpu"][0] if arr1["cpu"][0] > 0 else float("nan")
    two_cost = sum(arr2["cpu"]) / 2
    print(f"One controller spends {arr1['cpu'][0]:.2f} ms of CPU per arriving caller alone and "
          f"{two_cost:.2f} ms with a second beside it (ratio {two_cost / arr1['cpu'][0]:.2f}): one core carries at "
          f"most {per_core:.0f} arrivals a second of the controller's own work (its idle load "
          f"{arr1['idle'][0] * 1000:.0f} ms/s aside; the knee, with CallDelaySec kept on time, is lower: "
          "RESULTS.md), and two controllers with a core each "
          f"{2 * 1000 / two_cost:.0f} a second, if the database keeps up ({arr1['db']:.2f} ms of its CPU "
          "per caller).")
    print(f"originates the switches refused (each controller's esl_cb_switch_refusals_total): {refused}")
    gevent.sleep(0)


if __name__ == "__main__":
    main()
