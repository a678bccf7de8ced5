// The dashboard shell: hash routes, the login view, the shared event stream, and the `ctx`
// each page's render(root, ctx) receives (described in docs/dashboard.md).

import { makeClient, openSession, closeSession } from "./lib/api.js";
import { LiveEvents } from "./lib/live.js";
import { h, replace } from "./lib/dom.js";
import { renderLogin } from "./pages/login.js";

const ROUTES = [
  { page: "overview", match: (s) => s.length === 0, load: () => import("./pages/overview.js") },
  { page: "nodes", match: (s) => s.length === 1 && s[0] === "nodes", load: () => import("./pages/nodes.js") },
  { page: "node", match: (s) => s.length === 2 && s[0] === "nodes", load: () => import("./pages/node.js") },
  { page: "log", match: (s) => s.length >= 1 && s[0] === "log", load: () => import("./pages/log.js") },
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const sessionBox = document.getElementById("session");
const liveStatus = document.getElementById("live-status");
const announcer = document.getElementById("announcer");

let authenticated = null; // null: not known yet; true/false once the API answered
let navigation = 0; // bumps on every route change: a page's ctx.isCurrent() compares
let controller = null; // aborts the current page's requests on navigation
let pageHandlers = new Set();
let firstRender = true;
let eventsStarted = false;

/** "#/nodes/abc?state=failed" → {segments: ["nodes", "abc"], params} */
export function parseHash(hash) {
  const text = (hash || "").replace(/^#\/?/, "");
  const [path, query = ""] = text.split("?", 2);
  const segments = path
    .split("/")
    .filter((part) => part !== "")
    .map((part) => {
      try {
        return decodeURIComponent(part);
      } catch {
        return part;
      }
    });
  return { segments, params: new URLSearchParams(query) };
}

const client = makeClient({
  onUnauthorized: () => showLogin("Your session ended or is missing: sign in with a reader token."),
  onAuthorized: () => {
    if (authenticated !== true) {
      authenticated = true;
      nav.hidden = false;
      sessionBox.hidden = false;
    }
  },
});

const live = new LiveEvents({
  probe: () => client.json("/v1/fleet/nodes", { query: { limit: 1 } }),
  onStatus: (connected) => {
    if (connected) document.body.dataset.events = "open";
    else delete document.body.dataset.events;
    liveStatus.dataset.live = connected ? "open" : "closed";
    liveStatus.textContent = connected ? "Live updates: on" : "Live updates: reconnecting";
  },
});
live.subscribe((event) => {
  for (const handler of [...pageHandlers]) {
    try {
      handler(event);
    } catch (error) {
      console.warn("page event handler failed", error);
    }
  }
});

async function startEvents() {
  // Start after the newest transition the verifier has: history is the API's job.
  let after = null;
  try {
    const summary = await client.json("/v1/fleet/summary");
    if (summary && summary.transitions && summary.transitions.length) after = summary.transitions[0].id;
    else after = 0;
  } catch (error) {
    if (error && error.status === 401) return;
  }
  if (authenticated) live.start(after);
}

function announce(text) {
  // Cleared first so that the same text twice is read twice.
  announcer.textContent = "";
  window.setTimeout(() => {
    announcer.textContent = text;
  }, 50);
}

function leavePage() {
  navigation += 1;
  if (controller) controller.abort();
  controller = new AbortController();
  pageHandlers = new Set();
  document.body.dataset.ready = "0";
  return navigation;
}

function showLogin(message) {
  authenticated = false;
  eventsStarted = false;
  live.stop();
  leavePage();
  nav.hidden = true;
  sessionBox.hidden = true;
  const root = h("section", { class: "page page-login", dataset: { page: "login" } });
  replace(main, root);
  renderLogin(root, {
    message,
    signIn: async (token) => {
      const answer = await openSession(token);
      if (answer.ok) {
        authenticated = null;
        await route();
      }
      return answer;
    },
  });
  document.title = "Sign in · Stockade";
  document.body.dataset.ready = "1";
}

function markNav(page) {
  for (const link of nav.querySelectorAll("a[data-route]")) {
    const current = link.dataset.route === page || (page === "node" && link.dataset.route === "nodes");
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function route() {
  if (authenticated === false) {
    showLogin();
    return;
  }
  const token = leavePage();
  const { segments, params } = parseHash(window.location.hash);
  const found = ROUTES.find((candidate) => candidate.match(segments));
  if (authenticated === null && (!found || found.page === "log")) {
    // Nothing but the login form until the verifier accepts this browser's session. Other
    // pages learn it from their first API call; the transparency log's routes are public,
    // so before that page (or an unknown route) the session is checked first.
    try {
      await client.json("/v1/fleet/nodes", { query: { limit: 1 }, signal: controller.signal });
    } catch (error) {
      if (token !== navigation || (error && error.status === 401)) return;
    }
  }
  const root = h("section", { class: `page page-${found ? found.page : "missing"}` });
  if (found) root.dataset.page = found.page;
  replace(main, root);
  markNav(found ? found.page : null);
  const isCurrent = () => token === navigation;
  const ctx = {
    api: (path, options = {}) => client.json(path, { signal: controller.signal, ...options }),
    apiText: (path, options = {}) => client.text(path, { signal: controller.signal, ...options }),
    onEvent: (handler) => {
      if (!isCurrent()) return () => {};
      const handlers = pageHandlers;
      handlers.add(handler);
      return () => handlers.delete(handler);
    },
    navigate: (hash) => {
      if (window.location.hash === hash) route();
      else window.location.hash = hash;
    },
    params,
    segments,
    signal: controller.signal,
    announce,
    isCurrent,
  };
  try {
    if (!found) {
      root.append(h("h1", { tabindex: "-1" }, "Page not found"), h("p", {}, h("a", { href: "#/" }, "Go to the overview")));
    } else {
      const module = await found.load();
      await module.render(root, ctx);
    }
  } catch (error) {
    if (!isCurrent()) return;
    if (error && error.name === "AbortError") return;
    if (error && error.status === 401) return; // the login view is showing
    root.append(h("p", { class: "error", role: "alert" }, `This page could not load: ${error && error.message ? error.message : error}`));
  }
  if (!isCurrent()) return;
  const heading = root.querySelector("h1");
  document.title = `${heading ? heading.textContent : "Dashboard"} · Stockade`;
  if (!firstRender && heading) {
    if (!heading.hasAttribute("tabindex")) heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: false });
  }
  firstRender = false;
  document.body.dataset.ready = "1";
  if (authenticated && !eventsStarted) {
    eventsStarted = true; // after the first render: its requests go first
    startEvents();
  }
}

document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});

document.getElementById("sign-out").addEventListener("click", async () => {
  try {
    await closeSession();
  } finally {
    showLogin("Signed out.");
  }
});

window.addEventListener("hashchange", () => {
  if (authenticated === false) return; // the login view stays until a session exists
  route();
});

route();
