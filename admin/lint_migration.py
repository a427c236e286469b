"""Migration safety checker: ``slotswitch lint-migration FILE.sql [--dialect D] [--schema S.sql] [--json]``.

Blue and green share one database, so a migration runs while the *old* version still serves traffic (and may
get it back on rollback). The SQL is parsed with sqlglot (no regexes) and its AST checked against these rules
(E = error, W = warning; any finding means exit 1). Each breaks the running version because:

  drop-table, drop-view (E)      it still reads and writes the table or view.
  rename-table, rename-view (E)  it still uses the old name (ALTER ... RENAME TO, MySQL RENAME TABLE).
  drop-column (E)                its SELECTs and INSERTs still name the column.
  rename-column (E)              same as a drop (RENAME COLUMN, MySQL CHANGE old new, PostgreSQL RENAME a TO b).
  add-not-null-column (E)        ADD COLUMN NOT NULL/PRIMARY KEY without a DEFAULT, identity, serial,
                                 auto-increment or generated value: its INSERTs omit the column and fail.
  set-not-null (E)               SET NOT NULL, or MySQL MODIFY/CHANGE to NOT NULL: its INSERTs that omit the
                                 column or write NULL fail. Flagged on existing columns too.
  drop-default (E; W if nullability unknown)  DROP DEFAULT, or a MySQL MODIFY losing it, on a NOT NULL column.
  narrow-column-type (E)         shorter VARCHAR/CHAR, TEXT -> VARCHAR(n), smaller or signed -> unsigned integer,
                                 DOUBLE -> FLOAT, fewer NUMERIC digits, fewer ENUM/SET values: its writes fail.
  change-column-type (E)         any other change not provably widening (INT -> TEXT, TIMESTAMP(6) ->
                                 TIMESTAMP(3), VARCHAR -> CHAR...): it gets values it does not expect.
  unverified-column-change (W)   a type change or MySQL MODIFY/CHANGE whose old definition is unknown: widening
                                 cannot be told from narrowing. Pass --schema with the current schema.
  add-unique (E)                 ADD CONSTRAINT UNIQUE, ADD UNIQUE, ADD PRIMARY KEY, CREATE UNIQUE INDEX on an
                                 existing table, ADD COLUMN UNIQUE with a constant DEFAULT: it may write duplicates.
  add-constraint (W)             ADD CHECK or FOREIGN KEY on an existing table: its writes may violate it.
  truncate-table (E)             deletes the rows it serves.
  replace-view (W)               CREATE OR REPLACE VIEW may change or remove columns it reads.
  drop-schema (E)                DROP SCHEMA/DATABASE drops every table in it.
  drop-object (W)                DROP SEQUENCE/FUNCTION/TYPE/TRIGGER/...: it (or a column default) may use it.
  unrecognized-ddl (W)           sqlglot fell back to exp.Command for an ALTER/DROP/RENAME/TRUNCATE/DO, or a CREATE
                                 with UNIQUE (e.g. ``ALTER TABLE t SET SCHEMA s``): reported, never passed silently.

Safe, never flagged: CREATE TABLE/VIEW/INDEX, ADD COLUMN nullable or with a default, DROP INDEX, DROP
CONSTRAINT/FOREIGN KEY/PRIMARY KEY and RENAME INDEX (they only relax; mind an ``ON CONFLICT``/``ON DUPLICATE
KEY`` upsert that needs the unique index), SET DEFAULT, DROP NOT NULL, widening type changes, DML, and anything
done to a table or view created earlier in the same file (the old version cannot use it; CREATE ... IF NOT
EXISTS counts as new only when --schema is given and lacks the table). Old column definitions come from earlier
statements and the optional --schema DDL (e.g. the previous migrations concatenated). Unparseable SQL, or a bare
expression that is no statement, raises UnparseableSQL (exit 2): never a pass.

sqlglot 30.x names (checked by introspection): ALTER is exp.Alter (formerly exp.AlterTable) with actions
exp.ColumnDef (ADD COLUMN), exp.Drop, exp.RenameColumn, exp.AlterRename, exp.AlterColumn, exp.ModifyColumn
(MySQL MODIFY/CHANGE), exp.AddConstraint. PostgreSQL ``RENAME a TO b`` parses as exp.AlterRename plus a
ToTableProperty option and is treated as a column rename.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import groupby
from pathlib import Path

import click
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect, Dialects
from sqlglot.dialects.mysql import MySQL
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokenizer_core import Token, TokenType

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
_WARNINGS = {"unverified-column-change", "add-constraint", "replace-view", "drop-object", "unrecognized-ddl"}
_T = exp.DataType.Type
_INT = {_T.TINYINT: 1, _T.SMALLINT: 2, _T.MEDIUMINT: 3, _T.INT: 4, _T.BIGINT: 8, _T.INT128: 16}
_UINT = {_T.UTINYINT: 1, _T.USMALLINT: 2, _T.UMEDIUMINT: 3, _T.UINT: 4, _T.UBIGINT: 8, _T.UINT128: 16}
_FLOAT = {_T.FLOAT: 4, _T.DOUBLE: 8}
_TEXT = {_T.TINYTEXT: 255, _T.TEXT: 2**16 - 1, _T.MEDIUMTEXT: 2**24 - 1, _T.LONGTEXT: 2**32 - 1}
_VARCHAR, _CHAR = {_T.VARCHAR, _T.NVARCHAR}, {_T.CHAR, _T.NCHAR}
_SERIAL = {_T.SMALLSERIAL, _T.SERIAL, _T.BIGSERIAL}
_FILLED = (exp.AutoIncrementColumnConstraint, exp.GeneratedAsIdentityColumnConstraint, exp.ComputedColumnConstraint)
_NOT_STATEMENT = (exp.Condition, exp.Alias, exp.Tuple, exp.Star, exp.Identifier)
_COMMAND_DDL = {"ALTER", "DROP", "RENAME", "TRUNCATE", "DO"}
DIALECTS = sorted(d.value for d in Dialects if d.value)


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


@dataclass
class _Col:  # None = unknown
    dtype: exp.DataType | None = None
    not_null: bool | None = None
    has_default: bool | None = None


@dataclass
class _Table:
    new: bool  # created by this migration: the old version cannot be using it
    cols: dict[str, _Col] = field(default_factory=dict)


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


def _col_from_def(cd: exp.ColumnDef) -> tuple[_Col, bool]:
    """The column a definition describes, and whether it is UNIQUE/PRIMARY KEY with a constant DEFAULT."""
    kinds = [c.args.get("kind") for c in cd.args.get("constraints") or []]
    not_null = any(isinstance(k, exp.NotNullColumnConstraint) and not k.args.get("allow_null") for k in kinds)
    dtype = cd.args.get("kind") if isinstance(cd.args.get("kind"), exp.DataType) else None
    defaults = [k.this for k in kinds if isinstance(k, exp.DefaultColumnConstraint)]
    defaults = [d for d in defaults if not isinstance(d, exp.Null)]
    filled = any(isinstance(k, _FILLED) for k in kinds) or (dtype is not None and dtype.this in _SERIAL)
    pk = any(isinstance(k, exp.PrimaryKeyColumnConstraint) for k in kinds)
    unique = pk or any(isinstance(k, exp.UniqueColumnConstraint) for k in kinds)
    constant = any(isinstance(d, exp.Literal | exp.Boolean) for d in defaults)
    return _Col(dtype, not_null or pk, bool(defaults) or filled), unique and constant


def _tname(table: exp.Table) -> str:
    return ".".join(p.name for p in table.parts)


def _names(nodes: list[exp.Expr]) -> str | None:
    nodes = [n.this if isinstance(n, exp.Ordered) else n for n in nodes]
    return ", ".join(n.name or n.sql() for n in nodes) or None


def _chunks(tokens: list[Token]) -> Iterator[list[Token]]:
    """Split tokens into statements at semicolons, as sqlglot's parser does (comments are not tokens)."""
    for semicolon, chunk in groupby(tokens, lambda token: token.token_type == TokenType.SEMICOLON):
        if not semicolon:
            yield list(chunk)


class _Linter:
    def __init__(self, dialect: str | None) -> None:
        self.dialect = Dialect.get_or_raise(dialect)
        self.mysql = isinstance(self.dialect, MySQL)
        self.tables: dict[str, _Table] = {}
        self.findings: list[Finding] = []
        self.baseline = self.had_baseline = False
        self.statements, self.line, self.text = 0, 0, ""

    def run(self, sql: str, *, baseline: bool = False) -> None:
        self.baseline, self.had_baseline, self.statements = baseline, self.had_baseline or baseline, 0
        where = "--schema file: " if baseline else ""
        try:
            chunks = list(_chunks(self.dialect.tokenize(sql)))
        except TokenError as exc:
            raise UnparseableSQL(f"{where}{exc}") from exc
        for chunk in chunks:
            self.statements, self.line = self.statements + 1, chunk[0].line
            self.text = sql[chunk[0].start : chunk[-1].end + 1]
            at = f"{where}statement {self.statements} (line {self.line})"
            try:
                parsed = [e for e in self.dialect.parser().parse(chunk, sql) if e is not None]
            except ParseError as exc:
                err = exc.errors[0] if exc.errors else {"description": str(exc)}
                near = f" (near {err['highlight']!r} on line {err.get('line')})" if err.get("highlight") else ""
                raise UnparseableSQL(f"{at}: {str(err['description']).split(' but got <Token')[0]}{near}") from exc
            for statement in parsed:
                if isinstance(statement, _NOT_STATEMENT):
                    raise UnparseableSQL(f"{at}: not a SQL statement: {self.text!r}")
                self._statement(statement)

    def _emit(
        self,
        rule: str,
        key: str,
        node: exp.Expr | None,
        table: str | None,
        column: str | None,
        what: str,
        severity: str | None = None,
    ) -> None:
        if self.baseline or (key in self.tables and self.tables[key].new):
            return
        lines = [i.meta["line"] for i in (node.find_all(exp.Identifier) if node else ()) if "line" in i.meta]
        severity = severity or ("warning" if rule in _WARNINGS else "error")
        why, alternative = RULES[rule]
        self.findings.append(
            Finding(
                rule,
                severity,
                self.statements,
                lines[0] if lines else self.line,
                table,
                column,
                f"{what}: {why}.",
                alternative,
            )
        )

    def _key(self, node: exp.Expr) -> str:
        parts = node.parts if isinstance(node, exp.Table) else [node.this if isinstance(node, exp.Column) else node]
        return ".".join(self.dialect.normalize_identifier(p.copy()).name for p in parts)

    def _cols(self, key: str) -> dict[str, _Col]:
        return self.tables.setdefault(key, _Table(new=False)).cols

    def _statement(self, st: exp.Expr) -> None:
        if isinstance(st, exp.Alter) and isinstance(st.this, exp.Table):
            kind = str(st.args.get("kind") or "").lower()
            for action in st.args.get("actions") or [] if kind in ("table", "view") else []:
                self._action(st, st.this, action, kind)
        elif isinstance(st, exp.Drop):
            self._drop(st)
        elif isinstance(st, exp.TruncateTable):
            for t in st.expressions:
                self._emit("truncate-table", self._key(t), t, _tname(t), None, f"TRUNCATE {_tname(t)}")
        elif isinstance(st, exp.Create):
            self._create(st)
        elif isinstance(st, exp.Command):
            self._command(str(st.this).upper(), st.args.get("expression"))

    def _action(self, st: exp.Alter, target: exp.Table, act: exp.Expr, kind: str) -> None:
        key, name = self._key(target), _tname(target)
        to = [o.this for o in st.args.get("options") or [] if isinstance(o, exp.ToTableProperty)]
        if isinstance(act, exp.AlterRename) and to and kind == "table":  # PostgreSQL RENAME a TO b
            self._rename_column(key, name, act.this, to[0])
        elif isinstance(act, exp.AlterRename):
            self._emit(f"rename-{kind}", key, target, name, None, f"RENAME {kind} {name} TO {_tname(act.this)}")
            self.tables[self._key(act.this)] = self.tables.pop(key, _Table(new=False))
        elif kind == "table" and isinstance(act, exp.RenameColumn):
            self._rename_column(key, name, act.this, act.args["to"])
        elif kind == "table" and isinstance(act, exp.Drop) and str(act.args.get("kind")).upper() == "COLUMN":
            for col in act.args.get("tables") or []:
                self._emit("drop-column", key, col, name, col.name, f"DROP COLUMN {name}.{col.name}")
                self._cols(key).pop(self._key(col), None)
        elif kind == "table" and isinstance(act, exp.ColumnDef):
            self._add_column(key, name, act)
        elif kind == "table" and isinstance(act, exp.AlterColumn):
            self._alter_column(key, name, act)
        elif kind == "table" and isinstance(act, exp.ModifyColumn):
            self._modify_column(key, name, act)
        elif kind == "table" and isinstance(act, exp.AddConstraint):
            self._add_constraint(key, name, act)

    def _rename_column(self, key: str, table: str, old: exp.Expr, new: exp.Expr) -> None:
        self._emit("rename-column", key, old, table, old.name, f"RENAME COLUMN {table}.{old.name} TO {new.name}")
        self._cols(key)[self._key(new)] = self._cols(key).pop(self._key(old), _Col())

    def _add_column(self, key: str, table: str, cd: exp.ColumnDef) -> None:
        col, constant_unique = _col_from_def(cd)
        if col.not_null and not col.has_default:
            self._emit("add-not-null-column", key, cd, table, cd.name, f"ADD COLUMN {table}.{cd.name} NOT NULL")
        if constant_unique:
            self._emit("add-unique", key, cd, table, cd.name, f"ADD COLUMN {table}.{cd.name} UNIQUE DEFAULT const")
        self._cols(key)[self._key(cd.this)] = col

    def _type_change(self, key: str, table: str, node: exp.Expr, old: _Col, new: exp.DataType) -> None:
        change = f"{old.dtype.sql(self.dialect) if old.dtype else '(unknown)'} -> {new.sql(self.dialect)}"
        verdict = compare_types(old.dtype, new, self.mysql) if old.dtype else "unverified"
        rule = {
            "narrow": "narrow-column-type",
            "change": "change-column-type",
            "unverified": "unverified-column-change",
        }.get(verdict)
        if rule:
            self._emit(rule, key, node, table, node.name, f"column {table}.{node.name} type {change}")

    def _not_null(self, key: str, table: str, node: exp.Expr, was: bool | None, drop_default: bool = False) -> None:
        if drop_default and was is not False:  # DROP DEFAULT matters only on a (possibly) NOT NULL column
            null = "NOT NULL" if was else "possibly NOT NULL (nullability unknown)"
            self._emit(
                "drop-default",
                key,
                node,
                table,
                node.name,
                f"DROP DEFAULT on {null} column {table}.{node.name}",
                "error" if was else "warning",
            )
        elif not drop_default and not was:
            self._emit("set-not-null", key, node, table, node.name, f"SET NOT NULL on {table}.{node.name}")

    def _alter_column(self, key: str, table: str, act: exp.AlterColumn) -> None:
        col = self._cols(key).setdefault(self._key(act.this), _Col())
        if isinstance(act.args.get("dtype"), exp.DataType):
            self._type_change(key, table, act.this, col, act.args["dtype"])
            col.dtype = act.args["dtype"]
        if act.args.get("allow_null") is False:  # SET NOT NULL
            self._not_null(key, table, act.this, col.not_null)
            col.not_null = True
        elif act.args.get("drop") and act.args.get("allow_null"):  # DROP NOT NULL
            col.not_null = False
        elif act.args.get("drop"):  # DROP DEFAULT
            self._not_null(key, table, act.this, col.not_null, drop_default=True)
            col.has_default = False
        elif act.args.get("default") is not None:
            col.has_default = True

    def _modify_column(self, key: str, table: str, act: exp.ModifyColumn) -> None:
        cd, cols, old_name = act.this, self._cols(key), act.args.get("rename_from") or act.this.this
        old = cols.pop(self._key(old_name), _Col())
        cols[self._key(cd.this)] = new = _col_from_def(cd)[0]
        if self._key(old_name) != self._key(cd.this):
            self._rename_column(key, table, old_name, cd.this)
            return
        if new.dtype is not None:
            self._type_change(key, table, cd.this, old, new.dtype)
        if old.dtype is not None and new.not_null:  # MODIFY restates the whole definition
            self._not_null(
                key,
                table,
                cd.this,
                old.not_null,
                drop_default=bool(old.has_default) and not new.has_default and old.not_null is True,
            )

    def _add_constraint(self, key: str, table: str, act: exp.AddConstraint) -> None:
        for node in act.find_all(exp.UniqueColumnConstraint, exp.PrimaryKey):
            cols = node.this.expressions if isinstance(node.this, exp.Schema) else node.expressions
            what = "PRIMARY KEY" if isinstance(node, exp.PrimaryKey) else "UNIQUE"
            self._emit("add-unique", key, node, table, _names(cols), f"ADD {what} on existing table {table}")
        for check in act.find_all(exp.CheckColumnConstraint, exp.ForeignKey):
            what = "CHECK" if isinstance(check, exp.CheckColumnConstraint) else "FOREIGN KEY"
            self._emit("add-constraint", key, check, table, None, f"ADD {what} on existing table {table}")

    def _drop(self, st: exp.Drop) -> None:
        kind = str(st.args.get("kind") or "object").upper()
        rule = {"TABLE": "drop-table", "VIEW": "drop-view", "SCHEMA": "drop-schema", "DATABASE": "drop-schema"}
        for t in st.args.get("tables") or [] if kind != "INDEX" else []:
            name, key = (_tname(t), self._key(t)) if isinstance(t, exp.Table) else (t.sql(), t.sql())
            self._emit(rule.get(kind, "drop-object"), key, t, name, None, f"DROP {kind} {name}")
            if kind in ("TABLE", "VIEW"):
                self.tables.pop(key, None)

    def _create(self, st: exp.Create) -> None:
        kind = str(st.args.get("kind") or "").upper()
        target = st.this.this if isinstance(st.this, exp.Schema) else st.this
        if kind == "INDEX" and st.args.get("unique") and isinstance(target, exp.Index):
            table, params = target.args.get("table"), target.args.get("params")
            cols = _names(params.args.get("columns") or []) if params else None
            if isinstance(table, exp.Table):
                self._emit(
                    "add-unique",
                    self._key(table),
                    target,
                    _tname(table),
                    cols,
                    f"CREATE UNIQUE INDEX on existing table {_tname(table)}",
                )
        elif kind in ("TABLE", "VIEW") and isinstance(target, exp.Table):
            key, prev = self._key(target), self.tables.get(self._key(target))
            if kind == "VIEW" and st.args.get("replace"):
                self._emit("replace-view", key, target, _tname(target), None, f"CREATE OR REPLACE VIEW {key}")
            maybe_old = bool(st.args.get("exists")) and (not self.had_baseline or prev is not None)
            table = self.tables[key] = _Table(new=prev.new if prev else not (self.baseline or maybe_old))
            for cd in st.this.expressions if isinstance(st.this, exp.Schema) else []:
                if isinstance(cd, exp.ColumnDef):
                    table.cols[self._key(cd.this)] = _col_from_def(cd)[0]

    def _command(self, verb: str, rest: object) -> None:
        rest = rest.name if isinstance(rest, exp.Expr) else str(rest or "")
        try:  # the tokenizer keeps the rest of a command as one string
            words = [t.text for t in self.dialect.tokenize(rest)] if verb in ("RENAME", "CREATE") else []
        except TokenError:
            words = []
        if verb == "RENAME" and len(words) > 1 and words[0].upper() == "TABLE":
            self._emit("rename-table", words[1], None, words[1], None, self.text)
        elif verb in _COMMAND_DDL or (verb == "CREATE" and "UNIQUE" in (w.upper() for w in words)):
            self._emit("unrecognized-ddl", "", None, None, None, self.text)


def _analyze(sql: str, dialect: str | None, schema: str | None) -> _Linter:
    linter, log = _Linter(dialect), logging.getLogger("sqlglot")
    level = log.level
    log.setLevel(logging.ERROR)  # sqlglot logs each exp.Command fallback; unrecognized-ddl reports those
    try:
        if schema is not None:
            linter.run(schema, baseline=True)
        linter.run(sql)
    finally:
        log.setLevel(level)
    return linter


def lint(sql: str, dialect: str | None = None, *, schema: str | None = None) -> list[Finding]:
    """Check migration `sql`; `schema` is optional DDL of the current schema. Raises UnparseableSQL."""
    return _analyze(sql, dialect, schema).findings


def findings_for_file(path: str | Path, dialect: str | None, schema_path: str | Path | None = None) -> list[Finding]:
    """Gate helper. Raises OSError or UnicodeDecodeError if a file is unreadable, UnparseableSQL."""
    schema = Path(schema_path).read_text(encoding="utf-8-sig") if schema_path is not None else None
    return lint(Path(path).read_text(encoding="utf-8-sig"), dialect, schema=schema)


def _render(path: str, findings: list[Finding], statements: int) -> str:
    blocks = [
        f"{path}:{f.line or '?'}: {f.severity} [{f.rule}] statement {f.statement}"
        + "".join(f", {k} {v}" for k, v in (("table", f.table), ("column", f.column)) if v)
        + f"\n  {f.message}\n  alternative: {f.alternative}\n"
        for f in findings
    ]
    errors = sum(f.severity == "error" for f in findings)
    if findings:
        return "\n".join(
            [
                *blocks,
                f"{path}: {len(findings)} finding(s) ({errors} error(s), {len(findings) - errors} "
                f"warning(s)) in {statements} statement(s): not safe while the old version is "
                "running",
            ]
        )
    if statements:
        return f"{path}: ok, {statements} statement(s) checked, no findings"
    return f"{path}: ok, empty: no SQL statements to check"


@click.command("lint-migration")
@click.argument("path", type=click.Path())
@click.option("--dialect", type=click.Choice(DIALECTS, case_sensitive=False), help="sqlglot dialect [generic].")
@click.option("--schema", "schema_path", type=click.Path(), help="Current schema DDL, to tell widening types.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def lint_migration_command(path: str, dialect: str | None, schema_path: str | None, as_json: bool) -> None:
    """Flag changes in migration PATH that break the version still running (exit 0 ok, 1 findings, 2 error)."""
    report: dict[str, object] = {"schema_version": 1, "file": path, "dialect": dialect}
    try:
        schema = Path(schema_path).read_text(encoding="utf-8-sig") if schema_path is not None else None
        linter = _analyze(Path(path).read_text(encoding="utf-8-sig"), dialect, schema)
    except (OSError, UnicodeDecodeError, UnparseableSQL) as exc:
        error = f"cannot read {exc.filename}: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
        if as_json:
            click.echo(json.dumps({**report, "findings": [], "ok": False, "error": error}, indent=2))
        click.echo(f"{path}: error: {error}", err=True)
        sys.exit(2)
    if as_json:
        findings = [f.to_dict() for f in linter.findings]
        click.echo(json.dumps({**report, "findings": findings, "ok": not findings}, indent=2))
    else:
        click.echo(_render(path, linter.findings, linter.statements))
    sys.exit(1 if linter.findings else 0)
