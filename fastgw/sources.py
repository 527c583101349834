"""Config sources: which format a file or text is in, and loading it with the front end that reads it.

This sits above `fastgw.config` (the native config) and `fastgw.gatewayapi` (Kubernetes Gateway API
manifests, built on the native config) so that neither package has to import the other to dispatch.
Formats: 'yaml', 'json', 'toml' (the native config) and 'manifests'. A YAML source whose text is a
Kubernetes document stream (top-level `apiVersion:` and `kind:`) is read as manifests.
"""

from __future__ import annotations

import os
import re

from .config.errors import ConfigError, ConfigIssue
from .config.loader import FORMATS, decode_text, loads_native
from .config.schema import GatewayConfig
from .gatewayapi import load_manifests, looks_like_manifests

__all__ = [
    "FORMATS",
    "FORMAT_NAMES",
    "format_of_path",
    "load_config",
    "loads_config",
    "looks_like_manifests",
    "sniff_format",
]

#: Every format `loads_config` (and `fastgw check --format`) accepts.
FORMAT_NAMES = ("yaml", "json", "toml", "manifests")


# A TOML document's first statement is `key = value` or a `[table]` header; neither is a YAML
# mapping (the native config's top level), and a JSON document starts with '{'.
_TOML_START_RE = re.compile(r'^(?:\[\[?\s*[A-Za-z0-9_."-]+\s*\]\]?|[A-Za-z0-9_."-]+\s*=)')


def sniff_format(text: str) -> str:
    """The format of config text with no file name to go by (standard input)."""
    if looks_like_manifests(text):
        return "manifests"
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("{"):
            return "json"
        if _TOML_START_RE.match(stripped):
            return "toml"
        break
    return "yaml"


def format_of_path(file: str) -> str:
    """The format a file's extension names; ConfigError for any other extension."""
    ext = os.path.splitext(file)[1].lower()
    fmt = FORMATS.get(ext)
    if fmt is None:
        shown = repr(ext) if ext else "no extension"
        raise ConfigError(
            [ConfigIssue(file, "$", f"unsupported config file type ({shown}); use .yaml, .yml, .json or .toml")]
        )
    return fmt


def load_config(path: str | os.PathLike[str], fmt: str | None = None) -> GatewayConfig:
    """Load and validate a config file: native YAML/JSON/TOML, or Gateway API manifests; or a
    directory of such files (fastgw.sourcedir).

    The format follows the extension (.yaml/.yml, .json, .toml) unless `fmt` names one of
    FORMAT_NAMES. Raises ConfigError listing every problem found.
    """
    file = os.fspath(path)
    if os.path.isdir(file):
        if fmt is not None:
            raise ConfigError([ConfigIssue(file, "$", "a config directory's files each have their format by "
                                                       "extension; --format applies to a single file")])
        from .sourcedir import load_directory

        return load_directory(file)
    if fmt is None:
        fmt = format_of_path(file)
    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError([ConfigIssue(file, "$", f"cannot read config: {e.strerror or e}")]) from None
    return loads_config(data, fmt, file=file)


def loads_config(data: str | bytes, fmt: str | None, *, file: str = "<config>") -> GatewayConfig:
    """Decode and validate config text in format `fmt` (one of FORMAT_NAMES; None sniffs it).

    `file` names the source in the issues. Raises ConfigError listing every problem found.
    """
    if fmt is not None and fmt not in FORMAT_NAMES:
        raise ValueError(f"unknown config format {fmt!r}")
    text = decode_text(data, file)
    if fmt is None:
        fmt = sniff_format(text)
    if fmt == "manifests" or (fmt == "yaml" and looks_like_manifests(text)):
        return load_manifests(text, file)
    return loads_native(text, fmt, file=file)
