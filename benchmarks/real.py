#!/usr/bin/env python3
"""esl-cb on a real FreeSWITCH (issue 12): one machine runs the switch, SIPp, PostgreSQL, the controller
(`esl-cb run`, its own process) and this driver. Every latency on the wire is taken from packet
timestamps on loopback (benchmarks/sniff.py: the kernel's), never from the controller.

    python benchmarks/real.py               # 3 runs, about 75 s each, then the table of all of them
    python benchmarks/real.py --runs 1      # one run
    python benchmarks/real.py --smoke       # about 30 s: every scenario, tiny, no thresholds
    python benchmarks/real.py --only burst  # one scenario (repeatable), for working on one number

Needs root (the packet socket), FreeSWITCH (../shared/freeswitch/install), SIPp and PostgreSQL.

Each run, in order:
  offers     an agent is made available while a contact waits: ours (store + NOTIFY, as the CLI does)
             and mod_callcenter's on the same switch (`callcenter_config agent set status`), alternating;
             from the command to the INVITE reaching the agent's phone (the phone declines)
  after-call the agent's phone hangs up (its BYE on the wire) -> the next INVITE to it; ours and
             mod_callcenter's at the same time
  quiet      agents answer callback offers (CallDelaySec 1) with nothing else going on, for scale
  burst      240 callers arrive at 40/s (one SIPp, held on the script's music) while agents start
             answering callback offers through its first 2 s and go on answering the next ones, and the
             offer samples go on: the CallDelaySec error on the wire (customer's INVITE - agent's 200 OK -
             CallDelaySec), split at our originate; the answer acted on (the answer event reaching the
             controller's socket -> the dial prepared, the one step with nothing on the wire: its log
             line); the customer's answer -> our uuid_bridge on the wire; and each caller's wait from the
             switch's answer to the script's first prompt (the switch's own event times, 20 ms steps)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gevent import monkey  # noqa: E402

monkey.patch_all()
from psycogreen.gevent import patch_psycopg  # noqa: E402

patch_psycopg()

import gevent  # noqa: E402
import gevent.event  # noqa: E402

from benchmarks.common import CorePlan  # noqa: E402
from benchmarks.real_report import table  # noqa: E402
from benchmarks.realswitch import CC_DID, DID, GREETING, RealRig, Usage, event_stamp  # noqa: E402

DELAY = 1                       # CallDelaySec of the callbacks the agents answer
SCENARIOS = ("offers", "after-call", "quiet", "burst")


class Run:
    def __init__(self, rig: RealRig, profile: str = "") -> None:
        self.rig = rig
        self.profile = profile
        self.out: dict = {"offer_quiet": {"ours": [], "cc": []}, "offer_burst": {"ours": [], "cc": []},
                          "after": {"ours": [], "cc": []}}
        self.samples: dict[str, list[tuple[str, str, float]]] = {"offer_quiet": [], "offer_burst": []}
        self.notified: dict[tuple[str, float], float] = {}     # (agent, t0) -> when its NOTIFY was committed
        self.ours_offer, self.cc_offer = ["eo14", "eo24"], ["co14", "co24"]
        for a in self.ours_offer:
            rig.agent(a, "offer")
        rig.seed("offer", [f"+1312550{k:03d}4" for k in range(4)], DELAY)
        for a in self.cc_offer:
            rig.cc_agent(a)
        # mod_callcenter says what its agents do in CUSTOM callcenter::info events.
        self.cc_events: list[tuple[float, str, str, str]] = []      # (t, action, agent, state)
        self._cc_changed = gevent.event.Event()

        def on_cc(ev) -> None:
            self.cc_events.append((time.time(), ev.get("CC-Action"), ev.get("CC-Agent"), ev.get("CC-Agent-State")))
            self._cc_changed.set()
        self.cc_listener = rig.listener(["CUSTOM", "callcenter::info"], on_cc)
        self.listener_ports = {self.cc_listener.sock.getsockname()[1]}   # our own ESL clients, not the controller

    def close(self) -> None:
        self.cc_listener.close()

    def _cc_wait(self, agent: str, after: float, action: str, state: str = "", timeout: float = 10.0) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(t >= after and a == action and name == agent and (not state or st == state)
                   for t, a, name, st in self.cc_events):
                return True
            self._cc_changed.clear()
            self._cc_changed.wait(0.1)
        return False

    # -- offer latency, ours and mod_callcenter's, alternating ----------------------------
    # Each sample is (who, agent, t0); its INVITE is found on the wire after the scenario, so the
    # driver takes no CPU from the machine while it is measured.
    def offer_ours(self, key: str, agent: str) -> None:
        rig = self.rig
        t0 = rig.available(agent)
        self.samples[key].append(("ours", agent, t0))
        self.notified[(agent, t0)] = rig.notified
        deadline = time.time() + 10
        while rig.agent_state(agent) != "Refused" and time.time() < deadline:
            gevent.sleep(0.05)

    def offer_cc(self, key: str, agent: str) -> None:
        rig = self.rig
        name = f"{agent}@test"
        t0 = time.time()
        rig.cc(f"agent set status {name} Available")
        self.samples[key].append(("cc", agent, t0))
        # Offered (Receiving), declined by the phone, back to Waiting with its ready time pushed away.
        if self._cc_wait(name, t0, "agent-state-change", "Receiving"):
            self._cc_wait(name, t0, "agent-state-change", "Waiting")
        gevent.sleep(0.05)
        rig.cc(f"agent set status {name} 'On Break'")
        rig.cc(f"agent set ready_time {name} 0")

    def offers(self, key: str, n: int = 0, until: float = 0.0) -> None:
        i = 0
        while (n and i < n) or (until and time.time() < until):
            self.offer_ours(key, self.ours_offer[i % 2])
            gevent.sleep(random.uniform(0.05, 0.2))
            self.offer_cc(key, self.cc_offer[i % 2])
            gevent.sleep(random.uniform(0.05, 0.2))
            i += 1

    def offer_stats(self, key: str) -> None:
        wire = self.rig.wire
        wire.poll()
        samples = self.samples[key]
        for i, (who, agent, t0) in enumerate(samples):
            nxt = min([t for _, a, t in samples[i + 1:] if a == agent] or [float("inf")])
            inv = wire.first_invite(agent, t0, nxt)
            if inv is None:
                self.out[key].setdefault(f"{who}_missed", []).append(t0)
                continue
            self.out[key][who].append((inv["t"] - t0) * 1000)
            if who == "ours":
                sent = [r["t"] for r in wire.records if r["kind"] == "originate" and t0 <= r["t"] <= inv["t"]
                        and r["dial"].split("/")[-1].startswith(agent + "@")]
                if sent:
                    self.out[key].setdefault("ours_sent", []).append((min(sent) - t0) * 1000)
                    notified = self.notified.get((agent, t0))
                    if notified:
                        self.out[key].setdefault("ours_notified", []).append((min(sent) - notified) * 1000)

    # -- after-call offers, ours and mod_callcenter's at once -------------------------------
    def after_call(self, n: int) -> None:
        rig = self.rig
        rig.agent("ea16", "after")
        rig.seed("after", [f"+1312551{k:03d}1" for k in range(n + 2)], 0)
        rig.cc_agent("ca16")
        rig.callers(CC_DID, n + 2, 10, 120, "552", "cc-after")
        gevent.sleep((n + 2) / 10 + 1.0)
        t_start = time.time()
        rig.available("ea16")
        rig.cc("agent set status ca16@test Available")
        deadline = time.time() + 10 + n * 4
        while time.time() < deadline:
            ours = rig.sql("SELECT count(*) FROM legs l JOIN contacts c ON c.id = l.contact_id JOIN skills s "
                           "ON s.id = c.skill_id WHERE s.name = 'after' AND l.kind = 'agent'")[0][0]
            theirs = sum(1 for t, a, name, _ in self.cc_events if t >= t_start and a == "agent-offering"
                         and name == "ca16@test")
            if ours > n and theirs > n:
                break
            gevent.sleep(0.5)
        rig.cc("agent set status ca16@test 'On Break'")
        rig.cancel_waiting("after")
        gevent.sleep(2.5)
        rig.wire.poll()
        for agent, key in (("ea16", "ours"), ("ca16", "cc")):
            invites = [r for r in rig.wire.sip("INVITE ", ruri_user=agent) if r["t"] >= t_start]
            byes = [r for r in rig.wire.sip("BYE ", from_user=agent) if r["sport"] == rig.phones.port]
            for inv in invites[1:]:
                before = [b["t"] for b in byes if b["t"] < inv["t"]]
                if before:
                    self.out["after"][key].append((inv["t"] - max(before)) * 1000)
        rig.hangup_all()

    # -- agents answering callback offers, with or without a burst of callers -------------
    def callbacks(self, key: str, agents: int, callers: int, rate: float, window: float) -> None:
        rig = self.rig
        names = [f"{key[:1]}b{i:02d}1" for i in range(agents)]       # phones that answer and stay
        for a in names:
            rig.agent(a, key)
        # Customers answer and hang up 1.5 s later; each agent then takes the next callback.
        numbers = [f"+131255{'6' if callers else '5'}{i:03d}6" for i in range(agents * (int(window / 3) + 2))]
        rig.seed(key, numbers, DELAY)
        heard: dict[str, dict] = {}
        listener = None
        if callers:
            rig.callers(CC_DID, 3, 10, 120, "553", f"cc-{key}")      # mod_callcenter's waiting members
            gevent.sleep(1.0)
            listener = self._script_listener(heard)
        spy = self._profile(window) if callers and self.profile else None
        usage = Usage(rig)
        t_start = time.time()
        if callers:
            rig.callers(DID, callers, rate, window + 30, "554", f"burst-{key}")
        sampler = gevent.spawn(self.offers, "offer_burst", until=t_start + window) if callers else None
        for i, a in enumerate(names):                 # agents start answering through the first 2 s
            gevent.sleep(max(t_start + 2.0 * i / agents - time.time(), 0))
            rig.available(a)
        gevent.sleep(max(t_start + window - time.time(), 0))
        t_end = time.time()
        cpu = usage.stop()
        if sampler is not None:
            sampler.join()
            self.offer_stats("offer_burst")
        if spy is not None:
            spy.wait(30)
        rig.cancel_waiting(key)
        deadline = time.time() + 20
        while time.time() < deadline and rig.sql(
                "SELECT count(*) FROM contacts c JOIN skills s ON s.id = c.skill_id WHERE s.name = :s "
                "AND c.state NOT IN ('ended', 'callback_queued')", s=key)[0][0]:
            gevent.sleep(0.2)
        if listener is not None:
            listener.close()
        self.out[key] = dict(self.callback_stats(names, t_start, t_end + 0.5), cpu=cpu, window=t_end - t_start,
                             callers=callers,
                             hears=[(r["play"] - r["answer"]) * 1000 for r in heard.values()
                                    if {"play", "answer"} <= r.keys()],
                             sound=[(r["sound"] - r["answer"]) * 1000 for r in heard.values()
                                    if {"sound", "answer"} <= r.keys()])
        rig.hangup_all()

    def _script_listener(self, heard: dict[str, dict]):
        """The switch's own times of each caller's answer and first prompts (an ESL listener of ours)."""
        def on_event(ev) -> None:
            rec = heard.setdefault(ev.uuid, {})
            if ev.name == "CHANNEL_ANSWER":
                rec["answer"] = event_stamp(ev)
            elif ev.get("Application") in ("playback", "play_and_get_digits"):
                rec.setdefault("sound", event_stamp(ev))       # hold music while an arrival waits counts here
                if GREETING in ev.get("Application-Data") and "play" not in rec:
                    rec["play"] = event_stamp(ev)
        listener = self.rig.listener(["CHANNEL_ANSWER", "CHANNEL_EXECUTE"], on_event,
                                     [("Caller-Destination-Number", DID)])
        self.listener_ports.add(listener.sock.getsockname()[1])
        return listener

    def _profile(self, window: float) -> subprocess.Popen:
        """py-spy (pip install py-spy; not a dependency): the controller's stacks during the burst."""
        return subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                                 str(self.rig.ctl.pid), "--rate", "250", "--format", "raw", "--duration",
                                 str(int(window + 2)), "--output", self.profile],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def callback_stats(self, agents: list[str], t0: float, t1: float) -> dict:
        """Every callback whose agent answered (the 200 OK left the agent's phone) between t0 and t1."""
        rig, wire = self.rig, self.rig.wire
        wire.poll()
        agent_calls = {r["call_id"]: r for r in wire.sip("INVITE ") if r.get("ruri_user") in agents}
        answers: dict[str, list[float]] = {}           # contact number -> its agents' 200 OK times
        seen = set()
        for r in wire.sip("SIP/2.0 200"):
            inv = agent_calls.get(r["call_id"])
            if inv and r["sport"] == rig.phones.port and r["cseq"].endswith("INVITE") and r["call_id"] not in seen:
                seen.add(r["call_id"])
                answers.setdefault(inv["from_user"], []).append(r["t"])
        dials: dict[str, list[float]] = {}              # number's digits -> our originates on the wire
        for r in wire.records:
            if r["kind"] == "originate" and r["role"] == "callback":
                dials.setdefault(r["dial"].split("/")[-1].split("@")[0], []).append(r["t"])
        errors, ours, theirs, answer_of = [], [], [], {}
        for r in wire.sip("INVITE "):
            number = "+" + r.get("ruri_user", "")
            before = [t for t in answers.get(number, ()) if t <= r["t"]]
            if not before or not t0 <= max(before) <= t1:
                continue
            due = max(before) + DELAY
            errors.append((r["t"] - due) * 1000)
            answer_of[number] = max(before)
            sent = [t for t in dials.get(r["ruri_user"], ()) if t <= r["t"]]
            if sent:
                ours.append((max(sent) - due) * 1000)           # due -> our originate on the wire
                theirs.append((r["t"] - max(sent)) * 1000)      # our originate -> the switch's INVITE
        # The answer events reaching the controller's socket; the accept has nothing on the wire (its log
        # line, written right after the dial is prepared); the bridge is our uuid_bridge on the wire.
        legs = {u: (cid, kind) for u, cid, kind in rig.sql(
            "SELECT l.uuid, l.contact_id, l.kind FROM legs l JOIN contacts c ON c.id = l.contact_id "
            "WHERE c.callback_number = ANY(:nums)", nums=list(answer_of))}
        number_of = dict(rig.sql("SELECT id, callback_number FROM contacts WHERE callback_number = ANY(:nums)",
                                 nums=list(answer_of)))
        arrived, stamped, bridged = {}, {}, {}
        for r in wire.records:
            if r["kind"] == "esl_answer" and r["uuid"] in legs and r["dport"] not in self.listener_ports:
                arrived.setdefault(r["uuid"], r["t"])
                stamped.setdefault(r["uuid"], r["answered_us"] / 1e6)
            elif r["kind"] == "bridge":
                bridged.setdefault(r["b"], r["t"])
        accepted = rig.log_times(r"contact (\d+) accepted by agent")
        acted, bridge, event_lag, clock = [], [], [], []
        for uuid, t in arrived.items():
            cid, kind = legs[uuid]
            if kind == "agent" and cid in accepted:
                acted.append((accepted[cid] - t) * 1000)
                ans = answer_of.get(number_of.get(cid))
                if ans:
                    event_lag.append((t - ans) * 1000)
                    clock.append((stamped[uuid] - ans) * 1000)
            elif kind == "callback" and uuid in bridged:
                bridge.append((bridged[uuid] - t) * 1000)
        return {"errors": errors, "dial_ours": ours, "dial_switch": theirs, "acted": acted, "bridge": bridge,
                "event_lag": event_lag, "answered_stamp": clock}


def one_run(tmp: Path, args) -> dict:
    rig = RealRig(tmp, realtime=args.switch_realtime, cores=args.cores)
    run = None
    try:
        run = Run(rig, args.profile and f"{args.profile}.{time.strftime('%H%M%S')}.txt")
        only = set(args.only or SCENARIOS)
        if "offers" in only:
            rig.callers(CC_DID, 2, 10, 600, "559", "cc-quiet")          # mod_callcenter's waiting members
            gevent.sleep(1.5)
            run.offers("offer_quiet", n=3 if args.smoke else args.samples)
            run.offer_stats("offer_quiet")
        if "after-call" in only:
            run.after_call(2 if args.smoke else args.after)
        if "quiet" in only:
            run.callbacks("quiet", 2 if args.smoke else args.agents, 0, 0, 3 if args.smoke else 6)
        if "burst" in only:
            callers, rate = (20, 10.0) if args.smoke else (args.callers, args.rate)
            run.callbacks("burst", 2 if args.smoke else args.agents, callers, rate, callers / rate)
        return run.out
    finally:
        if run is not None:
            run.close()
        rig.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="about 30 s: every scenario, tiny, no thresholds")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--samples", type=int, default=30, help="quiet offer samples per run (each of ours and cc)")
    ap.add_argument("--after", type=int, default=12, help="after-call cycles per run")
    ap.add_argument("--agents", type=int, default=16, help="agents answering callbacks")
    ap.add_argument("--callers", type=int, default=240)
    ap.add_argument("--rate", type=float, default=40.0, help="callers a second in the burst")
    ap.add_argument("--only", choices=SCENARIOS, action="append", help="run only this scenario (repeatable)")
    ap.add_argument("--switch-realtime", action="store_true",
                    help="FreeSWITCH's threads real-time (its own default), not -np as the tests run it")
    ap.add_argument("--pin", action="store_true",
                    help="one core for the controller and PostgreSQL, the rest for FreeSWITCH, SIPp and the driver")
    ap.add_argument("--nice", type=int, default=0,
                    help="the controller and PostgreSQL at this nice value (-10: ahead of FreeSWITCH at 0)")
    ap.add_argument("--realtime", type=int, default=0,
                    help="the controller and PostgreSQL SCHED_RR at this priority (1-99; 0: normal)")
    ap.add_argument("--leave-database", action="store_true",
                    help="--pin/--nice/--realtime for the controller only, PostgreSQL left as it is")
    ap.add_argument("--json", help="also write every sample here")
    ap.add_argument("--profile", help="py-spy the controller during each burst into PROFILE.<time>.txt (folded)")
    ap.add_argument("--keep", help="keep each run's files (switch log, capture, controller log) under this folder")
    args = ap.parse_args()
    args.cores = (CorePlan(pin=args.pin, nice=args.nice, realtime=args.realtime, database=not args.leave_database)
                  if args.pin or args.nice or args.realtime else None)
    if args.cores is not None:
        args.cores.start()
    try:
        run_all(args)
    finally:
        if args.cores is not None:
            args.cores.close()


def run_all(args) -> None:
    runs = 1 if args.smoke else args.runs
    results = []
    for i in range(runs):
        with tempfile.TemporaryDirectory(prefix="eslcb-real-", dir=args.keep) as tmp:
            load = os.getloadavg()
            t = time.time()
            res = one_run(Path(tmp), args)
            res.update(load_before=load, seconds=time.time() - t)
            results.append(res)
            if args.keep:
                os.rename(tmp, Path(args.keep) / f"run{i + 1}-{time.strftime('%H%M%S')}")
                os.makedirs(tmp)
            table([res], f"run {i + 1} of {runs} ({res['seconds']:.0f} s; load average before "
                         f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(results))
    if runs > 1:
        table(results, f"esl-cb on a real FreeSWITCH, {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} "
                       f"({os.cpu_count()} cores, Python {platform.python_version()}), {runs} runs together")


if __name__ == "__main__":
    main()
