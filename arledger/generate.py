"""Workload generator: a realistic company's receivables history as §3 inbound envelopes.

`generate(customers, months, seed)` streams one JSON envelope per line, in
non-decreasing business time, day by day across all customers. It keeps only
per-customer state in memory (open invoices, unapplied cash, open orders,
disputes, holds) plus a calendar of pending per-customer tasks, so it scales
from a hundred events to tens of millions.

The generator models the ledger's state (docs/contract.md §7/§8) exactly enough that every
good record is valid when ingested in file order: it applies cash with the
ledger's own rule (`ledger.account.cash_application`: FIFO by `due_on`, then
`invoice_id` and `installment`, to the items of undisputed invoices), keeps
unapplied cash, reopens items on reversals, and only allocates explicitly up
to what it knows is open. Bad records (share `bad_share`) are of every §8
rejection kind plus exact re-sends; they never change the ledger's state, so
they never change the validity of a later good record.

Deterministic for a seed: only `random.Random(seed)`, no set or hash order.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import msgspec

from ledger.account import cash_application

# --- Rates: per customer and month (a customer's own rate = rate x its activity) -----------
DIRECT_SALES_PER_MONTH = 2.0        # invoices without an order
ORDERS_PER_MONTH = 1.0              # orders placed (most become invoices)
CREDIT_REVIEWS_PER_MONTH = 0.25     # limit/grade/terms reviews, about one a quarter
MANUAL_HOLDS_PER_MONTH = 0.01       # holds for other reasons than overdue (KYC, rumours)
ACTIVITY_SIGMA = 0.6                # spread of customers' activity (lognormal)
ACTIVITY_MIN, ACTIVITY_MAX = 0.2, 5.0

# --- Shares ---------------------------------------------------------------------------------
NEW_CUSTOMER_SHARE = 0.08           # customers registered later in the period, not on the start date
INSTALLMENT_SALE_SHARE = 0.12       # of sales of at least INSTALLMENT_AMOUNT_MIN
CREDIT_NOTE_PER_SALE = 0.04         # returns, rebates, price corrections
ORDER_CANCEL_SHARE = 0.08           # of approved orders
BLOCKED_ON_HOLD_RELEASE_SHARE = 0.6 # orders blocked by a hold that a credit controller releases
BLOCKED_INVOICED_SHARE = 0.6        # other blocked orders that get invoiced anyway (rest abandoned)
LIMIT_REQUEST_SHARE = 0.3           # over-limit orders followed by a limit increase
EXPLICIT_DUE_SHARE = 0.5            # sales that name their due date
PROMISE_SHARE = 0.4                 # calls/visits that end in a promise to pay
ACTION_SKIP_SHARE = 0.1             # dunning steps a collector forgets
CURRENCIES = (("EUR", 0.75), ("USD", 0.15), ("GBP", 0.10))
GRADES = (("A", 0.25), ("B", 0.40), ("C", 0.25), ("D", 0.10))
TERMS_DAYS = ((30, 0.5), (14, 0.15), (45, 0.2), (60, 0.15))
REGISTERED_GRADE_OFF_SHARE = 0.2    # customers whose registered grade is one off their behaviour

# --- Money (minor units) --------------------------------------------------------------------
INVOICE_AMOUNT_MIN = 5_000          # 50.00
INVOICE_AMOUNT_MAX = 2_000_000      # 20,000.00
INSTALLMENT_AMOUNT_MIN = 200_000    # 2,000.00: smaller sales are never split
HOLD_RELEASE_OVERDUE_DAYS = 30      # an overdue hold is released once nothing is further past due

# Seasonality of sales by calendar month (Jan..Dec), and sales on weekends.
SEASONALITY = (0.85, 0.9, 1.05, 1.0, 1.05, 0.95, 0.8, 0.7, 1.05, 1.1, 1.2, 1.15)
WEEKEND_FACTOR = 0.08
DAYS_PER_MONTH = 30.44

# Payment behaviour by (behavioural) grade.
#   limit: credit limit range (minor units); early/on_time: shares of payments before the due
#   date / within 2 days of it; late_mean: mean days late otherwise; never: share of items never
#   paid; partial/over: shares of part- and over-payments; allocated: share of customers that
#   send remittance advice (explicit allocations); bounce: share of payments that bounce;
#   kept: share of promises kept; hold: chance of a hold once an item is 35 days past due.
GRADE_PROFILES: dict[str, dict[str, Any]] = {
    "A": dict(limit=(10_000_000, 50_000_000), early=0.40, on_time=0.55, late_mean=5, never=0.0,
              partial=0.02, over=0.02, allocated=0.8, bounce=0.002, kept=0.95, hold=0.3),
    "B": dict(limit=(3_000_000, 15_000_000), early=0.20, on_time=0.50, late_mean=8, never=0.005,
              partial=0.06, over=0.02, allocated=0.6, bounce=0.005, kept=0.85, hold=0.4),
    "C": dict(limit=(1_000_000, 5_000_000), early=0.05, on_time=0.25, late_mean=25, never=0.03,
              partial=0.12, over=0.02, allocated=0.4, bounce=0.015, kept=0.65, hold=0.6),
    "D": dict(limit=(200_000, 1_500_000), early=0.0, on_time=0.10, late_mean=55, never=0.20,
              partial=0.20, over=0.01, allocated=0.2, bounce=0.04, kept=0.35, hold=0.8),
}
DISPUTE_SHARE = {"A": 0.01, "B": 0.02, "C": 0.04, "D": 0.06}
# Insolvencies per customer and month: the customer stops paying and buying; its open invoices
# are written off some weeks later (the usual way very old debt leaves the books).
INSOLVENCY_PER_MONTH = {"A": 0.0, "B": 0.0005, "C": 0.003, "D": 0.015}
INSOLVENCY_WRITE_OFF_DAYS = (30, 90)
REPAY_AFTER_BOUNCE_SHARE = {"A": 0.98, "B": 0.95, "C": 0.75, "D": 0.4}

# Dunning ladder: (days past due, action). Write-off of very old debt comes after the ladder.
LADDER = ((7, "reminder"), (14, "email"), (21, "call"), (35, "letter"), (50, "visit"),
          (65, "lawyer_letter"), (95, "agency"), (115, "litigation"))
WRITE_OFF_DAYS = (120, 270)         # items this old are written off (range, drawn per customer)
ACTION_REPEAT_DAYS_MIN = 5          # one call covers all of a customer's overdue invoices
VISIT_AMOUNT_MIN = 300_000          # collectors visit only for 3,000.00 and more
LITIGATION_AMOUNT_MIN = 100_000

SOURCES = {"EUR": "erp-eu", "GBP": "erp-eu", "USD": "billing-us"}
BANK_SOURCE = "bank-feed"
CRM_SOURCE = "crm"
PAYMENT_METHODS = {
    "EUR": ("sepa_transfer", "sepa_transfer", "sepa_direct_debit", "card"),
    "GBP": ("bacs", "faster_payments", "faster_payments", "card"),
    "USD": ("ach", "ach", "wire", "check", "card"),
}

BAD_KINDS = ("invalid_json", "invalid_envelope", "invalid_field", "unknown_type", "invalid_amount",
             "unknown_customer", "unknown_invoice", "currency_mismatch", "duplicate_conflict", "duplicate")
BAD_SHARE_MAX = 0.5
CONFLICT_POOL_MAX = 64              # earlier accepted envelopes a conflicting re-send can copy
SWEEP_EVERY_DAYS = 30               # forget settled invoices that no task will visit again
# The state is many small long-lived objects: the default GC thresholds rescan them all the time
# (40 % of the run time at 10,000 customers). write_jsonl raises them while it runs.
GC_THRESHOLDS = (200_000, 50, 100)

_NAME_FIRST = ("Nordic", "Alpine", "Atlas", "Blue", "Castle", "Delta", "Eagle", "Falcon", "Granite",
               "Harbor", "Iron", "Juniper", "Keystone", "Lakeside", "Meridian", "North", "Oak", "Pioneer",
               "Quantum", "River", "Summit", "Tandem", "Union", "Vertex", "Western", "Zenith", "Apex",
               "Bright", "Crown", "Evergreen", "Golden", "Silver", "Coastal", "Metro", "Prime")
_NAME_SECOND = ("Steel", "Foods", "Logistics", "Textiles", "Machines", "Pharma", "Plastics", "Timber",
                "Electric", "Motors", "Packaging", "Chemicals", "Retail", "Tools", "Optics", "Paper",
                "Glass", "Systems", "Trading", "Components", "Farms", "Builders", "Labs", "Marine")
_NAME_SUFFIX = {"EUR": ("GmbH", "SA", "BV", "S.r.l.", "Oy", "AB", "AG", "SAS"), "GBP": ("Ltd", "PLC", "Ltd"),
                "USD": ("Inc", "LLC", "Corp")}
_PEOPLE = ("Anna Berg", "Marco Rossi", "Julia Novak", "Tom Walker", "Sofia Lind", "Pierre Martin",
           "Emma Jansen", "Lucas Weber", "Olivia Brown", "Noah Schmidt", "Mia Costa", "Jonas Keller")
_COLLECTORS = ("collector.eva", "collector.raj", "collector.lena", "collector.sam")
_CREDIT_MANAGERS = ("credit.manager.klein", "credit.manager.dupont", "cfo.ortega")
_DISPUTE_REASONS = ("damaged goods", "price difference", "quantity short", "not ordered",
                    "service not rendered", "wrong item delivered")
_CREDIT_NOTE_REASONS = ("returned goods", "volume rebate", "pricing correction", "damaged in transit")
_MANUAL_HOLD_REASONS = ("KYC review", "change of ownership", "insolvency rumour under review",
                        "bank details unverified")


def add_months(start: date, months: int) -> date:
    """The same day `months` later (clamped to the month's last day)."""
    month_index = start.month - 1 + months
    year, month = start.year + month_index // 12, month_index % 12 + 1
    next_first = date(year + month // 12, month % 12 + 1, 1)
    return date(year, month, min(start.day, (next_first - timedelta(days=1)).day))


def _weighted(rng: random.Random, table: tuple[tuple[Any, float], ...]) -> Any:
    roll = rng.random()
    for value, weight in table:
        roll -= weight
        if roll < 0:
            return value
    return table[-1][0]


class _Item:
    """One installment: the ledger's open amount, and what the customer still means to pay.

    The ledger's cash application (`ledger.account.cash_application`) reads its `invoice_id`,
    `installment`, `due_on` (a day number here, ordered as the dates are) and `open`."""

    __slots__ = ("invoice", "installment", "due_on", "amount", "open", "intent")

    def __init__(self, invoice: _Invoice, installment: int, due_on: int, amount: int) -> None:
        self.invoice, self.installment, self.due_on, self.amount = invoice, installment, due_on, amount
        self.open = amount
        self.intent = amount

    @property
    def invoice_id(self) -> str:
        return self.invoice.invoice_id


class _Invoice:
    __slots__ = ("invoice_id", "issued", "amount", "credited", "items", "disputed", "locks",
                 "dunning", "dun_step", "dun_item", "parked")

    def __init__(self, invoice_id: str, issued: int, amount: int) -> None:
        self.invoice_id, self.issued, self.amount = invoice_id, issued, amount
        self.credited = 0
        self.items: list[_Item] = []
        self.disputed = False
        self.locks = 0           # allocations by a payment that will bounce: keep, never write off
        self.dunning = False
        self.dun_step = 0
        self.dun_item = 1
        self.parked: list[int] = []  # installments whose payment waits for the dispute to end

    def open_total(self) -> int:
        return sum(item.open for item in self.items)


class _Cash:
    """Unapplied cash from a payment or a credit note; `allocations` tracked only for payments that bounce."""

    __slots__ = ("source_id", "remaining", "allocations")

    def __init__(self, source_id: str, remaining: int, allocations: list[tuple[_Item, int]] | None) -> None:
        self.source_id, self.remaining, self.allocations = source_id, remaining, allocations


Data = dict[str, Any]  # an envelope's `data` (or a whole envelope)
Event = tuple[str, str, Data]  # (type, source, data) of one line to write
Line = tuple[int, int, str, Event]  # (second of the day, order, customer_id, event)
Task = tuple[Any, ...]  # (kind, *arguments of _Generator.task_<kind>)
Payment = tuple[_Invoice | None, int]  # (the invoice paid for, if the customer says, amount)


class _Order:
    __slots__ = ("order_id", "amount", "status")

    def __init__(self, order_id: str, amount: int, status: str) -> None:
        self.order_id, self.amount, self.status = order_id, amount, status


class _Customer:
    __slots__ = ("index", "customer_id", "name", "currency", "source", "limit", "terms", "grade",
                 "behaviour", "salesperson", "activity", "invoice_avg", "allocated", "writeoff_days",
                 "registered", "invoices", "cash", "bouncing", "orders", "on_hold", "hold_day",
                 "hold_kind", "release_pending", "late_days_sum", "paid_count", "day_events", "insolvent",
                 "last_action")
    # Set by _Generator._setup, right after construction:
    name: str
    currency: str
    source: str
    limit: int
    terms: int
    grade: str
    behaviour: str
    salesperson: str
    activity: float
    invoice_avg: float
    allocated: bool
    writeoff_days: int

    def __init__(self, index: int, customer_id: str) -> None:
        self.index, self.customer_id = index, customer_id
        self.registered = False
        self.invoices: dict[str, _Invoice] = {}
        self.cash: list[_Cash] = []
        self.bouncing: dict[str, _Cash] = {}
        self.orders: dict[str, _Order] = {}
        self.on_hold = False
        self.hold_day = -1
        self.hold_kind = ""
        self.release_pending = False
        self.late_days_sum = 0
        self.paid_count = 0
        self.day_events: list[Event] = []
        self.insolvent = False
        self.last_action: dict[str, int] = {}  # action -> day it was last taken for this customer

    # -- the ledger's view (§7): its own rule applies the cash ---------------------------------
    def eligible_items(self) -> list[_Item]:
        """Open items of undisputed invoices (written-off invoices are forgotten: never among them)."""
        return [item for invoice in self.invoices.values() if not invoice.disputed
                for item in invoice.items if item.open > 0]

    def apply_cash(self) -> None:
        """Apply unapplied cash to the eligible items by the ledger's rule (`cash_application`). The sources
        are in arrival order, which is the ledger's order (received date, then recorded order): the
        simulation runs day by day and a customer's lines keep their order within a day."""
        if not self.cash:
            return
        for source, item, amount in cash_application(self.cash, self.eligible_items()):
            _allocate(source, item, amount)
        self.cash = [source for source in self.cash if source.remaining > 0]

    def unapplied(self) -> int:
        return sum(source.remaining for source in self.cash)

    def exposure(self) -> int:
        open_total = sum(invoice.open_total() for invoice in self.invoices.values())
        orders = sum(order.amount for order in self.orders.values() if order.status == "approved")
        return open_total - self.unapplied() + orders

    def max_days_past_due(self, day: int) -> int:
        """Days past due of the oldest undisputed open item (negative when nothing is overdue)."""
        worst = -(10**9)
        for invoice in self.invoices.values():
            if invoice.disputed:
                continue
            for item in invoice.items:
                if item.open > 0 and day - item.due_on > worst:
                    worst = day - item.due_on
        return worst

    def maybe_drop(self, invoice: _Invoice) -> None:
        """Forget an invoice nobody will touch again: state stays small."""
        if invoice.disputed or invoice.locks:
            return
        if all(item.open == 0 and item.intent == 0 for item in invoice.items):
            self.forget(invoice)

    def forget(self, invoice: _Invoice) -> None:
        """Drop an invoice and break its item <-> invoice cycle, so reference counting frees it now
        (write_jsonl raises the GC thresholds: cyclic garbage would pile up until a rare full pass)."""
        del self.invoices[invoice.invoice_id]
        invoice.items = []


def _allocate(source: _Cash, item: _Item, amount: int) -> None:
    item.open -= amount
    source.remaining -= amount
    if source.allocations is not None:
        source.allocations.append((item, amount))
        item.invoice.locks += 1


class _Generator:
    """The simulation: a calendar of per-customer tasks, run day by day."""

    def __init__(self, customers: int, months: int, seed: int, start: date, bad_share: float) -> None:
        assert customers >= 1 and months >= 1, "need at least one customer and one month"
        assert 0.0 <= bad_share <= BAD_SHARE_MAX, f"bad_share must be in [0, {BAD_SHARE_MAX}]"
        self.rng = random.Random(seed)
        self.seed = seed
        self.start = start
        self.days = (add_months(start, months) - start).days
        self.bad_odds = bad_share / (1.0 - bad_share)  # one bad line after a good one with these odds
        self.customer_count = customers
        self.envelope_number = 0
        self.today = -1
        self.sequence = {"INV": 0, "PAY": 0, "CN": 0, "SO": 0, "PR": 0}
        self.calendar: dict[int, dict[int, list[Task]]] = {}
        self.encoder = msgspec.json.Encoder()
        self.conflict_pool: list[Data] = []
        self.conflict_today: list[Data] = []
        self.date_cache: dict[int, str] = {}
        self.season = [self._season_factor(day) for day in range(self.days)]
        self.season_max = max(SEASONALITY) * 1.0
        rng = self.rng
        self.salespeople = rng.sample(_PEOPLE, rng.randint(3, 8))
        width = max(5, len(str(customers)))
        self.id_width = width
        self.customers = [_Customer(i, f"C{i + 1:0{width}d}") for i in range(customers)]
        later = int(customers * NEW_CUSTOMER_SHARE) if customers > 1 else 0
        late_days = sorted(rng.randrange(1, max(2, self.days * 2 // 3)) for _ in range(later))
        for i, customer in enumerate(self.customers):
            first_day = 0 if i < customers - later else late_days[i - (customers - later)]
            self._setup(customer)
            self.schedule(first_day, customer, ("register",))

    # -- calendar ------------------------------------------------------------------------------
    def schedule(self, day: int, customer: _Customer, task: Task) -> None:
        assert day > self.today, "a task for today would be lost: today's calendar is already taken"
        if day >= self.days:
            return  # beyond the period: never happens in this file
        self.calendar.setdefault(day, {}).setdefault(customer.index, []).append(task)

    def business_day(self, day: int) -> int:
        """The day itself, or the Monday after a weekend (banks and ERPs post on weekdays)."""
        weekday = (self.start.weekday() + day) % 7
        return day + (7 - weekday if weekday >= 5 else 0)

    def iso(self, day: int) -> str:
        text = self.date_cache.get(day)
        if text is None:
            text = (self.start + timedelta(days=day)).isoformat()
            if len(self.date_cache) < 4096:
                self.date_cache[day] = text
        return text

    def next_id(self, prefix: str) -> str:
        self.sequence[prefix] += 1
        return f"{prefix}-{self.sequence[prefix]:08d}"

    def _season_factor(self, day: int) -> float:
        current = self.start + timedelta(days=day)
        factor = SEASONALITY[current.month - 1]
        return factor * (WEEKEND_FACTOR if current.weekday() >= 5 else 1.0)

    def next_arrival(self, customer: _Customer, after: float, monthly_rate: float) -> float | None:
        """Next arrival time (in days) of a seasonal Poisson process, by thinning."""
        rate_max = monthly_rate * customer.activity * self.season_max / DAYS_PER_MONTH
        if rate_max <= 0:
            return None
        time = after
        while True:
            time += self.rng.expovariate(rate_max)
            day = int(time)
            if day >= self.days:
                return None
            if self.rng.random() * self.season_max < self.season[day]:
                return time

    def emit(self, customer: _Customer, event_type: str, source: str, data: Data) -> None:
        customer.day_events.append((event_type, source, data))

    # -- customers -----------------------------------------------------------------------------
    def _setup(self, customer: _Customer) -> None:
        rng = self.rng
        behaviour = _weighted(rng, GRADES)
        grade = behaviour
        if rng.random() < REGISTERED_GRADE_OFF_SHARE:
            grade = "ABCD"[min(3, max(0, "ABCD".index(behaviour) + rng.choice((-1, 1))))]
        profile = GRADE_PROFILES[grade]
        customer.behaviour = behaviour
        customer.grade = grade
        customer.currency = _weighted(rng, CURRENCIES)
        customer.source = SOURCES[customer.currency]
        customer.name = (f"{rng.choice(_NAME_FIRST)} {rng.choice(_NAME_SECOND)} "
                         f"{rng.choice(_NAME_SUFFIX[customer.currency])}")
        low, high = profile["limit"]
        customer.limit = int(round(rng.uniform(low, high), -5))  # limits in round thousands
        customer.terms = _weighted(rng, TERMS_DAYS)
        customer.salesperson = rng.choice(self.salespeople)
        customer.activity = min(ACTIVITY_MAX, max(ACTIVITY_MIN, rng.lognormvariate(0.0, ACTIVITY_SIGMA)))
        average = customer.limit * rng.uniform(0.03, 0.15)
        customer.invoice_avg = min(1_200_000, max(20_000, average))
        customer.allocated = rng.random() < GRADE_PROFILES[behaviour]["allocated"]
        customer.writeoff_days = rng.randint(*WRITE_OFF_DAYS)

    def amount(self, customer: _Customer) -> int:
        value = customer.invoice_avg * self.rng.lognormvariate(0.0, 0.55)
        return int(min(INVOICE_AMOUNT_MAX, max(INVOICE_AMOUNT_MIN, value)))

    # -- tasks ---------------------------------------------------------------------------------
    def run_task(self, day: int, customer: _Customer, task: Task, payments: list[Payment]) -> None:
        kind = task[0]
        if kind == "pay":
            self.task_pay(day, customer, task[1], task[2], task[3], payments)
        elif kind == "pay_amount":
            self.task_pay_amount(customer, task[1], task[2], payments)
        else:
            getattr(self, "task_" + kind)(day, customer, *task[1:])

    def task_register(self, day: int, customer: _Customer) -> None:
        customer.registered = True
        self.emit(customer, "customer.registered", customer.source, {
            "name": customer.name, "currency": customer.currency, "credit_limit": customer.limit,
            "payment_terms_days": customer.terms, "grade": customer.grade,
            "salesperson": customer.salesperson,
        })
        for kind, rate in (("sale", DIRECT_SALES_PER_MONTH), ("order", ORDERS_PER_MONTH),
                           ("manual_hold", MANUAL_HOLDS_PER_MONTH)):
            arrival = self.next_arrival(customer, day + 1.0, rate)
            if arrival is not None:
                self.schedule(int(arrival), customer, (kind, arrival))
        review = day + 1 + int(self.rng.expovariate(CREDIT_REVIEWS_PER_MONTH / DAYS_PER_MONTH))
        self.schedule(self.business_day(review), customer, ("review",))
        insolvency_rate = INSOLVENCY_PER_MONTH[customer.behaviour]
        if insolvency_rate:
            insolvency = day + 1 + int(self.rng.expovariate(insolvency_rate / DAYS_PER_MONTH))
            self.schedule(self.business_day(insolvency), customer, ("insolvency",))

    def _repeat(self, day: int, customer: _Customer, kind: str, time: float, rate: float,
                action: Callable[[], None]) -> None:
        """Run an arrival, then every further arrival of the same day; schedule the next one."""
        while True:
            action()
            arrival = self.next_arrival(customer, time, rate)
            if arrival is None:
                return
            time = arrival
            if int(time) != day:
                self.schedule(int(time), customer, (kind, time))
                return

    def task_sale(self, day: int, customer: _Customer, time: float) -> None:
        if customer.insolvent:
            return
        self._repeat(day, customer, "sale", time, DIRECT_SALES_PER_MONTH,
                     lambda: self.record_sale(day, customer, self.amount(customer), None))

    def task_manual_hold(self, day: int, customer: _Customer, time: float) -> None:
        def place() -> None:
            if not customer.on_hold:
                self.place_hold(day, customer, "manual", self.rng.choice(_MANUAL_HOLD_REASONS))
                self.schedule(self.business_day(day + self.rng.randint(3, 30)), customer, ("manual_release",))
        self._repeat(day, customer, "manual_hold", time, MANUAL_HOLDS_PER_MONTH, place)

    def record_sale(self, day: int, customer: _Customer, amount: int, order_id: str | None) -> None:
        rng = self.rng
        invoice_id = self.next_id("INV")
        invoice = _Invoice(invoice_id, day, amount)
        due = day + customer.terms
        data: dict[str, Any] = {"invoice_id": invoice_id, "amount": amount, "currency": customer.currency,
                                "issued_on": self.iso(day)}
        if amount >= INSTALLMENT_AMOUNT_MIN and rng.random() < INSTALLMENT_SALE_SHARE:
            count = rng.randint(2, 4)
            part = amount // count // 100 * 100  # round parts; the last takes the rest
            schedule = [(due + 30 * k, part) for k in range(count - 1)]
            schedule.append((due + 30 * (count - 1), amount - part * (count - 1)))
            data["installments"] = [{"due_on": self.iso(d), "amount": a} for d, a in schedule]
        else:
            if rng.random() < EXPLICIT_DUE_SHARE:
                if rng.random() < 0.2:  # "end of month" terms: the due date moves to the month's end
                    due_date = self.start + timedelta(days=due)
                    due += (add_months(due_date.replace(day=1), 1) - due_date).days - 1
                data["due_on"] = self.iso(due)
            schedule = [(due, amount)]
        if order_id is not None:
            data["order_id"] = order_id
        data["salesperson"] = customer.salesperson if rng.random() < 0.95 else rng.choice(self.salespeople)
        self.emit(customer, "sale.recorded", customer.source, data)
        for number, (item_due, item_amount) in enumerate(schedule, start=1):
            invoice.items.append(_Item(invoice, number, item_due, item_amount))
        customer.invoices[invoice_id] = invoice
        customer.apply_cash()
        self.plan_payments(day, customer, invoice)
        first_due = invoice.items[0].due_on
        invoice.dunning = True
        self.schedule(self.business_day(first_due + LADDER[0][0]), customer, ("dun", invoice_id))
        if rng.random() < DISPUTE_SHARE[customer.behaviour]:
            self.schedule(day + rng.randint(2, 20), customer, ("dispute_open", invoice_id))
        if rng.random() < CREDIT_NOTE_PER_SALE:
            self.schedule(day + rng.randint(1, 30), customer, ("credit_note", invoice_id))

    def plan_payments(self, day: int, customer: _Customer, invoice: _Invoice) -> None:
        """Decide when (and whether) the customer pays each installment, by its behaviour."""
        rng = self.rng
        profile = GRADE_PROFILES[customer.behaviour]
        for item in invoice.items:
            if rng.random() < profile["never"]:
                item.intent = 0
                continue
            roll = rng.random()
            if roll < profile["early"]:
                delay = -rng.randint(1, 10)
            elif roll < profile["early"] + profile["on_time"]:
                delay = rng.randint(0, 2)
            else:
                delay = 1 + int(rng.expovariate(1.0 / profile["late_mean"]))
            style = "partial" if rng.random() < profile["partial"] else "full"
            pay_day = self.business_day(max(day + 1, item.due_on + delay))
            self.schedule(pay_day, customer, ("pay", invoice.invoice_id, item.installment, style))

    def task_pay(self, day: int, customer: _Customer, invoice_id: str, number: int, style: str,
                 payments: list[Payment]) -> None:
        invoice = customer.invoices.get(invoice_id)
        if invoice is None:
            return
        item = invoice.items[number - 1]
        if item.intent <= 0:
            return
        if invoice.disputed:
            invoice.parked.append(number)  # the customer withholds payment during a dispute
            return
        amount = item.intent
        if style == "partial" and amount >= 2_000:
            amount = max(100, int(amount * self.rng.uniform(0.3, 0.7)) // 100 * 100)
            self.schedule(self.business_day(day + self.rng.randint(10, 40)), customer,
                          ("pay", invoice_id, number, "full"))
        item.intent -= amount
        customer.late_days_sum += max(0, day - item.due_on)
        customer.paid_count += 1
        payments.append((invoice, amount))

    def task_pay_amount(self, customer: _Customer, amount: int, invoice_id: str | None,
                        payments: list[Payment]) -> None:
        """A payment of a given amount (kept promise, re-payment after a bounce)."""
        if customer.insolvent:
            return
        invoice = customer.invoices.get(invoice_id) if invoice_id else None
        if invoice is not None:
            left = amount
            for item in invoice.items:  # the customer won't pay twice what a promise covered
                take = min(left, item.intent)
                item.intent -= take
                left -= take
        payments.append((invoice, amount))

    def flush_payment(self, day: int, customer: _Customer, payments: list[Payment]) -> None:
        """One bank line for everything the customer pays today."""
        rng = self.rng
        profile = GRADE_PROFILES[customer.behaviour]
        total = sum(amount for _, amount in payments)
        if rng.random() < profile["over"]:
            total += rng.choice((100, 500, 1_000, 5_000, total // 10 // 100 * 100 or 100))
        payment_id = self.next_id("PAY")
        data: dict[str, Any] = {"payment_id": payment_id, "amount": total, "currency": customer.currency,
                                "received_on": self.iso(day), "method": rng.choice(PAYMENT_METHODS[customer.currency])}
        wanted: dict[str, int] = {}
        for invoice, amount in payments:
            if invoice is not None and invoice.invoice_id in customer.invoices:
                wanted[invoice.invoice_id] = wanted.get(invoice.invoice_id, 0) + amount
        allocations: list[tuple[_Invoice, int]] = []
        if customer.allocated:
            for invoice_id, amount in wanted.items():
                invoice = customer.invoices[invoice_id]
                allocatable = min(amount, invoice.open_total())  # never above what is surely open
                if allocatable > 0:
                    allocations.append((invoice, allocatable))
        if wanted:
            data["reference"] = " ".join(list(wanted)[:5])
        if allocations:
            data["allocations"] = [{"invoice_id": inv.invoice_id, "amount": amt} for inv, amt in allocations]
        self.emit(customer, "payment.received", BANK_SOURCE, data)
        bounces = rng.random() < profile["bounce"]
        source = _Cash(payment_id, total, [] if bounces else None)
        for invoice, amount in allocations:
            for item in invoice.items:  # installments in due order
                if amount == 0:
                    break
                take = min(amount, item.open)
                if take:
                    _allocate(source, item, take)
                    amount -= take
        if source.remaining:
            customer.cash.append(source)
            customer.apply_cash()
        if bounces:
            customer.bouncing[payment_id] = source
            self.schedule(self.business_day(day + rng.randint(2, 8)), customer, ("reverse", payment_id, total))
        for invoice, _ in payments:
            if invoice is not None and invoice.invoice_id in customer.invoices:
                customer.maybe_drop(invoice)
        self.check_release(day, customer)

    def task_reverse(self, day: int, customer: _Customer, payment_id: str, amount: int) -> None:
        rng = self.rng
        source = customer.bouncing.pop(payment_id)
        self.emit(customer, "payment.reversed", BANK_SOURCE, {
            "payment_id": payment_id,
            "reason": rng.choice(("bounced: insufficient funds", "charged back", "returned direct debit")),
        })
        if source in customer.cash:
            customer.cash.remove(source)
        source.remaining = 0
        reopened: dict[str, _Invoice] = {}
        assert source.allocations is not None, "a payment that bounces keeps its allocations"
        for item, allocated in source.allocations:
            item.open += allocated
            item.invoice.locks -= 1
            reopened[item.invoice.invoice_id] = item.invoice
        customer.apply_cash()
        for invoice in reopened.values():
            if not invoice.dunning and invoice.invoice_id in customer.invoices:
                invoice.dunning = True
                self.schedule(day + 1, customer, ("dun", invoice.invoice_id))
            customer.maybe_drop(invoice)
        if not customer.insolvent and rng.random() < REPAY_AFTER_BOUNCE_SHARE[customer.behaviour]:
            self.schedule(self.business_day(day + rng.randint(3, 12)), customer, ("pay_amount", amount, None))

    # -- orders --------------------------------------------------------------------------------
    def task_order(self, day: int, customer: _Customer, time: float) -> None:
        if customer.insolvent:
            return
        self._repeat(day, customer, "order", time, ORDERS_PER_MONTH, lambda: self.place_order(day, customer))

    def place_order(self, day: int, customer: _Customer) -> None:
        rng = self.rng
        order_id = self.next_id("SO")
        amount = self.amount(customer)
        self.emit(customer, "order.placed", customer.source,
                  {"order_id": order_id, "amount": amount, "currency": customer.currency})
        # The ledger's decision, as far as this model can tell (§7 order: hold, overdue, limit).
        exposure = customer.exposure()
        worst = customer.max_days_past_due(day)
        if customer.on_hold:
            status = "blocked_hold" if customer.hold_day < day else "blocked"
        elif worst > 30 or exposure + amount > customer.limit:
            status = "blocked"
        else:
            status = "approved"
        order = _Order(order_id, amount, status)
        customer.orders[order_id] = order
        if status == "approved":
            sure = worst <= 20 and exposure + amount <= customer.limit * 0.9
            if sure and rng.random() < ORDER_CANCEL_SHARE:
                self.schedule(day + rng.randint(1, 10), customer, ("order_cancel", order_id))
            else:
                self.schedule(self.business_day(day + rng.randint(1, 10)), customer, ("order_invoice", order_id))
        elif status == "blocked_hold":
            # Only a block we are sure of (a hold from an earlier day) may be released: §8 rejects
            # a release of an order that is not blocked.
            if rng.random() < BLOCKED_ON_HOLD_RELEASE_SHARE:
                self.schedule(self.business_day(day + rng.randint(1, 4)), customer, ("order_release", order_id))
            else:
                del customer.orders[order_id]  # abandoned: never referenced again
        else:
            if exposure + amount > customer.limit and rng.random() < LIMIT_REQUEST_SHARE:
                self.schedule(self.business_day(day + 1), customer, ("limit_request", order_id))
            if rng.random() < BLOCKED_INVOICED_SHARE:
                self.schedule(self.business_day(day + rng.randint(3, 15)), customer, ("order_invoice", order_id))
            else:
                del customer.orders[order_id]  # abandoned: never referenced again

    def task_order_invoice(self, day: int, customer: _Customer, order_id: str) -> None:
        order = customer.orders.pop(order_id)
        amount = order.amount
        if self.rng.random() < 0.15:  # partial delivery or extra items
            amount = int(min(INVOICE_AMOUNT_MAX, max(INVOICE_AMOUNT_MIN, amount * self.rng.uniform(0.85, 1.05))))
        self.record_sale(day, customer, amount, order_id)

    def task_order_cancel(self, day: int, customer: _Customer, order_id: str) -> None:
        customer.orders.pop(order_id)
        self.emit(customer, "order.cancelled", customer.source, {"order_id": order_id})

    def task_order_release(self, day: int, customer: _Customer, order_id: str) -> None:
        order = customer.orders[order_id]
        self.emit(customer, "order.released", CRM_SOURCE, {
            "order_id": order_id, "by": self.rng.choice(_CREDIT_MANAGERS),
            "reason": self.rng.choice(("customer paid overdue items", "strategic customer", "secured by guarantee")),
        })
        order.status = "approved"
        self.schedule(self.business_day(day + self.rng.randint(1, 7)), customer, ("order_invoice", order_id))

    def task_limit_request(self, day: int, customer: _Customer, order_id: str) -> None:
        customer.limit = int(round(customer.limit * self.rng.uniform(1.1, 1.5), -5))
        self.emit(customer, "credit_limit.changed", CRM_SOURCE, {
            "credit_limit": customer.limit, "reason": f"increase requested for order {order_id}",
            "approved_by": self.rng.choice(_CREDIT_MANAGERS),
        })

    # -- credit management ---------------------------------------------------------------------
    def task_review(self, day: int, customer: _Customer) -> None:
        if customer.insolvent:
            return
        rng = self.rng
        grades = "ABCD"
        if customer.paid_count:
            average_late = customer.late_days_sum / customer.paid_count
            observed = "A" if average_late <= 3 else "B" if average_late <= 12 else "C" if average_late <= 35 else "D"
        else:
            observed = customer.grade
        step = grades.index(observed) - grades.index(customer.grade)
        if step and rng.random() < 0.6:
            customer.grade = grades[grades.index(customer.grade) + (1 if step > 0 else -1)]
            score = {"A": 85, "B": 70, "C": 50, "D": 30}[customer.grade] + rng.randint(-8, 8)
            self.emit(customer, "credit_grade.assigned", CRM_SOURCE, {
                "grade": customer.grade, "score": score,
                "reason": "payment behaviour " + ("worsened" if step > 0 else "improved"),
            })
            factor = rng.uniform(0.5, 0.7) if step > 0 else rng.uniform(1.25, 1.6)
            self.change_limit(customer, factor, "grade " + customer.grade)
        elif rng.random() < 0.25:
            if rng.random() < 0.5:
                self.emit(customer, "credit_grade.assigned", CRM_SOURCE, {
                    "grade": customer.grade, "score": rng.randint(20, 95), "reason": "periodic review"})
            self.change_limit(customer, rng.uniform(0.8, 1.3), "periodic review")
        if rng.random() < 0.06:
            customer.terms = rng.choice([t for t, _ in TERMS_DAYS if t != customer.terms])
            self.emit(customer, "payment_terms.changed", CRM_SOURCE, {"payment_terms_days": customer.terms})
        review = day + 30 + int(rng.expovariate(CREDIT_REVIEWS_PER_MONTH / DAYS_PER_MONTH))
        self.schedule(self.business_day(review), customer, ("review",))

    def change_limit(self, customer: _Customer, factor: float, reason: str) -> None:
        customer.limit = max(100_000, int(round(customer.limit * factor, -5)))
        self.emit(customer, "credit_limit.changed", CRM_SOURCE, {
            "credit_limit": customer.limit, "reason": reason, "approved_by": self.rng.choice(_CREDIT_MANAGERS)})

    def place_hold(self, day: int, customer: _Customer, kind: str, reason: str) -> None:
        customer.on_hold, customer.hold_day, customer.hold_kind = True, day, kind
        self.emit(customer, "credit_hold.placed", CRM_SOURCE, {"reason": reason})

    def release_hold(self, customer: _Customer, reason: str) -> None:
        customer.on_hold = False
        self.emit(customer, "credit_hold.released", CRM_SOURCE, {"reason": reason})

    def check_release(self, day: int, customer: _Customer) -> None:
        if customer.on_hold and customer.hold_kind == "overdue" and not customer.release_pending:
            customer.release_pending = True
            self.schedule(self.business_day(day + 1), customer, ("release_check",))

    def task_release_check(self, day: int, customer: _Customer) -> None:
        customer.release_pending = False
        if (customer.on_hold and customer.hold_kind == "overdue" and customer.hold_day < day
                and customer.max_days_past_due(day) <= HOLD_RELEASE_OVERDUE_DAYS):
            self.release_hold(customer, "overdue items cleared")

    def task_manual_release(self, day: int, customer: _Customer) -> None:
        if customer.on_hold and customer.hold_kind == "manual" and customer.hold_day < day:
            if customer.max_days_past_due(day) > HOLD_RELEASE_OVERDUE_DAYS:
                customer.hold_kind = "overdue"  # stays on hold until the overdue items are paid
            else:
                self.release_hold(customer, "review completed")

    # -- disputes and credit notes -------------------------------------------------------------
    def task_dispute_open(self, day: int, customer: _Customer, invoice_id: str) -> None:
        invoice = customer.invoices.get(invoice_id)
        if invoice is None or invoice.disputed:
            return
        open_total = invoice.open_total()
        if open_total == 0:
            return
        rng = self.rng
        data: dict[str, Any] = {"invoice_id": invoice_id}
        if rng.random() < 0.7:
            data["amount"] = max(1, int(open_total * rng.uniform(0.1, 1.0)))
        data["reason"] = rng.choice(_DISPUTE_REASONS)
        self.emit(customer, "dispute.opened", CRM_SOURCE, data)
        invoice.disputed = True
        self.schedule(day + rng.randint(5, 45), customer, ("dispute_resolve", invoice_id, data.get("amount")))

    def task_dispute_resolve(self, day: int, customer: _Customer, invoice_id: str, amount: int | None) -> None:
        invoice = customer.invoices[invoice_id]  # disputed invoices are never dropped
        rng = self.rng
        roll = rng.random()
        credit = min(amount or invoice.open_total(), invoice.amount - invoice.credited)
        if roll < 0.45 and invoice.locks == 0 and credit > 0:
            self.issue_credit_note(day, customer, invoice, credit, "dispute settled")
            resolution = "credit note issued"
        elif roll < 0.8:
            resolution = "rejected: invoice stands"
        else:
            resolution = "withdrawn by customer"
        self.emit(customer, "dispute.resolved", CRM_SOURCE, {"invoice_id": invoice_id, "resolution": resolution})
        invoice.disputed = False
        customer.apply_cash()
        for number in invoice.parked:
            self.schedule(self.business_day(day + rng.randint(3, 15)), customer, ("pay", invoice_id, number, "full"))
        invoice.parked = []
        customer.maybe_drop(invoice)

    def task_credit_note(self, day: int, customer: _Customer, invoice_id: str) -> None:
        invoice = customer.invoices.get(invoice_id)
        if invoice is None or invoice.locks or invoice.amount == invoice.credited:
            return
        amount = max(1, int((invoice.amount - invoice.credited) * self.rng.uniform(0.05, 0.5)))
        self.issue_credit_note(day, customer, invoice, amount, self.rng.choice(_CREDIT_NOTE_REASONS))
        customer.maybe_drop(invoice)

    def issue_credit_note(self, day: int, customer: _Customer, invoice: _Invoice, amount: int, reason: str) -> None:
        assert 0 < amount <= invoice.amount - invoice.credited, "credit note above what the invoice allows"
        credit_note_id = self.next_id("CN")
        self.emit(customer, "credit_note.issued", customer.source, {
            "credit_note_id": credit_note_id, "invoice_id": invoice.invoice_id, "amount": amount, "reason": reason})
        invoice.credited += amount
        left = amount
        for item in reversed(invoice.items):  # the ledger reduces the latest installment first
            take = min(left, item.open)
            item.open -= take
            left -= take
        if left:
            customer.cash.append(_Cash(credit_note_id, left, None))
        customer.apply_cash()
        # The customer deducts the credit from what it still means to pay: this invoice first.
        left = amount
        others = [item for other in customer.invoices.values() if other is not invoice for item in other.items]
        for item in list(reversed(invoice.items)) + others:
            if left == 0:
                break
            take = min(left, item.intent)
            item.intent -= take
            left -= take

    # -- collections ---------------------------------------------------------------------------
    def task_dun(self, day: int, customer: _Customer, invoice_id: str) -> None:
        invoice = customer.invoices.get(invoice_id)
        if invoice is None:
            return
        if invoice.disputed:
            self.schedule(self.business_day(day + 7), customer, ("dun", invoice_id))
            return
        item = next((item for item in invoice.items if item.open > 0), None)
        if item is None:
            invoice.dunning = False
            customer.maybe_drop(invoice)
            return
        if item.installment != invoice.dun_item:
            invoice.dun_item, invoice.dun_step = item.installment, 0
        days_past_due = day - item.due_on
        if days_past_due >= customer.writeoff_days and invoice.locks == 0:
            reason = self.rng.choice((f"uncollectible: {days_past_due} days past due", "agency gave up"))
            self.write_off(day, customer, invoice, reason)
            return
        step = invoice.dun_step
        while step + 1 < len(LADDER) and LADDER[step + 1][0] <= days_past_due:
            step += 1
        if step < len(LADDER) and LADDER[step][0] <= days_past_due:
            self.collect(day, customer, invoice, LADDER[step][1], days_past_due)
            invoice.dun_step = step + 1
        offset = LADDER[invoice.dun_step][0] if invoice.dun_step < len(LADDER) else customer.writeoff_days
        self.schedule(self.business_day(max(day + 1, item.due_on + offset)), customer, ("dun", invoice_id))

    def collect(self, day: int, customer: _Customer, invoice: _Invoice, action: str, days_past_due: int) -> None:
        rng = self.rng
        open_total = invoice.open_total()
        if action == "visit" and open_total < VISIT_AMOUNT_MIN:
            action = "call"
        if action == "litigation" and open_total < LITIGATION_AMOUNT_MIN:
            action = "letter"
        if rng.random() < ACTION_SKIP_SHARE:
            return
        if customer.last_action.get(action, -ACTION_REPEAT_DAYS_MIN) > day - ACTION_REPEAT_DAYS_MIN:
            return  # this invoice was covered by the same action on another one a few days ago
        customer.last_action[action] = day
        outcome = {"reminder": "sent", "email": "sent", "letter": "sent", "lawyer_letter": "sent",
                   "agency": "handed over", "litigation": "claim filed", "visit": "met customer"}.get(action)
        promise = False
        if action in ("call", "visit") and not customer.insolvent:
            promise = rng.random() < PROMISE_SHARE
            outcome = "promised to pay" if promise else rng.choice(("no answer", "left message", "refused"))
        data: dict[str, Any] = {"action": action}
        if rng.random() < 0.9:
            data["invoice_id"] = invoice.invoice_id
        data["outcome"] = outcome
        data["note"] = f"{days_past_due} days past due"
        data["by"] = rng.choice(_COLLECTORS)
        self.emit(customer, "collection.action", CRM_SOURCE, data)
        if promise:
            self.make_promise(day, customer, invoice, open_total)
        if days_past_due >= 35 and not customer.on_hold and rng.random() < GRADE_PROFILES[customer.behaviour]["hold"]:
            self.place_hold(day, customer, "overdue", f"overdue over 30 days ({invoice.invoice_id})")

    def task_insolvency(self, day: int, customer: _Customer) -> None:
        """The customer goes bust: no more buying or paying; limit to zero; write-off in some weeks."""
        customer.insolvent = True
        for invoice in customer.invoices.values():
            for item in invoice.items:
                item.intent = 0
        if customer.on_hold:
            customer.hold_kind = "insolvent"
        else:
            self.place_hold(day, customer, "insolvent", "insolvency proceedings opened")
        customer.limit = 0
        self.emit(customer, "credit_limit.changed", CRM_SOURCE, {
            "credit_limit": 0, "reason": "insolvency", "approved_by": self.rng.choice(_CREDIT_MANAGERS)})
        if customer.grade != "D":
            customer.grade = "D"
            self.emit(customer, "credit_grade.assigned", CRM_SOURCE, {"grade": "D", "score": 0, "reason": "insolvency"})
        low, high = INSOLVENCY_WRITE_OFF_DAYS
        self.schedule(self.business_day(day + self.rng.randint(low, high)), customer, ("insolvency_write_off",))

    def task_insolvency_write_off(self, day: int, customer: _Customer) -> None:
        waiting = False
        for invoice in list(customer.invoices.values()):
            if invoice.disputed or invoice.locks:
                waiting = True  # settle the dispute or the bounce first
            elif invoice.open_total() > 0:
                self.write_off(day, customer, invoice, "customer insolvent")
        if waiting:
            self.schedule(self.business_day(day + 14), customer, ("insolvency_write_off",))

    def make_promise(self, day: int, customer: _Customer, invoice: _Invoice, open_total: int) -> None:
        rng = self.rng
        amount = open_total if rng.random() < 0.6 else max(100, open_total // 2 // 100 * 100)
        promised_on = self.business_day(day + rng.randint(3, 14))
        data: dict[str, Any] = {"promise_id": self.next_id("PR"), "amount": amount,
                                "promised_on": self.iso(promised_on)}
        if rng.random() < 0.85:
            data["invoice_id"] = invoice.invoice_id
        self.emit(customer, "promise.made", CRM_SOURCE, data)
        kept = GRADE_PROFILES[customer.behaviour]["kept"]
        roll = rng.random()
        if roll < kept:
            pay_day = max(day + 1, promised_on - rng.randint(0, 3))
            self.schedule(self.business_day(pay_day), customer, ("pay_amount", amount, invoice.invoice_id))
        elif roll < kept + (1 - kept) / 3:  # partly kept
            self.schedule(promised_on, customer, ("pay_amount", max(100, amount // 3), invoice.invoice_id))

    def write_off(self, day: int, customer: _Customer, invoice: _Invoice, reason: str) -> None:
        open_total = invoice.open_total()
        assert open_total > 0 and not invoice.locks, "write-off of nothing, or of cash that may bounce"
        data: dict[str, Any] = {"invoice_id": invoice.invoice_id}
        if self.rng.random() < 0.3:
            data["amount"] = open_total  # all of it, stated; the rest of the time implied
        data["reason"] = reason
        self.emit(customer, "invoice.written_off", CRM_SOURCE, data)
        customer.forget(invoice)
        self.check_release(day, customer)

    # -- output --------------------------------------------------------------------------------
    def run(self, on_day: Callable[[int, int], None] | None = None) -> Iterator[tuple[str, bytes]]:
        rng = self.rng
        business_start, business_end = 8 * 3600, 19 * 3600
        for day in range(self.days):
            self.today = day
            tasks_by_customer = self.calendar.pop(day, None)
            lines: list[Line] = []
            if tasks_by_customer:
                for index, tasks in tasks_by_customer.items():
                    customer = self.customers[index]
                    payments: list[Payment] = []
                    for task in tasks:
                        if customer.registered or task[0] == "register":
                            self.run_task(day, customer, task, payments)
                    if payments:
                        self.flush_payment(day, customer, payments)
                    events = customer.day_events
                    if not events:
                        continue
                    seconds = sorted(rng.sample(range(business_start, business_end), len(events)))
                    if events[0][0] == "customer.registered":
                        seconds[0] = rng.randrange(6 * 3600, business_start)
                    for second, event in zip(seconds, events):
                        lines.append((second, len(lines), customer.customer_id, event))
                    customer.day_events = []
            lines.sort()
            yield from self.encode_day(day, lines)
            self.conflict_pool.extend(self.conflict_today)
            self.conflict_today = []
            if len(self.conflict_pool) > CONFLICT_POOL_MAX:
                del self.conflict_pool[: len(self.conflict_pool) - CONFLICT_POOL_MAX]
            if day % SWEEP_EVERY_DAYS == SWEEP_EVERY_DAYS - 1:
                for customer in self.customers:
                    for invoice in list(customer.invoices.values()):
                        customer.maybe_drop(invoice)
            if on_day is not None:
                on_day(day + 1, self.days)

    def envelope_id(self) -> str:
        self.envelope_number += 1
        return f"gen-{self.seed}-{self.envelope_number}"

    def encode_day(self, day: int, lines: list[Line]) -> Iterator[tuple[str, bytes]]:
        rng = self.rng
        day_text = self.iso(day)
        for second, _, customer_id, (event_type, source, data) in lines:
            time = f"{day_text}T{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}Z"
            envelope = {"id": self.envelope_id(), "type": event_type, "source": source, "time": time,
                        "customer_id": customer_id, "data": data}
            line = self.encoder.encode(envelope)
            yield event_type, line
            if event_type in ("sale.recorded", "collection.action") and rng.random() < 0.05:
                self.conflict_today.append(envelope)
            if self.bad_odds and rng.random() < self.bad_odds:
                yield self.bad_record(day, envelope, line)

    # -- bad records ---------------------------------------------------------------------------
    def bad_record(self, day: int, good: Data, good_line: bytes) -> tuple[str, bytes]:
        """One bad line next to a good one: rejected by §8 (or an exact re-send), never accepted."""
        rng = self.rng
        kind = rng.choice(BAD_KINDS)
        if kind == "duplicate_conflict" and not self.conflict_pool:
            kind = "unknown_type"
        if kind == "duplicate":
            return "duplicate", good_line  # a producer retry: the very same bytes again
        customer = self.customers[int(good["customer_id"][1:]) - 1]
        time = good["time"]
        if kind == "duplicate_conflict":
            original = rng.choice(self.conflict_pool)
            data = dict(original["data"])
            if "amount" in data:  # a corrected amount, still well formed so only the id conflicts
                delta = rng.randint(1, 100) * 100
                data["amount"] += delta
                if "installments" in data:
                    *head, last = data["installments"]
                    data["installments"] = [*head, dict(last, amount=last["amount"] + delta)]
            else:
                data["outcome"] = "corrected: " + str(data.get("outcome"))
            envelope = dict(original, time=time, data=data)  # same id, other content
            return "bad:" + kind, self.encoder.encode(envelope)
        envelope = {"id": self.envelope_id(), "type": "sale.recorded", "source": customer.source, "time": time,
                    "customer_id": customer.customer_id, "data": self.bad_sale_data(day, customer)}
        if kind == "invalid_json":
            line = self.encoder.encode(envelope)
            return "bad:" + kind, line[: rng.randint(1, len(line) - 1)]  # a truncated record
        if kind == "invalid_envelope":
            del envelope[rng.choice(("id", "type", "time", "data"))]
        elif kind == "invalid_field":
            data = envelope["data"]
            variant = rng.randrange(3)
            if variant == 0:
                data["amount"] = f"{data['amount'] / 100:.2f}"  # amount as a decimal string
            elif variant == 1:
                data["amount"] = data["amount"] / 100  # amount as a float in major units
            else:
                current = self.start + timedelta(days=day)
                data["issued_on"] = current.strftime("%d/%m/%Y")  # not a strict date
        elif kind == "unknown_type":
            envelope["type"] = rng.choice(("invoice.created", "payment.recieved", "shipment.dispatched",
                                           "sale.Recorded"))
        elif kind == "invalid_amount":
            data = envelope["data"]
            if rng.random() < 0.5:
                data["amount"] = -data["amount"]
            else:  # installments that do not sum to the amount
                half = data["amount"] // 2
                data["installments"] = [{"due_on": self.iso(day + 30), "amount": half},
                                        {"due_on": self.iso(day + 60), "amount": half + 100}]
        elif kind == "unknown_customer":
            envelope["customer_id"] = f"C{self.customer_count + 1 + rng.randrange(9_000):0{self.id_width}d}"
        elif kind == "unknown_invoice":
            envelope["type"] = "credit_note.issued"
            envelope["data"] = {"credit_note_id": self.next_id("CN"),
                                "invoice_id": f"INV-{rng.randrange(10**8):08d}-X", "amount": rng.randint(1_000, 50_000),
                                "reason": rng.choice(_CREDIT_NOTE_REASONS)}
        elif kind == "currency_mismatch":
            other = rng.choice([c for c, _ in CURRENCIES if c != customer.currency])
            if rng.random() < 0.5:
                envelope["data"]["currency"] = other
            else:
                envelope.update(type="payment.received", source=BANK_SOURCE, data={
                    "payment_id": self.next_id("PAY"), "amount": envelope["data"]["amount"], "currency": other,
                    "received_on": self.iso(day)})
        return "bad:" + kind, self.encoder.encode(envelope)

    def bad_sale_data(self, day: int, customer: _Customer) -> dict[str, Any]:
        """A sale that would be valid, with fresh ids nothing else uses: each bad kind breaks one thing."""
        return {"invoice_id": self.next_id("INV"), "amount": self.amount(customer), "currency": customer.currency,
                "issued_on": self.iso(day), "salesperson": customer.salesperson}


def generate_labelled(customers: int, months: int, seed: int, start: date = date(2025, 1, 1),
                      bad_share: float = 0.01,
                      on_day: Callable[[int, int], None] | None = None) -> Iterator[tuple[str, bytes]]:
    """Like `generate`, with each line's label: its type, `bad:<reason code>`, or `duplicate`."""
    return _Generator(customers, months, seed, start, bad_share).run(on_day)


def generate(customers: int, months: int, seed: int, start: date = date(2025, 1, 1),
             bad_share: float = 0.01) -> Iterator[bytes]:
    """Stream the envelopes (one JSON line each, without the newline) of a company's AR history."""
    for _, line in generate_labelled(customers, months, seed, start, bad_share):
        yield line


def write_jsonl(path: str | Path, customers: int, months: int, seed: int, start: date = date(2025, 1, 1),
                bad_share: float = 0.01,
                on_day: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write the generated envelopes to `path`, one per line; return the counts."""
    by_type: dict[str, int] = {}
    bad: dict[str, int] = {}
    total = size = 0
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        with open(path, "wb", buffering=1 << 20) as out:
            for label, line in generate_labelled(customers, months, seed, start, bad_share, on_day):
                out.write(line)
                out.write(b"\n")
                total += 1
                size += len(line) + 1
                if label.startswith("bad:") or label == "duplicate":
                    key = label.removeprefix("bad:")
                    bad[key] = bad.get(key, 0) + 1
                else:
                    by_type[label] = by_type.get(label, 0) + 1
    finally:
        gc.set_threshold(*thresholds)
    return {"lines": total, "bytes": size, "good": total - sum(bad.values()),
            "by_type": dict(sorted(by_type.items())), "bad": dict(sorted(bad.items()))}
