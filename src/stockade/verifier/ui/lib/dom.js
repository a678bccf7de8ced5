// DOM helpers. Everything the dashboard shows is built with these (createElement and text
// nodes): data never goes through innerHTML, so a node name or label is always text.

/**
 * h("a", {href: "#/", class: "x", dataset: {state: "ok"}, on: {click: fn}}, "text", child)
 * Children: strings and numbers become text nodes; Nodes are appended; arrays are
 * flattened; null, undefined and false are skipped.
 */
export function h(tag, attrs, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "dataset") {
      for (const [key, item] of Object.entries(value)) {
        if (item !== null && item !== undefined) element.dataset[key] = String(item);
      }
    } else if (name === "on") {
      for (const [event, handler] of Object.entries(value)) element.addEventListener(event, handler);
    } else if (name === "class") {
      element.className = value;
    } else if (name === "text") {
      element.textContent = String(value);
    } else if (value === true) {
      element.setAttribute(name, "");
    } else {
      element.setAttribute(name, String(value));
    }
  }
  append(element, children);
  return element;
}

export function append(parent, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, child);
    else if (child instanceof Node) parent.appendChild(child);
    else parent.appendChild(document.createTextNode(String(child)));
  }
  return parent;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

/** Replace node's children with children. */
export function replace(node, ...children) {
  clear(node);
  return append(node, children);
}

const pad = (n) => String(n).padStart(2, "0");

/** "2026-12-06 20:01:02 UTC", or "—" for null. */
export function fmtTime(text) {
  if (!text) return "—";
  const date = new Date(text);
  if (Number.isNaN(date.getTime())) return String(text);
  return (
    `${date.getUTCFullYear()}-${pad(date.getUTCMonth() + 1)}-${pad(date.getUTCDate())} ` +
    `${pad(date.getUTCHours())}:${pad(date.getUTCMinutes())}:${pad(date.getUTCSeconds())} UTC`
  );
}

/** "in 4 min", "3 h ago": a time relative to now. */
export function fmtRelative(text, now = Date.now()) {
  if (!text) return "—";
  const then = new Date(text).getTime();
  if (Number.isNaN(then)) return String(text);
  const seconds = Math.round((then - now) / 1000);
  const size = Math.abs(seconds);
  let amount;
  if (size < 60) amount = `${size} s`;
  else if (size < 3600) amount = `${Math.round(size / 60)} min`;
  else if (size < 172800) amount = `${Math.round(size / 3600)} h`;
  else amount = `${Math.round(size / 86400)} d`;
  return seconds >= 0 ? `in ${amount}` : `${amount} ago`;
}

/** A <time> element: the absolute UTC time, with the relative one in its title. */
export function timeElement(text) {
  if (!text) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: text, title: fmtRelative(text) }, fmtTime(text));
}

export const STATES = ["trusted", "untrusted", "failed", "pending", "enrolled", "revoked"];

/** A state badge: <span class="badge" data-state="failed">failed</span>. */
export function badge(state) {
  const value = state || "none";
  return h("span", { class: "badge", dataset: { state: value } }, value);
}

/** "name@version" for a release object (or "none"). */
export function releaseText(release) {
  if (!release) return "none";
  return release.version ? `${release.name}@${release.version}` : release.name;
}

/** A shortened hex digest for tables; the full value stays in the title. */
export function shortHex(hex, size = 16) {
  if (!hex) return h("span", { class: "muted" }, "—");
  const text = String(hex);
  if (text.length <= size) return h("span", { class: "mono" }, text);
  return h("span", { class: "mono", title: text }, text.slice(0, size) + "…");
}

/** "label=value" pairs as small tags. */
export function labelTags(labels) {
  const entries = Object.entries(labels || {}).sort(([a], [b]) => a.localeCompare(b));
  if (!entries.length) return h("span", { class: "muted" }, "—");
  return h(
    "ul",
    { class: "tags" },
    entries.map(([key, value]) => h("li", { class: "tag" }, `${key}=${value}`)),
  );
}

/** A section with an h2 heading (id derived from `id`), labelled by it. */
export function section(id, title, ...children) {
  return h(
    "section",
    { id, class: "card", "aria-labelledby": `${id}-title` },
    h("h2", { id: `${id}-title` }, title),
    ...children,
  );
}

/** A message that a part of a page could not load. */
export function errorBox(error) {
  const detail = error && error.message ? error.message : String(error);
  return h("p", { class: "error", role: "alert" }, detail);
}

/** Keep keyboard focus across a re-render: the focused element's data-focus key or id. */
export function preservingFocus(render) {
  const active = document.activeElement;
  const key = active && active !== document.body ? active.dataset.focus || active.id || null : null;
  const result = render();
  if (key) {
    const again =
      document.querySelector(`[data-focus="${CSS.escape(key)}"]`) ||
      document.getElementById(key);
    if (again && again !== document.activeElement) again.focus({ preventScroll: true });
  }
  return result;
}
