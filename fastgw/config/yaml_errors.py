"""YAML syntax errors as ConfigIssues: the line where the problem is, and hints for YAML's pitfalls.

PyYAML reports an unclosed `{`, `[` or quote where it gave up (often the next line, or the end of the
file); the line that needs fixing is the one that opened it, its context mark. Unquoted values that
YAML reads as syntax, `[::1]:8080` (a list) and `*.example.com` (an alias), get a "quote it" hint.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from .errors import ConfigIssue

__all__ = ["list_for_string_hint", "yaml_error_issue"]

# Contexts whose mark is the opener of something never closed.
_OPENER_CONTEXTS = ("while parsing a flow mapping", "while parsing a flow sequence", "while scanning a quoted scalar")

_BRACKETED_RE = re.compile(r"(?<![\"'\w])\[[0-9A-Fa-f.:]*:[0-9A-Fa-f.:]*(?:%[\w.-]+)?\](?::\d+)?")
_WILDCARD_RE = re.compile(r"(?<![\"'\w])\*\.[A-Za-z0-9.-]*[A-Za-z0-9]")

_LIST_HINT = "an unquoted '[' starts a YAML list; quote it: '{}'"
_ALIAS_HINT = "an unquoted '*' starts a YAML alias; quote it: '{}'"


def _hint(text: str, lines: list[int], alias: bool) -> str | None:
    source = text.splitlines()
    for n in lines:
        if not 0 <= n < len(source):
            continue
        if alias and (m := _WILDCARD_RE.search(source[n])):
            return _ALIAS_HINT.format(m.group(0))
        if m := _BRACKETED_RE.search(source[n]):
            return _LIST_HINT.format(m.group(0))
    return None


def yaml_error_issue(err: yaml.YAMLError, text: str, file: str) -> ConfigIssue:
    """The issue for a YAML syntax error in `text`."""
    if not isinstance(err, yaml.MarkedYAMLError):
        return ConfigIssue(file, "$", f"invalid YAML: {err}")
    context = err.context or ""
    if err.context_mark is not None and context.startswith(_OPENER_CONTEXTS):
        mark = err.context_mark
    else:
        mark = err.problem_mark or err.context_mark
    message = "invalid YAML: " + "; ".join(p for p in (err.context, err.problem) if p)
    marks = [m.line for m in (err.problem_mark, err.context_mark) if m is not None]
    hint = _hint(text, marks, alias=context.startswith("while scanning an alias"))
    if hint:
        message += f" ({hint})"
    return ConfigIssue(file, "$", message, mark.line + 1 if mark is not None else None)


def list_for_string_hint(value: Any) -> str | None:
    """A hint when YAML read an unquoted `[2001:db8::1]` as a one-item list where a string belongs."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str) and ":" in value[0]:
        return _LIST_HINT.format(f"[{value[0]}]")
    return None
