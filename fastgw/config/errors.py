"""Config errors: every problem found in a config file, each with its file, `$.path` and line."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConfigError", "ConfigIssue"]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file.

    `path` is JSON-path style (`$.routes[0].match.path.prefix`); `$` is the whole document.
    `line` is 1-based, or None where the format does not tell it.
    """

    file: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}"


class ConfigError(Exception):
    """A config could not be loaded. `errors` lists every issue found (at least one)."""

    errors: list[ConfigIssue]

    def __init__(self, errors: list[ConfigIssue]):
        if not errors:
            raise ValueError("ConfigError needs at least one issue")
        self.errors = list(errors)
        super().__init__(self.errors)

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.errors)

    def __repr__(self) -> str:
        return f"ConfigError({self.errors!r})"
