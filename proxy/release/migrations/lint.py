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
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from sqlglot.dialects.dialect import Dialects

from proxy.release.migrations.linter import analyze
from proxy.release.migrations.rules import Finding, UnparseableSQL

DIALECTS = sorted(d.value for d in Dialects if d.value)


def lint(sql: str, dialect: str | None = None, *, schema: str | None = None) -> list[Finding]:
    """Check migration `sql`; `schema` is optional DDL of the current schema. Raises UnparseableSQL."""
    return analyze(sql, dialect, schema).findings


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
        linter = analyze(Path(path).read_text(encoding="utf-8-sig"), dialect, schema)
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
