"""Table tests for the migration schema check (admin/story/schema_check.py): pure, no database."""

from __future__ import annotations

import io
import json
import re

import pytest

from admin.story.schema_check import RULES, Finding, SchemaCheckError, check_sql, main, split_statements
from tests.support.paths import MIGRATIONS as FIXTURES


def rules(sql: str) -> list[tuple[str, int]]:
    """rules: (rule, line) of every finding, suppressed ones included."""
    return [(f.rule, f.line) for f in check_sql(sql)]


# --- one table row per rule: the statement is flagged with exactly that rule on that line -----

FLAGGED = [
    # drop-table
    ("drop-table", "DROP TABLE sessions;"),
    ("drop-table", "drop table if exists public.sessions cascade;"),
    ("drop-table", 'DROP TABLE "Legacy Sessions";'),
    # drop-column
    ("drop-column", "ALTER TABLE users DROP COLUMN phone;"),
    ("drop-column", "ALTER TABLE IF EXISTS ONLY app.users DROP IF EXISTS phone CASCADE;"),
    ("drop-column", "alter table users drop phone;"),
    ("drop-column", "ALTER TABLE `users` DROP COLUMN `phone`;"),
    # rename-table
    ("rename-table", "ALTER TABLE users RENAME TO accounts;"),
    ("rename-table", "RENAME TABLE users TO accounts;"),
    ("rename-table", "ALTER TABLE users SET SCHEMA archive;"),
    ("rename-table", "ALTER TABLE users RENAME accounts;"),
    # rename-column
    ("rename-column", "ALTER TABLE users RENAME COLUMN name TO full_name;"),
    ("rename-column", "ALTER TABLE users RENAME name TO full_name;"),
    ("rename-column", "ALTER TABLE users CHANGE COLUMN name full_name VARCHAR(200);"),
    # change-type
    ("change-type", "ALTER TABLE users ALTER COLUMN age TYPE bigint;"),
    ("change-type", "ALTER TABLE users ALTER age SET DATA TYPE numeric(10, 2) USING age::numeric;"),
    ("change-type", "ALTER TABLE users MODIFY COLUMN age BIGINT NOT NULL;"),
    ("change-type", "ALTER TABLE users MODIFY age BIGINT;"),
    ("change-type", "ALTER TABLE users CHANGE age age BIGINT;"),
    # add-not-null-without-default
    ("add-not-null-without-default", "ALTER TABLE users ADD COLUMN tz text NOT NULL;"),
    ("add-not-null-without-default", "ALTER TABLE users ADD tz text NOT NULL DEFAULT NULL;"),
    ("add-not-null-without-default", "ALTER TABLE users ADD COLUMN IF NOT EXISTS tz text CHECK (tz <> '') NOT NULL;"),
    ("add-not-null-without-default", "ALTER TABLE users ADD COLUMN code int PRIMARY KEY;"),
    # set-not-null
    ("set-not-null", "ALTER TABLE users ALTER COLUMN email SET NOT NULL;"),
    ("set-not-null", "ALTER TABLE users ALTER email SET NOT NULL;"),
    # drop-default
    ("drop-default", "ALTER TABLE users ALTER COLUMN created_at DROP DEFAULT;"),
    # add-unique
    ("add-unique", "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email);"),
    ("add-unique", "ALTER TABLE users ADD UNIQUE KEY users_email_key (email);"),
    ("add-unique", "ALTER TABLE users ADD PRIMARY KEY (id);"),
    ("add-unique", "CREATE UNIQUE INDEX users_email_key ON users (email);"),
    ("add-unique", "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS users_email_key ON ONLY users USING btree (email);"),
    # add-check
    ("add-check", "ALTER TABLE orders ADD CONSTRAINT total_positive CHECK (total >= 0);"),
    ("add-check", "ALTER TABLE orders ADD CONSTRAINT total_positive CHECK (total >= 0) NOT VALID;"),
    ("add-check", "ALTER TABLE orders ADD CHECK (total >= 0);"),
    # add-foreign-key
    ("add-foreign-key", "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id);"),
    ("add-foreign-key", "ALTER TABLE orders ADD FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;"),
    # truncate
    ("truncate", "TRUNCATE sessions;"),
    ("truncate", "TRUNCATE TABLE ONLY sessions RESTART IDENTITY CASCADE;"),
    # delete-without-where
    ("delete-without-where", "DELETE FROM sessions;"),
    ("delete-without-where", "DELETE FROM sessions USING users;"),
    ("delete-without-where", "DELETE FROM sessions RETURNING (SELECT 1 WHERE true);"),
    ("delete-without-where", "WITH old AS (SELECT id FROM users WHERE id < 10) DELETE FROM sessions;"),
    # update-without-where
    ("update-without-where", "UPDATE users SET tz = 'UTC';"),
    ("update-without-where", "UPDATE ONLY users SET tz = (SELECT tz FROM defaults WHERE id = 1);"),
    ("update-without-where", "UPDATE LOW_PRIORITY users SET tz = 'UTC';"),
    # drop-view
    ("drop-view", "DROP VIEW active_users;"),
    ("drop-view", "DROP MATERIALIZED VIEW IF EXISTS reporting.revenue;"),
    # drop-function
    ("drop-function", "DROP FUNCTION IF EXISTS revenue_between(date, date);"),
    ("drop-function", "DROP PROCEDURE archive_orders;"),
    # drop-schema
    ("drop-schema", "DROP SCHEMA reporting CASCADE;"),
]


@pytest.mark.parametrize("rule, sql", FLAGGED)
def test_flagged_statement_reports_its_rule_on_its_line(rule, sql):
    assert rules("-- migration\n\n" + sql) == [(rule, 3)]


def test_every_rule_has_a_flagged_row():
    assert {rule for rule, _ in FLAGGED} == set(RULES)


# --- things an expand step does: no finding ---------------------------------------------------

FINE = [
    "CREATE TABLE refunds (id bigserial PRIMARY KEY, order_id bigint NOT NULL);",
    "CREATE TABLE IF NOT EXISTS app.refunds AS SELECT * FROM orders WHERE false;",
    "ALTER TABLE users ADD COLUMN tz text;",
    "ALTER TABLE users ADD COLUMN tz text NULL;",
    "ALTER TABLE users ADD COLUMN tz text DEFAULT 'UTC';",
    "ALTER TABLE users ADD COLUMN tz text NOT NULL DEFAULT 'UTC';",
    "ALTER TABLE users ADD COLUMN tz text DEFAULT 'UTC' NOT NULL;",
    "ALTER TABLE users ADD COLUMN seq bigserial NOT NULL;",
    "ALTER TABLE users ADD COLUMN n int GENERATED ALWAYS AS IDENTITY NOT NULL;",
    "ALTER TABLE users ADD COLUMN lower_email text GENERATED ALWAYS AS (lower(email)) STORED NOT NULL;",
    "ALTER TABLE users ADD COLUMN ref_id int REFERENCES refs (id);",
    "ALTER TABLE users ADD COLUMN IF NOT EXISTS tz text CHECK (tz IS NOT NULL OR true);",
    "ALTER TABLE users ADD INDEX users_tz (tz);",
    "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE USING INDEX users_email_idx;",
    "ALTER TABLE users ALTER COLUMN tz SET DEFAULT 'UTC';",
    "ALTER TABLE users ALTER COLUMN tz DROP NOT NULL;",
    "ALTER TABLE users DROP CONSTRAINT users_tz_check;",
    "ALTER TABLE users VALIDATE CONSTRAINT users_tz_check;",
    "ALTER TABLE users RENAME CONSTRAINT a TO b;",
    "CREATE INDEX users_tz ON users (tz);",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_tz ON users (tz);",
    "DROP INDEX CONCURRENTLY IF EXISTS users_tz;",
    "INSERT INTO users (id, tz) VALUES (1, 'UTC') ON CONFLICT (id) DO UPDATE SET tz = excluded.tz;",
    "UPDATE users SET tz = 'UTC' WHERE tz IS NULL AND id BETWEEN 1 AND 1000;",
    "UPDATE users u SET tz = d.tz FROM defaults d WHERE d.id = u.id;",
    "DELETE FROM sessions WHERE expires_at < now();",
    "WITH d AS (SELECT 1) DELETE FROM sessions WHERE id IN (SELECT * FROM d);",
    "COMMENT ON COLUMN users.tz IS 'DROP TABLE users; just a comment';",
    "CREATE OR REPLACE VIEW active_users AS SELECT * FROM users WHERE active;",
    "BEGIN; COMMIT;",
    "START TRANSACTION; SET lock_timeout = '5s'; SET search_path TO app, public; COMMIT;",
    "SELECT count(*) FROM users;",
    "DROP TEMPORARY TABLE IF EXISTS tmp_ids;",
    "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN DROP TABLE users; END $$;",
    "DO $do$ BEGIN EXECUTE 'ALTER TABLE users DROP COLUMN x'; END $do$;",
]


@pytest.mark.parametrize("sql", FINE)
def test_expand_statement_is_fine(sql):
    assert check_sql(sql) == []


def test_statements_on_a_table_the_file_creates_are_fine():
    sql = """
        CREATE TABLE refunds (id bigint, order_id bigint);
        ALTER TABLE refunds ADD CONSTRAINT refunds_order_fk FOREIGN KEY (order_id) REFERENCES orders (id);
        ALTER TABLE refunds ALTER COLUMN order_id SET NOT NULL, ADD COLUMN note text NOT NULL;
        CREATE UNIQUE INDEX refunds_order_key ON refunds (order_id);
        ALTER TABLE refunds RENAME TO order_refunds;
        ALTER TABLE order_refunds DROP COLUMN note;
        UPDATE order_refunds SET note = '';
        DROP TABLE order_refunds;
    """
    assert check_sql(sql) == []


def test_existing_table_with_same_name_in_another_schema_is_still_checked():
    sql = "CREATE TABLE staging.users (id int);\nDROP TABLE public.users;"
    assert rules(sql) == [("drop-table", 2)]


@pytest.mark.parametrize("created, dropped, flagged", [
    ("Refunds", "refunds", False),             # unquoted names fold to lower case
    ('"Refunds"', "refunds", True),            # a quoted name keeps its case
    ('"we""ird"', '"we""ird"', False),         # doubled quotes inside a quoted name
    ("`refunds`", "refunds", False),
])
def test_created_table_is_matched_as_the_database_resolves_names(created, dropped, flagged):
    findings = check_sql(f"CREATE TABLE {created} (id int);\nDROP TABLE {dropped};")
    assert [f.rule for f in findings] == (["drop-table"] if flagged else [])


def test_alter_table_reports_each_action():
    sql = "ALTER TABLE users\n  DROP COLUMN a,\n  ADD COLUMN b int,\n  ALTER COLUMN c SET NOT NULL,\n  ALTER COLUMN d TYPE text;"
    assert rules(sql) == [("drop-column", 1), ("set-not-null", 1), ("change-type", 1)]


def test_drop_of_several_tables_reports_each():
    assert [f.problem.split("table ")[1].split(":")[0] for f in check_sql("DROP TABLE a, b;")] == ["a", "b"]


def test_rename_table_pairs_report_each():
    assert rules("RENAME TABLE a TO a_old, b TO a;") == [("rename-table", 1), ("rename-table", 1)]


def test_keywords_are_case_insensitive():
    assert rules("AlTeR tAbLe users dRoP cOlUmN phone;") == [("drop-column", 1)]


def test_quoted_keyword_is_a_name_not_a_keyword():
    assert check_sql('ALTER TABLE users ADD COLUMN "drop" text;') == []
    assert rules('ALTER TABLE users DROP COLUMN "where";') == [("drop-column", 1)]


# --- what a finding says ---------------------------------------------------------------------

def test_finding_names_table_and_column_in_problem_and_instead():
    [f] = check_sql('ALTER TABLE public."Users" RENAME COLUMN name TO full_name;')
    assert f == Finding("rename-column", 1, 'ALTER TABLE public."Users" RENAME COLUMN name TO full_name',
                        f.problem, f.instead)
    assert 'public."Users".name' in f.problem and "full_name" in f.problem
    assert "add full_name as a new nullable column" in f.instead and "drop name" in f.instead


@pytest.mark.parametrize("sql, words", [
    ("DROP TABLE sessions;", ["sessions", "later release"]),
    ("ALTER TABLE users DROP COLUMN phone;", ["users.phone", "later release", "cutover:allow drop-column"]),
    ("ALTER TABLE users ALTER COLUMN age TYPE bigint;", ["age_new bigint", "backfill"]),
    ("ALTER TABLE users ADD COLUMN tz text NOT NULL;", ["add tz text as nullable", "DEFAULT", "SET NOT NULL"]),
    ("ALTER TABLE users ALTER COLUMN email SET NOT NULL;", ["CHECK (email IS NOT NULL) NOT VALID", "VALIDATE"]),
    ("CREATE UNIQUE INDEX k ON users (email);", ["CONCURRENTLY", "ON users (email)"]),
    ("ALTER TABLE o ADD CONSTRAINT c CHECK (total >= 0);", ["NOT VALID", "VALIDATE CONSTRAINT", "(total >= 0)"]),
    ("ALTER TABLE o ADD FOREIGN KEY (user_id) REFERENCES users (id);", ["REFERENCES users NOT VALID", "(user_id)"]),
    ("UPDATE users SET tz = 'UTC';", ["UPDATE users SET ... WHERE", "batches"]),
    ("DELETE FROM sessions;", ["DELETE FROM sessions WHERE", "batches"]),
])
def test_instead_is_concrete_for_the_statement(sql, words):
    [f] = check_sql(sql)
    for word in words:
        assert word in f.instead


def test_not_valid_constraint_problem_says_new_writes_are_still_checked():
    [f] = check_sql("ALTER TABLE o ADD CONSTRAINT c CHECK (total >= 0) NOT VALID;")
    assert "NOT VALID only skips the existing rows" in f.problem
    [g] = check_sql("ALTER TABLE o ADD CONSTRAINT c CHECK (total >= 0);")
    assert "NOT VALID" not in g.problem


def test_statement_is_whitespace_collapsed_without_comments():
    [f] = check_sql("ALTER   TABLE users\n\t-- the old phone\n   DROP /* really */ COLUMN\n phone ;")
    assert f.statement == "ALTER TABLE users DROP COLUMN phone"


def test_long_statement_is_truncated():
    cols = ", ".join(f"DROP COLUMN column_number_{i}" for i in range(30))
    findings = check_sql(f"ALTER TABLE users {cols};")
    assert len(findings) == 30
    assert len(findings[0].statement) <= 200 and findings[0].statement.endswith("...")


# --- the splitter ----------------------------------------------------------------------------

def texts(sql: str) -> list[tuple[int, str]]:
    return [(s.line, s.text) for s in split_statements(sql)]


def test_split_keeps_semicolons_in_strings_and_escaped_quotes():
    sql = "INSERT INTO t VALUES ('a;b', 'it''s; fine');\nSELECT 1;"
    assert texts(sql) == [(1, "INSERT INTO t VALUES ('a;b', 'it''s; fine')"), (2, "SELECT 1")]


def test_split_keeps_semicolons_in_quoted_identifiers():
    assert texts('SELECT "a;b", `c;d` FROM t;\nSELECT 2') == [(1, 'SELECT "a;b", `c;d` FROM t'), (2, "SELECT 2")]


def test_split_ignores_comments_containing_statements():
    sql = "-- DROP TABLE users;\n/* ALTER TABLE users\n DROP COLUMN phone; */ SELECT 1;\nSELECT 2; -- ; DROP TABLE x"
    assert texts(sql) == [(3, "SELECT 1"), (4, "SELECT 2")]
    assert check_sql(sql) == []


def test_split_keeps_dollar_quoted_bodies_whole():
    sql = ("CREATE FUNCTION f() RETURNS text AS $$ SELECT 'x;'; $$ LANGUAGE sql;\n"
           "CREATE FUNCTION g() RETURNS text AS $fn$\n  SELECT $$a;$$; DROP TABLE users;\n$fn$ LANGUAGE sql;\n"
           "SELECT 3;")
    statements = split_statements(sql)
    assert [s.line for s in statements] == [1, 2, 5]
    assert statements[1].text.endswith("$fn$ LANGUAGE sql")


def test_split_dollar_parameter_is_not_a_quote():
    assert texts("PREPARE p AS DELETE FROM t WHERE id = $1; SELECT $2;") == [
        (1, "PREPARE p AS DELETE FROM t WHERE id = $1"), (1, "SELECT $2")]


def test_split_escape_string_with_backslash_quote():
    assert texts("SELECT E'it\\'s; ok';\nSELECT 2;") == [(1, "SELECT E'it\\'s; ok'"), (2, "SELECT 2")]


def test_split_counts_lines_inside_multiline_strings_and_comments():
    sql = "SELECT 'a\nb\nc';\n/* x\ny */\nDROP TABLE t;"
    assert rules(sql) == [("drop-table", 6)]


def test_split_last_statement_without_semicolon_and_empty_statements():
    assert texts(";;\n  SELECT 1;;\nDROP TABLE t") == [(2, "SELECT 1"), (3, "DROP TABLE t")]


def test_line_is_the_first_token_not_the_leading_comment():
    assert rules("\n-- drop it\n\n   DROP\n TABLE t;") == [("drop-table", 4)]


@pytest.mark.parametrize("sql, what", [
    ("SELECT 'abc;", "string literal"),
    ('SELECT "abc;', "quoted identifier"),
    ("SELECT 1; /* never closed", "/* comment"),
    ("CREATE FUNCTION f() AS $body$ SELECT 1; $$;", "dollar-quoted string $body$"),
])
def test_unterminated_quote_or_comment_is_an_error(sql, what):
    with pytest.raises(SchemaCheckError, match=re.escape(f"line 1: unterminated {what}")):
        check_sql(sql)


# --- cutover:allow ---------------------------------------------------------------------------

@pytest.mark.parametrize("sql", [
    "-- cutover:allow drop-column\nALTER TABLE users DROP COLUMN phone;",
    "ALTER TABLE users DROP COLUMN phone; -- cutover:allow drop-column",
    "ALTER TABLE users -- cutover:allow drop-column\n  DROP COLUMN phone;",
    "/* cutover:allow drop-column */ ALTER TABLE users DROP COLUMN phone;",
    "-- cutover:allow drop-column\n-- contract of release 42; v41 never reads phone\nALTER TABLE users DROP COLUMN phone;",
    "-- CUTOVER:ALLOW set-not-null, drop-column\nALTER TABLE users DROP COLUMN phone;",
])
def test_allow_comment_suppresses_the_named_rule(sql):
    [f] = check_sql(sql)
    assert (f.rule, f.suppressed) == ("drop-column", True)


@pytest.mark.parametrize("sql", [
    "-- cutover:allow drop-table\nALTER TABLE users DROP COLUMN phone;",            # other rule
    "-- cutover:allow drop-column\n\nALTER TABLE users DROP COLUMN phone;",          # blank line between
    "-- cutover:allow drop-column\nSELECT 1;\nALTER TABLE users DROP COLUMN phone;",  # belongs to SELECT
    "SELECT 1; -- cutover:allow drop-column\nALTER TABLE users DROP COLUMN phone;",   # trails the SELECT
    "SELECT '-- cutover:allow drop-column';\nALTER TABLE users DROP COLUMN phone;",   # a string
])
def test_allow_comment_elsewhere_does_not_suppress(sql):
    [f] = check_sql(sql)
    assert (f.rule, f.suppressed) == ("drop-column", False)


def test_allow_suppresses_only_its_statement():
    sql = ("-- cutover:allow drop-column\nALTER TABLE a DROP COLUMN x;\n"
           "ALTER TABLE b DROP COLUMN y;")
    assert [(f.line, f.suppressed) for f in check_sql(sql)] == [(2, True), (3, False)]


# --- fixtures --------------------------------------------------------------------------------

def line_of(name: str, needle: str) -> int:
    lines = (FIXTURES / name).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if needle in line)


EXPECTED = {
    "001_expand_add_column.sql": [],
    "002_contract_drop_column.sql": [("drop-column", "DROP COLUMN")],
    "003_rename_column.sql": [("rename-column", "ALTER TABLE")],
    "004_not_null_without_default.sql": [("add-not-null-without-default", "ALTER TABLE")],
    "005_type_change.sql": [("change-type", "ALTER TABLE order_lines\n"), ("change-type", "ALTER quantity")],
    "006_mixed_with_function_body.sql": [("drop-default", "DROP DEFAULT")],
    "007_allowed_contract.sql": [("drop-column", "DROP COLUMN")],
    "008_mysql_modify_change_rename.sql": [("change-type", "MODIFY COLUMN"),
                                           ("rename-column", "ALTER TABLE `products`\n"),
                                           ("rename-table", "RENAME TABLE")],
    "009_sqlite_expand.sql": [],
    "010_constraints_and_cleanup.sql": [("add-unique", "CREATE UNIQUE INDEX CONCURRENTLY"),
                                        ("add-foreign-key", "ALTER TABLE orders\n"),
                                        ("add-check", "CHECK (total_cents"),
                                        ("drop-view", "DROP VIEW"), ("drop-function", "DROP FUNCTION"),
                                        ("truncate", "TRUNCATE"), ("delete-without-where", "DELETE FROM")],
}


def test_every_fixture_has_an_expectation():
    assert sorted(p.name for p in FIXTURES.glob("*.sql")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_findings(name):
    def locate(needle):
        if needle.endswith("\n"):                  # the statement's whole first line
            lines = (FIXTURES / name).read_text().splitlines()
            return lines.index(needle[:-1]) + 1
        return line_of(name, needle)
    expected = [(rule, locate(needle)) for rule, needle in EXPECTED[name]]
    assert rules((FIXTURES / name).read_text()) == expected


def test_function_body_with_drop_table_text_is_not_flagged_and_later_line_is_exact():
    sql = (FIXTURES / "006_mixed_with_function_body.sql").read_text()
    assert "DROP TABLE orders;" in sql
    [f] = check_sql(sql)
    assert f.line == 33 == line_of("006_mixed_with_function_body.sql", "DROP DEFAULT")


def test_allowed_contract_fixture_is_suppressed():
    [f] = check_sql((FIXTURES / "007_allowed_contract.sql").read_text())
    assert f.suppressed


# --- main ------------------------------------------------------------------------------------

def fixture(name: str) -> str:
    return str(FIXTURES / name)


def test_main_exit_0_and_summary_for_a_clean_file(capsys):
    path = fixture("001_expand_add_column.sql")
    assert main([path]) == 0
    out = capsys.readouterr()
    assert out.out == f"{path}: no backward-incompatible change found\n" and out.err == ""


def test_main_exit_1_and_one_block_per_finding(capsys):
    path = fixture("005_type_change.sql")
    assert main([path]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7
    assert lines[0].startswith(f"{path}:4: change-type \u2014 the version still serving")
    assert lines[1] == "    ALTER TABLE order_lines ALTER COLUMN order_id SET DATA TYPE bigint"
    assert lines[2].startswith("    instead: add a new column (order_id_new bigint)")
    assert lines[3].startswith(f"{path}:7: change-type \u2014 ")
    assert lines[6] == f"2 backward-incompatible change(s) in {path}"


def test_main_allowed_finding_is_listed_but_exits_0(capsys):
    path = fixture("007_allowed_contract.sql")
    assert main([path]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{path}:6: drop-column allowed by cutover:allow",
        "    ALTER TABLE customers DROP COLUMN phone",
        f"{path}: no backward-incompatible change found",
    ]


def test_main_several_files_exit_1_when_any_fails(capsys):
    assert main([fixture("001_expand_add_column.sql"), fixture("002_contract_drop_column.sql")]) == 1
    out = capsys.readouterr().out
    assert "001_expand_add_column.sql: no backward-incompatible change found" in out
    assert "1 backward-incompatible change(s) in " in out


def test_main_json_shape(capsys):
    paths = [fixture("007_allowed_contract.sql"), fixture("003_rename_column.sql")]
    assert main(["--json", *paths]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [(d["file"], d["rule"], d["line"], d["suppressed"]) for d in data] == [
        (paths[0], "drop-column", 6, True), (paths[1], "rename-column", 5, False)]
    assert set(data[1]) == {"file", "rule", "line", "statement", "problem", "instead", "suppressed"}
    assert data[1]["statement"] == "ALTER TABLE ONLY public.orders RENAME COLUMN total TO total_gross_cents"


def test_main_json_clean_file_is_an_empty_list(capsys):
    assert main([fixture("009_sqlite_expand.sql"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_main_reads_stdin(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("TRUNCATE sessions;\n"))
    assert main(["-"]) == 1
    assert capsys.readouterr().out.startswith("<stdin>:1: truncate \u2014 ")


@pytest.mark.parametrize("argv", [[], ["--bogus", "x.sql"]])
def test_main_usage_error_exits_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cutover schema-check: ") and err.count("\n") == 1


def test_main_missing_file_exits_2_and_still_checks_the_others(tmp_path, capsys):
    missing = tmp_path / "nope.sql"
    assert main([str(missing), fixture("002_contract_drop_column.sql")]) == 2
    out = capsys.readouterr()
    assert out.err == f"cutover schema-check: cannot read {missing}: No such file or directory\n"
    assert "drop-column" in out.out


def test_main_unreadable_sql_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.sql"
    bad.write_text("SELECT 1;\nCREATE FUNCTION f() AS $$ SELECT 1;\n")
    binary = tmp_path / "binary.sql"
    binary.write_bytes(b"\xff\xfe\x00DROP")
    assert main([str(bad)]) == 2
    assert capsys.readouterr().err == f"cutover schema-check: {bad}: line 2: unterminated dollar-quoted string $$\n"
    assert main([str(binary)]) == 2
    assert capsys.readouterr().err == f"cutover schema-check: cannot read {binary}: not UTF-8 text\n"
