"""A config directory (fastgw/sourcedir.py): files merged in name order, and every error placed in the
file, line and `$.path` it belongs to."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import msgspec
import pytest
import yaml
from test_gatewayapi import dump, gateway, route, service, slice_

from fastgw.config import ConfigError, GatewayConfig
from fastgw.config.schema import dec_hook
from fastgw.sources import load_config


def write(d, name: str, text: str) -> None:
    (d / name).write_text(textwrap.dedent(text))


def errors(d) -> list[tuple[str, str, int | None, str]]:
    with pytest.raises(ConfigError) as exc:
        load_config(d)
    return [(i.file.rsplit("/", 1)[-1], i.path, i.line, i.message) for i in exc.value.errors]


def test_lists_concatenate_in_name_order_and_maps_merge(tmp_path):
    write(tmp_path, "20-b.yaml", """\
        upstreams:
          b: {targets: [{address: 127.0.0.1:9002}]}
        routes:
          - {name: rb, match: {path: {prefix: /b}}, upstream: b}
        """)
    write(tmp_path, "10-a.json", '{"listeners": [{"address": "127.0.0.1:8080"}],'
                                 ' "upstreams": {"a": {"targets": [{"address": "127.0.0.1:9001"}]}},'
                                 ' "routes": [{"name": "ra", "match": {"path": {"prefix": "/a"}}, "upstream": "a"}]}')
    write(tmp_path, "30-server.toml", "[server]\ndrain_timeout = '7s'\n")
    cfg = load_config(tmp_path)
    assert [r.name for r in cfg.routes] == ["ra", "rb"]
    assert set(cfg.upstreams) == {"a", "b"}
    assert cfg.server.drain_timeout == 7.0


def test_what_is_not_config_is_left_out(tmp_path):
    write(tmp_path, "gateway.yaml", "listeners: [{address: 127.0.0.1:8080}]\n")
    write(tmp_path, ".gateway.yaml.swp", "not: [yaml")
    write(tmp_path, "README.md", "# notes")
    write(tmp_path, "empty.yaml", "")
    (tmp_path / "..data").mkdir()
    write(tmp_path / "..data", "other.yaml", "listeners: [{address: 127.0.0.1:1}]\n")
    assert [str(lst.address) for lst in load_config(tmp_path).listeners] == ["127.0.0.1:8080"]


def test_an_error_names_the_file_its_line_and_its_own_path(tmp_path):
    write(tmp_path, "10-a.yaml", """\
        listeners: [{address: 127.0.0.1:8080}]
        upstreams:
          a: {targets: [{address: 127.0.0.1:9001}]}
        routes:
          - {name: ra, match: {path: {prefix: /a}}, upstream: a}
        """)
    write(tmp_path, "20-b.yaml", """\
        routes:
          - {name: rb, match: {path: {prefix: /b}}, upstream: a}
          - name: rc
            match: {path: {prefix: /c}}
            upstream: nope
        """)
    assert errors(tmp_path) == [("20-b.yaml", "$.routes[1].upstream", 5, "unknown upstream 'nope' (known: a)")]


def test_a_name_or_a_section_twice_is_an_error_naming_both_files(tmp_path):
    write(tmp_path, "10-a.yaml", """\
        listeners: [{address: 127.0.0.1:8080}]
        server: {drain_timeout: 5s}
        upstreams:
          a: {targets: [{address: 127.0.0.1:9001}]}
        """)
    write(tmp_path, "20-b.yaml", """\
        upstreams:
          a: {targets: [{address: 127.0.0.1:9002}]}
        server: {drain_timeout: 1s}
        """)
    found = errors(tmp_path)
    assert ("20-b.yaml", "$.upstreams.a", 2) in [f[:3] for f in found], found
    assert ("20-b.yaml", "$.server", 3) in [f[:3] for f in found], found
    assert all("10-a.yaml" in f[3] for f in found), found


def test_a_file_that_does_not_parse_is_named(tmp_path):
    write(tmp_path, "10-a.yaml", "listeners: [{address: 127.0.0.1:8080}]\n")
    write(tmp_path, "20-b.yaml", "routes: [\n")
    [(file, _, line, message)] = errors(tmp_path)
    assert file == "20-b.yaml" and line is not None and message


def test_manifests_across_files_read_as_one_stream_beside_native_files(tmp_path):
    (tmp_path / "gateway.yaml").write_text(dump(gateway(), service(), slice_()))
    (tmp_path / "routes.yaml").write_text(dump(route()))
    write(tmp_path, "zz-settings.yaml", "server: {drain_timeout: 3s}\nadmin: {address: 127.0.0.1:0}\n")
    cfg = load_config(tmp_path)
    assert len(cfg.routes) == 1 and cfg.server.drain_timeout == 3.0 and cfg.admin is not None
    bad = route(rules=[{"backendRefs": [{"name": "svc", "port": 8080, "colour": "blue"}]}])
    (tmp_path / "routes.yaml").write_text(dump(route(name="ok"), bad))
    found = errors(tmp_path)
    assert found and all(f[0] == "routes.yaml" and f[1].startswith("$[1].") for f in found), found


def test_no_config_files_is_an_error(tmp_path):
    write(tmp_path, "notes.txt", "")
    [(_, path, _, message)] = errors(tmp_path)
    assert path == "$" and "no config files" in message


def test_fastgw_check_takes_a_directory(tmp_path):
    write(tmp_path, "a.yaml", yaml.safe_dump({"listeners": [{"address": "127.0.0.1:8080"}]}))
    ok = subprocess.run([sys.executable, "-m", "fastgw", "check", str(tmp_path)], capture_output=True, text=True)
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr
    fmt = subprocess.run([sys.executable, "-m", "fastgw", "check", "--format", "yaml", str(tmp_path)],
                         capture_output=True, text=True)
    assert fmt.returncode == 1 and "--format applies to a single file" in fmt.stderr


def test_the_files_a_config_names_are_watched_with_it(tmp_path):
    from fastgw.watch import config_digest, referenced_files

    crt, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    crt.write_text("one")
    key.write_text("k")
    cfg = msgspec.convert({"listeners": [{"address": "127.0.0.1:0", "tls": {"certificates": [
        {"cert": str(crt), "key": str(key)}]}}], "admin": {"address": "127.0.0.1:0", "token_file": "/t"}},
        GatewayConfig, dec_hook=dec_hook)
    assert referenced_files(cfg) == [str(crt), str(key), "/t"]
    write(tmp_path, "gw.yaml", "listeners: [{address: 127.0.0.1:8080}]\n")
    before = config_digest(str(tmp_path / "gw.yaml"), [str(crt)])
    assert config_digest(str(tmp_path / "gw.yaml"), [str(crt)]) == before
    crt.write_text("two")
    assert config_digest(str(tmp_path / "gw.yaml"), [str(crt)]) != before
