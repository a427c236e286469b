"""The statement walker of `slotswitch lint-migration`: tokenizes and parses the SQL with sqlglot, one
statement at a time, tracks the tables and columns the file (and the optional --schema) define, and
emits a Finding for each change the rules of proxy/release/migrations/rules.py flag.

sqlglot 30.x names (checked by introspection): ALTER is exp.Alter (formerly exp.AlterTable) with actions
exp.ColumnDef (ADD COLUMN), exp.Drop, exp.RenameColumn, exp.AlterRename, exp.AlterColumn, exp.ModifyColumn
(MySQL MODIFY/CHANGE), exp.AddConstraint. PostgreSQL ``RENAME a TO b`` parses as exp.AlterRename plus a
ToTableProperty option and is treated as a column rename.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import groupby

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.dialects.mysql import MySQL
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokenizer_core import Token, TokenType

from proxy.release.migrations.rules import RULES, WARNINGS, Finding, UnparseableSQL, compare_types

_T = exp.DataType.Type
_SERIAL = {_T.SMALLSERIAL, _T.SERIAL, _T.BIGSERIAL}
_FILLED = (exp.AutoIncrementColumnConstraint, exp.GeneratedAsIdentityColumnConstraint, exp.ComputedColumnConstraint)
_NOT_STATEMENT = (exp.Condition, exp.Alias, exp.Tuple, exp.Star, exp.Identifier)
_COMMAND_DDL = {"ALTER", "DROP", "RENAME", "TRUNCATE", "DO"}


@dataclass
class _Col:  # None = unknown
    dtype: exp.DataType | None = None
    not_null: bool | None = None
    has_default: bool | None = None


@dataclass
class _Table:
    new: bool  # created by this migration: the old version cannot be using it
    cols: dict[str, _Col] = field(default_factory=dict)


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


class Linter:
    """One pass over a file's statements; `tables` is the schema as known so far, `findings` the result."""

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
        severity = severity or ("warning" if rule in WARNINGS else "error")
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


def analyze(sql: str, dialect: str | None, schema: str | None) -> Linter:
    """Lint `sql` after reading the optional `schema` DDL as a baseline (which is never flagged).
    The linter's `findings` and `statements` are the result. Raises UnparseableSQL."""
    linter, log = Linter(dialect), logging.getLogger("sqlglot")
    level = log.level
    log.setLevel(logging.ERROR)  # sqlglot logs each exp.Command fallback; unrecognized-ddl reports those
    try:
        if schema is not None:
            linter.run(schema, baseline=True)
        linter.run(sql)
    finally:
        log.setLevel(level)
    return linter
