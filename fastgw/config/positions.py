"""Source positions: a light tree of line numbers for a decoded document, and `$.path` helpers.

YAML positions come from PyYAML's node marks; JSON positions from a small scanner over text the json
module has already accepted. TOML has none (tomllib keeps no positions).
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterable

import yaml

__all__ = ["Pos", "Token", "format_path", "json_positions", "parse_path", "yaml_positions"]

Token = str | int


class Pos:
    """Line (1-based) of a value, and of its children: mapping keys (key line, value) or list items."""

    __slots__ = ("line", "keys", "items")

    def __init__(self, line: int):
        self.line = line
        self.keys: dict[str, tuple[int, Pos]] | None = None
        self.items: list[Pos] | None = None

    def line_of(self, tokens: Iterable[Token]) -> int:
        """Line of the value at `tokens`; for a mapping entry, the line of its key.

        Where the path leaves the known tree (a missing key, say), the line of the deepest value found.
        """
        pos, line = self, self.line
        for tok in tokens:
            if isinstance(tok, int) and pos.items is not None and 0 <= tok < len(pos.items):
                pos = pos.items[tok]
                line = pos.line
            elif isinstance(tok, str) and pos.keys is not None and tok in pos.keys:
                line, pos = pos.keys[tok]
            else:
                break
        return line


_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def format_path(tokens: Iterable[Token]) -> str:
    """`["routes", 0, "match"]` -> `$.routes[0].match`; keys that are not identifiers are quoted."""
    out = ["$"]
    for tok in tokens:
        if isinstance(tok, int):
            out.append(f"[{tok}]")
        elif _IDENT_RE.match(tok):
            out.append(f".{tok}")
        else:
            out.append(f"[{json.dumps(tok)}]")
    return "".join(out)


_PATH_TOKEN_RE = re.compile(r'\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]|\[(\.\.\.)\]|\[("(?:[^"\\]|\\.)*")\]')
ANY_KEY = "..."


def parse_path(path: str) -> list[Token] | None:
    """Inverse of format_path, also reading msgspec's `[...]` (some dict key) as ANY_KEY.

    None if `path` is not in that form.
    """
    if not path.startswith("$"):
        return None
    tokens: list[Token] = []
    i = 1
    while i < len(path):
        m = _PATH_TOKEN_RE.match(path, i)
        if not m:
            return None
        name, index, anykey, quoted = m.groups()
        if name is not None:
            tokens.append(name)
        elif index is not None:
            tokens.append(int(index))
        elif anykey is not None:
            tokens.append(ANY_KEY)
        else:
            tokens.append(json.loads(quoted))
        i = m.end()
    return tokens


# -- YAML ------------------------------------------------------------------------------------------


def _key_text(node: yaml.Node) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def yaml_positions(node: yaml.Node | None, duplicates: list[tuple[list[Token], int]]) -> Pos | None:
    """Position tree of a composed YAML document; appends (path, line) of each duplicate key."""
    if node is None:
        return None

    seen: set[int] = set()

    def walk(n: yaml.Node, path: list[Token]) -> Pos:
        pos = Pos(n.start_mark.line + 1)
        if id(n) in seen:  # an alias to a node above: stop the recursion
            return pos
        seen.add(id(n))
        if isinstance(n, yaml.MappingNode):
            pos.keys = {}
            for key_node, value_node in n.value:
                key = _key_text(key_node)
                if key is None:
                    continue
                key_line = key_node.start_mark.line + 1
                if key == "<<" and key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                if key in pos.keys:
                    duplicates.append(([*path, key], key_line))
                pos.keys[key] = (key_line, walk(value_node, [*path, key]))
        elif isinstance(n, yaml.SequenceNode):
            pos.items = [walk(item, [*path, i]) for i, item in enumerate(n.value)]
        seen.discard(id(n))
        return pos

    return walk(node, [])


# -- JSON ------------------------------------------------------------------------------------------

_WS_RE = re.compile(r"[ \t\n\r]*")
_SCALAR_RE = re.compile(r"-?(?:Infinity|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|true|false|null|NaN")


def json_positions(text: str, duplicates: list[tuple[list[Token], int]]) -> Pos | None:
    """Position tree of a JSON document that `json.loads` accepted; None if the scan fails."""
    newlines = [i for i, c in enumerate(text) if c == "\n"]

    def line_at(i: int) -> int:
        return bisect.bisect_left(newlines, i) + 1

    def ws(i: int) -> int:
        return _WS_RE.match(text, i).end()  # type: ignore[union-attr]

    def value(i: int, path: list[Token]) -> tuple[Pos, int]:
        i = ws(i)
        pos = Pos(line_at(i))
        c = text[i]
        if c == "{":
            pos.keys = {}
            i = ws(i + 1)
            if text[i] == "}":
                return pos, i + 1
            while True:
                i = ws(i)
                key_line = line_at(i)
                key, i = json.decoder.scanstring(text, i + 1)
                i = ws(i)
                assert text[i] == ":"
                child, i = value(i + 1, [*path, key])
                if key in pos.keys:
                    duplicates.append(([*path, key], key_line))
                pos.keys[key] = (key_line, child)
                i = ws(i)
                if text[i] == "}":
                    return pos, i + 1
                assert text[i] == ","
                i += 1
        if c == "[":
            pos.items = []
            i = ws(i + 1)
            if text[i] == "]":
                return pos, i + 1
            while True:
                child, i = value(i, [*path, len(pos.items)])
                pos.items.append(child)
                i = ws(i)
                if text[i] == "]":
                    return pos, i + 1
                assert text[i] == ","
                i += 1
        if c == '"':
            _, end = json.decoder.scanstring(text, i + 1)
            return pos, end
        m = _SCALAR_RE.match(text, i)
        assert m is not None
        return pos, m.end()

    try:
        root, _ = value(0, [])
    except (AssertionError, IndexError, ValueError):
        return None
    return root
