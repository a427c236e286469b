"""The pinned dependency sets agree with pyproject.toml.

requirements.lock pins the application's dependencies, requirements-dev.lock the application's, the
dev extras' and the build's tools; both are written by `bash tools/lock.sh` (uv pip compile). A
dependency added to, dropped from or re-bounded in one and not the other fails here, with the
command that mends it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
REFRESH = "refresh the locks with `bash tools/lock.sh`"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ \\;]+)")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def requirements(extra: str | None) -> dict[str, Requirement]:
    project = PYPROJECT["project"]
    items = list(project["dependencies"])
    if extra is not None:
        items += project["optional-dependencies"][extra]
    reqs = [Requirement(item) for item in items]
    return {canonicalize_name(r.name): r for r in reqs}


def lock(name: str) -> tuple[dict[str, Version], set[str], str]:
    """(pins, packages the lock says come from pyproject.toml, text)."""
    text = (ROOT / name).read_text(encoding="utf-8")
    pins: dict[str, Version] = {}
    direct: set[str] = set()
    current = ""
    for line in text.splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match[1])
            pins[current] = Version(match[2])
        elif "(pyproject.toml)" in line and current:
            direct.add(current)
    return pins, direct, text


@pytest.mark.parametrize(("name", "extra"), [("requirements.lock", None), ("requirements-dev.lock", "dev")])
def test_lock_pins_exactly_what_pyproject_asks_within_its_bounds(name: str, extra: str | None) -> None:
    wanted = requirements(extra)
    pins, direct, _ = lock(name)
    missing = sorted(set(wanted) - set(pins))
    assert not missing, f"{name} lacks {missing} from pyproject.toml: {REFRESH}"
    stale = sorted(direct - set(wanted))
    assert not stale, f"{name} pins {stale} for pyproject.toml, which no longer asks for them: {REFRESH}"
    not_direct = sorted(set(wanted) - direct)
    assert not not_direct, f"{name} does not list {not_direct} as coming from pyproject.toml: {REFRESH}"
    outside = {n: str(pins[n]) for n, req in wanted.items() if not req.specifier.contains(pins[n], prereleases=True)}
    assert not outside, f"{name} pins {outside} outside pyproject.toml's bounds: {REFRESH}"


@pytest.mark.parametrize("name", ["requirements.lock", "requirements-dev.lock", "requirements-build.lock"])
def test_every_pin_carries_hashes(name: str) -> None:
    _, _, text = lock(name)
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    unhashed = [e.split(" ", 1)[0] for e in entries if "==" in e and "--hash=sha256:" not in e]
    assert not unhashed, f"{name}: pins without hashes {unhashed}: {REFRESH}"


@pytest.mark.parametrize("name", ["requirements.lock", "requirements-build.lock"])
def test_the_image_locks_are_subsets_of_the_dev_lock(name: str) -> None:
    """The image (its runtime and its build) and CI run the same versions of what they share."""
    part, _, _ = lock(name)
    dev, _, _ = lock("requirements-dev.lock")
    differ = {n: (str(v), str(dev.get(n))) for n, v in part.items() if dev.get(n) != v}
    assert not differ, f"{name} and requirements-dev.lock pin these differently: {differ}: {REFRESH}"


def test_every_dependency_has_an_upper_bound() -> None:
    """People who install slotswitch into their own environment get bounds, not a next major release."""
    unbounded = [
        str(r) for r in requirements(None).values() if not any(s.operator in ("<", "<=", "==") for s in r.specifier)
    ]
    assert not unbounded, f"give these an upper bound in pyproject.toml: {unbounded}"
