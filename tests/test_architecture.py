"""The layers stay visible: no import circles, each layer imports only what it may, no file too big."""
from __future__ import annotations

from pathlib import Path

from tools import import_cycles

ROOT = Path(__file__).resolve().parent.parent
GRAPH = import_cycles.graph(ROOT)

# layer -> packages (internal and third-party) it must never import
FORBIDDEN = {
    "esl_cb.domain": ("esl_cb.esl", "esl_cb.db", "esl_cb.controller", "esl_cb.sim", "esl_cb.cli", "cli",
                      "greenswitch", "sqlalchemy", "click", "gevent"),
    "esl_cb.esl": ("esl_cb.db", "esl_cb.controller", "esl_cb.sim", "esl_cb.cli", "cli", "sqlalchemy", "click"),
    "esl_cb.db": ("esl_cb.esl", "esl_cb.controller", "esl_cb.sim", "esl_cb.cli", "cli", "greenswitch", "click"),
    "esl_cb.controller": ("esl_cb.sim", "esl_cb.cli", "cli", "click"),
    # the application services: domain and db only, for every front end (the CLI, the HTTP API)
    "esl_cb.app": ("esl_cb.esl", "esl_cb.controller", "esl_cb.sim", "esl_cb.cli", "cli", "esl_cb.config",
                   "greenswitch", "click", "gevent"),
    "esl_cb.sim": ("esl_cb.controller", "esl_cb.db", "esl_cb.cli", "cli"),
    # the HTTP API: its own process, talking to the database only (never to a controller or the switch)
    "esl_cb.api": ("esl_cb.esl", "esl_cb.controller", "esl_cb.sim", "esl_cb.cli", "cli", "greenswitch", "click",
                   "gevent"),
}


def _third_party(path: Path) -> set[str]:
    import ast
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_import_circles():
    assert import_cycles.cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    assert import_cycles.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_import_only_what_they_may():
    files = import_cycles.modules(ROOT)
    wrong = []
    for module, targets in GRAPH.items():
        for layer, banned in FORBIDDEN.items():
            if module != layer and not module.startswith(layer + "."):
                continue
            seen = targets | _third_party(files[module])
            for b in banned:
                wrong += [f"{module} imports {t}" for t in seen if t == b or t.startswith(b + ".")]
    assert wrong == []


def test_the_simulators_switch_core_does_not_import_its_front_ends():
    assert not {t for t in GRAPH["esl_cb.sim.switch"]
                if t in ("esl_cb.sim.apps", "esl_cb.sim.connection", "esl_cb.sim.api", "esl_cb.sim.server")}


def test_no_file_is_too_big_to_read():
    sizes = {m: len(p.read_text().splitlines()) for m, p in import_cycles.modules(ROOT).items()}
    assert {m: n for m, n in sizes.items() if n > 450} == {}
