"""Who gets a CPU first: the controller, PostgreSQL and FreeSWITCH on one host.

Measured on the real switch (issue 12, benchmarks/RESULTS.md): FreeSWITCH runs its threads real-time
(SCHED_FIFO 10) by default. With 240 callers arriving on a 2-core host, a controller and a
PostgreSQL at normal priority waited for a CPU 27-45% of the time and acted on an agent's answer
419 ms late (p99); at SCHED_RR 20, above the switch, 12.7 ms, and the customer's INVITE left within
12.3 ms of its due time. Linux only; elsewhere everything here says "unknown".
"""
from __future__ import annotations

import os
from dataclasses import dataclass

POLICY_NAMES = {getattr(os, "SCHED_OTHER", 0): "normal", getattr(os, "SCHED_FIFO", 1): "SCHED_FIFO",
                getattr(os, "SCHED_RR", 2): "SCHED_RR", getattr(os, "SCHED_BATCH", 3): "SCHED_BATCH",
                getattr(os, "SCHED_IDLE", 5): "SCHED_IDLE"}
RECOMMENDED = 20                      # above FreeSWITCH's own real-time priority (10)


class SchedulingError(RuntimeError):
    pass


@dataclass(frozen=True)
class Priority:
    """A process's scheduling: real-time priority (1-99) or 0 for normal/batch/idle."""

    policy: str
    priority: int

    @property
    def realtime(self) -> bool:
        return self.policy in ("SCHED_FIFO", "SCHED_RR")

    def __str__(self) -> str:
        return f"{self.policy} {self.priority}" if self.realtime else self.policy


def priority_of(pid: int) -> Priority | None:
    """The scheduling of a process on this host (None: no such process, or not knowable here)."""
    try:
        policy = os.sched_getscheduler(pid)
        prio = os.sched_getparam(pid).sched_priority
    except (AttributeError, OSError):
        return None
    return Priority(POLICY_NAMES.get(policy, str(policy)), prio)


def become_realtime(priority: int) -> None:
    """Run this process SCHED_RR at `priority` (threads started later inherit it)."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))
    except AttributeError:
        raise SchedulingError("real-time scheduling is not available on this system (Linux only)") from None
    except PermissionError:
        raise SchedulingError(
            f"not allowed to run SCHED_RR {priority}: the controller needs CAP_SYS_NICE (systemd: "
            f"CPUSchedulingPolicy=rr and CPUSchedulingPriority={priority} in its unit, or "
            "AmbientCapabilities=CAP_SYS_NICE), or leave --realtime-priority at 0") from None
    except OSError as e:
        raise SchedulingError(f"could not run SCHED_RR {priority}: {e}") from None


def pid_from_file(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def verdict(switch: Priority | None, controller: int, database: Priority | None,
            database_where: str = "on another host") -> tuple[bool, str, str]:
    """(fine, what was found, what to do) for the controller's priority against the switch's and the
    database's on this host (None: on another host, or unknown; `database_where` says which)."""
    ours = f"SCHED_RR {controller}" if controller else "normal"
    found = f"controller {ours}, FreeSWITCH {switch or 'on another host'}, PostgreSQL {database or database_where}"
    if switch is not None and switch.realtime and controller <= switch.priority:
        if switch.priority >= 99:
            return False, found, ("FreeSWITCH runs at the highest real-time priority (99): nothing can run above "
                                  "it; start it with -rp or -np instead, or give the controller a host of its own")
        above = max(RECOMMENDED, switch.priority + 1)
        return False, found, (f"FreeSWITCH runs real-time and takes the CPU first under load: run the controller "
                              f"with --realtime-priority {above}, and PostgreSQL on this host above the switch too "
                              f"(systemd: CPUSchedulingPolicy=rr, CPUSchedulingPriority={above})")
    if controller and database is not None and not (database.realtime and database.priority >= controller):
        return False, found, ("the controller waits for PostgreSQL on every answer: run PostgreSQL on this host "
                              f"SCHED_RR {controller} too (systemd: CPUSchedulingPolicy=rr, "
                              f"CPUSchedulingPriority={controller})")
    return True, found, ""
