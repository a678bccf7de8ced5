// Fleet overview: counts by state and by release, the nodes failing and those whose trust runs
// out soonest, a timeline of transitions, and the transparency log's head. GET
// /v1/fleet/summary; live: each transition is added to the timeline at once and the counts are
// fetched again (at most every REFRESH_MS).

import {
  h, replace, section, badge, releaseText, timeElement, fmtRelative, fmtTime, STATES,
  preservingFocus, errorBox,
} from "../lib/dom.js";

const REFRESH_MS = 1000;
const TIMELINE_MAX = 50;

function nodeLink(row) {
  const name = row.name || row.node_id;
  return h("a", { href: `#/nodes/${encodeURIComponent(row.node_id)}`, class: "node-name", title: name, dataset: { focus: `node-${row.node_id}` } }, name);
}

function stateCounts(summary) {
  const states = summary.states || {};
  return h(
    "ul",
    { class: "counts", "aria-label": "Nodes by state" },
    h("li", {}, h("a", { href: "#/nodes", class: "total", dataset: { focus: "count-all" } }, h("span", { class: "count", id: "count-all" }, String(summary.nodes ?? 0)), "nodes in all")),
    STATES.map((state) =>
      h(
        "li",
        {},
        h(
          "a",
          { href: `#/nodes?state=${state}`, dataset: { focus: `count-${state}` } },
          h("span", { class: "count", dataset: { count: state } }, String(states[state] ?? 0)),
          badge(state),
        ),
      ),
    ),
  );
}

function stateBar(states, total) {
  const bar = h("span", { class: "bar", "aria-hidden": "true" });
  for (const state of STATES) {
    const count = (states || {})[state] || 0;
    if (count > 0 && total > 0) {
      const part = h("span", { dataset: { state } });
      part.style.width = `${(100 * count) / total}%`;
      bar.append(part);
    }
  }
  return bar;
}

function releasesTable(releases) {
  if (!releases || !releases.length) return h("p", { class: "muted" }, "No nodes yet.");
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "data" },
      h("caption", { class: "visually-hidden" }, "Nodes by release"),
      h(
        "thead",
        {},
        h("tr", {}, h("th", { scope: "col" }, "Release"), h("th", { scope: "col", class: "num" }, "Nodes"), h("th", { scope: "col" }, "States")),
      ),
      h(
        "tbody",
        {},
        releases.map((entry) => {
          const release = entry.release;
          const filter = release ? (release.version ? `${release.name}@${release.version}` : release.name) : "none";
          const states = Object.entries(entry.states || {}).map(([state, count]) => `${count} ${state}`).join(", ");
          return h(
            "tr",
            {},
            h(
              "th",
              { scope: "row" },
              h("a", { href: `#/nodes?release=${encodeURIComponent(filter)}`, dataset: { focus: `release-${filter}` } }, release ? releaseText(release) : "no release recorded"),
              release && release.security_version !== null && release.security_version !== undefined
                ? h("span", { class: "muted" }, ` (security version ${release.security_version})`)
                : null,
            ),
            h("td", { class: "num" }, String(entry.nodes)),
            h("td", {}, stateBar(entry.states, entry.nodes), h("span", { class: "muted" }, states)),
          );
        }),
      ),
    ),
  );
}

function failingTable(rows) {
  if (!rows || !rows.length) return h("p", { class: "ok" }, "No node is failing or untrusted.");
  return h(
    "table",
    { class: "data" },
    h("caption", { class: "visually-hidden" }, "Nodes failing, newest result first"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Node"), h("th", { scope: "col" }, "State"), h("th", { scope: "col" }, "Reason"), h("th", { scope: "col" }, "Since"))),
    h(
      "tbody",
      {},
      rows.map((row) =>
        h(
          "tr",
          { dataset: { nodeId: row.node_id } },
          h("th", { scope: "row" }, nodeLink(row)),
          h("td", {}, badge(row.state)),
          h("td", { class: "reason" }, row.last_result && row.last_result.reason ? row.last_result.reason : h("span", { class: "muted" }, "—")),
          h("td", { class: "nowrap" }, row.last_result ? h("span", { title: fmtTime(row.last_result.created_at) }, fmtRelative(row.last_result.created_at)) : "—"),
        ),
      ),
    ),
  );
}

function staleTable(rows) {
  if (!rows || !rows.length) return h("p", { class: "muted" }, "No trusted node.");
  return h(
    "table",
    { class: "data" },
    h("caption", { class: "visually-hidden" }, "Trusted nodes whose trust expires soonest"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Node"), h("th", { scope: "col" }, "Release"), h("th", { scope: "col" }, "Trusted until"))),
    h(
      "tbody",
      {},
      rows.map((row) =>
        h(
          "tr",
          { dataset: { nodeId: row.node_id } },
          h("th", { scope: "row" }, nodeLink(row)),
          h("td", {}, releaseText(row.release)),
          h("td", { class: "nowrap" }, h("span", { title: fmtTime(row.trusted_until) }, fmtRelative(row.trusted_until))),
        ),
      ),
    ),
  );
}

export function transitionItem(event, fresh = false) {
  return h(
    "li",
    { class: fresh ? "fresh" : null, dataset: { eventId: event.id, nodeId: event.node_id } },
    h("span", { class: "when" }, timeElement(event.time)),
    h(
      "span",
      { class: "what" },
      h("a", { href: `#/nodes/${encodeURIComponent(event.node_id)}`, class: "node-name", title: event.name || event.node_id, dataset: { focus: `event-${event.id}` } }, event.name || event.node_id),
      " ",
      event.from ? badge(event.from) : h("span", { class: "muted" }, "new"),
      " → ",
      badge(event.to),
      " ",
      h("span", { class: "reason" }, event.reason || ""),
      event.actor ? h("span", { class: "muted" }, ` (by ${event.actor})`) : null,
    ),
  );
}

function logBox(log) {
  if (!log) return h("p", { class: "muted" }, "The log's signed head is unavailable.");
  return h(
    "dl",
    { class: "facts" },
    h("dt", {}, "Origin"), h("dd", { class: "mono" }, log.origin),
    h("dt", {}, "Entries"), h("dd", {}, String(log.size)),
    h("dt", {}, "Check"), h("dd", {}, h("a", { href: "#/log" }, "Checkpoints and receipts")),
  );
}

export async function render(root, ctx) {
  const parts = {
    updated: h("p", { class: "muted", id: "as-of" }),
    counts: h("div"),
    releases: h("div"),
    failing: h("div"),
    stale: h("div"),
    timeline: h("ol", { class: "timeline", id: "timeline", tabindex: "0", "aria-label": "Transitions, newest first" }),
    log: h("div"),
  };
  root.append(
    h("h1", {}, "Fleet overview"),
    parts.updated,
    h("section", { class: "card", id: "states", "aria-labelledby": "states-title" }, h("h2", { id: "states-title" }, "Nodes by state"), parts.counts),
    h(
      "div",
      { class: "grid-2" },
      h(
        "div",
        { class: "stack" },
        section("failing", "Failing or untrusted", parts.failing),
        section("stale", "Trust expiring soonest", parts.stale),
        section("releases", "Nodes by release", parts.releases),
      ),
      h(
        "div",
        { class: "stack" },
        section("transitions", "Timeline of transitions", parts.timeline),
        section("log", "Transparency log", parts.log),
      ),
    ),
  );

  let newest = 0;
  const fill = (summary) =>
    preservingFocus(() => {
      replace(parts.updated, "As of ", timeElement(summary.as_of), ". Updates live as nodes change state.");
      replace(parts.counts, stateCounts(summary));
      replace(parts.releases, releasesTable(summary.releases));
      replace(parts.failing, failingTable(summary.failing));
      replace(parts.stale, staleTable(summary.stale_soonest));
      replace(parts.log, logBox(summary.log));
      const events = summary.transitions || [];
      if (events.length) newest = Math.max(newest, ...events.map((event) => event.id || 0));
      replace(parts.timeline, events.length ? events.map((event) => transitionItem(event)) : h("li", { class: "muted" }, "No transitions yet."));
    });

  fill(await ctx.api("/v1/fleet/summary"));

  let timer = null;
  let last = 0;
  const refresh = async () => {
    timer = null;
    last = Date.now();
    try {
      const summary = await ctx.api("/v1/fleet/summary");
      if (ctx.isCurrent()) fill(summary);
    } catch (error) {
      if (ctx.isCurrent() && error.status !== 401 && error.name !== "AbortError") replace(parts.updated, errorBox(error));
    }
  };
  ctx.onEvent((event) => {
    if (event.id && event.id > newest) {
      newest = event.id;
      const empty = parts.timeline.querySelector("li.muted");
      if (empty) empty.remove();
      parts.timeline.prepend(transitionItem(event, true));
      while (parts.timeline.children.length > TIMELINE_MAX) parts.timeline.lastElementChild.remove();
    }
    if (["failed", "untrusted", "revoked"].includes(event.to) && event.from !== event.to) {
      ctx.announce(`${event.name || event.node_id} is now ${event.to}: ${event.reason || ""}`);
    }
    if (timer === null) timer = window.setTimeout(refresh, Math.max(0, REFRESH_MS - (Date.now() - last)));
  });
}
