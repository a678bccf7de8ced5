// The node list: filters (state, release, label, name) kept in the URL hash, server-side keyset
// paging (GET /v1/fleet/nodes: `total` matching, `next` cursor), so the first page renders as
// fast at 20,000 nodes as at 20. Live: the visible page is fetched again when an event names a
// node on it (or, less often, when any node changes: it may now match the filters).

import { h, replace, badge, releaseText, labelTags, timeElement, fmtRelative, fmtTime, STATES, preservingFocus, errorBox } from "../lib/dom.js";

const DEFAULT_PAGE = 50;
const MAX_PAGE = 200;
const NEAR_MS = 250; // an event about a node on screen
const FAR_MS = 5000; // any other event

const FILTERS = ["state", "release", "label", "name"];

function filterForm(ctx, values) {
  const state = h(
    "select",
    { id: "filter-state", name: "state" },
    h("option", { value: "" }, "any state"),
    STATES.map((name) => h("option", { value: name, selected: values.state === name }, name)),
  );
  const text = (name, label, placeholder, help) =>
    h(
      "div",
      {},
      h("label", { for: `filter-${name}` }, label),
      h("input", {
        id: `filter-${name}`,
        name,
        type: "search",
        value: values[name] || "",
        placeholder,
        autocomplete: "off",
        spellcheck: "false",
        "aria-describedby": `filter-${name}-help`,
      }),
      h("span", { id: `filter-${name}-help`, class: "visually-hidden" }, help),
    );
  const form = h(
    "form",
    { class: "filters card", role: "search", "aria-label": "Filter nodes" },
    h("div", {}, h("label", { for: "filter-state" }, "State"), state),
    text("release", "Release", "name, name@version or none", "A release name, name@version, or none for nodes without a recorded release."),
    text("label", "Label", "key=value", "One label as key=value."),
    text("name", "Name contains", "part of a node name", "Case-insensitive part of the node name."),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit" }, "Apply"),
      h("button", { type: "button", class: "secondary", id: "filter-reset", on: { click: () => ctx.navigate("#/nodes") } }, "Reset"),
    ),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const params = new URLSearchParams();
    for (const name of FILTERS) {
      const value = form.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    const query = params.toString();
    ctx.navigate(query ? `#/nodes?${query}` : "#/nodes");
  });
  return form;
}

function nodeRow(ctx, row) {
  const href = `#/nodes/${encodeURIComponent(row.node_id)}`;
  const result = row.last_result;
  const tr = h(
    "tr",
    { dataset: { nodeId: row.node_id } },
    h("th", { scope: "row" }, h("a", { href, class: "node-name", title: row.name || row.node_id, dataset: { focus: `node-${row.node_id}` } }, row.name || row.node_id)),
    h("td", {}, badge(row.state)),
    h("td", { class: "nowrap" }, releaseText(row.release)),
    h(
      "td",
      {},
      result
        ? [badge(result.status), " ", h("span", { class: "muted", title: fmtTime(result.created_at) }, fmtRelative(result.created_at))]
        : h("span", { class: "muted" }, "no result"),
      result && result.reason ? h("div", { class: "reason" }, result.reason) : null,
    ),
    h("td", { class: "nowrap" }, row.trusted_until ? h("span", { title: fmtTime(row.trusted_until) }, fmtRelative(row.trusted_until)) : h("span", { class: "muted" }, "—")),
    h("td", {}, labelTags(row.labels)),
  );
  // A click anywhere in the row opens the node; the keyboard uses the name's link (Enter).
  tr.addEventListener("click", (event) => {
    if (event.target.closest("a, button, input, select")) return;
    if (window.getSelection && String(window.getSelection())) return;
    ctx.navigate(href);
  });
  return tr;
}

export async function render(root, ctx) {
  const values = Object.fromEntries(FILTERS.map((name) => [name, ctx.params.get(name) || ""]));
  const after = ctx.params.get("after") || "";
  const asked = Number.parseInt(ctx.params.get("limit") || "", 10);
  const PAGE_SIZE = asked >= 1 && asked <= MAX_PAGE ? asked : DEFAULT_PAGE;
  const back = ctx.params.getAll("back"); // cursors of the earlier pages, for "Previous page"
  const status = h("p", { id: "node-count", "aria-live": "polite" });
  const body = h("tbody");
  const pager = h("div", { class: "pager" });
  root.append(
    h("h1", {}, "Nodes"),
    filterForm(ctx, values),
    h(
      "section",
      { class: "card", "aria-labelledby": "nodes-title" },
      h("h2", { id: "nodes-title", class: "visually-hidden" }, "Matching nodes"),
      status,
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "data", id: "node-table" },
          h("caption", { class: "visually-hidden" }, "Nodes, by name"),
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              h("th", { scope: "col" }, "Name"),
              h("th", { scope: "col" }, "State"),
              h("th", { scope: "col" }, "Release"),
              h("th", { scope: "col" }, "Latest result"),
              h("th", { scope: "col" }, "Trusted until"),
              h("th", { scope: "col" }, "Labels"),
            ),
          ),
          body,
        ),
      ),
      pager,
    ),
  );

  const query = { ...values, after, limit: PAGE_SIZE };
  let onScreen = new Set();
  const fill = (page) =>
    preservingFocus(() => {
      const rows = page.nodes || [];
      onScreen = new Set(rows.map((row) => row.node_id));
      const shownFrom = back.length * PAGE_SIZE + (rows.length ? 1 : 0);
      const shownTo = back.length * PAGE_SIZE + rows.length;
      replace(
        status,
        page.total === 1 ? "1 node matches" : `${page.total} nodes match`,
        rows.length ? `; showing ${shownFrom}–${shownTo}.` : ".",
      );
      replace(
        body,
        rows.length
          ? rows.map((row) => nodeRow(ctx, row))
          : h("tr", {}, h("td", { colspan: "6", class: "muted" }, "No node matches these filters.")),
      );
      const link = (cursorAfter, cursorsBack) => {
        const params = new URLSearchParams();
        for (const name of FILTERS) if (values[name]) params.set(name, values[name]);
        if (PAGE_SIZE !== DEFAULT_PAGE) params.set("limit", String(PAGE_SIZE));
        if (cursorAfter) params.set("after", cursorAfter);
        for (const cursor of cursorsBack) params.append("back", cursor);
        const text = params.toString();
        return text ? `#/nodes?${text}` : "#/nodes";
      };
      replace(
        pager,
        back.length
          ? h("button", { type: "button", class: "secondary", id: "prev-page", dataset: { focus: "prev-page" }, on: { click: () => ctx.navigate(link(back[back.length - 1], back.slice(0, -1))) } }, "Previous page")
          : null,
        page.next
          ? h("button", { type: "button", id: "next-page", dataset: { focus: "next-page" }, on: { click: () => ctx.navigate(link(page.next, [...back, after])) } }, "Next page")
          : null,
      );
    });

  try {
    fill(await ctx.api("/v1/fleet/nodes", { query }));
  } catch (error) {
    if (error.status === 400) {
      replace(status, errorBox(error));
      return;
    }
    throw error;
  }
  performance.mark("stockade:node-rows");

  let timer = null;
  let due = Infinity;
  const refresh = async () => {
    timer = null;
    due = Infinity;
    try {
      const page = await ctx.api("/v1/fleet/nodes", { query });
      if (ctx.isCurrent()) fill(page);
    } catch (error) {
      if (ctx.isCurrent() && error.status !== 401 && error.name !== "AbortError") replace(status, errorBox(error));
    }
  };
  ctx.onEvent((event) => {
    const wait = onScreen.has(event.node_id) ? NEAR_MS : FAR_MS;
    const when = Date.now() + wait;
    if (when < due) {
      window.clearTimeout(timer);
      due = when;
      timer = window.setTimeout(refresh, wait);
    }
  });
}
