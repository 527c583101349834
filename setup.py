"""Builds fastgw._core. FASTGW_ANNOTATE=1 writes Cython's HTML annotation next to the sources."""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

annotate = os.environ.get("FASTGW_ANNOTATE") == "1"

extensions = [
    Extension(
        "fastgw._core",
        ["fastgw/_core.pyx"],
        extra_compile_args=["-O2"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        annotate=annotate,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )
)
