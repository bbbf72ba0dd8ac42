"""Terminal views shared by `esl-cb status` and `esl-cb demo` (rich)."""
from __future__ import annotations


def status_view(st: dict, header: str = ""):
    from rich.console import Group
    from rich.table import Table

    queue = Table("skill", "contact", "kind", "priority", "waiting", "attempts", title="Queue")
    for skill, items in st["queues"].items():
        for c in items[:15]:
            queue.add_row(skill, str(c["contact_id"]), c["kind"], f"{c['effective_priority']:g}",
                          f"{c['waiting_s']:.0f}s", str(c["attempts"]))
    agents = Table("agent", "state", "skills", "contact", "not offered", title="Agents")
    for a in st["agents"]:
        agents.add_row(a["name"], a["state"], ", ".join(a["skills"]), str(a["contact_id"] or ""),
                       a.get("not_offered") or "")
    cbs = Table("contact", "number", "state", "dial in", "attempts", "waits for", "expires", title="Callbacks")
    for c in st["callbacks"][:15]:
        waits = [] if c.get("skill_open", True) else ["opening hours"]
        if c.get("not_before") and c["not_before"] > _now():
            waits.append(f"{c['not_before']:%H:%M:%S}")
        state = c["state"] + (" (confirmed)" if c.get("confirmed") else "")
        cbs.add_row(str(c["contact_id"]), c["number"] or "", state,
                    "" if c["dial_in_s"] is None else f"{c['dial_in_s']:.1f}s", str(c["attempts"]), ", ".join(waits),
                    f"{c['expire_at']:%H:%M:%S}" if c.get("expire_at") else "")
    p = st["ports"]
    parts = ([header] if header else []) + [queue, agents, cbs, f"ports in use: {p['in_use']} of {p['limit']}"]
    if st.get("switches"):
        switches = Table("switch", "esl", "state", "controllers", "calls", "sps", "ports", "last seen",
                         title="Switches")
        for w in st["switches"]:
            switches.add_row(w["name"], w["esl"], w["state"], str(w["controllers"]), str(w["calls"]),
                             str(w["sessions_per_second"] or "-"), str(w["voice_ports"] or "-"),
                             f"{w['last_seen']:%H:%M:%S}" if w.get("last_seen") else "never")
        parts.append(switches)
    return Group(*parts)


def _now():
    from datetime import datetime, timezone
    return datetime.now(timezone.utc)
