"""How the tables would be placed on a Citus cluster (docs/scale-out.md), and a check, with
PostgreSQL's own parser (pglast), that a statement runs on one shard group or is joined only
along co-located distribution columns.

A statement passes when every distributed table it reads or writes is either pinned — its
distribution column equals a parameter or a constant (``= $1``, ``= ANY($1)``, ``IN (...)``) —
or joined on that column to a pinned table of the same co-location group (a correlated subquery
counts as a join with the outer query), and when no two distributed tables of different groups
(or joined on other columns) meet in one query. Each CTE and subquery is checked on its own:
Citus plans a CTE as a query of its own and feeds its result to the rest. Coordinator-local
tables may be joined only with reference tables.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

from pglast import ast, enums, parse_sql, parser

from prefs.pos import service as pos

T = TypeVar("T")
CUSTOMER = "customer_id"
# the tables that hold one customer's rows, distributed by customer_id (test_schema_citus_ready
# checks the schema keys each of them by it)
CUSTOMER_OWNED = frozenset(
    {
        "customers",
        "customer_keys",
        "preferences",
        "consents",
        "consent_ledger",
        "access_log",
        "reorders",
        "partner_preference_refs",
        "customer_checkout_codes",
    }
)
# table -> (distribution column, co-location group)
DISTRIBUTED: dict[str, tuple[str, str]] = {
    **{table: (CUSTOMER, "customer") for table in CUSTOMER_OWNED},
    "customer_subjects": ("subject_hash", "subject"),
    "erasures": ("subject_hash", "subject"),
    "card_index": ("card_hash", "card"),
    "card_claims": ("card_hash", "card"),
    "checkout_codes": ("code_hash", "code"),
    "partner_refs": ("partner_id", "partner"),
    "idempotency_keys": ("owner", "owner"),
    "feed_entries": ("recipient", "recipient"),
    "feed_positions": ("recipient", "recipient"),
    "key_misses": ("key_hash", "key"),
    "store_misses": ("store", "store"),
}
REFERENCE = frozenset(
    {
        "partners",
        "credentials",
        "stores",
        "catalogue_products",
        "catalogue_state",
        "catalogue_moves",  # SKUs whose status an import moved, until demand follows (0018)
        "retired_master_keys",
        "feed_numbering",  # one row: the numbering the feeds' counters start in (0015)
    }
)
# Pseudonymous counts and their releases: small, written and read only by the insights side,
# never joined with customer data; they stay on the coordinator (Citus local tables).
COORDINATOR = frozenset(
    {
        "demand_groups",
        "demand_contributions",
        "demand_releases",
        "demand_release_groups",
        "insights_reads",
    }
)
ALL_TABLES = DISTRIBUTED.keys() | REFERENCE | COORDINATOR | {"alembic_version"}


CARRIED = "@"  # names the value a CTE's column carries, in the join graph
_STATEMENT: ContextVar[ast.Node] = ContextVar("statement")  # the statement being checked


def fingerprint(sql: str) -> str:
    """The same for statements that differ only in layout and constants."""
    return str(parser.fingerprint(sql))


@dataclass
class _Scope:
    """One query level: its tables by alias, its AND-ed conditions, the level it is nested in."""

    tables: dict[str, str] = field(default_factory=dict)  # alias -> table
    others: set[str] = field(default_factory=set)  # aliases of CTEs, subqueries, functions
    # columns of a CTE that carry a distribution column pinned to a value inside it: alias ->
    # {column: co-location group}
    carried: dict[str, dict[str, str]] = field(default_factory=dict)
    conditions: list[ast.Node] = field(default_factory=list)
    outer: _Scope | None = None


def _catalog(table: ast.RangeVar) -> bool:
    """PostgreSQL's own catalogue (asyncpg reads it to learn types): on every node."""
    return table.schemaname in ("pg_catalog", "information_schema") or (
        table.schemaname is None and table.relname.startswith("pg_")
    )


def _conjuncts(node: ast.Node | None) -> list[ast.Node]:
    if node is None:
        return []
    if isinstance(node, ast.BoolExpr) and node.boolop == enums.BoolExprType.AND_EXPR:
        return [part for arg in node.args for part in _conjuncts(arg)]
    return [node]


def _column(node: ast.Node) -> tuple[str | None, str] | None:
    while isinstance(node, ast.TypeCast):
        node = node.arg
    if isinstance(node, ast.ColumnRef) and all(isinstance(f, ast.String) for f in node.fields):
        names = [f.sval for f in node.fields]
        return (names[-2] if len(names) > 1 else None, names[-1])
    return None


def _is_value(node: ast.Node) -> bool:
    while isinstance(node, ast.TypeCast):
        node = node.arg
    if isinstance(node, ast.ParamRef | ast.A_Const):
        return True
    if isinstance(node, ast.A_ArrayExpr):
        return all(_is_value(element) for element in node.elements or ())
    return False


class Checker:
    """Collects what keeps a statement from running on one shard group."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def statement(
        self, node: ast.Node, outer: _Scope | None, ctes: dict[str, dict[str, str]]
    ) -> dict[str, str] | None:
        """Check a statement; for a plain SELECT, its output columns that carry a pinned
        distribution column."""
        if isinstance(node, ast.RawStmt):
            node = node.stmt
        if isinstance(node, ast.SelectStmt):
            return self._select(node, outer, ctes)
        elif isinstance(node, ast.UpdateStmt | ast.DeleteStmt | ast.InsertStmt):
            self._write(node, outer, ctes)
        elif isinstance(node, ast.ExplainStmt):
            self.statement(node.query, outer, ctes)
        else:
            # anything else (BEGIN, SET ...) must name no table: one it does not take apart
            # (MERGE, CREATE TABLE AS, COPY, DECLARE ...) is not let through unread
            named = sorted({t.relname for t in _find_tables(node) if not _catalog(t)})
            if named:
                self.problems.append(
                    f"{type(node).__name__} on {', '.join(named)} is not checked: "
                    "write it as SELECT, INSERT, UPDATE or DELETE"
                )
        return None

    def _with(
        self, clause: ast.WithClause | None, outer: _Scope | None, ctes: dict[str, dict[str, str]]
    ) -> dict[str, dict[str, str]]:
        """Check each CTE; the CTEs in force after them, with the pinned columns each carries
        (a CTE referenced once is inlined, so a join on such a column stays on one shard)."""
        names = dict(ctes)
        for cte in clause.ctes if clause else ():
            if clause is not None and clause.recursive:
                names[cte.ctename] = {}
            carried = self.statement(cte.ctequery, outer, names) or {}
            names[cte.ctename] = carried if _inlined(cte, clause) else {}
        return names

    def _select(
        self, node: ast.SelectStmt, outer: _Scope | None, ctes: dict[str, dict[str, str]]
    ) -> dict[str, str] | None:
        ctes = self._with(node.withClause, outer, ctes)
        if node.op != enums.SetOperation.SETOP_NONE:
            self.statement(node.larg, outer, ctes)
            self.statement(node.rarg, outer, ctes)
            return None
        scope = _Scope(outer=outer)
        for item in node.fromClause or ():
            self._from(item, scope, ctes)
        scope.conditions += _conjuncts(node.whereClause)
        # every subquery outside FROM and WITH (the where clause, select list, HAVING, ORDER BY,
        # GROUP BY, LIMIT, VALUES ...)
        self._sublinks(_parts(node, "fromClause", "withClause", "larg", "rarg"), scope, ctes)
        pinned = self._judge(scope)
        carried = {}
        for target in node.targetList or ():
            ref = _column(target.val) if isinstance(target, ast.ResTarget) else None
            here = self._resolve(scope, ref) if ref else None
            if ref is None or here is None or here[0] is not scope:
                continue
            if here[1] in pinned:
                table = scope.tables[here[1]]
                if DISTRIBUTED[table][0] == ref[1]:
                    carried[target.name or ref[1]] = DISTRIBUTED[table][1]
            elif here[1] in scope.carried and ref[1] in scope.carried[here[1]]:
                carried[target.name or ref[1]] = scope.carried[here[1]][ref[1]]
        return carried

    def _write(self, node: ast.Node, outer: _Scope | None, ctes: dict[str, dict[str, str]]) -> None:
        ctes = self._with(node.withClause, outer, ctes)
        scope = _Scope(outer=outer)
        self._from(node.relation, scope, ctes)
        if isinstance(node, ast.InsertStmt):
            if node.selectStmt is not None:  # VALUES too: a subquery in them is checked
                self.statement(node.selectStmt, outer, ctes)
            # ON CONFLICT and RETURNING
            self._sublinks(_parts(node, "relation", "selectStmt", "withClause"), scope, ctes)
            return  # the rows inserted name their own distribution column
        extra = node.fromClause if isinstance(node, ast.UpdateStmt) else node.usingClause
        for item in extra or ():
            self._from(item, scope, ctes)
        scope.conditions += _conjuncts(node.whereClause)
        # the where clause, SET and RETURNING
        self._sublinks(
            _parts(node, "relation", "fromClause", "usingClause", "withClause"), scope, ctes
        )
        self._judge(scope)

    def _from(self, item: ast.Node, scope: _Scope, ctes: dict[str, dict[str, str]]) -> None:
        if isinstance(item, ast.RangeVar):
            alias = item.alias.aliasname if item.alias else item.relname
            if item.relname in ctes or _catalog(item):
                scope.others.add(alias)
                if ctes.get(item.relname):
                    scope.carried[alias] = ctes[item.relname]
            else:
                scope.tables[alias] = item.relname
        elif isinstance(item, ast.JoinExpr):
            self._from(item.larg, scope, ctes)
            self._from(item.rarg, scope, ctes)
            scope.conditions += _conjuncts(item.quals)
            self._sublinks([item.quals], scope, ctes)
        elif isinstance(item, ast.RangeSubselect):
            self.statement(item.subquery, scope if item.lateral else scope.outer, ctes)
            if item.alias:
                scope.others.add(item.alias.aliasname)
        elif isinstance(item, ast.RangeFunction) and item.alias:
            scope.others.add(item.alias.aliasname)

    def _sublinks(
        self, nodes: Iterable[object], scope: _Scope, ctes: dict[str, dict[str, str]]
    ) -> None:
        """Check each subquery in ``nodes`` (not those nested deeper) as a level of its own."""
        for sub in _find_sublinks(nodes):
            self.statement(sub.subselect, scope, ctes)

    def _resolve(self, scope: _Scope, ref: tuple[str | None, str]) -> tuple[_Scope, str] | None:
        """The level and alias a column reference belongs to (an unqualified column: the one
        table of its level, or the distributed table whose distribution column it names)."""
        qualifier, name = ref
        level: _Scope | None = scope
        while level is not None:
            if qualifier is not None:
                if qualifier in level.tables:
                    return level, qualifier
                if qualifier in level.others:
                    return None
            else:
                if len(level.tables) == 1 and not level.others:
                    return level, next(iter(level.tables))
                owners = [
                    a for a, t in level.tables.items() if DISTRIBUTED.get(t, ("",))[0] == name
                ]
                if len(owners) == 1:
                    return level, owners[0]
                if level.tables or level.others:
                    return None
            level = level.outer
        return None

    def _carried(self, scope: _Scope, ref: tuple[str | None, str]) -> tuple[str, str] | None:
        """For a CTE's column that carries a pinned distribution column: a name for its value
        and the group it pins."""
        qualifier, name = ref
        level: _Scope | None = scope
        while level is not None:
            for alias, columns in level.carried.items():
                if (qualifier is None or qualifier == alias) and name in columns:
                    return f"{CARRIED}{alias}.{name}", columns[name]
            level = level.outer
        return None

    def _judge(self, scope: _Scope) -> set[str]:
        """Record what is wrong with one level; the aliases pinned to one shard in it."""
        spread = {a: t for a, t in scope.tables.items() if t in DISTRIBUTED}
        local = {a: t for a, t in scope.tables.items() if t in COORDINATOR}
        unknown = [t for t in scope.tables.values() if t not in ALL_TABLES]
        for table in unknown:
            self.problems.append(f"{table} is in no list of docs/scale-out.md")
        if local and spread:
            self.problems.append(
                f"joins coordinator-local {sorted(local.values())} with distributed "
                f"{sorted(spread.values())}"
            )
        pinned: set[str] = set()
        links: list[tuple[str, str]] = []
        for condition in scope.conditions:
            for alias, other in self._pins(scope, condition):
                if other is None:
                    pinned.add(alias)
                else:
                    links.append((alias, other))
        # co-located joins: both sides the distribution column of the same group (or the same
        # value a CTE carries)
        groups = {alias: {alias} for alias in spread}
        for left, right in links:
            if right.startswith(CARRIED):
                pinned.add(right)
                groups.setdefault(right, {right})
            if left in groups and right in groups:
                merged = groups[left] | groups[right]
                for alias in merged:
                    groups[alias] = merged
        components = {frozenset(g) for g in groups.values() if g & spread.keys()}
        for component in components:
            if not component & pinned:
                names = sorted(spread[a] for a in component & spread.keys())
                columns = sorted({DISTRIBUTED[spread[a]][0] for a in component & spread.keys()})
                self.problems.append(
                    f"{' + '.join(names)} read without {'/'.join(columns)} equal to a value: "
                    "every shard"
                )
        if len(components) > 1:
            self.problems.append(
                "joins distributed tables that are not co-located on their distribution column: "
                + " | ".join(
                    sorted(
                        " + ".join(sorted(spread[a] for a in c & spread.keys())) for c in components
                    )
                )
            )
        return {
            alias for component in components if component & pinned for alias in component
        } & spread.keys()

    def _pins(self, scope: _Scope, condition: ast.Node) -> list[tuple[str, str | None]]:
        """(alias, None) for a distribution column pinned to a value in ``condition``, (alias,
        alias2) for two of one group joined on it; an outer level's pinned-or-joined table
        counts as a value (the subquery runs next to it)."""
        if not isinstance(condition, ast.A_Expr) or not condition.name:
            return []
        operator = condition.name[-1].sval
        kind = condition.kind
        if operator != "=" or kind not in (
            enums.A_Expr_Kind.AEXPR_OP,
            enums.A_Expr_Kind.AEXPR_OP_ANY,
            enums.A_Expr_Kind.AEXPR_IN,
        ):
            return []
        sides = [condition.lexpr, condition.rexpr]
        found: list[tuple[str, str | None]] = []
        for this, that in (sides, sides[::-1]):
            ref = _column(this)
            if ref is None:
                continue
            here = self._resolve(scope, ref)
            if here is None or here[0] is not scope:
                continue
            alias = here[1]
            table = scope.tables[alias]
            if table not in DISTRIBUTED or DISTRIBUTED[table][0] != ref[1]:
                continue
            values = that if isinstance(that, list | tuple) else [that]
            if all(_is_value(v) for v in values):
                found.append((alias, None))
                continue
            other = _column(that) if kind == enums.A_Expr_Kind.AEXPR_OP else None
            carrier = self._carried(scope, other) if other is not None else None
            if carrier is not None and carrier[1] == DISTRIBUTED[table][1]:
                found.append((alias, carrier[0]))  # pinned, to the same value as the CTE's
                continue
            there = self._resolve(scope, other) if other else None
            if other is None or there is None:
                continue
            level, other_alias = there
            other_table = level.tables[other_alias]
            if other_table not in DISTRIBUTED or DISTRIBUTED[other_table] != (
                other[1],
                DISTRIBUTED[table][1],
            ):
                continue
            found.append((alias, None) if level is not scope else (alias, other_alias))
        return found


def _inlined(cte: ast.CommonTableExpr, clause: ast.WithClause) -> bool:
    """Whether PostgreSQL plans ``cte`` inside the query (NOT MATERIALIZED, or used once and
    not MATERIALIZED): then a column it carries keeps its equality to the value it was pinned
    to, and the tables joined on it are pruned to the same shard."""
    if cte.ctematerialized == enums.CTEMaterialize.CTEMaterializeNever:
        return True
    if cte.ctematerialized == enums.CTEMaterialize.CTEMaterializeAlways or clause.recursive:
        return False
    uses = 0

    def visit(node: object) -> None:
        nonlocal uses
        if isinstance(node, ast.RangeVar) and node.relname == cte.ctename:
            uses += 1
        elif isinstance(node, list | tuple):
            for item in node:
                visit(item)
        elif isinstance(node, ast.Node):
            for name in node:
                visit(getattr(node, name))

    visit(_STATEMENT.get())
    return uses <= 1


def _parts(node: ast.Node, *leaving: str) -> list[object]:
    """The parts of ``node`` but those named."""
    return [getattr(node, name) for name in node if name not in leaving]


def _find(node: object, kind: type[T], into: tuple[type, ...] = ()) -> list[T]:
    """Every ``kind`` node within ``node`` (a node, or a list of them), not looking inside nodes
    of the types ``into`` names."""
    found: list[T] = []

    def visit(node: object) -> None:
        if isinstance(node, kind):
            found.append(node)
        elif isinstance(node, list | tuple):
            for item in node:
                visit(item)
        elif isinstance(node, ast.Node) and not isinstance(node, into):
            for name in node:
                visit(getattr(node, name))

    visit(node)
    return found


def _find_tables(node: object) -> list[ast.RangeVar]:
    return _find(node, ast.RangeVar)


def _find_sublinks(nodes: Iterable[object]) -> list[ast.SubLink]:
    """The subqueries of ``nodes``, not those nested in a query of their own."""
    return _find(list(nodes), ast.SubLink, into=(ast.SelectStmt,))


def problems(sql: str) -> list[str]:
    """What keeps ``sql`` from being single-shard or co-located on the cluster ([] when none)."""
    try:
        statements = parse_sql(sql)
    except parser.ParseError as error:
        return [f"does not parse: {error}"]
    checker = Checker()
    for statement in statements:
        token = _STATEMENT.set(statement)
        try:
            checker.statement(statement, None, {})
        finally:
            _STATEMENT.reset(token)
    return checker.problems


# Statements that reach every shard on purpose, each with why that is acceptable (docs/scale-out.md
# lists the same): fingerprint -> (where, why). A fingerprint ignores layout and constants; any
# other change to the statement makes it new, and the check fails until it is looked at again.
ERASURE = "erasure, once in a customer's life: Citus runs it on every shard in one transaction"
CARD_CHANGE = "a card change, a few a year per customer (rate-limited): a multi-shard delete"
REUNITE = (
    "reuniting one subject's accounts after an index key version came back (an operator's "
    "doing, rare): the sign-in reads and moves them across shards once"
)
EXPORT = "the customer's export, on request and rate-limited: a multi-shard read"
PURGE = "the purge job, in the background: multi-shard deletes by an indexed time"
EXPIRY = "the expiry job, in the background: a multi-shard read of consents due to expire"
ALLOWED: dict[str, tuple[str, str]] = {
    "6c15d95207c54951": ("rights/service.py SHRED card_index", ERASURE),
    "9002078e2ae4a576": ("rights/service.py SHRED card_claims", ERASURE),
    "3d6b833dba8fe6ce": ("rights/service.py TOMBSTONES", ERASURE),
    "073137893f326809": ("rights/service.py SHRED customer_subjects", ERASURE),
    "701f360fb250fd7f": ("rights/service.py SHRED checkout_codes", ERASURE),
    "9095ab3b6146b751": (
        "rights/service.py SHRED partner_refs; customers/service.py DISSOLVE",
        ERASURE + "; reuniting accounts is rarer still",
    ),
    "df14ccce54a80ffb": ("rights/service.py SHRED idempotency_keys", ERASURE),
    "ede9d93c13c7eba3": ("customers/service.py ACCOUNTS", REUNITE),
    "1372538fdfaaa3d7": ("customers/service.py MOVE_SUBJECTS", REUNITE),
    "70650350924c88d7": ("cards/service.py: a card's other claims end", CARD_CHANGE),
    "04758aa0886dccf3": ("cards/service.py: a card's other holder loses it", CARD_CHANGE),
    "01f3eca267f3cf2d": ("rights/service.py REFS (export)", EXPORT),
    "a1f222e48bdf84e6": ("rights/service.py CODES (export)", EXPORT),
    "a3fddb80d5e4137a": ("consents/service.py expire_due", EXPIRY),
    "4084a82b0c567a5a": ("retention/service.py CODES", PURGE),
    "7fdb7518aff078d1": ("idempotency.py purge_expired", PURGE),
    "786cae1a87260695": ("retention/service.py ACCESS_LOG", PURGE),
    "92fea93882eaaed0": ("retention/service.py ERASED_REORDERS", PURGE),
    "eb2ff7d9955fe315": ("throttle.py: ended key windows", PURGE),
    "5a73a56d43f93324": ("throttle.py: ended store windows", PURGE),
    "c830018aa0e6e2ab": (
        "throttle.py: the miss windows written back",
        "the lookup's miss counts, written back in batches by group commit off the request: one "
        "statement for many keys and stores, which Citus runs on the shards holding them",
    ),
    "0fd7df8466a08c2c": (
        "stores/service.py STILL_OPEN (prefs stores close)",
        "an operator command, rare: a multi-shard count of the store's open reorders",
    ),
    "d7771ea454e69749": (
        "insights/service.py KEEPERS (a catalogue import's recount of demand)",
        "a catalogue import that moved statuses, in the background: one multi-shard read of "
        "preferences by their SKU index, joined to their grant on customer_id on each shard; "
        "each customer found is recounted by router statements",
    ),
}
# Statements on paths customers or tills wait for that would leave one shard group: the change
# each needs before the service runs on a cluster (docs/scale-out.md, "Before a cluster"), by
# fingerprint -> (where, the change). None today: the till's lookup, the last, was split into
# router statements (issue 20). A new one is listed here only with the change it needs.
KNOWN_GAPS: dict[str, tuple[str, str]] = {}
# Statements the service sends only on one PostgreSQL (PREFS_DATABASE_LAYOUT=single), never on a
# cluster: there the till's lookup is ROUTE and LOOKUP_ROUTED instead of the one statement
# (LOOKUP, or LOOKUP_CARDS for a batch of cards only), which reads the key's and store's misses
# and the customer's rows without their distribution columns pinned (test_cluster_readiness
# checks that it still does: else the setting would be needless).
# The suite sends both layouts' statements, whatever PREFS_TEST_LAYOUT says.
SINGLE_NODE_ONLY = frozenset({pos.LOOKUP, pos.LOOKUP_CARDS})


def on_a_cluster(statements: Iterable[str]) -> list[str]:
    """``statements`` but those a service on a cluster does not send (SINGLE_NODE_ONLY)."""
    return [sql for sql in statements if sql not in SINGLE_NODE_ONLY]


def report(statements: Iterable[str]) -> list[str]:
    """One line per statement neither single-shard, co-located nor allowed."""
    found = []
    for sql in statements:
        wrong = problems(sql)
        if wrong and fingerprint(sql) not in ALLOWED and fingerprint(sql) not in KNOWN_GAPS:
            found.append(
                f"{fingerprint(sql)} {' '.join(sql.split())[:300]}\n    -> {'; '.join(wrong)}"
            )
    return found
