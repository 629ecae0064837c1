"""Templates of a broadcast's content: Jinja2's sandboxed environment, and a fast path.

A template is compiled once, when the broadcast is submitted (a syntax error is refused then,
with its line), and rendered once per recipient. Jinja2's `render` costs ~17 µs even for a
template with no variables (a new context each call; measured here), a tenth of the budget
of a planner meant to plan 150,000 recipients a second: a template made only of text,
variables (`{{ name }}`, `{{ a.b }}`) and `default` filters is therefore rendered by joining
its parts (~1 µs), which is what Jinja2 would print for it; anything else (loops, conditions,
other filters) is rendered by the sandbox, which keeps a template from reaching Python's
internals.

A variable the recipient lacks follows the broadcast's policy: "fail" the recipient (the
template raises MissingVariable) or "default": the value given in `defaults`, else nothing.

Examples:
    >>> t = compile_template("Hi {{ name }}, {{ city | default('here') }}", "sms.body")
    >>> t.render({"name": "Ann"})
    'Hi Ann, here'
    >>> t.render({})
    Traceback (most recent call last):
    ...
    sluice.audience.templates.MissingVariable: name
    >>> compile_template("Hi {{ name }", "sms.body")
    Traceback (most recent call last):
    ...
    sluice.audience.templates.TemplateError: sms.body: line 1: unexpected '}'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jinja2
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

Policy = Literal["fail", "default"]
#: A part of a fast template: text, or (variable path, value when missing or None).
_Part = str | tuple[tuple[str, ...], str | None]


class TemplateError(ValueError):
    """A template that does not compile; the message names where and why."""


class MissingVariable(KeyError):
    """A recipient lacks a variable its template needs (policy "fail")."""

    def __str__(self) -> str:
        return str(self.args[0])


class Template:
    """One compiled template: `render(variables)`, and the top-level variables it reads."""

    __slots__ = ("names", "render", "source")

    def __init__(
        self, source: str, render: Callable[[Mapping[str, Any]], str], names: frozenset[str]
    ) -> None:
        self.source = source
        self.render = render
        #: The variables the template may read (a caller builds only those).
        self.names = names


def compile_template(
    source: str,
    where: str,
    *,
    policy: Policy = "fail",
    defaults: Mapping[str, Any] | None = None,
) -> Template:
    """Compile `source`; TemplateError names `where` (the field) and the line at fault."""
    defaults = dict(defaults or {})
    env = _environment(policy, defaults)
    try:
        tree = env.parse(source)
        compiled = env.from_string(tree)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{where}: line {exc.lineno}: {exc.message}") from None
    names = frozenset(meta.find_undeclared_variables(tree))
    parts = _fast_parts(tree)
    if parts is not None:
        return Template(source, _joiner(parts, policy, defaults), names)

    def render(variables: Mapping[str, Any]) -> str:
        env.range_budget = MAX_RANGE_ITEMS
        try:
            return compiled.render(variables)
        except jinja2.UndefinedError as exc:
            raise MissingVariable(_undefined_name(exc)) from None
        except jinja2.TemplateError as exc:  # a sandbox refusal, a filter's error
            raise TemplateError(f"{where}: {exc}") from None

    return Template(source, render, names)


def _environment(policy: Policy, defaults: dict[str, Any]) -> _BoundedSandbox:
    if policy == "fail":
        undefined: type[jinja2.Undefined] = jinja2.StrictUndefined
    else:

        class Defaulted(jinja2.Undefined):
            __slots__ = ()

            def __str__(self) -> str:
                value = defaults.get(self._undefined_name or "", "")
                return str(value)

        undefined = Defaulted
    env = _BoundedSandbox(undefined=undefined, autoescape=False)
    env.globals["range"] = env.bounded_range
    return env


#: The longest string or list `*` may make, and the largest exponent `**` takes: a template
#: must not hold the process (`{{ 'x' * 10**9 }}` is 1 GB, folded at compile time otherwise).
MAX_PRODUCT_LENGTH = 64 * 1024
MAX_EXPONENT = 256
#: The longest `range` a loop may run (Jinja2's sandbox allows 100,000).
MAX_RANGE = 1000
#: The items all the ranges of one render may hold together: a range inside a loop over
#: another one is made once per turn of the outer loop, so nested loops of 1,000 each made a
#: million (~0.5 s a recipient, on the loop every channel of the process shares).
MAX_RANGE_ITEMS = 10_000


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, with `*` and `**` bounded (intercepted operators are never folded at
    compile time either)."""

    intercepted_binops = frozenset({"*", "**"})
    #: What is left of `MAX_RANGE_ITEMS` in the render under way (reset by each render).
    range_budget = MAX_RANGE_ITEMS

    def bounded_range(self, *args: int) -> range:
        numbers = range(*args)
        if len(numbers) > MAX_RANGE:
            raise SecurityError(f"a range longer than {MAX_RANGE} is not allowed")
        self.range_budget -= len(numbers)
        if self.range_budget < 0:
            raise SecurityError(
                f"ranges of more than {MAX_RANGE_ITEMS} items in all are not allowed"
            )
        return numbers

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if (
                    isinstance(sequence, str | list | tuple)
                    and isinstance(times, int)
                    and len(sequence) * times > MAX_PRODUCT_LENGTH
                ):
                    raise SecurityError(
                        f"a product longer than {MAX_PRODUCT_LENGTH} is not allowed"
                    )
        elif isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponents above {MAX_EXPONENT} are not allowed")
        return super().call_binop(context, operator, left, right)


def _undefined_name(exc: jinja2.UndefinedError) -> str:
    # "'name' is undefined" / "'dict object' has no attribute 'x'"
    text = str(exc.message or "")
    if text.endswith(" is undefined"):
        return text[: -len(" is undefined")].strip("'")
    return text


def _fast_parts(tree: nodes.Template) -> list[_Part] | None:
    """The template as text and variable parts, or None if it needs Jinja2 to render."""
    parts: list[_Part] = []
    for statement in tree.body:
        if not isinstance(statement, nodes.Output):
            return None
        for output in statement.nodes:
            node: nodes.Node | None = output
            if isinstance(node, nodes.TemplateData):
                parts.append(node.data)
                continue
            fallback: str | None = None
            if isinstance(node, nodes.Filter):
                if node.name != "default" or node.kwargs or node.dyn_args or node.dyn_kwargs:
                    return None
                if len(node.args) != 1 or not isinstance(node.args[0], nodes.Const):
                    return None
                fallback = str(node.args[0].value)
                node = node.node
            path = _path(node)
            if path is None:
                return None
            parts.append((path, fallback))
    return parts


#: Names Jinja2 reads as a dict's methods (`a.items`), not its keys: left to the sandbox.
_DICT_ATTRIBUTES = frozenset(dir(dict))


def _path(node: nodes.Node | None) -> tuple[str, ...] | None:
    if isinstance(node, nodes.Name) and node.ctx == "load":
        return (node.name,)
    if isinstance(node, nodes.Getattr):
        if node.attr in _DICT_ATTRIBUTES:
            return None
        head = _path(node.node)
        return None if head is None else (*head, node.attr)
    return None


_MISSING = object()


def _joiner(
    parts: list[_Part], policy: Policy, defaults: dict[str, Any]
) -> Callable[[Mapping[str, Any]], str]:
    if all(isinstance(part, str) for part in parts):
        text = "".join(part for part in parts if isinstance(part, str))
        return lambda variables: text

    def render(variables: Mapping[str, Any]) -> str:
        out = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
                continue
            path, fallback = part
            # As Jinja2 reads it: a missing last name is undefined (its default, or the
            # `default` filter's, or a failure); a name read from an undefined one fails.
            value: Any = variables.get(path[0], _MISSING)
            missing = 0 if value is _MISSING else -1
            for depth, name in enumerate(path[1:], 1):
                if missing >= 0:
                    break
                value = value.get(name, _MISSING) if isinstance(value, dict) else _MISSING
                if value is _MISSING:
                    missing = depth
            if missing >= 0:
                if missing < len(path) - 1:
                    raise MissingVariable(".".join(path[: missing + 1]))
                if fallback is not None:
                    value = fallback
                elif policy == "fail":
                    raise MissingVariable(".".join(path))
                else:
                    value = defaults.get(path[missing], "")
            out.append(value if isinstance(value, str) else str(value))
        return "".join(out)

    pattern = _format_pattern(parts)
    if pattern is None:
        return render
    # The common case in one C call (~4x faster than the join): `str.format_map` prints
    # `{name}` and `{a[b]}` as the join does (format(value, "") is str(value) for what JSON
    # holds); a variable it cannot find, or a value that is no dict, leaves it to the join,
    # which applies the policy.
    format_map = pattern.format_map

    def render_fast(variables: Mapping[str, Any]) -> str:
        try:
            return format_map(variables)
        except (KeyError, TypeError, IndexError, AttributeError, ValueError):
            return render(variables)

    return render_fast


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _format_pattern(parts: list[_Part]) -> str | None:
    """The parts as a `str.format` pattern, or None when one is not plain (a default, a name
    format would read otherwise)."""
    pattern = []
    for part in parts:
        if isinstance(part, str):
            pattern.append(part.replace("{", "{{").replace("}", "}}"))
            continue
        path, fallback = part
        if fallback is not None or not all(_IDENTIFIER.fullmatch(name) for name in path):
            return None
        pattern.append("{" + path[0] + "".join(f"[{name}]" for name in path[1:]) + "}")
    return "".join(pattern)
