"""What users get: the sdist and wheel built from a copy of the source tree (`python -m build`: the sdist,
then the wheel from the sdist, as a release would be), the wheel installed into a fresh venv outside
the source tree, and every `fastgw` command run from a directory outside it, on YAML, JSON, TOML and
Gateway API manifest files; `fastgw run` proxies a real request to a real upstream (`fastgw
demo-upstream` of the same venv).

One wheel and one venv for the module (building compiles the core once, about a minute). Deselect with
`-m 'not packaging'`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

import httpx
import pytest
import yaml

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
LISTEN_RE = re.compile(r'(?<!admin API )listening on (?:https?|tcp|tls)://([^\s:"]+|\[[^\]]+\]):(\d+)')
# What a build may print that would be of our making: setuptools' deprecations and beta notes (`build`
# shows a backend's warnings as "WARNING <message>"; pip's own notes are "WARNING: ..."), and MANIFEST.in
# or license-files patterns that match nothing.
BAD_BUILD_OUTPUT = re.compile(
    r"^\s*WARNING [^:]|SetuptoolsDeprecationWarning|BuildBackendWarning|_BetaConfiguration|is still \*beta\*"
    r"|DeprecationWarning|remove deprecated calls|no files found matching|did not match any files"
    r"|no previously-included files")
# Python sources that are not packages of the wheel: the Cython include directory.
NOT_PACKAGED = ("fastgw/_cy/",)


def _source_files() -> list[Path]:
    """Files of the source tree as a fresh clone (plus uncommitted work) would have them."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        out = None
    if out is not None:
        return [REPO / p for p in out.decode().split("\0") if p and (REPO / p).is_file()]
    skip = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache", ".benchmarks"}
    files = []
    for p in REPO.rglob("*"):
        rel = p.relative_to(REPO)
        if p.is_file() and not (set(rel.parts) & skip) and p.suffix not in (".so", ".c", ".html") \
                and not rel.parts[0].endswith(".egg-info") and rel != Path("fastgw/_core.stamp"):
            files.append(p)
    return files


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 60,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\n--- stdout:\n{proc.stdout}\n"
                             f"--- stderr:\n{proc.stderr}")
    return proc


def _clean_env(extra_path: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    if extra_path is not None:
        env["PATH"] = f"{extra_path}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(extra_path.parent)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Built:
    def __init__(self, wheel: Path, sdist: Path, log: str):
        self.wheel, self.sdist, self.log = wheel, sdist, log


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """sdist and wheel of a copy of the source tree (the tree itself is left untouched)."""
    root = tmp_path_factory.mktemp("pkgbuild")
    src = root / "src"
    for f in _source_files():
        dst = src / f.relative_to(REPO)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dst)
    dist = root / "dist"
    proc = _run([sys.executable, "-m", "build", "--outdir", str(dist), str(src)],
                cwd=root, env=_clean_env(), timeout=600)
    wheels = list(dist.glob("fastgw-*.whl"))
    sdists = list(dist.glob("fastgw-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, f"build made {sorted(p.name for p in dist.iterdir())}"
    return Built(wheels[0], sdists[0], proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def venv(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed (its dependencies from the package index); its bin/."""
    root = tmp_path_factory.mktemp("pkgvenv")
    env = _clean_env()
    _run([sys.executable, "-m", "venv", str(root / "venv")], cwd=root, env=env)
    bindir = root / "venv" / "bin"
    _run([str(bindir / "python"), "-m", "pip", "install", "-q", str(built.wheel)], cwd=root, env=env,
         timeout=600)
    return bindir


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory of every command: outside the source tree, with the config files."""
    d = tmp_path_factory.mktemp("pkgwork")
    assert REPO not in d.parents
    return d


# -- the artefacts ---------------------------------------------------------------------------------


def test_build_prints_no_warnings_of_ours(built: Built) -> None:
    bad = [line for line in built.log.splitlines() if BAD_BUILD_OUTPUT.search(line)]
    assert bad == [], "\n".join(bad)


def test_wheel_holds_what_runs_and_nothing_of_the_build(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as z:
        names = set(z.namelist())
    payload = {n for n in names if not n.startswith(f"fastgw-{VERSION}.dist-info/")}
    # every Python module of the package, found from the tree rather than listed here
    modules = {f.relative_to(REPO).as_posix() for f in (REPO / "fastgw").rglob("*.py")}
    modules = {m for m in modules if not m.startswith(NOT_PACKAGED)}
    assert {"fastgw/gatewayapi/__init__.py", "fastgw/config/__init__.py"} <= modules
    assert sorted(modules - payload) == []
    assert "fastgw/py.typed" in payload
    cores = [n for n in payload if re.fullmatch(r"fastgw/_core\.cpython-[^/]*\.so", n)]
    assert len(cores) == 1, sorted(payload)
    assert "fastgw/dashboard/dashboard.html" in payload     # served by the admin listener
    extra = payload - modules - {"fastgw/py.typed", "fastgw/dashboard/dashboard.html", cores[0]}
    assert sorted(extra) == [], "files in the wheel that do not run"
    # no build leftovers (Cython's annotation is HTML too; the dashboard page is the one HTML file)
    assert not [n for n in names if PurePosixPath(n).suffix in (".c", ".pyx", ".pxi", ".pxd")]
    assert [n for n in names if n.endswith(".html")] == ["fastgw/dashboard/dashboard.html"]
    assert f"fastgw-{VERSION}.dist-info/licenses/LICENSE" in names
    with zipfile.ZipFile(built.wheel) as z:
        meta = z.read(f"fastgw-{VERSION}.dist-info/METADATA").decode()
        entry_points = z.read(f"fastgw-{VERSION}.dist-info/entry_points.txt").decode()
    assert "License-Expression: Apache-2.0" in meta.splitlines()
    assert "License-File: LICENSE" in meta.splitlines()
    assert "fastgw = fastgw.cli:main" in entry_points


def test_sdist_holds_the_sources_not_the_generated_c(built: Built) -> None:
    with tarfile.open(built.sdist) as t:
        names = {PurePosixPath(n).relative_to(f"fastgw-{VERSION}").as_posix() for n in t.getnames()}
    cython = {f.relative_to(REPO).as_posix() for f in (REPO / "fastgw").rglob("*")
              if f.suffix in (".pyx", ".pxi", ".pxd")}
    assert "fastgw/_core.pyx" in cython and any(c.startswith("fastgw/_cy/") for c in cython)
    assert sorted(cython - names) == []
    assert {"pyproject.toml", "setup.py", "LICENSE", "README.md", "CHANGELOG.md",
            "examples/quickstart.yaml"} <= names
    assert not [n for n in names if n.endswith((".c", ".so"))]


def test_docker_build_context_holds_every_file_of_the_sdist(built: Built) -> None:
    """The Dockerfile builds with the same `python -m build` (the wheel from the sdist), so the image's
    wheel is this one when .dockerignore lets every file of this sdist through (tests/deploy/test_dockerfile.py)."""
    from support.dockerfile import dockerignore, in_context

    rules = dockerignore(REPO / ".dockerignore")
    with tarfile.open(built.sdist) as t:
        members = [PurePosixPath(m.name).relative_to(f"fastgw-{VERSION}").as_posix() for m in t.getmembers()
                   if m.isfile()]
    # written by the sdist build itself (setup.py writes the features switch at every build)
    generated = ("PKG-INFO", "setup.cfg", "fastgw.egg-info/", "fastgw/_cy/features.pxi")
    sources = [m for m in members if not m.startswith(generated)]
    assert "fastgw/_core.pyx" in sources
    assert [m for m in sources if not in_context(m, rules)] == []


# -- the installed commands, from outside the tree -------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml(value: object) -> str:
    """Enough TOML for a config: every table inline."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def _write_native(d: Path, stem: str, cfg: dict) -> dict[str, Path]:
    """The config as .yaml, .json and .toml files."""
    out = {"yaml": d / f"{stem}.yaml", "json": d / f"{stem}.json", "toml": d / f"{stem}.toml"}
    out["yaml"].write_text(yaml.safe_dump(cfg, sort_keys=False))
    out["json"].write_text(json.dumps(cfg, indent=2))
    out["toml"].write_text("".join(f"{json.dumps(k)} = {_toml(v)}\n" for k, v in cfg.items()))
    return out


def _manifests(gateway_port: int, upstream_port: int) -> str:
    docs = [
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "edge"},
         "spec": {"gatewayClassName": "fastgw", "addresses": [{"type": "IPAddress", "value": "127.0.0.1"}],
                  "listeners": [{"name": "http", "port": gateway_port, "protocol": "HTTP"}]}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "api"},
         "spec": {"parentRefs": [{"name": "edge"}],
                  "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                             "backendRefs": [{"name": "echo", "port": 8080}]}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
         "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": upstream_port}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "echo-1", "labels": {"kubernetes.io/service-name": "echo"}},
         "addressType": "IPv4", "ports": [{"name": "http", "port": upstream_port}],
         "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]},
    ]
    return yaml.safe_dump_all(docs, sort_keys=False)


class Proc:
    """A long-running installed command; its stderr lines collected by a thread."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict[str, str]):
        self.cmd = cmd
        self.lines: list[str] = []
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    m = pattern.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"{self.cmd}: no line matching {pattern.pattern!r} "
                                         f"(rc {self.proc.poll()}):\n" + "\n".join(self.lines))
                self._cond.wait(min(left, 0.2))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture(scope="module")
def fastgw(venv: Path, outside: Path):
    """fastgw(*args, check=True) runs the installed command from outside the tree."""
    env = _clean_env(venv)

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([str(venv / "fastgw"), *args], cwd=outside, env=env, check=check)

    run.env = env  # type: ignore[attr-defined]
    return run


@pytest.fixture(scope="module")
def upstream(venv: Path, outside: Path):
    """`fastgw demo-upstream` of the installed venv, on a free port: (name, port)."""
    port = _free_port()
    p = Proc([str(venv / "fastgw"), "demo-upstream", "--port", str(port), "--name", "installed-echo"],
             outside, _clean_env(venv))
    try:
        p.wait_for(re.compile(r"demo-upstream installed-echo: listening on"))
        yield "installed-echo", port
    finally:
        p.stop()


def test_the_installed_package_is_the_one_imported(venv: Path, outside: Path) -> None:
    proc = _run([str(venv / "python"), "-c",
                 # fastgw.tracing: its dependencies (opentelemetry-proto, protobuf) came with the wheel
                 "import fastgw, fastgw._core, fastgw.gatewayapi, fastgw.config, fastgw.tracing; "
                 "print(fastgw.__file__); print(fastgw._core.__file__)"],
                cwd=outside, env=_clean_env(venv))
    site = venv.parent / "lib"
    for path in proc.stdout.split():
        assert Path(path).is_relative_to(site), path
        assert not Path(path).is_relative_to(REPO), path


def test_the_installed_core_has_no_test_entry_points(venv: Path, outside: Path) -> None:
    """fastgw/_cy/testing.pyx is compiled in only with FASTGW_TESTING=1 (setup.py), which a wheel build
    leaves off."""
    proc = _run([str(venv / "python"), "-c",
                 "import json, fastgw._core as c; print(json.dumps(["
                 "n for n in ('parse_request', 'decode_chunked', 'build_upstream_head', 'normalize_request_path',"
                 " 'route_raw_head', 'bench_match', 'bench_match_request', 'bench_pick', 'HTTPParseError')"
                 " if hasattr(c, n)] + [f'Router.{n}' for n in ('_bench_match', '_bench_match_request',"
                 " '_lookup_raw') if hasattr(c.Router, n)] + [f'SmoothWeightedRR.{n}' for n in ('_bench_pick',)"
                 " if hasattr(c.SmoothWeightedRR, n)] + [f'ClientConn.{n}' for n in ('serialize_upstream_head',)"
                 " if hasattr(c.ClientConn, n)] + ([] if hasattr(c, 'Router') else ['no Router?'])))"],
                cwd=outside, env=_clean_env(venv))
    assert json.loads(proc.stdout) == []


def test_version(fastgw) -> None:
    assert fastgw("version").stdout.strip() == f"fastgw {VERSION}"


def test_schema(fastgw) -> None:
    schema = json.loads(fastgw("schema").stdout)
    top = schema["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    assert {"listeners", "upstreams", "routes"} <= set(top["properties"])


def test_check_the_example_config_in_every_format(fastgw, outside: Path) -> None:
    example = REPO / "examples" / "quickstart.yaml"
    assert fastgw("check", str(example)).stdout.strip() == f"{example}: OK"
    d = outside / "check"
    d.mkdir()
    files = _write_native(d, "quickstart", yaml.safe_load(example.read_text()))
    assert sorted(files) == ["json", "toml", "yaml"]
    for path in files.values():
        assert fastgw("check", str(path)).stdout.strip() == f"{path}: OK"


def test_check_reports_errors(fastgw, outside: Path) -> None:
    cfg = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    cfg["routes"][0]["upstream"] = "nowhere"
    d = outside / "bad"
    d.mkdir()
    for path in _write_native(d, "bad", cfg).values():
        proc = fastgw("check", str(path), check=False)
        assert proc.returncode == 1, proc
        assert str(path) in proc.stderr and "nowhere" in proc.stderr, proc.stderr


def test_check_and_convert_manifests(fastgw, outside: Path) -> None:
    path = outside / "manifests.yaml"
    path.write_text(_manifests(8080, 9000))
    assert fastgw("check", str(path)).stdout.strip() == f"{path}: OK"
    native = yaml.safe_load(fastgw("convert", str(path)).stdout)
    assert [lst["address"] for lst in native["listeners"]] == ["127.0.0.1:8080"]
    targets = [t["address"] for up in native["upstreams"].values() for t in up["targets"]]
    assert targets == ["127.0.0.1:9000"]
    moved = yaml.safe_load(fastgw("convert", str(path), "--bind", "127.0.0.2", "--port-map", "8080=18080").stdout)
    assert [lst["address"] for lst in moved["listeners"]] == ["127.0.0.2:18080"]
    # what convert prints is a native config that check accepts
    out = outside / "converted.yaml"
    out.write_text(fastgw("convert", str(path)).stdout)
    assert fastgw("check", str(out)).stdout.strip() == f"{out}: OK"


def test_convert_is_one_config_whatever_the_format(fastgw, outside: Path) -> None:
    d = outside / "convert"
    d.mkdir()
    files = _write_native(d, "quickstart", yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text()))
    printed = {fmt: yaml.safe_load(fastgw("convert", str(p)).stdout) for fmt, p in files.items()}
    assert printed["yaml"]["routes"][0]["name"] == "everything"
    assert printed["json"] == printed["yaml"] and printed["toml"] == printed["yaml"]


def test_explain_in_every_format(fastgw, outside: Path) -> None:
    d = outside / "explain"
    d.mkdir()
    files = _write_native(d, "quickstart", yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text()))
    manifests = d / "manifests.yaml"
    manifests.write_text(_manifests(8080, 9000))
    for path, route, target in [*((p, "everything", "127.0.0.1:9001") for p in files.values()),
                                (manifests, "api", "127.0.0.1:9000")]:
        out = fastgw("explain", "-c", str(path), "GET", "http://127.0.0.1:8080/api/users?x=1",
                     "-H", "X-Test: 1").stdout
        assert re.search(rf"^route:\s+\S*{route}", out, re.M), out
        assert f"-> target {target}" in out, out
        assert "GET /api/users?x=1 HTTP/1.1" in out, out


@pytest.mark.parametrize("fmt", ["yaml", "json", "toml", "manifests"])
def test_run_proxies_a_request_to_a_real_upstream(fmt: str, fastgw, upstream, outside: Path) -> None:
    name, up_port = upstream
    d = outside / f"run-{fmt}"
    d.mkdir()
    if fmt == "manifests":
        path = d / "manifests.yaml"
        path.write_text(_manifests(_free_port(), up_port))
        prefix = "/api"
    else:
        cfg = {"listeners": [{"address": "127.0.0.1:0"}],
               "upstreams": {"echo": {"targets": [{"address": f"127.0.0.1:{up_port}"}]}},
               "routes": [{"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": "echo"}],
               "server": {"drain_timeout": 0.5}}
        path = _write_native(d, "gw", cfg)[fmt]
        prefix = ""
    gw = Proc([str(Path(fastgw.env["VIRTUAL_ENV"]) / "bin" / "fastgw"), "run", "-c", str(path)],
              outside, fastgw.env)
    try:
        m = gw.wait_for(LISTEN_RE)
        url = f"http://{m.group(1)}:{m.group(2)}{prefix}/hello?via=wheel"
        with httpx.Client(timeout=10, trust_env=False) as client:
            r = client.get(url, headers={"X-Probe": fmt})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["name"] == name
        assert body["target"] == f"{prefix}/hello?via=wheel"
        seen = {k.lower(): v for k, v in body["headers"]}
        assert seen["x-probe"] == fmt
        assert seen["x-forwarded-for"] == "127.0.0.1"  # it went through the gateway
        assert "x-request-id" in seen
    finally:
        rc = gw.stop()
    assert rc == 0, "\n".join(gw.lines)


def test_run_writes_an_access_line(fastgw, upstream, outside: Path) -> None:
    """The access log is the compiled core's (fastgw/_cy/accesslog.pyx): one JSON line per exchange."""
    _, up_port = upstream
    d = outside / "run-access-log"
    d.mkdir()
    log = d / "access.log"
    cfg = {"listeners": [{"address": "127.0.0.1:0"}],
           "upstreams": {"echo": {"targets": [{"address": f"127.0.0.1:{up_port}"}]}},
           "routes": [{"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": "echo"}],
           "access_log": {"path": str(log), "flush_interval": "50ms"},
           "server": {"drain_timeout": 0.5}}
    path = _write_native(d, "gw", cfg)["yaml"]
    gw = Proc([str(Path(fastgw.env["VIRTUAL_ENV"]) / "bin" / "fastgw"), "run", "-c", str(path)],
              outside, fastgw.env)
    try:
        m = gw.wait_for(LISTEN_RE)
        with httpx.Client(timeout=10, trust_env=False) as client:
            r = client.get(f"http://{m.group(1)}:{m.group(2)}/logged", headers={"X-Request-Id": "wheel-line"})
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 15
        while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        rc = gw.stop()
    assert rc == 0, "\n".join(gw.lines)
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert (line["request_id"], line["path"], line["status"], line["route"]) == ("wheel-line", "/logged", 200, "all")
def test_run_serves_the_admin_api(fastgw, upstream, outside: Path) -> None:
    """The installed fastgw's Admin API: the supervisor's loop, the workers' control channels."""
    _, up_port = upstream
    d = outside / "admin"
    d.mkdir()
    cfg = {"listeners": [{"address": "127.0.0.1:0"}],
           "upstreams": {"echo": {"targets": [{"address": f"127.0.0.1:{up_port}"}]}},
           "routes": [{"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": "echo"}],
           "server": {"drain_timeout": 0.5}, "admin": {"address": "127.0.0.1:0"}}
    path = _write_native(d, "gw", cfg)["yaml"]
    gw = Proc([str(Path(fastgw.env["VIRTUAL_ENV"]) / "bin" / "fastgw"), "run", "-c", str(path), "--workers", "2"],
              outside, fastgw.env)
    try:
        admin = gw.wait_for(re.compile(r"admin API listening on (http://[^\s\"]+)")).group(1)
        gw.wait_for(LISTEN_RE)
        with httpx.Client(base_url=admin, timeout=10, trust_env=False) as client:
            health = client.get("/healthz")
            assert health.status_code == 200 and health.json()["status"] == "alive"
            metrics = client.get("/metrics")
            assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
            assert "fastgw_build_info{" in metrics.text, metrics.text
            page = client.get("/dashboard")       # package data: the page must be in the wheel
            assert page.status_code == 200 and "<title>fastgw dashboard</title>" in page.text
    finally:
        rc = gw.stop()
    assert rc == 0, "\n".join(gw.lines)


def _can_make_a_read_only_root() -> str | None:
    """Why this machine cannot run a process on a read-only root (None: it can)."""
    if os.geteuid() != 0:
        return "needs root, to make a mount namespace and switch to an unprivileged user"
    if shutil.which("unshare") is None or shutil.which("setpriv") is None:
        return "needs unshare and setpriv (util-linux)"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount --rbind -o ro / / && ! touch /tmp/.fastgw-ro-probe 2>/dev/null"],
                           capture_output=True, text=True, timeout=30)
    Path("/tmp/.fastgw-ro-probe").unlink(missing_ok=True)
    return None if probe.returncode == 0 else f"cannot remount / read-only in a mount namespace: {probe.stderr.strip()}"


def _q(p: Path | str) -> str:
    return shlex.quote(str(p))


def test_runs_as_the_image_user_on_a_read_only_root(fastgw, upstream, outside: Path) -> None:
    """What the image and the chart promise (docs/kubernetes.md): the installed gateway runs as uid 10001
    with every filesystem read-only but one tmpfs for TMPDIR (an emptyDir at /tmp in the pod), serves,
    reports ready, and exits 0 on SIGTERM."""
    why = _can_make_a_read_only_root()
    if why:
        pytest.skip(why)
    _, up_port = upstream
    venv_bin = Path(fastgw.env["VIRTUAL_ENV"]) / "bin"
    # uid 10001 must reach the venv and the config through pytest's private (0700) temporary folders
    opened = [p for p in (venv_bin.parent.parent, *venv_bin.parent.parent.parents)
              if p.is_relative_to(Path(os.path.realpath(os.environ.get("TMPDIR", "/tmp")))) and p.stat().st_mode & 0o001 == 0]
    modes = {p: p.stat().st_mode for p in opened}
    d = venv_bin.parent.parent / "ro-root"
    (d / "tmp").mkdir(parents=True)
    cfg = {"listeners": [{"address": "127.0.0.1:0"}],
           "upstreams": {"echo": {"targets": [{"address": f"127.0.0.1:{up_port}"}]}},
           "routes": [{"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": "echo"}],
           "server": {"drain_timeout": 0.5}, "admin": {"address": "127.0.0.1:0"}}
    path = _write_native(d, "gw", cfg)["yaml"]
    env = dict(fastgw.env, HOME="/nonexistent", TMPDIR=str(d / "tmp"), PYTHONDONTWRITEBYTECODE="1")
    inner = (f"mount --rbind -o ro / / && mount -t tmpfs -o mode=1777,size=16m tmpfs {_q(d / 'tmp')} "
             f"&& exec setpriv --reuid=10001 --regid=10001 --clear-groups --inh-caps=-all "
             f"{_q(venv_bin / 'fastgw')} run -c {_q(path)} --workers 2")
    try:
        for p in opened:
            p.chmod(p.stat().st_mode | 0o001)
        gw = Proc(["unshare", "-m", "--propagation", "private", "sh", "-c", inner], Path("/"), env)
        try:
            admin = gw.wait_for(re.compile(r"admin API listening on (http://[^\s\"]+)")).group(1)
            m = gw.wait_for(LISTEN_RE)
            status = Path(f"/proc/{gw.proc.pid}/status").read_text()
            assert re.search(r"^Uid:\s+10001\s+10001\s+10001\s+10001$", status, re.M), status
            with httpx.Client(timeout=10, trust_env=False) as client:
                r = client.get(f"http://{m.group(1)}:{m.group(2)}/read-only")
                assert r.status_code == 200 and r.json()["target"] == "/read-only", r.text
                deadline = time.monotonic() + 15
                while client.get(f"{admin}/readyz").status_code != 200:
                    assert time.monotonic() < deadline, "never ready"
                    time.sleep(0.1)
        finally:
            rc = gw.stop()
        assert rc == 0, "\n".join(gw.lines)
        bad = [line for line in gw.lines if re.search(r"Read-only file system|Permission denied|Traceback", line)]
        assert bad == [], "\n".join(gw.lines)
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
