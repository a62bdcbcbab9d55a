"""Ferrite's feature definitions (features/*.toml) and request-time expressions, in Python.

The peer stack reads the same definitions Ferrite serves, so that it computes the same
features: the Feast repository is generated from them (make_feast_repo.py) and the glue
service evaluates the request views' expressions with `Expr` below, which follows the
language of crates/ferrite-features/src/expr.rs: `||` `&&`, comparisons, `+ -`, `* / %`,
unary `- !`, literals, `field`, `view.feature`, calls abs min max log exp sqrt coalesce if.
Nulls (None) propagate, `coalesce` and `if` stop them; a division by zero or a non-finite
result makes the feature invalid (None here, NaN in the model's vector, as in Ferrite).
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


class EvalError(Exception):
    """The value cannot be computed: the feature is invalid."""


# ---------------------------------------------------------------- definitions


@dataclass
class StoredFeature:
    name: str
    dtype: str
    column: str
    # Data-quality rules: a source row that breaks one is not materialized.
    not_null: bool = False
    min: float | None = None
    max: float | None = None
    allowed: list | None = None


@dataclass
class View:
    name: str
    entities: list[str]
    source: str
    ttl_s: int
    features: list[StoredFeature]


@dataclass
class RequestFeature:
    name: str
    dtype: str
    expr: "Expr"


@dataclass
class RequestView:
    name: str
    request_fields: dict[str, str]
    features: list[RequestFeature]


@dataclass
class Registry:
    entities: dict[str, dict] = field(default_factory=dict)
    sources: dict[str, dict] = field(default_factory=dict)
    views: dict[str, View] = field(default_factory=dict)
    request_views: dict[str, RequestView] = field(default_factory=dict)
    services: dict[str, list[str]] = field(default_factory=dict)

    def join_keys(self, view: View) -> list[str]:
        return [k for e in view.entities for k in self.entities[e]["join_keys"]]

    def service(self, name: str) -> list[tuple[str, str]]:
        """The (view, feature) pairs of a feature service, in its order."""
        if name not in self.services:
            raise KeyError(f"unknown feature service {name!r}; defined: {sorted(self.services)}")
        out = []
        for ref in self.services[name]:
            view, feature = ref.split(":", 1)
            if view in self.views:
                names = [f.name for f in self.views[view].features]
            elif view in self.request_views:
                names = [f.name for f in self.request_views[view].features]
            else:
                raise KeyError(f"unknown view {view!r} in {ref!r}")
            if feature == "*":
                out.extend((view, n) for n in names)
            elif feature in names:
                out.append((view, feature))
            else:
                raise KeyError(f"view {view!r} has no feature {feature!r}")
        return out


_DURATION = re.compile(r"(\d+)\s*(d|h|m|s|ms|us)")
_UNIT_S = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}


def parse_duration_s(text: str) -> int:
    """Seconds of a Ferrite duration ("365d", "12h", "1h 30m"); "0" is none."""
    text = text.strip()
    if text == "0":
        return 0
    parts = _DURATION.findall(text)
    if not parts or _DURATION.sub("", text).strip():
        raise ValueError(f"not a duration: {text!r}")
    return int(sum(int(n) * _UNIT_S[u] for n, u in parts))


def load(repository: Path) -> Registry:
    """Every *.toml of the feature repository, as Ferrite reads it."""
    reg = Registry()
    docs = [tomllib.loads(p.read_text()) for p in sorted(Path(repository).glob("*.toml"))]
    for doc in docs:
        for e in doc.get("entity", []):
            reg.entities[e["name"]] = e
        for s in doc.get("source", []):
            reg.sources[s["name"]] = s
        for v in doc.get("feature_view", []):
            feats = [
                StoredFeature(
                    f["name"], f["dtype"], f.get("column", f["name"]), f.get("not_null", False),
                    f.get("min"), f.get("max"), f.get("allowed"),
                )
                for f in v["features"]
            ]
            reg.views[v["name"]] = View(
                v["name"], v["entities"], v["source"], parse_duration_s(v.get("ttl", "0")), feats
            )
        for s in doc.get("feature_service", []):
            reg.services[s["name"]] = s["features"]
    # Request views last: their expressions are typed against the stored views.
    for doc in docs:
        for v in doc.get("request_view", []):
            fields = dict(v.get("request_fields", {}))
            feats = [RequestFeature(f["name"], f["dtype"], Expr(f["expression"])) for f in v["features"]]
            for f in feats:
                for inp in f.expr.inputs:
                    if isinstance(inp, tuple):
                        view, feat = inp
                        if view not in reg.views or feat not in {x.name for x in reg.views[view].features}:
                            raise KeyError(f"{v['name']}.{f.name}: unknown input {view}.{feat}")
                    elif inp not in fields:
                        raise KeyError(f"{v['name']}.{f.name}: unknown request field {inp!r}")
            reg.request_views[v["name"]] = RequestView(v["name"], fields, feats)
    return reg


# ---------------------------------------------------------------- expressions

_OPS = ["||", "&&", "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "%", "!", "(", ")", ",", ".", "="]
_FUNCS = {"abs", "min", "max", "log", "exp", "sqrt", "coalesce", "if"}


class _Num:
    """A numeric literal token (kept apart from identifiers and strings)."""

    def __init__(self, value):
        self.value = value


class _Str:
    def __init__(self, value):
        self.value = value


def _lex(text: str) -> list:
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c.isdigit():
            start = i
            while i < n and (text[i].isdigit() or text[i] in ".e"):
                if text[i] == "e" and i + 1 < n and text[i + 1] in "+-":
                    i += 1
                i += 1
            s = text[start:i]
            out.append(_Num(float(s) if ("." in s or "e" in s) else int(s)))
        elif c.isalpha() or c == "_":
            start = i
            while i < n and (text[i].isalnum() or text[i] == "_"):
                i += 1
            out.append(text[start:i])
        elif c in "\"'":
            end = text.find(c, i + 1)
            if end < 0:
                raise ValueError(f"unterminated string at column {i + 1}")
            out.append(_Str(text[i + 1 : end]))
            i = end + 1
        else:
            op = next((o for o in _OPS if text.startswith(o, i)), None)
            if op is None or op == "=":
                raise ValueError(f"unexpected {c!r} at column {i + 1}")
            out.append(("op", op))
            i += len(op)
    return out


_WRAP = 1 << 64


def _i64(x: int) -> int:
    """Two's-complement wrap, as Rust's wrapping arithmetic."""
    x %= _WRAP
    return x - _WRAP if x >= 1 << 63 else x


def _is_int(v) -> bool:
    return type(v) is int


def _num(v) -> float:
    if type(v) in (int, float):
        return float(v)
    return math.nan


def _finite(x: float) -> float:
    if math.isfinite(x):
        return x
    raise EvalError(f"non-finite result {x}")


class Expr:
    """A parsed expression; `inputs` are request field names and (view, feature) pairs."""

    def __init__(self, text: str):
        self.text = text
        self._toks = _lex(text)
        self._pos = 0
        self.inputs: list = []
        self._root = self._or()
        if self._pos < len(self._toks):
            raise ValueError(f"unexpected token after the end of {text!r}")
        del self._toks
        # Compiled once into closures (as Ferrite pre-resolves its tree): no walk of tuples
        # per call, which a hand-written glue service would not pay either.
        self._fn = _compile(self._root)

    # Parsing: each level returns a node, a tuple whose first item says what it is.
    def _peek_op(self):
        t = self._toks[self._pos] if self._pos < len(self._toks) else None
        if isinstance(t, tuple):
            return t[1]
        if t == "and":
            return "&&"
        if t == "or":
            return "||"
        return None

    def _binary(self, ops, nxt):
        left = nxt()
        while self._peek_op() in ops:
            op = self._peek_op()
            self._pos += 1
            left = ("bin", op, left, nxt())
        return left

    def _or(self):
        return self._binary({"||"}, self._and)

    def _and(self):
        return self._binary({"&&"}, self._cmp)

    def _cmp(self):
        return self._binary({"==", "!=", "<", "<=", ">", ">="}, self._add)

    def _add(self):
        return self._binary({"+", "-"}, self._mul)

    def _mul(self):
        return self._binary({"*", "/", "%"}, self._unary)

    def _unary(self):
        op = self._peek_op()
        if op in ("-", "!"):
            self._pos += 1
            return ("neg" if op == "-" else "not", self._unary())
        return self._primary()

    def _input(self, key):
        if key not in self.inputs:
            self.inputs.append(key)
        return ("in", key)

    def _primary(self):
        if self._pos >= len(self._toks):
            raise ValueError(f"{self.text!r} ends too early")
        t = self._toks[self._pos]
        self._pos += 1
        if isinstance(t, _Num) or isinstance(t, _Str):
            return ("const", t.value)
        if isinstance(t, tuple):
            if t[1] == "(":
                e = self._or()
                if self._peek_op() != ")":
                    raise ValueError(f"expected ')' in {self.text!r}")
                self._pos += 1
                return e
            raise ValueError(f"unexpected {t[1]!r} in {self.text!r}")
        if t in ("true", "false"):
            return ("const", t == "true")
        if t == "null":
            return ("const", None)
        if self._peek_op() == "(":
            if t not in _FUNCS:
                raise ValueError(f"unknown function {t!r}")
            self._pos += 1
            args = []
            if self._peek_op() != ")":
                while True:
                    args.append(self._or())
                    if self._peek_op() == ",":
                        self._pos += 1
                    else:
                        break
            if self._peek_op() != ")":
                raise ValueError(f"expected ')' in {self.text!r}")
            self._pos += 1
            return ("call", t, args)
        if self._peek_op() == ".":
            self._pos += 1
            feature = self._toks[self._pos]
            self._pos += 1
            return self._input((t, feature))
        return self._input(t)

    # Evaluation.
    def eval(self, values: dict):
        """The value for `values` (inputs by name; a missing one is null); None when null or
        invalid."""
        try:
            return self._fn(values)
        except (EvalError, OverflowError, ValueError, ZeroDivisionError):
            return None

    def eval_tree(self, values: dict):
        """The same by walking the tree: the reference the closures are tested against."""
        try:
            return self._eval(self._root, values)
        except (EvalError, OverflowError, ValueError, ZeroDivisionError):
            return None

    def _eval(self, node, values):
        kind = node[0]
        if kind == "const":
            return node[1]
        if kind == "in":
            return values.get(node[1])
        if kind == "neg":
            v = self._eval(node[1], values)
            if _is_int(v):
                return _i64(-v)
            return -v if type(v) is float else None
        if kind == "not":
            v = self._eval(node[1], values)
            return (not v) if type(v) is bool else None
        if kind == "bin":
            _, op, left, right = node
            a, b = self._eval(left, values), self._eval(right, values)
            if a is None or b is None:
                return None
            return _binop(op, a, b)
        _, func, args = node
        if func == "coalesce":
            for arg in args:
                v = self._eval(arg, values)
                if v is not None:
                    return v
            return None
        if func == "if":
            c = self._eval(args[0], values)
            if c is True:
                return self._eval(args[1], values)
            if c is False:
                return self._eval(args[2], values)
            return None
        vals = [self._eval(a, values) for a in args]
        if any(v is None for v in vals):
            return None
        return _apply(func, vals)


def _compile(node):
    """A closure computing `node` from the inputs (same semantics as Expr._eval)."""
    kind = node[0]
    if kind == "const":
        value = node[1]
        return lambda values: value
    if kind == "in":
        key = node[1]
        return lambda values: values.get(key)
    if kind == "neg":
        inner = _compile(node[1])

        def neg(values):
            v = inner(values)
            if _is_int(v):
                return _i64(-v)
            return -v if type(v) is float else None

        return neg
    if kind == "not":
        inner = _compile(node[1])

        def not_(values):
            v = inner(values)
            return (not v) if type(v) is bool else None

        return not_
    if kind == "bin":
        op, left, right = node[1], _compile(node[2]), _compile(node[3])

        def binary(values):
            a, b = left(values), right(values)
            if a is None or b is None:
                return None
            return _binop(op, a, b)

        return binary
    func, args = node[1], [_compile(a) for a in node[2]]
    if func == "coalesce":

        def coalesce(values):
            for arg in args:
                v = arg(values)
                if v is not None:
                    return v
            return None

        return coalesce
    if func == "if":
        cond, then, other = args

        def if_(values):
            c = cond(values)
            if c is True:
                return then(values)
            if c is False:
                return other(values)
            return None

        return if_

    def call(values):
        vals = [a(values) for a in args]
        if any(v is None for v in vals):
            return None
        return _apply(func, vals)

    return call


def _apply(func: str, vals: list):
    if func == "abs":
        return _i64(abs(vals[0])) if _is_int(vals[0]) else abs(_num(vals[0]))
    if func in ("min", "max"):
        x, y = _num(vals[0]), _num(vals[1])
        first = x <= y if func == "min" else x >= y
        picked = vals[0] if first else vals[1]
        return picked if _is_int(vals[0]) and _is_int(vals[1]) else _num(picked)
    x = _num(vals[0])
    if func == "log":
        return _finite(math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan))
    if func == "exp":
        return _finite(math.exp(x))
    return _finite(math.sqrt(x) if x >= 0 else math.nan)


def _binop(op: str, a, b):
    if op == "||":
        return a is True or b is True
    if op == "&&":
        return a is True and b is True
    if op in ("==", "!=", "<", "<=", ">", ">="):
        if (type(a), type(b)) in ((str, str), (bool, bool), (int, int)):
            x, y = a, b
        else:
            x, y = _num(a), _num(b)
            if math.isnan(x) or math.isnan(y):
                return None
        return {
            "==": x == y,
            "!=": x != y,
            "<": x < y,
            "<=": x <= y,
            ">": x > y,
            ">=": x >= y,
        }[op]
    if op == "/":
        d = _num(b)
        if d == 0.0:
            raise EvalError("division by zero")
        return _finite(_num(a) / d)
    if _is_int(a) and _is_int(b):
        if op == "+":
            return _i64(a + b)
        if op == "-":
            return _i64(a - b)
        if op == "*":
            return _i64(a * b)
        if b == 0:
            raise EvalError("remainder by zero")
        # Rust's remainder truncates towards zero; Python's floors.
        r = abs(a) % abs(b)
        return _i64(-r if a < 0 else r)
    x, y = _num(a), _num(b)
    if op == "+":
        return _finite(x + y)
    if op == "-":
        return _finite(x - y)
    if op == "*":
        return _finite(x * y)
    return _finite(math.fmod(x, y) if y != 0 else math.nan)


def to_f32_input(v) -> float:
    """A feature value as the model's input: int and float as they are, bool 1/0, else NaN."""
    if type(v) is bool:
        return 1.0 if v else 0.0
    if type(v) in (int, float):
        return float(v)
    return math.nan
