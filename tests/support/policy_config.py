"""A one-route config whose route takes the policies a test writes, and the errors loading it gives:
for the config tests of the policy kinds."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fastgw.config import ConfigError, load_config

BASE = """\
listeners:
  - address: 127.0.0.1:0
upstreams:
  app:
    targets:
      - address: 127.0.0.1:9
routes:
  - name: api
    upstream: app
    policies:
"""


def write_policies(tmp_path: Path, policies: str) -> Path:
    """The config file with `policies` (YAML list items, dedented) as the route's policies."""
    path = tmp_path / "gw.yaml"
    path.write_text(BASE + textwrap.indent(textwrap.dedent(policies), "      "))
    return path


def problems(tmp_path: Path, policies: str) -> list[tuple[str, str]]:
    """(`$.path`, message) of every error loading that config; fails when it loads."""
    with pytest.raises(ConfigError) as info:
        load_config(write_policies(tmp_path, policies))
    return [(i.path, i.message) for i in info.value.errors]
