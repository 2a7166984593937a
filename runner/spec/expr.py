"""CEL expressions (`when:`) and `${{ expr }}` templates: compiling and what they refer to.

Compiling uses cel-python (celpy), a maintained CEL implementation; its parse tree tells which
names and which `steps.<id>` an expression reads, so a reference to a step that is unknown or not
upstream is found before anything runs. Compiled expressions are cached by their text: workflows
repeat the same conditions, and compiling is the expensive part of validating them.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import celpy
import celpy.celparser
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError
from lark import Token, Tree

SCOPE = ("inputs", "steps", "trigger", "run")
STEP_FIELDS = ("outputs", "status")
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_TEMPLATE = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)
_ENV = celpy.Environment()
# Parsing time grows faster than linearly with nesting: 3,000 nested parentheses took 44 s.
# No real condition comes near these, and a repository is validated in bounded time.
MAX_LENGTH = 4096  # characters of one expression
MAX_NESTING = 32  # ( [ { open at once, outside string literals
MAX_TREE_DEPTH = 400  # of the parse tree: 32 nested brackets make about 360; evaluation recurses


class ExpressionError(ValueError):
    """An expression that cannot be compiled or refers to something that does not exist."""


@dataclass(frozen=True, kw_only=True)
class Expression:
    """A compiled CEL expression and what it reads."""

    source: str
    ast: Any
    names: frozenset[str]
    steps: frozenset[str]
    bad_fields: tuple[tuple[str, str], ...] = ()
    dynamic_steps: bool = False


def _ident(tree: Any) -> str | None:
    """The identifier if `tree` is a bare `member -> primary -> ident` chain."""
    while isinstance(tree, Tree) and tree.data not in ("ident", "member_dot", "member_index"):
        if len(tree.children) != 1:
            return None
        tree = tree.children[0]
    if isinstance(tree, Tree) and tree.data == "ident":
        return str(tree.children[0])
    return None


def _literal_string(tree: Any) -> str | None:
    while isinstance(tree, Tree) and tree.data != "literal":
        if len(tree.children) != 1:
            return None
        tree = tree.children[0]
    if isinstance(tree, Tree) and isinstance(tree.children[0], Token):
        text = str(tree.children[0])
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return text[1:-1]
    return None


def _step_of(member: Any) -> tuple[str | None, bool]:
    """(step id, dynamic) if `member` is `steps.<id>` or `steps["<id>"]`."""
    if not (isinstance(member, Tree) and member.data == "member" and member.children):
        return None, False
    inner = member.children[0]
    if not isinstance(inner, Tree) or _ident(inner.children[0]) != "steps":
        return None, False
    if inner.data == "member_dot":
        return str(inner.children[1]), False
    if inner.data == "member_index":
        name = _literal_string(inner.children[1])
        return name, name is None
    return None, False


def _analyse(source: str, ast: Any) -> Expression:
    names: set[str] = set()
    bound: set[str] = set()
    steps: set[str] = set()
    bad: list[tuple[str, str]] = []
    dynamic = False
    for node in ast.iter_subtrees():
        if node.data == "ident":
            names.add(str(node.children[0]))
        elif node.data == "member_dot_arg" and str(node.children[1]) in _MACROS:
            args = node.children[2] if len(node.children) > 2 else None
            if isinstance(args, Tree) and args.children:
                var = _ident(args.children[0])
                if var:
                    bound.add(var)
        elif node.data == "member":
            step, is_dynamic = _step_of(node)
            dynamic = dynamic or is_dynamic
            if step:
                steps.add(step)
        if node.data == "member_dot":
            step, _ = _step_of(node.children[0])
            if step and str(node.children[1]) not in STEP_FIELDS:
                bad.append((step, str(node.children[1])))
    return Expression(
        source=source,
        ast=ast,
        names=frozenset(names - bound),
        steps=frozenset(steps),
        bad_fields=tuple(bad),
        dynamic_steps=dynamic,
    )


def _nesting(text: str) -> tuple[int, int]:
    """(deepest nesting of brackets outside string literals, 1-based column where it is)."""
    depth = deepest = where = 0
    quote: str | None = None
    escaped = False
    for column, char in enumerate(text, 1):
        if quote is not None:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
            if depth > deepest:
                deepest, where = depth, column
        elif char in ")]}":
            depth = max(depth - 1, 0)
    return deepest, where


def check_size(text: str) -> None:
    """Refuse an expression too long or nested too deep to parse in bounded time."""
    deepest, column = _nesting(text)
    if deepest > MAX_NESTING:
        raise ExpressionError(
            f"expression nests brackets {deepest} deep (at column {column}); the limit is"
            f" {MAX_NESTING}: remove redundant parentheses"
        )
    if len(text) > MAX_LENGTH:
        raise ExpressionError(
            f"expression is {len(text)} characters long; the limit is {MAX_LENGTH}:"
            " split the condition, or compute it in a step and read its output"
        )


@lru_cache(maxsize=4096)
def compile_expression(source: str) -> Expression:
    """Compile one CEL expression, or raise `ExpressionError` saying where it breaks."""
    text = source.strip()
    if not text:
        raise ExpressionError("empty expression")
    check_size(text)
    try:
        ast = _ENV.compile(text)
    except celpy.celparser.CELParseError as exc:
        column = getattr(exc, "column", None) or 1
        near = text[column - 1 : column + 11]
        where = f"near {near!r}" if near else "at the end"
        raise ExpressionError(f"CEL syntax error in {text!r} at column {column}, {where}") from None
    if _tree_depth(ast) > MAX_TREE_DEPTH:
        raise ExpressionError(
            f"expression nests operators too deep to evaluate (more than {MAX_TREE_DEPTH}"
            " levels): write it more simply"
        )
    return _analyse(text, ast)


def _tree_depth(ast: Any) -> int:
    deepest, stack = 0, [(ast, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, Tree):
            stack.extend((child, depth + 1) for child in node.children)
    return deepest


def template_parts(text: str) -> list[str]:
    """The expressions inside `${{ }}` in a string, in order; raises on an unclosed `${{`."""
    found = [m.group(1) for m in _TEMPLATE.finditer(text)]
    rest = _TEMPLATE.sub("", text)
    if "${{" in rest:
        raise ExpressionError(f"unclosed '${{{{' in {text!r}: close it with '}}}}'")
    return found


def when_source(when: str) -> str:
    """The CEL text of a `when:`; a condition written as `${{ expr }}` is accepted too."""
    match = _TEMPLATE.fullmatch(when.strip())
    return match.group(1) if match else when


def check_names(expr: Expression, scope: tuple[str, ...] = SCOPE) -> list[str]:
    """Problems with the names `expr` reads; which steps it may read is the caller's to check."""
    problems = []
    in_scope = f"names in scope are: {', '.join(scope)}"
    reads_steps = "steps" in expr.names or bool(expr.steps)
    if reads_steps and "steps" not in scope:
        problems.append(f"{expr.source!r} reads steps, which are not available here; {in_scope}")
    for name in sorted(expr.names - set(scope) - {"steps"}):
        problems.append(f"unknown name {name!r} in {expr.source!r}; {in_scope}")
    if "steps" not in scope:
        return problems
    if expr.dynamic_steps:
        problems.append(f"{expr.source!r} indexes steps by a computed value; write steps.<id>")
    for step, field in expr.bad_fields:
        close = difflib.get_close_matches(field, STEP_FIELDS, n=1)
        hint = (
            f"did you mean steps.{step}.{close[0]}?"
            if close
            else f"write steps.{step}.outputs.{field} for an output"
        )
        problems.append(
            f"steps.{step}.{field} in {expr.source!r}: a step has "
            f"{' and '.join(STEP_FIELDS)}; {hint}"
        )
    return problems


# --- evaluation -------------------------------------------------------------------------------


class EvaluationError(ValueError):
    """An expression that compiled but could not be evaluated with the values at hand."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing  # it read a key that is not there (e.g. a skipped step's output)


@lru_cache(maxsize=4096)
def _program(source: str) -> Any:
    return _ENV.program(compile_expression(source).ast)


def _plain(value: Any) -> Any:
    """A CEL value as plain JSON-like Python (celpy's types subclass the Python ones)."""
    if isinstance(value, bool | celtypes.BoolType):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None:
        return None
    return str(value)


def evaluate(source: str, scope: dict[str, Any]) -> Any:
    """Evaluate a CEL expression over JSON-like `scope` (inputs, steps, trigger, run)."""
    activation = {name: json_to_cel(value) for name, value in scope.items()}
    try:  # validation refused it; a revision stored before the limits existed may hold it
        program = _program(source.strip())
    except ExpressionError as exc:
        raise EvaluationError(f"{source.strip()[:200]!r}: {exc}") from None
    try:
        result = program.evaluate(activation)
    except CELEvalError as exc:
        result = exc
    if isinstance(result, CELEvalError):
        detail = str(result.args[0] if result.args else result)
        missing = detail.startswith(("no such member", "no such key"))
        raise EvaluationError(f"{source.strip()!r}: {detail}", missing=missing)
    return _plain(result)


def _lenient(source: str, scope: dict[str, Any]) -> Any:
    """A template reading something absent (the outputs of a step that was skipped or failed)
    gets null, as GitHub Actions users expect; any other error is raised."""
    try:
        return evaluate(source, scope)
    except EvaluationError as exc:
        if exc.missing:
            return None
        raise


def render(value: Any, scope: dict[str, Any]) -> Any:
    """Resolve `${{ }}` in every string of `value`. A string that is exactly one `${{ expr }}`
    becomes the expression's value with its type (a list stays a list); otherwise results are
    interpolated as text (JSON for lists and mappings)."""
    if isinstance(value, dict):
        return {k: render(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, scope) for v in value]
    if not isinstance(value, str) or "${{" not in value:
        return value
    whole = _TEMPLATE.fullmatch(value.strip())
    if whole:
        return _lenient(whole.group(1), scope)

    def text(match: re.Match[str]) -> str:
        result = _lenient(match.group(1), scope)
        if isinstance(result, str):
            return result
        if isinstance(result, bool):
            return "true" if result else "false"
        return (
            json.dumps(result) if isinstance(result, dict | list) or result is None else str(result)
        )

    return _TEMPLATE.sub(text, value)
