"""The table of benchmarks/real.py: every row a latency in ms (p50, p95, p99, max, samples), the
targets of issue 12 beside ours, mod_callcenter's figures from the same switch and run beside ours,
and each split into the controller's part and the switch's where the wire shows both."""
from __future__ import annotations

from benchmarks.common import pct


def row(name: str, values: list[float], target: str = "") -> str:
    if not values:
        return f"| {name} | - | - | - | - | 0 | {target} |"
    return (f"| {name} | {pct(values, 50):.1f} | {pct(values, 95):.1f} | {pct(values, 99):.1f} | {max(values):.1f} "
            f"| {len(values)} | {target} |")


ROWS = [
    # (label, path into a run's results, target)
    ("offer latency, quiet: esl-cb", ("offer_quiet", "ours"), "p50 <= 12, p95 <= 25"),
    ("  of which esl-cb's (made available -> our originate on the wire)", ("offer_quiet", "ours_sent"), ""),
    ("    of which the controller's (the operator's call returned -> our originate; may read < 0)", ("offer_quiet", "ours_notified"), ""),
    ("  mod_callcenter, same switch, same run", ("offer_quiet", "cc"), ""),
    ("offer latency, during the burst: esl-cb", ("offer_burst", "ours"), "p50 <= 12, p95 <= 25"),
    ("  of which esl-cb's (made available -> our originate on the wire)", ("offer_burst", "ours_sent"), ""),
    ("    of which the controller's (the operator's call returned -> our originate; may read < 0)", ("offer_burst", "ours_notified"), ""),
    ("  mod_callcenter, same switch, same burst", ("offer_burst", "cc"), ""),
    ("after-call offer (agent's BYE -> next INVITE): esl-cb", ("after", "ours"), ""),
    ("  mod_callcenter, same switch, same time", ("after", "cc"), ""),
    ("CallDelaySec error on the wire, quiet", ("quiet", "errors"), "p99 <= 50"),
    ("CallDelaySec error on the wire, agents answering during the burst", ("burst", "errors"),
     "p99 <= 50, max <= 100"),
    ("  esl-cb's part: due -> our originate on the wire", ("burst", "dial_ours"), ""),
    ("  the switch's part: our originate -> its INVITE", ("burst", "dial_switch"), "(FreeSWITCH)"),
    ("agent's answer acted on (answer event at our socket -> accepted, dial prepared), burst", ("burst", "acted"),
     "p99 <= 20"),
    ("  before it: agent's 200 OK -> the answer event at our socket", ("burst", "event_lag"), "(FreeSWITCH)"),
    ("customer's answer -> bridged (answer event at our socket -> our uuid_bridge on the wire), burst",
     ("burst", "bridge"), ""),
    ("caller arriving in the burst: switch answer -> the script's first prompt", ("burst", "hears"), "<= 200"),
    ("  the same, to any sound (hold music while an arrival waits for the database)", ("burst", "sound"), ""),
]


def collect(results: list[dict], path: tuple[str, ...]) -> list[float]:
    out: list[float] = []
    for r in results:
        v = r
        for p in path:
            v = v.get(p, {}) if isinstance(v, dict) else {}
        out += v if isinstance(v, list) else []
    return out


def table(results: list[dict], title: str) -> None:
    print(title)
    print()
    print("| measure (ms) | p50 | p95 | p99 | max | n | target |")
    print("|---|---|---|---|---|---|---|")
    for label, path, target in ROWS:
        print(row(label, collect(results, path), target))
    print()
    stamps = collect(results, ("quiet", "answered_stamp")) + collect(results, ("burst", "answered_stamp"))
    if stamps:
        print(f"The switch's clock: Caller-Channel-Answered-Time (from which the controller counts CallDelaySec) "
              f"read {pct(stamps, 50):+.1f} ms (p50) from the agent's 200 OK on the wire, {min(stamps):+.1f} to "
              f"{max(stamps):+.1f} ms.")
    missed = sum(len(r.get(k, {}).get(f"{who}_missed", [])) for r in results for k in ("offer_quiet", "offer_burst")
                 for who in ("ours", "cc"))
    if missed:
        print(f"{missed} offer samples found no INVITE on the wire (left out).")
    for r in results:
        for key in ("quiet", "burst"):
            b = r.get(key, {})
            if b:
                c = b["cpu"]
                print(f"{key}: {b['callers']} callers in {b['window']:.1f} s; CPU (% of one core): controller "
                      f"{c['controller']:g} (runnable but waiting for a CPU {c['controller_waiting']:g}% of the "
                      f"time), FreeSWITCH {c['freeswitch']:g}, this driver {c['driver']:g}, the capture "
                      f"{c['capture']:g}; the machine {c['machine_busy']:g}% busy (2 cores = 100%; other people's "
                      "work included); by command: " +
                      ", ".join(f"{k} {v:g}" for k, v in sorted(c["by_command"].items(), key=lambda x: -x[1])[:8]))
    print()
