// Inclusion receipts checked in the browser, as `stockade log verify` checks them offline
// (stockade/translog/receipt.py verify_receipt with origin = the key's name, then
// check_result_entry): the checkpoint's Ed25519 signature under a pinned log key, its
// origin, its size against the receipt's tree, the RFC 9162 audit path from the entry's
// leaf hash to the signed root, the entry's format (stockade/translog/entries.py), and
// when asked, that the entry binds a given EAR or result.
//
//   receipt: {"log_index": int, "tree_size": int, "entry": b64, "proof": [b64, ...],
//             "checkpoint": "<signed note text>"}
//
// Every check is a step `{name, ok, detail}`; the first that fails ends the check (later
// steps are not run) and the verdict is `{ok: false, steps, error}`. Nothing throws: any
// input that does not parse fails closed at the step that reads it.

import {
  ProofError,
  bytesEqual,
  leafHash,
  sha256,
  toHex,
  verifyConsistency as verifyConsistencyProof,
  verifyInclusion,
} from "./merkle.js";
import {
  decodeBase64,
  parseCheckpoint,
  parseNote,
  parseVerifierKey,
  verifyNoteSignature,
} from "./note.js";

export const ATTESTATION_RESULT = "attestation-result";
export const MAX_ENTRY_SIZE = 64 * 1024;
// entries.py ENTRY_FIELDS: the string fields each known entry type must carry.
export const ENTRY_FIELDS = {
  "attestation-result": [
    "result_id",
    "node_id",
    "node_name",
    "status",
    "policy",
    "not_after",
    "issued_at",
    "ear_sha256",
  ],
  "execution-record": ["node_id", "node_name", "boot", "recnum", "kind", "record_sha256", "result_id"],
  "operator-action": ["actor", "action", "subject", "time", "detail"],
};

export class MalformedReceipt extends Error {
  constructor(message) {
    super(message);
    this.name = "MalformedReceipt";
  }
}

export class MalformedEntry extends Error {
  constructor(message) {
    super(message);
    this.name = "MalformedEntry";
  }
}

export class EntryMismatch extends Error {
  constructor(message) {
    super(message);
    this.name = "EntryMismatch";
  }
}

const utf8 = new TextEncoder();

function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function readCount(value, what) {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw new MalformedReceipt(`inclusion receipt: ${what} is not a non-negative integer`);
  }
  return value;
}

function readB64(value, what) {
  return decodeBase64(value, `inclusion receipt: ${what}`, MalformedReceipt);
}

/**
 * A receipt from its JSON form (an object, or JSON text): `{logIndex, treeSize, entry,
 * proof, checkpoint}`; MalformedReceipt naming the bad member (receipt.py Receipt.from_json).
 */
export function parseReceipt(document) {
  let value = document;
  if (typeof value === "string") {
    try {
      value = JSON.parse(value);
    } catch (error) {
      throw new MalformedReceipt(`inclusion receipt is not JSON: ${error.message}`);
    }
  }
  if (!isObject(value)) throw new MalformedReceipt("inclusion receipt is not a JSON object");
  if (!Array.isArray(value.proof)) throw new MalformedReceipt("inclusion receipt: proof is not a list");
  const checkpoint = value.checkpoint;
  if (checkpoint !== undefined && checkpoint !== null && typeof checkpoint !== "string") {
    throw new MalformedReceipt("inclusion receipt: checkpoint is not a string");
  }
  return {
    logIndex: readCount(value.log_index, "log_index"),
    treeSize: readCount(value.tree_size, "tree_size"),
    entry: readB64(value.entry, "entry"),
    proof: value.proof.map((element, n) => readB64(element, `proof[${n}]`)),
    checkpoint: typeof checkpoint === "string" ? checkpoint : null,
  };
}

// -- entries (entries.py parse_entry) --------------------------------------------------

function compareCodePoints(a, b) {
  const left = Array.from(a, (c) => c.codePointAt(0));
  const right = Array.from(b, (c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(left.length, right.length); i += 1) {
    if (left[i] !== right[i]) return left[i] - right[i];
  }
  return left.length - right.length;
}

/**
 * Stockade's canonical JSON (strict_json.canonical_json: keys sorted by code point, no
 * whitespace, UTF-8 without escaping non-ASCII). Only what entries hold is reproduced
 * exactly: strings, safe integers, booleans, null, arrays and objects of them; anything
 * else makes the check fail (closed), never pass.
 */
export function canonicalJson(value) {
  if (value === null || typeof value === "boolean") return JSON.stringify(value);
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) throw new MalformedEntry("entry holds a non-integer number");
    return String(value);
  }
  if (typeof value === "string") {
    if (!value.isWellFormed()) throw new MalformedEntry("entry holds a lone surrogate");
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  const keys = Object.keys(value).sort(compareCodePoints);
  return `{${keys.map((key) => `${canonicalJson(key)}:${canonicalJson(value[key])}`).join(",")}}`;
}

/**
 * The document in entry bytes `data`: a canonical JSON object with a string "type"; for a
 * known type every ENTRY_FIELDS field a string. MalformedEntry saying what is wrong.
 */
export function parseEntry(data) {
  if (data.length > MAX_ENTRY_SIZE) {
    throw new MalformedEntry(`log entry is ${data.length} bytes, at most ${MAX_ENTRY_SIZE}`);
  }
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(data);
  } catch {
    throw new MalformedEntry("log entry is not UTF-8");
  }
  let document;
  try {
    document = JSON.parse(text);
  } catch (error) {
    throw new MalformedEntry(`log entry is not JSON: ${error.message}`);
  }
  if (!isObject(document)) throw new MalformedEntry("log entry is not a JSON object");
  const kind = document.type;
  if (typeof kind !== "string" || !kind) throw new MalformedEntry("log entry has no string 'type'");
  let canonical = null;
  try {
    canonical = canonicalJson(document);
  } catch {
    canonical = null;
  }
  if (canonical === null || !bytesEqual(utf8.encode(canonical), data)) {
    throw new MalformedEntry("log entry is not canonical JSON (sorted keys, no whitespace, UTF-8)");
  }
  for (const name of Object.hasOwn(ENTRY_FIELDS, kind) ? ENTRY_FIELDS[kind] : []) {
    if (typeof document[name] !== "string") {
      throw new MalformedEntry(`${kind} entry has no string '${name}'`);
    }
  }
  return document;
}

/** entries.py ear_digest: SHA-256 of the EAR's compact JWT text (UTF-8), hex. */
export async function earDigest(ear) {
  return toHex(await sha256(utf8.encode(ear)));
}

function describe(value) {
  return value === undefined ? "absent" : JSON.stringify(value);
}

/** That the logged entry is the attestation result whose EAR is `ear`. */
export async function checkEarEntry(entry, ear) {
  if (typeof ear !== "string" || !ear) throw new MalformedReceipt("the EAR is not text");
  if (entry.type !== ATTESTATION_RESULT) {
    throw new EntryMismatch(`the logged entry is a ${describe(entry.type)}, not a result`);
  }
  const digest = await earDigest(ear);
  if (entry.ear_sha256 !== digest) {
    throw new EntryMismatch(
      `the logged entry's ear_sha256 is ${describe(entry.ear_sha256)}, the EAR's is "${digest}"`,
    );
  }
  return digest;
}

/** receipt.py check_result_entry: the entry is `result`'s (result_id, EAR digest, status). */
export async function checkResultEntry(entry, result) {
  if (entry.type !== ATTESTATION_RESULT) {
    throw new EntryMismatch(`the logged entry is a ${describe(entry.type)}, not a result`);
  }
  if (!isObject(result) || typeof result.ear !== "string") {
    throw new MalformedReceipt("the result has no EAR ('ear') to compare with the log");
  }
  const expected = [
    ["result_id", result.result_id],
    ["ear_sha256", await earDigest(result.ear)],
  ];
  if (Object.hasOwn(result, "status")) expected.push(["status", result.status]);
  for (const [name, value] of expected) {
    if (entry[name] !== value) {
      throw new EntryMismatch(
        `the logged entry's ${name} is ${describe(entry[name])}, the result's is ${describe(value)}`,
      );
    }
  }
}

// -- the check, step by step -----------------------------------------------------------

class Steps {
  constructor() {
    this.steps = [];
  }

  /** Run `check` (sync or async) as step `name`; its return value is the step's detail. */
  async run(name, check) {
    try {
      const detail = await check();
      this.steps.push({ name, ok: true, detail: detail || "ok" });
      return true;
    } catch (error) {
      const message = error && error.message ? error.message : String(error);
      this.steps.push({ name, ok: false, detail: message });
      return false;
    }
  }

  failed() {
    const last = this.steps[this.steps.length - 1];
    return { ok: false, steps: this.steps, error: `${last.name}: ${last.detail}` };
  }
}

function checkpointJson(checkpoint) {
  return {
    origin: checkpoint.origin,
    size: checkpoint.size.toString(),
    root: checkpoint.rootBase64,
  };
}

/**
 * Check an inclusion receipt against the log key string `keyString`.
 *
 * Options: `ear` (an EAR the entry must bind), `result` (a result document, as in an
 * evidence response or `stockade results show --format json`: the entry must be its
 * result_id, EAR digest and status), `checkpoint` (a signed note to check against instead
 * of the receipt's own).
 *
 * Steps, in order: key, receipt, note, signature, checkpoint, origin, tree_size,
 * inclusion, entry, then ear and result when asked. Returns `{ok, steps, error}` (error
 * null when ok, else "<step>: <why>"), plus `checkpoint` ({origin, size, root}) and
 * `entry` (the logged document) when they were read.
 */
export async function verifyReceipt(receipt, keyString, { ear, result, checkpoint } = {}) {
  const steps = new Steps();
  const out = {};
  let key;
  let parsed;
  let note;
  let head;
  let entry;
  if (
    !(await steps.run("key", async () => {
      key = await parseVerifierKey(keyString);
      return `${key.name} (key id ${key.keyIdHex})`;
    }))
  ) {
    return steps.failed();
  }
  if (
    !(await steps.run("receipt", () => {
      parsed = parseReceipt(receipt);
      const noteText = checkpoint ?? parsed.checkpoint;
      if (typeof noteText !== "string") {
        throw new MalformedReceipt("inclusion receipt has no checkpoint and none was given");
      }
      parsed.note = noteText;
      return (
        `entry ${parsed.logIndex} in the tree of ${parsed.treeSize} entries, ` +
        `${parsed.proof.length} proof hashes`
      );
    }))
  ) {
    return steps.failed();
  }
  if (
    !(await steps.run("note", () => {
      note = parseNote(parsed.note);
      return `${note.signatures.length} signature line(s)`;
    }))
  ) {
    return steps.failed();
  }
  if (
    !(await steps.run("signature", async () => {
      await verifyNoteSignature(note, key);
      return `Ed25519 signature by ${key.name} (key id ${key.keyIdHex}) verified`;
    }))
  ) {
    return steps.failed();
  }
  if (
    !(await steps.run("checkpoint", () => {
      head = parseCheckpoint(note.text);
      out.checkpoint = checkpointJson(head);
      return `${head.origin}, size ${head.size}, root ${head.rootBase64}`;
    }))
  ) {
    return { ...out, ...steps.failed() };
  }
  const checks = [
    [
      "origin",
      () => {
        if (head.origin !== key.name) {
          throw new Error(
            `checkpoint is for log ${JSON.stringify(head.origin)}, expected ` +
              `${JSON.stringify(key.name)} (the key's name)`,
          );
        }
        return head.origin;
      },
    ],
    [
      "tree_size",
      () => {
        if (head.size !== BigInt(parsed.treeSize)) {
          throw new ProofError(
            `the receipt proves entry ${parsed.logIndex} in the tree of ${parsed.treeSize} ` +
              `entries, the checkpoint is of ${head.size}: fetch a proof for that size ` +
              `(GET /v1/log/proof/inclusion?index=${parsed.logIndex}&size=${head.size})`,
          );
        }
        return `${head.size}`;
      },
    ],
    [
      "inclusion",
      async () => {
        const leaf = await leafHash(parsed.entry);
        await verifyInclusion(leaf, parsed.logIndex, parsed.treeSize, parsed.proof, head.root);
        return `leaf ${toHex(leaf)} at index ${parsed.logIndex} leads to the signed root`;
      },
    ],
    [
      "entry",
      () => {
        entry = parseEntry(parsed.entry);
        out.entry = entry;
        return `${entry.type}` + (entry.result_id ? ` ${entry.result_id}` : "");
      },
    ],
  ];
  if (ear !== undefined && ear !== null && ear !== "") {
    checks.push(["ear", async () => `EAR SHA-256 ${await checkEarEntry(entry, ear)} matches`]);
  }
  if (result !== undefined && result !== null) {
    checks.push([
      "result",
      async () => {
        await checkResultEntry(entry, result);
        return `the entry is result ${result.result_id} (id, EAR digest, status)`;
      },
    ]);
  }
  for (const [name, check] of checks) {
    if (!(await steps.run(name, check))) return { ...out, ...steps.failed() };
  }
  return { ...out, ok: true, steps: steps.steps, error: null };
}

function readCheckpointArgument(value, what) {
  if (typeof value === "string") return { note: value };
  if (isObject(value) && typeof value.checkpoint === "string") return { note: value.checkpoint };
  if (isObject(value) && value.root instanceof Uint8Array) {
    return { parsed: { ...value, size: BigInt(value.size) } };
  }
  throw new MalformedReceipt(`${what} is neither a signed note nor a parsed checkpoint`);
}

/**
 * Check that `newCheckpoint` extends `oldCheckpoint` by the RFC 9162 consistency `proof`.
 *
 * The checkpoints are signed notes (strings, or `{checkpoint: note}` as GET
 * /v1/log/checkpoint?format=json answers) or parsed checkpoints (`{origin, size, root:
 * Uint8Array}`). With `keyString`, each note's signature is verified under that key and its
 * origin must be the key's name; without it notes are only parsed. `proof` is a list of
 * base64 hashes or the answer of GET /v1/log/proof/consistency (`{old_size, new_size,
 * proof}`, whose sizes must be the checkpoints'). Same `{ok, steps, error}` as verifyReceipt.
 */
export async function verifyConsistency(oldCheckpoint, newCheckpoint, proof, keyString = null) {
  const steps = new Steps();
  let key = null;
  const heads = {};
  let hashes;
  if (keyString !== null && keyString !== undefined) {
    const ok = await steps.run("key", async () => {
      key = await parseVerifierKey(keyString);
      return `${key.name} (key id ${key.keyIdHex})`;
    });
    if (!ok) return steps.failed();
  }
  for (const [name, value] of [
    ["old checkpoint", oldCheckpoint],
    ["new checkpoint", newCheckpoint],
  ]) {
    const ok = await steps.run(name, async () => {
      const argument = readCheckpointArgument(value, name);
      if (argument.parsed) {
        heads[name] = argument.parsed;
        return `size ${argument.parsed.size} (already verified)`;
      }
      const note = parseNote(argument.note);
      if (key) await verifyNoteSignature(note, key);
      const head = parseCheckpoint(note.text);
      if (key && head.origin !== key.name) {
        throw new Error(
          `checkpoint is for log ${JSON.stringify(head.origin)}, expected ` +
            `${JSON.stringify(key.name)} (the key's name)`,
        );
      }
      heads[name] = head;
      return (
        `${head.origin}, size ${head.size}` + (key ? ", signature verified" : ", signature not checked")
      );
    });
    if (!ok) return steps.failed();
  }
  const older = heads["old checkpoint"];
  const newer = heads["new checkpoint"];
  const checks = [
    [
      "origin",
      () => {
        if (older.origin !== undefined && newer.origin !== undefined && older.origin !== newer.origin) {
          throw new Error(
            `the old checkpoint is for log ${JSON.stringify(older.origin)}, the new one for ` +
              `${JSON.stringify(newer.origin)}`,
          );
        }
        return older.origin ?? "";
      },
    ],
    [
      "proof",
      () => {
        let list = proof;
        if (isObject(proof)) {
          for (const [member, head] of [
            ["old_size", older],
            ["new_size", newer],
          ]) {
            const value = proof[member];
            if (typeof value !== "number" || !Number.isSafeInteger(value) || BigInt(value) !== head.size) {
              throw new MalformedReceipt(
                `consistency proof: ${member} is ${describe(value)}, the checkpoint's size is ${head.size}`,
              );
            }
          }
          list = proof.proof;
        }
        if (!Array.isArray(list)) throw new MalformedReceipt("consistency proof is not a list");
        hashes = list.map((element, n) =>
          decodeBase64(element, `consistency proof[${n}]`, MalformedReceipt),
        );
        return `${hashes.length} hashes`;
      },
    ],
    [
      "consistency",
      async () => {
        await verifyConsistencyProof(older.size, newer.size, older.root, newer.root, hashes);
        return `the tree of ${newer.size} entries extends the tree of ${older.size}`;
      },
    ],
  ];
  for (const [name, check] of checks) {
    if (!(await steps.run(name, check))) return steps.failed();
  }
  return {
    ok: true,
    steps: steps.steps,
    error: null,
    old: { origin: older.origin, size: older.size.toString() },
    new: { origin: newer.origin, size: newer.size.toString() },
  };
}
