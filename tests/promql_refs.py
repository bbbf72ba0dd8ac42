"""What a PromQL expression names: its metrics, the label matchers of each, and the labels it groups
or matches on. A small lexer, enough for the expressions of deploy/ (tests/test_deploy_monitoring.py)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<variable>\$\{?\w+\}?)
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:ms|s|m|h|d|w|y)?)
  | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}\[\]])
""", re.VERBOSE)
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
# Aggregations may take their `by (...)` before the parenthesis: `sum by (skill) (x)`.
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                "quantile"}


@dataclass
class Selector:
    metric: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)     # (label, op, value)


@dataclass
class Refs:
    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)


def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read {expr[pos:pos + 20]!r} in {expr!r}")
        pos = m.end()
        if m.lastgroup != "space":
            out.append((m.lastgroup, m.group()))
    return out


def refs(expr: str) -> Refs:
    toks = tokens(expr)
    out = Refs()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "name" and text in GROUPING:
            i += 1
            if following == "(":
                while toks[i][1] != ")":
                    if toks[i][0] == "name":
                        out.grouping.add(toks[i][1])
                    i += 1
            continue
        if kind == "name" and text not in KEYWORDS | AGGREGATIONS and following != "(":
            selector = Selector(text)
            i += 1
            if following == "{":
                i += 1
                while toks[i][1] != "}":
                    if toks[i][0] == "name":
                        label, op, value = toks[i][1], toks[i + 1][1], toks[i + 2][1]
                        selector.matchers.append((label, op, value[1:-1]))
                        i += 3
                    else:
                        i += 1
            out.selectors.append(selector)
            continue
        if text == "[":                      # a range: [5m], [$__rate_interval]
            while toks[i][1] != "]":
                i += 1
        i += 1
    return out
