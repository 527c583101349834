"""`fastgw` command line: run, check, convert, schema, version, demo-upstream."""

from __future__ import annotations

import argparse
import sys

import orjson

from . import __version__

#: How issues and `fastgw check` name the config read from standard input (`-`).
STDIN_NAME = "<stdin>"


def _cmd_run(args: argparse.Namespace) -> int:
    from .server import run

    if args.workers < 1:
        print("fastgw: --workers must be at least 1", file=sys.stderr)
        return 2
    return run(args.config, args.workers, reuse_port=args.reuse_port)


def _cmd_check(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .sources import load_config, loads_config

    files = [*args.config, *args.files]
    if not files:
        print("fastgw check: give at least one FILE (or -c FILE; '-' reads standard input)", file=sys.stderr)
        return 2
    if files.count("-") > 1:
        print("fastgw check: '-' (standard input) may be given once", file=sys.stderr)
        return 2
    failed = False
    for file in files:
        name = STDIN_NAME if file == "-" else file
        try:
            if file == "-":
                loads_config(sys.stdin.buffer.read(), args.format, file=name)
            else:
                load_config(file, args.format)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            failed = True
            continue
        print(f"{name}: OK")
    return 1 if failed else 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .gatewayapi import config_to_yaml, load_manifests
    from .sources import load_config, looks_like_manifests

    port_map: dict[int, int] = {}
    for item in args.port_map:
        src, sep, dst = item.partition("=")
        if not (sep and src.isdigit() and dst.isdigit()):
            print(f"fastgw: --port-map expects PORT=PORT, got {item!r}", file=sys.stderr)
            return 2
        port_map[int(src)] = int(dst)
    try:
        if args.bind is not None or port_map:
            try:
                with open(args.file, encoding="utf-8-sig") as f:
                    text = f.read()
            except OSError as exc:
                print(f"fastgw: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
                return 1
            if not looks_like_manifests(text):
                print("fastgw: --bind and --port-map apply to Gateway API manifests only", file=sys.stderr)
                return 2
            cfg = load_manifests(text, args.file, host=args.bind, port_map=port_map)
        else:
            cfg = load_config(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    sys.stdout.write(config_to_yaml(cfg))
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from .config import json_schema

    sys.stdout.write(orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .explain import ExplainError, explain
    from .sources import load_config

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
    from .sources import FORMAT_NAMES

    parser = argparse.ArgumentParser(prog="fastgw", description="fastgw API gateway")
    parser.add_argument("--version", action="version", version=f"fastgw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the gateway")
    p.add_argument("-c", "--config", required=True,
                   help="config file (.yaml, .json or .toml), or a directory of them (merged in name order)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--reuse-port", action="store_true",
                   help="share listener addresses another fastgw already serves (zero-downtime upgrade: "
                        "start the new one with this, then stop the old one); without it such an "
                        "address is an error")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("check", help="validate config files; exit 1 listing every error")
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="a config file or directory; '-' reads standard input")
    p.add_argument("-c", "--config", action="append", default=[], metavar="FILE",
                   help="a config file, as for `run` (repeatable; same as FILE)")
    p.add_argument("--format", choices=FORMAT_NAMES,
                   help="format of every FILE (default: by extension; sniffed for '-')")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("convert", help="print the native config (YAML) of a config file or of Gateway API manifests")
    p.add_argument("file")
    p.add_argument("--bind", metavar="HOST", help="bind address of every listener (manifests only)")
    p.add_argument("--port-map", metavar="PORT=PORT", action="append", default=[],
                   help="remap a Gateway listener port (manifests only; repeatable)")
    p.set_defaults(func=_cmd_convert)

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
