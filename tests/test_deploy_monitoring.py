"""The alerts (deploy/prometheus) and the dashboard (deploy/grafana) against what a running controller
exports: promtool checks and unit-tests the rules (Debian's `prometheus` package; .ci/run installs
it), and a scrape of a controller's /metrics on the simulator holds every metric, label and label
value they name to what is there."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from esl_cb.controller.metrics import Metrics

from .fixtures import wait_until
from .harness import Harness
from .promql_refs import refs
from .test_concurrency import seed_callbacks

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "esl-cb.rules.yml"
DASHBOARD = DEPLOY / "grafana" / "esl-cb.json"
# What Prometheus adds itself: the scrape's `up`, and the target's labels on every series.
PROMETHEUS_SERIES = {"up": {"job", "instance"}}
TARGET_LABELS = {"job", "instance"}
# The alerts issue 21 asks for, by what they are about.
ALERTS = {"EslCbCallbackDialLate", "EslCbEventLoopLagging", "EslCbSwitchRefusingCalls", "EslCbEslReconnecting",
          "EslCbSwitchDisconnected", "EslCbCallbacksOverTarget", "EslCbNoAgentsDuringOpenHours", "EslCbHeartbeatGone",
          "EslCbControllerDown", "EslCbNotifyQueueFilling"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: apt-get install prometheus (Debian's package has it; .ci/run "
                    "installs it)", pytrace=False)
    return path


def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    check = subprocess.run([promtool(), "check", "rules", RULES.name], cwd=RULES.parent, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([promtool(), "test", "rules", "esl-cb.rules.test.yml"], cwd=RULES.parent,
                          capture_output=True, text=True, timeout=60)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr
    tested = set(re.findall(r"alertname: (\w+)", (RULES.parent / "esl-cb.rules.test.yml").read_text()))
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert alerts == ALERTS and tested == alerts, "every alert asked for, each with its unit test"


def rule_expressions() -> list[tuple[str, str, set[str]]]:
    """(where, PromQL, labels its annotations name) for every rule."""
    out = []
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            named = set(re.findall(r"\$labels\.(\w+)", json.dumps(rule.get("annotations", {}))))
            out.append((f"rule {rule.get('alert') or rule.get('record')}", rule["expr"], named))
    return out


def dashboard_expressions() -> list[tuple[str, str, set[str]]]:
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            out.append((f"panel {panel['title']!r}", target["expr"], legend))
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["definition"]).groups()
            out.append((f"variable {var['name']}", f"{metric}{{{label}!=\"\"}}", set()))
    return out


def exported(text: str) -> tuple[dict[str, set[str]], dict[tuple[str, str], set[str]]]:
    """{sample name: its label names}, {(sample name, label): the values seen}."""
    labels: dict[str, set[str]] = {}
    values: dict[tuple[str, str], set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
            for k, v in sample.labels.items():
                values.setdefault((sample.name, k), set()).add(v)
    return labels, values


def problems_of(where: str, expr: str, named: set[str], labels: dict[str, set[str]],
                values: dict[tuple[str, str], set[str]]) -> list[str]:
    found = refs(expr)
    out = []
    known_here: set[str] = set(TARGET_LABELS)
    for sel in found.selectors:
        have = labels[sel.metric] if sel.metric in labels else PROMETHEUS_SERIES.get(sel.metric)
        if have is None:
            out.append(f"{where}: the controller exports no {sel.metric}")
            continue
        known_here |= have
        for label, op, value in sel.matchers:
            if label not in have | TARGET_LABELS:
                out.append(f"{where}: {sel.metric} has no label {label!r} (it has {sorted(have)})")
                continue
            seen = values.get((sel.metric, label))
            if not seen or "$" in value:
                continue
            wanted = [value] if op in ("=", "!=") else value.split("|") if re.fullmatch(r"[\w.|]+", value) else []
            for v in wanted:
                if v not in seen:
                    out.append(f"{where}: {sel.metric}{{{label}}} is never {v!r} (it is {sorted(seen)})")
    for label in (found.grouping | named) - known_here:
        out.append(f"{where}: no metric of the expression has the label {label!r}")
    return out


def test_the_rules_and_the_dashboard_name_only_what_a_running_controller_exports(pg_url):
    h = Harness(pg_url)
    try:
        h.agent("ann", "1001", available=True)
        number = seed_callbacks(h.store, 1)[0]                 # a callback, its dial measured
        metrics = Metrics(h.controller)
        h.controller.metrics = metrics
        port = metrics.start(0)

        def scrape() -> str:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        h.sim_api(f"endpoint {number} answer 0.05")
        h.controller.wake_dispatcher()
        body = wait_until(lambda: (b := scrape()) and 'esl_cb_skill_open{skill="support"} 1.0' in b
                          and "esl_cb_callback_dial_late_seconds_count 1.0" in b and "esl_cb_esl_connected 1.0" in b
                          and "esl_cb_heartbeat_age_seconds" in b and b, 20, what="a controller's full scrape")
    finally:
        h.close()
    labels, values = exported(body)
    # Every agent state is a series from the start, issue 20's too (at 0 until an agent is in it).
    assert {"WrapUp", "OnBreak", "Refused"} <= values[("esl_cb_agents", "state")]
    assert {"WrapUp", "OnBreak"} <= values[("esl_cb_skill_agents", "state")]
    expressions = rule_expressions() + dashboard_expressions()
    assert len(expressions) > 30
    problems = [p for where, expr, named in expressions for p in problems_of(where, expr, named, labels, values)]
    assert not problems, "\n".join(problems)


def test_the_checker_finds_a_metric_a_label_and_a_value_that_are_not_there():
    labels = {"esl_cb_agents": {"state"}}
    values = {("esl_cb_agents", "state"): {"Available", "OnCall"}}
    assert problems_of("x", 'sum by (state) (esl_cb_agents{state="OnCall"})', set(), labels, values) == []
    assert problems_of("x", "esl_cb_agent", set(), labels, values) == ["x: the controller exports no esl_cb_agent"]
    assert problems_of("x", 'esl_cb_agents{skill="a"}', set(), labels, values)[0].startswith(
        "x: esl_cb_agents has no label 'skill'")
    assert problems_of("x", 'esl_cb_agents{state=~"Available|Busy"}', set(), labels, values) == [
        "x: esl_cb_agents{state} is never 'Busy' (it is ['Available', 'OnCall'])"]
    assert problems_of("x", "max by (skill) (esl_cb_agents)", set(), labels, values) == [
        "x: no metric of the expression has the label 'skill'"]
    assert problems_of("x", "esl_cb_agents", {"agent"}, labels, values) == [
        "x: no metric of the expression has the label 'agent'"]
    assert problems_of("x", 'up{job="esl-cb"} == 0 and rate(esl_cb_agents[5m]) > 0', set(), labels, values) == []
    assert problems_of("x", "sum without (state) (esl_cb_agents) > bool 1", set(), labels, values) == []


def test_the_dashboard_panels_do_not_overlap_and_use_the_datasource_variable():
    doc = json.loads(DASHBOARD.read_text())
    boxes = [(p["title"], p["gridPos"]) for p in doc["panels"]]

    def overlap(a, b) -> bool:
        return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"]
                and b["y"] < a["y"] + a["h"])
    assert not [(a, b) for i, (a, ga) in enumerate(boxes) for b, gb in boxes[i + 1:] if overlap(ga, gb)]
    for panel in doc["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
    titles = " ".join(p["title"].lower() for p in doc["panels"])
    for topic in ("waiting", "callback", "agents", "lateness", "freeswitch", "refusals", "event loop"):
        assert topic in titles, topic
