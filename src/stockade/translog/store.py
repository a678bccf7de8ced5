"""The transparency log in the verifier's database (SQLAlchemy 2 Core; SQLite or PostgreSQL).

Three tables, in this module's own ``metadata`` (the Alembic migration 0004 creates the
same ones):

- ``translog_leaves``: ``leaf_index`` -> ``leaf_hash`` (RFC 9162 leaf hash), ``entry``
  (the logged bytes), ``created_at`` (naive UTC);
- ``translog_subtrees``: ``(level, node_index)`` -> ``hash`` of every complete
  power-of-two-aligned subtree above the leaves, written when an append completes it
  (level 0 is ``translog_leaves.leaf_hash``);
- ``translog_state``: one row (``id`` 1) holding the log's ``size``.

An append takes the ``translog_state`` row first (``UPDATE ... SET size = size + n
RETURNING size``: a row lock on PostgreSQL, the write lock on SQLite), so appends from
several processes sharing the database are serialized and each batch gets the next
indices. It reads the O(log n) peaks of the current tree and writes the new leaves and
the subtrees they complete, in one transaction. Roots and proofs are read from O(log n)
stored hashes (``stockade.translog.merkle``).

Nothing is taken from a cache: an append reads the peaks it extends inside its own
transaction, and, given the newest tree head its caller has published (``expect``), proves
in the same query that the stored tree still extends it. A database that lost commits (a
crash with asynchronous commit, a failover, a restore, a lost SQLite WAL) is refused before
anything is written (``LogRolledBack``, ``LogForked``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    CompoundSelect,
    Connection,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    and_,
    bindparam,
    false,
    insert,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy import (
    literal as sql_literal,
)

from stockade.translog import merkle
from stockade.translog.checkpoint import Checkpoint
from stockade.translog.errors import LogCorrupted, LogRangeError, ProofError
from stockade.translog.merkle import NodeId

STATE_ROW = 1

metadata = MetaData()

leaves = Table(
    "translog_leaves",
    metadata,
    # INTEGER PRIMARY KEY is SQLite's rowid: the leaves are the table's own b-tree.
    Column(
        "leaf_index",
        BigInteger().with_variant(Integer(), "sqlite"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("leaf_hash", LargeBinary(32), nullable=False),
    Column("entry", LargeBinary(), nullable=False),
    Column("created_at", DateTime(timezone=False), nullable=False),
)

subtrees = Table(
    "translog_subtrees",
    metadata,
    Column("level", SmallInteger(), primary_key=True, autoincrement=False),
    Column("node_index", BigInteger(), primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
    sqlite_with_rowid=False,
)

state = Table(
    "translog_state",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=False),
    Column("size", BigInteger(), nullable=False),
)


def create_tables(engine: Engine) -> None:
    """Create the log's tables (and its state row) where they are missing. The verifier
    uses its Alembic migrations instead; this is for tools, tests and benchmarks."""
    metadata.create_all(engine)
    with engine.begin() as connection:
        if connection.execute(select(state.c.id).where(state.c.id == STATE_ROW)).first() is None:
            connection.execute(insert(state).values(id=STATE_ROW, size=0))


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("naive datetimes are ambiguous; pass an aware UTC datetime")
    return moment.astimezone(UTC).replace(tzinfo=None)


_SIZE = select(state.c.size).where(state.c.id == STATE_ROW)
# Built once: an append executes them without building or compiling any expression.
_GROW = (
    update(state)
    .where(state.c.id == STATE_ROW)
    .values(size=state.c.size + bindparam("count", type_=BigInteger()))
    .returning(state.c.size)
)
_TOUCH_STATE = update(state).where(state.c.id == STATE_ROW).values(size=state.c.size)
_INSERT_LEAF = insert(leaves)
_INSERT_SUBTREE = insert(subtrees)
_LEAF_HASHES = select(
    sql_literal(0, SmallInteger()), leaves.c.leaf_index, leaves.c.leaf_hash
).where(leaves.c.leaf_index.in_(bindparam("indices", expanding=True)))
_lookup_queries: dict[int, CompoundSelect[*tuple[Any, ...]]] = {}


def _lookup_query(count: int) -> CompoundSelect[*tuple[Any, ...]]:
    """One statement for a set of stored hashes: the leaf hashes (level 0) by an expanding
    ``IN``, ``UNION ALL`` the subtrees by ``(level = ? AND node_index = ?) OR ...`` for
    ``count`` ids (each a primary key lookup on SQLite and PostgreSQL). Built once per
    count, so a lookup builds no expressions and compiles nothing."""
    query = _lookup_queries.get(count)
    if query is None:
        nodes = select(subtrees.c.level, subtrees.c.node_index, subtrees.c.hash).where(
            or_(
                false(),
                *(
                    and_(
                        subtrees.c.level == bindparam(f"l{n}"),
                        subtrees.c.node_index == bindparam(f"i{n}"),
                    )
                    for n in range(count)
                ),
            )
        )
        query = union_all(_LEAF_HASHES, nodes)
        _lookup_queries[count] = query
    return query


def _read_subtrees(connection: Connection, ids: Sequence[NodeId]) -> dict[NodeId, bytes]:
    """The stored hashes of ``ids`` (level 0 from the leaves, the rest from the subtrees),
    in one query."""
    leaf_indices = [index for level, index in ids if level == 0]
    upper = list(dict.fromkeys((level, index) for level, index in ids if level > 0))
    parameters: dict[str, object] = {"indices": leaf_indices}
    for n, (level, index) in enumerate(upper):
        parameters[f"l{n}"] = level
        parameters[f"i{n}"] = index
    rows = connection.execute(_lookup_query(len(upper)), parameters)
    return {(int(level), int(index)): bytes(hashed) for level, index, hashed in rows}


@dataclass(frozen=True)
class TreeHead:
    """A tree of ``size`` entries with root ``root``."""

    size: int
    root: bytes


class LogRolledBack(LogCorrupted):
    """The stored log is smaller than a tree head already published for it."""


class LogForked(LogCorrupted):
    """The stored log does not extend a tree head already published for it."""


def _rolled_back(size: int, expected: TreeHead) -> LogRolledBack:
    return LogRolledBack(
        f"the stored log has {size} entries, but a checkpoint of {expected.size} was "
        "already signed: committed entries were lost (a restore, a failover or a crash with "
        "asynchronous commit)"
    )


def _forked(size: int, expected: TreeHead, why: str) -> LogForked:
    return LogForked(
        f"the stored log of {size} entries does not extend the signed checkpoint of "
        f"{expected.size} (root {expected.root.hex()[:16]}...): it was rewritten ({why})"
    )


@dataclass(frozen=True)
class Appended:
    """What one append did: entries ``start <= i < size`` were added to the tree of
    ``start`` entries with root ``base_root``, making the tree of ``size`` entries with root
    ``root``; ``last_proof`` is the audit path of entry ``size - 1`` in that tree
    (``merkle.verify_inclusion`` checks it against ``root``). ``checked`` is the tree head
    the append proved the stored tree extends (``append_on(expect=)``), if any."""

    start: int
    size: int
    root: bytes
    last_proof: tuple[bytes, ...]
    base_root: bytes = merkle.EMPTY_ROOT
    checked: TreeHead | None = None
    # The old tree's peaks, the new leaves and every subtree they completed: all an audit
    # path of a new entry in the new tree is made of.
    subtrees: Mapping[NodeId, bytes] = field(default_factory=dict, repr=False, compare=False)

    @property
    def indices(self) -> range:
        return range(self.start, self.size)

    def inclusion_proof(self, index: int) -> list[bytes]:
        """The audit path of new entry ``index`` in the tree of ``size``, without a query."""
        if not self.start <= index < self.size:
            raise LogRangeError(f"entry {index} was not appended here ({self.start}..{self.size})")
        return merkle.inclusion_proof(index, self.size, lambda _ids: self.subtrees)


def _read_base(
    connection: Connection, size: int, expect: TreeHead | None
) -> tuple[list[bytes], list[bytes]]:
    """In one query: the peaks of the stored tree of ``size`` leaves (largest first) and,
    when ``expect`` is smaller, the consistency proof from ``expect.size`` to ``size``."""
    peak_ids = merkle.subtree_ids(0, size)
    proof_ids: list[list[NodeId]] = []
    if expect is not None and 0 < expect.size < size:
        proof_ids = [
            merkle.subtree_ids(begin, end)
            for begin, end in merkle.consistency_ranges(expect.size, size)
        ]
    wanted = peak_ids + [node for ids in proof_ids for node in ids]
    found = _read_subtrees(connection, wanted) if wanted else {}
    missing = [node for node in wanted if node not in found]
    if missing:
        raise LogCorrupted(
            f"stored subtree hash missing at size {size}: level {missing[0][0]} "
            f"index {missing[0][1]}"
        )
    peaks = [found[node] for node in peak_ids]
    proof = [merkle.fold_right([found[node] for node in ids]) for ids in proof_ids]
    return peaks, proof


def check_extends(size: int, root: bytes, expect: TreeHead, proof: Sequence[bytes]) -> None:
    """``LogRolledBack`` or ``LogForked`` unless the tree of ``size`` entries with ``root``
    extends ``expect`` (``proof``: the consistency proof between them)."""
    if size < expect.size:
        raise _rolled_back(size, expect)
    try:
        merkle.verify_consistency(expect.size, size, expect.root, root, proof)
    except ProofError as error:
        raise _forked(size, expect, str(error)) from None


def lock_state_row(connection: Connection) -> None:
    """Take the log's state row in the caller's transaction without changing it: a row lock
    on PostgreSQL, the database's write lock on SQLite (where a transaction that will write
    takes it before its first read, so that read sees the newest commit)."""
    connection.execute(_TOUCH_STATE)


class MerkleLog:
    """An append-only RFC 9162 Merkle log stored in ``engine``'s database."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self.engine = engine
        self.clock = clock

    # -- reading ----------------------------------------------------------------------

    @staticmethod
    def _size(connection: Connection) -> int:
        size = connection.execute(_SIZE).scalar_one_or_none()
        if size is None:
            raise LogCorrupted(
                "translog_state has no row: the log's tables were not created "
                "(run the verifier's migrations or stockade.translog.store.create_tables)"
            )
        return int(size)

    def size(self) -> int:
        with self.engine.connect() as connection:
            return self._size(connection)

    def _reader(
        self, connection: Connection
    ) -> Callable[[Sequence[NodeId]], Mapping[NodeId, bytes]]:
        return lambda ids: _read_subtrees(connection, ids)

    def _resolve(self, connection: Connection, size: int | None, what: str) -> tuple[int, int]:
        current = self._size(connection)
        if size is None:
            return current, current
        if not 0 <= size <= current:
            raise LogRangeError(f"{what}: tree size {size} is not in a log of {current} entries")
        return size, current

    def root(self, size: int | None = None) -> bytes:
        """The root hash of the first ``size`` entries (default: all of them)."""
        with self.engine.connect() as connection:
            size, _ = self._resolve(connection, size, "root")
            return merkle.root_hash(size, self._reader(connection))

    def head(self) -> tuple[int, bytes]:
        """The current size and its root hash, read together."""
        with self.engine.connect() as connection:
            size = self._size(connection)
            return size, merkle.root_hash(size, self._reader(connection))

    def checkpoint(self, origin: str, extensions: Sequence[str] = ()) -> Checkpoint:
        """The current tree head as a checkpoint body of log ``origin`` (sign it with
        ``stockade.translog.checkpoint.sign_checkpoint``)."""
        size, root = self.head()
        return Checkpoint(origin, size, root, tuple(extensions))

    def entry(self, index: int) -> bytes:
        return self.entries(index, index + 1)[0]

    def entries(self, start: int, end: int) -> list[bytes]:
        """The entries with indices ``start <= i < end``, in order."""
        with self.engine.connect() as connection:
            size = self._size(connection)
            if not 0 <= start <= end <= size:
                raise LogRangeError(f"entries [{start}, {end}) are not in a log of {size} entries")
            rows = connection.execute(
                select(leaves.c.leaf_index, leaves.c.entry)
                .where(leaves.c.leaf_index >= start, leaves.c.leaf_index < end)
                .order_by(leaves.c.leaf_index)
            ).all()
        if len(rows) != end - start:
            raise LogCorrupted(f"entries [{start}, {end}): only {len(rows)} stored")
        return [bytes(entry) for _, entry in rows]

    def leaf_hashes(self, start: int, end: int) -> list[bytes]:
        """The RFC 9162 leaf hashes of entries ``start <= i < end``."""
        with self.engine.connect() as connection:
            size = self._size(connection)
            if not 0 <= start <= end <= size:
                raise LogRangeError(
                    f"leaf hashes [{start}, {end}) are not in a log of {size} entries"
                )
            rows = connection.execute(
                select(leaves.c.leaf_hash)
                .where(leaves.c.leaf_index >= start, leaves.c.leaf_index < end)
                .order_by(leaves.c.leaf_index)
            ).all()
        return [bytes(hashed) for (hashed,) in rows]

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path of entry ``index`` in the tree of ``size`` entries (default: the
        current size); O(log n) stored hashes, at most three queries."""
        with self.engine.connect() as connection:
            size, _ = self._resolve(connection, size, "inclusion proof")
            if not 0 <= index < size:
                raise LogRangeError(
                    f"inclusion proof: entry {index} is not in a tree of {size} entries"
                )
            return merkle.inclusion_proof(index, size, self._reader(connection))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """The proof that the tree of ``new_size`` entries (default: current) extends the
        tree of ``old_size`` entries."""
        with self.engine.connect() as connection:
            new_size, _ = self._resolve(connection, new_size, "consistency proof")
            if not 0 <= old_size <= new_size:
                raise LogRangeError(
                    f"consistency proof: old size {old_size} is not between 0 and {new_size}"
                )
            return merkle.consistency_proof(old_size, new_size, self._reader(connection))

    def extension(self, expect: TreeHead | None) -> tuple[TreeHead, list[bytes]]:
        """The current head, and the consistency proof from ``expect`` to it, read together;
        ``LogRolledBack`` when the stored log is smaller than ``expect``."""
        with self.engine.connect() as connection:
            size = self._size(connection)
            start = 0 if expect is None else expect.size
            if size < start:
                assert expect is not None
                raise _rolled_back(size, expect)
            peaks, proof = _read_base(connection, size, expect)
        return TreeHead(size, merkle.fold_right(peaks) if peaks else merkle.EMPTY_ROOT), proof

    def check_newest(self) -> int:
        """Read the newest stored entry and check it against its stored leaf hash (and the
        state row against the leaves): the log's newest rows are readable and agree. The
        log's size."""
        with self.engine.connect() as connection:
            size = self._size(connection)
            if size == 0:
                return 0
            row = connection.execute(
                select(leaves.c.leaf_hash, leaves.c.entry).where(leaves.c.leaf_index == size - 1)
            ).first()
            beyond = connection.execute(
                select(leaves.c.leaf_index).where(leaves.c.leaf_index >= size).limit(1)
            ).first()
        if row is None:
            raise LogCorrupted(f"the log's size is {size}, but entry {size - 1} is not stored")
        if merkle.leaf_hash(bytes(row.entry)) != bytes(row.leaf_hash):
            raise LogCorrupted(f"entry {size - 1} does not hash to its stored leaf hash")
        if beyond is not None:
            raise LogCorrupted(
                f"the log's size is {size}, but entry {beyond.leaf_index} is stored beyond it"
            )
        return size

    # -- appending --------------------------------------------------------------------

    def append(self, entry: bytes, *, now: datetime | None = None) -> int:
        """Append one entry; its index."""
        return self.append_many([entry], now=now)[0]

    def append_many(self, entries: Sequence[bytes], *, now: datetime | None = None) -> list[int]:
        """Append ``entries`` in one transaction; their indices, consecutive and in order.
        Concurrent appenders (threads or processes sharing the database) are serialized
        on the state row."""
        if not entries:
            return []
        with self.engine.begin() as connection:
            appended = self.append_on(connection, entries, now=now)
        return list(appended.indices)

    def append_on(
        self,
        connection: Connection,
        entries: Sequence[bytes],
        *,
        now: datetime | None = None,
        expect: TreeHead | None = None,
    ) -> Appended:
        """Append ``entries`` inside the caller's transaction on ``connection``, so they are
        logged exactly when whatever else that transaction writes commits (and not at all if
        it rolls back). The state row stays locked until the caller's transaction ends: append
        last, and commit soon.

        Returns the new head and the audit path of the last new entry in it, computed from
        the O(log n) hashes the append reads anyway: signing a checkpoint for the entry and
        proving its inclusion need no further query.

        ``expect`` is a tree head already published for this log (the newest signed
        checkpoint): the stored tree this append extends must be it or extend it, which the
        same query that reads the peaks proves. Otherwise nothing is written and
        ``LogRolledBack`` (the stored log is smaller) or ``LogForked`` (it differs) is raised;
        the caller's transaction must then roll back."""
        if not entries:
            raise LogRangeError("nothing to append: no entries given")
        hashes = [merkle.leaf_hash(entry) for entry in entries]
        created = _naive_utc(now if now is not None else self.clock())
        count = len(entries)
        new_size = connection.execute(_GROW, {"count": count}).scalar_one_or_none()
        if new_size is None:
            raise LogCorrupted(
                "translog_state has no row: the log's tables were not created "
                "(run the verifier's migrations or stockade.translog.store.create_tables)"
            )
        old_size = int(new_size) - count
        if expect is not None and old_size < expect.size:
            raise _rolled_back(old_size, expect)
        old_peaks, proof = _read_base(connection, old_size, expect)
        base_root = merkle.fold_right(old_peaks) if old_peaks else merkle.EMPTY_ROOT
        if expect is not None:
            check_extends(old_size, base_root, expect, proof)
        # The last entry's audit path in the new tree is the complete subtrees before it,
        # smallest first (it is the rightmost leaf: every left sibling on its way up is one).
        rows, before_last = merkle.compact_append(old_size, old_peaks, hashes[:-1])
        last_rows, peaks = merkle.compact_append(old_size + count - 1, before_last, hashes[-1:])
        rows += last_rows
        connection.execute(
            _INSERT_LEAF,
            [
                {
                    "leaf_index": old_size + offset,
                    "leaf_hash": hashed,
                    "entry": entry,
                    "created_at": created,
                }
                for offset, (entry, hashed) in enumerate(zip(entries, hashes, strict=True))
            ],
        )
        if rows:
            connection.execute(
                _INSERT_SUBTREE,
                [
                    {"level": level, "node_index": index, "hash": hashed}
                    for level, index, hashed in rows
                ],
            )
        subtrees: dict[NodeId, bytes] = dict(
            zip(merkle.subtree_ids(0, old_size), old_peaks, strict=True)
        )
        subtrees.update(((0, old_size + offset), hashed) for offset, hashed in enumerate(hashes))
        subtrees.update(((level, index), hashed) for level, index, hashed in rows)
        return Appended(
            start=old_size,
            size=old_size + count,
            root=merkle.fold_right(peaks),
            last_proof=tuple(reversed(before_last)),
            base_root=base_root,
            checked=expect,
            subtrees=subtrees,
        )
