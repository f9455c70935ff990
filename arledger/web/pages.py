"""The workspace's pages (overview, worklist, calendar, customer, credit queue, downloads) and their actions.

Pages read through `data` (the report functions of `projections`); actions
build an envelope, check it with the ledger's contract, send it through the
outbox and redirect to /sent/<id>, which shows its outcome once ingested.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from arledger.web import data, envelopes, svg
from arledger.web.auth import Principal
from projections import reports, statements

WORKLIST_ROWS_SHOWN = 200  # a day's work; the whole list is a download away
COLLECTION_ACTIONS = ("call", "email", "letter", "visit")
CALENDAR_DAYS = 7
KPI_MONTHS_DEFAULT = 6
ALL = "*"


def _app():
    from arledger.web import app

    return app


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    web = _app().web_of(request)
    principal: Principal = request.state.principal
    context = {"principal": principal, "csrf": _app().csrf_token(request), "path": request.url.path,
               "kafka": bool(web.outbox and web.outbox.ready), **context}
    return web.templates.TemplateResponse(request, template, context, status_code=status_code)


class Reader:
    """One request's cursor on the read model, with the common query parameters parsed."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.query = request.query_params
        self.as_of = data.date_param(self.query, "as_of", data.today())
        self.known_at = data.known_at_param(self.query)
        self.cursor = _app().web_of(request).read_model.cursor()

    def report(self, name: str, **params: Any) -> data.Report:
        query = {"as_of": self.as_of.isoformat(), "known_at": self.query.get("known_at") or "",
                 **{key: value for key, value in params.items() if value is not None}}
        return data.run_report(self.cursor, name, query)

    def rows(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        result = self.cursor.execute(sql, params)
        columns = [column[0] for column in result.description]
        return [dict(zip(columns, row)) for row in result.fetchall()]

    def close(self) -> None:
        _app().web_of(self.request).read_model.release(self.cursor)


def _months_back(day: dt.date, count: int) -> list[tuple[dt.date, dt.date]]:
    """The `count` calendar months up to `day`'s (the last one ends on `day`)."""
    periods = []
    first = day.replace(day=1)
    for _ in range(count):
        end = min(statements.month_end(first), day)
        periods.append((first, end))
        first = (first - dt.timedelta(days=1)).replace(day=1)
    return list(reversed(periods))


# -- overview ------------------------------------------------------------------------------------------

def overview(request: Request) -> Response:
    reader = Reader(request)
    try:
        months = data.int_param(reader.query, "months", minimum=1) or KPI_MONTHS_DEFAULT
        months = min(months, 24)
        aging = reader.report("aging").document
        keys = reports.dimension_keys(reader.cursor, "salesperson", reader.as_of, reader.known_at)
        by_salesperson = reports.group_rows(aging["rows"], keys, "salesperson",
                                            [*aging["buckets"], "open", "unapplied", "total"])
        exposure_rows = reader.report("exposure").document["rows"]
        allowance = reader.report("allowance").document
        alerts = reader.report("alerts", since=reader.as_of.isoformat()).document["rows"]
        trend: dict[str, list[float | None]] = {"DSO": [], "countback DSO": [], "CEI %": [], "collection rate %": []}
        labels = []
        main_currency = max(aging["totals"], key=lambda c: aging["totals"][c]["total"]) if aging["totals"] else None
        for start, end in _months_back(reader.as_of, months):
            figures = reader.report("kpis", **{"from": start.isoformat(), "to": end.isoformat()}) \
                .document["overall"].get(main_currency or "", {})
            labels.append(start.strftime("%Y-%m"))
            trend["DSO"].append(figures.get("dso"))
            trend["countback DSO"].append(figures.get("countback_dso"))
            trend["CEI %"].append(figures.get("cei"))
            trend["collection rate %"].append(figures.get("collection_rate"))
    finally:
        reader.close()
    largest = sorted(exposure_rows, key=lambda row: -row["exposure"])[:10]
    charts = {}
    if main_currency:
        total = aging["totals"][main_currency]
        charts["aging"] = svg.bars(aging["buckets"], [total[b] for b in aging["buckets"]],
                                   f"AR by bucket ({main_currency})")
    charts["trend_days"] = svg.lines(labels, {k: trend[k] for k in ("DSO", "countback DSO")}, "DSO by month (days)")
    charts["trend_pct"] = svg.lines(labels, {k: trend[k] for k in ("CEI %", "collection rate %")}, "CEI and collection rate (回款率) by month (%)")
    charts["exposure"] = svg.usage_bars([(row["customer_id"], row["exposure"], row["credit_limit"]) for row in largest],
                                        "Largest exposures against their limits")
    return render(request, "overview.html", as_of=reader.as_of, known_at=reader.query.get("known_at") or "",
                  aging=aging, by_salesperson=by_salesperson, largest=largest, allowance=allowance, alerts=alerts,
                  charts=charts, main_currency=main_currency, months=months)


def collections_page(request: Request) -> Response:
    """Per-salesperson collection figures for a period (default: the month of as_of to date)."""
    reader = Reader(request)
    try:
        date_from = data.date_param(reader.query, "from", reader.as_of.replace(day=1))
        report = reader.report("worklist", by="salesperson",
                               **{"from": date_from.isoformat(), "to": reader.as_of.isoformat()}).document
    finally:
        reader.close()
    return render(request, "collections.html", as_of=reader.as_of, date_from=date_from, rows=report["rows"])


# -- worklist ------------------------------------------------------------------------------------------

def worklist_page(request: Request) -> Response:
    reader = Reader(request)
    query = reader.query
    salesperson = query.get("salesperson", ALL)
    grade = query.get("grade", ALL)
    bucket = query.get("bucket", ALL)
    try:
        report = reader.report("worklist", salesperson=None if salesperson == ALL else salesperson).document
        grades = reports.dimension_keys(reader.cursor, "grade", reader.as_of, reader.known_at)
        salespeople = [row["s"] for row in reader.rows(
            "SELECT DISTINCT coalesce(salesperson, '') AS s FROM customers ORDER BY 1", [])]
    finally:
        reader.close()
    buckets = reports.Buckets()
    names = buckets.names

    def bucket_of(days: int) -> str:
        for index, bound in enumerate(buckets.bounds):
            if days <= bound:
                return names[index]
        return names[-1]

    rows = []
    for row in report["rows"]:
        row = {**row, "grade": grades.get(row["customer_id"]) or "", "bucket": bucket_of(row["days_past_due"])}
        if grade != ALL and row["grade"] != grade:
            continue
        if bucket != ALL and row["bucket"] != bucket:
            continue
        rows.append(row)
    counts = Counter(row["bucket"] for row in rows)
    return render(request, "worklist.html", as_of=reader.as_of, rows=rows[:WORKLIST_ROWS_SHOWN], total=len(rows),
                  amount=sum(row["open_amount"] for row in rows), salespeople=salespeople, salesperson=salesperson,
                  grade=grade, bucket=bucket, buckets=names, counts=counts, actions=COLLECTION_ACTIONS,
                  promise_default=(reader.as_of + dt.timedelta(days=7)).isoformat(),
                  here=request.url.path + ("?" + request.url.query if request.url.query else ""))


# -- calendar ------------------------------------------------------------------------------------------

def calendar_page(request: Request) -> Response:
    reader = Reader(request)
    horizon = reader.as_of + dt.timedelta(days=CALENDAR_DAYS)
    try:
        promises = reader.report("promises").document["rows"]
        items = reader.report("open-items", open_only="1").document["rows"]
    finally:
        reader.close()
    due_promises = sorted((p for p in promises if p["status"] == "open"
                           and reader.as_of.isoformat() <= p["promised_on"] <= horizon.isoformat()),
                          key=lambda p: (p["promised_on"], p["customer_id"]))
    broken = sorted((p for p in promises if p["status"] == "broken"),
                    key=lambda p: p["promised_on"], reverse=True)[:100]
    falling_due = sorted((i for i in items if reader.as_of < _day(i["due_on"]) <= horizon and i["open_amount"] > 0),
                         key=lambda i: (_day(i["due_on"]), -i["open_amount"]))
    days = []
    for offset in range(CALENDAR_DAYS + 1):
        day = reader.as_of + dt.timedelta(days=offset)
        days.append({"day": day, "promises": [p for p in due_promises if p["promised_on"] == day.isoformat()],
                     "due": [i for i in falling_due if _day(i["due_on"]) == day]})
    return render(request, "calendar.html", as_of=reader.as_of, days=days, broken=broken,
                  falling_due_count=len(falling_due), due_promise_count=len(due_promises))


def _day(value: Any) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


# -- customers -----------------------------------------------------------------------------------------

def customers_page(request: Request) -> Response:
    reader = Reader(request)
    search = (reader.query.get("q") or "").strip()
    try:
        rows = reader.rows("SELECT customer_id, name, currency, coalesce(salesperson, '') AS salesperson "
                           "FROM customers WHERE $1 = '' OR customer_id ILIKE '%' || $1 || '%' "
                           "OR name ILIKE '%' || $1 || '%' ORDER BY customer_id LIMIT 200", [search])
    finally:
        reader.close()
    return render(request, "customers.html", rows=rows, q=search)


def customer_page(request: Request) -> Response:
    customer_id = request.path_params["customer_id"]
    reader = Reader(request)
    try:
        balance = [row for row in reader.report("balances").document["rows"] if row["customer_id"] == customer_id]
        if not balance:
            raise data.NotFound(f"unknown customer {customer_id!r}")
        date_from = data.date_param(reader.query, "from", reader.as_of - dt.timedelta(days=90))
        statement = reader.report("statement", customer=customer_id, **{"from": date_from.isoformat()}).document
        items = reader.report("open-items", customer=customer_id, open_only="1").document["rows"]
        history = reader.report("history", customer=customer_id).document["rows"]
        # the latest computed grade as of the date (the whole grades report would score every customer)
        grades = reader.rows("SELECT grade AS computed_grade, score, computed_on FROM computed_grades "
                             "WHERE customer_id = ? AND computed_on <= ? AND recorded_at <= ? "
                             "ORDER BY computed_on DESC, position DESC LIMIT 1",
                             [customer_id, reader.as_of, reports.known_at_param(reader.known_at)])
        promises = [p for p in reader.report("promises").document["rows"] if p["customer_id"] == customer_id]
        alerts = reader.report("alerts", customer=customer_id).document["rows"][-20:]
        actions = reader.rows("SELECT action_on, action, invoice_id, outcome, note, taken_by FROM collection_actions "
                              "WHERE customer_id = ? ORDER BY action_on DESC, position DESC LIMIT 50", [customer_id])
        decisions = reader.rows("SELECT effective_on, order_id, kind, amount, currency, reason, credit_limit, "
                                "exposure, available, decided_by FROM order_events WHERE customer_id = ? "
                                "AND kind IN ('approved', 'blocked', 'released') "
                                "ORDER BY position DESC LIMIT 30", [customer_id])
        credit = reader.rows("SELECT effective_on, attribute, value_int, value_text, reason FROM credit_history "
                             "WHERE customer_id = ? ORDER BY effective_on DESC, position DESC LIMIT 30", [customer_id])
    finally:
        reader.close()
    labels = [row["as_of"][:7] if isinstance(row["as_of"], str) else row["as_of"].strftime("%Y-%m")
              for row in history]
    chart = svg.lines(labels, {"balance": [row["balance"] / 100 for row in history],
                               "overdue": [row["overdue"] / 100 for row in history],
                               "limit": [row["credit_limit"] / 100 for row in history]},
                      "Month-end balance, overdue and limit") if history else ""
    return render(request, "customer.html", as_of=reader.as_of, customer=balance[0], statement=statement,
                  items=items, chart=chart, grades=grades[0] if grades else None, promises=promises, alerts=alerts,
                  actions=actions, decisions=decisions, credit=credit, actions_list=COLLECTION_ACTIONS,
                  promise_default=(reader.as_of + dt.timedelta(days=7)).isoformat(),
                  here=request.url.path)


# -- credit queue --------------------------------------------------------------------------------------

BLOCKED_SQL = """
    WITH latest AS (
        SELECT customer_id, order_id, arg_max(kind, position) AS kind, max(position) AS position
        FROM order_events WHERE kind IN ('placed', 'approved', 'blocked', 'released', 'invoiced', 'cancelled')
        GROUP BY customer_id, order_id)
    SELECT o.customer_id, c.name, coalesce(c.salesperson, '') AS salesperson, o.order_id, o.amount, o.currency,
           o.reason, o.credit_limit, o.exposure, o.available, o.effective_on
    FROM latest l JOIN order_events o ON o.position = l.position JOIN customers c ON c.customer_id = o.customer_id
    WHERE l.kind = 'blocked'
    ORDER BY o.effective_on DESC, o.amount DESC
    LIMIT 500"""


def credit_queue(request: Request) -> Response:
    reader = Reader(request)
    try:
        blocked = reader.rows(BLOCKED_SQL, [])
        balances = {row["customer_id"]: row for row in reader.report("balances").document["rows"]}
    finally:
        reader.close()
    for row in blocked:
        row["now"] = balances.get(row["customer_id"], {})
    holds = [row for row in balances.values() if row["on_hold"]]
    over = sorted((row for row in balances.values() if row["available"] < 0), key=lambda r: r["available"])[:50]
    return render(request, "credit_queue.html", blocked=blocked, holds=holds, over=over)


# -- downloads -----------------------------------------------------------------------------------------

def downloads(request: Request) -> Response:
    return render(request, "downloads.html", reports=data.REPORT_PARAMETERS, as_of=data.today())


# -- the outcome of a sent envelope --------------------------------------------------------------------

def sent_page(request: Request) -> Response:
    web = _app().web_of(request)
    envelope_id = request.path_params["envelope_id"]
    item = web.outbox.get(envelope_id) if web.outbox else None
    if item is None:
        raise data.NotFound("no envelope with that id was sent from this server since it started")
    visible = _app()._visible(web, item)
    final = item.status in ("rejected", "duplicate") or visible
    back = request.query_params.get("back") or f"/customers/{quote(item.customer_id)}"
    return render(request, "sent.html", item=item, visible=visible, final=final, back=_app()._safe_next(back))


# -- actions -------------------------------------------------------------------------------------------

async def _form(request: Request, right: str) -> tuple[dict[str, str], Principal]:
    form = await request.form()
    _app().check_csrf(request, form.get(_app().CSRF_FIELD))
    principal = _app().require(request, right)
    return {key: str(value) for key, value in form.items()}, principal


def _required(form: dict[str, str], name: str) -> str:
    value = form.get(name, "").strip()
    if not value:
        raise data.BadParameter(f"{name} is required")
    return value


async def _send(request: Request, principal: Principal, type_: str, customer_id: str,
                payload: dict[str, Any], back: str) -> Response:
    web = _app().web_of(request)
    envelope = envelopes.new_envelope(type_, customer_id, payload, source=f"arledger-web/{principal.name}")
    checked = envelopes.check(0, envelope)
    if checked.reason:
        raise HTTPException(422, f"{checked.reason}: {checked.message}")
    if web.outbox is None or not web.outbox.ready:
        raise _app().Unavailable("the server is not connected to Kafka: nothing was sent")
    await run_in_threadpool(web.outbox.send, [(envelope, checked.line)], principal.name)
    return RedirectResponse(f"/sent/{quote(envelope['id'])}?back={quote(back)}", status_code=303)


async def record_action(request: Request) -> Response:
    form, principal = await _form(request, "collect")
    action = _required(form, "action")
    if action not in (*COLLECTION_ACTIONS, "reminder", "lawyer_letter", "agency", "litigation"):
        raise data.BadParameter(f"unknown action {action!r}")
    payload = {"action": action, "invoice_id": form.get("invoice_id") or None,
               "outcome": form.get("outcome") or None, "note": form.get("note") or None, "by": principal.name}
    return await _send(request, principal, "collection.action", _required(form, "customer_id"), payload,
                       form.get("back") or "/worklist")


async def record_promise(request: Request) -> Response:
    form, principal = await _form(request, "collect")
    amount = _app().parse_money(_required(form, "amount"), "amount")
    promised_on = _app().parse_day(_required(form, "promised_on"), "promised_on")
    payload = {"promise_id": f"PW-{uuid.uuid4().hex[:12]}", "amount": amount, "promised_on": promised_on.isoformat(),
               "invoice_id": form.get("invoice_id") or None, "by": principal.name}
    return await _send(request, principal, "promise.made", _required(form, "customer_id"), payload,
                       form.get("back") or "/worklist")


async def release_order(request: Request) -> Response:
    form, principal = await _form(request, "control")
    payload = {"order_id": _required(form, "order_id"), "by": principal.name, "reason": _required(form, "reason")}
    return await _send(request, principal, "order.released", _required(form, "customer_id"), payload,
                       form.get("back") or "/credit-queue")


async def change_limit(request: Request) -> Response:
    form, principal = await _form(request, "control")
    limit = _app().parse_money(_required(form, "credit_limit"), "credit_limit")
    payload = {"credit_limit": limit, "reason": form.get("reason") or None, "approved_by": principal.name}
    return await _send(request, principal, "credit_limit.changed", _required(form, "customer_id"), payload,
                       form.get("back") or "/credit-queue")


async def hold(request: Request) -> Response:
    form, principal = await _form(request, "control")
    verb = _required(form, "hold")
    if verb not in ("place", "release"):
        raise data.BadParameter("hold must be place or release")
    type_ = "credit_hold.placed" if verb == "place" else "credit_hold.released"
    return await _send(request, principal, type_, _required(form, "customer_id"),
                       {"reason": _required(form, "reason")}, form.get("back") or "/credit-queue")


def routes() -> list[Route]:
    return [
        Route("/", overview),
        Route("/worklist", worklist_page),
        Route("/calendar", calendar_page),
        Route("/collections", collections_page),
        Route("/customers", customers_page),
        Route("/customers/{customer_id:path}", customer_page),
        Route("/credit-queue", credit_queue),
        Route("/downloads", downloads),
        Route("/sent/{envelope_id:path}", sent_page),
        Route("/actions/collection", record_action, methods=["POST"]),
        Route("/actions/promise", record_promise, methods=["POST"]),
        Route("/actions/release", release_order, methods=["POST"]),
        Route("/actions/limit", change_limit, methods=["POST"]),
        Route("/actions/hold", hold, methods=["POST"]),
    ]
