"""The operator's command line, run as a process: `fastgw --version`, and `fastgw check` on files,
`-c FILE`, several files and standard input, with the output formats scripts rely on."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastgw

NATIVE_YAML = "listeners:\n  - address: 127.0.0.1:8080\n"
NATIVE_JSON = '{"listeners": [{"address": "127.0.0.1:8080"}]}\n'
NATIVE_TOML = '# a comment first\nlisteners = [{address = "127.0.0.1:8080"}]\n'
MANIFESTS = textwrap.dedent("""\
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata: {name: gw}
    spec:
      gatewayClassName: fastgw
      listeners: [{name: http, port: 80, protocol: HTTP}]
    """)
# Two decode errors and, on what still decodes, two semantic ones.
BROKEN = textwrap.dedent("""\
    listeners:
      - address: http://127.0.0.1:9001
    upstreams:
      echo: {targets: [{address: 127.0.0.1:9000, wieght: 2}]}
    routes:
      - name: r
        upstream: nowhere
        max_body_bytes: lots
    """)


def fastgw_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastgw", *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_version_flag_and_command() -> None:
    for args in (["--version"], ["version"]):
        done = fastgw_cli(*args)
        assert (done.returncode, done.stdout, done.stderr) == (0, f"fastgw {fastgw.__version__}\n", "")


def test_check_file_output_is_unchanged(tmp_path) -> None:
    path = write(tmp_path, "gw.yaml", NATIVE_YAML)
    for args in (["check", path], ["check", "-c", path], ["check", "--config", path]):
        done = fastgw_cli(*args)
        assert (done.returncode, done.stdout, done.stderr) == (0, f"{path}: OK\n", "")


def test_check_several_files_reports_each_and_fails_if_any_fails(tmp_path) -> None:
    good = write(tmp_path, "good.yaml", NATIVE_YAML)
    also = write(tmp_path, "also.json", NATIVE_JSON)
    bad = write(tmp_path, "bad.yaml", "listeners: []\n")
    done = fastgw_cli("check", good, bad, also)
    assert done.returncode == 1
    assert done.stdout == f"{good}: OK\n{also}: OK\n"
    assert done.stderr == f"{bad}:1: $.listeners: at least one listener is required\n"
    done = fastgw_cli("check", good, "-c", also)
    assert (done.returncode, sorted(done.stdout.splitlines())) == (0, sorted([f"{good}: OK", f"{also}: OK"]))


@pytest.mark.parametrize("text", [NATIVE_YAML, NATIVE_JSON, NATIVE_TOML, MANIFESTS],
                         ids=["yaml", "json", "toml", "manifests"])
def test_check_reads_standard_input_sniffing_the_format(text) -> None:
    done = fastgw_cli("check", "-", stdin=text)
    assert (done.returncode, done.stdout, done.stderr) == (0, "<stdin>: OK\n", "")


def test_check_standard_input_errors_name_stdin_with_lines() -> None:
    done = fastgw_cli("check", "-", stdin="listeners:\n  - address: 127.0.0.1:8080\n    nmae: x\n")
    assert done.returncode == 1
    assert done.stderr == ("<stdin>:3: $.listeners[0].nmae: unknown field (did you mean 'name'? "
                           "expected one of: address, name, hostname, tls, protocol)\n")


def test_check_format_flag_overrides_the_extension_and_the_sniffing(tmp_path) -> None:
    conf = write(tmp_path, "gw.conf", NATIVE_JSON)
    done = fastgw_cli("check", conf)
    assert done.returncode == 1 and "unsupported config file type ('.conf')" in done.stderr
    assert fastgw_cli("check", "--format", "json", conf).stdout == f"{conf}: OK\n"
    # Read as TOML, the JSON text is a TOML syntax error.
    done = fastgw_cli("check", "--format", "toml", "-", stdin=NATIVE_JSON)
    assert done.returncode == 1 and done.stderr.startswith("<stdin>:1: $: invalid TOML: ")
    # `manifests` forces the Gateway API front end on text that does not look like manifests.
    done = fastgw_cli("check", "--format", "manifests", "-", stdin=NATIVE_YAML)
    assert done.returncode == 1 and "<stdin>:1: $[0]" in done.stderr
    assert fastgw_cli("check", "--format", "manifests", "-", stdin=MANIFESTS).returncode == 0
    done = fastgw_cli("check", "--format", "ini", conf)
    assert done.returncode == 2 and "invalid choice: 'ini'" in done.stderr


def test_check_reports_decode_and_semantic_errors_in_one_run(tmp_path) -> None:
    path = write(tmp_path, "gw.yaml", BROKEN)
    done = fastgw_cli("check", path)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"{path}:4: $.upstreams.echo.targets[0].wieght: unknown field (did you mean 'weight'? "
        "expected one of: address, weight)",
        f"{path}:8: $.routes[0].max_body_bytes: expected `int | null`, got `str`",
        f"{path}:2: $.listeners[0].address: address 'http://127.0.0.1:9001': write host:port, without a scheme "
        "('127.0.0.1:9001')",
        f"{path}:7: $.routes[0].upstream: unknown upstream 'nowhere' (known: echo)",
    ]


def test_check_needs_a_file_and_stdin_once() -> None:
    done = fastgw_cli("check")
    assert done.returncode == 2 and "give at least one FILE" in done.stderr
    done = fastgw_cli("check", "-", "-", stdin=NATIVE_YAML)
    assert done.returncode == 2 and "may be given once" in done.stderr

