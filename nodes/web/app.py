"""The ASGI app of ``zq http``: JSON routes (api.py), the dashboard's pages, the login
form, ``/metrics``, ``/docs``; one middleware applies auth.py's rules to every request.

    browser / curl / Prometheus --HTTP--> uvicorn --> guard middleware --> route
                                                                   --> Gateway (pool) --> zq.Client
    Sampler task (one stats + counts per interval) --Gateway--> zq.Client
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Optional
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import auth
from .api import error_response, router
from .views import finite
from .gateway import ApiError, Gateway
from .metrics import registry_for
from .sampler import Sampler

log = logging.getLogger("zq.http")

STATIC = Path(__file__).with_name("static")
MAX_BODY = 1 << 20


class FiniteJSONResponse(JSONResponse):
    """JSON without NaN or infinities (a task's progress may hold them): those become null
    instead of an error 500 for every page that lists the task."""

    def render(self, content: Any) -> bytes:
        return super().render(finite(content))


def _page(name: str, **values: str) -> str:
    text = (STATIC / name).read_text(encoding="utf-8")
    for k, v in values.items():
        text = text.replace("{{" + k + "}}", html.escape(v, quote=True))
    return text


def _wants_html(request: Request) -> bool:
    return request.method == "GET" and "text/html" in request.headers.get("accept", "")


def _set_csrf(request: Request, response: Response, guard: auth.Guard, value: str) -> None:
    if request.cookies.get(auth.CSRF_COOKIE) != value:
        response.set_cookie(auth.CSRF_COOKIE, value, httponly=True, samesite="strict", secure=guard.tls,
                            path="/")


def create_app(gateway: Gateway, guard: auth.Guard, sample_interval: float = 1.0) -> FastAPI:
    sampler = Sampler(gateway, interval=sample_interval)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(sampler.run(), name="zq-http-sampler")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(title="zq http", version="1", docs_url=None, redoc_url=None, lifespan=lifespan,
                  default_response_class=FiniteJSONResponse,
                  description="The admin API and dashboard of a zq cluster. With a token (--token-file), "
                              "send `Authorization: Bearer TOKEN`.")
    def openapi() -> dict:
        """The generated description, plus the Bearer scheme (Swagger UI's Authorize button)."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            spec = get_openapi(title=app.title, version=app.version, description=app.description,
                               routes=app.routes)
            spec.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "the token of zq http --token-file (open mode: none needed)"}}
            spec["security"] = [{"bearer": []}, {}]
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.gateway = gateway
    app.state.guard = guard
    app.state.sampler = sampler
    app.state.totals = {}  # the Tasks page's totals by filter: (monotonic time, count)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    metrics_registry = registry_for(gateway.client.stats)

    # -- errors: always {"error": "..."} -----------------------------------------------
    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {e.get('msg')}")
        return JSONResponse({"error": "; ".join(parts) or "invalid request"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404 and exc.detail == "Not Found":
            msg = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            msg = f"method {request.method} not allowed on {request.url.path}"
        else:
            msg = str(exc.detail)
        return JSONResponse({"error": msg}, status_code=exc.status_code, headers=exc.headers)

    # -- the guard: Host, body size, auth, CSRF -----------------------------------------
    @app.middleware("http")
    async def guard_mw(request: Request, call_next: Any) -> Response:
        h = request.headers
        if not guard.host_ok(h.get("host")):
            log.warning("refused Host %r from %s", h.get("host"), request.client.host if request.client else "-")
            return JSONResponse({"error": f"Host {h.get('host')!r} refused: zq http on loopback answers "
                                          "only requests to a loopback name"}, status_code=403)
        if int(h.get("content-length") or 0) > MAX_BODY:
            return JSONResponse({"error": "request body over 1 MiB"}, status_code=413)
        if "transfer-encoding" in h and "content-length" not in h:
            # a chunked body has no length to check first: /login is public, so it would let
            # anyone fill this process's memory
            return JSONResponse({"error": "a request body needs a Content-Length"}, status_code=411)
        path = request.url.path
        if not path.startswith(auth.PUBLIC_PREFIXES) and path != "/logout":
            bearer = guard.bearer_ok(h.get("authorization"))
            session = guard.session_ok(request.cookies.get(auth.SESSION_COOKIE))
            if not (guard.open or bearer or session):
                if _wants_html(request):
                    return RedirectResponse("/login", status_code=303)
                log.info("%s %s %s -> 401", request.client.host if request.client else "-", request.method, path)
                return JSONResponse({"error": "authentication required: send Authorization: Bearer TOKEN "
                                              "(the token of zq http --token-file)"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
            from_browser = "origin" in h or "sec-fetch-site" in h
            if not auth.Guard.csrf_ok(request.method, bearer, from_browser, session,
                                      request.cookies.get(auth.CSRF_COOKIE), h.get(auth.CSRF_HEADER)):
                log.warning("%s %s %s -> 403 (CSRF)", request.client.host if request.client else "-",
                            request.method, path)
                return JSONResponse({"error": "CSRF check failed: a browser request must carry the page's "
                                              "X-CSRF-Token"}, status_code=403)
        response = await call_next(request)
        # the audit trail: every action and every refusal at INFO, the polling at DEBUG
        level = logging.INFO if request.method in auth.UNSAFE or response.status_code >= 400 else logging.DEBUG
        log.log(level, "%s %s %s -> %d", request.client.host if request.client else "-", request.method,
                path, response.status_code)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    # -- pages ---------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        csrf = request.cookies.get(auth.CSRF_COOKIE) or auth.new_csrf()
        resp = HTMLResponse(_page("index.html", csrf=csrf, auth="token" if guard.token else "none"),
                            headers={"Cache-Control": "no-store"})
        _set_csrf(request, resp, guard, csrf)
        return resp

    def login_page(request: Request, message: str = "", status: int = 200) -> Response:
        csrf = request.cookies.get(auth.CSRF_COOKIE) or auth.new_csrf()
        resp = HTMLResponse(_page("login.html", csrf=csrf, message=message), status_code=status,
                            headers={"Cache-Control": "no-store"})
        _set_csrf(request, resp, guard, csrf)
        return resp

    @app.get("/login", include_in_schema=False)
    async def login_form(request: Request) -> Response:
        if guard.open:
            return RedirectResponse("/", status_code=303)
        return login_page(request)

    async def _form(request: Request) -> dict[str, str]:
        body = (await request.body()).decode("utf-8", "replace")
        return {k: v[-1] for k, v in parse_qs(body).items()}

    def _form_csrf_ok(request: Request, form: dict[str, str]) -> bool:
        cookie = request.cookies.get(auth.CSRF_COOKIE)
        given = form.get("csrf_token")
        return auth.Guard.csrf_ok("POST", False, True, False, cookie, given)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await _form(request)
        if not _form_csrf_ok(request, form):
            return login_page(request, "The form expired (CSRF check failed): try again.", 403)
        if guard.open:
            return RedirectResponse("/", status_code=303)
        if not guard.token_ok(form.get("token", "")):
            log.warning("login refused from %s", request.client.host if request.client else "?")
            return login_page(request, "Wrong token.", 401)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(auth.SESSION_COOKIE, guard.new_session(), httponly=True, samesite="strict",
                        secure=guard.tls, max_age=auth.SESSION_SECONDS, path="/")
        return resp

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        form = await _form(request)
        if not _form_csrf_ok(request, form):
            return JSONResponse({"error": "CSRF check failed"}, status_code=403)
        resp = RedirectResponse("/login" if guard.token else "/", status_code=303)
        resp.delete_cookie(auth.SESSION_COOKIE, path="/")
        return resp

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="zq http: API",
                                   swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
                                   swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg")

    @app.get("/metrics", tags=["metrics"], summary="Prometheus metrics (one stats() call per scrape)",
             response_class=Response)
    async def metrics() -> Response:
        body = await gateway.call(generate_latest, metrics_registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return RedirectResponse("/static/favicon.svg", status_code=308)

    return app


def build(client: Any, token: Optional[str], host: str, tls: bool, insecure: bool,
          timeout: float = 10.0, sample_interval: float = 1.0) -> FastAPI:
    guard = auth.Guard(token=token, loopback=auth.is_loopback(host), tls=tls, insecure=insecure)
    return create_app(Gateway(client, timeout=timeout), guard, sample_interval)
