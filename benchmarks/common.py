"""Helpers shared by the benchmarks: ports, processes, /proc readings, percentiles."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def esl_cb(*args: str, log=subprocess.DEVNULL) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESL_CB_")}
    return subprocess.Popen([sys.executable, "-c", "from cli import main; main()", *args], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def proc_stats(pid: int) -> tuple[float, int]:
    """(cpu seconds, rss bytes) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def schedstat(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of a process's threads so far."""
    run = wait = 0.0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                r, w, _ = f.read().split()
        except OSError:
            continue
        run += int(r) / 1e9
        wait += int(w) / 1e9
    return run, wait


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / hz, sum(fields) / hz


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """pid -> (command name, CPU seconds so far) of every process."""
    out: dict[int, tuple[str, float]] = {}
    hz = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
        except OSError:
            continue
        fields = rest.split()
        out[int(pid)] = (head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / hz)
    return out


def cpu_by_command(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                   seconds: float) -> dict[str, float]:
    """% of one core each command used between two cpu_by_process() readings (processes alive at both)."""
    out: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        if pid in before:
            out[name] = out.get(name, 0.0) + (cpu - before[pid][1]) / seconds * 100
    return {k: round(v, 1) for k, v in out.items() if v >= 0.5}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = min(int(round(p / 100 * (len(v) - 1))), len(v) - 1)
    return v[k]


def each_thread(pid: int, apply) -> None:
    """apply(tid) to every thread of a process (threads it starts later inherit their creator's
    affinity, niceness and scheduling)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            apply(int(tid))
        except (ProcessLookupError, FileNotFoundError):
            pass               # a thread that ended meanwhile


def pin_process(pid: int, cpus: set[int]) -> None:
    each_thread(pid, lambda tid: os.sched_setaffinity(tid, cpus))


def renice_process(pid: int, nice: int) -> None:
    each_thread(pid, lambda tid: os.setpriority(os.PRIO_PROCESS, tid, nice))


def schedule_process(pid: int, policy: int, priority: int = 0) -> None:
    """SCHED_RR 20 (or FIFO), or back to SCHED_OTHER 0."""
    each_thread(pid, lambda tid: os.sched_setscheduler(tid, policy, os.sched_param(priority)))


def postgres_pids() -> list[int]:
    """The local PostgreSQL server's postmaster and its children (backends fork from it)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() in ("postgres", "postmaster"):
                    pids.append(int(entry))
        except OSError:
            pass
    return pids


class CorePlan:
    """--pin: one core for the controller and PostgreSQL, the other(s) for FreeSWITCH, SIPp and the
    driver; --nice N: the controller and PostgreSQL at that nice value (FreeSWITCH at 0); --realtime P:
    both SCHED_RR at priority P (above FreeSWITCH's own SCHED_FIFO 10 with P > 10). What an
    operator does with taskset/cgroups or systemd's Nice= to keep the switch's media threads from
    taking the CPU the time-critical path needs. PostgreSQL (a system service) is put back at the end."""

    def __init__(self, pin: bool = True, nice: int = 0, realtime: int = 0, database: bool = True) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        if pin and len(cpus) < 2:
            raise SystemExit("--pin needs at least 2 CPUs")
        self.pin, self.nice, self.realtime, self.database = pin, nice, realtime, database
        self.all = set(cpus)
        self.ours = {cpus[0]} if pin else self.all
        self.switch = set(cpus[1:]) if pin else self.all

    def start(self) -> None:
        os.sched_setaffinity(0, self.switch)          # the driver; what it starts inherits this
        for pid in postgres_pids() if self.database else []:
            self.controller(pid)
            if self.realtime:
                schedule_process(pid, os.SCHED_RR, self.realtime)

    def controller(self, pid: int) -> None:
        """The controller runs SCHED_RR by its own --realtime-priority; here only its core and nice."""
        pin_process(pid, self.ours)
        renice_process(pid, self.nice)

    def close(self) -> None:
        for pid in postgres_pids() if self.database else []:
            pin_process(pid, self.all)
            renice_process(pid, 0)
            if self.realtime:
                schedule_process(pid, os.SCHED_OTHER, 0)
        os.sched_setaffinity(0, self.all)
