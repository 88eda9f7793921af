/** Reading a cookie from `document.cookie`'s text: the panel's event stream sends the
 * `_xsrf` cookie's value in its URL (a JupyterHub single-user server refuses the stream
 * without it). */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { cookieValue } from '../src/cookies';

describe('cookieValue', () => {
  test('finds a cookie among others, at any place', () => {
    const cookies = 'a=1; _xsrf=2|abc|def|1700000000; jupyterhub-session-id=xyz';
    assert.equal(cookieValue(cookies, '_xsrf'), '2|abc|def|1700000000');
    assert.equal(cookieValue(cookies, 'a'), '1');
    assert.equal(cookieValue(cookies, 'jupyterhub-session-id'), 'xyz');
  });

  test('matches whole names only', () => {
    assert.equal(cookieValue('my_xsrf=no; _xsrf_old=no', '_xsrf'), null);
    assert.equal(cookieValue('_xsrfx=no; _xsrf=yes', '_xsrf'), 'yes');
  });

  test('none, or no cookies at all, is null', () => {
    assert.equal(cookieValue('', '_xsrf'), null);
    assert.equal(cookieValue('a=1', '_xsrf'), null);
    assert.equal(cookieValue('=orphan; ;', '_xsrf'), null);
  });

  test('keeps = in a value and decodes what was URL-encoded', () => {
    assert.equal(cookieValue('t=YWJj==; u=2%7Cab', 't'), 'YWJj==');
    assert.equal(cookieValue('t=YWJj==; u=2%7Cab', 'u'), '2|ab');
    assert.equal(cookieValue('v=100%', 'v'), '100%'); // not encoding: as it stands
  });
});
