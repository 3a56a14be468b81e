"""The cluster page's tornado service: the page, its JSON state, and the buttons' endpoints,
behind the hub's OAuth (a token carrying `config.SCOPE`). Run by the hub as a managed service
(`python -m berthspawner.cluster`), which sets the JUPYTERHUB_* variables this reads."""

import asyncio
import html
import json
import logging
import os
import signal
import sys
from importlib import resources
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from tornado import ioloop, web

from . import actions, config
from .poller import Poller

log = logging.getLogger("berthspawner.cluster")

# How often the service checks that the hub that started it still runs.
PARENT_CHECK_MS = 2000


def _static(name):
    return resources.files(__package__).joinpath("static", name).read_text()


class Page:
    """What the handlers share: the configuration, the poller and the moves."""

    def __init__(self, cfg):
        self.config = cfg
        self.poller = Poller(cfg)
        self.moves = actions.Moves(cfg, on_end=self._moved)
        self.loop = None

    def _moved(self, *names):
        # From the move's thread: the poller lives on the loop.
        def soon():
            for name in names:
                n = self.poller.node(name)
                if n is not None:
                    n.volumes_soon()

        self.loop.call_soon_threadsafe(soon)


class Base(HubOAuthenticated, web.RequestHandler):
    def initialize(self, page):
        self.page = page

    @property
    def hub_scopes(self):
        # Only this scope opens the page; the hub's admins hold it.
        return {config.SCOPE}

    def require_user(self):
        """The API's check: 403, not a redirect to the login, for a request without a user
        allowed here."""
        if self.current_user is None:
            raise web.HTTPError(403, "the cluster page is for the hub's admins")
        return self.current_user

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = exc.log_message if isinstance(exc, web.HTTPError) and exc.log_message else self._reason
        if "/api/" in self.request.path:
            self.set_header("Content-Type", "application/json")
            self.finish({"error": message})
            return
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(f"<!DOCTYPE html><title>{status_code}</title><h1>{status_code}</h1><p>{html.escape(message)}</p>")

    def body_json(self):
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the request body must be JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "the request body must be a JSON object")
        return body


class PageHandler(Base):
    @web.authenticated
    def get(self):
        prefix = self.hub_auth.base_url
        page = _static("index.html")
        for k, v in (("PREFIX", prefix), ("XSRF", self.xsrf_token.decode()), ("USER", self.current_user["name"])):
            page = page.replace("{{" + k + "}}", html.escape(v, quote=True))
        self.set_header("Cache-Control", "no-store")
        # Nothing from elsewhere: the page's own script and style only.
        self.set_header("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
        self.write(page)


class StateHandler(Base):
    def get(self):
        self.require_user()
        self.page.poller.asked()
        self.set_header("Cache-Control", "no-store")
        self.write({"nodes": self.page.poller.view(), "moves": self.page.moves.to_json()})


class DrainHandler(Base):
    async def post(self, name, action):
        user = self.require_user()
        node = self.page.config.node(name)
        if node is None:
            raise web.HTTPError(404, f"{name!r} is not one of the hub's nodes")
        reason = str(self.body_json().get("reason") or "")[:200]
        if action == "drain":
            reason = reason or f"drained by {user['name']} on the cluster page"
        try:
            draining = await actions.set_draining(node, action == "drain", reason)
        except actions.ActionError as e:
            raise web.HTTPError(e.status, e.message) from None
        await self.page.poller.refresh(name)
        self.write({"node": name, "draining": draining})


class MovesHandler(Base):
    def get(self):
        self.require_user()
        self.write({"moves": self.page.moves.to_json()})

    def post(self):
        self.require_user()
        body = self.body_json()
        try:
            m = self.page.moves.start(body.get("user"), body.get("server", ""), body.get("from"), body.get("to"))
        except actions.ActionError as e:
            raise web.HTTPError(e.status, e.message) from None
        self.set_status(202)
        self.write(m.to_json())


class Static(web.StaticFileHandler):
    def set_extra_headers(self, path):
        self.set_header("Cache-Control", "no-cache")


def _log_request(handler):
    # The path without its query: the OAuth callback's query holds the login's code.
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING
    ms = 1000.0 * handler.request.request_time()
    log.log(level, "%d %s %s %.1fms", status, handler.request.method, handler.request.path, ms)


def make_app(cfg, prefix):
    page = Page(cfg)
    static_dir = str(resources.files(__package__).joinpath("static"))
    kw = {"page": page}
    app = web.Application(
        [
            (prefix, PageHandler, kw),
            (prefix + "oauth_callback", HubOAuthCallbackHandler),
            (prefix + "api/state", StateHandler, kw),
            (prefix + r"api/nodes/([^/]+)/(drain|undrain)", DrainHandler, kw),
            (prefix + "api/moves", MovesHandler, kw),
            (prefix + "static/(.*)", Static, {"path": static_dir}),
        ],
        cookie_secret=os.urandom(32),
        xsrf_cookies=True,
        log_function=_log_request,
    )
    return app, page


def main():
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s berth-cluster] %(message)s")
    try:
        cfg = config.ServiceConfig.from_env()
    except config.ConfigError as e:
        log.critical("berth cluster page: %s", e)
        return 64
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", config.DEFAULT_URL))
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/berth/")
    app, page = make_app(cfg, prefix)
    app.listen(url.port or 80, address=url.hostname or "127.0.0.1")
    loop = ioloop.IOLoop.current()
    page.loop = asyncio.get_event_loop()
    poller = page.loop.create_task(page.poller.run())
    parent = os.getppid()

    def check_parent():
        # A hub killed outright leaves its managed services running: this one then stops
        # calling the nodes as if it were the hub.
        if os.getppid() != parent:
            log.warning("berth cluster page: the hub that started it is gone; exiting")
            loop.stop()

    ioloop.PeriodicCallback(check_parent, PARENT_CHECK_MS).start()
    signal.signal(signal.SIGTERM, lambda *_: loop.add_callback(loop.stop))
    log.info("berth cluster page: %d node(s), at %s%s", len(cfg.nodes), url.geturl().rstrip("/"), prefix)
    loop.start()
    poller.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
