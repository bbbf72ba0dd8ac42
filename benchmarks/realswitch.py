"""The real-switch benchmark's rig: a real FreeSWITCH (tests/freeswitch/conf, free ports, temp folders),
SIPp phones and callers, the packet capture on loopback, a fresh PostgreSQL database and `esl-cb run`
as its own process, all on this one machine.

Who is who on the wire (phones.xml: the last character of the called user picks the behaviour):
  agents  eoK4 / coK4   offer latency, ours / mod_callcenter's (phone rejects: 603)
          eaK6 / caK6   after-call offers (answers, hangs up 1.5 s later)
          ebNN1         agents answering callbacks during the burst (answers, stays)
  customers +1312...6   answers, hangs up 1.5 s later (burst callbacks)
            +1312...1   answers, stays until the switch hangs up (after-call callbacks)
"""
from __future__ import annotations

import os
import re
import subprocess
import time
import uuid as uuidlib
from pathlib import Path

import psycopg2
from sqlalchemy import text

from benchmarks import sniff
from benchmarks.common import (CorePlan, cpu_by_command, cpu_by_process, esl_cb, free_port, machine_cpu, proc_stats,
                               schedstat, schedule_process, wait_port)
from esl_cb.db.migrate import upgrade
from esl_cb.db.store import Store
from esl_cb.domain.queue import Priority
from esl_cb.domain.states import AgentState
from esl_cb.esl.inbound import Event, InboundConnection
from tests.freeswitch.sipp import HERE as SIPP_DIR
from tests.freeswitch.sipp import Phones
from tests.freeswitch.switch import PASSWORD, RealSwitch, missing_tools

PG_ADMIN = os.environ.get("ESL_CB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
DID, CC_DID = "3125557000", "3125558000"
CALLER_ID = "+13125557000"
SCRIPT = """
name: bench
actions:
  - action: Begin
    Default: Queue
  - action: Reqagent
    Caption: Queue
    Skill: live
    Default: Greeting
  - action: Play
    Caption: Greeting
    Prompt: ivr/ivr-hold_connect_call.wav
    Default: Music
  - action: Play
    Caption: Music
    Prompt: local_stream://moh
    MaxDurationSec: 3600
    Default: Music
"""
CC_QUEUE = "support@test"
GREETING = "ivr-hold_connect_call.wav"         # the script's first prompt: a caller "hears the script"


class Wire:
    """What the capture saw, parsed when asked (after a scenario, so the driver takes no CPU from the
    machine while it is measured)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict] = []
        self._reader: sniff.Reader | None = None

    def poll(self) -> list[dict]:
        if self._reader is None:
            self._reader = sniff.Reader(str(self.path))
        new = self._reader.new()
        self.records += new
        return new

    def sip(self, first: str = "", **match) -> list[dict]:
        return [r for r in self.records if r["kind"] == "sip" and r["first"].startswith(first)
                and all(r.get(k) == v for k, v in match.items())]

    def first_invite(self, user: str, after: float, before: float = float("inf")) -> dict | None:
        for r in self.records:
            if r["kind"] == "sip" and after <= r["t"] < before and r["first"].startswith("INVITE ") \
                    and r.get("ruri_user") == user:
                return r
        return None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


class RealRig:
    def __init__(self, root: Path, log_level: str = "INFO", realtime: bool = False,
                 cores: CorePlan | None = None) -> None:
        reason = missing_tools()
        if reason:
            raise SystemExit(f"cannot run the real-switch benchmark: {reason}")
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.db_name = "eslcb_real_" + uuidlib.uuid4().hex[:10]
        admin = psycopg2.connect(PG_ADMIN)
        admin.autocommit = True
        admin.cursor().execute(f'CREATE DATABASE "{self.db_name}"')
        admin.close()
        self.url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://") + "/" + self.db_name
        upgrade(self.url)
        self.store = Store(self.url, "bench-cli")
        self.ctl_port, self.metrics_port = free_port(), free_port()
        self.phones = Phones(root / "phones")
        self.switch = RealSwitch(root / "fs", f"127.0.0.1:{self.ctl_port}", sessions_per_second=200,
                                 max_sessions=2000)
        self.switch.rtp = (self.switch.rtp[0], self.switch.rtp[0] + 1999)      # two ports a leg, 1,000 legs
        self.switch.start()
        if realtime:
            # As FreeSWITCH runs by default on a multi-core machine (without -np): every thread
            # SCHED_FIFO 10 (the threads it starts later inherit it).
            schedule_process(self.switch.proc.pid, os.SCHED_FIFO, 10)
        self.capture = sniff.start(self.switch.sip_port, self.switch.esl_port, str(root / "wire.bin"))
        self.wire = Wire(root / "wire.bin")
        script = root / "bench.yaml"
        script.write_text(SCRIPT)
        self.ctl_log = root / "controller.log"
        self.ctl = esl_cb("run", "--db", self.url, "--esl", self.switch.esl, "--listen", f"127.0.0.1:{self.ctl_port}",
                          "--script", str(script), "--metrics-port", str(self.metrics_port),
                          "--dial-template", self.phones.dial_template(), "--retry-interval", "1",
                          "--agent-ring-timeout", "5", "--callback-ring-timeout", "5", "--ports", "1000",
                          # The switch here allows 200 sessions a second; the callers use 40 of them.
                          "--originate-rate", "50", "--log-level", log_level,
                          # The controller's own option (the database is made real-time by CorePlan).
                          *(["--realtime-priority", str(cores.realtime)] if cores and cores.realtime else []),
                          log=self.ctl_log.open("wb"))
        if cores is not None:
            cores.controller(self.ctl.pid)
        wait_port(self.ctl_port)
        wait_port(self.metrics_port)
        self.esl = InboundConnection("127.0.0.1", self.switch.esl_port, PASSWORD, lambda e: None, timeout=10)
        self.esl.connect([])
        self.cc("queue load " + CC_QUEUE)
        self._wait_controller_connected()

    def _wait_controller_connected(self) -> None:
        deadline = time.time() + 20
        while time.time() < deadline:
            if "connected to FreeSWITCH" in self.controller_log():
                return
            time.sleep(0.1)
        raise RuntimeError(f"the controller did not connect to FreeSWITCH; see {self.ctl_log}")

    # -- the switch ----------------------------------------------------------
    def api(self, cmd: str) -> str:
        return self.esl.api(cmd, timeout=10)

    def cc(self, args: str) -> str:
        reply = self.api("callcenter_config " + args)
        if reply.startswith("-ERR"):
            raise RuntimeError(f"callcenter_config {args}: {reply.strip()}")
        return reply

    def cc_agent(self, user: str) -> str:
        """A mod_callcenter agent ringing the SIPp phone `user`, idle (On Break) until a sample starts."""
        name = f"{user}@test"
        self.cc(f"agent add {name} callback")
        self.cc(f"agent set contact {name} {{call_timeout=5}}{self.phones.dial(user)}")
        for key, value in (("reject_delay_time", 3600), ("busy_delay_time", 3600), ("no_answer_delay_time", 3600),
                           ("wrap_up_time", 0), ("max_no_answer", 0)):
            self.cc(f"agent set {key} {name} {value}")
        self.cc(f"agent set status {name} 'On Break'")
        self.cc(f"tier add {CC_QUEUE} {name} 1 1")
        return name

    def listener(self, events: list[str], on_event, filters: list[tuple[str, str]] = ()) -> InboundConnection:
        conn = InboundConnection("127.0.0.1", self.switch.esl_port, PASSWORD, on_event, timeout=10)
        conn.connect([])
        for header, value in filters:
            conn.command(f"filter {header} {value}")
        conn.command("event plain " + " ".join(events))
        return conn

    # -- SIPp callers ------------------------------------------------------------
    def callers(self, did: str, count: int, rate: float, hold_s: float, exchange: str,
                name: str) -> subprocess.Popen:
        """`count` callers from one SIPp at `rate` a second, each on the line for `hold_s` seconds, calling
        from +1312<exchange>0000, 0001, ... (valid US numbers: the controller looks each one up)."""
        scenario = self.root / f"{name}.xml"
        scenario.write_text((SIPP_DIR / "hold_caller.xml").read_text().replace("@HOLD_MS@", str(int(hold_s * 1000))))
        numbers = self.root / f"{name}.csv"
        numbers.write_text("SEQUENTIAL\n" + "".join(f"+1312{exchange}{i:04d};\n" for i in range(count)))
        proc = subprocess.Popen(
            ["sipp", "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(free_port()), "-mi", "127.0.0.1",
             "-mp", str(free_port()), "-s", did, f"127.0.0.1:{self.switch.sip_port}", "-r", f"{rate:g}",
             "-m", str(count), "-l", str(count), "-inf", str(numbers), "-nostdin", "-trace_err"],
            cwd=self.root, stdout=(self.root / f"{name}.out").open("ab"), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def channels(self) -> int:
        return int(self.api("show channels count").split()[0])

    def hangup_all(self) -> None:
        self.api("hupall NORMAL_CLEARING")
        deadline = time.time() + 20
        while time.time() < deadline and self.channels() > 0:
            time.sleep(0.1)

    # -- the controller and its database ------------------------------------------
    def seed(self, skill: str, numbers: list[str], delay: int) -> None:
        for i, number in enumerate(numbers):
            cid = self.store.create_contact(f"{skill}-{i}-{uuidlib.uuid4().hex[:6]}", number, DID, "bench", number,
                                            DID)
            self.store.queue_contact(cid, skill, Priority(10, 0, 10))
            self.store.request_callback(cid, number, CALLER_ID, delay, CALLER_ID, number)

    def agent(self, name: str, skill: str) -> None:
        self.store.add_agent(name, self.phones.dial(name), [skill])

    def available(self, name: str) -> float:
        t0 = time.time()
        self.store.set_agent_state(name, AgentState.AVAILABLE, list(AgentState))    # NOTIFY at its commit
        self.notified = time.time()          # the operator's part ends: the NOTIFY is committed
        return t0

    def sql(self, query: str, **params):
        with self.store.engine.begin() as conn:
            res = conn.execute(text(query), params)
            return res.all() if res.returns_rows else []

    def cancel_waiting(self, skill: str) -> None:
        """End a scenario: the callbacks nobody took yet go (the agents finish what they have)."""
        self.sql("UPDATE contacts SET state = 'ended', outcome = 'cancelled' WHERE state = 'callback_queued' "
                 "AND skill_id = (SELECT id FROM skills WHERE name = :s)", s=skill)

    def agent_state(self, name: str) -> str:
        return self.sql("SELECT state FROM agents WHERE name = :n", n=name)[0][0]

    def controller_log(self) -> str:
        try:
            return self.ctl_log.read_text(errors="replace")
        except OSError:
            return ""

    def log_times(self, pattern: str) -> dict[int, float]:
        """contact id -> when the controller logged `pattern` (its first group is the contact id)."""
        rx = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \S+ \S+: " + pattern, re.M)
        out = {}
        for m in rx.finditer(self.controller_log()):
            t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
            out.setdefault(int(m.group(3)), t)
        return out

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        if getattr(self, "esl", None) is not None:
            self.esl.close()
        if getattr(self, "ctl", None) is not None:
            self.ctl.terminate()
            try:
                self.ctl.wait(10)
            except subprocess.TimeoutExpired:
                self.ctl.kill()
        if getattr(self, "capture", None) is not None:
            self.capture.terminate()
            self.capture.wait(5)
        self.switch.stop()
        self.phones.stop()
        self.store.close()
        admin = psycopg2.connect(PG_ADMIN)
        admin.autocommit = True
        cur = admin.cursor()
        # FORCE terminates and drops under the database's lock: a closing connection cannot race it
        cur.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        admin.close()


class Usage:
    """CPU over a window: the controller's (and how long it was runnable but waiting for a CPU), the
    switch's, this driver's and the capture's, the whole machine's (other people's work included:
    the machine is shared) and every command's."""

    def __init__(self, rig: RealRig) -> None:
        self.pids = {"controller": rig.ctl.pid, "freeswitch": rig.switch.proc.pid, "driver": os.getpid(),
                     "capture": rig.capture.pid}
        self.t0 = time.time()
        self.cpu0 = {k: proc_stats(pid)[0] for k, pid in self.pids.items()}
        self.wait0 = schedstat(rig.ctl.pid)[1]
        self.machine0 = machine_cpu()
        self.procs0 = cpu_by_process()

    def stop(self) -> dict:
        seconds = time.time() - self.t0
        machine1 = machine_cpu()
        out = {k: round((proc_stats(pid)[0] - self.cpu0[k]) / seconds * 100, 1) for k, pid in self.pids.items()}
        out["controller_waiting"] = round((schedstat(self.pids["controller"])[1] - self.wait0) / seconds * 100, 1)
        out["machine_busy"] = round((machine1[0] - self.machine0[0]) / (machine1[1] - self.machine0[1]) * 100, 1)
        out["by_command"] = cpu_by_command(self.procs0, cpu_by_process(), seconds)
        return out


def event_stamp(ev: Event) -> float:
    """The switch's own time of an event (microseconds since the epoch; 20 ms steps on this build)."""
    return int(ev.get("Event-Date-Timestamp") or 0) / 1e6
