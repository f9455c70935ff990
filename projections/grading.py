"""Behaviour grades A–D (docs/contract.md §8 "computed grades"): the recorded ones, and the same figures from the read model.

The ledger records each computed grade as a `credit_grade.computed` event (on a relevant fact when the
grade changed, and at every month end; `ledger.account.AccountState.grading_inputs`), folded into the
`computed_grades` table. `grades_report` reports the latest recorded grade as of a date as `computed_grade`
(`grade` stays the last assigned one); reported, never applied.

`computed_grades` computes the same inputs from the read model as of any date, independently of the
ledger's code — the alerts' daily "grade downgrade" check uses it, and the tests compare it with what the
ledger recorded. Over the window (as_of − window_days, as_of]:

- average_days_delinquent: amount-weighted days after the due date, over cash applied in the window
  (payments not reversed as of the date; applied on time counts 0 days), amounts written off in the window
  (days until the write-off: bad debt never "cures" lateness) and what is still open past due (as_of − due_on);
- utilisation_pct: exposure / credit limit × 100 as of the date (as `report balances`);
- broken_promises: promises whose date fell in the window and that were broken (no payment at all);
- disputes: disputes opened in the window;
- write_off_bp: written off in the window ÷ sales issued in the window, in basis points.

The score and the grade come from `ledger.policy.GradingPolicy` (weights and thresholds in the TOML config).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import duckdb

from ledger.policy import GRADING_INPUTS, PROMISE_BROKEN, GradingPolicy, average_days, basis_points, utilisation_pct
from projections.reports import OPEN_ITEMS_AS_OF, balances, format_known_at, latest_credit_value_sql, params
from projections.worklist import _rows, promises

BEHAVIOUR_SQL = f"""
    WITH settled AS (
        SELECT m.customer_id, sum(-m.amount)::BIGINT AS amount,
               sum(-m.amount * greatest(m.effective_on - i.due_on, 0))::BIGINT AS weighted
        FROM item_movements m JOIN items i USING (customer_id, invoice_id, installment)
        LEFT JOIN payments p ON p.customer_id = m.customer_id AND p.payment_id = m.source_id
        WHERE m.effective_on BETWEEN $window_start AND $as_of AND m.recorded_at <= $known_at
          AND ((m.kind = 'allocated' AND m.source_kind = 'payment'
                AND NOT coalesce(p.reversed_on <= $as_of AND p.reversed_recorded_at <= $known_at, false))
               OR m.kind = 'written_off')
        GROUP BY m.customer_id),
    open_items AS ({OPEN_ITEMS_AS_OF}),
    late_open AS (
        SELECT customer_id, sum(open_amount)::BIGINT AS amount,
               sum(open_amount * ($as_of - due_on))::BIGINT AS weighted
        FROM open_items WHERE due_on < $as_of GROUP BY customer_id),
    disputes AS (
        SELECT customer_id, count(*) AS disputes FROM dispute_events
        WHERE kind = 'opened' AND effective_on BETWEEN $window_start AND $as_of AND recorded_at <= $known_at
        GROUP BY customer_id),
    written_off AS (
        SELECT customer_id, sum(amount)::BIGINT AS written_off FROM write_offs
        WHERE written_off_on BETWEEN $window_start AND $as_of AND recorded_at <= $known_at GROUP BY customer_id),
    sales AS (
        SELECT customer_id, sum(amount)::BIGINT AS sales FROM invoices
        WHERE issued_on BETWEEN $window_start AND $as_of AND recorded_at <= $known_at GROUP BY customer_id),
    terms AS ({latest_credit_value_sql('payment_terms_days', 'value_int')})
    SELECT c.customer_id,
           coalesce(s.amount, 0) + coalesce(l.amount, 0) AS delinquency_base,
           coalesce(s.weighted, 0) + coalesce(l.weighted, 0) AS delinquency_weighted,
           coalesce(d.disputes, 0) AS disputes, coalesce(w.written_off, 0) AS written_off,
           coalesce(y.sales, 0) AS sales, t.value AS payment_terms_days
    FROM customers c
    LEFT JOIN settled s USING (customer_id) LEFT JOIN late_open l USING (customer_id)
    LEFT JOIN disputes d USING (customer_id) LEFT JOIN written_off w USING (customer_id)
    LEFT JOIN sales y USING (customer_id) LEFT JOIN terms t USING (customer_id)
    WHERE c.recorded_at <= $known_at"""


def window_start(policy: GradingPolicy, as_of: dt.date) -> dt.date:
    return as_of - dt.timedelta(days=policy.window_days - 1)


def computed_grades(connection: duckdb.DuckDBPyConnection, policy: GradingPolicy, as_of: dt.date,
                    known_at: dt.datetime | None = None) -> dict[str, dict[str, Any]]:
    """{customer_id: row} for every customer registered (and known) by then, ordered by customer id."""
    start = window_start(policy, as_of)
    query = {**params(as_of, known_at), "window_start": start}
    behaviour = {row["customer_id"]: row for row in _rows(connection, BEHAVIOUR_SQL, query)}
    broken: dict[str, int] = {}
    for promise in promises(connection, as_of, known_at):
        if promise.status == PROMISE_BROKEN and start <= promise.promised_on < as_of:
            broken[promise.customer_id] = broken.get(promise.customer_id, 0) + 1
    grades: dict[str, dict[str, Any]] = {}
    for row in balances(connection, as_of, known_at)["rows"]:
        customer_id = row["customer_id"]
        facts = behaviour[customer_id]
        inputs = {
            "average_days_delinquent": average_days(facts["delinquency_weighted"], facts["delinquency_base"]),
            "utilisation_pct": utilisation_pct(row["exposure"], row["credit_limit"]),
            "broken_promises": broken.get(customer_id, 0),
            "disputes": facts["disputes"],
            "write_off_bp": basis_points(facts["written_off"], facts["sales"]),
        }
        score = policy.score(inputs)
        suggested_limit, suggested_terms = policy.suggest(score.grade, row["credit_limit"])
        grades[customer_id] = {
            "customer_id": customer_id, "name": row["name"], "salesperson": row["salesperson"],
            "currency": row["currency"], "grade": row["grade"], "computed_grade": score.grade,
            "score": score.score, **inputs,
            **{f"penalty_{name}": round(value, 2) for name, value in score.penalties.items()},
            "credit_limit": row["credit_limit"], "suggested_credit_limit": suggested_limit,
            "payment_terms_days": facts["payment_terms_days"], "suggested_payment_terms_days": suggested_terms,
        }
    return grades


# The latest recorded grade of each customer as of the date (business date, then recorded order).
RECORDED_SQL = """
    SELECT * FROM computed_grades WHERE computed_on <= $as_of AND recorded_at <= $known_at
    QUALIFY row_number() OVER (PARTITION BY customer_id ORDER BY computed_on DESC, position DESC) = 1"""


def recorded_grades(connection: duckdb.DuckDBPyConnection, as_of: dt.date,
                    known_at: dt.datetime | None = None) -> dict[str, dict[str, Any]]:
    """{customer_id: the latest credit_grade.computed row with computed_on <= as_of, known at known_at}."""
    return {row["customer_id"]: row for row in _rows(connection, RECORDED_SQL, params(as_of, known_at))}


def grades_report(connection: duckdb.DuckDBPyConnection, policy: GradingPolicy, as_of: dt.date,
                  known_at: dt.datetime | None = None, salesperson: str | None = None) -> dict[str, Any]:
    """`arledger grades --format json`: one row per customer with the recorded computed grade as of the date,
    its inputs, the penalties they give under the current config, and the suggested limit and terms."""
    recorded = recorded_grades(connection, as_of, known_at)
    terms = {row["customer_id"]: row["value"]
             for row in _rows(connection, latest_credit_value_sql("payment_terms_days", "value_int"),
                              params(as_of, known_at))}
    rows = []
    for row in balances(connection, as_of, known_at)["rows"]:
        if salesperson is not None and row["salesperson"] != salesperson:
            continue
        customer_id = row["customer_id"]
        grade = recorded.get(customer_id)
        inputs = {name: grade[name] if grade else None for name in GRADING_INPUTS}
        if grade:
            penalties = policy.score(inputs).penalties
            suggested_limit, suggested_terms = policy.suggest(grade["grade"], row["credit_limit"])
        else:
            penalties, suggested_limit, suggested_terms = {}, None, None
        rows.append({
            "customer_id": customer_id, "name": row["name"], "salesperson": row["salesperson"],
            "currency": row["currency"], "grade": row["grade"],
            "computed_grade": grade["grade"] if grade else None,
            "computed_on": grade["computed_on"].isoformat() if grade else None,
            "trigger": grade["trigger"] if grade else None,
            "score": grade["score"] if grade else None, **inputs,
            **{f"penalty_{factor.name}": round(penalties[factor.name], 2) if grade else None
               for factor in policy.factors},
            "credit_limit": row["credit_limit"], "suggested_credit_limit": suggested_limit,
            "payment_terms_days": terms.get(customer_id), "suggested_payment_terms_days": suggested_terms,
        })
    return {"as_of": as_of.isoformat(), "known_at": format_known_at(known_at), "salesperson": salesperson,
            "window_start": window_start(policy, as_of).isoformat(), "rows": rows}
