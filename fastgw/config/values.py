"""Parsers for the config's scalar value formats: durations, addresses, host patterns, paths.

Each parser raises ValueError with a message meant for the user (it ends up in a ConfigIssue).
"""

from __future__ import annotations

import ipaddress
import math
import re
from functools import lru_cache

__all__ = [
    "DURATION_PATTERN",
    "Duration",
    "PositiveDuration",
    "check_host_pattern",
    "check_path",
    "parse_address",
    "parse_duration",
]


class Duration(float):
    """Marks a config field as a duration (seconds, >= 0).

    In a config file a duration is a string like `250ms`, `5s`, `1m`, `1h`, `1m30s`, or a bare number of
    seconds. Decoded configs hold plain floats (seconds); this class only exists for decoding and the
    JSON Schema.
    """

    __slots__ = ()


class PositiveDuration(Duration):
    """A duration that must be greater than zero (timeouts)."""

    __slots__ = ()


_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PART = rf"{_NUMBER}(?:ms|s|m|h)"
#: The string form of a duration, as the JSON Schema states it.
DURATION_PATTERN = rf"^(?:{_NUMBER}|(?:{_PART})+)$"
_DURATION_RE = re.compile(DURATION_PATTERN)
_PART_RE = re.compile(rf"({_NUMBER})(ms|s|m|h)")
_LOOKS_LIKE_PART_RE = re.compile(r"([0-9.]+)([a-zA-Zµ]*)")


def parse_duration(value: str | int | float) -> float:
    """Return a duration in seconds.

    Accepts `250ms`, `5s`, `1.5s`, `1m`, `1h`, compounds such as `1m30s`, and bare numbers of seconds
    (`5`, `0.25`, or the numbers themselves). Negative, empty, non-finite values and unknown units are
    refused with ValueError.
    """
    if isinstance(value, bool):
        raise ValueError(
            "expected a duration such as '5s', '250ms', '1m' or a number of seconds, got a boolean"
        )
    if isinstance(value, int | float):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError(f"duration must be finite, got {value!r}")
        if seconds < 0:
            raise ValueError(f"duration must not be negative, got {value!r}")
        return seconds
    if not isinstance(value, str):
        raise ValueError(
            f"expected a duration such as '5s', '250ms', '1m' or a number of seconds, "
            f"got {type(value).__name__}"
        )
    text = value.strip()
    if not text:
        raise ValueError("duration is empty; expected e.g. '5s', '250ms', '1m' or a number of seconds")
    if text.startswith("-"):
        raise ValueError(f"duration must not be negative, got {value!r}")
    if not _DURATION_RE.match(text):
        units = [u for _, u in _LOOKS_LIKE_PART_RE.findall(text) if u and u not in _UNIT_SECONDS]
        if units:
            raise ValueError(f"invalid duration {value!r}: unknown unit {units[0]!r} (use ms, s, m or h)")
        raise ValueError(
            f"invalid duration {value!r}: expected e.g. '5s', '250ms', '1.5s', '1m30s' or a number of seconds"
        )
    if text[-1].isdigit() or text[-1] == ".":
        return float(text)
    return sum(float(num) * _UNIT_SECONDS[unit] for num, unit in _PART_RE.findall(text))


# Hostnames: RFC 1123 labels (letters, digits, inner hyphens), 1..63 chars each, 253 in all.
_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_IPV4ISH_RE = re.compile(r"^[0-9.]+$")


def _hostname_problem(host: str) -> str | None:
    """Why `host` (already lowercased) is not a valid DNS hostname or IPv4 address, or None."""
    if not host:
        return "empty host"
    if _IPV4ISH_RE.match(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"invalid IPv4 address {host!r}"
        return None
    if len(host) > 253:
        return "hostname longer than 253 characters"
    if host.endswith("."):
        return f"hostname {host!r} must not end with '.'"
    for label in host.split("."):
        if not _LABEL_RE.match(label):
            if not label:
                return f"hostname {host!r} has an empty label"
            return (
                f"invalid hostname {host!r}: label {label!r} may hold only letters, digits and inner "
                "hyphens (at most 63 characters)"
            )
    return None


@lru_cache(maxsize=1024)
def parse_address(address: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split `host:port` into (host, port).

    host is an IPv4 address, a bracketed IPv6 address (`[::1]:8080`, returned without brackets) or a
    hostname (returned lowercased). port is 1..65535, or 0..65535 with `allow_port_zero` (listeners:
    0 asks the OS for a free port).
    """
    if not isinstance(address, str) or not address:
        raise ValueError("address is empty; expected host:port")
    if any(c.isspace() for c in address):
        raise ValueError(f"address {address!r} must not contain whitespace")
    scheme, sep, rest = address.partition("://")
    if sep and scheme.isalpha():
        # Checked first: the scheme's ':' would otherwise read as an unbracketed IPv6 address.
        bare = rest.split("/", 1)[0]
        example = f" ({bare!r})" if bare else ""
        raise ValueError(f"address {address!r}: write host:port, without a scheme{example}")
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise ValueError(f"address {address!r}: missing ']' after the IPv6 address")
        host = address[1:end]
        rest = address[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f"address {address!r}: expected ':port' after ']'")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"address {address!r}: invalid IPv6 address {host!r}") from None
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep:
            raise ValueError(f"address {address!r} has no port; expected host:port")
        if ":" in host:
            raise ValueError(f"address {address!r}: write IPv6 addresses in brackets, e.g. [::1]:8080")
        if not host:
            raise ValueError(
                f"address {address!r} has no host; use 0.0.0.0 or [::] to listen on all interfaces"
            )
        host = host.lower()
        problem = _hostname_problem(host)
        if problem:
            raise ValueError(f"address {address!r}: {problem}")
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"address {address!r}: port {port_text!r} is not a number")
    port = int(port_text)
    low = 0 if allow_port_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"address {address!r}: port {port} out of range {low}..65535")
    return host, port


def check_host_pattern(pattern: str) -> None:
    """Validate a route host pattern (already lowercased).

    Either an exact hostname (`api.example.com`), an IP literal (`10.0.0.1`, `[::1]`), or a wildcard
    `*.suffix` (`*.example.com`) that matches any name ending in `.suffix`.
    """
    if not pattern:
        raise ValueError("host pattern is empty")
    if any(c.isspace() for c in pattern):
        raise ValueError(f"host pattern {pattern!r} must not contain whitespace")
    if pattern.startswith("["):
        if not pattern.endswith("]"):
            raise ValueError(f"host pattern {pattern!r}: must not include a port")
        try:
            ipaddress.IPv6Address(pattern[1:-1])
        except ValueError:
            raise ValueError(f"host pattern {pattern!r}: invalid IPv6 address") from None
        return
    if ":" in pattern:
        raise ValueError(f"host pattern {pattern!r} must not include a port (the Host's port is ignored)")
    rest = pattern
    if pattern.startswith("*."):
        rest = pattern[2:]
    if "*" in rest:
        raise ValueError(
            f"host pattern {pattern!r}: '*' is only allowed as a whole first label, as in '*.example.com'"
        )
    problem = _hostname_problem(rest)
    if problem:
        raise ValueError(f"host pattern {pattern!r}: {problem}")


def check_path(path: str) -> None:
    """Validate a route path (prefix or exact): starts with '/', printable ASCII, no query or fragment."""
    if not path.startswith("/"):
        raise ValueError(f"path {path!r} must start with '/'")
    for c in path:
        if c == "?" or c == "#":
            raise ValueError(
                f"path {path!r} must not contain {c!r} (routes match the path without the query)"
            )
        if c in "\r\n\0 ":
            raise ValueError(f"path {path!r} must not contain {c!r}")
        if not c.isascii() or not c.isprintable():
            raise ValueError(
                f"path {path!r} must be printable ASCII (percent-encode other characters), found {c!r}"
            )
