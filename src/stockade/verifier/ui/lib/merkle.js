// RFC 9162 Merkle trees in the browser: leaf and node hashes (2.1.1), inclusion proof
// verification (2.1.3.2) and consistency proof verification (2.1.4.2), with WebCrypto's
// SHA-256 and nothing else. A line-by-line mirror of stockade/translog/merkle.py
// (root_from_inclusion_proof, verify_inclusion, verify_consistency): the tests run both on
// the same proofs and require the same verdicts.
//
// Indices and sizes are BigInt inside (a log index is a uint64; JavaScript's bitwise
// operators are 32-bit), accepted as BigInt or as a safe non-negative integer Number.

export const HASH_SIZE = 32;
// SHA-256 of the empty string: the root of the empty tree.
export const EMPTY_ROOT = hexBytes(
  "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
);

export class ProofError extends Error {
  constructor(message) {
    super(message);
    this.name = "ProofError";
  }
}

function hexBytes(text) {
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i += 1) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function bytesEqual(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i += 1) diff |= a[i] ^ b[i];
  return diff === 0;
}

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

function prefixed(prefix, ...parts) {
  const total = parts.reduce((sum, part) => sum + part.length, 1);
  const out = new Uint8Array(total);
  out[0] = prefix;
  let offset = 1;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** RFC 9162 2.1.1: SHA-256(0x00 || data). */
export function leafHash(data) {
  return sha256(prefixed(0x00, data));
}

/** RFC 9162 2.1.1: SHA-256(0x01 || left || right). */
export function nodeHash(left, right) {
  return sha256(prefixed(0x01, left, right));
}

/** A non-negative integer (BigInt, or a safe integer Number) as a BigInt; ProofError otherwise. */
export function toCount(value, what) {
  if (typeof value === "bigint") {
    if (value < 0n) throw new ProofError(`${what} ${value} is negative`);
    return value;
  }
  if (typeof value !== "number" || !Number.isSafeInteger(value)) {
    throw new ProofError(`${what} is not an integer`);
  }
  if (value < 0) throw new ProofError(`${what} ${value} is negative`);
  return BigInt(value);
}

function checkHash(what, value) {
  if (!(value instanceof Uint8Array)) throw new ProofError(`${what} is not bytes`);
  if (value.length !== HASH_SIZE) {
    throw new ProofError(`${what} is ${value.length} bytes, a SHA-256 hash is ${HASH_SIZE}`);
  }
}

/**
 * The root that `proof` implies for leaf hash `leaf` at `index` in a tree of `size` leaves
 * (RFC 9162 2.1.3.2, steps 1-4); ProofError when the proof cannot be a path for that index
 * and size at all.
 */
export async function rootFromInclusionProof(leaf, index, size, proof) {
  const idx = toCount(index, "leaf index");
  const n = toCount(size, "tree size");
  if (!(idx < n)) throw new ProofError(`leaf index ${idx} is not in a tree of size ${n}`);
  checkHash("leaf hash", leaf);
  if (!Array.isArray(proof)) throw new ProofError("inclusion proof is not a list");
  proof.forEach((element, position) => checkHash(`inclusion proof element ${position}`, element));
  let fn = idx;
  let sn = n - 1n;
  let result = leaf;
  for (const element of proof) {
    if (sn === 0n) {
      throw new ProofError(
        `inclusion proof for leaf ${idx} in a tree of size ${n} is too long: ${proof.length} hashes`,
      );
    }
    if ((fn & 1n) === 1n || fn === sn) {
      result = await nodeHash(element, result);
      while (fn !== 0n && (fn & 1n) === 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      result = await nodeHash(result, element);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) {
    throw new ProofError(
      `inclusion proof for leaf ${idx} in a tree of size ${n} is too short: ${proof.length} hashes`,
    );
  }
  return result;
}

/**
 * Check that leaf hash `leaf` is at `index` in the tree of `size` leaves whose root is
 * `root` (RFC 9162 2.1.3.2); ProofError saying why not.
 */
export async function verifyInclusion(leaf, index, size, proof, root) {
  checkHash("root hash", root);
  const computed = await rootFromInclusionProof(leaf, index, size, proof);
  if (!bytesEqual(computed, root)) {
    throw new ProofError(
      `inclusion proof for leaf ${index} in a tree of size ${size} leads to root ` +
        `${toHex(computed)}, not the expected ${toHex(root)}`,
    );
  }
}

/**
 * Check that the tree of `newSize` leaves with root `newRoot` extends the tree of `oldSize`
 * leaves with root `oldRoot` (RFC 9162 2.1.4.2): the log was only appended to, never
 * rewritten, truncated or forked. ProofError saying why not.
 */
export async function verifyConsistency(oldSize, newSize, oldRoot, newRoot, proof) {
  checkHash("old root hash", oldRoot);
  checkHash("new root hash", newRoot);
  if (!Array.isArray(proof)) throw new ProofError("consistency proof is not a list");
  proof.forEach((element, position) =>
    checkHash(`consistency proof element ${position}`, element),
  );
  const m = toCount(oldSize, "old tree size");
  const n = toCount(newSize, "new tree size");
  const what = `consistency from size ${m} to size ${n}`;
  if (n < m) {
    throw new ProofError(`${what}: a log never shrinks (sizes must satisfy 0 <= old <= new)`);
  }
  if (m === n) {
    if (proof.length) {
      throw new ProofError(`${what}: equal sizes need an empty proof, got ${proof.length} hashes`);
    }
    if (!bytesEqual(oldRoot, newRoot)) {
      throw new ProofError(
        `${what}: two different roots for the same size (${toHex(oldRoot)} and ` +
          `${toHex(newRoot)}): the log was forked or rewritten`,
      );
    }
    return;
  }
  if (m === 0n) {
    if (proof.length) throw new ProofError(`${what}: the empty tree needs an empty proof`);
    if (!bytesEqual(oldRoot, EMPTY_ROOT)) {
      throw new ProofError(`${what}: ${toHex(oldRoot)} is not the root of the empty tree`);
    }
    return;
  }
  if (!proof.length) throw new ProofError(`${what}: the proof is empty`);
  const path = [...proof];
  if ((m & (m - 1n)) === 0n) path.unshift(oldRoot);
  let fn = m - 1n;
  let sn = n - 1n;
  while ((fn & 1n) === 1n) {
    fn >>= 1n;
    sn >>= 1n;
  }
  let first = path[0];
  let second = path[0];
  for (const element of path.slice(1)) {
    if (sn === 0n) throw new ProofError(`${what}: the proof is too long (${proof.length} hashes)`);
    if ((fn & 1n) === 1n || fn === sn) {
      first = await nodeHash(element, first);
      second = await nodeHash(element, second);
      while (fn !== 0n && (fn & 1n) === 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      second = await nodeHash(second, element);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new ProofError(`${what}: the proof is too short (${proof.length} hashes)`);
  if (!bytesEqual(first, oldRoot)) {
    throw new ProofError(
      `${what}: the proof does not lead to the old root ${toHex(oldRoot)} ` +
        `(got ${toHex(first)}): the old tree is not a prefix of the new one`,
    );
  }
  if (!bytesEqual(second, newRoot)) {
    throw new ProofError(
      `${what}: the proof does not lead to the new root ${toHex(newRoot)} ` +
        `(got ${toHex(second)}): the log was rewritten, truncated or forked`,
    );
  }
}
