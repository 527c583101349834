"""A config directory: every config file in it, in name order, read as one config.

A ConfigMap or Secret that Kubernetes mounts is such a directory, so `fastgw run -c /etc/fastgw` takes
one, as well as a single file. Names starting with '.' are not config: the kubelet's `..data` link and
its timestamped folders, editors' swap files. Each file's format follows its extension
(.yaml/.yml, .json, .toml); a YAML file holding Kubernetes objects is read as Gateway API manifests.

How the files combine (docs/config.md, "A config directory"):
- the native files' top-level lists (`listeners`, `routes`, `policies` ...) are concatenated in file
  name order;
- the top-level mappings keyed by name (`upstreams` ...) are merged; a name defined in two files is
  an error naming both;
- every other section (`server`, `logging`, `admin` ...) may be written in one file only;
- the manifest files are read together as one document stream (a route in one file may name a
  Gateway in another), and the native config they map to joins the merge before the native files.
Errors name the file that holds the bad value, its line, and the `$.path` within that file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import msgspec

from .config.decode import decode_document
from .config.errors import ConfigError, ConfigIssue
from .config.loader import FORMATS, decode_text, parse_native
from .config.positions import Pos, Token, format_path, parse_path
from .config.schema import GatewayConfig
from .gatewayapi import looks_like_manifests
from .gatewayapi.frontend import manifest_files_to_native

__all__ = ["config_files", "load_directory"]


def _top_level_kinds() -> dict[str, str]:
    """Each top-level key of the native config: 'list', 'map' (keyed by name) or 'section'."""
    kinds = {}
    for f in msgspec.inspect.type_info(GatewayConfig).fields:
        t = f.type
        if isinstance(t, msgspec.inspect.UnionType):   # `X | None`
            t = next((x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)), t)
        if isinstance(t, msgspec.inspect.ListType):
            kinds[f.encode_name] = "list"
        elif isinstance(t, msgspec.inspect.DictType):
            kinds[f.encode_name] = "map"
        else:
            kinds[f.encode_name] = "section"
    return kinds


_KINDS = _top_level_kinds()


def config_files(directory: str) -> list[str]:
    """The config files of a directory, in name order (symlinks followed, as the kubelet makes them)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        raise ConfigError([ConfigIssue(directory, "$", f"cannot read config directory: {e.strerror or e}")]) from None
    return [os.path.join(directory, n) for n in names
            if not n.startswith(".") and os.path.splitext(n)[1].lower() in FORMATS
            and os.path.isfile(os.path.join(directory, n))]


@dataclass
class _Part:
    file: str
    obj: Any
    pos: Pos | None


def load_directory(directory: str) -> GatewayConfig:
    """Load and validate every config file of `directory` as one config. Raises ConfigError listing
    every problem, each in the file it is in."""
    files = config_files(directory)
    if not files:
        shown = ", ".join(sorted(FORMATS))
        raise ConfigError([ConfigIssue(directory, "$", f"no config files in the directory (looked for {shown})")])
    issues: list[ConfigIssue] = []
    parts: list[_Part] = []
    manifests: list[tuple[str, str]] = []
    yaml_hints = False
    for file in files:
        try:
            with open(file, "rb") as f:
                text = decode_text(f.read(), file)
            fmt = FORMATS[os.path.splitext(file)[1].lower()]
            if fmt == "yaml" and looks_like_manifests(text):
                manifests.append((text, file))
                continue
            obj, pos, found = parse_native(text, fmt, file)
        except ConfigError as e:
            issues += e.errors
            continue
        except OSError as e:
            issues.append(ConfigIssue(file, "$", f"cannot read config: {e.strerror or e}"))
            continue
        yaml_hints |= fmt == "yaml"
        issues += found
        if obj is None:
            continue      # an empty file adds nothing (a ConfigMap key left blank)
        if not isinstance(obj, dict):
            issues.append(ConfigIssue(file, "$", f"expected a mapping, got {type(obj).__name__}",
                                      pos.line if pos else None))
            continue
        parts.append(_Part(file, obj, pos))
    if manifests:
        try:
            native = manifest_files_to_native(manifests, directory)
        except ConfigError as e:
            issues += e.errors
        else:
            parts.insert(0, _Part(f"{directory} (from the Gateway API manifests)", native, None))
    if issues:            # a file that does not parse leaves the whole incomplete: say only that
        raise ConfigError(issues)
    merged, origins = _merge(parts, issues)
    try:
        cfg = decode_document(merged, None, [], directory, yaml_hints=yaml_hints)
    except ConfigError as e:
        issues += [_locate(i, origins) for i in e.errors]
    if issues:
        raise ConfigError(issues)
    return cfg


Origins = dict[tuple[Token, ...], tuple[_Part, list[Token]]]


def _merge(parts: list[_Part], issues: list[ConfigIssue]) -> tuple[dict[str, Any], Origins]:
    """One document of the parts, and where each of its top-level entries came from."""
    merged: dict[str, Any] = {}
    origins: Origins = {}
    for part in parts:
        for key, value in part.obj.items():
            kind = _KINDS.get(key, "section")
            if kind == "list" and isinstance(value, list) and isinstance(merged.get(key, []), list):
                into = merged.setdefault(key, [])
                for i, item in enumerate(value):
                    origins[(key, len(into))] = (part, [key, i])
                    into.append(item)
                origins.setdefault((key,), (part, [key]))
            elif kind == "map" and isinstance(value, dict) and isinstance(merged.get(key, {}), dict):
                into = merged.setdefault(key, {})
                origins.setdefault((key,), (part, [key]))
                for name, item in value.items():
                    if name in into:
                        first = origins[(key, name)][0].file
                        issues.append(_issue(part, [key, name], f"{key} {name!r} is also defined in {first}"))
                        continue
                    origins[(key, name)] = (part, [key, name])
                    into[name] = item
            elif key in merged:
                first = origins[(key,)][0].file
                issues.append(_issue(part, [key], f"{key!r} is also written in {first}: a section may be in "
                                                  f"one file of the directory only"))
            else:
                merged[key] = value
                origins[(key,)] = (part, [key])
    return merged, origins


def _issue(part: _Part, tokens: list[Token], message: str) -> ConfigIssue:
    return ConfigIssue(part.file, format_path(tokens), message, part.pos.line_of(tokens) if part.pos else None)


def _locate(issue: ConfigIssue, origins: Origins) -> ConfigIssue:
    """An issue of the merged document, moved to the file (and the path in it) the value came from."""
    tokens = parse_path(issue.path)
    if not tokens:
        return issue
    for n in (2, 1):
        origin = origins.get(tuple(tokens[:n]))
        if origin is not None:
            part, base = origin
            return _issue(part, [*base, *tokens[n:]], issue.message)
    return issue
