"""Reading a Kubernetes YAML document stream: objects with their document index, path and lines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from ..config.errors import ConfigError, ConfigIssue
from ..config.positions import Pos, Token, format_path, yaml_positions
from ..config.yaml_errors import yaml_error_issue

__all__ = ["Issues", "Obj", "looks_like_manifests", "read_manifest_files", "read_manifests"]


@dataclass
class Obj:
    """One Kubernetes object: `body` is the decoded mapping, found at `base` in document `doc`."""

    doc: int
    base: list[Token]
    body: dict[str, Any]
    pos: Pos | None
    file: str | None = None
    """The file it came from, when manifests are read from several (a config directory)."""

    @property
    def kind(self) -> str:
        return str(self.body.get("kind"))

    @property
    def api_version(self) -> str:
        return str(self.body.get("apiVersion"))

    @property
    def metadata(self) -> dict[str, Any]:
        meta = self.body.get("metadata")
        return meta if isinstance(meta, dict) else {}

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        ns = self.metadata.get("namespace")
        return ns if isinstance(ns, str) and ns else "default"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class Issues:
    """Collects ConfigIssues whose paths point into the manifests: `$[doc].path` and the YAML line."""

    file: str
    issues: list[ConfigIssue] = field(default_factory=list)
    _order: dict[int, tuple[str, int, int]] = field(default_factory=dict)

    def add(self, obj: Obj | None, tokens: list[Token], message: str) -> None:
        if obj is None:
            self.issues.append(ConfigIssue(self.file, format_path(tokens), message))
            return
        self.add_at(obj.doc, obj.pos, [*obj.base, *tokens], message, obj.file)

    def add_at(self, doc: int, pos: Pos | None, tokens: list[Token], message: str,
               file: str | None = None) -> None:
        path = f"$[{doc}]" + format_path(tokens)[1:]
        line = pos.line_of(tokens) if pos is not None else None
        issue = ConfigIssue(file or self.file, path, message, line)
        stem = message.split(" (native config: ")[0]
        if any(i.path == path and i.file == issue.file and i.message.split(" (native config: ")[0] == stem
               for i in self.issues):
            return      # one manifest node can feed several native ones (hostnames -> every match)
        self._order[id(issue)] = (issue.file, doc, line or 0)
        self.issues.append(issue)

    def raise_if_any(self) -> None:
        if self.issues:
            # Document order; issues found before the mapping (bad YAML, `$`) stay first.
            raise ConfigError(sorted(self.issues, key=lambda i: self._order.get(id(i), ("", -1, 0))))


def looks_like_manifests(text: str) -> bool:
    """True when YAML text is a Kubernetes document stream: top-level `apiVersion:` and `kind:` keys.

    The native config has neither key, so this cannot misread a native config.
    """
    has_api = has_kind = False
    for line in text.splitlines():
        if line.startswith("apiVersion:"):
            has_api = True
        elif line.startswith("kind:"):
            has_kind = True
        if has_api and has_kind:
            return True
    return False


def read_manifests(text: str, file: str) -> tuple[list[Obj], Issues]:
    """Parse every document; `kind: List` documents are flattened (their items keep their path)."""
    issues = Issues(file)
    return _read_into(text, file, issues, None), issues


def read_manifest_files(sources: list[tuple[str, str]], where: str) -> tuple[list[Obj], Issues]:
    """Several files' documents as one stream, in the order given: (text, file) pairs. Each object
    keeps its file, and its document index within that file."""
    issues = Issues(where)
    objs: list[Obj] = []
    for text, file in sources:
        objs += _read_into(text, file, issues, file)
    return objs, issues


def _read_into(text: str, file: str, issues: Issues, own_file: str | None) -> list[Obj]:
    loader = yaml.SafeLoader(text)
    objs: list[Obj] = []
    doc = -1
    try:
        while loader.check_node():
            node = loader.get_node()
            doc += 1
            if node is None:
                continue
            body = loader.construct_document(node)
            duplicates: list[tuple[list[Token], int]] = []
            pos = yaml_positions(node, duplicates)
            for path, _line in duplicates:
                issues.add_at(doc, pos, path, "duplicate key", own_file)
            if body is None:
                continue
            if not isinstance(body, dict):
                issues.add_at(doc, pos, [], "expected a Kubernetes object (a mapping with apiVersion and kind)",
                              own_file)
                continue
            if body.get("kind") == "List" and isinstance(body.get("items"), list):
                for i, item in enumerate(body["items"]):
                    if isinstance(item, dict):
                        objs.append(Obj(doc, ["items", i], item, pos, own_file))
                    else:
                        issues.add_at(doc, pos, ["items", i], "expected a Kubernetes object", own_file)
                continue
            objs.append(Obj(doc, [], body, pos, own_file))
    except yaml.YAMLError as e:
        raise ConfigError([yaml_error_issue(e, text, file)]) from None
    finally:
        loader.dispose()
    return objs
