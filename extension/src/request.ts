/**
 * The one place the panel talks to the network: the jupyter_server extension's REST API
 * under `/panda-lab/` (panda_lab/jupyter/server_extension.py), with Jupyter's own auth,
 * as the JupyterLab extension template's `requestAPI` does.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { cookieValue } from './cookies';

/** The API's path under Jupyter's base URL. */
export const API_PREFIX = 'panda-lab';

/**
 * An answer that is not a success: an HTTP error (with the server's `message` or
 * reason), a network failure (`status` 0) or a body that is not JSON.
 */
export class PandaRequestError extends Error {
  constructor(
    message: string,
    /** The HTTP status; 0 when no answer came (network) or it could not be read. */
    readonly status: number,
    /** The parsed body of the error answer, when it was JSON. */
    readonly body: unknown = null
  ) {
    super(message);
    this.name = 'PandaRequestError';
  }

  /** True when the extension said no panda-lab server answers (HTTP 503). */
  get serverDown(): boolean {
    return this.status === 503;
  }
}

/** The message a person should read from an error answer's body, if it has one. */
function bodyMessage(body: unknown): string | null {
  if (body && typeof body === 'object' && 'message' in body) {
    const message = (body as { message: unknown }).message;
    return typeof message === 'string' && message ? message : null;
  }
  return null;
}

/**
 * Call an endpoint and return its JSON body as `T`.
 *
 * @param endpoint - the path under /panda-lab/, e.g. `tasks/3` or `tasks/3/retry`.
 * @param init - fetch options (method, body); GET by default.
 * @returns the parsed JSON body (its shape is the caller's `T`, see types.ts).
 * @throws PandaRequestError on a network failure, an HTTP status >= 400 (with the
 *   server's message, or Jupyter's reason) or a body that is not JSON.
 */
export async function requestAPI<T>(endpoint = '', init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, API_PREFIX, endpoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new PandaRequestError(`the Jupyter server does not answer: ${String(error)}`, 0);
  }
  const text = await response.text();
  let body: unknown = null;
  if (text.length > 0) {
    try {
      body = JSON.parse(text);
    } catch {
      if (response.ok) {
        throw new PandaRequestError(`${endpoint}: the answer is not JSON`, response.status);
      }
    }
  }
  if (!response.ok) {
    const message = bodyMessage(body) ?? (response.statusText || `HTTP ${response.status}`);
    throw new PandaRequestError(message, response.status, body);
  }
  return body as T;
}

/**
 * The URL of the event stream (Server-Sent Events), for an `EventSource`.
 *
 * An `EventSource` sends the page's cookies but no headers, so the XSRF token that
 * JupyterLab's own requests carry in a header goes in the query as `_xsrf` (read by
 * jupyter_server and by JupyterHub alike): a JupyterHub single-user server (JupyterHub
 * 4.1 and later) refuses with 403 a cookie-authenticated GET that is not a page load and
 * has no XSRF token, so without it the panel would get no events there, only its polls.
 *
 * @param cookies - the page's cookies (`document.cookie`).
 */
export function eventsURL(cookies: string = document.cookie): string {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, API_PREFIX, 'events');
  const xsrf = cookieValue(cookies, '_xsrf');
  return xsrf === null ? url : `${url}?_xsrf=${encodeURIComponent(xsrf)}`;
}
