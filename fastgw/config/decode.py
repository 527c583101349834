"""Decoding a parsed document into GatewayConfig, reporting every schema and semantic problem at once.

msgspec stops at the first problem. To list them all, each offending node is dropped from a working
copy and the copy decoded again; once it decodes, the semantic checks run on what is left, so a type
error does not hide the semantic errors of the rest. Dropping a node can make its parent incomplete
(a required field gone, a list left empty) or leave a reference dangling (a route naming a dropped
upstream): such follow-on problems are not reported, their cause already was.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any

import msgspec

from .errors import ConfigError, ConfigIssue
from .positions import ANY_KEY, Pos, Token, format_path, parse_path
from .schema import GatewayConfig, dec_hook
from .validate import check_config
from .yaml_errors import list_for_string_hint

__all__ = ["convert", "decode_document"]

_MAX_DECODE_ISSUES = 50

_NON_EMPTY = {
    "listeners": "at least one listener is required",
    "hosts": "must not be empty (leave 'hosts' out to match any host)",
}

# A required top-level field that had to go is replaced by a stand-in so the rest can still be
# checked; problems under the stand-in are not reported.
_STAND_INS: dict[str, Any] = {"listeners": [{"address": "127.0.0.1:0"}]}


def convert(obj: Any) -> GatewayConfig:
    return msgspec.convert(obj, GatewayConfig, dec_hook=dec_hook)


def _lower_first(message: str) -> str:
    """msgspec's "Expected ...", "Invalid ..." -> "expected ...", in line with our own messages."""
    if message[:1].isupper() and message[1:2].islower():
        return message[0].lower() + message[1:]
    return message


_AT_SUFFIX = " - at `"
_KEY_AT_SUFFIX = " - at `key` in `"


def _split_error(err: msgspec.ValidationError) -> tuple[str, str]:
    """(message, path) of a msgspec error; a bad dict key gets the path `<dict>[...]`."""
    text = str(err)
    if text.endswith("`"):
        k = text.rfind(_KEY_AT_SUFFIX)
        if k >= 0:
            return f"invalid key: {_lower_first(text[:k])}", text[k + len(_KEY_AT_SUFFIX) : -1] + "[...]"
        k = text.rfind(_AT_SUFFIX)
        if k >= 0 and text[k + len(_AT_SUFFIX) :].startswith("$"):
            return text[:k], text[k + len(_AT_SUFFIX) : -1]
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
                shallow = dict(parent) if isinstance(parent, dict) else list(parent)
                shallow[tokens[depth]] = replaced
                replaced = shallow
            try:
                convert(replaced)
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


def _unknown_field_message(field: str, allowed: list[str] | None) -> str:
    if not allowed:
        return "unknown field"
    close = difflib.get_close_matches(field, allowed, n=1, cutoff=0.6)
    guess = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown field ({guess}expected one of: {', '.join(allowed)})"


def _value_at(obj: Any, tokens: list[Token]) -> Any:
    for tok in tokens:
        try:
            obj = obj[tok]
        except (KeyError, IndexError, TypeError):
            return None
    return obj


class _Found:
    """One msgspec error, made readable. `tokens` is the offending node in the working copy (None if
    unknown); for a missing field, `tokens` is the object lacking it and `missing` the field."""

    __slots__ = ("message", "tokens", "missing", "shown")

    def __init__(self, message: str, tokens: list[Token] | None, missing: str | None, shown: str):
        self.message = message
        self.tokens = tokens
        self.missing = missing
        self.shown = shown


def _find(err: msgspec.ValidationError, obj: Any, yaml_hints: bool) -> _Found:
    message, path = _split_error(err)
    tokens = parse_path(path)
    if tokens is None:
        return _Found(message, None, None, path)
    if ANY_KEY in tokens:
        tokens = _resolve_any_keys(obj, tokens, message)
    missing = None
    if message.startswith("Object contains unknown field `") and message.endswith("`"):
        field = message[len("Object contains unknown field `") : -1]
        # Point at the unknown field itself, not the object holding it.
        message = _unknown_field_message(field, _fields_at(tokens))
        tokens = [*tokens, field]
    elif message.startswith("Object missing required field `") and message.endswith("`"):
        missing = message[len("Object missing required field `") : -1]
        message = f"missing required field '{missing}'"
    message = _lower_first(message)
    if message == "expected `array` of length >= 1" and tokens and tokens[-1] in _NON_EMPTY:
        message = _NON_EMPTY[tokens[-1]]
    if yaml_hints and message == "expected `str`, got `array`":
        hint = list_for_string_hint(_value_at(obj, tokens))
        if hint:
            message += f" ({hint})"
    if ANY_KEY in tokens:
        return _Found(message, None, None, path)
    return _Found(message, tokens, missing, format_path(tokens))


def _is_within(inner: list[Token], outer: list[Token]) -> bool:
    return inner[: len(outer)] == outer


class _Work:
    """The working copy of a document, what was dropped from it, and the way back to original paths
    (dropping a list item shifts the items after it)."""

    def __init__(self, obj: Any):
        self.original_doc = obj
        self.doc = copy.deepcopy(obj)
        # id(list in doc) -> original indexes of its items; dropped nodes stay referenced in `_gone`
        # so that no new list can take the id of one with an entry here.
        self.indexes: dict[int, list[int]] = {}
        self._gone: list[Any] = []
        self.dropped: list[list[Token]] = []
        self.stood_in: list[list[Token]] = []

    def original(self, tokens: list[Token]) -> list[Token]:
        out: list[Token] = []
        node = self.doc
        for tok in tokens:
            if isinstance(tok, int) and isinstance(node, list):
                index = self.indexes.get(id(node))
                out.append(index[tok] if index is not None and 0 <= tok < len(index) else tok)
                node = node[tok] if 0 <= tok < len(node) else None
            else:
                out.append(tok)
                node = node.get(tok) if isinstance(node, dict) else None
        return out

    def drop(self, tokens: list[Token]) -> bool:
        """Remove the node at `tokens` (working-copy path); a required top-level field gets its
        stand-in. False if neither is possible."""
        if not tokens:
            return False
        orig = self.original(tokens)
        parent = _value_at(self.doc, tokens[:-1]) if len(tokens) > 1 else self.doc
        last = tokens[-1]
        if len(tokens) == 1 and last in _STAND_INS and isinstance(parent, dict):
            if orig in self.stood_in:
                return False
            self._gone.append(parent.get(last))
            parent[last] = copy.deepcopy(_STAND_INS[last])
            self.stood_in.append(orig)
            return True
        if isinstance(parent, dict) and last in parent:
            self._gone.append(parent.pop(last))
        elif isinstance(parent, list) and isinstance(last, int) and 0 <= last < len(parent):
            self.indexes.setdefault(id(parent), list(range(len(parent)))).pop(last)
            self._gone.append(parent.pop(last))
        else:
            return False
        self.dropped.append(orig)
        return True

    def caused_by_drop(self, orig: list[Token], missing: str | None) -> bool:
        """Whether a decode problem at `orig` is what an earlier drop left behind."""
        if missing is not None:
            return [*orig, missing] in self.dropped or any(_is_within(orig, s) for s in self.stood_in)
        return any(_is_within(d, orig) for d in self.dropped) or any(_is_within(orig, s) for s in self.stood_in)

    def _gone_names(self, section: str) -> set[str] | None:
        """Names of the listeners/upstreams dropped (None: all of them are suspect)."""
        names: set[str] = set()
        for d in [*self.dropped, *self.stood_in]:
            if d[:1] != [section]:
                continue
            if len(d) == 1:
                return None
            key = d[1]
            if section == "upstreams":
                names.add(str(key))
            else:
                name = _value_at(self.original_doc, [section, key, "name"])
                if isinstance(name, str):
                    names.add(name)
        return names

    def hides(self, orig: list[Token], message: str) -> bool:
        """Whether a semantic problem at `orig` may only come from what was dropped."""
        if any(_is_within(orig, s) for s in self.stood_in):
            return True
        # A problem of a node that lost a part ("exactly one of 'prefix', ... (got none)" once a bad
        # prefix went) is taken for a follow-on; another real problem of that same node waits for
        # the next run. Top-level sections are exempt: they lose parts all the time.
        if len(orig) >= 2 and any(len(d) > len(orig) and _is_within(d, orig) for d in self.dropped):
            return True
        # References by name (validate.py's "unknown upstream 'x' (known: ...)") to what was dropped.
        for what, section in (("unknown upstream ", "upstreams"), ("unknown listener ", "listeners")):
            if message.startswith(what):
                gone = self._gone_names(section)
                name = message[len(what) :].split(" (known")[0].strip("'\"")
                if gone is None or name in gone:
                    return True
        return False


def decode_document(obj: Any, pos: Pos | None, issues: list[ConfigIssue], file: str, *,
                    yaml_hints: bool = False) -> GatewayConfig:
    """Decode and check a parsed document; raise ConfigError with `issues` and every problem found.

    `yaml_hints` adds hints for YAML pitfalls (an unquoted `[...]` read as a list).
    """
    if obj is None:
        raise ConfigError([*issues, ConfigIssue(file, "$", "config is empty", pos.line if pos else None)])

    def line_of(tokens: list[Token]) -> int | None:
        return pos.line_of(tokens) if pos is not None else None

    out = list(issues)
    try:
        cfg: GatewayConfig | None = convert(obj)
        work = None
    except msgspec.ValidationError as first:
        cfg, work, err = None, _Work(obj), first
        for _ in range(_MAX_DECODE_ISSUES):
            found = _find(err, work.doc, yaml_hints)
            if found.tokens is None:
                out.append(ConfigIssue(file, found.shown, found.message))
                break
            orig = work.original(found.tokens)
            if not work.caused_by_drop(orig, found.missing):
                out.append(ConfigIssue(file, format_path(orig), found.message, line_of(orig)))
            # A missing field takes its object with it; at the top level the field gets its stand-in.
            if not work.drop(found.tokens or ([found.missing] if found.missing else [])):
                break
            try:
                cfg = convert(work.doc)
                break
            except msgspec.ValidationError as e:
                err = e
    if cfg is not None:
        for tokens, message in check_config(cfg):
            orig = work.original(tokens) if work is not None else tokens
            if work is None or not work.hides(orig, message):
                out.append(ConfigIssue(file, format_path(orig), message, line_of(orig)))
    if out:
        raise ConfigError(out)
    assert cfg is not None
    return cfg
