"""The `admin:` config section, and what GET /config shows of a config (secrets redacted)."""

from __future__ import annotations

import pytest

from fastgw.admin.redact import REDACTED, redacted_config
from fastgw.config import ConfigError
from fastgw.config.admin import DEFAULT_ADMIN_ADDRESS
from fastgw.sources import loads_config

HEAD = "listeners: [{address: '127.0.0.1:0'}]\n"


def errors(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        loads_config(HEAD + text, "yaml", file="<t>")
    return {e.path: e.message for e in info.value.errors}


def test_no_section_no_listener_and_an_empty_one_takes_the_default():
    assert loads_config(HEAD, "yaml").admin is None
    assert loads_config(HEAD + "admin: {}\n", "yaml").admin.address == DEFAULT_ADMIN_ADDRESS


@pytest.mark.parametrize("address", ["0.0.0.0:9901", "[::]:9901", "192.168.1.2:9901", "admin.example:9901"])
def test_a_public_address_requires_a_token(address):
    assert "$.admin.token" in errors(f"admin: {{address: '{address}'}}\n")
    cfg = loads_config(HEAD + f"admin: {{address: '{address}', token: 0123456789abcdef}}\n", "yaml")
    assert cfg.admin.token == "0123456789abcdef"


def test_token_rules():
    assert "$.admin.token" in errors("admin: {token: short}\n")
    assert "$.admin.token_file" in errors("admin: {token: 0123456789abcdef, token_file: /x}\n")
    assert "cannot read token file" in errors("admin: {token_file: /nonexistent/token}\n")["$.admin.token_file"]
    assert "$.admin.address" in errors("admin: {address: 'nope'}\n")


def test_token_file_too_short(tmp_path):
    path = tmp_path / "t"
    path.write_text("abc\n")
    assert "at least 16" in errors(f"admin: {{token_file: '{path}'}}\n")["$.admin.token_file"]


def test_redaction_hides_the_admin_token_and_secret_looking_plugin_keys():
    cfg = loads_config(HEAD + """
admin: {token: 0123456789abcdef}
upstreams: {up: {targets: [{address: '127.0.0.1:9'}]}}
policies:
  - {type: plugin, module: 'examples.plugins.request_signer:RequestSigner', config: {key: k-secret-value-0123456789, key_id: a}}
routes:
  - name: r
    upstream: up
    policies:
      - type: plugin
        module: 'examples.plugins.tenant_router:TenantRouter'
        config: {header: X-Tenant, tenants: {a: up}}
""", "yaml")
    data = redacted_config(cfg)
    assert data["admin"]["token"] == REDACTED
    assert data["policies"][0]["config"] == {"key": REDACTED, "key_id": REDACTED}
    assert data["routes"][0]["policies"][0]["config"]["header"] == "X-Tenant"
    assert "0123456789abcdef" not in repr(data) and "k-secret-value" not in repr(data)
    assert cfg.admin.token == "0123456789abcdef"    # the running config itself keeps them
