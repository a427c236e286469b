"""Build hook: compiles the data path with mypyc (the package metadata is in pyproject.toml).

SLOTSWITCH_PURE_PYTHON=1 builds without compiling; proxy/native.py says which modules are compiled
and how the package picks the build at import time.
"""

from __future__ import annotations

import os
import runpy
import sys
import tempfile
from pathlib import Path
from typing import Any

from setuptools import setup

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


setup(ext_modules=extensions())
