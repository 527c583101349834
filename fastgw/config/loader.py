"""Loading the native config: read text, parse it as YAML, JSON or TOML, decode and check it.

Format detection (which format a file is in, and Gateway API manifests) lives in `fastgw.sources`,
above this package and `fastgw.gatewayapi`.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from typing import Any

import yaml

from .decode import decode_document
from .errors import ConfigError, ConfigIssue
from .positions import Pos, Token, format_path, json_positions, yaml_positions
from .schema import GatewayConfig
from .yaml_errors import yaml_error_issue

__all__ = ["FORMATS", "decode_text", "load_config", "loads_config", "loads_native", "parse_native"]

#: File extension -> format name (the native formats).
FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".toml": "toml"}


def decode_text(data: str | bytes, file: str) -> str:
    """Config bytes as text (UTF-8, an optional BOM dropped); ConfigError if they are not UTF-8."""
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            [ConfigIssue(file, "$", f"config is not valid UTF-8: {e.reason} at byte {e.start}")]
        ) from None


def loads_native(data: str | bytes, fmt: str, *, file: str = "<config>") -> GatewayConfig:
    """Decode and validate native config text in format `fmt` ('yaml', 'json' or 'toml').

    `file` names the source in the issues. Raises ConfigError listing every problem found.
    """
    obj, pos, issues = parse_native(decode_text(data, file), fmt, file)
    return decode_document(obj, pos, issues, file, yaml_hints=fmt == "yaml")


def parse_native(text: str, fmt: str, file: str) -> tuple[Any, Pos | None, list[ConfigIssue]]:
    """Native config text parsed, not yet decoded: (object, position tree, issues such as duplicate
    keys). Raises ConfigError for text that does not parse."""
    parse = _PARSERS.get(fmt)
    if parse is None:
        raise ValueError(f"unknown config format {fmt!r}")
    return parse(text, file)


# `fastgw.server` still loads configs through these two names; they hand over to fastgw.sources,
# which also reads Gateway API manifests. New callers use fastgw.sources directly.


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Same as `fastgw.sources.load_config(path)`."""
    from .. import sources

    return sources.load_config(path)


def loads_config(data: str | bytes, fmt: str, *, file: str = "<config>") -> GatewayConfig:
    """Same as `fastgw.sources.loads_config(data, fmt, file=file)`."""
    from .. import sources

    return sources.loads_config(data, fmt, file=file)


# -- parsing per format: text -> (Python object, position tree, issues) ----------------------------

Parsed = tuple[Any, Pos | None, list[ConfigIssue]]


def _dup_issues(file: str, duplicates: list[tuple[list[Token], int]]) -> list[ConfigIssue]:
    return [ConfigIssue(file, format_path(path), "duplicate key", line) for path, line in duplicates]


def _parse_yaml(text: str, file: str) -> Parsed:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        obj = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        raise ConfigError([yaml_error_issue(e, text, file)]) from None
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
