"""The `If` action's Condition: a small comparison language of our own, parsed here, never eval'd.

    condition  := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | "(" or ")" | comparison
    comparison := operand ("<" | "<=" | ">" | ">=" | "==" | "!=") operand
    operand    := number | "text" | 'text' | {Variable}

Examples: `{EWTSec} > 120`, `{AgentsAvailable} == 0 and {Position} >= 3`, `{Skill} == "sales"`.

A variable is a value, never syntax: `{X}` is looked up when the condition runs and stays one
operand whatever it holds (a caller's digits cannot add an `or`). Two numbers (an unquoted
`-12.5`, or a variable holding one) compare as numbers; anything else compares as text, and text
only with `==` and `!=`. `{X}` inside quotes is substituted too ("{Area}-x").

A condition that does not parse with its variables as operands may take its shape from them
(`{EWTSec} {Op} 120` with `Op` assigned `>`, or `{Rule}` holding `3 > 2`): it is then substituted
once (a value holding `{...}` is refused) and parsed when it runs. When the script loads, a condition
is rejected unless it parses, or would parse with some of its variables standing for an operator, a
comparison or and/or.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass

from .errors import InvalidInput

VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
OPERATORS = ("<=", ">=", "==", "!=", "<", ">")
KEYWORDS = ("and", "or", "not")
MAX_LENGTH = 1000
SHAPES = ("1", "==", "1 == 1", "and")     # what a variable may stand for in a condition it shapes
MAX_DEPTH = 30
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<op><=|>=|==|!=|<|>)
  | (?P<paren>[()])
  | (?P<string>"[^"]*"|'[^']*')
  | (?P<word>(?:\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z0-9_.+\-])+)
""", re.VERBOSE)


class ConditionError(InvalidInput, ValueError):
    """A condition that cannot be parsed or compared (the message says where and why)."""

    code = "invalid_condition"
    title = "a condition cannot be parsed or compared"


@dataclass(frozen=True)
class Operand:
    text: str           # as written, without quotes
    quoted: bool

    def value(self, variables: dict[str, str]) -> tuple[str, float | None]:
        """(text, number or None): a quoted operand is always text."""
        def repl(m: re.Match) -> str:
            if m.group(1) not in variables:
                raise ConditionError(f"unknown variable {{{m.group(1)}}}")
            return str(variables[m.group(1)])
        text = VAR.sub(repl, self.text)
        if not self.quoted and NUMBER.fullmatch(text.strip()):
            return text, float(text)
        return text, None

    def __str__(self) -> str:
        return f'"{self.text}"' if self.quoted else self.text


@dataclass(frozen=True)
class Compare:
    left: Operand
    op: str
    right: Operand

    def evaluate(self, variables: dict[str, str]) -> bool:
        (lt, ln), (rt, rn) = self.left.value(variables), self.right.value(variables)
        if ln is not None and rn is not None:
            a, b = ln, rn
        elif self.op in ("==", "!="):
            a, b = lt, rt
        else:
            bad = self.left if ln is None else self.right
            shown = lt if ln is None else rt
            raise ConditionError(f"{self}: {bad} is {shown!r}, not a number; {self.op} compares numbers only")
        return _COMPARE[self.op](a, b)

    def __str__(self) -> str:
        return f"{self.left} {self.op} {self.right}"


@dataclass(frozen=True)
class Logic:
    op: str                                  # and | or | not
    parts: tuple[Node, ...]

    def evaluate(self, variables: dict[str, str]) -> bool:
        if self.op == "not":
            return not self.parts[0].evaluate(variables)
        if self.op == "and":
            return all(p.evaluate(variables) for p in self.parts)
        return any(p.evaluate(variables) for p in self.parts)


Node = Compare | Logic
_COMPARE: dict[str, Callable[[object, object], bool]] = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}


def _tokens(text: str, variables_allowed: bool) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            ch = text[pos]
            hint = " (compare with ==)" if ch == "=" else " (a string needs its closing quote)" if ch in "\"'" else ""
            raise ConditionError(f"unexpected {ch!r} at character {pos + 1}{hint}")
        kind = m.lastgroup
        value = m.group()
        if kind == "word" and not variables_allowed and "{" in value:
            raise ConditionError(f"{value!r} at character {pos + 1}: a variable's value cannot hold another variable")
        if kind != "space":
            out.append((kind, value, pos + 1))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str, variables_allowed: bool = True) -> None:
        if len(text) > MAX_LENGTH:
            raise ConditionError(f"longer than {MAX_LENGTH} characters")
        self.toks = _tokens(text, variables_allowed)
        self.i = 0
        self.depth = 0

    def parse(self) -> Node:
        if not self.toks:
            raise ConditionError("empty condition")
        node = self.or_()
        if self.i < len(self.toks):
            _, value, at = self.toks[self.i]
            raise ConditionError(f"unexpected {value!r} at character {at} (join comparisons with and/or)")
        return node

    def peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def keyword(self, word: str) -> bool:
        t = self.peek()
        if t and t[0] == "word" and t[1].lower() == word:
            self.i += 1
            return True
        return False

    def or_(self) -> Node:
        parts = [self.and_()]
        while self.keyword("or"):
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else Logic("or", tuple(parts))

    def and_(self) -> Node:
        parts = [self.not_()]
        while self.keyword("and"):
            parts.append(self.not_())
        return parts[0] if len(parts) == 1 else Logic("and", tuple(parts))

    def not_(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ConditionError(f"nested more than {MAX_DEPTH} deep")
        try:
            if self.keyword("not"):
                return Logic("not", (self.not_(),))
            t = self.peek()
            if t and t[1] == "(":
                self.i += 1
                node = self.or_()
                t = self.peek()
                if not t or t[1] != ")":
                    where = f"before character {t[2]}" if t else "at the end"
                    raise ConditionError(f"missing ')' for the '(' {where}")
                self.i += 1
                return node
            return self.comparison()
        finally:
            self.depth -= 1

    def comparison(self) -> Compare:
        left = self.operand()
        t = self.peek()
        if t is None or t[0] != "op":
            got = f"{t[1]!r} at character {t[2]}" if t else "the end"
            raise ConditionError(f"expected a comparison (< <= > >= == !=) after {left}, found {got}")
        self.i += 1
        return Compare(left, t[1], self.operand())

    def operand(self) -> Operand:
        t = self.peek()
        if t is None:
            raise ConditionError("expected a number, a quoted text or a {variable} at the end")
        kind, value, at = t
        if kind == "string":
            self.i += 1
            return Operand(value[1:-1], True)
        if kind == "word":
            if NUMBER.fullmatch(value) or VAR.search(value):
                self.i += 1
                return Operand(value, False)
            if value.lower() in KEYWORDS:
                raise ConditionError(f"expected a number, a quoted text or a {{variable}} at character {at}, "
                                     f"found {value!r}")
            raise ConditionError(f"{value!r} at character {at} is neither a number nor a {{variable}} "
                                 f"(write {{{value}}} for a variable, \"{value}\" for text)")
        raise ConditionError(f"expected a number, a quoted text or a {{variable}} at character {at}, found {value!r}")


def parse(text: str) -> Node:
    """The condition as written, its {variables} as operands; ConditionError if it does not parse."""
    return _Parser(str(text)).parse()


def load_problem(text: str) -> str | None:
    """Why a Condition is invalid as written, or None.

    One that does not parse with its variables as operands may take its shape from them: it is
    accepted when some variable standing for an operator, a comparison or and/or makes it parse
    (`{Rule}`, `{EWTSec} {Op} 120`), and is then checked when it runs."""
    text = str(text)
    try:
        parse(text)
        return None
    except ConditionError as e:
        problem = str(e)
    names = list(dict.fromkeys(VAR.findall(text)))
    if not names:
        return problem
    if len(names) > 6:
        return None                     # too many to try: checked when it runs
    for shapes in itertools.product(SHAPES, repeat=len(names)):
        chosen = dict(zip(names, shapes))
        try:
            _Parser(VAR.sub(lambda m, c=chosen: c[m.group(1)], text), variables_allowed=False).parse()
            return None
        except ConditionError:
            continue
    return problem


def evaluate(text: str, variables: dict[str, str]) -> bool:
    """True or False; ConditionError (for OnError) when it cannot be parsed or compared."""
    text = str(text)
    try:
        node = parse(text)
    except ConditionError:
        if not VAR.search(text):
            raise
        node = _from_variables(text, variables)
    return node.evaluate(variables)


def _from_variables(text: str, variables: dict[str, str]) -> Node:
    """A condition shaped by its variables: substituted once, then parsed (no variable may remain)."""
    def repl(m: re.Match) -> str:
        if m.group(1) not in variables:
            raise ConditionError(f"unknown variable {{{m.group(1)}}}")
        return str(variables[m.group(1)])
    built = VAR.sub(repl, text)
    try:
        return _Parser(built, variables_allowed=False).parse()
    except ConditionError as e:
        raise ConditionError(f"{built!r} (from {text!r}): {e}") from None


def variables_in(text: str) -> list[str]:
    return VAR.findall(str(text))
