"""SOQL and SOSL for the fake Salesforce org: a parser and evaluator of the subset a client
sends for lookups, held to the rules Salesforce enforces on it.

SOQL (https://developer.salesforce.com/docs/atlas.en-us.soql_sosl.meta/soql_sosl/):
`SELECT fields[, (SELECT fields FROM ChildRelationship [WHERE …])] FROM Object
[WHERE cond] [ORDER BY field [ASC|DESC] [NULLS FIRST|LAST], …] [LIMIT n] [OFFSET n]`
where a condition is comparisons (`= != <> < <= > >=`), `LIKE`, `IN (values)`,
`NOT IN`, a semi-join `field IN (SELECT field FROM Object WHERE …)`, `AND`/`OR`/`NOT` and
parentheses. Like Salesforce:
- AND and OR mixed without parentheses is MALFORMED_QUERY;
- field and object names are case-insensitive, an unknown one is INVALID_FIELD /
  INVALID_TYPE; string comparison with `=` ignores case (ids excepted);
- deleted records are not returned; a child relationship with no rows is `null`.

SOSL (https://developer.salesforce.com/docs/atlas.en-us.soql_sosl.meta/soql_sosl/sforce_api_calls_sosl_in.htm):
`FIND {term [OR term …]} IN PHONE|EMAIL|ALL FIELDS RETURNING Object(fields [WHERE …]
[ORDER BY …] [LIMIT n])`. Terms are matched against the org's search index (which trails
writes, see `Org.index_lag`): in phone fields by digits, whatever the punctuation (what
Salesforce's own sample relies on: it searches `4155551212`), elsewhere by whole words,
case-insensitively.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tests.fakes.service import ApiError

Row = dict[str, Any]


def sf_error(status: int, code: str, message: str, fields: Sequence[str] = ()) -> ApiError:
    """Salesforce's error answer: an array of `{message, errorCode, fields}`."""
    item: dict[str, Any] = {"message": message, "errorCode": code}
    if fields:
        item["fields"] = list(fields)
    error = ApiError(status, {})
    error.response.body = [item]
    return error


def malformed(message: str) -> ApiError:
    return sf_error(400, "MALFORMED_QUERY", message)


class Schema(Protocol):
    """What the evaluator needs from the org."""

    def canonical_object(self, name: str) -> str: ...

    def canonical_field(self, sobject: str, name: str) -> str: ...

    def field_type(self, sobject: str, name: str) -> str: ...

    def rows(self, sobject: str) -> Iterable[Row]: ...

    def relationship(self, sobject: str, name: str) -> tuple[str, str, str]:
        """(canonical relationship name, child object, child's field naming the parent)."""
        ...

    def search_rows(self, sobject: str) -> Iterable[tuple[Row, Row]]:
        """(record, its values as the search index holds them)."""
        ...


# ---- tokens -------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>'(?:\\.|[^'\\])*')
    | (?P<datetime>\d{4}-\d\d-\d\d(?:T\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d))?)
    | (?P<number>-?\d+(?:\.\d+)?)
    | (?P<op><=|>=|!=|<>|=|<|>)
    | (?P<punct>[(),])
    | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
_UNESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}


@dataclass
class Token:
    kind: str
    text: str
    value: Any = None


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        found = _TOKEN.match(text, pos)
        if found is None or found.end() == pos:
            raise malformed(f"unexpected token: '{text[pos : pos + 20].strip()}'")
        kind = found.lastgroup or ""
        raw = found.group(kind)
        value: Any = raw
        if kind == "string":
            value = re.sub(r"\\(.)", lambda m: _UNESCAPES.get(m.group(1), m.group(1)), raw[1:-1])
        elif kind == "number":
            value = float(raw) if "." in raw else int(raw)
        tokens.append(Token(kind, raw, value))
        pos = found.end()
    return tokens


class Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self, offset: int = 0) -> Token | None:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def keyword(self, *words: str) -> bool:
        """Consume the keywords when they come next (case-insensitively)."""
        for offset, word in enumerate(words):
            token = self.peek(offset)
            if token is None or token.kind != "name" or token.text.upper() != word:
                return False
        self.pos += len(words)
        return True

    def expect_keyword(self, word: str) -> None:
        if not self.keyword(word):
            raise malformed(f"unexpected token: '{self._here()}', expected {word}")

    def punct(self, char: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "punct" and token.text == char:
            self.pos += 1
            return True
        return False

    def expect(self, char: str) -> None:
        if not self.punct(char):
            raise malformed(f"unexpected token: '{self._here()}', expected '{char}'")

    def name(self) -> str:
        token = self.peek()
        if token is None or token.kind != "name":
            raise malformed(f"unexpected token: '{self._here()}'")
        self.pos += 1
        return token.text

    def literal(self) -> Any:
        token = self.peek()
        if token is None:
            raise malformed("unexpected end of query")
        self.pos += 1
        if token.kind in ("string", "number", "datetime"):
            return token.value
        if token.kind == "name" and token.text.lower() in ("true", "false"):
            return token.text.lower() == "true"
        if token.kind == "name" and token.text.lower() == "null":
            return None
        raise malformed(f"unexpected token: '{token.text}'")

    def done(self) -> bool:
        return self.pos >= len(self.tokens)

    def _here(self) -> str:
        token = self.peek()
        return token.text if token is not None else "<end>"


# ---- SOQL ---------------------------------------------------------------------------

Cond = tuple[Any, ...]


@dataclass
class Query:
    fields: list[str]
    sobject: str
    where: Cond | None = None
    order: list[tuple[str, bool, bool]] = field(default_factory=list)  # name, desc, nulls last
    limit: int | None = None
    offset: int = 0
    children: list[Query] = field(default_factory=list)


def parse_soql(text: str) -> Query:
    parser = Parser(tokenize(text))
    query = _select(parser, nested=False)
    if not parser.done():
        raise malformed(f"unexpected token: '{parser._here()}'")
    return query


def _select(parser: Parser, nested: bool) -> Query:
    parser.expect_keyword("SELECT")
    fields: list[str] = []
    children: list[Query] = []
    while True:
        if parser.punct("("):
            if nested:
                raise malformed("a sub-query cannot hold another one")
            children.append(_select(parser, nested=True))
            parser.expect(")")
        else:
            fields.append(parser.name())
        if not parser.punct(","):
            break
    parser.expect_keyword("FROM")
    query = Query(fields, parser.name(), children=children)
    if parser.keyword("WHERE"):
        query.where = _condition(parser)
    if parser.keyword("ORDER", "BY"):
        query.order = _order(parser)
    if parser.keyword("LIMIT"):
        limit = parser.literal()
        if not isinstance(limit, int) or limit < 0:
            raise malformed("LIMIT takes a whole number")
        query.limit = limit
    if parser.keyword("OFFSET"):
        offset = parser.literal()
        if not isinstance(offset, int) or offset < 0:
            raise malformed("OFFSET takes a whole number")
        query.offset = offset
    return query


def _order(parser: Parser) -> list[tuple[str, bool, bool]]:
    order = []
    while True:
        name = parser.name()
        desc = parser.keyword("DESC")
        if not desc:
            parser.keyword("ASC")
        nulls_last = desc  # Salesforce: nulls first ascending, last descending
        if parser.keyword("NULLS", "FIRST"):
            nulls_last = False
        elif parser.keyword("NULLS", "LAST"):
            nulls_last = True
        order.append((name, desc, nulls_last))
        if not parser.punct(","):
            return order


def _condition(parser: Parser) -> Cond:
    first = _term(parser)
    parts, joiner = [first], None
    while True:
        word = "AND" if parser.keyword("AND") else "OR" if parser.keyword("OR") else None
        if word is None:
            break
        if joiner is not None and word != joiner:
            # Salesforce refuses `a AND b OR c`: the grouping must be spelt out.
            raise malformed(f"unexpected token: '{word}': mixing AND and OR needs parentheses")
        joiner = word
        parts.append(_term(parser))
    if joiner is None:
        return first
    return (joiner.lower(), parts)


def _term(parser: Parser) -> Cond:
    if parser.keyword("NOT"):
        return ("not", _term(parser))
    if parser.punct("("):
        inner = _condition(parser)
        parser.expect(")")
        return inner
    name = parser.name()
    if parser.keyword("NOT", "IN"):
        return ("in", name, _in_values(parser), True)
    if parser.keyword("IN"):
        return ("in", name, _in_values(parser), False)
    if parser.keyword("LIKE"):
        pattern = parser.literal()
        if not isinstance(pattern, str):
            raise malformed("LIKE takes a string")
        return ("like", name, pattern)
    token = parser.peek()
    if token is None or token.kind != "op":
        raise malformed(f"unexpected token: '{parser._here()}'")
    parser.pos += 1
    op = "!=" if token.text == "<>" else token.text
    return ("cmp", name, op, parser.literal())


def _in_values(parser: Parser) -> list[Any] | Query:
    parser.expect("(")
    token = parser.peek()
    if token is not None and token.kind == "name" and token.text.upper() == "SELECT":
        sub = _select(parser, nested=True)
        parser.expect(")")
        if len(sub.fields) != 1 or sub.children:
            raise malformed("a semi-join selects exactly one field")
        return sub
    values = [parser.literal()]
    while parser.punct(","):
        values.append(parser.literal())
    parser.expect(")")
    return values


def _like(pattern: str) -> re.Pattern[str]:
    parts = ("." if c == "_" else ".*" if c == "%" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


@dataclass
class Evaluator:
    schema: Schema

    def run(self, query: Query) -> list[Row]:
        sobject = self.schema.canonical_object(query.sobject)
        return self._render(sobject, query, self._select(sobject, query, self.schema.rows(sobject)))

    def _select(self, sobject: str, query: Query, rows: Iterable[Row]) -> list[Row]:
        """The raw rows matching the query, ordered, limited."""
        check = self._compile(sobject, query.where)
        ordered = self._sorted(sobject, [row for row in rows if check(row)], query.order)
        end = None if query.limit is None else query.offset + query.limit
        return ordered[query.offset : end]

    def _render(self, sobject: str, query: Query, rows: list[Row]) -> list[Row]:
        fields = [self.schema.canonical_field(sobject, name) for name in query.fields]
        children = [
            (child, self.schema.relationship(sobject, child.sobject)) for child in query.children
        ]
        out = []
        for row in rows:
            record: Row = {"attributes": {"type": sobject, "url": row["__url"]}}
            record.update({name: row.get(name) for name in fields})
            for child, (name, child_object, parent_field) in children:
                linked = [
                    r for r in self.schema.rows(child_object) if r.get(parent_field) == row["Id"]
                ]
                picked = self._select(child_object, child, linked)
                rendered = self._render(child_object, child, picked)
                record[name] = (
                    {"totalSize": len(rendered), "done": True, "records": rendered}
                    if rendered
                    else None
                )
            out.append(record)
        return out

    def ids(self, query: Query) -> set[Any]:
        sobject = self.schema.canonical_object(query.sobject)
        field_name = self.schema.canonical_field(sobject, query.fields[0])
        return {
            row.get(field_name) for row in self._select(sobject, query, self.schema.rows(sobject))
        }

    def _compile(self, sobject: str, cond: Cond | None) -> Callable[[Row], bool]:
        if cond is None:
            return lambda row: True
        kind = cond[0]
        if kind in ("and", "or"):
            parts = [self._compile(sobject, part) for part in cond[1]]
            if kind == "and":
                return lambda row: all(part(row) for part in parts)
            return lambda row: any(part(row) for part in parts)
        if kind == "not":
            inner = self._compile(sobject, cond[1])
            return lambda row: not inner(row)
        name = self.schema.canonical_field(sobject, cond[1])
        fold = self.schema.field_type(sobject, name) not in ("id", "reference")
        if kind == "like":
            pattern = _like(cond[2])
            return lambda row: row.get(name) is not None and bool(pattern.fullmatch(str(row[name])))
        if kind == "in":
            values = cond[2]
            wanted = self.ids(values) if isinstance(values, Query) else set(values)
            keys = {_key(value, fold) for value in wanted}
            negate = cond[3]
            return lambda row: (_key(row.get(name), fold) in keys) != negate
        op, value = cond[2], cond[3]
        return lambda row: _compare(row.get(name), op, value, fold)

    def _sorted(
        self, sobject: str, rows: list[Row], order: list[tuple[str, bool, bool]]
    ) -> list[Row]:
        for name, desc, nulls_last in reversed(order):
            canonical = self.schema.canonical_field(sobject, name)
            present = [r for r in rows if r.get(canonical) is not None]
            missing = [r for r in rows if r.get(canonical) is None]
            present.sort(key=lambda r: _key(r[canonical], True), reverse=desc)
            rows = present + missing if nulls_last else missing + present
        return rows


def _key(value: Any, fold: bool) -> Any:
    return value.casefold() if fold and isinstance(value, str) else value


def _compare(actual: Any, op: str, wanted: Any, fold: bool) -> bool:
    if op in ("=", "!="):
        same = _key(actual, fold) == _key(wanted, fold)
        return same if op == "=" else not same
    if actual is None or wanted is None:
        return False
    a, b = _key(actual, fold), _key(wanted, fold)
    try:
        return bool({"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op])
    except TypeError as exc:
        raise malformed(f"cannot compare {actual!r} with {wanted!r}") from exc


# ---- SOSL ---------------------------------------------------------------------------

_SOSL = re.compile(
    r"\s*FIND\s*\{(?P<terms>(?:\\.|[^}\\])*)\}\s*"
    r"(?:IN\s+(?P<group>ALL|NAME|EMAIL|PHONE|SIDEBAR)\s+FIELDS\s*)?"
    r"RETURNING\s+(?P<object>[A-Za-z_][A-Za-z0-9_]*)\s*(?:\((?P<spec>.*)\))?\s*",
    re.IGNORECASE | re.DOTALL,
)
_WORDS = re.compile(r"[^\W_]+")


def run_sosl(schema: Schema, text: str) -> list[Row]:
    """One SOSL search returning one object (the only form the bridge sends)."""
    found = _SOSL.fullmatch(text)
    if found is None:
        raise sf_error(
            400, "MALFORMED_SEARCH", f"No search term found or malformed SOSL: {text[:80]}"
        )
    terms = [t.strip().strip('"') for t in re.split(r"\s+OR\s+", found["terms"], flags=re.I)]
    terms = [term for term in terms if term]
    if not terms or any(len(term) < 2 for term in terms):
        raise sf_error(400, "INVALID_SEARCH", "search term must be longer than one character")
    group = (found["group"] or "ALL").upper()
    sobject = schema.canonical_object(found["object"])
    fields, tail = _sosl_spec(found["spec"] or "Id")
    query = parse_soql(f"SELECT {fields} FROM {sobject} {tail}")  # noqa: S608 - a fake
    limit = query.limit
    query.limit = None
    matched = {
        row["Id"]
        for row, indexed in schema.search_rows(sobject)
        if _hit(schema, sobject, indexed, terms, group)
    }
    rows = [r for r in Evaluator(schema).run(query) if r.get("Id") in matched] if matched else []
    return rows[:limit] if limit is not None else rows


def _sosl_spec(spec: str) -> tuple[str, str]:
    """`Id, Phone WHERE … ORDER BY … LIMIT n` → ("Id, Phone", "WHERE … LIMIT n")."""
    clause = re.search(r"\s(WHERE|ORDER\s+BY|LIMIT)\s", spec, flags=re.IGNORECASE)
    if clause is None:
        return spec, ""
    return spec[: clause.start()], spec[clause.start() :]


def _hit(
    schema: Schema, sobject: str, indexed: Mapping[str, Any], terms: list[str], group: str
) -> bool:
    for name, value in indexed.items():
        if value is None or value == "":
            continue
        kind = schema.field_type(sobject, name)
        if group == "PHONE" and kind != "phone":
            continue
        if group == "EMAIL" and kind != "email":
            continue
        if kind == "phone":
            digits = "".join(c for c in str(value) if c.isdigit())
            if any(digits and "".join(c for c in t if c.isdigit()) == digits for t in terms):
                return True
        elif group in ("ALL", "EMAIL", "NAME", "SIDEBAR"):
            text = str(value).casefold()
            words = set(_WORDS.findall(text))
            if any(t.casefold() == text or t.casefold() in words for t in terms):
                return True
    return False
