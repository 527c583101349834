"""Builds fastgw._core, the one extension module (fastgw/_core.pyx includes the files under fastgw/_cy/).

FASTGW_ANNOTATE=1 writes Cython's HTML annotation next to the sources. FASTGW_SKIP_CORE=1 leaves the
extension out; the Makefile sets it for the editable install into .venv, which only provides the `fastgw`
command and the import path, because it compiles the core itself once with `build_ext --inplace`. A
package built with FASTGW_SKIP_CORE=1 cannot run.
"""

import os
from glob import glob

from setuptools import Extension, setup

ext_modules = []
if os.environ.get("FASTGW_SKIP_CORE") != "1":
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [
            Extension(
                "fastgw._core",
                ["fastgw/_core.pyx"],
                depends=sorted(glob("fastgw/_cy/*.pyx") + glob("fastgw/_cy/*.pxi")),
                extra_compile_args=["-O2"],
            )
        ],
        annotate=os.environ.get("FASTGW_ANNOTATE") == "1",
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )

setup(ext_modules=ext_modules)
