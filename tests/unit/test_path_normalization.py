"""The path normalizer of the core (fastgw/_cy/pathnorm.pyx; docs/http.md, "Path normalization"),
checked against a table of tricky cases and against a plain Python reference implementation that
follows RFC 3986 section 6.2.2 and the section 5.2.4 pseudo-code literally."""

import pathlib
import random
import re

import pytest
from support.core_testing import HTTPParseError, normalize_request_path, parse_request

UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
HEX = frozenset(b"0123456789abcdefABCDEF")
NEVER_DECODED = (0x2F, 0x5C, 0x00)  # "/", "\", NUL


class Refused(Exception):
    pass


# --- reference implementation ------------------------------------------------------------------------


def ref_decode(path: bytes, reject_encoded_slash: bool) -> bytes:
    """RFC 3986 6.2.2.1 and 6.2.2.2: decode %XX of unreserved characters, uppercase the others."""
    out = bytearray()
    i = 0
    while i < len(path):
        if path[i] == 0x25:  # "%"
            hexdigits = path[i + 1:i + 3]
            if len(hexdigits) != 2 or not all(c in HEX for c in hexdigits):
                raise Refused("malformed percent-encoding")
            value = int(hexdigits, 16)
            if value in UNRESERVED:
                out.append(value)
            elif value in NEVER_DECODED and reject_encoded_slash:
                raise Refused("encoded slash")
            else:
                out += b"%" + hexdigits.upper()
            i += 3
        else:
            out.append(path[i])
            i += 1
    return bytes(out)


def ref_merge_slashes(path: bytes) -> bytes:
    while b"//" in path:
        path = path.replace(b"//", b"/")
    return path


def ref_remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 5.2.4, step by step."""
    inp = path
    out = b""
    while inp:
        # A
        if inp.startswith(b"../"):
            inp = inp[3:]
        elif inp.startswith(b"./"):
            inp = inp[2:]
        # B
        elif inp.startswith(b"/./"):
            inp = b"/" + inp[3:]
        elif inp == b"/.":
            inp = b"/"
        # C
        elif inp.startswith(b"/../") or inp == b"/..":
            inp = b"/" + inp[4:]
            out = out[:out.rfind(b"/")] if b"/" in out else b""
        # D
        elif inp in (b".", b".."):
            inp = b""
        # E
        else:
            start = 1 if inp.startswith(b"/") else 0
            end = inp.find(b"/", start)
            if end < 0:
                end = len(inp)
            out += inp[:end]
            inp = inp[end:]
    return out


def reference(path: bytes, merge_slashes=False, reject_encoded_slash=False):
    """(normalized, changed), or Refused."""
    p = ref_decode(path, reject_encoded_slash)
    if merge_slashes:
        p = ref_merge_slashes(p)
    p = ref_remove_dot_segments(p)
    return p, p != path


def core(path: bytes, merge_slashes=False, reject_encoded_slash=False, in_place=False):
    try:
        return normalize_request_path(path, merge_slashes=merge_slashes,
                                      reject_encoded_slash=reject_encoded_slash, in_place=in_place)
    except HTTPParseError as e:
        assert e.status == 400
        raise Refused(str(e)) from None


def outcome(fn, path, **kw):
    try:
        return fn(path, **kw)
    except Refused:
        return None


# --- hand-written table --------------------------------------------------------------------------------

R = None  # refused with 400
# (input, default, merge_slashes, encoded_slashes: reject)
TABLE = [
    # already normal
    (b"/", b"/", b"/", b"/"),
    (b"/a/b/c", b"/a/b/c", b"/a/b/c", b"/a/b/c"),
    (b"/a/b/", b"/a/b/", b"/a/b/", b"/a/b/"),
    (b"", b"", b"", b""),
    # single and double dot segments
    (b"/.", b"/", b"/", b"/"),
    (b"/..", b"/", b"/", b"/"),
    (b"/./", b"/", b"/", b"/"),
    (b"/../", b"/", b"/", b"/"),
    (b"/../a", b"/a", b"/a", b"/a"),
    (b"/../../a/../../b", b"/b", b"/b", b"/b"),
    (b"/a/./b", b"/a/b", b"/a/b", b"/a/b"),
    (b"/a/../b", b"/b", b"/b", b"/b"),
    (b"/a/b/..", b"/a/", b"/a/", b"/a/"),
    (b"/a/b/.", b"/a/b/", b"/a/b/", b"/a/b/"),
    (b"/a/b/../", b"/a/", b"/a/", b"/a/"),
    (b"/a/./b/../../c", b"/c", b"/c", b"/c"),
    (b"/a/b/c/./../../g", b"/a/g", b"/a/g", b"/a/g"),  # RFC 3986 5.2.4's example
    (b"/mid/content=5/../6", b"/mid/6", b"/mid/6", b"/mid/6"),  # RFC 3986 5.2.4's example
    # not dot segments
    (b"/...", b"/...", b"/...", b"/..."),
    (b"/a/..b/.c/c.", b"/a/..b/.c/c.", b"/a/..b/.c/c.", b"/a/..b/.c/c."),
    (b"/a.", b"/a.", b"/a.", b"/a."),
    # encoded dots are dots
    (b"/a/%2e%2e/b", b"/b", b"/b", b"/b"),
    (b"/a/%2E%2e/b", b"/b", b"/b", b"/b"),
    (b"/a/.%2E/b", b"/b", b"/b", b"/b"),
    (b"/a/%2e/b", b"/a/b", b"/a/b", b"/a/b"),
    (b"/a/b/%2E%2E", b"/a/", b"/a/", b"/a/"),
    (b"/%2e%2e/%2e%2e/etc/passwd", b"/etc/passwd", b"/etc/passwd", b"/etc/passwd"),
    (b"/a%2eb", b"/a.b", b"/a.b", b"/a.b"),
    (b"/%2e%2e%2e", b"/...", b"/...", b"/..."),
    # unreserved characters decoded, in any case of hex digit
    (b"/%41%62%7e%7E%2d%5f%30", b"/Ab~~-_0", b"/Ab~~-_0", b"/Ab~~-_0"),
    (b"/%7a", b"/z", b"/z", b"/z"),
    # reserved and other encodings kept, hex digits uppercased
    (b"/caf%c3%a9", b"/caf%C3%A9", b"/caf%C3%A9", b"/caf%C3%A9"),
    (b"/caf%C3%A9", b"/caf%C3%A9", b"/caf%C3%A9", b"/caf%C3%A9"),
    (b"/a%20b", b"/a%20b", b"/a%20b", b"/a%20b"),
    (b"/%3f%23%25", b"/%3F%23%25", b"/%3F%23%25", b"/%3F%23%25"),
    (b"/%252e%252e/x", b"/%252e%252e/x", b"/%252e%252e/x", b"/%252e%252e/x"),  # no double decoding
    (b"/%0a%7F", b"/%0A%7F", b"/%0A%7F", b"/%0A%7F"),
    # %2F, %5C, %00: kept encoded (not separators), or refused
    (b"/a%2fb", b"/a%2Fb", b"/a%2Fb", R),
    (b"/a%2Fb", b"/a%2Fb", b"/a%2Fb", R),
    (b"/a%5cb", b"/a%5Cb", b"/a%5Cb", R),
    (b"/a%5C..", b"/a%5C..", b"/a%5C..", R),
    (b"/a%00", b"/a%00", b"/a%00", R),
    (b"/a/b%2f..%2f..%2fc", b"/a/b%2F..%2F..%2Fc", b"/a/b%2F..%2F..%2Fc", R),
    (b"/a/%2f../b", b"/a/%2F../b", b"/a/%2F../b", R),
    (b"/a/..%2f", b"/a/..%2F", b"/a/..%2F", R),
    (b"/a/%2e%2e%2fb", b"/a/..%2Fb", b"/a/..%2Fb", R),
    (b"/a%2f%2fb", b"/a%2F%2Fb", b"/a%2F%2Fb", R),  # encoded slashes are not merged either
    # malformed percent-encodings: always refused
    (b"/%", R, R, R),
    (b"/a%", R, R, R),
    (b"/a%4", R, R, R),
    (b"/%zz", R, R, R),
    (b"/%4g", R, R, R),
    (b"/%g4", R, R, R),
    (b"/%%41", R, R, R),
    (b"/a/../%", R, R, R),
    (b"/%-1", R, R, R),
    # empty segments: real segments unless merge_slashes
    (b"//", b"//", b"/", b"//"),
    (b"///a", b"///a", b"/a", b"///a"),
    (b"/a//b", b"/a//b", b"/a/b", b"/a//b"),
    (b"/a/b//", b"/a/b//", b"/a/b/", b"/a/b//"),
    (b"/a//../b", b"/a/b", b"/b", b"/a/b"),  # merge before dot removal (Envoy: /a/b)
    (b"/a/b//..", b"/a/b/", b"/a/", b"/a/b/"),
    (b"//..", b"/", b"/", b"/"),
    (b"/.//", b"//", b"/", b"//"),
    (b"/..//a", b"//a", b"/a", b"//a"),
    (b"/a/.//./b", b"/a//b", b"/a/b", b"/a//b"),
    (b"/%2e/%2e%2e//a", b"//a", b"/a", b"//a"),
    # other bytes copied as is
    (b"/a;b=c/d,e/@f:g!$&'()*+", b"/a;b=c/d,e/@f:g!$&'()*+", b"/a;b=c/d,e/@f:g!$&'()*+",
     b"/a;b=c/d,e/@f:g!$&'()*+"),
    (b"/A/B", b"/A/B", b"/A/B", b"/A/B"),  # case of the path itself is untouched
    (b"/a\\..\\b", b"/a\\..\\b", b"/a\\..\\b", b"/a\\..\\b"),  # a literal backslash is no separator
]

FLAG_MODES = {
    "default": {},
    "merge_slashes": {"merge_slashes": True},
    "reject_encoded": {"reject_encoded_slash": True},
}


def test_table_is_large_enough():
    assert len(TABLE) >= 40
    assert len({row[0] for row in TABLE}) == len(TABLE)


@pytest.mark.parametrize("row", TABLE, ids=[row[0].decode("latin-1") or "<empty>" for row in TABLE])
def test_table(row):
    path, expected = row[0], dict(zip(FLAG_MODES, row[1:], strict=True))
    for mode, kw in FLAG_MODES.items():
        want = expected[mode]
        for in_place in (False, True):
            got = outcome(core, path, in_place=in_place, **kw)
            assert got == (None if want is None else (want, want != path)), (mode, in_place)
        # the table also checks the reference implementation the fuzz test relies on
        ref = outcome(reference, path, **kw)
        assert ref == (None if want is None else (want, want != path)), ("reference", mode)


def test_merge_and_reject_combined():
    assert core(b"//a//../b", merge_slashes=True, reject_encoded_slash=True) == (b"/b", True)
    assert outcome(core, b"//a%2f", merge_slashes=True, reject_encoded_slash=True) is None


def test_unchanged_input_reports_unchanged():
    for path in (b"/", b"/a/b", b"/a%2Fb", b"/caf%C3%A9/", b"/a%20b/c.d"):
        assert core(path) == (path, False)
    assert core(b"/a%2fb") == (b"/a%2Fb", True)  # same length, other bytes: changed


def test_order_merge_before_dot_removal():
    """With merge_slashes, `//` means exactly what `/` means, also for `..` (docs/http.md): Envoy, which
    merges after removing dot segments, would turn `/a//../b` into `/a/b`."""
    assert core(b"/a//../b", merge_slashes=True)[0] == core(b"/a/../b", merge_slashes=True)[0] == b"/b"
    assert core(b"/a//../b")[0] == b"/a/b"
    assert core(b"/a/b//../../c", merge_slashes=True)[0] == b"/c"


def test_query_is_not_the_normalizers_business():
    r = parse_request(b"GET /a/%2e%2E/b?x=/../%2e HTTP/1.1\r\nHost: h\r\n\r\n")
    assert r["path"] == b"/a/%2e%2E/b"
    assert core(r["path"]) == (b"/b", True)


# --- property tests ----------------------------------------------------------------------------------

ALPHABET = [b"/", b".", b"a", b"%2e", b"%2E", b"%2f", b"%41", b"%", b"~"]
ALL_FLAGS = [
    {"merge_slashes": m, "reject_encoded_slash": r} for m in (False, True) for r in (False, True)
]


def random_paths(count, seed):
    rng = random.Random(seed)
    for _ in range(count):
        parts = [rng.choice(ALPHABET) for _ in range(rng.randint(0, 12))]
        if rng.random() < 0.9:
            parts.insert(0, b"/")
        yield b"".join(parts)


def random_good_paths(count, seed):
    """Random paths that are never refused: no bare `%`."""
    rng = random.Random(seed)
    good = [a for a in ALPHABET if a != b"%"] + [b"%5c", b"%00", b"%c3%a9", b"b"]
    for _ in range(count):
        yield b"/" + b"".join(rng.choice(good) for _ in range(rng.randint(0, 14)))


@pytest.mark.parametrize("flags", ALL_FLAGS, ids=lambda f: ",".join(k for k, v in f.items() if v) or "none")
def test_fuzz_against_reference(flags):
    refused = 0
    for path in random_paths(4000, seed=7):
        want = outcome(reference, path, **flags)
        assert outcome(core, path, **flags) == want, path
        assert outcome(core, path, in_place=True, **flags) == want, path
        refused += want is None
    assert 0 < refused < 4000  # the alphabet reaches both outcomes


@pytest.mark.parametrize("flags", ALL_FLAGS, ids=lambda f: ",".join(k for k, v in f.items() if v) or "none")
def test_properties(flags):
    for path in random_good_paths(3000, seed=11):
        got = outcome(core, path, **flags)
        if got is None:
            assert flags["reject_encoded_slash"]
            assert any(e in path.lower() for e in (b"%2f", b"%5c", b"%00"))
            continue
        out, changed = got
        assert changed == (out != path)
        assert len(out) <= len(path)
        # idempotent
        assert core(out, **flags) == (out, False), path
        # no dot segments left, never a decoded separator
        segments = out.split(b"/")
        assert b"." not in segments[1:] and b".." not in segments[1:], path
        assert out.count(b"/") <= path.count(b"/")
        # only uppercase hex in the remaining percent-encodings, none of them unreserved
        for i in range(len(out)):
            if out[i:i + 1] == b"%":
                hx = out[i + 1:i + 3]
                assert hx == hx.upper() and int(hx, 16) not in UNRESERVED
        if flags["merge_slashes"]:
            assert b"//" not in out
            # doubling any slash never changes the result
            doubled = path.replace(b"/", b"//")
            assert core(doubled, **flags)[0] == out, path


def test_idempotence_on_table():
    for row in TABLE:
        for mode, kw in FLAG_MODES.items():
            got = outcome(core, row[0], **kw)
            if got is not None:
                assert core(got[0], **kw) == (got[0], False), (row[0], mode)


def test_docs_table_matches():
    """The examples table in docs/http.md ("Path normalization") is what the core does."""
    doc = (pathlib.Path(__file__).parents[2] / "docs" / "http.md").read_text()
    section = doc.split("## Path normalization", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `/")]
    assert len(rows) >= 20

    def cell(text, path):
        text = text.strip()
        if text == "400":
            return None
        if text == "as is":
            return path
        return re.fullmatch(r"`([^`]*)`", text).group(1).encode()

    for line in rows:
        cells = line.strip("|").split("|")
        for path in re.findall(r"`([^`]*)`", cells[0]):
            path = path.encode()
            want = [cell(c, path) for c in cells[1:]]
            got = []
            for kw in ({}, {"merge_slashes": True}, {"reject_encoded_slash": True}):
                r = outcome(core, path, **kw)
                got.append(None if r is None else r[0])
            r = outcome(core, path)
            got.append(None if r is None or r[1] else path)  # reject mode
            assert got == want, line
