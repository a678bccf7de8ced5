// The sign-in view: a reader (or operator) token is traded for the HttpOnly session cookie at
// POST /v1/session. The token is read from the field, sent once, and the field is cleared: it
// is never stored (no localStorage, sessionStorage or script-set cookie).

import { h } from "../lib/dom.js";

export function renderLogin(root, { message, signIn }) {
  const field = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    "aria-describedby": "token-help",
  });
  const status = h("p", { id: "login-status", class: "error", role: "alert" });
  const button = h("button", { type: "submit" }, "Sign in");
  const form = h(
    "form",
    { class: "login", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title" }, "Sign in to the Stockade dashboard"),
    message ? h("p", { class: "muted" }, message) : null,
    h("label", { for: "token" }, "Reader token"),
    field,
    h(
      "p",
      { id: "token-help", class: "help" },
      "A reader or operator token (stockade prints where it is: <data dir>/reader-token). ",
      "It is exchanged for a 15-minute read-only session and not kept by this page.",
    ),
    h("div", { class: "actions" }, button),
    status,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = field.value.trim();
    field.value = "";
    if (!token) {
      status.textContent = "Enter a token.";
      field.focus();
      return;
    }
    button.disabled = true;
    status.textContent = "";
    try {
      const answer = await signIn(token);
      if (!answer.ok) {
        status.textContent =
          answer.error && answer.error.status === 401
            ? "The verifier did not accept this token."
            : `Sign-in failed: ${answer.error ? answer.error.message : "unknown error"}`;
        field.focus();
      }
    } catch (error) {
      status.textContent = `Sign-in failed: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  });
  root.append(form);
  field.focus();
}
