"""The header scans of fastgw/_cy/http1.pyx (fgw_name_run, fgw_value_run, fgw_host_run,
fgw_path_plain_run) compiled as plain C, both
ways: with SSE2 (what an x86-64 build uses) and with FASTGW_NO_SSE2, the 64-bit word scan an arm64
build uses. Over pseudo-random buffers from every start offset, a scan must never skip a byte outside
its class, and must skip every whole 8-byte word of a run inside it (so the fast path is taken)."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

HTTP1 = Path(__file__).resolve().parents[2] / "fastgw" / "_cy" / "http1.pyx"

PROGRAM = r"""
#include <stdio.h>
#include <sys/types.h>
typedef ssize_t Py_ssize_t;
%s
static int name_ok(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}
static int host_ok(unsigned char c) { return name_ok(c) || c == '.'; }
static int path_ok(unsigned char c) { return c != '%%' && c != '.'; }
static int value_ok(unsigned char c) { return (c >= 0x20 && c <= 0x7E) || c >= 0x80; }
static int value_ok7(unsigned char c) { return c >= 0x20 && c <= 0x7E; }

static unsigned long long rng = 88172645463325252ULL;
static unsigned next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (unsigned)rng; }

int main(void) {
    static const char common[] = "abcxyzABCXYZ0189-.";
    static const char odd[] = ":_ .\t\r\n\x7f\x80\xff\x1f@[`{/\x00%%";
    char buf[96];
    long checks = 0;
    for (int round = 0; round < 20000; round++) {
        int n = 1 + next() %% 90, rare = 1 + next() %% 40;
        for (int i = 0; i < n; i++)
            buf[i] = (next() %% rare == 0) ? odd[next() %% (sizeof odd - 1)] : common[next() %% (sizeof common - 1)];
        for (int start = 0; start <= n; start++) {
            for (int which = 0; which < 4; which++) {
                Py_ssize_t r = which == 3 ? fgw_path_plain_run(buf, start, n) : which == 2 ? fgw_host_run(buf, start, n) : which ? fgw_value_run(buf, start, n) : fgw_name_run(buf, start, n);
                Py_ssize_t f = start, f7 = start;
                if (r < start || r > n) { printf("FAIL range %%d %%d %%d\n", which, start, (int)r); return 1; }
                for (Py_ssize_t i = start; i < r; i++)
                    if (!(which == 3 ? path_ok((unsigned char)buf[i]) : which == 2 ? host_ok((unsigned char)buf[i]) : which ? value_ok((unsigned char)buf[i]) : name_ok((unsigned char)buf[i]))) {
                        printf("FAIL skipped a bad byte: scan %%d start %%d at %%d\n", which, start, (int)i);
                        return 1;
                    }
                while (f7 < n && (which == 3 ? path_ok((unsigned char)buf[f7]) : which == 2 ? host_ok((unsigned char)buf[f7]) : which ? value_ok7((unsigned char)buf[f7]) : name_ok((unsigned char)buf[f7]))) f7++;
                f = start + ((f7 - start) / 8) * 8;
                if (r < f) { printf("FAIL slow: scan %%d start %%d r %%d expected >= %%d\n", which, start, (int)r, (int)f); return 1; }
                checks++;
            }
        }
    }
    printf("ok %%ld sse2=%%d\n", checks, FGW_SSE2);
    return 0;
}
"""


def _c_block() -> str:
    text = HTTP1.read_text()
    m = re.search(r"/\* fastgw field scan \(begin\) \*/(.*?)/\* fastgw field scan \(end\) \*/", text, re.S)
    assert m, "the scan's C block is marked in http1.pyx"
    return m.group(1)


@pytest.mark.parametrize("flags", [[], ["-DFASTGW_NO_SSE2"]], ids=["native", "word-scan"])
def test_field_scans(tmp_path, flags):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "scan.c"
    src.write_text(PROGRAM % _c_block())
    exe = tmp_path / "scan"
    subprocess.run([cc, "-O2", "-Wall", "-Werror", *flags, "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=False).stdout
    assert out.startswith("ok "), out
    sse2 = out.strip().endswith("sse2=1")
    if flags:
        assert not sse2, "FASTGW_NO_SSE2 must select the word scan"
    elif platform.machine() in ("x86_64", "AMD64"):
        assert sse2, "an x86-64 build must take the SSE2 path"
