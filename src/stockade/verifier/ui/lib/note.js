// C2SP signed notes (https://c2sp.org/signed-note) carrying C2SP tlog-checkpoint bodies
// (https://c2sp.org/tlog-checkpoint), verified in the browser with WebCrypto's Ed25519.
// A mirror of stockade/translog/checkpoint.py: the same strict parsing (parse_note,
// Checkpoint.parse, NoteVerifier.from_key_string) and the same rule for signatures (a
// signature by another key is ignored, one by the trusted key that does not verify rejects
// the note, and the trusted key must have signed).
//
//   note:       <text ending in "\n"> "\n" <signature lines>
//   signature:  "— " <key name> " " base64(4-byte key id || 64-byte Ed25519 signature) "\n"
//   checkpoint: <origin> "\n" <decimal size> "\n" <base64 root> "\n" [<extension> "\n"]...
//   key:        <name> "+" <8 hex key id> "+" base64(0x01 || 32-byte public key)
//   key id:     SHA-256(name || 0x0A || 0x01 || public key)[:4], big-endian

import { HASH_SIZE, bytesEqual, sha256, toHex } from "./merkle.js";

export const ALG_ED25519 = 0x01;
export const ED25519_KEY_SIZE = 32;
export const ED25519_SIGNATURE_SIZE = 64;
export const MAX_SIGNATURES = 100;
export const MAX_NOTE_SIZE = 1 << 20;
export const MAX_TREE_SIZE = (1n << 64n) - 1n;
const SIGNATURE_PREFIX = "\u2014 "; // em dash, space
const DECIMAL = /^(?:0|[1-9][0-9]{0,19})$/;
const HEX_KEY_ID = /^[0-9a-fA-F]{8}$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

export class MalformedNote extends Error {
  constructor(message) {
    super(message);
    this.name = "MalformedNote";
  }
}

export class MalformedKey extends Error {
  constructor(message) {
    super(message);
    this.name = "MalformedKey";
  }
}

/** The signature by the trusted key does not verify, or the trusted key did not sign. */
export class NoteRejected extends Error {
  constructor(message) {
    super(message);
    this.name = "NoteRejected";
  }
}

// -- small strict codecs -------------------------------------------------------------

export function encodeBase64(bytes) {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

/** Standard padded base64, canonical only (re-encodes to the same text); else `Error(what)`. */
export function decodeBase64(text, what, ErrorClass = MalformedNote) {
  if (typeof text !== "string") throw new ErrorClass(`${what}: not a string`);
  if (!BASE64.test(text)) throw new ErrorClass(`${what}: not standard base64`);
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) out[i] = binary.charCodeAt(i);
  if (encodeBase64(out) !== text) throw new ErrorClass(`${what}: not canonical base64`);
  return out;
}

const utf8 = new TextEncoder();

/** Note bytes from a string: UTF-8 of well-formed text only (no lone surrogates). */
export function noteBytes(text, what = "note") {
  if (typeof text !== "string") throw new MalformedNote(`${what} is not a string`);
  if (!text.isWellFormed()) throw new MalformedNote(`${what} is not valid Unicode text`);
  return utf8.encode(text);
}

function decodeText(bytes, what) {
  try {
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw new MalformedNote(`${what}: not UTF-8`);
  }
}

/** Valid UTF-8 without control characters other than newline, ending in a newline. */
function checkText(text, what) {
  for (let offset = 0; offset < text.length; offset += 1) {
    const code = text.charCodeAt(offset);
    if (code < 0x20 && code !== 0x0a) {
      const hex = code.toString(16).toUpperCase().padStart(4, "0");
      throw new MalformedNote(`${what}: control character U+${hex} at character ${offset}`);
    }
  }
  if (!text.endsWith("\n")) throw new MalformedNote(`${what}: does not end in a newline`);
}

/** Key names are non-empty, without Unicode spaces, '+' or control characters. */
export function checkKeyName(name) {
  if (!name) throw new MalformedKey("key name is empty");
  for (const char of name) {
    const code = char.codePointAt(0);
    if (/\s/u.test(char) || char === "+" || code < 0x20 || code === 0x7f) {
      throw new MalformedKey(`key name ${JSON.stringify(name)} contains ${JSON.stringify(char)}`);
    }
  }
}

/** SHA-256(name || 0x0A || algorithm || public key)[:4] as 4 bytes. */
export async function keyId(name, publicKey, algorithm = ALG_ED25519) {
  const nameBytes = utf8.encode(name);
  const data = new Uint8Array(nameBytes.length + 2 + publicKey.length);
  data.set(nameBytes, 0);
  data[nameBytes.length] = 0x0a;
  data[nameBytes.length + 1] = algorithm;
  data.set(publicKey, nameBytes.length + 2);
  return (await sha256(data)).slice(0, 4);
}

// -- checkpoints ---------------------------------------------------------------------

/**
 * The checkpoint in note text `text` (a string ending in "\n"):
 * `{origin, size: BigInt, root: Uint8Array, rootBase64, extensions}`; MalformedNote naming
 * the bad line.
 */
export function parseCheckpoint(text) {
  if (typeof text !== "string") throw new MalformedNote("checkpoint is not text");
  checkText(text, "checkpoint");
  const lines = text.slice(0, -1).split("\n");
  if (lines.length < 3) {
    throw new MalformedNote(`checkpoint has ${lines.length} lines, at least 3 are required`);
  }
  lines.forEach((line, index) => {
    if (!line) throw new MalformedNote(`checkpoint line ${index + 1} is empty`);
  });
  const [origin, sizeLine, rootLine, ...extensions] = lines;
  if (!DECIMAL.test(sizeLine)) {
    throw new MalformedNote(
      `checkpoint size ${JSON.stringify(sizeLine.slice(0, 40))} is not a decimal number ` +
        "without leading zeroes",
    );
  }
  const size = BigInt(sizeLine);
  if (size > MAX_TREE_SIZE) throw new MalformedNote(`checkpoint size ${size} is not a uint64`);
  const root = decodeBase64(rootLine, "checkpoint root hash", MalformedNote);
  if (root.length !== HASH_SIZE) {
    throw new MalformedNote(
      `checkpoint root hash is ${root.length} bytes, a SHA-256 hash is ${HASH_SIZE}`,
    );
  }
  return { origin, size, root, rootBase64: rootLine, extensions };
}

// -- notes ---------------------------------------------------------------------------

function parseSignatureLine(line, number) {
  const what = `signature line ${number}`;
  if (!line.startsWith(SIGNATURE_PREFIX)) {
    throw new MalformedNote(`${what} does not start with an em dash and a space`);
  }
  const rest = line.slice(SIGNATURE_PREFIX.length);
  const space = rest.indexOf(" ");
  if (space < 0) throw new MalformedNote(`${what} has no space between key name and signature`);
  const name = rest.slice(0, space);
  try {
    checkKeyName(name);
  } catch (error) {
    throw new MalformedNote(`${what}: ${error.message}`);
  }
  const blob = decodeBase64(rest.slice(space + 1), `${what} signature`, MalformedNote);
  if (blob.length < 5) {
    throw new MalformedNote(`${what}: signature is ${blob.length} bytes, less than a key id and one`);
  }
  return { name, keyId: blob.slice(0, 4), keyIdHex: toHex(blob.slice(0, 4)), signature: blob.slice(4) };
}

/**
 * Split a signed note (a string, or its UTF-8 bytes) into its text and signature lines,
 * strictly; nothing is verified. `{text: string, textBytes: Uint8Array, signatures}`;
 * MalformedNote saying what is wrong.
 */
export function parseNote(note) {
  const bytes = note instanceof Uint8Array ? note : noteBytes(note);
  if (bytes.length > MAX_NOTE_SIZE) {
    throw new MalformedNote(`note is ${bytes.length} bytes, at most ${MAX_NOTE_SIZE} are allowed`);
  }
  const decoded = decodeText(bytes, "note");
  checkText(decoded, "note");
  const split = decoded.lastIndexOf("\n\n");
  if (split < 0) throw new MalformedNote("note has no empty line between its text and its signatures");
  const text = decoded.slice(0, split + 1);
  const block = decoded.slice(split + 2);
  if (!block) throw new MalformedNote("note has no signature lines after its last empty line");
  const lines = block.slice(0, -1).split("\n");
  if (lines.length > MAX_SIGNATURES) {
    throw new MalformedNote(
      `note has ${lines.length} signatures, at most ${MAX_SIGNATURES} are allowed`,
    );
  }
  const signatures = lines.map((line, index) => parseSignatureLine(line, index + 1));
  return { text, textBytes: utf8.encode(text), signatures };
}

// -- keys ----------------------------------------------------------------------------

/**
 * A verifier key string `<name>+<hex id>+<base64(0x01 || key)>` as
 * `{name, keyId: Uint8Array(4), keyIdHex, publicKey: Uint8Array(32), cryptoKey, keyString}`,
 * after checking that the id is the key's; MalformedKey otherwise.
 */
export async function parseVerifierKey(text) {
  if (typeof text !== "string") throw new MalformedKey("verifier key is not text");
  const trimmed = text.trim();
  const first = trimmed.indexOf("+");
  const second = first < 0 ? -1 : trimmed.indexOf("+", first + 1);
  if (first < 0 || second < 0) {
    throw new MalformedKey("verifier key is not <name>+<hex key id>+<base64 key>");
  }
  const name = trimmed.slice(0, first);
  const hexId = trimmed.slice(first + 1, second);
  const encoded = trimmed.slice(second + 1);
  checkKeyName(name);
  const quoted = JSON.stringify(name);
  if (!HEX_KEY_ID.test(hexId)) {
    throw new MalformedKey(`verifier key ${quoted}: key id ${JSON.stringify(hexId)} is not 8 hex digits`);
  }
  const raw = decodeBase64(encoded, `verifier key ${quoted}`, MalformedKey);
  if (raw.length !== 1 + ED25519_KEY_SIZE || raw[0] !== ALG_ED25519) {
    throw new MalformedKey(`verifier key ${quoted} is not an Ed25519 key (0x01 and 32 bytes)`);
  }
  const publicKey = raw.slice(1);
  let cryptoKey;
  try {
    cryptoKey = await crypto.subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, [
      "verify",
    ]);
  } catch (error) {
    throw new MalformedKey(`verifier key ${quoted}: ${error.message || error}`);
  }
  const id = await keyId(name, publicKey);
  if (toHex(id) !== hexId.toLowerCase()) {
    throw new MalformedKey(
      `verifier key ${quoted}: key id ${hexId} does not match the key (${toHex(id)})`,
    );
  }
  return { name, keyId: id, keyIdHex: toHex(id), publicKey, cryptoKey, keyString: trimmed };
}

/**
 * Verify `note` under the trusted `key` (parseVerifierKey): signatures by other keys are
 * ignored; a signature line with the key's name and id that does not verify rejects the
 * note (NoteRejected naming the key); so does a note the key did not sign. Returns the
 * parsed note; MalformedNote for a note that does not parse.
 */
export async function openNote(note, key) {
  const parsed = parseNote(note);
  await verifyNoteSignature(parsed, key);
  return parsed;
}

/** The signature rule of openNote on an already parsed note (parseNote). */
export async function verifyNoteSignature(parsed, key) {
  let verified = false;
  for (const signature of parsed.signatures) {
    if (signature.name !== key.name || !bytesEqual(signature.keyId, key.keyId)) continue;
    let good = false;
    if (signature.signature.length === ED25519_SIGNATURE_SIZE) {
      good = await crypto.subtle.verify(
        { name: "Ed25519" },
        key.cryptoKey,
        signature.signature,
        parsed.textBytes,
      );
    }
    if (!good) {
      const detail =
        signature.signature.length !== ED25519_SIGNATURE_SIZE
          ? `an Ed25519 signature is ${ED25519_SIGNATURE_SIZE} bytes, this one is ` +
            `${signature.signature.length}`
          : "the note text or the signature was altered";
      throw new NoteRejected(
        `signature by ${key.name} (key id ${key.keyIdHex}) does not verify: ${detail}`,
      );
    }
    verified = true;
  }
  if (!verified) {
    const others = parsed.signatures.map((s) => `${s.name} (${s.keyIdHex})`).join(", ");
    throw new NoteRejected(
      `note is not signed by ${key.name} (key id ${key.keyIdHex}); signatures: ${others}`,
    );
  }
  return parsed;
}

/**
 * A signed checkpoint opened under `key`, with its origin required to be the key's name
 * (tlog-checkpoint: the origin names the log, and the log's key is named after it).
 * Returns `{checkpoint, note}`; MalformedNote / NoteRejected otherwise.
 */
export async function openCheckpoint(note, key) {
  const parsed = await openNote(note, key);
  const checkpoint = parseCheckpoint(parsed.text);
  if (checkpoint.origin !== key.name) {
    throw new NoteRejected(
      `checkpoint is for log ${JSON.stringify(checkpoint.origin)}, the key is ` +
        `${JSON.stringify(key.name)}`,
    );
  }
  return { checkpoint, note: parsed };
}
