"""`fastgw` command line: run, check, schema, version, demo-upstream."""

from __future__ import annotations

import argparse
import sys

import orjson

from . import __version__


def _cmd_run(args: argparse.Namespace) -> int:
    from .server import run

    if args.workers < 1:
        print("fastgw: --workers must be at least 1", file=sys.stderr)
        return 2
    return run(args.config, args.workers)


def _cmd_check(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config

    try:
        load_config(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.file}: OK")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from .config import json_schema

    sys.stdout.write(orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config
    from .explain import ExplainError, explain

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    headers = []
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            print(f"fastgw: -H expects 'Name: value', got {h!r}", file=sys.stderr)
            return 2
        headers.append((name.strip(), value.strip()))
    try:
        sys.stdout.write(explain(cfg, args.method.upper(), args.url, headers))
    except ExplainError as exc:
        print(f"fastgw: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_version(args: argparse.Namespace) -> int:
    print(f"fastgw {__version__}")
    return 0


def _cmd_demo_upstream(args: argparse.Namespace) -> int:
    from .demo_upstream import serve

    return serve(args.host, args.port, args.name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastgw", description="fastgw API gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the gateway")
    p.add_argument("-c", "--config", required=True, help="config file (.yaml, .json or .toml)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("check", help="validate a config file; exit 1 listing every error")
    p.add_argument("file")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("schema", help="print the config's JSON Schema")
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser("explain", help="show how the gateway would route and transform a request")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("method")
    p.add_argument("url", help="absolute URL, e.g. http://api.example.com:8080/users?x=1")
    p.add_argument("-H", "--header", action="append", default=[], help="'Name: value' (repeatable)")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=_cmd_version)

    p = sub.add_parser("demo-upstream", help="a small echo server to put behind the gateway")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--name", default="demo")
    p.set_defaults(func=_cmd_demo_upstream)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
