"""Quality gates: `{metric: "OP EXPR"}`, e.g. `{arith_acc: ">= 0.95 * parent", jobs_auc: ">= parent - 0.01"}`.

EXPR is arithmetic (+ - * / and parentheses) over numbers and two names: `parent`, the same metric of
the stage's input artifact, and `teacher`, the pipeline teacher's. A gate is checked when the recipe
is loaded (`parse`) and evaluated on the stage's measured metrics (`evaluate`)."""

from __future__ import annotations

import ast
import difflib
import operator
import re
from dataclasses import dataclass

from slimkit.errors import SlimkitError

METRICS = {
    "arith_acc": "arith greedy accuracy (validation split)",
    "arith_tokens": "mean generated tokens per arith answer",
    "jobs_auc": "jobs AUC through the scorer (validation split)",
    "params": "parameters",
    "size_mb": "weights on disk (MB)",
    "items_per_s": "scorer items/s (1 query x N postings per request)",
    "p99_ms": "scorer p99 request latency (ms)",
    "tokens_saved_frac": "share of item tokens that context compression removed",
}
NAMES = ("parent", "teacher")
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_ALLOWED = (ast.BinOp, ast.UnaryOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.USub, ast.UAdd, ast.Load)
_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


class GateError(SlimkitError):
    pass


@dataclass
class Check:
    metric: str
    text: str
    value: float
    bound: float
    passed: bool

    def describe(self) -> str:
        if self.passed:
            return f"{self.metric} {self.value:.4g} {self.text} = {self.bound:.4g}: ok"
        return (f"{self.metric} {self.value:.4g} is not {self.text} = {self.bound:.4g} "
                f"(short by {abs(self.bound - self.value):.4g})")


def _parse_one(where: str, metric: str, text: str) -> tuple[str, ast.expr]:
    if metric not in METRICS:
        near = difflib.get_close_matches(metric, list(METRICS), n=1, cutoff=0.5)
        hint = f"did you mean {near[0]!r}?" if near else f"choose among {', '.join(METRICS)}"
        raise GateError(f"{where}: unknown metric {metric!r} ({hint})")
    m = re.fullmatch(r"\s*(>=|<=|==|>|<)\s*(.+?)\s*", str(text))
    if not m:
        raise GateError(f"{where}.{metric}: {text!r} is not a condition such as \">= 0.95 * parent\"")
    try:
        tree = ast.parse(m.group(2), mode="eval").body
    except SyntaxError:
        raise GateError(f"{where}.{metric}: {m.group(2)!r} is not an arithmetic expression") from None
    for node in ast.walk(tree):
        ok = isinstance(node, _ALLOWED) or isinstance(node, ast.Name) and node.id in NAMES or \
            isinstance(node, ast.Constant) and isinstance(node.value, int | float)
        if not ok:
            what = node.id if isinstance(node, ast.Name) else type(node).__name__
            raise GateError(f"{where}.{metric}: {what!r} is not allowed in a gate (numbers, + - * /, "
                            f"{' and '.join(NAMES)})")
    return m.group(1), tree


def parse(gate: dict[str, str], where: str) -> None:
    """Refuse an unknown metric or a malformed condition (before any work)."""
    for metric, text in gate.items():
        _parse_one(where, metric, text)


def _eval(node: ast.expr, names: dict[str, float | None], where: str) -> float:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        value = names.get(node.id)
        if value is None:
            raise GateError(f"{where}: the gate uses {node.id!r}, which has no such metric")
        return float(value)
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, names, where)
        return -v if isinstance(node.op, ast.USub) else v
    return _BIN[type(node.op)](_eval(node.left, names, where), _eval(node.right, names, where))


def evaluate(gate: dict[str, str], metrics: dict, parent: dict, teacher: dict, where: str) -> list[Check]:
    """Each condition on `metrics`, with `parent` and `teacher` the metrics those names refer to."""
    checks = []
    for metric, text in gate.items():
        op, tree = _parse_one(where, metric, text)
        if metrics.get(metric) is None:
            raise GateError(f"{where}: the gate checks {metric}, which this stage does not measure")
        bound = _eval(tree, {"parent": parent.get(metric), "teacher": teacher.get(metric)}, f"{where}.{metric}")
        value = float(metrics[metric])
        checks.append(Check(metric, text.strip(), value, bound, bool(_OPS[op](value, bound))))
    return checks
