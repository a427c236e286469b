"""What a config reload changed: the dotted paths whose values differ, for the audit trail.

Secrets never reach the settings (tokens and the preview secret are read from files or the
environment by name), so the paths and values here are safe to record.
"""

from __future__ import annotations

from typing import Any

from proxy.settings.model import Settings

MAX_CHANGES = 50  # a reload that changes more is summarised by its count


def settings_diff(old: Settings, new: Settings) -> dict[str, Any]:
    """{"changed": ["analysis.tick: 0.25 -> 0.5", ...]} (at most MAX_CHANGES, then a count)."""
    changes: list[str] = []
    _walk("", old.model_dump(mode="json"), new.model_dump(mode="json"), changes)
    out: dict[str, Any] = {"changed": changes[:MAX_CHANGES]}
    if len(changes) > MAX_CHANGES:
        out["more"] = len(changes) - MAX_CHANGES
    return out


def _walk(prefix: str, a: Any, b: Any, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in a:
                out.append(f"{path}: added")
            elif key not in b:
                out.append(f"{path}: removed")
            else:
                _walk(path, a[key], b[key], out)
    elif a != b:
        out.append(f"{prefix}: {_short(a)} -> {_short(b)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
