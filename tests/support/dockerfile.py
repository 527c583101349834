"""Just enough of Docker's file formats to test what the image promises without building it (no Docker
daemon on these machines): a Dockerfile as stages of instructions, and .dockerignore as the set of
files that reach the build context."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Instruction:
    keyword: str          # upper case: FROM, RUN, COPY ...
    args: str             # the rest of the (joined) line
    line: int

    @property
    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form ENTRYPOINT/CMD/RUN, else None (shell form)."""
        if self.args.lstrip().startswith("["):
            value = json.loads(self.args)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), self.args
            return value
        return None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    args: dict[str, str]        # ARGs before the first FROM, with their defaults
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def base_of(self, stage: Stage) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.args.get(m[1] or m[2], m[0]), stage.base)


def parse_dockerfile(path: Path) -> Dockerfile:
    """Stages and instructions; comments dropped, `\\` continuations joined (no heredocs: not used)."""
    logical: list[tuple[int, str]] = []
    pending, start = "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue                      # a comment line inside a continued instruction
        if not pending:
            start = n
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append((start, pending + stripped))
        pending = ""
    assert not pending, f"{path}: a continuation runs past the end"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, text in logical:
        keyword, _, rest = text.partition(" ")
        ins = Instruction(keyword.upper(), rest.strip(), line)
        if ins.keyword == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", ins.args, re.IGNORECASE)
            assert m, f"{path}:{line}: FROM {ins.args}"
            stages.append(Stage(m[1], m[2]))
        elif not stages:
            assert ins.keyword == "ARG", f"{path}:{line}: only ARG may come before FROM"
            name, _, default = ins.args.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append(ins)
    return Dockerfile(args, stages)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match plus `**`) as a regex on a slash path."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(out)


def dockerignore(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """The rules of a .dockerignore: (is an exception `!...`, pattern), in order."""
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line[1:].strip() if negate else line
        line = line.strip("/")
        rules.append((negate, _pattern_regex(line)))
    return rules


def in_context(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the file at `rel` (slash path from the context root) is sent to the build. As Docker
    does: the last rule that matches the path or one of its parent directories decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negate, rx in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            excluded = not negate
    return not excluded
