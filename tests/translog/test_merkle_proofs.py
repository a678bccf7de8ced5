"""RFC 9162 hashing and proofs (stockade.translog.merkle): the published RFC 6962 test
vectors, and every proof of every tree size 1..256 against a brute-force reference tree
written straight from RFC 9162 2.1.1-2.1.4.

The vectors are those of github.com/transparency-dev/merkle (the Go library behind
Trillian, Tessera and the CT logs): the 8 leaves and roots of testonly/constants.go, the
hasher vectors of rfc6962/rfc6962_test.go, the inclusion and consistency proofs of
proof/verify_test.go (leaf numbers there are 1-based) and the golden roots of
compact/range_test.go (leaf i is the two bytes of i, little-endian).
"""

from __future__ import annotations

import base64
import random

import pytest

from stockade.translog import merkle
from stockade.translog.errors import LogCorrupted, LogRangeError, ProofError
from stockade.translog.merkle import (
    EMPTY_ROOT,
    compact_append,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_hash,
    root_of,
    subtree_ids,
    verify_consistency,
    verify_inclusion,
)

LEAVES = [
    bytes.fromhex(value)
    for value in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    bytes.fromhex(value)
    for value in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]


def h(value: str) -> bytes:
    return bytes.fromhex(value)


# (0-based leaf index, tree size, audit path)
INCLUSION_VECTORS = [
    (0, 1, []),
    (
        0,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        5,
        8,
        [
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (2, 3, [h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (
        1,
        5,
        [
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (0, 2, [h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7")]),
    (1, 2, [h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")]),
]

# (old size, new size, proof)
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (
        1,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        6,
        8,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        5,
        [
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (
        6,
        7,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
]

# compact/range_test.go TestGetRootHashGolden: size -> base64 root, leaf i = u16le(i)
GOLDEN_ROOTS = {
    10: "VjWMPSYNtCuCNlF/RLnQy6HcwSk6CIipfxm+hettA+4=",
    15: "j4SulYmocFuxdeyp12xXCIgK6PekBcxzAIj4zbQzNEI=",
    16: "c+4Uc6BCMOZf/v3NZK1kqTUJe+bBoFtOhP+P3SayKRE=",
    100: "dUh9hYH88p0CMoHkdr1wC2szbhcLAXOejWpINIooKUY=",
    255: "SmdsuKUqiod3RX2jyF2M6JnbdE4QuTwwipfAowI4/i0=",
}
SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")


class MemoryTree:
    """The subtree store a log keeps, in a dict, grown by ``compact_append``."""

    def __init__(self, entries: list[bytes] | None = None) -> None:
        self.size = 0
        self.peaks: list[bytes] = []
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.reads: list[int] = []
        self.append(entries or [])

    def append(self, entries: list[bytes]) -> None:
        hashes = [leaf_hash(entry) for entry in entries]
        for offset, hashed in enumerate(hashes):
            self.nodes[(0, self.size + offset)] = hashed
        rows, self.peaks = compact_append(self.size, self.peaks, hashes)
        for level, index, hashed in rows:
            self.nodes[(level, index)] = hashed
        self.size += len(entries)

    def read(self, ids):
        self.reads.append(len(ids))
        return {node: self.nodes[node] for node in ids if node in self.nodes}


class Reference:
    """RFC 9162 2.1.1-2.1.4 by recursion over the leaves themselves (MTH memoized by range:
    leaf ranges are the same whatever the tree size)."""

    def __init__(self, entries: list[bytes]) -> None:
        self.hashes = [leaf_hash(entry) for entry in entries]
        self.memo: dict[tuple[int, int], bytes] = {}

    def mth(self, begin: int, end: int) -> bytes:
        if end - begin == 1:
            return self.hashes[begin]
        key = (begin, end)
        if key not in self.memo:
            k = 1
            while k * 2 < end - begin:
                k *= 2
            self.memo[key] = node_hash(self.mth(begin, begin + k), self.mth(begin + k, end))
        return self.memo[key]

    def path(self, m: int, begin: int, end: int) -> list[bytes]:
        if end - begin == 1:
            return []
        k = 1
        while k * 2 < end - begin:
            k *= 2
        if m < k:
            return [*self.path(m, begin, begin + k), self.mth(begin + k, end)]
        return [*self.path(m - k, begin + k, end), self.mth(begin, begin + k)]

    def subproof(self, m: int, begin: int, end: int, whole: bool) -> list[bytes]:
        n = end - begin
        if m == n:
            return [] if whole else [self.mth(begin, end)]
        k = 1
        while k * 2 < n:
            k *= 2
        if m <= k:
            return [*self.subproof(m, begin, begin + k, whole), self.mth(begin + k, end)]
        return [*self.subproof(m - k, begin + k, end, False), self.mth(begin, begin + k)]

    def consistency(self, old: int, new: int) -> list[bytes]:
        if old in (0, new):
            return []
        return self.subproof(old, 0, new, True)


@pytest.fixture(scope="module")
def big():
    rng = random.Random("translog brute force")
    entries = [rng.randbytes(rng.randrange(0, 40)) for _ in range(256)]
    tree = MemoryTree()
    # grow in uneven batches so compact_append sees every kind of boundary
    position = 0
    while position < len(entries):
        step = rng.choice([1, 1, 2, 3, 7, 16, 33])
        tree.append(entries[position : position + step])
        position += step
    return entries, tree, Reference(entries)


# -- published vectors -----------------------------------------------------------------


def test_rfc6962_hasher_vectors():
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root_of([]) == EMPTY_ROOT
    assert leaf_hash(b"").hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert leaf_hash(b"L123456").hex() == (
        "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    )
    assert node_hash(b"N123", b"N456").hex() == (
        "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    )


@pytest.mark.parametrize("size", range(1, 9))
def test_published_roots(size):
    assert root_of(LEAVES[:size]) == ROOTS[size - 1]
    tree = MemoryTree(LEAVES[:size])
    assert root_hash(size, tree.read) == ROOTS[size - 1]
    assert root_hash(size, MemoryTree(LEAVES).read) == ROOTS[size - 1]


@pytest.mark.parametrize("size", sorted(GOLDEN_ROOTS))
def test_golden_roots_of_larger_trees(size):
    entries = [bytes([i & 0xFF, (i >> 8) & 0xFF]) for i in range(size)]
    expected = base64.b64decode(GOLDEN_ROOTS[size])
    assert root_of(entries) == expected
    assert root_hash(size, MemoryTree(entries).read) == expected


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_published_inclusion_proofs_are_generated_and_verify(index, size, proof):
    tree = MemoryTree(LEAVES)
    assert inclusion_proof(index, size, tree.read) == proof
    verify_inclusion(leaf_hash(LEAVES[index]), index, size, proof, ROOTS[size - 1])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS)
def test_published_consistency_proofs_are_generated_and_verify(old, new, proof):
    tree = MemoryTree(LEAVES)
    assert consistency_proof(old, new, tree.read) == proof
    verify_consistency(old, new, ROOTS[old - 1], ROOTS[new - 1], proof)


def _flip(value: bytes, bit: int) -> bytes:
    return bytes([value[0] ^ bit]) + value[1:]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS[1:5])
def test_corrupted_inclusion_proofs_fail(index, size, proof):
    """verify_test.go corruptInclusionProof: every probe must fail, with a ProofError."""
    root, leaf = ROOTS[size - 1], leaf_hash(LEAVES[index])
    probes = [
        (index - 1, size, root, leaf, proof),
        (index + 1, size, root, leaf, proof),
        (index ^ 2, size, root, leaf, proof),
        (index, size * 2, root, leaf, proof),
        (index, size // 2, root, leaf, proof),
        (index, size, root, leaf_hash(b"WrongLeaf"), proof),
        (index, size, EMPTY_ROOT, leaf, proof),
        (index, size, SOME_HASH, leaf, proof),
        (index, size, root, leaf, [*proof, b""]),
        (index, size, root, leaf, [*proof, root]),
        (index, size, root, leaf, [b"", *proof]),
        (index, size, root, leaf, [root, *proof]),
        (index, size, root, b"WrongLeaf", proof),
        (index, size, root[:31], leaf, proof),
    ]
    for position in range(len(proof)):
        wrong = list(proof)
        wrong[position] = _flip(wrong[position], 8)
        probes.append((index, size, root, leaf, wrong))
    if proof:
        probes.append((index, size, root, leaf, proof[:-1]))
    if len(proof) > 1:
        probes.append((index, size, root, leaf, [proof[0], SOME_HASH, *proof[1:]]))
    for probe_index, probe_size, probe_root, probe_leaf, probe_proof in probes:
        with pytest.raises(ProofError):
            verify_inclusion(probe_leaf, probe_index, probe_size, probe_proof, probe_root)


def test_inclusion_in_an_empty_or_too_small_tree_fails():
    for index, size in [(0, 0), (1, 0), (1, 1), (2, 1), (-1, 4)]:
        with pytest.raises(ProofError, match="not in a tree"):
            verify_inclusion(SOME_HASH, index, size, [], EMPTY_ROOT)


def test_single_entry_tree():
    hashed = leaf_hash(b"data")
    verify_inclusion(hashed, 0, 1, [], hashed)
    for leaf, root in [(hashed, b""), (b"", hashed), (b"", b"")]:
        with pytest.raises(ProofError):
            verify_inclusion(leaf, 0, 1, [], root)


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS[1:])
def test_corrupted_consistency_proofs_fail(old, new, proof):
    """verify_test.go corruptConsistencyProof: every probe must fail, with a ProofError."""
    root1, root2 = ROOTS[old - 1], ROOTS[new - 1]
    probes = [
        (old - 1, new, root1, root2, proof),
        (old + 1, new, root1, root2, proof),
        (old ^ 2, new, root1, root2, proof),
        (old, new * 2, root1, root2, proof),
        (old, new // 2, root1, root2, proof),
        (old, new, SOME_HASH, root2, proof),
        (old, new, root1, SOME_HASH, proof),
        (old, new, root2, root1, proof),
        (old, new, root1, root2, []),
        (old, new, root1, root2, [*proof, b""]),
        (old, new, root1, root2, [*proof, root1]),
        (old, new, root1, root2, [*proof, root2]),
        (old, new, root1, root2, [b"", *proof]),
        (old, new, root1, root2, [root1, *proof]),
        (old, new, root1, root2, [root2, *proof]),
        (old, new, root1, root2, [proof[0], *proof]),
        (old, new, root1, root2, proof[:-1]),
        (old, new, b"WrongRoot", root2, proof),
    ]
    for position in range(len(proof)):
        wrong = list(proof)
        wrong[position] = _flip(wrong[position], 16)
        probes.append((old, new, root1, root2, wrong))
    for probe_old, probe_new, probe_root1, probe_root2, probe_proof in probes:
        with pytest.raises(ProofError):
            verify_consistency(probe_old, probe_new, probe_root1, probe_root2, probe_proof)


def test_trivial_consistency():
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, ROOTS[4], [])
    verify_consistency(3, 3, ROOTS[2], ROOTS[2], [])
    with pytest.raises(ProofError, match="forked or rewritten"):
        verify_consistency(3, 3, ROOTS[2], ROOTS[3], [])
    with pytest.raises(ProofError, match="empty proof"):
        verify_consistency(3, 3, ROOTS[2], ROOTS[2], [EMPTY_ROOT])
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(0, 5, EMPTY_ROOT, ROOTS[4], [EMPTY_ROOT])
    with pytest.raises(ProofError, match="not the root of the empty tree"):
        verify_consistency(0, 5, ROOTS[0], ROOTS[4], [])
    with pytest.raises(ProofError, match="never shrinks"):
        verify_consistency(5, 4, ROOTS[4], ROOTS[3], [])
    with pytest.raises(ProofError, match="proof is empty"):
        verify_consistency(1, 2, ROOTS[0], ROOTS[1], [])


# -- brute force against the reference tree ---------------------------------------------


def test_every_root_of_every_size(big):
    entries, tree, reference = big
    for size in range(1, 257):
        expected = reference.mth(0, size)
        assert root_hash(size, tree.read) == expected
    assert root_of(entries[:100]) == reference.mth(0, 100)
    assert root_of(entries) == reference.mth(0, 256)


def test_every_inclusion_proof_of_every_size(big):
    """Every (index, size) with 1 <= size <= 256: the proof read from stored subtrees is the
    RFC's PATH, verifies against the reference root, and does not verify for a neighbour
    index or leaf."""
    _, tree, reference = big
    for size in range(1, 257):
        root = reference.mth(0, size)
        for index in range(size):
            proof = inclusion_proof(index, size, tree.read)
            assert proof == reference.path(index, 0, size), (index, size)
            leaf = reference.hashes[index]
            verify_inclusion(leaf, index, size, proof, root)
            if size > 1:
                other = (index + 1) % size
                with pytest.raises(ProofError):
                    verify_inclusion(reference.hashes[other], index, size, proof, root)
                with pytest.raises(ProofError):
                    verify_inclusion(leaf, other, size, proof, root)


def test_every_consistency_proof_up_to_64(big):
    _, tree, reference = big
    for new in range(1, 65):
        new_root = reference.mth(0, new)
        for old in range(0, new + 1):
            proof = consistency_proof(old, new, tree.read)
            assert proof == reference.consistency(old, new), (old, new)
            old_root = reference.mth(0, old) if old else EMPTY_ROOT
            verify_consistency(old, new, old_root, new_root, proof)
            if 0 < old < new:
                with pytest.raises(ProofError):
                    verify_consistency(old, new, SOME_HASH, new_root, proof)
                with pytest.raises(ProofError):
                    verify_consistency(old, new, old_root, SOME_HASH, proof)


def test_sampled_consistency_proofs_up_to_256(big):
    _, tree, reference = big
    rng = random.Random("consistency sample")
    pairs = [(rng.randrange(1, 257), rng.randrange(1, 257)) for _ in range(1500)]
    pairs += [(old, 256) for old in range(1, 257)] + [(1, new) for new in range(1, 257)]
    for a, b in pairs:
        old, new = min(a, b), max(a, b)
        proof = consistency_proof(old, new, tree.read)
        assert proof == reference.consistency(old, new), (old, new)
        verify_consistency(old, new, reference.mth(0, old), reference.mth(0, new), proof)


def test_proofs_are_about_log2_n_hashes_from_log_n_stored_subtrees(big):
    _, tree, _ = big
    for size in (5, 100, 129, 255, 256):
        depth = (size - 1).bit_length()
        for index in (0, size // 2, size - 1):
            tree.reads.clear()
            proof = inclusion_proof(index, size, tree.read)
            assert len(proof) <= depth
            assert tree.reads[0] <= 2 * depth
        for old in (1, size // 3, size - 1):
            tree.reads.clear()
            proof = consistency_proof(old, size, tree.read)
            assert len(proof) <= depth + 1
            assert tree.reads[0] <= 2 * depth + 1


def test_subtree_ids_cover_ranges_with_aligned_complete_subtrees():
    for begin in range(0, 70):
        for end in range(begin, 140):
            ids = subtree_ids(begin, end)
            position = begin
            for level, index in ids:
                assert index << level == position
                position += 1 << level
            assert position == end
            assert len(ids) <= 2 * max(1, (end - begin).bit_length())


def test_compact_append_writes_what_it_closes():
    """Appending leaf n writes one subtree per trailing one bit of n: n - popcount(n) rows
    above the leaves for n leaves in all, and the peaks are the complete subtrees of the
    new size."""
    tree = MemoryTree()
    for n in range(1, 300):
        before = len(tree.nodes)
        tree.append([n.to_bytes(2, "big")])
        assert len(tree.nodes) - before == 1 + ((n - 1) ^ n).bit_length() - 1
        assert [tree.nodes[node] for node in subtree_ids(0, n)] == tree.peaks
    assert len([node for node in tree.nodes if node[0] > 0]) == 299 - (299).bit_count()


def test_compact_append_rejects_wrong_peaks():
    with pytest.raises(LogCorrupted, match="complete subtrees"):
        compact_append(3, [SOME_HASH], [SOME_HASH])


def test_missing_stored_hash_is_reported():
    tree = MemoryTree(LEAVES)
    del tree.nodes[(2, 1)]
    with pytest.raises(LogCorrupted, match="level 2 index 1"):
        inclusion_proof(0, 8, tree.read)


def test_proof_requests_outside_the_tree_are_range_errors():
    tree = MemoryTree(LEAVES)
    with pytest.raises(LogRangeError):
        inclusion_proof(8, 8, tree.read)
    with pytest.raises(LogRangeError):
        consistency_proof(5, 4, tree.read)
    with pytest.raises(LogRangeError):
        root_hash(-1, tree.read)
    assert merkle.consistency_ranges(0, 5) == []
    assert merkle.consistency_ranges(5, 5) == []
