"""JupyterHub identities: run as a JupyterHub service, the server learns who a notebook
user is from the hub, with the hub's own client (``jupyterhub.services.auth.HubAuth``).

A single-user server holds ``JUPYTERHUB_API_TOKEN``, a token of its user that the hub
issued; ``panda_lab.connect()`` sends it as its bearer token.  A token the server does
not know itself is asked of the hub's ``GET /hub/api/user`` (what ``HubAuth
.user_for_token`` does), whose answer is cached ``cache_s`` seconds at most: a token the
hub revokes is refused after that.  A hub admin is an admin here; any other hub user, a
user.  This is dask-gateway's ``JupyterHubAuthenticator`` rule.
"""

from __future__ import annotations

import logging

from fastapi import HTTPException

log = logging.getLogger("panda_lab.server")


class HubIdentities:
    """Ask a JupyterHub who holds a token.  ``api_url``: the hub's API
    (``JUPYTERHUB_API_URL``, e.g. ``http://127.0.0.1:8081/hub/api``); ``api_token``: the
    service's own token (``JUPYTERHUB_API_TOKEN`` of the service)."""

    def __init__(self, api_url: str, api_token: str, cache_s: float = 10.0) -> None:
        from jupyterhub.services.auth import HubAuth

        self.auth = HubAuth(api_url=api_url, api_token=api_token,
                            cache_max_age=max(0, int(cache_s)))

    async def who(self, token: str) -> tuple[str, str] | None:
        """``(name, role)`` of the hub user holding ``token``, or None when the hub knows
        no such token.  Raises a 503 when the hub cannot be asked (down, or it refused
        the service's own token)."""
        import tornado.web

        try:
            model = await self.auth.user_for_token(token, sync=False)
        except tornado.web.HTTPError as exc:
            log.warning("JupyterHub API: %s", exc.log_message or exc)
            raise HTTPException(503, "the JupyterHub API cannot identify the token now "
                                     f"({exc.status_code})") from None
        if not model or model.get("kind", "user") != "user" or not model.get("name"):
            return None
        return model["name"], "admin" if model.get("admin") else "user"
