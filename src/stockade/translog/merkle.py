"""RFC 9162 Merkle trees: hashing (2.1.1), inclusion proofs (2.1.3) and consistency
proofs (2.1.4), generated from stored subtree hashes and verified from nothing but the
proof.

Pure: no I/O. A log stores, for each complete power-of-two-aligned subtree, its hash,
addressed by ``(level, index)``: the subtree at level ``l`` and index ``i`` covers leaves
``[i * 2**l, (i + 1) * 2**l)`` (level 0 is the leaf hashes themselves). Appending leaf
``n`` closes the subtrees ending at ``n + 1`` (``compact_append``): one per trailing one
bit of ``n``, O(log n) hashes and amortized two rows per leaf.

Every node of the RFC 9162 tree over ``n`` leaves covers a range ``[a, b)`` that is either
one such complete subtree or, along the right edge of a tree whose size is not a power of
two, a run of them with decreasing sizes (the binary digits of ``b - a``); its hash is
those subtree hashes folded from the right. So the root of any size and every proof
element come from O(log n) stored hashes (``subtree_ids``), never by rehashing leaves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence

from stockade.translog.errors import LogCorrupted, LogRangeError, ProofError

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

# (level, index): the complete subtree over leaves [index << level, (index + 1) << level).
NodeId = tuple[int, int]
# Given subtree ids, the stored hash of each (a log answers this with one query).
SubtreeReader = Callable[[Sequence[NodeId]], Mapping[NodeId, bytes]]


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 2.1.1: ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 2.1.1: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def split_point(size: int) -> int:
    """The largest power of two smaller than ``size`` (``size >= 2``)."""
    return 1 << ((size - 1).bit_length() - 1)


def root_of(entries: Sequence[bytes]) -> bytes:
    """The Merkle Tree Hash of ``entries`` computed straight from RFC 9162 2.1.1 by
    recursion over every leaf: O(n). The reference the stored log is tested against."""
    if not entries:
        return EMPTY_ROOT
    return _root_of_hashes([leaf_hash(entry) for entry in entries])


def _root_of_hashes(hashes: Sequence[bytes]) -> bytes:
    if len(hashes) == 1:
        return hashes[0]
    k = split_point(len(hashes))
    return node_hash(_root_of_hashes(hashes[:k]), _root_of_hashes(hashes[k:]))


# -- subtree addressing ---------------------------------------------------------------


def subtree_ids(begin: int, end: int) -> list[NodeId]:
    """The complete aligned subtrees that cover ``[begin, end)``, left to right, each as
    large as alignment allows (a compact range). For the ranges RFC 9162 trees are made of,
    the sizes strictly decrease and the range hash is their right fold (``fold_right``)."""
    ids: list[NodeId] = []
    while begin < end:
        level = (end - begin).bit_length() - 1
        if begin:
            level = min(level, (begin & -begin).bit_length() - 1)
        ids.append((level, begin >> level))
        begin += 1 << level
    return ids


def fold_right(hashes: Sequence[bytes]) -> bytes:
    """``node(h0, node(h1, ... node(h[-2], h[-1])))``: the hash of a right-edge RFC 9162
    node from its complete subtrees, largest first."""
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = node_hash(left, result)
    return result


def compact_append(
    size: int, peaks: Sequence[bytes], leaf_hashes: Iterable[bytes]
) -> tuple[list[tuple[int, int, bytes]], list[bytes]]:
    """Append leaves to a tree of ``size`` leaves whose complete subtrees
    (``subtree_ids(0, size)``, largest first) have hashes ``peaks``.

    Returns the subtrees above level 0 that the new leaves complete, as
    ``(level, index, hash)`` rows, and the peaks of the grown tree. Leaf ``n`` completes one
    subtree per trailing one bit of ``n``: O(log n) each, amortized one.
    """
    if len(peaks) != size.bit_count():
        raise LogCorrupted(
            f"a tree of {size} leaves has {size.bit_count()} complete subtrees, got {len(peaks)}"
        )
    stack = list(peaks)
    rows: list[tuple[int, int, bytes]] = []
    for hashed in leaf_hashes:
        stack.append(hashed)
        index = size
        level = 0
        while index & 1:
            right = stack.pop()
            stack[-1] = node_hash(stack[-1], right)
            level += 1
            index >>= 1
            rows.append((level, index, stack[-1]))
        size += 1
    return rows, stack


# -- reading the tree from stored subtrees --------------------------------------------


def _lookup(read: SubtreeReader, ids: Sequence[NodeId]) -> Mapping[NodeId, bytes]:
    found = read(ids)
    missing = [node for node in ids if node not in found]
    if missing:
        level, index = missing[0]
        raise LogCorrupted(
            f"stored subtree hash missing: level {level} index {index} "
            f"({len(missing)} of {len(ids)} missing)"
        )
    return found


def _hashes_of_ranges(read: SubtreeReader, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    pieces = [subtree_ids(begin, end) for begin, end in ranges]
    found = _lookup(read, [node for ids in pieces for node in ids])
    return [fold_right([found[node] for node in ids]) for ids in pieces]


def root_hash(size: int, read: SubtreeReader) -> bytes:
    """The root of the tree of the first ``size`` leaves, from O(log size) stored hashes."""
    if size < 0:
        raise LogRangeError(f"tree size {size} is negative")
    if size == 0:
        return EMPTY_ROOT
    return _hashes_of_ranges(read, [(0, size)])[0]


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose hashes make up RFC 9162 2.1.3.1 PATH(index, D[0:size]),
    leaf end first."""
    if not 0 <= index < size:
        raise LogRangeError(f"leaf index {index} is not in a tree of size {size}")
    ranges: list[tuple[int, int]] = []
    begin, end = 0, size
    while end - begin > 1:
        middle = begin + split_point(end - begin)
        if index < middle:
            ranges.append((middle, end))
            end = middle
        else:
            ranges.append((begin, middle))
            begin = middle
    ranges.reverse()
    return ranges


def consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose hashes make up RFC 9162 2.1.4.1 PROOF(old_size, D[0:new_size]);
    empty when ``old_size`` is 0 or equal to ``new_size``."""
    if not 0 <= old_size <= new_size:
        raise LogRangeError(
            f"no consistency proof from size {old_size} to size {new_size}: "
            "sizes must satisfy 0 <= old <= new"
        )
    if old_size in (0, new_size):
        return []
    ranges: list[tuple[int, int]] = []
    begin, end = 0, new_size
    whole = True  # SUBPROOF's b: still on the path of the old tree's root
    while end != old_size:
        middle = begin + split_point(end - begin)
        if old_size <= middle:
            ranges.append((middle, end))
            end = middle
        else:
            ranges.append((begin, middle))
            begin = middle
            whole = False
    if not whole:
        ranges.append((begin, end))
    ranges.reverse()
    return ranges


def inclusion_proof(index: int, size: int, read: SubtreeReader) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``size`` leaves (RFC 9162 2.1.3.1)."""
    return _hashes_of_ranges(read, inclusion_ranges(index, size))


def consistency_proof(old_size: int, new_size: int, read: SubtreeReader) -> list[bytes]:
    """The consistency proof from ``old_size`` to ``new_size`` (RFC 9162 2.1.4.1)."""
    return _hashes_of_ranges(read, consistency_ranges(old_size, new_size))


# -- verification (needs nothing but the proof) ----------------------------------------


def _check_hash(what: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, a SHA-256 hash is {HASH_SIZE}")


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` implies for leaf hash ``leaf`` at ``index`` in a tree of
    ``size`` leaves (RFC 9162 2.1.3.2, steps 1-4); ``ProofError`` when the proof cannot
    be a path for that index and size at all."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    _check_hash("leaf hash", leaf)
    for position, element in enumerate(proof):
        _check_hash(f"inclusion proof element {position}", element)
    fn, sn = index, size - 1
    result = leaf
    for element in proof:
        if sn == 0:
            raise ProofError(
                f"inclusion proof for leaf {index} in a tree of size {size} is too long: "
                f"{len(proof)} hashes"
            )
        if fn & 1 or fn == sn:
            result = node_hash(element, result)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            result = node_hash(result, element)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(
            f"inclusion proof for leaf {index} in a tree of size {size} is too short: "
            f"{len(proof)} hashes"
        )
    return result


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that leaf hash ``leaf`` is at ``index`` in the tree of ``size`` leaves whose
    root is ``root`` (RFC 9162 2.1.3.2); ``ProofError`` saying why not."""
    _check_hash("root hash", root)
    computed = root_from_inclusion_proof(leaf, index, size, proof)
    if computed != root:
        raise ProofError(
            f"inclusion proof for leaf {index} in a tree of size {size} leads to root "
            f"{computed.hex()}, not the expected {root.hex()}"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``new_size`` leaves with root ``new_root`` extends the tree
    of ``old_size`` leaves with root ``old_root`` (RFC 9162 2.1.4.2): the log was only
    appended to, never rewritten, truncated or forked. ``ProofError`` saying why not."""
    _check_hash("old root hash", old_root)
    _check_hash("new root hash", new_root)
    for position, element in enumerate(proof):
        _check_hash(f"consistency proof element {position}", element)
    what = f"consistency from size {old_size} to size {new_size}"
    if old_size < 0 or new_size < old_size:
        raise ProofError(f"{what}: a log never shrinks (sizes must satisfy 0 <= old <= new)")
    if old_size == new_size:
        if proof:
            raise ProofError(f"{what}: equal sizes need an empty proof, got {len(proof)} hashes")
        if old_root != new_root:
            raise ProofError(
                f"{what}: two different roots for the same size ({old_root.hex()} and "
                f"{new_root.hex()}): the log was forked or rewritten"
            )
        return
    if old_size == 0:
        if proof:
            raise ProofError(f"{what}: the empty tree needs an empty proof")
        if old_root != EMPTY_ROOT:
            raise ProofError(f"{what}: {old_root.hex()} is not the root of the empty tree")
        return
    if not proof:
        raise ProofError(f"{what}: the proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    first = second = path[0]
    for element in path[1:]:
        if sn == 0:
            raise ProofError(f"{what}: the proof is too long ({len(proof)} hashes)")
        if fn & 1 or fn == sn:
            first = node_hash(element, first)
            second = node_hash(element, second)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            second = node_hash(second, element)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"{what}: the proof is too short ({len(proof)} hashes)")
    if first != old_root:
        raise ProofError(
            f"{what}: the proof does not lead to the old root {old_root.hex()} "
            f"(got {first.hex()}): the old tree is not a prefix of the new one"
        )
    if second != new_root:
        raise ProofError(
            f"{what}: the proof does not lead to the new root {new_root.hex()} "
            f"(got {second.hex()}): the log was rewritten, truncated or forked"
        )
