"""The rules of `slotswitch lint-migration`: what each finding means (RULES: why it breaks the running
version, and the expand/contract alternative), its severity, the Finding record, and the column type
comparison that tells a widening from a narrowing.

proxy/release/migrations/lint.py's docstring explains every rule to users; a test checks it lists each key of RULES.
proxy/release/migrations/linter.py walks the SQL and emits the findings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from sqlglot import exp

_LATER = "in a later release, once no slot runs the old version"
_EXPAND = f"Expand/contract: add the new {{}}, dual-write both, backfill, switch reads, drop the old one {_LATER}."
_NEW_TYPE, _STOP = _EXPAND.format("column with the new type"), f"Stop using it in this release; drop it {_LATER}."
RULES: dict[str, tuple[str, str]] = {  # rule -> (why it breaks the running version, expand/contract alternative)
    "drop-table": ("the running version still reads and writes it", _STOP),
    "drop-view": ("the running version still reads it", _STOP),
    "rename-table": ("the running version still uses the old name", _EXPAND.format("table")),
    "rename-view": ("the running version still uses the old name", _EXPAND.format("view")),
    "drop-column": (
        "the running version still reads or writes it",
        f"Stop using the column now (make it nullable or defaulted if NOT NULL); drop it {_LATER}.",
    ),
    "rename-column": ("the running version still uses the old name", _EXPAND.format("column")),
    "add-not-null-column": (
        "the running version's INSERTs omit it and fail",
        f"Add it nullable or with a DEFAULT, write it, backfill, and add NOT NULL {_LATER}.",
    ),
    "set-not-null": (
        "the running version's INSERTs that omit it or write NULL fail",
        f"Always write it from the new version, backfill NULLs, and set NOT NULL {_LATER} "
        "(PostgreSQL: CHECK (col IS NOT NULL) NOT VALID first, VALIDATE later).",
    ),
    "drop-default": (
        "the running version's INSERTs that omit this NOT NULL column fail",
        f"Keep the default while any running version omits the column; drop it {_LATER}.",
    ),
    "narrow-column-type": ("the running version's writes can be rejected or truncated", _NEW_TYPE),
    "change-column-type": ("not a pure widening: the running version gets values it does not expect", _NEW_TYPE),
    "unverified-column-change": (
        "the old definition is unknown, so widening cannot be verified (use --schema)",
        f"Pass --schema to verify it is a pure widening; if it is not: {_NEW_TYPE}",
    ),
    "add-unique": (
        "the running version may write duplicates, which then fail",
        f"Make the new version avoid duplicates, dedupe, and add the unique index/constraint {_LATER}.",
    ),
    "add-constraint": (
        "the running version's writes may violate it and fail",
        f"Make the new version comply and add it {_LATER} (PostgreSQL: NOT VALID, VALIDATE later).",
    ),
    "truncate-table": (
        "it deletes every row the running version serves",
        f"Keep the rows while the old version serves them; remove them {_LATER}.",
    ),
    "replace-view": (
        "it may change or remove columns the running version reads",
        f"Create the changed view under a new name; drop the old one {_LATER}.",
    ),
    "drop-schema": ("it drops every table in it", _STOP),
    "drop-object": ("the running version (or a column default) may still use it", _STOP),
    "unrecognized-ddl": (
        "sqlglot parsed it only as a generic Command, so it cannot be checked",
        "Review it by hand against these rules, or rewrite it in syntax sqlglot understands.",
    ),
}
# The rules whose findings are warnings; the others are errors (drop-default is either: see the linter).
WARNINGS = {"unverified-column-change", "add-constraint", "replace-view", "drop-object", "unrecognized-ddl"}


class UnparseableSQL(Exception):
    """The SQL could not be parsed; never treated as a pass."""


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str  # "error" | "warning"
    statement: int  # 1-based
    line: int | None
    table: str | None
    column: str | None
    message: str
    alternative: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


_T = exp.DataType.Type
_INT = {_T.TINYINT: 1, _T.SMALLINT: 2, _T.MEDIUMINT: 3, _T.INT: 4, _T.BIGINT: 8, _T.INT128: 16}
_UINT = {_T.UTINYINT: 1, _T.USMALLINT: 2, _T.UMEDIUMINT: 3, _T.UINT: 4, _T.UBIGINT: 8, _T.UINT128: 16}
_FLOAT = {_T.FLOAT: 4, _T.DOUBLE: 8}
_TEXT = {_T.TINYTEXT: 255, _T.TEXT: 2**16 - 1, _T.MEDIUMTEXT: 2**24 - 1, _T.LONGTEXT: 2**32 - 1}
_VARCHAR, _CHAR = {_T.VARCHAR, _T.NVARCHAR}, {_T.CHAR, _T.NCHAR}


def _shape(dt: exp.DataType, mysql: bool) -> tuple[str, tuple[float, ...] | frozenset[str]] | None:
    """A type's family and extents; old -> new widens iff same family (or CHAR -> string) and nothing shrinks."""
    t, values = dt.this, [p.name for p in dt.expressions]
    p = [int(v) for v in values] if all(v.isdigit() for v in values) else []
    if t in _INT or t in _UINT:  # (reach below zero, reach above zero)
        bits = 8 * (_INT.get(t) or _UINT[t])
        return "int", (2.0 ** (bits - 1), 2.0 ** (bits - 1) - 1) if t in _INT else (0.0, 2.0**bits - 1)
    if t in _FLOAT:
        return "float", (_FLOAT[t],)
    if t in _TEXT:  # MySQL TEXT holds 64 KiB; elsewhere TEXT is unbounded
        return "string", (_TEXT[t] if mysql or t != _T.TEXT else math.inf,)
    if t in _VARCHAR or t in _CHAR:
        return ("char" if t in _CHAR else "string"), (p[0] if p else 1 if t in _CHAR else math.inf,)
    if t == _T.DECIMAL:  # (integer digits, scale); bare DECIMAL is (10, 0) in MySQL, unbounded in PostgreSQL
        scale = p[1] if len(p) > 1 else 0
        return "decimal", (p[0] - scale, scale) if p else (10.0, 0.0) if mysql else (math.inf, math.inf)
    if t in (_T.ENUM, _T.SET):
        return t.value, frozenset(values)
    return None


def compare_types(old: exp.DataType, new: exp.DataType, mysql: bool = False) -> str:
    """Classify old -> new as 'same', 'widen', 'narrow' or 'change' (not provably widening)."""
    if old == new:
        return "same"
    o, n = _shape(old, mysql), _shape(new, mysql)
    if o is None or n is None or (o[0] != n[0] and (o[0], n[0]) != ("char", "string")):
        return "change"
    if isinstance(o[1], tuple) and isinstance(n[1], tuple):
        return "widen" if all(b >= a for a, b in zip(o[1], n[1], strict=True)) else "narrow"
    return "widen" if set(o[1]) <= set(n[1]) else "narrow"
