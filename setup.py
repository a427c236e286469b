"""Build hook: compiles the data path with mypyc (the package metadata is in pyproject.toml).

SLOTSWITCH_PURE_PYTHON=1 builds without compiling; so does a machine whose C compiler fails, with a
message saying so. proxy/native.py says which modules are compiled and how the package picks the build
at import time (and logs it at start-up).
"""

from __future__ import annotations

import os
import runpy
import sys
import tempfile
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

ROOT = Path(__file__).resolve().parent
# What pip asks before building (requirements, metadata) compiles nothing: skip the minute of mypyc.
METADATA_ONLY = {"egg_info", "dist_info", "sdist"}


def extensions() -> list[Any]:
    native = runpy.run_path(str(ROOT / "proxy" / "native.py"))
    if native["pure_requested"]() or METADATA_ONLY.intersection(sys.argv[1:]):
        return []
    from mypyc.build import mypycify

    native["write_stamp"](ROOT / "proxy")
    # mypy only has to type the code for the compiler here (the strict check is CI's): the build
    # environment has none of the dependencies, which are then typed as Any.
    config = Path(tempfile.mkdtemp()) / "mypyc.ini"
    config.write_text("[mypy]\nignore_missing_imports = True\n")
    paths = [str(Path(*module.split("."))) + ".py" for module in native["COMPILED"]]
    os.chdir(ROOT)  # mypyc names modules after the paths it is given
    return list(mypycify([f"--config-file={config}", *paths], opt_level="3"))


class OptionalBuildExt(build_ext):
    """Compiling is an optimisation: without a working C compiler the install still succeeds, with the
    data path as Python source (about 1.25 times the CPU per request; slotswitch logs a WARNING at start-up
    and exports slotswitch_build_info{data_path="python"})."""

    def run(self) -> None:
        try:
            super().run()
        except (CCompilerError, CompileError, ExecError, LinkError, PlatformError) as exc:
            for ext in self.extensions:  # no half-built set: compiled modules must all be there or none
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            print(
                f"slotswitch: the data path could not be compiled ({exc}); it is installed as Python source. "
                "Install gcc and reinstall to compile it, or set SLOTSWITCH_PURE_PYTHON=1 to skip compiling.",
                file=sys.stderr,
            )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
