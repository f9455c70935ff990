"""The Starlette application of `arledger serve`: pages for people, JSON for systems.

Every route but /login, /healthz and the static files needs a principal: a
signed session cookie (people) or `Authorization: Bearer <token>` (systems).
Forms carry a CSRF token bound to the session. Bad input gets a 4xx with the
reason; an unexpected error gets a 500 with an error id and no stack trace
(the trace goes to the server's log under that id).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import hmac
import secrets
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from arledger import output
from arledger.settings import Settings
from arledger.web import auth, data, envelopes, openapi, pages
from arledger.web.auth import Principal, UserStore
from arledger.web.outbox import Outbox, Unavailable

log = structlog.get_logger("arledger.web")
HERE = Path(__file__).parent
SESSION_MAX_AGE_S = 12 * 3600  # one working day
WAIT_TIMEOUT_S_MAX = 120.0
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
PUBLIC_PATHS = ("/login", "/healthz", "/static/")


class JSON(Response):
    """JSON with dates as ISO strings and integers as they are (the reports' own encoding)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return output.to_json(content).encode()


def problem(status: int, reason: str, message: str, **extra: Any) -> JSON:
    return JSON({"error": reason, "message": message, **extra}, status_code=status)


class Web:
    """Shared state of one server: settings, the read model, users and tokens, the outbox."""

    def __init__(self, settings: Settings, outbox: Outbox | None) -> None:
        self.settings = settings
        self.read_model = data.ReadModel(settings)
        self.users = UserStore(settings.home / "web-users.sqlite")
        self.outbox = outbox
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["money"] = output.money
        self.templates.env.filters["pct"] = lambda v: "" if v is None else f"{v * 100:.0f} %"
        self.templates.env.filters["num"] = lambda v, digits=1: "" if v is None else f"{v:,.{digits}f}"


def web_of(request: Request) -> Web:
    return request.app.state.web


# -- who is asking -------------------------------------------------------------------------------------

def principal_of(request: Request) -> Principal | None:
    web = web_of(request)
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return web.users.token(header[7:].strip())
    username = request.session.get("user")
    return web.users.user(username) if username else None


def csrf_token(request: Request) -> str:
    token = request.session.get(CSRF_FIELD)
    if not token:
        token = secrets.token_urlsafe(24)
        request.session[CSRF_FIELD] = token
    return token


def check_csrf(request: Request, presented: str | None) -> None:
    expected = request.session.get(CSRF_FIELD)
    if not expected or not presented or not hmac.compare_digest(expected, presented):
        raise HTTPException(403, "the form's CSRF token is missing or stale: reload the page and try again")


def require(request: Request, right: str) -> Principal:
    principal: Principal | None = request.state.principal
    assert principal is not None  # the auth middleware let no anonymous request through
    if not principal.can(right):
        raise HTTPException(403, f"the role {principal.role!r} may not {right} (needs "
                                 f"{auth.RIGHTS[right]} or above)")
    return principal


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


class AuthMiddleware:
    """Resolves the principal of each request; anonymous: the sign-in page (pages) or 401 (API)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        path = request.url.path
        if path.startswith(PUBLIC_PATHS):
            await self.app(scope, receive, send)
            return
        principal = await run_in_threadpool(principal_of, request)
        if principal is None:
            if is_api(request):
                response: Response = problem(401, "unauthenticated", "sign in, or send Authorization: Bearer "
                                             "<token> (create one with 'arledger token create')",
                                             )
                response.headers["WWW-Authenticate"] = "Bearer"
            else:
                response = RedirectResponse("/login?next=" + path, status_code=303)
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


# -- errors --------------------------------------------------------------------------------------------

def _error_page(request: Request, status: int, message: str) -> Response:
    if is_api(request):
        reason = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
                  405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type",
                  422: "unprocessable", 503: "unavailable"}.get(status, "error")
        return problem(status, reason, message)
    web = web_of(request)
    principal = getattr(request.state, "principal", None)
    return web.templates.TemplateResponse(request, "error.html", {"status": status, "message": message,
                                                                  "principal": principal}, status_code=status)


async def http_error(request: Request, error: HTTPException) -> Response:
    return _error_page(request, error.status_code, str(error.detail))


async def bad_parameter(request: Request, error: data.BadParameter) -> Response:
    return _error_page(request, 400, str(error))


async def not_found(request: Request, error: data.NotFound) -> Response:
    return _error_page(request, 404, str(error))


async def unavailable(request: Request, error: Exception) -> Response:
    return _error_page(request, 503, str(error))


async def unexpected(request: Request, error: Exception) -> Response:
    error_id = uuid.uuid4().hex[:12]
    log.error("request_failed", error_id=error_id, path=request.url.path, exc_info=error)
    if is_api(request):
        return problem(500, "internal_error", f"unexpected error; the server log has it under id {error_id}",
                       error_id=error_id)
    return HTMLResponse(f"<h1>Unexpected error</h1><p>The server log has it under id {error_id}.</p>",
                        status_code=500)


# -- sign-in -------------------------------------------------------------------------------------------

async def login_page(request: Request) -> Response:
    web = web_of(request)
    return web.templates.TemplateResponse(request, "login.html", {
        "csrf": csrf_token(request), "next": _safe_next(request.query_params.get("next")), "error": None,
        "principal": None})


def _safe_next(target: str | None) -> str:
    """Only a local path (no //host, no scheme): the sign-in never redirects off the site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


LOGIN_DELAY_S = 0.5  # a failed sign-in costs the guesser half a second more


async def login(request: Request) -> Response:
    web = web_of(request)
    form = await request.form()
    check_csrf(request, form.get(CSRF_FIELD))
    username, password = str(form.get("username", "")), str(form.get("password", ""))
    principal = await run_in_threadpool(web.users.authenticate, username, password)
    if principal is None:
        await asyncio.sleep(LOGIN_DELAY_S)
        return web.templates.TemplateResponse(request, "login.html", {
            "csrf": csrf_token(request), "next": _safe_next(str(form.get("next", "/"))),
            "error": "wrong user name or password", "principal": None}, status_code=401)
    request.session.clear()
    request.session["user"] = principal.name
    request.session[CSRF_FIELD] = secrets.token_urlsafe(24)  # a new token after sign-in
    log.info("signed_in", user=principal.name, role=principal.role)
    return RedirectResponse(_safe_next(str(form.get("next", "/"))), status_code=303)


async def logout(request: Request) -> Response:
    form = await request.form()
    check_csrf(request, form.get(CSRF_FIELD))
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


async def healthz(request: Request) -> Response:
    web = web_of(request)
    return JSON({"status": "ok", "kafka": bool(web.outbox and web.outbox.ready)})


# -- the API -------------------------------------------------------------------------------------------

async def post_envelopes(request: Request) -> Response:
    web = web_of(request)
    principal: Principal = request.state.principal
    if request.cookies and not request.headers.get("authorization"):
        check_csrf(request, request.headers.get(CSRF_HEADER))  # a browser session must prove it is the page
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type not in ("application/json", "application/cloudevents+json",
                            "application/cloudevents-batch+json"):
        raise HTTPException(415, f"content type {content_type!r}: send application/json or CloudEvents JSON")
    wait = data.bool_param(request.query_params, "wait")
    try:
        timeout_s = min(float(request.query_params.get("timeout", "30")), WAIT_TIMEOUT_S_MAX)
    except ValueError:
        raise data.BadParameter(f"timeout must be a number of seconds, got "
                                f"{request.query_params.get('timeout')!r}") from None
    body = await request.body()
    try:
        items, batch = envelopes.parse_body(body, content_type)
    except envelopes.BadBody as bad:
        return problem(bad.status, bad.reason, bad.message)
    forbidden = sorted({item["type"] for item in items if isinstance(item.get("type"), str)
                        and not principal.can(auth.right_for_type(item["type"]))})
    if forbidden:
        return problem(403, "forbidden", f"the role {principal.role!r} may not send {', '.join(forbidden)}; "
                       "nothing was sent")
    checked = [envelopes.check(index, item) for index, item in enumerate(items)]
    refused = [c for c in checked if c.reason]
    if refused:
        return problem(422, "invalid_envelopes", f"{len(refused)} of {len(checked)} envelopes refused; "
                       "nothing was sent", errors=[{"index": c.index, "id": _id_of(c.envelope), "reason": c.reason,
                                                    "message": c.message} for c in refused])
    ids = [c.envelope["id"] for c in checked]
    if len(set(ids)) != len(ids):
        return problem(422, "duplicate_ids", "the same envelope id twice in one batch; nothing was sent")
    if web.outbox is None:
        raise Unavailable("this server was started without Kafka (--no-kafka): it cannot send envelopes")
    tracked = await run_in_threadpool(web.outbox.send, [(c.envelope, c.line) for c in checked], principal.name)
    if wait:
        await run_in_threadpool(web.outbox.wait, tracked, timeout_s)
    results = [item.view() for item in tracked]
    status = 200 if wait and all(r["status"] != "pending" for r in results) else 202
    return JSON({"results": results} if batch else results[0], status_code=status)


def _id_of(envelope: dict[str, Any] | None) -> Any:
    return envelope.get("id") if isinstance(envelope, dict) else None


def get_envelope(request: Request) -> Response:
    web = web_of(request)
    if web.outbox is None:
        raise Unavailable("this server was started without Kafka")
    item = web.outbox.get(request.path_params["envelope_id"])
    if item is None:
        raise data.NotFound("this server sent no envelope with that id (since it started)")
    return JSON(item.view(visible=_visible(web, item)))


def _visible(web: Web, item) -> bool | None:
    if item.status != "accepted" or item.ledger_offset is None:
        return None
    try:
        return web.read_model.ledger_offsets().get(item.ledger_partition, 0) > item.ledger_offset
    except data.NoReadModel:
        return False


def credit_check(request: Request) -> Response:
    from projections.credit import UnknownCustomer
    from projections.credit import credit_check as check

    web = web_of(request)
    query = request.query_params
    customer = (query.get("customer") or "").strip()
    if not customer:
        raise data.BadParameter("customer is required")
    amount = data.int_param(query, "amount", minimum=1)
    if amount is None:
        raise data.BadParameter("amount is required (an integer number of minor units, > 0)")
    as_of = data.date_param(query, "as_of", data.today())
    cursor = web.read_model.cursor()
    try:
        result = check(cursor, customer, amount, as_of, web.settings.overdue_tolerance_days,
                       data.known_at_param(query))
    except UnknownCustomer as error:
        raise data.NotFound(str(error)) from None
    finally:
        web.read_model.release(cursor)
    return JSON(result)


def list_reports(request: Request) -> Response:
    return JSON({"reports": [{"name": name, "parameters": ["as_of", "known_at", *parameters],
                              "formats": ["json", "csv", "parquet"], "path": f"/api/reports/{name}"}
                             for name, parameters in data.REPORT_PARAMETERS.items()]})


def get_report(request: Request) -> Response:
    web = web_of(request)
    name = request.path_params["name"]
    fmt = data.choice_param(request.query_params, "format", ("json", "csv", "parquet")) or "json"
    cursor = web.read_model.cursor()
    try:
        report = data.run_report(cursor, name, request.query_params)
    finally:
        web.read_model.release(cursor)
    if fmt == "json":
        return JSON(report.document)
    stem = f"{name}-{request.query_params.get('as_of') or data.today().isoformat()}"
    if fmt == "csv":
        return Response(data.to_csv(report), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{stem}.csv"'})
    return Response(data.to_parquet(report), media_type="application/vnd.apache.parquet",
                    headers={"Content-Disposition": f'attachment; filename="{stem}.parquet"'})


def me(request: Request) -> Response:
    principal: Principal = request.state.principal
    return JSON({"name": principal.name, "role": principal.role, "kind": principal.kind,
                 "rights": [right for right in auth.RIGHTS if principal.can(right)]})


def openapi_document(request: Request) -> Response:
    return JSON(openapi.document())


# -- the application -----------------------------------------------------------------------------------

def create_app(settings: Settings, *, kafka: bool = True, outbox: Outbox | None = None) -> Starlette:
    """The app; with `kafka`, an outbox connects at start-up (a failure leaves the pages readable)."""

    @asynccontextmanager
    async def lifespan(app: Starlette):
        web: Web = app.state.web
        if kafka and web.outbox is None:
            candidate = Outbox(settings)
            try:
                await run_in_threadpool(candidate.start)
                web.outbox = candidate
            except Exception as error:  # the workspace stays readable; sending answers 503 and says why
                log.error("kafka_unavailable", error=repr(error))
                candidate.close()
        try:
            yield
        finally:
            if web.outbox is not None:
                await run_in_threadpool(web.outbox.close)
            web.read_model.close()

    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/api/openapi.json", openapi_document),
        Route("/api/me", me),
        Route("/api/envelopes", post_envelopes, methods=["POST"]),
        Route("/api/envelopes/{envelope_id:path}", get_envelope),
        Route("/api/credit-check", credit_check),
        Route("/api/reports", list_reports),
        Route("/api/reports/{name}", get_report),
        *pages.routes(),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(SessionMiddleware, secret_key=auth.secret_key(settings.home), session_cookie="arledger_session",
                   max_age=SESSION_MAX_AGE_S, same_site="strict", https_only=False),
        Middleware(AuthMiddleware),
    ]
    handlers: dict[Any, Callable] = {
        HTTPException: http_error, data.BadParameter: bad_parameter, data.NotFound: not_found,
        data.NoReadModel: unavailable, Unavailable: unavailable, Exception: unexpected,
    }
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers, lifespan=lifespan)
    app.state.web = Web(settings, outbox)
    return app


MONEY_MAJOR_MAX = decimal.Decimal(2**53) / 100  # the ledger's largest amount (ledger.contract.AMOUNT_MAX), in units


def parse_money(text: str, what: str) -> int:
    """'1234.5' → 123450 minor units (two decimals); anything else a 400 with the reason."""
    try:
        value = decimal.Decimal(text.strip().replace(",", ""))
    except (decimal.InvalidOperation, AttributeError):
        raise data.BadParameter(f"{what} must be an amount like 1234.56, got {text!r}") from None
    if not value.is_finite() or abs(value) >= MONEY_MAJOR_MAX:
        raise data.BadParameter(f"{what} must be an amount below {MONEY_MAJOR_MAX:,}, got {text!r}")
    if value != value.quantize(decimal.Decimal("0.01")):
        raise data.BadParameter(f"{what} must have at most two decimals, got {text!r}")
    return int(value * 100)


def parse_day(text: str, what: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        raise data.BadParameter(f"{what} must be a date YYYY-MM-DD, got {text!r}") from None
