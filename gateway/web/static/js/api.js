// The HTTP side of the contract: session, login, first-run setup, state, commands, clips.
//
// The CSRF token comes back from /api/v1/session, /login, /setup and /password and is sent
// as X-CSRF-Token on every state-changing request. A 401 anywhere but on the login form
// means the session ended (logout elsewhere, password changed, expiry): the app is told
// through onUnauthenticated and shows the login page again.

let csrf = null;
let unauthenticated = () => {};
let counter = 0;

export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code || null;
    this.body = body;
    this.retryAfter = retryAfter ? Number(retryAfter) : null;
  }
}

export function onUnauthenticated(handler) {
  unauthenticated = handler;
}

export function setCsrf(token) {
  csrf = token || null;
}

async function request(method, path, { json, form, quiet401 = false } = {}) {
  const headers = { Accept: "application/json" };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // the browser writes the multipart boundary itself
  }
  if (method !== "GET" && csrf) headers["X-CSRF-Token"] = csrf;
  const response = await fetch(path, {
    method,
    headers,
    body,
    credentials: "same-origin",
    cache: "no-store",
  });
  let data = null;
  if (response.status !== 204) {
    try {
      data = await response.json();
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    if (response.status === 401 && !quiet401) unauthenticated();
    throw new ApiError(response.status, data, response.headers.get("Retry-After"));
  }
  return data;
}

export async function session() {
  const data = await request("GET", "/api/v1/session");
  setCsrf(data.csrf);
  return data;
}

export async function login(password, remember = false) {
  const data = await request("POST", "/api/v1/login", {
    json: { password, remember },
    quiet401: true,
  });
  setCsrf(data.csrf);
  return data;
}

export async function setup(code, password) {
  const data = await request("POST", "/api/v1/setup", { json: { code, password, remember: true } });
  setCsrf(data.csrf);
  return data;
}

export async function logout() {
  try {
    await request("POST", "/api/v1/logout", { quiet401: true });
  } finally {
    setCsrf(null);
  }
}

export async function changePassword(current, next) {
  const data = await request("POST", "/api/v1/password", {
    json: { current, new: next },
    quiet401: true,
  });
  setCsrf(data.csrf);
  return data;
}

export function state() {
  return request("GET", "/api/v1/state");
}

export function events(after, limit = 200) {
  const query = new URLSearchParams({ limit: String(limit) });
  if (after !== null && after !== undefined) query.set("after", String(after));
  return request("GET", `/api/v1/events?${query}`);
}

export function clips() {
  return request("GET", "/api/v1/clips");
}

/**
 * Upload a clip with XMLHttpRequest (fetch cannot report upload progress); ``onProgress``
 * gets 0-100 as the bytes leave the phone. Resolves with the JSON answer, rejects with an
 * ApiError like every other call.
 */
export function uploadClip(name, file, onProgress = () => {}) {
  const form = new FormData();
  form.append("name", name);
  form.append("file", file, file.name);
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/v1/clips");
    xhr.setRequestHeader("Accept", "application/json");
    if (csrf) xhr.setRequestHeader("X-CSRF-Token", csrf);
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(Math.floor((100 * event.loaded) / event.total));
    });
    xhr.addEventListener("load", () => {
      let data = null;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        data = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(data);
        return;
      }
      if (xhr.status === 401) unauthenticated();
      reject(new ApiError(xhr.status, data, xhr.getResponseHeader("Retry-After")));
    });
    xhr.addEventListener("error", () => reject(new TypeError("network")));
    xhr.addEventListener("abort", () => reject(new TypeError("aborted")));
    xhr.send(form);
  });
}

/** Where the phone can listen to a stored clip (an <audio> source; needs the session). */
export function clipAudioUrl(id) {
  return `/api/v1/clips/${encodeURIComponent(id)}/audio`;
}

/** A fresh command id within the protocol's [A-Za-z0-9._:-]{1,64}. */
function commandId() {
  counter += 1;
  const random = Math.floor(Math.random() * 36 ** 4).toString(36);
  return `web.${Date.now().toString(36)}.${random}.${counter}`;
}

/** POST one command; resolves with the Reply (whatever its status). */
export function command(type, args = {}) {
  return request("POST", "/api/v1/commands", { json: { id: commandId(), type, args } });
}

export function hasCsrf() {
  return csrf !== null;
}
