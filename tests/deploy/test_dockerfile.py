"""The image's promises, read off the Dockerfile and .dockerignore (no Docker daemon here, so the image is
never built by the tests): a compiler only in the build stage, the wheel built as CI builds it and installed
in a runtime stage with no compiler, a non-root user, exec-form `tini -- fastgw run -c /etc/fastgw`, the
ports, a baked config that passes `fastgw check`, and a build context without build leftovers.
tests/packaging/test_installed_wheel.py checks that every file of the sdist CI builds reaches the context."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from support.dockerfile import dockerignore, in_context, parse_dockerfile

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = parse_dockerfile(REPO / "Dockerfile")
IGNORE = dockerignore(REPO / ".dockerignore")
# What compiles C, by Debian package or command name.
COMPILERS = re.compile(r"(?<![\w.-])(gcc(-\d+)?|g\+\+|clang|cc|c\+\+|build-essential|libc6-dev|python3?-dev|make|cython)(?![\w.-])")


def _runs(stage) -> list[str]:
    return [i.args for i in stage.all("RUN")]


def _apt_packages(stage) -> list[str]:
    pkgs = []
    for run in _runs(stage):
        for cmd in re.split(r"&&|;", run):
            words = shlex.split(cmd)
            if words[:2] == ["apt-get", "install"]:
                pkgs += [w for w in words[2:] if not w.startswith("-")]
    return pkgs


def test_two_stages_build_then_runtime() -> None:
    assert [s.name for s in DOCKERFILE.stages] == ["build", "runtime"]
    build, runtime = DOCKERFILE.stages
    assert DOCKERFILE.base_of(build) == DOCKERFILE.base_of(runtime), "the wheel must be built for the runtime's Python"


def test_base_python_is_one_the_package_supports() -> None:
    base = DOCKERFILE.base_of(DOCKERFILE.stages[-1])
    m = re.fullmatch(r"python:(\d+\.\d+)-slim-\w+", base)
    assert m, f"expected an official slim Python image, got {base}"
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    low = re.fullmatch(r">=\s*(\d+)\.(\d+)", requires)
    assert low, f"requires-python {requires!r}: update this test"
    assert tuple(map(int, m[1].split("."))) >= (int(low[1]), int(low[2]))


def test_the_compiler_is_in_the_build_stage_only() -> None:
    build, runtime = DOCKERFILE.stages
    assert {"gcc", "libc6-dev"} <= set(_apt_packages(build))
    assert [p for p in _apt_packages(runtime) if COMPILERS.fullmatch(p)] == []
    assert [r for r in _runs(runtime) if COMPILERS.search(r.replace("--only-binary", ""))] == []
    # and the runtime never builds a dependency from source (it would need the compiler it lacks)
    pip = [r for r in _runs(runtime) if "pip install" in r]
    assert len(pip) == 1 and "--only-binary=:all:" in pip[0]


def test_the_wheel_is_built_as_ci_builds_it_and_installed_from_the_build_stage() -> None:
    build, runtime = DOCKERFILE.stages
    # tests/packaging builds with `python -m build --outdir DIST SRC`: the sdist, then the wheel from it
    assert "python -m build --outdir /dist ." in _runs(build)
    assert any(i.args.split() == [".", "."] for i in build.all("COPY"))
    pip = next(r for r in _runs(runtime) if "pip install" in r)
    assert "--mount=type=bind,from=build,source=/dist,target=/dist" in pip
    assert pip.split()[-1] == "/dist/fastgw-*.whl"
    packaging_test = (REPO / "tests/packaging/test_installed_wheel.py").read_text()
    assert '"-m", "build", "--outdir"' in packaging_test


def test_runs_as_a_non_root_user() -> None:
    runtime = DOCKERFILE.stages[-1]
    user = runtime.last("USER")
    assert user is not None
    uid, _, gid = user.args.partition(":")
    # numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd
    assert uid.isdigit() and int(uid) > 0 and (not gid or (gid.isdigit() and int(gid) > 0))
    assert runtime.instructions.index(user) > max(runtime.instructions.index(i) for i in runtime.all("RUN"))


def test_entrypoint_is_exec_form_fastgw_run_under_tini() -> None:
    runtime = DOCKERFILE.stages[-1]
    entry = runtime.last("ENTRYPOINT").exec_form
    cmd = runtime.last("CMD").exec_form
    # exec form: a shell as PID 1 would not pass SIGTERM on
    assert entry == ["/usr/bin/tini", "--", "fastgw", "run"]
    assert "tini" in _apt_packages(runtime)
    assert cmd == ["-c", "/etc/fastgw"]
    stop = runtime.last("STOPSIGNAL")
    assert stop is None or stop.args == "SIGTERM"


def test_exposes_http_https_and_admin_ports() -> None:
    runtime = DOCKERFILE.stages[-1]
    ports = {p.split("/")[0] for i in runtime.all("EXPOSE") for p in i.args.split()}
    assert ports == {"8080", "8443", "9901"}
    assert all(int(p) >= 1024 for p in ports), "a non-root process binds only unprivileged ports"


def test_read_only_root_filesystem_needs_no_bytecode_writes() -> None:
    env = " ".join(i.args for i in DOCKERFILE.stages[-1].all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env.split()


def test_baked_config_is_copied_to_etc_fastgw_and_passes_check() -> None:
    runtime = DOCKERFILE.stages[-1]
    copies = [i.args.split() for i in runtime.all("COPY") if not i.args.startswith("--from")]
    assert ["deploy/docker/fastgw.yaml", "/etc/fastgw/fastgw.yaml"] in copies
    src = REPO / "deploy/docker/fastgw.yaml"
    assert in_context("deploy/docker/fastgw.yaml", IGNORE)
    proc = subprocess.run([sys.executable, "-m", "fastgw.cli", "check", str(src)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = src.read_text()
    assert "0.0.0.0:8080" in text


@pytest.mark.parametrize("path,sent", [
    ("fastgw/_core.pyx", True),
    ("fastgw/_cy/policy.pyx", True),
    ("fastgw/dashboard/dashboard.html", True),
    ("pyproject.toml", True),
    ("setup.py", True),
    ("MANIFEST.in", True),
    ("deploy/docker/fastgw.yaml", True),
    (".venv/bin/python", False),
    (".git/HEAD", False),
    ("fastgw/_core.c", False),
    ("fastgw/_core.cpython-311-x86_64-linux-gnu.so", False),
    ("fastgw/_core.html", False),
    ("fastgw/_cy/features.pxi", False),
    ("fastgw/__pycache__/cli.cpython-311.pyc", False),
    ("build/lib/fastgw/cli.py", False),
    ("dist/fastgw-0.1.0.tar.gz", False),
    ("fastgw.egg-info/PKG-INFO", False),
])
def test_build_context_has_the_sources_and_no_build_leftovers(path: str, sent: bool) -> None:
    assert in_context(path, IGNORE) is sent


def test_every_tracked_file_the_package_needs_is_in_the_context() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    needed = [p for p in tracked.stdout.splitlines()
              if p.startswith(("fastgw/", "docs/", "examples/")) or "/" not in p]
    assert needed and [p for p in needed if not in_context(p, IGNORE)] == []
