"""``${{ ... }}`` expressions: a small language, never Python ``eval``.

Grammar::

    expr    := or
    or      := and ("||" and)*
    and     := not ("&&" not)*
    not     := "!" not | cmp
    cmp     := primary (("==" | "!=" | "<" | "<=" | ">" | ">=") primary)?
    primary := literal | path | "(" expr ")"
    path    := NAME ("." NAME | "[" (INT | STRING) "]")*
    literal := STRING | NUMBER | true | false | null

A value that is exactly one ``${{ expr }}`` keeps the type of what it names (a list, a
mapping...); a value with text around expressions becomes a string, non-strings as JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

TEMPLATE = re.compile(r"\$\{\{(.*?)\}\}", re.S)

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<name>[A-Za-z_][A-Za-z0-9_-]*|\d+[A-Za-z_-][A-Za-z0-9_-]*)
    | (?P<num>-?\d+(?:\.\d+)?)
    | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<op>==|!=|<=|>=|&&|\|\||[<>!()\[\].])
    )""",
    re.X,
)


# A real expression is a path or a short condition; these bounds keep the recursive parser
# and evaluator far from Python's recursion limit whatever a file contains.
MAX_TOKENS = 200
MAX_NESTING = 32


class ExprError(Exception):
    pass


@dataclass(frozen=True)
class Path:
    parts: tuple[str | int, ...]

    def dotted(self) -> str:
        out = ""
        for p in self.parts:
            out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
        return out


@dataclass(frozen=True)
class Lit:
    value: Any


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class BinOp:
    op: str
    left: Node
    right: Node


Node = Path | Lit | Not | BinOp


def _tokenize(src: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    src = src.rstrip()
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m or m.end() == pos:
            raise ExprError(f"unexpected character {src[pos:].strip()[:1]!r} in expression")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
        if len(tokens) > MAX_TOKENS:
            raise ExprError(f"expression is too long (more than {MAX_TOKENS} tokens)")
    return tokens


class _Parser:
    def __init__(self, src: str) -> None:
        self.tokens = _tokenize(src)
        self.i = 0
        self.depth = 0

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise ExprError(f"expression is nested more than {MAX_NESTING} levels deep")

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise ExprError("expression ends too early")
        if value is not None and tok[1] != value:
            raise ExprError(f"expected {value!r}, found {tok[1]!r}")
        self.i += 1
        return tok

    def parse(self) -> Node:
        if not self.tokens:
            raise ExprError("empty expression")
        node = self.or_()
        if self.peek() is not None:
            raise ExprError(f"unexpected {self.peek()[1]!r} in expression")  # type: ignore[index]
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self.peek() == ("op", "||"):
            self.take()
            node = BinOp("||", node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.peek() == ("op", "&&"):
            self.take()
            node = BinOp("&&", node, self.not_())
        return node

    def not_(self) -> Node:
        if self.peek() == ("op", "!"):
            self.take()
            self.nest()
            return Not(self.not_())
        return self.cmp()

    def cmp(self) -> Node:
        node = self.primary()
        tok = self.peek()
        if tok and tok[0] == "op" and tok[1] in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            node = BinOp(tok[1], node, self.primary())
        return node

    def primary(self) -> Node:
        kind, value = self.take()
        if kind == "num":
            return Lit(float(value) if "." in value else int(value))
        if kind == "str":
            return Lit(_unquote(value))
        if kind == "op" and value == "(":
            self.nest()
            node = self.or_()
            self.take(")")
            return node
        if kind == "name":
            if value in ("true", "false"):
                return Lit(value == "true")
            if value == "null":
                return Lit(None)
            parts: list[str | int] = [value]
            while True:
                tok = self.peek()
                if tok == ("op", "."):
                    self.take()
                    k, v = self.take()
                    if k == "num" and re.fullmatch(r"\d+(\.\d+)?", v):
                        # `items.0.1` reads as the number 0.1 after the first '.'
                        parts.extend(int(x) for x in v.split("."))
                    elif k == "name":
                        parts.append(v)
                    else:
                        raise ExprError(f"expected a field name after '.', found {v!r}")
                elif tok == ("op", "["):
                    self.take()
                    k, v = self.take()
                    if k == "num" and v.lstrip("-").isdigit():
                        parts.append(int(v))
                    elif k == "str":
                        parts.append(_unquote(v))
                    else:
                        raise ExprError(f"expected an index or a quoted key in [], found {v!r}")
                    self.take("]")
                else:
                    return Path(tuple(parts))
        raise ExprError(f"unexpected {value!r} in expression")


def _unquote(s: str) -> str:
    body = s[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def parse(src: str) -> Node:
    return _Parser(src).parse()


def paths(node: Node) -> list[Path]:
    """Every path an expression names, left to right."""
    out: list[Path] = []
    todo: list[Node] = [node]
    while todo:
        n = todo.pop()
        if isinstance(n, Path):
            out.append(n)
        elif isinstance(n, Not):
            todo.append(n.operand)
        elif isinstance(n, BinOp):
            todo += [n.right, n.left]
    return out


def template_exprs(value: str) -> list[str]:
    """The expression sources inside ``${{ }}`` in a string."""
    return [m.group(1) for m in TEMPLATE.finditer(value)]


def unclosed(value: str) -> bool:
    """True when a ``${{`` has no ``}}`` after it: a typo that would pass through as text."""
    return "${{" in TEMPLATE.sub("", value)


class Missing(ExprError):
    pass


def resolve(path: Path, ctx: dict[str, Any]) -> Any:
    cur: Any = ctx
    walked: list[str | int] = []
    for part in path.parts:
        walked.append(part)
        if isinstance(cur, dict) and isinstance(part, str | int) and str(part) in cur:
            cur = cur[str(part)]
        elif isinstance(cur, list) and isinstance(part, int) and -len(cur) <= part < len(cur):
            cur = cur[part]
        else:
            raise Missing(f"'{Path(tuple(walked)).dotted()}' does not exist")
    return cur


def _truthy(v: Any) -> bool:
    return v not in (None, False, 0, "", [], {})


def evaluate(node: Node, ctx: dict[str, Any]) -> Any:
    if isinstance(node, Lit):
        return node.value
    if isinstance(node, Path):
        return resolve(node, ctx)
    if isinstance(node, Not):
        return not _truthy(evaluate(node.operand, ctx))
    if node.op == "&&":
        left = evaluate(node.left, ctx)
        return evaluate(node.right, ctx) if _truthy(left) else left
    if node.op == "||":
        left = evaluate(node.left, ctx)
        return left if _truthy(left) else evaluate(node.right, ctx)
    a, b = evaluate(node.left, ctx), evaluate(node.right, ctx)
    if node.op == "==":
        return bool(a == b)
    if node.op == "!=":
        return bool(a != b)
    try:
        if node.op == "<":
            return bool(a < b)
        if node.op == "<=":
            return bool(a <= b)
        if node.op == ">":
            return bool(a > b)
        return bool(a >= b)
    except TypeError:
        raise ExprError(f"cannot compare {type(a).__name__} with {type(b).__name__}") from None


def truthy(value: Any) -> bool:
    return _truthy(value)


def render(value: Any, ctx: dict[str, Any]) -> Any:
    """Substitute expressions in a value (recursively through lists and mappings)."""
    if isinstance(value, str):
        m = TEMPLATE.fullmatch(value.strip())
        if m and value.strip() == value and len(TEMPLATE.findall(value)) == 1:
            return evaluate(parse(m.group(1)), ctx)

        def sub(match: re.Match[str]) -> str:
            v = evaluate(parse(match.group(1)), ctx)
            return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)

        return TEMPLATE.sub(sub, value)
    if isinstance(value, list):
        return [render(v, ctx) for v in value]
    if isinstance(value, dict):
        return {k: render(v, ctx) for k, v in value.items()}
    return value


def render_str(value: str, ctx: dict[str, Any]) -> str:
    """Substitute into one command argument: always a string, never split."""
    out = render(value, ctx)
    return out if isinstance(out, str) else json.dumps(out, ensure_ascii=False)
