"""Load generators: wrk (closed loop, --latency) and httperf (open loop at a fixed rate)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}
_SIZE = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


@dataclass
class Request:
    method: str = "GET"
    path: str = "/"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def _lua_str(s: str | bytes) -> str:
    if isinstance(s, bytes):
        s = s.decode("latin-1")
    return '"' + "".join(c if c.isalnum() or c in " /-_.:=?&,;" else f"\\{ord(c):03d}" for c in s) + '"'


def _lua_body(body: bytes) -> str:
    # Bodies are runs of one byte in practice; keep the script small.
    if body and body == body[:1] * len(body):
        return f"string.rep({_lua_str(body[:1])}, {len(body)})"
    return _lua_str(body)


def wrk_script(requests: list[Request]) -> str:
    """A wrk Lua script: one request set globally (wrk's fast path) or several in rotation, and a done()
    hook that prints the summary as one JSON line."""
    out = []
    if len(requests) == 1:
        r = requests[0]
        out.append(f"wrk.method = {_lua_str(r.method)}")
        if r.body:
            out.append(f"wrk.body = {_lua_body(r.body)}")
        for k, v in r.headers.items():
            out.append(f"wrk.headers[{_lua_str(k)}] = {_lua_str(v)}")
        if r.path != "/":
            out.append(f"wrk.path = {_lua_str(r.path)}")
    else:
        out.append("local specs = {")
        for r in requests:
            hdrs = ", ".join(f"[{_lua_str(k)}] = {_lua_str(v)}" for k, v in r.headers.items())
            body = _lua_body(r.body) if r.body else "nil"
            out.append(f"  {{{_lua_str(r.method)}, {_lua_str(r.path)}, {{{hdrs}}}, {body}}},")
        out.append("}")
        out.append("""local reqs = {}
local n = 0
init = function(args)
  for i, s in ipairs(specs) do reqs[i] = wrk.format(s[1], s[2], s[3], s[4]) end
end
request = function()
  n = n % #reqs + 1
  return reqs[n]
end""")
    out.append(r"""done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %.0f, "duration_us": %.0f, "bytes": %.0f, ' ..
    '"connect": %.0f, "read": %.0f, "write": %.0f, "status": %.0f, "timeout": %.0f, ' ..
    '"p50_us": %.1f, "p90_us": %.1f, "p99_us": %.1f, "max_us": %.1f, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end""")
    return "\n".join(out) + "\n"


def _to_ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_wrk_text(text: str) -> dict:
    """Parses wrk's --latency report (the fallback when the done() JSON line is missing)."""
    res: dict = {}
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s*{pct}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
        if m:
            res[f"p{pct}_ms"] = _to_ms(*m.groups())
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h), ([\d.]+)([KMGT]?B) read", text)
    if m:
        res["requests"] = int(m.group(1))
        res["duration_s"] = _to_ms(m.group(2), m.group(3)) / 1000
        res["bytes"] = int(float(m.group(4)) * _SIZE[m.group(5)])
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    res["errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        res["rps"] = float(m.group(1))
    return res


def parse_wrk(text: str) -> dict:
    """wrk's results: rps, p50/p90/p99 (ms), requests, errors (socket errors), non_2xx (status >= 400:
    wrk's own count), duration_s, bytes."""
    for line in text.splitlines():
        if line.startswith("WRKJSON "):
            j = json.loads(line[len("WRKJSON ") :])
            dur = j["duration_us"] / 1e6
            return {
                "rps": j["requests"] / dur if dur else 0.0,
                "p50_ms": j["p50_us"] / 1000,
                "p90_ms": j["p90_us"] / 1000,
                "p99_ms": j["p99_us"] / 1000,
                "max_ms": j["max_us"] / 1000,
                "requests": int(j["requests"]),
                "errors": int(j["connect"] + j["read"] + j["write"] + j["timeout"]),
                "non_2xx": int(j["status"]),
                "duration_s": dur,
                "bytes": int(j["bytes"]),
            }
    res = parse_wrk_text(text)
    missing = {"rps", "p50_ms", "p90_ms", "p99_ms", "requests"} - res.keys()
    if missing:
        raise ValueError(f"could not read wrk's output (missing {sorted(missing)}):\n{text[-2000:]}")
    res.setdefault("max_ms", res["p99_ms"])
    return res


@dataclass
class ChildRun:
    stdout: str
    returncode: int


def run_child(cmd: list[str], timeout: float, cwd: Path | None = None) -> ChildRun:
    """Runs a load generator; the caller reads its CPU time from os.times()' children figures."""
    p = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=cwd
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    # stderr after stdout, so that warnings cannot split a report's blocks.
    return ChildRun(out.decode(errors="replace") + "\n" + err.decode(errors="replace"), p.returncode)


def run_wrk(
    wrk: str,
    url: str,
    requests: list[Request],
    connections: int,
    duration_s: int,
    cpus: str | None,
    workdir: Path,
    timeout_s: int = 10,
) -> tuple[dict, str, float]:
    """Runs wrk -t1 with --latency; returns (figures, raw output, wrk's CPU seconds)."""
    script = (
        workdir
        / f"wrk-{abs(hash(tuple((r.method, r.path, tuple(r.headers.items())) for r in requests)))}.lua"
    )
    script.write_text(wrk_script(requests))
    cmd = (["taskset", "-c", cpus] if cpus else []) + [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        f"--timeout={timeout_s}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    before = os.times()
    run = run_child(cmd, timeout=duration_s + 60)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    if run.returncode != 0 and "WRKJSON" not in run.stdout:
        raise RuntimeError(f"wrk failed ({run.returncode}): {run.stdout[-1000:]}")
    return parse_wrk(run.stdout), run.stdout, cpu


# ---------------------------------------------------------------------------------------------- httperf


def parse_httperf(text: str) -> dict:
    """httperf's figures: achieved request rate, replies, errors, non-2xx, and the p50/p99/max of the
    connection lifetime (one request per connection, so: connect + request + response). httperf's
    histogram has 1 ms bins: p50/p99 are the upper edge of the bin holding that percentile."""
    res: dict = {}
    m = re.search(r"Request rate: ([\d.]+) req/s", text)
    res["rate"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Total: connections (\d+) requests (\d+) replies (\d+)", text)
    res["requests"] = int(m.group(2)) if m else 0
    res["replies"] = int(m.group(3)) if m else 0
    m = re.search(r"Errors: total (\d+)", text)
    res["errors"] = int(m.group(1)) if m else 0
    m = re.search(r"Reply status: 1xx=(\d+) 2xx=(\d+) 3xx=(\d+) 4xx=(\d+) 5xx=(\d+)", text)
    res["non_2xx"] = (int(m.group(1)) + int(m.group(3)) + int(m.group(4)) + int(m.group(5))) if m else 0
    m = re.search(r"Connection time \[ms\]: min ([\d.]+) avg ([\d.]+) max ([\d.]+)", text)
    res["max_ms"] = float(m.group(3)) if m else 0.0
    res["mean_ms"] = float(m.group(2)) if m else 0.0
    hist: list[tuple[float, int]] = []
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("Connection lifetime histogram"):
            for row in lines:
                m = re.match(r"^\s+([\d.]+)\s+(\d+)\s*$", row)
                if m:
                    hist.append((float(m.group(1)) + 0.5, int(m.group(2))))
                elif row.startswith("Total:") or (not row.strip() and hist):
                    break
            break
    total = sum(c for _, c in hist)
    for pct in (50, 99):
        val = 0.0
        if total:
            need, acc = total * pct / 100, 0
            for edge, count in hist:
                acc += count
                if acc >= need:
                    val = edge
                    break
        res[f"p{pct}_ms"] = val
    return res


def run_httperf(
    httperf: str,
    port: int,
    request: Request,
    rate: float,
    duration_s: float,
    cpus: str | None,
    workdir: Path,
    tls: bool = False,
) -> tuple[dict, str]:
    """Opens one connection per request at `rate` per second for `duration_s` (open loop); tls: HTTPS."""
    num = max(1, int(rate * duration_s))
    rate = max(1.0, rate)
    cmd = (["taskset", "-c", cpus] if cpus else []) + [
        httperf,
        "--server=127.0.0.1",
        f"--port={port}",
        f"--rate={rate:.1f}",
        "--timeout=5",
        "--verbose",
        "--verbose",
    ]
    if tls:
        cmd.append("--ssl")
    host = request.headers.get("Host")
    if host:
        cmd.append(f"--server-name={host}")
    extra = "".join(f"{k}: {v}\\r\\n" for k, v in request.headers.items() if k.lower() != "host")
    if extra:
        cmd.append(f"--add-header={extra}")
    if request.body or request.method != "GET":
        # A one-request session per connection carries the body (httperf has no body option).
        sess = workdir / "httperf-session.txt"
        contents = request.body.decode("latin-1")
        if '"' in contents or "\n" in contents:
            raise ValueError("httperf session bodies may not contain quotes or newlines")
        sess.write_text(f'{request.path} method={request.method} contents="{contents}"\n')
        cmd.append(f"--wsesslog={num},0,{sess}")
    else:
        cmd += [f"--uri={request.path}", f"--num-conns={num}", "--num-calls=1"]
    run = run_child(cmd, timeout=duration_s + 60)
    res = parse_httperf(run.stdout)
    res["offered_rate"] = rate
    return res, run.stdout
