"""Builds the optional compiled packet path (normalizer/core/_fastpath.c); metadata is in pyproject.

Why a custom build_ext: without a C compiler or Python's headers the package must still install
and run on the pure-Python engine (normalizer/core/fastpath.py falls back and says so), so a failed
compile is a warning, not an installation error.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # any failure means: no compiled engine
            self._warn(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(exc)

    @staticmethod
    def _warn(exc: Exception) -> None:
        print(
            f"WARNING: the compiled engine (normalizer.core._fastpath) was not built ({exc}); "
            "suricata-normalizer will run on the pure-Python engine. Install gcc and "
            "python3-dev (scripts/setup.sh does) and reinstall to get it.",
            file=sys.stderr,
        )


setup(
    ext_modules=[
        Extension(
            "normalizer.core._fastpath",
            sources=["normalizer/core/_fastpath.c"],
            # #included by _fastpath.c: a change to them must rebuild it (and the sdist has them)
            depends=[
                "normalizer/core/_headers.c",
                "normalizer/core/_tapsink.c",
                "normalizer/core/_decap.c",
            ],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
