/**
 * Reading the page's cookies (`document.cookie`: `name=value` pairs joined by `; `), as
 * JupyterLab's own requests read `_xsrf` for their XSRF header; kept apart from
 * request.ts so that node's tests can load it without JupyterLab.
 */

/**
 * The value of cookie `name` in `cookies`, URL-decoded; null when there is none.  Only a
 * whole name matches (`_xsrf` is not `my_xsrf`); a value may hold `=`.
 */
export function cookieValue(cookies: string, name: string): string | null {
  for (const part of cookies.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) {
      const value = part.slice(eq + 1).trim();
      try {
        return decodeURIComponent(value);
      } catch {
        return value; // not URL-encoded after all (a lone %): as it stands
      }
    }
  }
  return null;
}
