// Node detail: identity and state, the current result with every reason, the boot event log
// beside the closest reference (differing events highlighted), result history with receipts
// checked in the browser, executions with their proofs, certificate and secrets (names only).
// Live: any transition naming this node fetches everything again (within a few hundred ms).

import {
  h, replace, section, badge, releaseText, labelTags, timeElement, fmtRelative, fmtTime,
  shortHex, errorBox, preservingFocus,
} from "../lib/dom.js";

const REFRESH_MS = 100;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function facts(pairs) {
  return h(
    "dl",
    { class: "facts" },
    pairs.filter(Boolean).map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]),
  );
}

function mono(text) {
  return text === null || text === undefined || text === "" ? h("span", { class: "muted" }, "—") : h("span", { class: "mono" }, String(text));
}

function json(value) {
  return JSON.stringify(value, null, 2);
}

// -- identity -------------------------------------------------------------------------------

function identity(node) {
  const clock = node.clock;
  return facts([
    ["State", badge(node.state)],
    ["Trusted until", node.trusted_until ? [timeElement(node.trusted_until), h("span", { class: "muted" }, ` (${fmtRelative(node.trusted_until)})`)] : h("span", { class: "muted" }, "—")],
    ["Release", releaseText(node.release)],
    ["Node id", mono(node.node_id)],
    ["Labels", labelTags(node.labels)],
    [node.identity_kind === "ak-certificate" ? "AK identity" : "EK fingerprint", mono(node.ek_fingerprint)],
    node.instance ? ["Instance", mono(node.instance)] : null,
    ["Enrolled", timeElement(node.created_at)],
    ["Updated", timeElement(node.updated_at)],
    clock ? ["TPM clock", `resets ${clock.reset_count}, restarts ${clock.restart_count}${clock.safe === false ? " (not safe)" : ""}`] : null,
    node.revoked ? ["Revoked", h("span", { class: "bad" }, "yes")] : null,
  ]);
}

// -- current result ---------------------------------------------------------------------------

function currentResult(node, results) {
  const latest = results.find((result) => result.result_id === node.latest_result_id) || results[0];
  if (!latest) return h("p", { class: "muted", id: "no-result" }, "No attestation result yet.");
  const reasons = latest.reasons || [];
  const failing = latest.status !== "affirming";
  return [
    facts([
      ["Status", badge(latest.status)],
      ["Appraised", timeElement(latest.created_at)],
      ["Valid until", timeElement(latest.not_after)],
      ["Policy", mono(latest.policy)],
      ["Release", releaseText(latest.release)],
      ["Result id", mono(latest.result_id)],
    ]),
    h("h3", { id: "reasons-title" }, reasons.length === 1 ? "Reason" : `Reasons (${reasons.length})`),
    reasons.length
      ? h("ul", { id: "reasons", class: failing ? "failing" : null, "aria-labelledby": "reasons-title" }, reasons.map((reason) => h("li", {}, reason)))
      : h("p", { id: "reasons-none", class: "muted" }, "No reasons recorded."),
  ];
}

// -- boot comparison ----------------------------------------------------------------------------

function eventCell(event) {
  if (!event) return h("td", {}, h("span", { class: "muted" }, "—"));
  return h(
    "td",
    {},
    h("div", { class: "event-type" }, event.type || "event"),
    h("div", { class: "mono" }, event.digest || "—"),
    event.description ? h("div", { class: "event-desc" }, event.description) : null,
  );
}

function bootComparison(boot) {
  if (!boot.available) {
    return h("p", { class: "muted", id: "boot-unavailable" }, boot.unavailable_reason || "The boot event log of this result is not stored.");
  }
  const pcrs = boot.pcrs || [];
  const rows = [];
  let differing = 0;
  for (const pcr of pcrs) {
    for (const event of pcr.events || []) {
      if (event.status !== "same") differing += 1;
      rows.push(
        h(
          "tr",
          { dataset: { status: event.status, pcr: pcr.pcr } },
          h("th", { scope: "row" }, `PCR ${pcr.pcr}`),
          h("td", { class: "num" }, String(event.position)),
          h("td", {}, badge(event.status)),
          eventCell(event.expected),
          eventCell(event.found),
        ),
      );
    }
  }
  const table = h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "data fixed", id: "boot-table" },
      h("caption", { class: "visually-hidden" }, "Boot events: the reference's expected event beside the node's event, per PCR"),
      h(
        "colgroup",
        {},
        h("col", { class: "col-pcr" }),
        h("col", { class: "col-pos" }),
        h("col", { class: "col-status" }),
        h("col", {}),
        h("col", {}),
      ),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col" }, "PCR"),
          h("th", { scope: "col", class: "num" }, "#"),
          h("th", { scope: "col" }, "Status"),
          h("th", { scope: "col" }, "Expected (reference)"),
          h("th", { scope: "col" }, "Found (node's event log)"),
        ),
      ),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: "5", class: "muted" }, "No events to compare."))),
    ),
  );
  if (!differing) {
    // Nothing differs: the whole log is one click away rather than a page long.
    return [
      facts([
        ["Result", [mono(boot.result_id), " ", badge(boot.status)]],
        ["Reference", boot.reference ? boot.reference : h("span", { class: "muted" }, "none matched")],
        ["Differences", h("span", { class: "ok" }, `none: all ${rows.length} events match the reference`)],
      ]),
      h("details", { id: "boot-all" }, h("summary", {}, `Show the ${rows.length} events beside the reference`), table),
    ];
  }
  const only = h("input", { type: "checkbox", id: "boot-only-differing" });
  only.addEventListener("change", () => {
    for (const row of table.querySelectorAll("tbody tr[data-status]")) {
      row.hidden = only.checked && row.dataset.status === "same";
    }
  });
  // One button per differing event: moves focus (and the view) to its row.
  const jumps = [...table.querySelectorAll('tbody tr[data-status]:not([data-status="same"])')].map((row, index) => {
    row.id = `boot-diff-${index}`;
    row.tabIndex = -1;
    const type = row.querySelector(".event-type");
    return h(
      "li",
      {},
      h(
        "button",
        {
          type: "button",
          class: "secondary small",
          on: { click: () => { row.scrollIntoView({ block: "center" }); row.focus({ preventScroll: true }); } },
        },
        `PCR ${row.dataset.pcr} #${row.querySelector("td.num").textContent} ${row.dataset.status}: ${type ? type.textContent : "event"}`,
      ),
    );
  });
  return [
    facts([
      ["Result", [mono(boot.result_id), " ", badge(boot.status)]],
      ["Reference", boot.reference ? boot.reference : h("span", { class: "muted" }, "none matched")],
      ["Differences", differing ? h("span", { class: "bad" }, `${differing} event${differing === 1 ? "" : "s"} differ from the reference`) : h("span", { class: "ok" }, "none")],
    ]),
    h(
      "ul",
      { class: "pcr-summary", "aria-label": "Quoted PCR values against the reference" },
      pcrs.map((pcr) =>
        h(
          "li",
          { dataset: { matches: String(Boolean(pcr.matches)) }, title: `quoted ${pcr.quoted || "—"}\nexpected ${pcr.expected || "—"}` },
          `PCR ${pcr.pcr}: ${pcr.matches ? "matches" : "differs"}`,
        ),
      ),
    ),
    h("ul", { class: "jumps", "aria-label": "Events that differ: go to the row" }, jumps),
    h("div", { class: "actions" }, only, h("label", { for: "boot-only-differing", class: "inline" }, "Show only the events that differ")),
    table,
  ];
}

// -- results and receipts -------------------------------------------------------------------

let keyPromise = null;
function logKey(ctx) {
  if (!keyPromise) {
    keyPromise = ctx.api("/v1/log/key", { query: { format: "json" } }).then((answer) => answer.key);
    keyPromise.catch(() => {
      keyPromise = null;
    });
  }
  return keyPromise;
}

function receiptOutput(outcome) {
  const ok = Boolean(outcome.ok);
  return h(
    "div",
    { dataset: { receiptCheck: ok ? "ok" : "failed" }, role: "status" },
    h("strong", {}, ok ? "Receipt verified in this browser" : "Receipt check failed"),
    outcome.error ? h("div", {}, String(outcome.error)) : null,
    outcome.steps && outcome.steps.length
      ? h(
          "ul",
          {},
          outcome.steps.map((step) =>
            h("li", { class: step.ok ? null : "bad" }, `${step.ok ? "✓" : "✗"} ${step.name}${step.detail ? ": " + step.detail : ""}`),
          ),
        )
      : null,
  );
}

async function checkReceipt(ctx, result) {
  try {
    const [{ verifyReceipt }, key] = await Promise.all([import("../lib/receipt.js"), logKey(ctx)]);
    return await verifyReceipt(result.inclusion_proof, key, { ear: result.ear });
  } catch (error) {
    return { ok: false, steps: [], error: error && error.message ? error.message : String(error) };
  }
}

function historyTable(ctx, nodeId, results, checks) {
  if (!results.length) return h("p", { class: "muted" }, "No results yet.");
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "data", id: "history-table" },
      h("caption", { class: "visually-hidden" }, "Attestation results, newest first"),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col" }, "Appraised"),
          h("th", { scope: "col" }, "Status"),
          h("th", { scope: "col" }, "Reasons"),
          h("th", { scope: "col" }, "Release"),
          h("th", { scope: "col" }, "Log index"),
          h("th", { scope: "col" }, "Receipt"),
        ),
      ),
      h(
        "tbody",
        {},
        results.map((result) => {
          const reasons = result.reasons || [];
          const out = h("div", { class: "receipt-out" });
          if (checks.has(result.result_id)) out.append(receiptOutput(checks.get(result.result_id)));
          let action;
          if (result.inclusion_proof) {
            action = h(
              "button",
              {
                type: "button",
                class: "secondary",
                dataset: { focus: `receipt-${result.result_id}`, resultId: result.result_id },
                "aria-label": `Check the receipt of the result of ${fmtTime(result.created_at)}`,
              },
              "Check receipt",
            );
            action.addEventListener("click", async () => {
              action.disabled = true;
              replace(out, h("span", { class: "muted" }, "Checking…"));
              const outcome = await checkReceipt(ctx, result);
              checks.set(result.result_id, outcome);
              replace(out, receiptOutput(outcome));
              action.disabled = false;
              ctx.announce(outcome.ok ? "Receipt verified" : "Receipt check failed");
            });
          } else {
            action = h("span", { class: "muted" }, "not in the log");
          }
          return h(
            "tr",
            { dataset: { resultId: result.result_id, status: null } },
            h(
              "th",
              { scope: "row", class: "nowrap" },
              h("a", { href: `#/nodes/${encodeURIComponent(nodeId)}?result=${encodeURIComponent(result.result_id)}`, title: "Show this result's boot comparison", dataset: { focus: `boot-${result.result_id}` } }, fmtTime(result.created_at)),
            ),
            h("td", {}, badge(result.status)),
            h(
              "td",
              {},
              reasons.length === 0
                ? h("span", { class: "muted" }, "—")
                : reasons.length === 1
                  ? reasons[0]
                  : h("details", {}, h("summary", {}, `${reasons[0]} (+${reasons.length - 1} more)`), h("ul", {}, reasons.map((reason) => h("li", {}, reason)))),
            ),
            h("td", {}, releaseText(result.release)),
            h("td", { class: "num" }, result.log_index === null || result.log_index === undefined ? "—" : String(result.log_index)),
            h("td", {}, action, out),
          );
        }),
      ),
    ),
  );
}

// -- executions -----------------------------------------------------------------------------

function recordSummary(record) {
  if (!record || typeof record !== "object") return String(record ?? "");
  const wanted = ["image_reference", "image", "manifest_digest", "command", "argv", "container", "path", "name"];
  for (const key of wanted) {
    if (record[key]) return Array.isArray(record[key]) ? record[key].join(" ") : String(record[key]);
  }
  return Object.keys(record).slice(0, 4).join(", ");
}

function executionsTable(executions) {
  if (!executions.length) return h("p", { class: "muted" }, "No executions recorded.");
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "data fixed", id: "executions-table" },
      h("caption", { class: "visually-hidden" }, "Executions and the quotes that prove them"),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col", style: null }, "Recorded"),
          h("th", { scope: "col" }, "What ran"),
          h("th", { scope: "col" }, "Proof"),
        ),
      ),
      h(
        "tbody",
        {},
        executions.map((execution) => {
          const proof = execution.proof || {};
          return h(
            "tr",
            { dataset: { recnum: execution.recnum } },
            h(
              "th",
              { scope: "row" },
              timeElement(execution.recorded_at),
              h("div", { class: "muted" }, `boot ${execution.boot.reset_count}/${execution.boot.restart_count}, record ${execution.recnum}`),
            ),
            h(
              "td",
              {},
              h("div", {}, h("span", { class: "badge" }, execution.kind), " ", h("span", { class: "mono" }, recordSummary(execution.record))),
              h("details", {}, h("summary", {}, "Record"), h("pre", {}, json(execution.record))),
            ),
            h(
              "td",
              {},
              h("div", {}, "Quoted ", timeElement(proof.quoted_at), " in result ", shortHex(proof.result_id, 13)),
              h(
                "details",
                {},
                h("summary", {}, "Quote, signature, PCRs, AK and execution log"),
                facts([
                  ["Quote (TPMS_ATTEST, base64)", h("pre", {}, proof.quote || "—")],
                  ["Signature (base64)", h("pre", {}, proof.signature || "—")],
                  ["PCR values", h("pre", {}, json(proof.pcrs))],
                  ["AK public (base64)", h("pre", {}, proof.ak_public || "—")],
                  ["Execution log up to it (base64)", h("pre", {}, proof.execution_log || "—")],
                ]),
              ),
            ),
          );
        }),
      ),
    ),
  );
}

// -- membership -----------------------------------------------------------------------------

function membership(answer) {
  const certificate = answer.certificate;
  const secrets = answer.secrets || [];
  return [
    h("h3", {}, "Certificate"),
    certificate
      ? facts([
          ["Serial", mono(certificate.serial)],
          ["Valid", [timeElement(certificate.not_before), " to ", timeElement(certificate.not_after)]],
          ["Issued", timeElement(certificate.issued_at)],
          ["Key (TPM name)", mono(certificate.key_name)],
          ["Under result", mono(certificate.result_id)],
        ])
      : h("p", { class: "muted" }, "No certificate issued."),
    h("h3", {}, "Secrets granted (names only)"),
    secrets.length
      ? h(
          "table",
          { class: "data", id: "secrets-table" },
          h("caption", { class: "visually-hidden" }, "Secrets and whether this node is granted them"),
          h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Name"), h("th", { scope: "col" }, "Granted now"), h("th", { scope: "col" }, "Last released"))),
          h(
            "tbody",
            {},
            secrets.map((secret) =>
              h(
                "tr",
                {},
                h("th", { scope: "row", class: "mono" }, secret.name),
                h("td", {}, secret.granted ? h("span", { class: "ok" }, "yes") : h("span", { class: "muted" }, "no")),
                h("td", {}, timeElement(secret.released_at)),
              ),
            ),
          ),
        )
      : h("p", { class: "muted" }, "No secret is granted to this node."),
  ];
}

// -- the page ---------------------------------------------------------------------------------

export async function render(root, ctx) {
  const wanted = ctx.segments[1]; // a node id, or a node's name
  let nodeId = wanted;
  const resultParam = ctx.params.get("result") || null;
  const heading = h("h1", {}, "Node");
  const parts = {
    identity: h("div"),
    current: h("div", { id: "current-result" }),
    boot: h("div"),
    history: h("div"),
    executions: h("div"),
    membership: h("div"),
  };
  const checks = new Map(); // receipt checks made on this page, kept across live refreshes
  root.append(
    h("p", { class: "muted" }, h("a", { href: "#/nodes" }, "← All nodes")),
    heading,
    h("div", { class: "grid-2" }, section("identity", "Identity and state", parts.identity), section("current", "Current result", parts.current)),
    h("section", { class: "card", id: "boot", "aria-labelledby": "boot-title" }, h("h2", { id: "boot-title" }, resultParam ? "Boot event log of the selected result, against the reference" : "Boot event log against the reference"), parts.boot),
    section("history", "Result history (latest 20)", parts.history),
    h("div", { class: "grid-2" }, section("executions", "Executions", parts.executions), section("membership", "Certificate and secrets", parts.membership)),
  );

  const guard = async (target, load, draw) => {
    try {
      const answer = await load();
      if (ctx.isCurrent()) preservingFocus(() => replace(target, draw(answer)));
      return answer;
    } catch (error) {
      if (error.status === 401 || error.name === "AbortError") throw error;
      if (ctx.isCurrent()) replace(target, errorBox(error));
      return null;
    }
  };

  // The node by id (node ids are UUIDs); else the node of that exact name (a link may name
  // it, e.g. #/nodes/web-1); else null.
  const fetchNode = async () => {
    if (nodeId !== wanted || UUID.test(wanted)) {
      try {
        return await ctx.api(`/v1/nodes/${encodeURIComponent(nodeId)}`);
      } catch (error) {
        if (error.status !== 404 && error.status !== 422) throw error;
      }
    }
    const page = await ctx.api("/v1/fleet/nodes", { query: { name: wanted, limit: 200 } });
    const row = (page.nodes || []).find((candidate) => candidate.name === wanted);
    if (!row) return null;
    nodeId = row.node_id;
    return ctx.api(`/v1/nodes/${encodeURIComponent(nodeId)}`);
  };

  let missing = false;
  const load = async () => {
    const node = await fetchNode();
    if (!node) {
      missing = true;
      replace(heading, "Unknown node");
      replace(parts.identity, h("p", { id: "node-missing" }, `No node ${wanted} (yet): this page fills in when it enrolls.`));
      return;
    }
    missing = false;
    const enc = encodeURIComponent(nodeId);
    replace(heading, node.name || node.node_id);
    preservingFocus(() => replace(parts.identity, identity(node)));
    const resultsJob = guard(parts.history, () => ctx.api(`/v1/nodes/${enc}/results`, { query: { limit: 20 } }), (answer) => historyTable(ctx, nodeId, answer.results || [], checks));
    const tasks = [
      resultsJob.then((answer) => {
        if (answer && ctx.isCurrent()) preservingFocus(() => replace(parts.current, currentResult(node, answer.results || [])));
      }),
      node.latest_result_id || resultParam
        ? guard(parts.boot, () => ctx.api(`/v1/nodes/${enc}/boot`, { query: { result: resultParam } }), bootComparison)
        : replace(parts.boot, h("p", { class: "muted" }, "No attestation result yet: nothing to compare.")),
      guard(parts.executions, () => ctx.api("/v1/executions", { query: { node: nodeId, limit: 50 } }), (answer) => executionsTable(answer.executions || [])),
      guard(parts.membership, () => ctx.api(`/v1/fleet/nodes/${enc}/membership`), membership),
    ];
    await Promise.all(tasks);
  };

  await load();

  // One load at a time; events that arrive during a load cause one more load after it.
  let running = false;
  let again = false;
  const reload = async () => {
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      do {
        again = false;
        try {
          await load();
        } catch (error) {
          if (ctx.isCurrent() && error.status !== 401 && error.name !== "AbortError") replace(parts.current, errorBox(error));
        }
      } while (again && ctx.isCurrent());
    } finally {
      running = false;
    }
  };
  let timer = null;
  ctx.onEvent((event) => {
    if (event.node_id !== nodeId && event.name !== wanted) return;
    if (event.from !== event.to) ctx.announce(`${event.name || nodeId} is now ${event.to}${event.reason ? ": " + event.reason : ""}`);
    if (timer !== null) return;
    timer = window.setTimeout(() => {
      timer = null;
      reload();
    }, missing ? 0 : REFRESH_MS);
  });
}
