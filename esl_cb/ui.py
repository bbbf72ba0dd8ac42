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
    agents = Table("agent", "state", "skills", "contact", title="Agents")
    for a in st["agents"]:
        agents.add_row(a["name"], a["state"], ", ".join(a["skills"]), str(a["contact_id"] or ""))
    cbs = Table("contact", "number", "state", "dial in", "attempts", title="Callbacks")
    for c in st["callbacks"][:15]:
        cbs.add_row(str(c["contact_id"]), c["number"] or "", c["state"],
                    "" if c["dial_in_s"] is None else f"{c['dial_in_s']:.1f}s", str(c["attempts"]))
    p = st["ports"]
    parts = ([header] if header else []) + [queue, agents, cbs, f"ports in use: {p['in_use']} of {p['limit']}"]
    return Group(*parts)
