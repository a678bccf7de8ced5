// The transparency log page (#/log): the log's current checkpoint with its signature
// verified in this browser, the checkpoints this browser saw before (each new one proved
// consistent with the previous by an RFC 9162 consistency proof checked here), and a receipt
// checker for a result's inclusion proof. Every cryptographic check runs in the browser
// (../lib/receipt.js, note.js, merkle.js: WebCrypto only), under the log key the verifier
// serves or, better, under the key string the auditor pinned and pastes here: a verifier
// that lies about its own log cannot then make this page say "verified".
//
// Stored in localStorage (under STORAGE_KEY): signed checkpoints and the verdicts on them,
// nothing else (never a token, never the pinned key: an auditor pastes that each visit).

import { h, replace, section, timeElement } from "../lib/dom.js";
import { openNote, parseCheckpoint, parseVerifierKey } from "../lib/note.js";
import { verifyConsistency, verifyReceipt } from "../lib/receipt.js";

export const STORAGE_KEY = "stockade.log.checkpoints";
const MAX_KEPT = 20; // checkpoints kept per log origin
const REFRESH_DELAY_MS = 500; // events come in bursts: one refresh per burst

// The key the auditor pinned, kept in memory for this tab only (survives navigation within
// the dashboard, not a reload).
let pinnedKeyString = null;

// -- checkpoint history (localStorage) ---------------------------------------------------

function loadHistory() {
  try {
    const stored = JSON.parse(window.localStorage.getItem(STORAGE_KEY) || "null");
    if (stored && stored.version === 1 && stored.logs && typeof stored.logs === "object") {
      return stored;
    }
  } catch {
    // unreadable: start again
  }
  return { version: 1, logs: {} };
}

function saveHistory(history) {
  try {
    window.localStorage.setItem(STORAGE_KEY, JSON.stringify(history));
  } catch {
    // storage full or disabled: the page still works, it just forgets
  }
}

function seenFor(history, origin) {
  const list = history.logs[origin];
  return Array.isArray(list) ? list.filter((item) => item && typeof item.note === "string") : [];
}

/** The newest checkpoint this browser accepted for `origin` (inconsistent ones are not). */
function lastAccepted(list) {
  for (let i = list.length - 1; i >= 0; i -= 1) {
    if (list[i].check !== "inconsistent" && list[i].check !== "older") return list[i];
  }
  return null;
}

// -- the page ---------------------------------------------------------------------------

function definition(term, ...value) {
  return [h("dt", {}, term), h("dd", {}, ...value)];
}

function stepList(steps) {
  return h(
    "ol",
    { class: "steps" },
    steps.map((step) =>
      h(
        "li",
        { dataset: { step: step.name, ok: step.ok ? "true" : "false" } },
        h("span", { class: step.ok ? "ok" : "bad" }, step.ok ? "✓ " : "✗ ", step.name),
        ": ",
        h("span", { class: "detail" }, step.detail),
      ),
    ),
  );
}

function errorText(error) {
  return error && error.message ? error.message : String(error);
}

export async function render(root, ctx) {
  const state = {
    servedKey: null, // {origin, key} from GET /v1/log/key
    key: null, // parseVerifierKey of the key in use
    keySource: null, // "pinned" | "served"
    head: null, // {checkpoint, note text} of the current checkpoint once verified
    refreshing: false,
    again: false,
    timer: null,
  };

  // -- skeleton (the live regions exist before anything is announced into them) --------
  const keyBox = h("div", { id: "log-key" });
  const pinField = h("input", {
    id: "pinned-key",
    name: "pinned-key",
    type: "text",
    class: "mono",
    autocomplete: "off",
    spellcheck: "false",
    size: "60",
    "aria-describedby": "pinned-key-help pinned-key-status",
  });
  const pinStatus = h("p", { id: "pinned-key-status", role: "status", "aria-live": "polite" });
  const pinForm = h(
    "form",
    { id: "pin-form", class: "pin" },
    h("label", { for: "pinned-key" }, "Pinned log key"),
    pinField,
    h(
      "p",
      { id: "pinned-key-help", class: "help" },
      "The log key string you pinned (<name>+<key id>+<base64 key>: the verifier's ",
      "keys/log-key.pub, or the file `stockade log checkpoint --pin` wrote). Everything on ",
      "this page is then checked under your key instead of the one this verifier serves. ",
      "Not stored.",
    ),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit" }, "Use this key"),
      h(
        "button",
        { type: "button", class: "secondary", id: "unpin-key", on: { click: () => unpin() } },
        "Use the served key",
      ),
    ),
    pinStatus,
  );
  const checkpointBody = h("div", { id: "checkpoint-body" });
  const checkpointCard = h(
    "section",
    {
      id: "checkpoint",
      class: "card",
      "aria-labelledby": "checkpoint-title",
      dataset: { verified: "pending" },
    },
    h("h2", { id: "checkpoint-title" }, "Current checkpoint"),
    checkpointBody,
    h(
      "div",
      { class: "actions" },
      h(
        "button",
        { type: "button", class: "secondary", id: "refresh-log", on: { click: () => refresh() } },
        "Refresh",
      ),
    ),
  );
  const alertBox = h("div", { id: "log-alert", role: "alert" });
  const historyBody = h("div", { id: "history-body" });
  const historyCard = section(
    "history",
    "Checkpoints seen by this browser",
    h(
      "p",
      { class: "help" },
      "Each new checkpoint is proved to extend the one seen before it (an RFC 9162 ",
      "consistency proof from the verifier, checked here). A log that was rewritten, ",
      "truncated or forked fails that proof.",
    ),
    historyBody,
    h(
      "div",
      { class: "actions" },
      h(
        "button",
        { type: "button", class: "secondary", id: "forget-checkpoints", on: { click: () => forget() } },
        "Forget these checkpoints",
      ),
    ),
  );

  const receiptField = h("textarea", {
    id: "receipt-input",
    name: "receipt",
    rows: "8",
    cols: "80",
    class: "mono",
    spellcheck: "false",
    autocomplete: "off",
    "aria-describedby": "receipt-help",
  });
  const earField = h("textarea", {
    id: "receipt-ear",
    name: "ear",
    rows: "3",
    cols: "80",
    class: "mono",
    spellcheck: "false",
    autocomplete: "off",
    "aria-describedby": "receipt-ear-help",
  });
  const checkButton = h("button", { type: "submit", id: "receipt-check-button" }, "Check");
  // Only the one-line verdict is a live region (read out once); the steps are below it.
  const receiptSummary = h("p", {
    id: "receipt-summary",
    role: "status",
    "aria-live": "polite",
    "aria-atomic": "true",
  });
  const receiptDetails = h("div", { id: "receipt-details" });
  const receiptOutput = h("div", { id: "receipt-result" }, receiptSummary, receiptDetails);
  const receiptForm = h(
    "form",
    { id: "receipt-form" },
    h("label", { for: "receipt-input" }, "Receipt or result (JSON)"),
    receiptField,
    h(
      "p",
      { id: "receipt-help", class: "help" },
      "Paste a result's inclusion_proof, a whole result (its entry must then be that result's: ",
      "id, EAR digest, status), or the output of `stockade results show --format json`.",
    ),
    h("label", { for: "receipt-ear" }, "EAR (optional)"),
    earField,
    h(
      "p",
      { id: "receipt-ear-help", class: "help" },
      "An EAR (compact JWT) the logged entry must bind: its SHA-256 must be the entry's ear_sha256.",
    ),
    h("div", { class: "actions" }, checkButton),
  );
  const receiptCard = section(
    "receipt-checker",
    "Check a receipt",
    receiptForm,
    receiptOutput,
  );

  replace(
    root,
    h("h1", {}, "Transparency log"),
    h(
      "p",
      { class: "help" },
      "Every attestation result and operator action is an entry of this verifier's RFC 9162 ",
      "log. This page checks the log's signed checkpoints and receipts in your browser.",
    ),
    alertBox,
    checkpointCard,
    section("log-key-card", "Log key", keyBox, pinForm),
    historyCard,
    receiptCard,
  );

  // -- the key in use ---------------------------------------------------------------------
  async function loadKey() {
    if (!state.servedKey) {
      state.servedKey = await ctx.api("/v1/log/key", { query: { format: "json" } });
    }
    if (pinnedKeyString) {
      state.key = await parseVerifierKey(pinnedKeyString);
      state.keySource = "pinned";
    } else {
      state.key = await parseVerifierKey(state.servedKey.key);
      state.keySource = "served";
    }
    renderKey();
  }

  function renderKey() {
    const key = state.key;
    const differs =
      state.keySource === "pinned" && state.servedKey && state.servedKey.key.trim() !== key.keyString;
    replace(
      keyBox,
      h(
        "dl",
        { class: "facts" },
        definition("In use", h("span", { dataset: { keySource: state.keySource } },
          state.keySource === "pinned" ? "the key you pinned" : "the key this verifier serves")),
        definition("Name", h("span", { class: "mono" }, key.name)),
        definition("Key id", h("span", { class: "mono", id: "log-key-id" }, key.keyIdHex)),
        definition("Key", h("span", { class: "mono", id: "log-key-string" }, key.keyString)),
        differs
          ? definition(
              "Served key",
              h("span", { class: "mono" }, state.servedKey.key),
              h("span", { class: "bad" }, " (differs from your pinned key)"),
            )
          : null,
      ),
    );
  }

  async function pin(text) {
    const trimmed = text.trim();
    if (!trimmed) {
      pinStatus.className = "bad";
      pinStatus.textContent = "Paste a key string first.";
      pinField.focus();
      return;
    }
    try {
      const key = await parseVerifierKey(trimmed);
      pinnedKeyString = key.keyString;
      pinStatus.className = "ok";
      pinStatus.textContent = `Using your pinned key ${key.name} (key id ${key.keyIdHex}).`;
    } catch (error) {
      pinStatus.className = "bad";
      pinStatus.textContent = `Not a log key: ${errorText(error)}`;
      pinField.focus();
      return;
    }
    await refresh();
  }

  async function unpin() {
    pinnedKeyString = null;
    pinField.value = "";
    pinStatus.className = "";
    pinStatus.textContent = "Using the key this verifier serves.";
    await refresh();
  }

  pinForm.addEventListener("submit", (event) => {
    event.preventDefault();
    pin(pinField.value);
  });
  if (pinnedKeyString) pinField.value = pinnedKeyString;

  // -- the current checkpoint and the history ---------------------------------------------
  function showCheckpointFailure(message, note) {
    checkpointCard.dataset.verified = "failed";
    replace(
      checkpointBody,
      h("p", { class: "error", role: "alert" }, `The checkpoint does NOT verify: ${message}`),
      note ? h("pre", { class: "mono" }, note) : null,
    );
  }

  async function checkCurrent() {
    const answer = await ctx.api("/v1/log/checkpoint", { query: { format: "json" } });
    const note = answer && typeof answer.checkpoint === "string" ? answer.checkpoint : null;
    if (!note) {
      showCheckpointFailure("the verifier answered no signed checkpoint", null);
      return null;
    }
    let checkpoint;
    try {
      const parsed = await openNote(note, state.key);
      checkpoint = parseCheckpoint(parsed.text);
      if (checkpoint.origin !== state.key.name) {
        throw new Error(
          `the checkpoint is for log ${JSON.stringify(checkpoint.origin)}, the key is ` +
            `${JSON.stringify(state.key.name)}`,
        );
      }
    } catch (error) {
      showCheckpointFailure(errorText(error), note);
      return null;
    }
    checkpointCard.dataset.verified = "ok";
    checkpointCard.dataset.size = checkpoint.size.toString();
    replace(
      checkpointBody,
      h(
        "dl",
        { class: "facts" },
        definition("Origin", h("span", { class: "mono", id: "checkpoint-origin" }, checkpoint.origin)),
        definition("Size", h("span", { id: "checkpoint-size" }, `${checkpoint.size} entries`)),
        definition("Root", h("span", { class: "mono", id: "checkpoint-root" }, checkpoint.rootBase64)),
        definition(
          "Signature",
          h(
            "span",
            { class: "ok", id: "checkpoint-signature" },
            `verified in this browser (Ed25519, key ${state.key.name}, key id ${state.key.keyIdHex}, ` +
              `${state.keySource === "pinned" ? "your pinned key" : "the served key"})`,
          ),
        ),
      ),
      h("details", {}, h("summary", {}, "Signed note"), h("pre", { class: "mono" }, note)),
    );
    return { checkpoint, note };
  }

  /** Record the verified head in the history, proving it consistent with the last one. */
  async function recordHead(head) {
    const history = loadHistory();
    const origin = head.checkpoint.origin;
    const list = seenFor(history, origin);
    const now = new Date().toISOString();
    const latest = list[list.length - 1];
    if (latest && latest.note === head.note) {
      // Seen already (and judged then): nothing new to prove.
      latest.last_seen = now;
      history.logs[origin] = list;
      saveHistory(history);
      return;
    }
    const previous = lastAccepted(list);
    const item = {
      note: head.note,
      size: head.checkpoint.size.toString(),
      root: head.checkpoint.rootBase64,
      seen_at: now,
      check: "first",
      detail: "the first checkpoint this browser saw of this log",
    };
    if (previous) {
      const previousSize = BigInt(previous.size);
      const size = head.checkpoint.size;
      let verdict;
      if (size === previousSize) {
        verdict = await verifyConsistency(previous.note, head.note, [], state.key.keyString);
      } else {
        const [older, newer] = size > previousSize ? [previous.note, head.note] : [head.note, previous.note];
        const [oldSize, newSize] = size > previousSize ? [previousSize, size] : [size, previousSize];
        let proof;
        try {
          proof = await ctx.api("/v1/log/proof/consistency", {
            query: { old: oldSize.toString(), new: newSize.toString() },
          });
        } catch (error) {
          if (error && error.name === "AbortError") throw error;
          proof = null;
          verdict = {
            ok: false,
            steps: [],
            error: `the verifier gave no consistency proof: ${errorText(error)}`,
          };
        }
        if (proof) verdict = await verifyConsistency(older, newer, proof, state.key.keyString);
        if (verdict.ok && size < previousSize) {
          verdict = {
            ok: false,
            older: true,
            error:
              `the verifier now serves a checkpoint of ${size} entries, older than the one of ` +
              `${previousSize} this browser saw (consistent with it: a stale view, not a fork)`,
          };
        }
      }
      if (verdict.ok) {
        item.check = "consistent";
        item.detail =
          size === previousSize
            ? `same tree as the checkpoint seen before (${size} entries)`
            : `consistent with the checkpoint of ${previousSize} entries seen before`;
      } else {
        item.check = verdict.older ? "older" : "inconsistent";
        item.detail = verdict.older
          ? verdict.error
          : `NOT consistent with the checkpoint of ${previousSize} entries seen before: ${verdict.error}`;
      }
    }
    list.push(item);
    history.logs[origin] = list.slice(-MAX_KEPT);
    saveHistory(history);
  }

  /** Put `content` (keyed by `key`) in the alert region only when it changed, so that a
   *  refresh does not read the same alert out again. */
  function setAlert(key, content) {
    if (alertBox.dataset.key === key) return;
    alertBox.dataset.key = key;
    if (content) replace(alertBox, content);
    else replace(alertBox);
  }

  async function renderHistory(origin) {
    const list = origin ? seenFor(loadHistory(), origin) : [];
    const broken = list.filter((item) => item.check === "inconsistent");
    const stale = list.length && list[list.length - 1].check === "older" ? list[list.length - 1] : null;
    if (broken.length) {
      root.dataset.consistency = "failed";
      const last = broken[broken.length - 1];
      setAlert(
        `failed ${last.size} ${last.root}`,
        h(
          "div",
          { class: "error", dataset: { consistency: "failed" } },
          h("p", {}, h("strong", {}, "The transparency log is NOT consistent with what this browser saw before.")),
          h("p", {}, last.detail),
          h(
            "p",
            {},
            "Keep these checkpoints as evidence (the signed notes are in the table below): two ",
            "checkpoints signed by the log's key that do not extend one another prove the log ",
            "was rewritten or forked.",
          ),
        ),
      );
    } else if (stale) {
      root.dataset.consistency = "stale";
      setAlert(
        `stale ${stale.size} ${stale.root}`,
        h("div", { class: "error", dataset: { consistency: "stale" } }, stale.detail),
      );
    } else {
      root.dataset.consistency = list.length ? "ok" : "none";
      setAlert("", null);
    }
    if (!list.length) {
      replace(historyBody, h("p", { class: "muted" }, "No checkpoint seen yet."));
      return;
    }
    const rows = [];
    for (const item of [...list].reverse()) {
      let signed = true;
      try {
        await openNote(item.note, state.key);
      } catch {
        signed = false;
      }
      const good = item.check === "first" || item.check === "consistent";
      rows.push(
        h(
          "tr",
          { dataset: { size: item.size, check: item.check } },
          h("td", {}, timeElement(item.seen_at)),
          h("td", {}, item.size),
          h("td", { class: "mono" }, item.root),
          h(
            "td",
            {},
            h("span", { class: good ? "ok" : "bad" }, item.check),
            " ",
            h("span", { class: "help" }, item.detail),
            signed ? null : h("span", { class: "bad" }, " (not signed by the key in use)"),
            h("details", {}, h("summary", {}, "Signed note"), h("pre", { class: "mono" }, item.note)),
          ),
        ),
      );
    }
    replace(
      historyBody,
      h(
        "table",
        { class: "data", id: "checkpoint-history" },
        h("caption", { class: "visually-hidden" }, "Checkpoints seen by this browser, newest first"),
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", { scope: "col" }, "Seen"),
            h("th", { scope: "col" }, "Size"),
            h("th", { scope: "col" }, "Root"),
            h("th", { scope: "col" }, "Consistency"),
          ),
        ),
        h("tbody", {}, rows),
      ),
    );
  }

  function forget() {
    const history = loadHistory();
    if (state.key) delete history.logs[state.key.name];
    saveHistory(history);
    ctx.announce("Forgot the checkpoints this browser saw.");
    refresh();
  }

  async function refreshOnce() {
    try {
      await loadKey();
    } catch (error) {
      if (error && (error.name === "AbortError" || error.status === 401)) throw error;
      showCheckpointFailure(`no usable log key: ${errorText(error)}`, null);
      return;
    }
    let head = null;
    try {
      head = await checkCurrent();
    } catch (error) {
      if (error && (error.name === "AbortError" || error.status === 401)) throw error;
      showCheckpointFailure(`the checkpoint could not be read: ${errorText(error)}`, null);
    }
    if (!ctx.isCurrent()) return;
    if (head) {
      state.head = head;
      await recordHead(head);
    }
    if (!ctx.isCurrent()) return;
    await renderHistory(state.key.name);
  }

  /** One refresh at a time; a refresh asked for meanwhile runs once after it. */
  async function refresh() {
    if (state.refreshing) {
      state.again = true;
      return;
    }
    state.refreshing = true;
    try {
      do {
        state.again = false;
        await refreshOnce();
      } while (state.again && ctx.isCurrent());
    } catch (error) {
      if (!(error && (error.name === "AbortError" || error.status === 401))) {
        showCheckpointFailure(errorText(error), null);
      }
    } finally {
      state.refreshing = false;
    }
  }

  // -- the receipt checker ----------------------------------------------------------------
  function receiptsOf(document) {
    if (document && typeof document === "object" && Array.isArray(document.results)) {
      return document.results.map((result, n) => ({
        label: `result ${n + 1} of ${document.results.length}` +
          (result && typeof result.result_id === "string" ? ` (${result.result_id})` : ""),
        receipt: result ? result.inclusion_proof : null,
        result: result && typeof result.ear === "string" ? result : null,
      }));
    }
    if (document && typeof document === "object" && !Array.isArray(document) && "inclusion_proof" in document) {
      return [
        {
          label: typeof document.result_id === "string" ? `result ${document.result_id}` : "result",
          receipt: document.inclusion_proof,
          result: typeof document.ear === "string" ? document : null,
        },
      ];
    }
    return [{ label: "receipt", receipt: document, result: null }];
  }

  async function checkReceipts() {
    const text = receiptField.value.trim();
    const ear = earField.value.trim();
    const checks = [];
    let document;
    try {
      if (!text) throw new Error("paste a receipt or a result first");
      document = JSON.parse(text);
    } catch (error) {
      checks.push({
        label: "input",
        verdict: {
          ok: false,
          steps: [{ name: "input", ok: false, detail: `not JSON: ${errorText(error)}` }],
          error: `input: not JSON: ${errorText(error)}`,
        },
      });
    }
    if (document !== undefined) {
      if (!state.key) await loadKey();
      for (const { label, receipt, result } of receiptsOf(document)) {
        let verdict;
        if (receipt === null || receipt === undefined) {
          const detail = "no inclusion_proof: the result was stored before results were logged";
          verdict = { ok: false, steps: [{ name: "receipt", ok: false, detail }], error: `receipt: ${detail}` };
        } else {
          verdict = await verifyReceipt(receipt, state.key.keyString, {
            ear: ear || undefined,
            result: result || undefined,
          });
        }
        checks.push({ label, verdict });
      }
      if (!checks.length) {
        const detail = "the export lists no results";
        checks.push({
          label: "input",
          verdict: { ok: false, steps: [{ name: "input", ok: false, detail }], error: `input: ${detail}` },
        });
      }
    }
    const ok = checks.every((check) => check.verdict.ok);
    const summary = ok
      ? `Verified: ${checks.length === 1 ? "the receipt" : `all ${checks.length} receipts`} ` +
        `under ${state.key.name} (key id ${state.key.keyIdHex}).`
      : `Not verified: ${checks.find((check) => !check.verdict.ok).verdict.error}`;
    receiptOutput.dataset.receiptCheck = ok ? "ok" : "failed";
    receiptSummary.className = ok ? "ok" : "bad";
    receiptSummary.textContent = summary;
    replace(
      receiptDetails,
      checks.map(({ label, verdict }) =>
        h(
          "div",
          { class: "receipt-verdict", dataset: { verdict: verdict.ok ? "ok" : "failed" } },
          h("h3", {}, `${label}: `, h("span", { class: verdict.ok ? "ok" : "bad" }, verdict.ok ? "verified" : "failed")),
          verdict.checkpoint
            ? h(
                "p",
                { class: "help mono" },
                `checkpoint ${verdict.checkpoint.origin}, size ${verdict.checkpoint.size}, root ${verdict.checkpoint.root}`,
              )
            : null,
          stepList(verdict.steps),
        ),
      ),
    );
  }

  receiptForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    checkButton.disabled = true;
    delete receiptOutput.dataset.receiptCheck;
    receiptSummary.textContent = "";
    replace(receiptDetails);
    try {
      await checkReceipts();
    } catch (error) {
      receiptOutput.dataset.receiptCheck = "failed";
      receiptSummary.className = "bad";
      receiptSummary.textContent = `Not verified: ${errorText(error)}`;
    } finally {
      checkButton.disabled = false;
    }
  });

  // -- live updates -----------------------------------------------------------------------
  ctx.onEvent(() => {
    if (!ctx.isCurrent()) return;
    window.clearTimeout(state.timer);
    state.timer = window.setTimeout(() => {
      if (ctx.isCurrent()) refresh();
    }, REFRESH_DELAY_MS);
  });
  if (ctx.signal) ctx.signal.addEventListener("abort", () => window.clearTimeout(state.timer));

  await refresh();
}
