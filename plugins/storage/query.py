"""The query language, once for every backend: checked filters and sorts, keyset cursors, and SQL.

Every field a filter or sort names is seen by the SQL through three expressions that each backend's
`Dialect` writes in its own JSON functions, so that all of them compare alike:

- kind:  0 missing, 1 null, 2 boolean, 3 number, 4 string, 5 array or object
- num:   the number as a double (booleans 0/1), else 0
- text:  the string, compared by code point, else ''

None of the three is ever SQL NULL, so NOT, = and < behave without three-valued logic, and a sort on
(kind, num, text) of each field, then the id, is a total order: the cursor is the sort key of the last
record of a page, and the next page starts strictly after it (keyset pagination), which stays right
while rows are inserted or deleted between pages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from upf.storage.v1 import storage_pb2 as pb

from plugins.storage.documents import Limits, check_collection, parse_json_value
from plugins.storage.errors import InvalidArgument

__all__ = ["Condition", "Dialect", "Plan", "SortKey", "Statement", "compile_count", "compile_page", "parse_query"]

_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_MAX_DEPTH = 16
_CURSOR_VERSION = 1

KIND_MISSING, KIND_NULL, KIND_BOOL, KIND_NUMBER, KIND_STRING = 0, 1, 2, 3, 4

_OPS = {
    pb.Filter.OP_EQ: "eq",
    pb.Filter.OP_NE: "ne",
    pb.Filter.OP_LT: "lt",
    pb.Filter.OP_LTE: "lte",
    pb.Filter.OP_GT: "gt",
    pb.Filter.OP_GTE: "gte",
    pb.Filter.OP_IN: "in",
    pb.Filter.OP_PREFIX: "prefix",
    pb.Filter.OP_EXISTS: "exists",
}
_COMPARE = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}

Path = tuple[str, ...]
Scalar = None | bool | int | float | str


@dataclass(frozen=True, slots=True)
class Condition:
    path: Path
    op: str
    value: Any  # a scalar; a list of scalars for "in"; a bool for "exists"


@dataclass(frozen=True, slots=True)
class SortKey:
    path: Path
    descending: bool


@dataclass(frozen=True, slots=True)
class Plan:
    collection: str
    conditions: tuple[Condition, ...]
    sort: tuple[SortKey, ...]
    limit: int  # page size (Query) or at most this many records (StreamQuery, 0: all)
    after: tuple[Any, ...] | None  # the sort key the next record must follow
    include_total: bool
    fingerprint: str  # ties a cursor to the query that made it

    def key_count(self) -> int:
        return 3 * len(self.sort) + 1

    def cursor_after(self, key: Sequence[Any]) -> str:
        payload = json.dumps({"v": _CURSOR_VERSION, "q": self.fingerprint, "k": list(key)}, separators=(",", ":"))
        return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")

    def resumed(self, key: Sequence[Any], limit: int) -> Plan:
        return Plan(self.collection, self.conditions, self.sort, limit, tuple(key), False, self.fingerprint)


def _path(text: str, where: str) -> Path:
    if not text:
        raise InvalidArgument(where, "is empty")
    segments = tuple(text.split("."))
    if len(segments) > _MAX_DEPTH:
        raise InvalidArgument(where, f"{text[:80]!r} is deeper than {_MAX_DEPTH} keys")
    for segment in segments:
        if not _SEGMENT.fullmatch(segment):
            raise InvalidArgument(
                where,
                f"{text[:80]!r} is not a field path: dotted keys of letters, digits and '_', not starting with a digit",
            )
    return segments


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _condition(index: int, message: pb.Filter, limits: Limits) -> Condition:
    where = f"filters[{index}]"
    path = _path(message.field, f"{where}.field")
    op = _OPS.get(message.op)
    if op is None:
        raise InvalidArgument(f"{where}.op", "is not set (eq, ne, lt, lte, gt, gte, in, prefix or exists)")
    if not message.value:
        raise InvalidArgument(f"{where}.value", "is empty (JSON text is expected)")
    value = parse_json_value(message.value, f"{where}.value")
    if op == "in":
        if not isinstance(value, list) or not all(_is_scalar(v) for v in value):
            raise InvalidArgument(f"{where}.value", "in takes a JSON array of scalars")
        if len(value) > limits.max_in_values:
            raise InvalidArgument(f"{where}.value", f"has {len(value)} values; the limit is {limits.max_in_values}")
    elif op == "exists":
        if not isinstance(value, bool):
            raise InvalidArgument(f"{where}.value", "exists takes true or false")
    elif op == "prefix":
        if not isinstance(value, str):
            raise InvalidArgument(f"{where}.value", "prefix takes a string")
    elif op in _COMPARE:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise InvalidArgument(f"{where}.value", f"{op} compares numbers or strings")
    elif not _is_scalar(value):
        raise InvalidArgument(f"{where}.value", f"{op} takes a scalar (null, true, false, a number or a string)")
    return Condition(path, op, value)


def parse_query(request: pb.QueryRequest, limits: Limits, *, streaming: bool) -> Plan:
    """Check a QueryRequest; InvalidArgument names the field at fault."""
    collection = check_collection(request.collection)
    if len(request.filters) > limits.max_filters:
        raise InvalidArgument("filters", f"has {len(request.filters)} filters; the limit is {limits.max_filters}")
    if len(request.sort) > limits.max_sort:
        raise InvalidArgument("sort", f"has {len(request.sort)} fields; the limit is {limits.max_sort}")
    conditions = tuple(_condition(i, f, limits) for i, f in enumerate(request.filters))
    sort = tuple(SortKey(_path(s.field, f"sort[{i}].field"), s.descending) for i, s in enumerate(request.sort))
    if request.limit < 0:
        raise InvalidArgument("limit", "is negative")
    if streaming:
        limit = request.limit
    elif request.limit > limits.max_page:
        raise InvalidArgument("limit", f"is {request.limit}; the limit is {limits.max_page} (StreamQuery has none)")
    else:
        limit = request.limit or limits.default_page
    shape = [collection, [[c.path, c.op, c.value] for c in conditions], [[s.path, s.descending] for s in sort]]
    fingerprint = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]
    plan = Plan(collection, conditions, sort, limit, None, request.include_total, fingerprint)
    if request.cursor:
        plan = Plan(
            collection,
            conditions,
            sort,
            limit,
            _decode_cursor(request.cursor, plan),
            request.include_total,
            fingerprint,
        )
    return plan


def _decode_cursor(cursor: str, plan: Plan) -> tuple[Any, ...]:
    try:
        payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        raise InvalidArgument("cursor", "is not a cursor this service issued") from None
    if not isinstance(payload, dict) or payload.get("v") != _CURSOR_VERSION:
        raise InvalidArgument("cursor", "is not a cursor this service issued")
    if payload.get("q") != plan.fingerprint:
        raise InvalidArgument("cursor", "belongs to another query (the collection, filters and sort must not change)")
    key = payload.get("k")
    if not isinstance(key, list) or len(key) != plan.key_count():
        raise InvalidArgument("cursor", "is not a cursor this service issued")
    for i, value in enumerate(key[:-1]):
        expected: type | tuple[type, ...] = (int,) if i % 3 == 0 else (int, float) if i % 3 == 1 else (str,)
        if isinstance(value, bool) or not isinstance(value, expected):
            raise InvalidArgument("cursor", "is not a cursor this service issued")
    if not isinstance(key[-1], str):
        raise InvalidArgument("cursor", "is not a cursor this service issued")
    return tuple(float(v) if i % 3 == 1 and i < len(key) - 1 else v for i, v in enumerate(key))


class Dialect(Protocol):
    """How one SQL backend spells the parts of the query language."""

    def placeholder(self, index: int) -> str:
        """The index-th (1-based) parameter marker: "$1", "?", "%s"."""

    def kind(self, path: Path) -> str: ...

    def num(self, path: Path) -> str: ...

    def text(self, path: Path) -> str: ...

    def prefix(self, text_sql: str, marker: str, length: int) -> str:
        """True when the string text_sql starts with the parameter `marker`, `length` code points long."""

    def equality_hint(self, path: Path, value: Scalar, param: Callable[[Any], str]) -> str | None:
        """A cheaper condition implied by `path` == value, checked first, or None: PostgreSQL's
        `data @> {...}` (answered by the GIN index), MariaDB's single JSON_VALUE for strings."""

    def text_param(self, marker: str) -> str:
        """A string parameter compared with `text` expressions (MariaDB needs its collation)."""


@dataclass(slots=True)
class Statement:
    """SQL text and its parameters, built left to right (the markers are numbered as they are added)."""

    dialect: Dialect
    sql: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def param(self, value: Any) -> str:
        self.params.append(value)
        return self.dialect.placeholder(len(self.params))

    def text_param(self, value: str) -> str:
        return self.dialect.text_param(self.param(value))

    def add(self, sql: str) -> None:
        self.sql.append(sql)

    @property
    def text(self) -> str:
        return " ".join(self.sql)


def scalar_key(value: Scalar) -> tuple[int, float, str]:
    """(kind, num, text) of a JSON scalar, as the SQL expressions compute it for a stored one."""
    if value is None:
        return KIND_NULL, 0.0, ""
    if isinstance(value, bool):
        return KIND_BOOL, float(value), ""
    if isinstance(value, int | float):
        return KIND_NUMBER, float(value), ""
    return KIND_STRING, 0.0, value


def _equals(statement: Statement, path: Path, value: Scalar) -> str:
    dialect = statement.dialect
    kind, num, text = scalar_key(value)
    parts = [f"{dialect.kind(path)} = {kind}"]
    if kind in (KIND_BOOL, KIND_NUMBER):
        parts.append(f"{dialect.num(path)} = {statement.param(num)}")
    elif kind == KIND_STRING:
        parts.append(f"{dialect.text(path)} = {statement.text_param(text)}")
    return "(" + " AND ".join(parts) + ")"


def _condition_sql(statement: Statement, condition: Condition) -> str:
    dialect, path, op, value = statement.dialect, condition.path, condition.op, condition.value
    if op == "eq":
        # The hint first: AND stops at it for most rows, and an index may answer it.
        hint = dialect.equality_hint(path, value, statement.param)
        return f"({hint} AND {_equals(statement, path, value)})" if hint else _equals(statement, path, value)
    if op == "ne":
        return f"NOT {_equals(statement, path, value)}"
    if op == "in":
        if not value:
            return "1 = 0"
        # Each alternative an EQ, hint included: PostgreSQL ORs the GIN index's answers.
        return "(" + " OR ".join(_condition_sql(statement, Condition(path, "eq", v)) for v in value) + ")"
    if op == "exists":
        return f"{dialect.kind(path)} {'<>' if value else '='} {KIND_MISSING}"
    if op == "prefix":
        starts = dialect.prefix(dialect.text(path), statement.param(value), len(value))
        return f"({dialect.kind(path)} = {KIND_STRING} AND {starts})"
    operator = _COMPARE[op]
    if isinstance(value, str):
        return (
            f"({dialect.kind(path)} = {KIND_STRING} AND {dialect.text(path)} {operator} {statement.text_param(value)})"
        )
    return f"({dialect.kind(path)} = {KIND_NUMBER} AND {dialect.num(path)} {operator} {statement.param(float(value))})"


def nested_document(path: Path, value: Scalar) -> str:
    """The JSON document that holds `value` at `path` and nothing else."""
    document: Any = value
    for segment in reversed(path):
        document = {segment: document}
    return json.dumps(document)


def _where(statement: Statement, table: str, namespace: str, plan: Plan) -> None:
    statement.add(f"FROM {table} WHERE ns = {statement.param(namespace)}")
    statement.add(f"AND collection = {statement.param(plan.collection)}")
    for condition in plan.conditions:
        statement.add(f"AND {_condition_sql(statement, condition)}")


def _sort_columns(dialect: Dialect, plan: Plan) -> list[tuple[str, bool]]:
    columns: list[tuple[str, bool]] = []
    for key in plan.sort:
        columns += [(dialect.kind(key.path), key.descending), (dialect.num(key.path), key.descending)]
        columns.append((dialect.text(key.path), key.descending))
    columns.append(("id", False))
    return columns


def compile_page(dialect: Dialect, table: str, namespace: str, plan: Plan, limit: int) -> Statement:
    """SELECT id, data, version, then the sort key (kind/num/text per field, id), of up to `limit` rows."""
    statement = Statement(dialect)
    columns = _sort_columns(dialect, plan)
    keys = ", ".join(f"{sql} AS k{i}" for i, (sql, _) in enumerate(columns[:-1]))
    statement.add(f"SELECT id, data, version{', ' + keys if keys else ''}")
    _where(statement, table, namespace, plan)
    if plan.after is not None:
        alternatives = []
        for i, (sql, descending) in enumerate(columns):
            tied = [f"{columns[j][0]} = {_key_param(statement, j, plan.after[j])}" for j in range(i)]
            strict = f"{sql} {'<' if descending else '>'} {_key_param(statement, i, plan.after[i])}"
            alternatives.append("(" + " AND ".join([*tied, strict]) + ")")
        statement.add("AND (" + " OR ".join(alternatives) + ")")
    order = ", ".join(
        f"{'k' + str(i) if i < len(columns) - 1 else 'id'}{' DESC' if d else ''}" for i, (_, d) in enumerate(columns)
    )
    statement.add(f"ORDER BY {order} LIMIT {int(limit)}")
    return statement


def _key_param(statement: Statement, index: int, value: Any) -> str:
    # Sort keys are kind (int), num (float), text (str), ..., id: text keys need the text collation.
    if isinstance(value, str):
        return statement.text_param(value)
    return statement.param(value)


def compile_count(dialect: Dialect, table: str, namespace: str, plan: Plan) -> Statement:
    statement = Statement(dialect)
    statement.add("SELECT COUNT(*)")
    _where(statement, table, namespace, plan)
    return statement
