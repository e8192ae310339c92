"""The fake Zoho's two query languages: search `criteria` and COQL `select_query`.

Search (`GET /crm/v8/{module}/search?criteria=…`,
https://www.zoho.com/crm/developer/docs/api/v8/search-records.html):
- `(field:operator:value)` conditions, grouped in parentheses and joined by `and` / `or`
  (one kind of joiner per group); at most 10 conditions; `(`, `)` and `,` in a value
  are escaped with a backslash;
- "When using the equals operator in the Search API, it behaves like contains": text
  and e-mail fields match when the stored value contains the searched one (case aside);
  phone fields compare digits only (the stored "+7 (999) 123-45-67" contains
  "9991234567"); `starts_with` is a prefix, `in` a comma-separated list, `not_equal`
  the negation of an exact match.

COQL (`POST /crm/v8/coql`,
https://www.zoho.com/crm/developer/docs/api/COQL-Overview.html and COQL-Limitations):
- `select f1, f2 from Module where … [order by f [asc|desc]] [limit n [offset m]]`
  (also `limit m, n`); a WHERE clause is required; at most 50 fields; LIMIT at most 2000;
- comparisons `= != > < >= <= like 'a%' in (…) not in (…) is null is not null`;
  `and` / `or` join two conditions at most: more need parentheses
  (`(a and b) and c`), else SYNTAX_ERROR; strings compare without regard to case;
- a lookup compares by its id (`Contact_Name = '…'` or `Contact_Name.id = '…'`).
Errors raise `QueryError(code, message)`; the fake answers them with 400.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_SEARCH_CRITERIA = 10
MAX_COQL_FIELDS = 50
MAX_COQL_LIMIT = 2000


class QueryError(Exception):
    def __init__(self, code: str, message: str, details: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.code, self.message, self.details = code, message, dict(details or {})


FieldType = Callable[[str], str | None]  # api name → data_type (None: no such field)
Values = Mapping[str, Any]  # a record's stored values by api name


# ---- search criteria -------------------------------------------------------------------


@dataclass
class Condition:
    field: str
    operator: str
    value: str


@dataclass
class Group:
    joiner: str  # "and" | "or"
    parts: list[Condition | Group]


def parse_criteria(text: str) -> Condition | Group:
    node, end = _criteria_node(text, 0)
    if text[end:].strip():
        raise QueryError("INVALID_QUERY", "unexpected text after the criteria")
    if _count(node) > MAX_SEARCH_CRITERIA:
        raise QueryError("LIMIT_EXCEEDED", f"at most {MAX_SEARCH_CRITERIA} criteria can be given")
    return node


def _count(node: Condition | Group) -> int:
    return 1 if isinstance(node, Condition) else sum(_count(part) for part in node.parts)


def _criteria_node(text: str, at: int) -> tuple[Condition | Group, int]:
    at = _skip(text, at)
    if at >= len(text) or text[at] != "(":
        raise QueryError("INVALID_QUERY", "a criteria starts with '('")
    inner = _skip(text, at + 1)
    if inner < len(text) and text[inner] == "(":
        parts: list[Condition | Group] = []
        joiner = ""
        at = inner
        while True:
            node, at = _criteria_node(text, at)
            parts.append(node)
            at = _skip(text, at)
            if at < len(text) and text[at] == ")":
                return (parts[0] if len(parts) == 1 else Group(joiner, parts)), at + 1
            word = re.match(r"(and|or)", text[at:], re.IGNORECASE)
            if word is None:
                raise QueryError("INVALID_QUERY", "criteria are joined by 'and' or 'or'")
            if joiner and word.group(1).lower() != joiner:
                raise QueryError("INVALID_QUERY", "mixed 'and' and 'or' need parentheses")
            joiner = word.group(1).lower()
            at += len(word.group(1))
    # A condition: field:operator:value up to the first unescaped ')'.
    chars: list[str] = []
    at += 1
    while at < len(text) and text[at] != ")":
        if text[at] == "\\" and at + 1 < len(text):
            chars.append("\\" + text[at + 1])
            at += 2
            continue
        chars.append(text[at])
        at += 1
    if at >= len(text):
        raise QueryError("INVALID_QUERY", "unbalanced parentheses in the criteria")
    raw = "".join(chars)
    field, _, rest = raw.partition(":")
    operator, _, value = rest.partition(":")
    if not field or not operator or not _:
        raise QueryError("INVALID_QUERY", f"a condition is field:operator:value, not {raw!r}")
    return Condition(field.strip(), operator.strip().lower(), value), at + 1


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


SEARCH_OPERATORS = ("equals", "starts_with", "in", "not_equal")


def check_criteria(node: Condition | Group, field_type: FieldType) -> None:
    if isinstance(node, Group):
        for part in node.parts:
            check_criteria(part, field_type)
        return
    if field_type(node.field) is None:
        raise QueryError("INVALID_QUERY", "invalid field", {"api_name": node.field})
    if node.operator not in SEARCH_OPERATORS:
        raise QueryError("INVALID_QUERY", "invalid operator", {"operator": node.operator})


def matches_criteria(node: Condition | Group, values: Values, field_type: FieldType) -> bool:
    if isinstance(node, Group):
        results = (matches_criteria(part, values, field_type) for part in node.parts)
        return all(results) if node.joiner == "and" else any(results)
    kind = field_type(node.field) or "text"
    stored = values.get(node.field)
    texts = [_text(item) for item in stored] if isinstance(stored, list) else [_text(stored)]
    if node.operator == "in":
        wanted = [_unescape(part) for part in re.split(r"(?<!\\),", node.value)]
        return any(_equal(kind, text, want) for text in texts for want in wanted)
    want = _unescape(node.value)
    if node.operator == "not_equal":
        return not any(_equal(kind, text, want) for text in texts)
    if node.operator == "starts_with":
        if kind == "phone":
            return any(_digits(text).startswith(_digits(want)) for text in texts if want)
        return any(text.casefold().startswith(want.casefold()) for text in texts if want)
    return any(_contains(kind, text, want) for text in texts)


def _contains(kind: str, text: str, want: str) -> bool:
    if not text or not want:
        return False
    if kind == "phone":
        digits = _digits(want)
        return bool(digits) and digits in _digits(text)
    return want.casefold() in text.casefold()


def _equal(kind: str, text: str, want: str) -> bool:
    if kind == "phone":
        return bool(_digits(want)) and _digits(text) == _digits(want)
    return text.casefold() == want.casefold()


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return str(value.get("id") or value.get("name") or "")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ---- COQL ------------------------------------------------------------------------------


@dataclass
class Comparison:
    field: str
    operator: str  # = != > < >= <= like "not like" in "not in" "is null" "is not null"
    value: Any = None


@dataclass
class Boolean:
    joiner: str
    left: Comparison | Boolean
    right: Comparison | Boolean


@dataclass
class Query:
    fields: list[str]
    module: str
    where: Comparison | Boolean
    order_by: list[tuple[str, bool]]  # (field, descending)
    limit: int
    offset: int


_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^'\\]|\\.|'')*')|(?P<number>-?\d+(?:\.\d+)?)"
    r"|(?P<op>!=|>=|<=|=|>|<|\(|\)|,)|(?P<word>[A-Za-z_$][A-Za-z0-9_$.]*))"
)


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    at = 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None or match.end() == at:
            if text[at:].strip():
                raise QueryError("SYNTAX_ERROR", f"unexpected text at {text[at : at + 20]!r}")
            break
        at = match.end()
        kind = match.lastgroup or ""
        value: Any = match.group(kind)
        if kind == "string":
            value = re.sub(r"\\(.)|''", lambda m: m.group(1) or "'", value[1:-1])
        elif kind == "number":
            value = float(value) if "." in value else int(value)
        out.append((kind, value))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.at = 0

    def peek_word(self) -> str:
        if self.at < len(self.tokens) and self.tokens[self.at][0] == "word":
            return str(self.tokens[self.at][1]).lower()
        return ""

    def take(self, kind: str, value: str | None = None) -> Any:
        if self.at >= len(self.tokens):
            raise QueryError("SYNTAX_ERROR", f"the query ends where {value or kind} is expected")
        got_kind, got = self.tokens[self.at]
        if got_kind != kind or (value is not None and str(got).lower() != value):
            raise QueryError("SYNTAX_ERROR", f"{value or kind} expected near {got!r}")
        self.at += 1
        return got

    def is_op(self, value: str) -> bool:
        return self.at < len(self.tokens) and self.tokens[self.at] == ("op", value)

    def query(self) -> Query:
        self.take("word", "select")
        fields = [self.take("word")]
        while self.is_op(","):
            self.take("op", ",")
            fields.append(self.take("word"))
        self.take("word", "from")
        module = self.take("word")
        if self.peek_word() != "where":
            raise QueryError("SYNTAX_ERROR", "a WHERE clause is required")
        self.take("word", "where")
        where = self.condition()
        order: list[tuple[str, bool]] = []
        if self.peek_word() == "order":
            self.take("word", "order")
            self.take("word", "by")
            while True:
                name = self.take("word")
                descending = False
                if self.peek_word() in ("asc", "desc"):
                    descending = self.take("word").lower() == "desc"
                order.append((name, descending))
                if not self.is_op(","):
                    break
                self.take("op", ",")
        limit, offset = 200, 0
        if self.peek_word() == "limit":
            self.take("word", "limit")
            limit = self.take("number")
            if self.is_op(","):
                self.take("op", ",")
                offset, limit = limit, self.take("number")
            elif self.peek_word() == "offset":
                self.take("word", "offset")
                offset = self.take("number")
        if self.at != len(self.tokens):
            raise QueryError("SYNTAX_ERROR", f"unexpected {self.tokens[self.at][1]!r}")
        return Query(fields, module, where, order, int(limit), int(offset))

    def condition(self) -> Comparison | Boolean:
        left = self.term()
        if self.peek_word() not in ("and", "or"):
            return left
        joiner = self.take("word").lower()
        right = self.term()
        if self.peek_word() in ("and", "or"):
            # COQL takes two conditions per level; a third needs parentheses.
            raise QueryError("SYNTAX_ERROR", "more than two criteria need parentheses")
        return Boolean(joiner, left, right)

    def term(self) -> Comparison | Boolean:
        if self.is_op("("):
            self.take("op", "(")
            inner = self.condition()
            self.take("op", ")")
            return inner
        name = self.take("word")
        word = self.peek_word()
        if word == "is":
            self.take("word", "is")
            negated = self.peek_word() == "not"
            if negated:
                self.take("word", "not")
            self.take("word", "null")
            return Comparison(name, "is not null" if negated else "is null")
        if word in ("like", "in", "not"):
            self.take("word")
            operator = word
            if word == "not":
                following = self.take("word").lower()
                if following not in ("like", "in"):
                    raise QueryError("SYNTAX_ERROR", "'not' goes with 'like' or 'in'")
                operator = f"not {following}"
            if operator.endswith("in"):
                return Comparison(name, operator, self.value_list())
            return Comparison(name, operator, self.take("string"))
        if self.at < len(self.tokens) and self.tokens[self.at][0] == "op":
            operator = self.take("op")
            if operator not in ("=", "!=", ">", "<", ">=", "<="):
                raise QueryError("SYNTAX_ERROR", f"operator expected after {name}")
            return Comparison(name, operator, self.scalar())
        raise QueryError("SYNTAX_ERROR", f"operator expected after {name}")

    def scalar(self) -> Any:
        if self.at >= len(self.tokens):
            raise QueryError("SYNTAX_ERROR", "a value is expected")
        kind, value = self.tokens[self.at]
        if kind in ("string", "number"):
            self.at += 1
            return value
        if kind == "word" and str(value).lower() in ("true", "false", "null"):
            self.at += 1
            return {"true": True, "false": False, "null": None}[str(value).lower()]
        raise QueryError("SYNTAX_ERROR", f"a value is expected, not {value!r}")

    def value_list(self) -> list[Any]:
        self.take("op", "(")
        values = [self.scalar()]
        while self.is_op(","):
            self.take("op", ",")
            values.append(self.scalar())
        self.take("op", ")")
        return values


def parse_coql(text: str) -> Query:
    query = _Parser(text).query()
    if len(query.fields) > MAX_COQL_FIELDS:
        raise QueryError("LIMIT_EXCEEDED", f"at most {MAX_COQL_FIELDS} fields can be selected")
    if not 0 < query.limit <= MAX_COQL_LIMIT:
        raise QueryError("LIMIT_EXCEEDED", f"LIMIT goes from 1 to {MAX_COQL_LIMIT}")
    return query


def coql_fields(node: Comparison | Boolean) -> list[str]:
    if isinstance(node, Boolean):
        return coql_fields(node.left) + coql_fields(node.right)
    return [node.field]


def coql_matches(node: Comparison | Boolean, values: Values) -> bool:
    if isinstance(node, Boolean):
        left, right = coql_matches(node.left, values), coql_matches(node.right, values)
        return (left and right) if node.joiner == "and" else (left or right)
    name = node.field.removesuffix(".id")
    stored = values.get(name)
    if isinstance(stored, dict):
        stored = stored.get("id")
    if node.operator == "is null":
        return stored in (None, "", [])
    if node.operator == "is not null":
        return stored not in (None, "", [])
    if node.operator in ("in", "not in"):
        found = any(_same(stored, value) for value in node.value)
        return found if node.operator == "in" else not found
    if node.operator in ("like", "not like"):
        pattern = "^" + ".*".join(re.escape(part) for part in str(node.value).split("%")) + "$"
        hit = stored is not None and re.match(pattern, _text(stored), re.IGNORECASE) is not None
        return hit if node.operator == "like" else not hit
    if node.operator == "=":
        return _same(stored, node.value)
    if node.operator == "!=":
        return not _same(stored, node.value)
    if stored is None:
        return False
    left, right = _comparable(stored), _comparable(node.value)
    try:
        return {
            ">": left > right,
            "<": left < right,
            ">=": left >= right,
            "<=": left <= right,
        }[node.operator]
    except TypeError:
        return False


def _same(stored: Any, value: Any) -> bool:
    if isinstance(stored, list):
        return any(_same(item, value) for item in stored)
    if stored is None or value is None:
        return stored is value
    if isinstance(stored, int | float) and isinstance(value, int | float):
        return float(stored) == float(value)
    return _text(stored).casefold() == _text(value).casefold()


def _comparable(value: Any) -> Any:
    if isinstance(value, int | float):
        return float(value)
    return _text(value)
