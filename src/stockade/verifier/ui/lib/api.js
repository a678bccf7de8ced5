// The reader API, same origin only, with the HttpOnly session cookie (scripts never see it).

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail ? `${detail} (${status}${code ? " " + code : ""})` : `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.code = code || null;
    this.detail = detail || null;
  }
}

/** "/v1/fleet/nodes" + {state: "failed", name: ""} → "/v1/fleet/nodes?state=failed". */
export function apiUrl(path, query) {
  if (typeof path !== "string" || !path.startsWith("/v1/")) {
    throw new Error(`not an API path: ${path}`);
  }
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query || {})) {
    if (value === null || value === undefined || value === "") continue;
    params.set(key, String(value));
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

async function failure(response) {
  let code = null;
  let detail = null;
  try {
    const body = await response.json();
    code = body.error || null;
    detail = body.detail || null;
  } catch {
    // not JSON: the status says enough
  }
  return new ApiError(response.status, code, detail);
}

/**
 * A client whose 401 answers call onUnauthorized() (the shell shows the login view) before
 * rejecting. onAuthorized() is called after each successful answer.
 */
export function makeClient({ onUnauthorized, onAuthorized }) {
  async function send(path, { query, signal, method = "GET", headers = {} } = {}) {
    const response = await fetch(apiUrl(path, query), {
      method,
      signal,
      credentials: "same-origin",
      cache: "no-store",
      redirect: "error",
      referrerPolicy: "no-referrer",
      headers: { Accept: "application/json", ...headers },
    });
    if (response.status === 401) {
      const error = await failure(response);
      onUnauthorized(error);
      throw error;
    }
    if (!response.ok) throw await failure(response);
    onAuthorized();
    return response;
  }
  return {
    async json(path, options) {
      const response = await send(path, options);
      return response.status === 204 ? null : response.json();
    },
    async text(path, options) {
      return (await send(path, options)).text();
    },
  };
}

/** Trade a bearer token for the session cookie; true when the verifier accepted it. */
export async function openSession(token) {
  const response = await fetch("/v1/session", {
    method: "POST",
    credentials: "same-origin",
    cache: "no-store",
    headers: { Authorization: `Bearer ${token}` },
  });
  if (response.status === 204) return { ok: true };
  const error = await failure(response);
  return { ok: false, error };
}

export async function closeSession() {
  await fetch("/v1/session", { method: "DELETE", credentials: "same-origin", cache: "no-store" });
}
