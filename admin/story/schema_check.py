"""Schema check: flags migrations that break the application version still serving (SPEC §6).

`cutover schema-check [--json] FILE...` is the command a schema-compatibility gate runs on
a migration before the switch. In a blue-green deployment the old version keeps serving while
the new version's migration runs, and a rollback puts the old version back on the migrated
schema. So a migration may only expand (add tables, nullable or defaulted columns, indexes,
backfill in batches); it contracts only what no running version uses any more, in a later
release, and marks that step with `-- cutover:allow RULE` on the line before the statement
or at the end of one of its lines.

`check_sql` is pure: it lexes the SQL itself (single-quoted strings, quoted identifiers,
comments, dollar quotes), splits statements with their line numbers and applies the rules in
RULES. Limits: code inside function bodies, DO blocks and dynamic SQL is not inspected, and
the check knows the file, not the live schema: a table counts as new only when the same file
creates it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

__all__ = ["RULES", "Finding", "SchemaCheckError", "Statement", "Token", "add_arguments",
           "check_sql", "main", "run", "split_statements"]

RULES = (
    "drop-table", "drop-column", "rename-table", "rename-column", "change-type",
    "add-not-null-without-default", "set-not-null", "drop-default", "add-unique", "add-check",
    "add-foreign-key", "truncate", "delete-without-where", "update-without-where", "drop-view",
    "drop-function", "drop-schema",
)

STATEMENT_LIMIT = 200  # Finding.statement is cut to this many characters


class SchemaCheckError(ValueError):
    """SchemaCheckError: SQL the splitter cannot read (an unterminated quote or comment).

    Raised by split_statements and check_sql; the message starts with "line N:". main turns
    it into exit code 2, since a file that is not fully read cannot be declared safe.
    """


@dataclass(frozen=True)
class Finding:
    """Finding: one backward-incompatible change, as check_sql reports it."""

    rule: str          # one of RULES
    line: int          # 1-based line of the statement's first token
    statement: str     # whitespace-collapsed, at most STATEMENT_LIMIT characters
    problem: str       # why it breaks the version still serving
    instead: str       # the expand/contract alternative for this statement
    suppressed: bool = False  # allowed by a `cutover:allow` comment: reported, not failing


# ---------------------------------------------------------------------------------------------
# Splitting

@dataclass(frozen=True, slots=True)
class Token:
    """Token: one lexical unit of a statement; comments and whitespace are not tokens."""

    kind: str      # "word" | "ident" (quoted name) | "string" | "number" | "op"
    text: str      # as written
    line: int      # line of its first character
    spaced: bool   # whitespace or a comment precedes it

    @property
    def kw(self) -> str:
        """kw: the upper-cased word, the character of an op, "" for anything else."""
        if self.kind == "word":
            return self.text.upper()
        return self.text if self.kind == "op" else ""

    @property
    def key(self) -> str:
        """key: the name as the database resolves it (unquoted words fold to lower case)."""
        if self.kind == "ident":
            quote = self.text[0]
            return self.text[1:-1].replace(quote * 2, quote)
        return self.text.lower()


@dataclass(frozen=True)
class Statement:
    """Statement: the tokens between two semicolons, the line it starts on, its allowed rules."""

    line: int
    tokens: tuple[Token, ...]
    allow: frozenset[str]  # rule ids named by `cutover:allow` comments attached to it

    @property
    def text(self) -> str:
        """text: the statement without comments, whitespace collapsed."""
        return _join(self.tokens)


def _join(tokens: Sequence[Token]) -> str:
    text = "".join((" " if t.spaced and i else "") + t.text for i, t in enumerate(tokens))
    return " ".join(text.split())


_DOLLAR = re.compile(r"\$(?:[^\W\d]\w*)?\$")   # $$ or $tag$; "$1" is a parameter
_ALLOW = re.compile(r"cutover:allow\b(.*)", re.IGNORECASE | re.DOTALL)
_RULE_ID = re.compile(r"[a-z][a-z0-9-]*")


def _allowed_ids(comment: str) -> set[str]:
    ids: set[str] = set()
    for match in _ALLOW.finditer(comment):
        for word in re.split(r"[\s,]+", match.group(1).strip().lower()):
            if not _RULE_ID.fullmatch(word):
                break
            ids.add(word)
    return ids


class _Splitter:
    """_Splitter: one pass over the SQL text; split_statements is its only user.

    A comment attaches its `cutover:allow` ids to a statement when it stands inside the
    statement, follows code on one of its lines (after the closing semicolon included), or
    ends a run of comment-only lines directly above its first line.
    """

    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.pos = 0
        self.line = 1
        self.spaced = False
        self.drafts: list[tuple[int, list[Token], set[str]]] = []
        self.tokens: list[Token] = []       # the statement being read
        self.allow: set[str] = set()        # its allowed rules
        self.pending: list[tuple[int, int, set[str]]] = []  # comment-only lines since the last statement
        self.code_line = 0                  # line where the last token or semicolon ended
        self.closed: set[str] | None = None  # allow set of the statement the last semicolon closed

    def run(self) -> list[Statement]:
        sql, end = self.sql, len(self.sql)
        while self.pos < end:
            c = sql[self.pos]
            if c.isspace():
                self.line += c == "\n"
                self.pos += 1
                self.spaced = True
            elif sql.startswith("--", self.pos):
                stop = sql.find("\n", self.pos)
                stop = end if stop < 0 else stop
                self._comment(sql[self.pos + 2:stop], self.line)
                self.pos = stop
            elif sql.startswith("/*", self.pos):
                stop = sql.find("*/", self.pos + 2)
                if stop < 0:
                    raise SchemaCheckError(f"line {self.line}: unterminated /* comment")
                body = sql[self.pos + 2:stop]
                first = self.line
                self.line += body.count("\n")
                self._comment(body, first)
                self.pos = stop + 2
            elif c in "'\"`":
                self._quoted(self.pos, "string" if c == "'" else "ident")
            elif c == "$" and (m := _DOLLAR.match(sql, self.pos)):
                stop = sql.find(m.group(), m.end())
                if stop < 0:
                    raise SchemaCheckError(f"line {self.line}: unterminated dollar-quoted string {m.group()}")
                self._token("string", stop + len(m.group()))
            elif c == ";":
                self._close()
                self.pos += 1
            elif c.isalpha() or c == "_":
                stop = self.pos + 1
                while stop < end and (sql[stop].isalnum() or sql[stop] in "_$"):
                    stop += 1
                if stop - self.pos == 1 and c in "eE" and sql.startswith("'", stop):
                    self._quoted(stop, "string", backslash=True)   # E'...' escape string
                else:
                    self._token("word", stop)
            elif c.isdigit():
                stop = self.pos + 1
                while stop < end and (sql[stop].isalnum() or sql[stop] in "_."):
                    stop += 1
                self._token("number", stop)
            else:
                self._token("op", self.pos + 1)
        self._close()
        return [Statement(line, tuple(tokens), frozenset(allow)) for line, tokens, allow in self.drafts]

    def _quoted(self, opening: int, kind: str, backslash: bool = False) -> None:
        sql, quote = self.sql, self.sql[opening]
        i = opening + 1
        while True:
            if i >= len(sql):
                what = "string literal" if kind == "string" else "quoted identifier"
                raise SchemaCheckError(f"line {self.line}: unterminated {what}")
            if backslash and sql[i] == "\\":
                i += 2
            elif sql[i] == quote:
                if not sql.startswith(quote, i + 1):
                    break
                i += 2
            else:
                i += 1
        self._token(kind, i + 1)

    def _token(self, kind: str, stop: int) -> None:
        text = self.sql[self.pos:stop]
        if not self.tokens:
            self._attach_pending(self.line)
        self.tokens.append(Token(kind, text, self.line, self.spaced))
        self.line += text.count("\n")
        self.code_line = self.line
        self.spaced = False
        self.pos = stop

    def _attach_pending(self, first_line: int) -> None:
        expected = first_line - 1
        for first, last, ids in reversed(self.pending):
            if last < expected:
                break
            self.allow |= ids
            expected = first - 1
        self.pending = []

    def _comment(self, body: str, first: int) -> None:
        ids = _allowed_ids(body)
        self.spaced = True
        if self.code_line == first:        # follows code on its line
            target = self.allow if self.tokens else self.closed
            if target is not None:
                target |= ids
        elif self.tokens:                    # a comment line inside a statement
            self.allow |= ids
        else:
            self.pending.append((first, self.line, ids))

    def _close(self) -> None:
        self.code_line = self.line
        self.spaced = False
        if not self.tokens:
            self.closed = None
            return
        self.drafts.append((self.tokens[0].line, self.tokens, self.allow))
        self.closed = self.allow
        self.tokens, self.allow = [], set()


def split_statements(sql: str) -> list[Statement]:
    """split_statements: the statements of an SQL script in order; check_sql's first step.

    Semicolons inside strings, quoted identifiers, comments and dollar-quoted bodies do not
    split. Raises SchemaCheckError on an unterminated quote or comment.
    """
    return _Splitter(sql).run()


# ---------------------------------------------------------------------------------------------
# Reading statements

class _Name(NamedTuple):
    text: str   # as written, e.g. public."Users"
    key: str    # as resolved, e.g. public.Users


class _Cursor:
    """_Cursor: reads one statement's (or one ALTER TABLE action's) tokens for the rules."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        self.tokens = tokens
        self.i = 0

    def kw(self, ahead: int = 0) -> str:
        j = self.i + ahead
        return self.tokens[j].kw if j < len(self.tokens) else ""

    def accept(self, *words: str) -> bool:
        if all(self.kw(k) == w for k, w in enumerate(words)):
            self.i += len(words)
            return True
        return False

    def name(self) -> _Name | None:
        """name: an optionally schema-qualified, optionally quoted name, or None."""
        parts: list[Token] = []
        while self.i < len(self.tokens) and self.tokens[self.i].kind in ("word", "ident"):
            parts.append(self.tokens[self.i])
            self.i += 1
            if self.kw() != ".":
                break
            self.i += 1
        if not parts:
            return None
        return _Name(".".join(p.text for p in parts), ".".join(p.key for p in parts))

    def group(self) -> list[Token] | None:
        """group: the tokens inside the parenthesis that starts here, or None."""
        if self.kw() != "(":
            return None
        depth, start = 0, self.i
        for j in range(self.i, len(self.tokens)):
            depth += {"(": 1, ")": -1}.get(self.tokens[j].kw, 0)
            if depth == 0:
                self.i = j + 1
                return list(self.tokens[start + 1:j])
        self.i = len(self.tokens)
        return list(self.tokens[start + 1:])

    def rest(self) -> list[Token]:
        return list(self.tokens[self.i:])


def _top(tokens: Iterable[Token]) -> list[str]:
    """_top: the keywords of the tokens outside any parenthesis (an opening one included)."""
    out, depth = [], 0
    for t in tokens:
        if depth == 0:
            out.append(t.kw)
        depth += {"(": 1, ")": -1}.get(t.kw, 0)
    return out


def _has(words: Sequence[str], *seq: str) -> bool:
    n = len(seq)
    return any(tuple(words[i:i + n]) == seq for i in range(len(words) - n + 1))


def _split(tokens: Sequence[Token]) -> list[list[Token]]:
    """_split: the tokens cut at commas outside parentheses."""
    parts: list[list[Token]] = [[]]
    depth = 0
    for t in tokens:
        if t.kw == "," and depth == 0:
            parts.append([])
            continue
        depth += {"(": 1, ")": -1}.get(t.kw, 0)
        parts[-1].append(t)
    return [p for p in parts if p]


_TYPE_END = {"NOT", "NULL", "DEFAULT", "PRIMARY", "UNIQUE", "CHECK", "REFERENCES", "CONSTRAINT",
             "COLLATE", "USING", "GENERATED", "AUTO_INCREMENT", "AUTOINCREMENT", "COMMENT",
             "FIRST", "AFTER", "AS", "ON"}


def _type_of(tokens: Sequence[Token]) -> str:
    """_type_of: the data type at the start of a column definition, for the messages."""
    depth, stop = 0, len(tokens)
    for j, t in enumerate(tokens):
        if depth == 0 and j and t.kw in _TYPE_END:
            stop = j
            break
        depth += {"(": 1, ")": -1}.get(t.kw, 0)
    return _join(tokens[:stop]) or "the new type"


class _Hit(NamedTuple):
    rule: str
    problem: str
    instead: str


def _allow_hint(rule: str) -> str:
    return f"marked `-- cutover:allow {rule}`"


# ---------------------------------------------------------------------------------------------
# Rules, one function per statement kind; `created` holds the tables this file creates

def _check(stmt: Statement, created: set[str]) -> list[_Hit]:
    c = _Cursor(stmt.tokens)
    if c.kw() == "WITH":                       # skip the CTEs to the statement they feed
        words = _top(stmt.tokens)
        for j, word in enumerate(words):
            if j and word in ("SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"):
                c = _Cursor(_top_level_from(stmt.tokens, j))
                break
    verb = c.kw()
    if verb == "CREATE":
        return _create(c, created)
    if verb == "DROP":
        return _drop(c, created)
    if verb == "ALTER" and c.kw(1) == "TABLE":
        return _alter_table(c, created)
    if verb == "RENAME" and c.kw(1) == "TABLE":
        return _rename_tables(c, created)
    if verb == "TRUNCATE":
        return _truncate(c, created)
    if verb in ("DELETE", "UPDATE"):
        return _unbounded_write(c, created)
    return []


def _top_level_from(tokens: Sequence[Token], index: int) -> list[Token]:
    """_top_level_from: the tokens from the index-th token outside parentheses on."""
    depth, seen = 0, 0
    for j, t in enumerate(tokens):
        if depth == 0:
            if seen == index:
                return list(tokens[j:])
            seen += 1
        depth += {"(": 1, ")": -1}.get(t.kw, 0)
    return []


def _create(c: _Cursor, created: set[str]) -> list[_Hit]:
    c.accept("CREATE")
    c.accept("OR", "REPLACE")
    while c.kw() in ("GLOBAL", "LOCAL", "TEMP", "TEMPORARY", "UNLOGGED"):
        c.i += 1
    if c.accept("TABLE"):
        c.accept("IF", "NOT", "EXISTS")
        if (name := c.name()) is not None:
            created.add(name.key)
        return []
    if not c.accept("UNIQUE") or not c.accept("INDEX"):
        return []
    while c.i < len(c.tokens) and c.kw() != "ON":
        c.i += 1
    c.accept("ON")
    c.accept("ONLY")
    table = c.name()
    if table is None or table.key in created:
        return []
    while c.i < len(c.tokens) and c.kw() != "(":
        c.i += 1                                # USING method
    cols = _join(c.group() or []) or "the indexed columns"
    return [_add_unique(table.text, cols, "unique index")]


def _add_unique(table: str, cols: str, what: str) -> _Hit:
    return _Hit(
        "add-unique",
        f"existing writers (the version still serving) may write rows of {table} with duplicate "
        f"({cols}); once the {what} exists those inserts and updates fail",
        f"first ship a version that never writes duplicate ({cols}) and remove existing "
        f"duplicates; then, in a later release, build it without blocking writes: CREATE UNIQUE "
        f"INDEX CONCURRENTLY ... ON {table} ({cols}) (and ADD CONSTRAINT ... UNIQUE USING INDEX "
        f"if a constraint is needed), {_allow_hint('add-unique')}",
    )


_DROPPED = {"TABLE": "drop-table", "VIEW": "drop-view", "MATERIALIZED": "drop-view",
            "FUNCTION": "drop-function", "PROCEDURE": "drop-function", "ROUTINE": "drop-function",
            "SCHEMA": "drop-schema"}


def _drop(c: _Cursor, created: set[str]) -> list[_Hit]:
    c.accept("DROP")
    rule = _DROPPED.get(c.kw())
    if rule is None:
        return []                               # DROP INDEX, TRIGGER, TEMPORARY TABLE, ...
    c.accept("MATERIALIZED")
    c.i += 1
    c.accept("IF", "EXISTS")
    hits = []
    while (name := c.name()) is not None:
        text = name.text
        if rule == "drop-function" and (args := c.group()) is not None:
            text += f"({_join(args)})"
        if not (rule == "drop-table" and name.key in created):
            hits.append(_dropped(rule, text))
        if not c.accept(","):
            break
    return hits


def _dropped(rule: str, name: str) -> _Hit:
    allow = _allow_hint(rule)
    if rule == "drop-table":
        return _Hit(rule,
                    f"the version still serving reads and writes table {name}: its queries fail "
                    f"once the table is gone, and a rollback cannot bring the rows back",
                    f"contract in a later release: ship a version that no longer uses {name} "
                    f"first, and drop it once no running version (the rollback target included) "
                    f"references it, {allow}")
    if rule == "drop-view":
        return _Hit(rule,
                    f"the version still serving may query view {name}: its queries fail once "
                    f"the view is gone",
                    f"keep {name} while any running version uses it (change it with CREATE OR "
                    f"REPLACE VIEW, keeping its columns) and drop it in a later release, {allow}")
    if rule == "drop-function":
        return _Hit(rule,
                    f"the version still serving, or a trigger or view it relies on, may call "
                    f"{name}: those calls fail once the function is gone",
                    f"keep {name}; put the new behaviour under a new name or signature, move the "
                    f"callers, and drop {name} in a later release, {allow}")
    return _Hit(rule,
                f"drops every table, view and function in schema {name} that the version still "
                f"serving may use",
                f"move what stays to its new place first and drop schema {name} in a later "
                f"release, once no running version uses it, {allow}")


def _rename_table_hit(old: str, new: str) -> _Hit:
    return _Hit(
        "rename-table",
        f"the version still serving queries the table as {old}: every one of its queries fails "
        f"once it is called {new}",
        f"keep {old}: create {new} next to it (or a view {old} over {new} to bridge the switch), "
        f"dual-write and backfill, move the new version's reads to {new}, and drop {old} in a "
        f"later release",
    )


def _rename_tables(c: _Cursor, created: set[str]) -> list[_Hit]:
    """_rename_tables: MySQL `RENAME TABLE a TO b [, c TO d]`."""
    c.accept("RENAME", "TABLE")
    hits = []
    while (old := c.name()) is not None and c.accept("TO") and (new := c.name()) is not None:
        if old.key in created:
            created.add(new.key)
        else:
            hits.append(_rename_table_hit(old.text, new.text))
        if not c.accept(","):
            break
    return hits


def _truncate(c: _Cursor, created: set[str]) -> list[_Hit]:
    c.accept("TRUNCATE")
    c.accept("TABLE")
    hits = []
    while True:
        c.accept("ONLY")
        if (name := c.name()) is None:
            break
        c.accept("*")
        if name.key not in created:
            hits.append(_Hit(
                "truncate",
                f"deletes every row of {name.text} while the version still serving reads and "
                f"writes it; a rollback cannot bring the rows back",
                f"leave the rows of {name.text} in place through the switch: delete what must "
                f"go in bounded batches with a WHERE clause, or, if {name.text} is obsolete, "
                f"stop using it first and drop it in a later release"))
        if not c.accept(","):
            break
    return hits


def _unbounded_write(c: _Cursor, created: set[str]) -> list[_Hit]:
    """_unbounded_write: DELETE or UPDATE without a WHERE outside parentheses."""
    verb = c.kw()
    if "WHERE" in _top(c.rest()):
        return []
    if verb == "DELETE":
        while c.i < len(c.tokens) and c.kw() != "FROM":
            c.i += 1
        c.accept("FROM")
    else:
        c.accept("UPDATE")
        while c.kw() in ("LOW_PRIORITY", "IGNORE"):
            c.i += 1
    c.accept("ONLY")
    table = c.name()
    if table is None or table.key in created:
        return []
    name = table.text
    if verb == "DELETE":
        return [_Hit(
            "delete-without-where",
            f"deletes every row of {name} while the version still serving reads and writes it; "
            f"a rollback cannot bring the rows back",
            f"delete only what the migration means to remove: DELETE FROM {name} WHERE ... in "
            f"bounded batches; if {name} is obsolete, stop using it first and drop it in a later "
            f"release")]
    return [_Hit(
        "update-without-where",
        f"rewrites every row of {name} in one transaction while the version still serving "
        f"writes it: it locks every row, and the old version's concurrent writes race the "
        f"rewrite",
        f"backfill in bounded, idempotent batches: UPDATE {name} SET ... WHERE <key> BETWEEN "
        f":lo AND :hi AND <not yet backfilled>, with the new version writing the same value so "
        f"the backfill converges")]


def _alter_table(c: _Cursor, created: set[str]) -> list[_Hit]:
    c.accept("ALTER", "TABLE")
    c.accept("IF", "EXISTS")
    c.accept("ONLY")
    table = c.name()
    if table is None:
        return []
    c.accept("*")
    actions = [_Cursor(action) for action in _split(c.rest())]
    if table.key not in created:
        return [hit for a in actions for hit in _alter_action(a, table)]
    for a in actions:                           # no running version knows this table yet
        if a.accept("RENAME") and (a.accept("TO") or a.accept("AS")) and (new := a.name()):
            created.add(new.key)
    return []


_NOT_A_COLUMN = {"CONSTRAINT", "INDEX", "KEY", "PRIMARY", "FOREIGN", "CHECK", "PARTITION",
                 "UNIQUE", "FULLTEXT", "SPATIAL", "EXCLUDE"}


def _alter_action(a: _Cursor, table: _Name) -> list[_Hit]:
    t = table.text
    if a.accept("DROP"):
        if a.kw() in _NOT_A_COLUMN or a.kw() in ("DEFAULT", "PRIMARY"):
            return []
        a.accept("COLUMN")
        a.accept("IF", "EXISTS")
        col = a.name()
        if col is None:
            return []
        return [_Hit(
            "drop-column",
            f"the version still serving reads and writes {t}.{col.text}: its queries fail "
            f"with an unknown column once it is dropped",
            f"expand/contract: ship a release that stops reading and writing {col.text} "
            f"(nullable or defaulted meanwhile), then drop {t}.{col.text} in a later release, "
            f"once no running version uses it, {_allow_hint('drop-column')}")]
    if a.accept("RENAME"):
        if a.accept("TO") or a.accept("AS"):
            new = a.name()
            return [_rename_table_hit(t, new.text if new else "its new name")]
        if a.kw() in ("CONSTRAINT", "INDEX", "KEY"):
            return []
        a.accept("COLUMN")
        old = a.name()
        if old is None:
            return []
        if not a.accept("TO"):
            return [_rename_table_hit(t, old.text)]    # MySQL: RENAME new_name
        new = a.name()
        return [_rename_column(t, old.text, new.text if new else "its new name")]
    if a.accept("ALTER"):
        if a.kw() == "CONSTRAINT":
            return []
        a.accept("COLUMN")
        col = a.name()
        if col is None:
            return []
        if a.accept("SET", "DATA", "TYPE") or a.accept("TYPE"):
            return [_change_type(t, col.text, _type_of(a.rest()))]
        if a.accept("SET", "NOT", "NULL"):
            return [_Hit(
                "set-not-null",
                f"the version still serving may insert or update rows with {t}.{col.text} "
                f"NULL: those writes fail once NOT NULL is set",
                f"first ship a version that always writes {col.text} and backfill the NULLs; "
                f"then, in a later release, ADD CONSTRAINT ... CHECK ({col.text} IS NOT NULL) "
                f"NOT VALID on {t}, VALIDATE CONSTRAINT, and SET NOT NULL, "
                f"{_allow_hint('set-not-null')}")]
        if a.accept("DROP", "DEFAULT"):
            return [_Hit(
                "drop-default",
                f"the version still serving may insert rows without {t}.{col.text} and rely on "
                f"its default: after DROP DEFAULT those rows get NULL, or fail a NOT NULL "
                f"constraint",
                f"keep the default of {t}.{col.text} until every running version writes "
                f"{col.text} itself; drop it in a later release, {_allow_hint('drop-default')}")]
        return []
    if a.accept("MODIFY"):
        a.accept("COLUMN")
        col = a.name()
        if col is None:
            return []
        return [_change_type(t, col.text, _type_of(a.rest()))]
    if a.accept("CHANGE"):
        a.accept("COLUMN")
        old, new = a.name(), a.name()
        if old is None or new is None:
            return []
        if old.key != new.key:
            return [_rename_column(t, old.text, new.text)]
        return [_change_type(t, old.text, _type_of(a.rest()))]
    if a.accept("SET", "SCHEMA"):
        schema = a.name()
        last = t.rsplit(".", 1)[-1]
        return [_rename_table_hit(t, f"{schema.text}.{last}" if schema else "another schema")]
    if a.accept("ADD"):
        if a.accept("CONSTRAINT") and a.kw() not in _NOT_A_COLUMN:
            a.name()
        if a.kw() in _NOT_A_COLUMN:
            return _add_constraint(a, t)
        a.accept("COLUMN")
        a.accept("IF", "NOT", "EXISTS")
        if (defs := a.group()) is not None:      # MySQL: ADD (a INT, b INT)
            return [hit for d in _split(defs) for hit in _add_column(d, t)]
        return _add_column(a.rest(), t)
    return []


def _rename_column(table: str, old: str, new: str) -> _Hit:
    return _Hit(
        "rename-column",
        f"the version still serving reads and writes {table}.{old}: its queries fail once the "
        f"column is called {new}",
        f"add {new} as a new nullable column of {table}, write both {old} and {new} (in the new "
        f"version or a trigger), backfill {new} in batches, read {new} from the next release on, "
        f"and drop {old} only in a later release")


def _change_type(table: str, col: str, new_type: str) -> _Hit:
    return _Hit(
        "change-type",
        f"the version still serving reads and writes {table}.{col} as its old type: values of "
        f"{new_type} may not fit or parse there, compare differently, or fail its writes, and "
        f"the table rewrite locks {table}",
        f"add a new column ({col}_new {new_type}) next to {col}, dual-write and backfill it in "
        f"batches, switch reads to it, and drop {col} in a later release; for a widening the "
        f"old version reads unchanged, {_allow_hint('change-type')}")


_IMPLICIT_VALUE = {"GENERATED", "AUTO_INCREMENT", "AUTOINCREMENT", "AS", "SERIAL", "BIGSERIAL",
                   "SMALLSERIAL", "SERIAL2", "SERIAL4", "SERIAL8"}


def _add_column(tokens: Sequence[Token], table: str) -> list[_Hit]:
    c = _Cursor(tokens)
    col = c.name()
    if col is None:
        return []
    words = _top(c.rest())
    required = _has(words, "NOT", "NULL") or _has(words, "PRIMARY", "KEY")
    has_default = any(w == "DEFAULT" and words[j + 1:j + 2] != ["NULL"] for j, w in enumerate(words))
    if not required or has_default or _IMPLICIT_VALUE & set(words):
        return []
    typ = _type_of(c.rest())
    return [_Hit(
        "add-not-null-without-default",
        f"the version still serving does not know {table}.{col.text} and inserts rows without "
        f"it: every such insert fails the NOT NULL constraint (and on a non-empty table the "
        f"ADD itself fails)",
        f"add {col.text} {typ} as nullable, or NOT NULL with a DEFAULT; have the new version "
        f"write it, backfill existing rows in batches, and SET NOT NULL in a later release, "
        f"once no running version inserts without it")]


def _add_constraint(a: _Cursor, table: str) -> list[_Hit]:
    words = _top(a.rest())
    not_valid = _has(words, "NOT", "VALID")
    caveat = " (NOT VALID only skips the existing rows: new writes are still checked)" if not_valid else ""
    if a.accept("UNIQUE") or a.accept("PRIMARY", "KEY"):
        if _has(words, "USING", "INDEX"):
            return []                            # the index already enforces it
        while a.i < len(a.tokens) and a.kw() != "(":
            a.i += 1                              # MySQL: KEY/INDEX and an index name
        cols = _join(a.group() or []) or "the constrained columns"
        what = "primary key" if "PRIMARY" in words[:2] else "unique constraint"
        return [_add_unique(table, cols, what)]
    if a.accept("CHECK"):
        expr = _join(a.group() or []) or "..."
        return [_Hit(
            "add-check",
            f"the version still serving may write rows of {table} that violate CHECK ({expr}): "
            f"those writes fail once the constraint exists{caveat}",
            f"first ship a version whose writes satisfy ({expr}) and fix the existing rows; then, "
            f"in a later release, ADD CONSTRAINT ... CHECK ({expr}) NOT VALID on {table} and "
            f"VALIDATE CONSTRAINT in a separate step, {_allow_hint('add-check')}")]
    if a.accept("FOREIGN", "KEY"):
        cols = _join(a.group() or []) or "the referencing columns"
        ref = a.name() if a.accept("REFERENCES") else None
        target = ref.text if ref else "the referenced table"
        return [_Hit(
            "add-foreign-key",
            f"the version still serving may write rows of {table} whose ({cols}) match no row of "
            f"{target}, or delete rows of {target} still referenced: those writes fail once the "
            f"foreign key exists{caveat}",
            f"first ship a version that keeps ({cols}) pointing at existing rows of {target} and "
            f"fix the orphans; then, in a later release, ADD CONSTRAINT ... FOREIGN KEY ({cols}) "
            f"REFERENCES {target} NOT VALID on {table} and VALIDATE CONSTRAINT separately, "
            f"{_allow_hint('add-foreign-key')}")]
    return []                                    # INDEX, KEY, FULLTEXT, EXCLUDE, PARTITION


# ---------------------------------------------------------------------------------------------
# Entry points

def _shorten(text: str) -> str:
    return text if len(text) <= STATEMENT_LIMIT else text[:STATEMENT_LIMIT - 3] + "..."


def check_sql(sql: str) -> list[Finding]:
    """check_sql: the backward-incompatible changes of one migration script, in file order.

    Pure; the schema-check command and the schema-compatibility gate call it. Findings
    allowed by a `cutover:allow` comment come back with suppressed=True. Raises
    SchemaCheckError when the SQL cannot be split (an unterminated quote or comment).
    """
    findings = []
    created: set[str] = set()
    for stmt in split_statements(sql):
        for hit in _check(stmt, created):
            findings.append(Finding(hit.rule, stmt.line, _shorten(stmt.text), hit.problem,
                                    hit.instead, suppressed=hit.rule in stmt.allow))
    return findings


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line on stderr instead of usage + message
        raise _UsageError(message)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """add_arguments: the schema-check options, for a subparser of the cutover CLI."""
    parser.add_argument("files", nargs="+", metavar="FILE", help="migration SQL file ('-' reads stdin)")
    parser.add_argument("--json", action="store_true",
                        help="print the findings as a JSON list (allowed ones with suppressed: true)")


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8-sig") as f:
        return f.read()


def run(args: argparse.Namespace) -> int:
    """run: check every file and print the findings; 0 none, 1 any, 2 a file could not be read.

    Files that cannot be read or split are named on stderr and the others still checked.
    """
    failed = broken = False
    records = []
    for path in args.files:
        name = "<stdin>" if path == "-" else path
        try:
            findings = check_sql(_read(path))
        except OSError as exc:
            print(f"cutover schema-check: cannot read {name}: {exc.strerror or exc}", file=sys.stderr)
            broken = True
            continue
        except UnicodeDecodeError:
            print(f"cutover schema-check: cannot read {name}: not UTF-8 text", file=sys.stderr)
            broken = True
            continue
        except SchemaCheckError as exc:
            print(f"cutover schema-check: {name}: {exc}", file=sys.stderr)
            broken = True
            continue
        failing = [f for f in findings if not f.suppressed]
        failed = failed or bool(failing)
        if args.json:
            records += [{"file": name, **asdict(f)} for f in findings]
            continue
        for f in findings:
            if f.suppressed:
                print(f"{name}:{f.line}: {f.rule} allowed by cutover:allow")
                print(f"    {f.statement}")
            else:
                print(f"{name}:{f.line}: {f.rule} \u2014 {f.problem}")
                print(f"    {f.statement}")
                print(f"    instead: {f.instead}")
        if failing:
            print(f"{len(failing)} backward-incompatible change(s) in {name}")
        else:
            print(f"{name}: no backward-incompatible change found")
    if args.json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
    return 2 if broken else 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """main: `cutover schema-check [--json] FILE...`; exit 0 clean, 1 findings, 2 usage or read error."""
    parser = _Parser(prog="cutover schema-check",
                     description="Flag migration statements that break the version still serving.")
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"cutover schema-check: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:                    # --help
        return exc.code if isinstance(exc.code, int) else 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
