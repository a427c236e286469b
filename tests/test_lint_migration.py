"""Tests for proxy.release.migrations.lint: the rules per dialect, statement/line numbers, comments, quoting,
the --schema baseline, unparseable input, and the `lint-migration` click command (exit codes, --json)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from sqlglot import exp

import proxy.release.migrations.lint as lint_module
from proxy.release.migrations.lint import findings_for_file, lint, lint_migration_command
from proxy.release.migrations.rules import RULES, Finding, UnparseableSQL, compare_types

MIGRATIONS = Path(__file__).parent / "migrations"
DIALECTS = ("postgres", "mysql", "sqlite")


def rules(sql: str, dialect: str | None, schema: str | None = None) -> list[str]:
    return [f.rule for f in lint(sql, dialect, schema=schema)]


def summary(findings: list[Finding]) -> list[tuple[str, int, int | None, str | None, str | None]]:
    return [(f.rule, f.statement, f.line, f.table, f.column) for f in findings]


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(lint_migration_command, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


# --- rules, in every dialect -------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("ALTER TABLE t DROP COLUMN a", "drop-column"),
        ("ALTER TABLE t RENAME COLUMN a TO b", "rename-column"),
        ("ALTER TABLE t RENAME TO u", "rename-table"),
        ("DROP TABLE t", "drop-table"),
        ("DROP TABLE t, u", "drop-table drop-table"),
        ("DROP VIEW v", "drop-view"),
        ("ALTER TABLE t ADD COLUMN a INT NOT NULL", "add-not-null-column"),
        ("CREATE UNIQUE INDEX t_a ON t (a)", "add-unique"),
        ("TRUNCATE TABLE t", "truncate-table"),
        # safe in every dialect
        ("ALTER TABLE t ADD COLUMN a INT", ""),
        ("ALTER TABLE t ADD COLUMN a INT NOT NULL DEFAULT 0", ""),
        ("CREATE INDEX t_a ON t (a)", ""),
        ("DROP INDEX t_a", ""),
        ("CREATE TABLE n (a INT NOT NULL)", ""),
        ("INSERT INTO t (a) VALUES (1); UPDATE t SET a = 2; DELETE FROM t WHERE a = 2", ""),
    ],
)
def test_rules_in_each_dialect(dialect: str, sql: str, expected: str) -> None:
    assert rules(sql, dialect) == expected.split()


@pytest.mark.parametrize(
    ("dialect", "sql", "expected"),
    [
        ("mysql", "ALTER TABLE t DROP a", "drop-column"),
        ("postgres", "ALTER TABLE t DROP COLUMN IF EXISTS a", "drop-column"),
        ("mysql", "ALTER TABLE t ADD a INT, DROP COLUMN b, ADD c INT NOT NULL", "drop-column add-not-null-column"),
        # each dialect's rename syntax
        ("mysql", "ALTER TABLE t CHANGE COLUMN old new VARCHAR(20)", "rename-column"),
        ("mysql", "ALTER TABLE t CHANGE old new VARCHAR(20)", "rename-column"),
        ("postgres", "ALTER TABLE t RENAME a TO b", "rename-column"),
        ("sqlite", "ALTER TABLE t RENAME a TO b", "rename-column"),
        ("mysql", "ALTER TABLE t RENAME u", "rename-table"),
        ("mysql", "RENAME TABLE t TO u", "rename-table"),
        ("postgres", "ALTER VIEW v RENAME TO w", "rename-view"),
        # NOT NULL and defaults
        ("postgres", "ALTER TABLE t ALTER COLUMN a SET NOT NULL", "set-not-null"),
        ("postgres", "ALTER TABLE t ADD COLUMN a INT; ALTER TABLE t ALTER COLUMN a SET NOT NULL", "set-not-null"),
        ("postgres", "ALTER TABLE t ALTER COLUMN a DROP NOT NULL", ""),
        ("postgres", "ALTER TABLE t ALTER COLUMN a SET DEFAULT 1", ""),
        ("postgres", "ALTER TABLE t ADD COLUMN a INT PRIMARY KEY", "add-not-null-column"),
        ("postgres", "ALTER TABLE t ADD COLUMN a INT NOT NULL DEFAULT NULL", "add-not-null-column"),
        ("postgres", "ALTER TABLE t ADD COLUMN id BIGSERIAL NOT NULL", ""),
        ("postgres", "ALTER TABLE t ADD COLUMN id INT GENERATED ALWAYS AS IDENTITY", ""),
        ("postgres", "ALTER TABLE t ADD COLUMN total INT NOT NULL GENERATED ALWAYS AS (a + b) STORED", ""),
        ("mysql", "ALTER TABLE t ADD COLUMN id INT NOT NULL AUTO_INCREMENT", ""),
        # uniqueness and other constraints
        ("postgres", "ALTER TABLE t ADD CONSTRAINT t_a UNIQUE (a)", "add-unique"),
        ("mysql", "ALTER TABLE t ADD UNIQUE KEY t_a (a)", "add-unique"),
        ("mysql", "ALTER TABLE t ADD UNIQUE (a)", "add-unique"),
        ("postgres", "ALTER TABLE t ADD PRIMARY KEY (a)", "add-unique"),
        ("postgres", "CREATE UNIQUE INDEX CONCURRENTLY t_a ON t (lower(a))", "add-unique"),
        ("postgres", "ALTER TABLE t ADD COLUMN a UUID UNIQUE", ""),
        ("postgres", "ALTER TABLE t ADD COLUMN a INT UNIQUE DEFAULT 0", "add-unique"),
        ("postgres", "ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0)", "add-constraint"),
        ("postgres", "ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES u (id)", "add-constraint"),
        ("postgres", "ALTER TABLE t DROP CONSTRAINT t_a", ""),
        ("mysql", "ALTER TABLE t DROP INDEX t_a, DROP FOREIGN KEY fk, DROP PRIMARY KEY", ""),
        ("mysql", "DROP INDEX t_a ON t", ""),
        ("postgres", "ALTER INDEX t_a RENAME TO t_b", ""),
        # other objects
        ("postgres", "DROP MATERIALIZED VIEW mv", "drop-view"),
        ("postgres", "CREATE OR REPLACE VIEW v AS SELECT 1 AS a", "replace-view"),
        ("postgres", "DROP SCHEMA app CASCADE", "drop-schema"),
        ("mysql", "DROP DATABASE app", "drop-schema"),
        ("postgres", "DROP FUNCTION f; DROP SEQUENCE s", "drop-object drop-object"),
        ("postgres", "TRUNCATE a, b", "truncate-table truncate-table"),
        # exp.Command fallbacks
        ("postgres", "ALTER TABLE t SET SCHEMA archive", "unrecognized-ddl"),
        ("postgres", "ALTER TABLE t RENAME CONSTRAINT a TO b", "unrecognized-ddl"),
        ("postgres", "ALTER TABLE t DROPP COLUMN a", "unrecognized-ddl"),
        ("postgres", "DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$", "unrecognized-ddl"),
        ("postgres", "CREATE UNIQUE INDEX t_a ON t (a) NULLS NOT DISTINCT", "unrecognized-ddl"),
        ("mysql", "CREATE UNIQUE INDEX t_a ON t (a) ALGORITHM=INPLACE", "unrecognized-ddl"),
        ("postgres", "CREATE EXTENSION IF NOT EXISTS pgcrypto; VACUUM; BEGIN; COMMIT", ""),
    ],
)
def test_dialect_specific_rules(dialect: str, sql: str, expected: str) -> None:
    assert rules(sql, dialect) == expected.split()


def test_unrecognized_ddl_is_a_warning_naming_the_statement() -> None:
    [finding] = lint("ALTER TABLE t SET SCHEMA archive", "postgres")
    assert (finding.severity, finding.table) == ("warning", None)
    assert "ALTER TABLE t SET SCHEMA archive" in finding.message


def test_objects_created_in_the_same_file_are_exempt() -> None:
    sql = """CREATE TABLE fresh (a INT, b TEXT);
    CREATE UNIQUE INDEX fresh_a ON fresh (a);
    ALTER TABLE fresh ALTER COLUMN b SET NOT NULL, DROP COLUMN a;
    ALTER TABLE fresh RENAME TO fresher;
    ALTER TABLE fresher ADD COLUMN c INT NOT NULL;
    CREATE VIEW v AS SELECT 1 AS x;
    CREATE OR REPLACE VIEW v AS SELECT 2 AS x;
    DROP VIEW v;
    DROP TABLE fresher"""
    assert lint(sql, "postgres") == []


def test_create_if_not_exists_is_new_only_when_the_schema_says_so() -> None:
    sql = "CREATE TABLE IF NOT EXISTS t (a INT); CREATE UNIQUE INDEX t_a ON t (a)"
    assert rules(sql, "postgres") == ["add-unique"]
    assert rules(sql, "postgres", schema="CREATE TABLE other (a INT)") == []
    assert rules(sql, "postgres", schema="CREATE TABLE t (a INT)") == ["add-unique"]


def test_rename_keeps_tracking_the_table() -> None:
    schema = "CREATE TABLE t (a INT NOT NULL DEFAULT 0)"
    sql = "ALTER TABLE t RENAME TO u; ALTER TABLE u ALTER COLUMN a DROP DEFAULT"
    assert [(f.rule, f.severity, f.table) for f in lint(sql, "postgres", schema=schema)] == [
        ("rename-table", "error", "t"),
        ("drop-default", "error", "u"),
    ]


# --- types and the --schema baseline -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("VARCHAR(255)", "VARCHAR(50)", "narrow"),
        ("VARCHAR(50)", "VARCHAR(255)", ""),
        ("BIGINT", "INT", "narrow"),
        ("INT", "BIGINT", ""),
        ("TEXT", "VARCHAR(100)", "narrow"),
        ("VARCHAR(100)", "TEXT", ""),
        ("VARCHAR", "TEXT", ""),
        ("NUMERIC(10, 2)", "NUMERIC(8, 2)", "narrow"),
        ("NUMERIC(10, 2)", "NUMERIC(10, 1)", "narrow"),
        ("NUMERIC(10, 2)", "NUMERIC(12, 4)", ""),
        ("NUMERIC(10, 2)", "NUMERIC", ""),
        ("DOUBLE PRECISION", "REAL", "narrow"),
        ("CHAR(5)", "VARCHAR(5)", ""),
        ("VARCHAR(5)", "CHAR(5)", "change"),
        ("INT", "TEXT", "change"),
        ("TIMESTAMP", "TIMESTAMPTZ", "change"),
        ("INT", "INT", ""),
    ],
)
def test_postgres_type_changes(old: str, new: str, expected: str) -> None:
    found = rules(f"ALTER TABLE t ALTER COLUMN a TYPE {new}", "postgres", f"CREATE TABLE t (a {old})")
    assert found == ([f"{expected}-column-type"] if expected else [])


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("VARCHAR(255)", "VARCHAR(50)", "narrow"),
        ("VARCHAR(50)", "VARCHAR(255)", ""),
        ("TEXT", "MEDIUMTEXT", ""),
        ("LONGTEXT", "TEXT", "narrow"),
        ("INT", "INT UNSIGNED", "narrow"),
        ("INT UNSIGNED", "BIGINT", ""),
        ("INT UNSIGNED", "INT", "narrow"),
        ("INT(11)", "INT", ""),
        ("DECIMAL(12, 2)", "DECIMAL", "narrow"),
        ("ENUM('a', 'b')", "ENUM('a', 'b', 'c')", ""),
        ("ENUM('a', 'b')", "ENUM('a')", "narrow"),
        ("DATETIME(6)", "DATETIME(3)", "change"),
    ],
)
def test_mysql_modify_type_changes(old: str, new: str, expected: str) -> None:
    found = rules(f"ALTER TABLE t MODIFY a {new}", "mysql", f"CREATE TABLE t (a {old})")
    assert found == ([f"{expected}-column-type"] if expected else [])


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("VARCHAR(20)", "VARCHAR(20) NOT NULL", "set-not-null"),
        ("VARCHAR(20) NOT NULL", "VARCHAR(40) NOT NULL", ""),
        ("VARCHAR(20) NOT NULL DEFAULT 'x'", "VARCHAR(20) NOT NULL", "drop-default"),
        ("VARCHAR(20) NOT NULL DEFAULT 'x'", "VARCHAR(20) NOT NULL DEFAULT 'y'", ""),
    ],
)
def test_mysql_modify_restates_nullability_and_default(old: str, new: str, expected: str) -> None:
    assert rules(f"ALTER TABLE t MODIFY a {new}", "mysql", f"CREATE TABLE t (a {old})") == expected.split()


def test_type_change_without_schema_is_an_unverified_warning() -> None:
    for sql, dialect in [
        ("ALTER TABLE t ALTER COLUMN a TYPE VARCHAR(500)", "postgres"),
        ("ALTER TABLE t MODIFY a VARCHAR(500)", "mysql"),
        ("ALTER TABLE t CHANGE a a TEXT", "mysql"),
    ]:
        [finding] = lint(sql, dialect)
        assert (finding.rule, finding.severity, finding.column) == ("unverified-column-change", "warning", "a")


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ("CREATE TABLE t (a INT NOT NULL DEFAULT 1)", [("drop-default", "error")]),
        (None, [("drop-default", "warning")]),
        ("CREATE TABLE t (a INT DEFAULT 1)", []),
    ],
)
def test_drop_default_depends_on_nullability(schema: str | None, expected: list[tuple[str, str]]) -> None:
    findings = lint("ALTER TABLE t ALTER COLUMN a DROP DEFAULT", "postgres", schema=schema)
    assert [(f.rule, f.severity) for f in findings] == expected


def test_compare_types_directly() -> None:
    build = exp.DataType.build
    assert compare_types(build("VARCHAR(10)"), build("VARCHAR(10)")) == "same"
    assert compare_types(build("SMALLINT"), build("BIGINT")) == "widen"
    assert compare_types(build("TEXT", dialect="mysql"), build("VARCHAR(10)", dialect="mysql"), mysql=True) == "narrow"
    assert compare_types(build("BOOLEAN"), build("INT")) == "change"


def test_schema_matches_identifiers_per_dialect_rules() -> None:
    schema = 'CREATE TABLE "Order" ("Total" VARCHAR(10)); CREATE TABLE items (name VARCHAR(10))'
    assert rules('ALTER TABLE "Order" ALTER COLUMN "Total" TYPE VARCHAR(5)', "postgres", schema) == [
        "narrow-column-type"
    ]
    assert rules("ALTER TABLE ITEMS ALTER COLUMN Name TYPE VARCHAR(5)", "postgres", schema) == ["narrow-column-type"]
    # "Order" (quoted) and order (folded to lower case) are different tables in PostgreSQL.
    assert rules('ALTER TABLE "order" ALTER COLUMN "Total" TYPE VARCHAR(5)', "postgres", schema) == [
        "unverified-column-change"
    ]


# --- statements, lines, comments, quoting ------------------------------------------------------------------


def test_statement_numbers_and_lines_across_a_multi_statement_file() -> None:
    sql = (
        "-- header comment; with a semicolon\n"  # 1
        "ALTER TABLE t ADD COLUMN ok INT;\n"  # 2  statement 1
        "\n"  # 3
        "ALTER TABLE t\n"  # 4  statement 2
        "  ADD COLUMN x INT,\n"  # 5
        "  DROP COLUMN y;\n"  # 6
        "/* DROP TABLE t; */ DROP\n"  # 7  statement 3
        "  TABLE\n"  # 8
        "    z; ;\n"  # 9  (the empty statement is not counted)
        "SELECT 1; DROP VIEW v;"  # 10 statements 4 and 5
    )
    assert summary(lint(sql, "postgres")) == [
        ("drop-column", 2, 6, "t", "y"),
        ("drop-table", 3, 9, "z", None),
        ("drop-view", 5, 10, "v", None),
    ]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_commented_out_statements_are_not_flagged(dialect: str) -> None:
    sql = """-- DROP TABLE users;
    /* ALTER TABLE users DROP COLUMN email;
       ALTER TABLE users RENAME TO people; */
    ALTER TABLE users ADD COLUMN nickname TEXT; -- ALTER TABLE users DROP COLUMN email;
    /* TRUNCATE users; */"""
    assert lint(sql, dialect) == []


@pytest.mark.parametrize(
    ("sql", "dialect", "table", "column"),
    [
        ('ALTER TABLE "Order" DROP COLUMN "Total"', "postgres", "Order", "Total"),
        ("ALTER TABLE `order` DROP COLUMN `desc`", "mysql", "order", "desc"),
        ('ALTER TABLE "order" DROP COLUMN "group"', "sqlite", "order", "group"),
        ('ALTER TABLE app."Order" DROP COLUMN a', "postgres", "app.Order", "a"),
    ],
)
def test_quoted_identifiers(sql: str, dialect: str, table: str, column: str) -> None:
    [finding] = lint(sql, dialect)
    assert (finding.rule, finding.table, finding.column) == ("drop-column", table, column)


@pytest.mark.parametrize(
    ("name", "dialect", "expected"),
    [
        (
            "postgres_unsafe.sql",
            "postgres",
            [
                ("drop-column", 1, 6, "Order", "Total"),
                ("rename-column", 2, 9, "Order", "shipTo"),
                ("add-not-null-column", 3, 10, "users", "tenant_id"),
                ("set-not-null", 4, 11, "users", "email"),
                ("narrow-column-type", 5, 13, "users", "nickname"),
                ("narrow-column-type", 5, 14, "users", "karma"),
                ("add-unique", 6, 15, "users", "email"),
                ("add-unique", 7, 16, "users", "handle"),
                ("rename-table", 8, 17, "users", None),
                ("truncate-table", 9, 18, "audit_log", None),
                ("drop-view", 10, 19, "order_totals", None),
                ("drop-default", 11, 20, "accounts", "status"),
                ("unrecognized-ddl", 12, 21, None, None),
            ],
        ),
        (
            "mysql_unsafe.sql",
            "mysql",
            [
                ("rename-column", 1, 3, "order", "desc"),
                ("narrow-column-type", 2, 5, "order", "note"),
                ("set-not-null", 2, 5, "order", "note"),
                ("add-not-null-column", 3, 6, "order", "region"),
                ("add-unique", 4, 7, "order", "ref"),
                ("drop-column", 5, 8, "customers", "amount"),
                ("drop-column", 5, 8, "customers", "rank"),
                ("narrow-column-type", 6, 9, "customers", "score"),
                ("drop-table", 7, 10, "legacy_carts", None),
                ("rename-table", 8, 11, "order", None),
            ],
        ),
        (
            "sqlite_unsafe.sql",
            "sqlite",
            [
                ("rename-column", 1, 2, "order", "qty"),
                ("rename-table", 2, 3, "customers", None),
                ("rename-column", 3, 4, "notes", "body"),
                ("drop-column", 4, 6, "clients", "fax"),
                ("add-not-null-column", 5, 7, "clients", "code"),
                ("add-unique", 6, 8, "clients", "email"),
                ("drop-table", 7, 9, "tmp_import", None),
            ],
        ),
    ],
)
def test_unsafe_fixture_files(name: str, dialect: str, expected: list[tuple[object, ...]]) -> None:
    schema = MIGRATIONS / f"{dialect}_schema.sql"
    findings = findings_for_file(MIGRATIONS / name, dialect, schema if schema.exists() else None)
    assert summary(findings) == expected
    assert all(f.alternative == RULES[f.rule][1] and f.message.endswith(".") for f in findings)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_safe_fixture_files_pass_clean(dialect: str) -> None:
    schema = MIGRATIONS / f"{dialect}_schema.sql"
    assert findings_for_file(MIGRATIONS / f"{dialect}_safe.sql", dialect, schema if schema.exists() else None) == []


def test_safe_file_without_schema_cannot_verify_the_widening() -> None:
    findings = findings_for_file(MIGRATIONS / "postgres_safe.sql", "postgres")
    assert [(f.rule, f.column) for f in findings] == [
        ("unverified-column-change", "email"),
        ("unverified-column-change", "age"),
    ]


# --- unparseable input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "where"),
    [
        ("ALTER TABLE", "statement 1"),
        ("SELECT 1;\nCREATE TABLE (", "statement 2 (line 2)"),
        ("SELEC 1", "statement 1"),
        ("hello world", "not a SQL statement"),
        ("DROPTABLE users", "not a SQL statement"),
        ("SELECT 'unterminated", "tokeniz"),
    ],
)
def test_unparseable_sql_raises(sql: str, where: str) -> None:
    with pytest.raises(UnparseableSQL, match=r"(?i)" + where.replace("(", r"\(").replace(")", r"\)")):
        lint(sql, "postgres")


def test_unparseable_schema_raises() -> None:
    with pytest.raises(UnparseableSQL, match="--schema"):
        lint("ALTER TABLE t ADD COLUMN a INT", "postgres", schema="CREATE TABLE (")


def test_sqlglot_fallback_warning_is_silenced_and_log_level_restored(caplog: pytest.LogCaptureFixture) -> None:
    level = logging.getLogger("sqlglot").level
    with caplog.at_level(logging.WARNING):
        assert rules("ALTER TABLE t SET SCHEMA archive", "postgres") == ["unrecognized-ddl"]
    assert [r.getMessage() for r in caplog.records if r.name.startswith("sqlglot")] == []
    assert logging.getLogger("sqlglot").level == level


def test_finding_is_frozen_and_serializable() -> None:
    [finding] = lint("DROP TABLE t", "postgres")
    with pytest.raises(dataclasses.FrozenInstanceError):
        finding.rule = "other"  # type: ignore[misc]
    assert list(finding.to_dict()) == [
        "rule",
        "severity",
        "statement",
        "line",
        "table",
        "column",
        "message",
        "alternative",
    ]


def test_every_rule_has_an_expand_contract_alternative() -> None:
    documented = (lint_module.__doc__ or "").split("Safe, never flagged")[0]
    for rule, (why, alternative) in RULES.items():
        assert why and len(alternative) > 40, rule
        assert rule in documented, rule


# --- the click command --------------------------------------------------------------------------------------


def test_cli_exit_0_on_safe_file() -> None:
    code, out, _ = run_cli(str(MIGRATIONS / "sqlite_safe.sql"), "--dialect", "sqlite")
    assert code == 0
    assert out.strip().endswith("ok, 5 statement(s) checked, no findings")


def test_cli_exit_1_with_one_block_per_finding_and_a_summary() -> None:
    path = str(MIGRATIONS / "sqlite_unsafe.sql")
    code, out, _ = run_cli(path, "--dialect", "sqlite")
    assert code == 1
    *blocks, summary_line = out.strip().split("\n\n")
    assert len(blocks) == 7
    assert blocks[0].splitlines() == [
        f"{path}:2: error [rename-column] statement 1, table order, column qty",
        "  RENAME COLUMN order.qty TO quantity: the running version still uses the old name.",
        f"  alternative: {RULES['rename-column'][1]}",
    ]
    assert (
        summary_line == f"{path}: 7 finding(s) (7 error(s), 0 warning(s)) in 7 statement(s): not safe while "
        "the old version is running"
    )


def test_cli_schema_option_turns_warnings_into_verdicts(tmp_path: Path) -> None:
    migration = MIGRATIONS / "postgres_safe.sql"
    assert run_cli(str(migration), "--dialect", "postgres")[0] == 1
    assert run_cli(str(migration), "--dialect", "postgres", "--schema", str(MIGRATIONS / "postgres_schema.sql"))[0] == 0
    assert run_cli(str(migration), "--dialect", "postgres", "--schema", str(tmp_path / "missing.sql"))[0] == 2


@pytest.mark.parametrize("name", ["empty.sql", "comments_only.sql"])
def test_cli_empty_file_is_clean_and_says_so(name: str) -> None:
    assert findings_for_file(MIGRATIONS / name, "postgres") == []
    assert run_cli(str(MIGRATIONS / name)) == (0, f"{MIGRATIONS / name}: ok, empty: no SQL statements to check\n", "")


def test_cli_accepts_a_utf8_bom_and_crlf_line_ends(tmp_path: Path) -> None:
    path = tmp_path / "bom.sql"
    sql = "-- x\r\nALTER TABLE t ADD COLUMN a INT;\r\n\r\nALTER TABLE t\r\n  DROP COLUMN b;\r\n"
    path.write_bytes(("\ufeff" + sql).encode())
    code, out, _ = run_cli(str(path), "--dialect", "postgres", "--json")
    assert (code, [(f["rule"], f["statement"], f["line"]) for f in json.loads(out)["findings"]]) == (
        1,
        [("drop-column", 2, 5)],
    )


def test_cli_exit_2_on_unparseable_sql() -> None:
    code, out, err = run_cli(str(MIGRATIONS / "unparseable.sql"), "--dialect", "postgres")
    assert code == 2
    assert out == ""
    assert "statement 2 (line 2)" in err


@pytest.mark.parametrize("kind", ["missing", "directory", "not-utf8"])
def test_cli_exit_2_on_unreadable_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "m.sql"
    if kind == "directory":
        path.mkdir()
    elif kind == "not-utf8":
        path.write_bytes(b"ALTER TABLE t DROP COLUMN \xff\xfe;")
    code, _, err = run_cli(str(path))
    assert code == 2
    assert str(path) in err


def test_cli_rejects_unknown_dialect() -> None:
    code, _, err = run_cli(str(MIGRATIONS / "empty.sql"), "--dialect", "klingon")
    assert code == 2
    assert "klingon" in err


def test_cli_json_shape() -> None:
    path = str(MIGRATIONS / "mysql_unsafe.sql")
    code, out, _ = run_cli(path, "--dialect", "mysql", "--json")
    assert code == 1
    report = json.loads(out)
    assert list(report) == ["schema_version", "file", "dialect", "findings", "ok"]
    assert (report["schema_version"], report["file"], report["dialect"], report["ok"]) == (1, path, "mysql", False)
    first = report["findings"][0]
    assert first == {
        "rule": "rename-column",
        "severity": "error",
        "statement": 1,
        "line": 3,
        "table": "order",
        "column": "desc",
        "message": "RENAME COLUMN order.desc TO description: the running version still uses the old name.",
        "alternative": RULES["rename-column"][1],
    }
    assert [f["statement"] for f in report["findings"]] == [1, 2, 3, 4, 5, 5, 6, 7, 8]
    assert {f["severity"] for f in report["findings"]} == {"error", "warning"}


def test_cli_json_clean_and_error() -> None:
    code, out, _ = run_cli(str(MIGRATIONS / "sqlite_safe.sql"), "--json")
    assert (code, json.loads(out)) == (
        0,
        {"schema_version": 1, "file": str(MIGRATIONS / "sqlite_safe.sql"), "dialect": None, "findings": [], "ok": True},
    )
    code, out, _ = run_cli(str(MIGRATIONS / "unparseable.sql"), "--json")
    report = json.loads(out)
    assert (code, report["ok"], report["findings"]) == (2, False, [])
    assert "statement 2" in report["error"]


def test_command_plugs_into_a_click_group() -> None:
    @click.group()
    def main() -> None:
        """Stand-in for proxy.cli.main.main."""

    main.add_command(lint_migration_command)
    result = CliRunner().invoke(
        main, ["lint-migration", str(MIGRATIONS / "postgres_unsafe.sql"), "--dialect", "postgres"]
    )
    assert result.exit_code == 1
    assert "[drop-column]" in result.stdout
