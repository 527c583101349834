"""Loading a config file: read, parse by extension, decode with msgspec, check, report with lines."""

from __future__ import annotations

import copy
import json
import os
import re
import tomllib
from typing import Any

import msgspec
import yaml

from .errors import ConfigError, ConfigIssue
from .positions import ANY_KEY, Pos, Token, format_path, json_positions, parse_path, yaml_positions
from .schema import GatewayConfig, dec_hook
from .validate import check_config

__all__ = ["FORMATS", "load_config", "loads_config"]

#: File extension -> format name.
FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".toml": "toml"}


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Load and validate a config file; the format follows the extension (.yaml/.yml, .json, .toml).

    Raises ConfigError listing every problem found.
    """
    file = os.fspath(path)
    ext = os.path.splitext(file)[1].lower()
    fmt = FORMATS.get(ext)
    if fmt is None:
        shown = repr(ext) if ext else "no extension"
        raise ConfigError(
            [
                ConfigIssue(
                    file, "$", f"unsupported config file type ({shown}); use .yaml, .yml, .json or .toml"
                )
            ]
        )
    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError([ConfigIssue(file, "$", f"cannot read config: {e.strerror or e}")]) from None
    return loads_config(data, fmt, file=file)


def loads_config(data: str | bytes, fmt: str, *, file: str = "<config>") -> GatewayConfig:
    """Decode and validate config text in format `fmt` ('yaml', 'json' or 'toml').

    `file` names the source in the issues. Raises ConfigError listing every problem found.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ConfigError(
                [ConfigIssue(file, "$", f"config is not valid UTF-8: {e.reason} at byte {e.start}")]
            ) from None
    else:
        text = data
    parse = _PARSERS.get(fmt)
    if parse is None:
        raise ValueError(f"unknown config format {fmt!r}")
    if fmt == "yaml":
        # A Kubernetes document stream (Gateway API manifests) goes to the Gateway API front end.
        from ..gatewayapi import load_manifests, looks_like_manifests

        if looks_like_manifests(text):
            return load_manifests(text, file)
    obj, pos, issues = parse(text, file)
    return _decode(obj, pos, issues, file)


# -- parsing per format: text -> (Python object, position tree, issues) ----------------------------

Parsed = tuple[Any, Pos | None, list[ConfigIssue]]


def _dup_issues(file: str, duplicates: list[tuple[list[Token], int]]) -> list[ConfigIssue]:
    return [ConfigIssue(file, format_path(path), "duplicate key", line) for path, line in duplicates]


def _parse_yaml(text: str, file: str) -> Parsed:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        obj = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        parts = [p for p in (e.context, e.problem) if p]
        message = "invalid YAML: " + "; ".join(parts)
        raise ConfigError([ConfigIssue(file, "$", message, mark.line + 1 if mark else None)]) from None
    except yaml.YAMLError as e:
        raise ConfigError([ConfigIssue(file, "$", f"invalid YAML: {e}")]) from None
    finally:
        loader.dispose()
    duplicates: list[tuple[list[Token], int]] = []
    pos = yaml_positions(node, duplicates)
    return obj, pos, _dup_issues(file, duplicates)


def _parse_json(text: str, file: str) -> Parsed:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            [ConfigIssue(file, "$", f"invalid JSON: {e.msg} (column {e.colno})", e.lineno)]
        ) from None
    duplicates: list[tuple[list[Token], int]] = []
    pos = json_positions(text, duplicates)
    return obj, pos, _dup_issues(file, duplicates)


_TOML_AT_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _parse_toml(text: str, file: str) -> Parsed:
    try:
        obj = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        line = None
        m = _TOML_AT_RE.search(message)
        if m:
            line = int(m.group(1))
            message = f"{message[: m.start()]} (column {m.group(2)})"
        raise ConfigError([ConfigIssue(file, "$", f"invalid TOML: {message}", line)]) from None
    return obj, None, []


_PARSERS = {"yaml": _parse_yaml, "json": _parse_json, "toml": _parse_toml}


# -- decoding and reporting ------------------------------------------------------------------------

_AT_RE = re.compile(r"^(?P<msg>.*) - at `(?P<path>\$[^`]*)`$", re.S)
_KEY_AT_RE = re.compile(r"^(?P<msg>.*) - at `key` in `(?P<path>\$[^`]*)`$", re.S)
_UNKNOWN_RE = re.compile(r"^Object contains unknown field `(?P<field>[^`]*)`$")
_MISSING_RE = re.compile(r"^Object missing required field `(?P<field>[^`]*)`$")


_NON_EMPTY = {
    "listeners": "at least one listener is required",
    "hosts": "must not be empty (leave 'hosts' out to match any host)",
}


def _convert(obj: Any) -> GatewayConfig:
    return msgspec.convert(obj, GatewayConfig, dec_hook=dec_hook)


def _lower_first(message: str) -> str:
    """msgspec's "Expected ...", "Invalid ..." -> "expected ...", in line with our own messages."""
    if message[:1].isupper() and message[1:2].islower():
        return message[0].lower() + message[1:]
    return message


def _split_error(err: msgspec.ValidationError) -> tuple[str, str]:
    """(message, path) of a msgspec error; a bad dict key gets the path `<dict>[...]`."""
    text = str(err)
    m = _KEY_AT_RE.match(text)
    if m:
        return f"invalid key: {_lower_first(m.group('msg'))}", m.group("path") + "[...]"
    m = _AT_RE.match(text)
    if m:
        return m.group("msg"), m.group("path")
    return text, "$"


def _resolve_any_keys(obj: Any, tokens: list[Token], message: str) -> list[Token]:
    """Replace msgspec's `[...]` (some dict key) in an error path by the actual key.

    msgspec checks dict entries in order, so the culprit is the first key that, kept alone in its dict,
    still yields the same error.
    """
    while ANY_KEY in tokens:
        k = tokens.index(ANY_KEY)
        parents: list[Any] = [obj]
        for tok in tokens[:k]:
            parents.append(parents[-1][tok])
        container = parents[-1]
        if not isinstance(container, dict):
            return tokens
        culprit = None
        for key, value in container.items():
            # Rebuild the document with the dict at tokens[:k] reduced to this one entry.
            replaced: Any = {key: value}
            for depth in range(k - 1, -1, -1):
                parent = parents[depth]
                copy = dict(parent) if isinstance(parent, dict) else list(parent)
                copy[tokens[depth]] = replaced
                replaced = copy
            try:
                _convert(replaced)
            except msgspec.ValidationError as e:
                msg, path = _split_error(e)
                sub = parse_path(path)
                if msg == message and sub is not None and sub[k + 1 :] == tokens[k + 1 :]:
                    culprit = key
                    break
        if culprit is None:
            return tokens
        tokens = [*tokens[:k], culprit, *tokens[k + 1 :]]
    return tokens


def _fields_at(tokens: list[Token]) -> list[str] | None:
    """Field names of the Struct at `tokens` in the schema, or None if that is no Struct."""

    def unwrap(t: Any) -> Any:
        while True:
            if isinstance(t, msgspec.inspect.Metadata):
                t = t.type
            elif isinstance(t, msgspec.inspect.UnionType):
                rest = [u for u in t.types if not isinstance(u, msgspec.inspect.NoneType)]
                if len(rest) != 1:
                    return t
                t = rest[0]
            else:
                return t

    t = msgspec.inspect.type_info(GatewayConfig)
    for tok in tokens:
        t = unwrap(t)
        if isinstance(t, msgspec.inspect.StructType) and isinstance(tok, str):
            by_name = {f.encode_name: f.type for f in t.fields}
            if tok not in by_name:
                return None
            t = by_name[tok]
        elif isinstance(t, msgspec.inspect.ListType) and isinstance(tok, int):
            t = t.item_type
        elif isinstance(t, msgspec.inspect.DictType):
            t = t.value_type
        else:
            return None
    t = unwrap(t)
    if isinstance(t, msgspec.inspect.StructType):
        return [f.encode_name for f in t.fields]
    return None


def _issue_from_validation(
    err: msgspec.ValidationError, obj: Any, pos: Pos | None, file: str
) -> tuple[ConfigIssue, list[Token] | None]:
    """The issue, and the tokens of the offending node (None when they cannot be resolved)."""
    message, path = _split_error(err)
    tokens = parse_path(path)
    if tokens is None:
        return ConfigIssue(file, path, message), None
    if ANY_KEY in tokens:
        tokens = _resolve_any_keys(obj, tokens, message)
    if m := _UNKNOWN_RE.match(message):
        # Point at the unknown field itself, not the object holding it.
        allowed = _fields_at(tokens)
        tokens = [*tokens, m.group("field")]
        message = "unknown field"
        if allowed:
            message += f" (expected one of: {', '.join(allowed)})"
    elif m := _MISSING_RE.match(message):
        message = f"missing required field '{m.group('field')}'"
    message = _lower_first(message)
    if message == "expected `array` of length >= 1" and tokens and tokens[-1] in _NON_EMPTY:
        message = _NON_EMPTY[tokens[-1]]
    shown = path if ANY_KEY in tokens else format_path(tokens)
    line = pos.line_of(t for t in tokens if t != ANY_KEY) if pos is not None else None
    resolved = None if ANY_KEY in tokens or _MISSING_PREFIX in message else tokens
    return ConfigIssue(file, shown, message, line), resolved


_MISSING_PREFIX = "missing required field"
_MAX_DECODE_ISSUES = 50


def _drop_node(obj: Any, tokens: list[Token]) -> bool:
    """Removes the node at `tokens` from a plain decoded document; False if it cannot."""
    if not tokens:
        return False
    parent = obj
    for t in tokens[:-1]:
        try:
            parent = parent[t]
        except (KeyError, IndexError, TypeError):
            return False
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        del parent[last]
        return True
    if isinstance(parent, list) and isinstance(last, int) and 0 <= last < len(parent):
        del parent[last]
        return True
    return False


def _decode_issues(err: msgspec.ValidationError, obj: Any, pos: Pos | None, file: str) -> list[ConfigIssue]:
    """msgspec stops at the first problem; to list every one, drop each offending node from a copy
    and decode again. A field this makes missing is not reported (its bad value already was)."""
    work = copy.deepcopy(obj)
    dropped: set[str] = set()
    out: list[ConfigIssue] = []
    for _ in range(_MAX_DECODE_ISSUES):
        issue, tokens = _issue_from_validation(err, work, pos, file)
        if issue.message.startswith(_MISSING_PREFIX):
            field = issue.message.split("'")[1] if "'" in issue.message else ""
            if f"{issue.path}.{field}" in dropped or (issue.path == "$" and f"$.{field}" in dropped):
                break
        out.append(issue)
        if tokens is None or not _drop_node(work, tokens):
            break
        dropped.add(format_path(tokens))
        try:
            _convert(work)
            break
        except msgspec.ValidationError as e:
            err = e
    return out


def _decode(obj: Any, pos: Pos | None, issues: list[ConfigIssue], file: str) -> GatewayConfig:
    if obj is None:
        raise ConfigError([*issues, ConfigIssue(file, "$", "config is empty", pos.line if pos else None)])
    try:
        cfg = _convert(obj)
    except msgspec.ValidationError as e:
        raise ConfigError([*issues, *_decode_issues(e, obj, pos, file)]) from None
    for tokens, message in check_config(cfg):
        line = pos.line_of(tokens) if pos is not None else None
        issues.append(ConfigIssue(file, format_path(tokens), message, line))
    if issues:
        raise ConfigError(issues)
    return cfg
