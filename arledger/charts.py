"""Charts of the demo report: PNG files (matplotlib, headless) and one self-contained HTML page.

Every function takes plain data (dates, integers in minor units, floats for
ratios) and returns PNG bytes, so charts never touch DuckDB or Kafka. Amounts
are drawn in major units; currencies are never added together: a chart is
either per currency or names its one currency.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

# Colours per aging bucket, from calm (not yet due) to alarming (90+ days past due).
BUCKET_COLOURS = ("#4c9f70", "#c9d86b", "#f2b134", "#ea7a38", "#c8372d", "#7d1d3f", "#3f0d1f")
FIGURE_DPI = 110
MINOR_PER_MAJOR = 100  # every currency arledger generates has two decimals


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed), imported only when a chart is drawn."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


def _thousands(value: float, _position: int = 0) -> str:
    return f"{value:,.0f}"


def aging_over_time(months: Sequence[dt.date], totals_by_currency: Mapping[str, Sequence[Mapping[str, int]]],
                    buckets: Sequence[str]) -> bytes:
    """Stacked bars: AR by aging bucket at each month end, one panel per currency."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    currencies = list(totals_by_currency) or ["—"]
    figure, axes = plt.subplots(len(currencies), 1, figsize=(10, 3.2 * len(currencies)), squeeze=False)
    labels = [month.strftime("%b %y") for month in months]
    for axis, currency in zip(axes[:, 0], currencies):
        series = totals_by_currency.get(currency, [])
        bottom = [0.0] * len(months)
        for index, bucket in enumerate(buckets):
            values = [row.get(bucket, 0) / MINOR_PER_MAJOR for row in series] or [0.0] * len(months)
            axis.bar(labels, values, bottom=bottom, label=bucket, color=BUCKET_COLOURS[index % len(BUCKET_COLOURS)],
                     width=0.75)
            bottom = [b + v for b, v in zip(bottom, values)]
        axis.margins(y=0.08)
        axis.set_title(f"Open receivables by days past due, at each month end ({currency})", fontsize=10)
        axis.yaxis.set_major_formatter(FuncFormatter(_thousands))
        axis.set_ylabel(currency)
        axis.grid(axis="y", alpha=0.3)
        axis.tick_params(axis="x", labelsize=8)
    axes[0, 0].legend(title="bucket", fontsize=8, loc="upper left", ncols=len(buckets))
    figure.tight_layout()
    return _png(figure)


def kpi_trend(months: Sequence[dt.date], series: Mapping[str, Sequence[float | None]], currency: str) -> bytes:
    """Lines per month: DSO, countback DSO and best-possible DSO (days) above, CEI (%) below."""
    plt = _pyplot()
    figure, (days_axis, percent_axis) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    labels = [month.strftime("%b %y") for month in months]
    for name, style, label in (("dso", "-o", "DSO"), ("countback_dso", "--s", "countback DSO"),
                               ("best_possible_dso", ":^", "best-possible DSO")):
        if name in series:
            days_axis.plot(labels, _gaps(series[name]), style, label=label)
    days_axis.set_ylabel("days")
    days_axis.set_title(f"Days sales outstanding per month ({currency})", fontsize=10)
    days_axis.legend(fontsize=8)
    days_axis.grid(alpha=0.3)
    for name, style, label in (("cei", "-o", "CEI"), ("collection_rate", "--s", "collection rate")):
        if name in series:
            percent_axis.plot(labels, _gaps(series[name]), style, label=label)
    percent_axis.set_ylabel("%")
    percent_axis.set_title(f"Collection effectiveness per month ({currency})", fontsize=10)
    percent_axis.legend(fontsize=8)
    percent_axis.grid(alpha=0.3)
    percent_axis.tick_params(axis="x", labelsize=8)
    figure.tight_layout()
    return _png(figure)


def overdue_share_trend(months: Sequence[dt.date], shares: Mapping[str, Sequence[float | None]]) -> bytes:
    """Lines per currency: share of open AR that is past due at each month end (when no KPI module exists)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(10, 3.5))
    labels = [month.strftime("%b %y") for month in months]
    for currency, values in shares.items():
        axis.plot(labels, _gaps(values), "-o", label=currency)
    axis.set_ylabel("% of open AR past due")
    axis.set_title("Overdue share at each month end", fontsize=10)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return _png(figure)


def exposure_vs_limit(rows: Sequence[Mapping[str, Any]], currency: str) -> bytes:
    """Horizontal bars per customer, largest first: exposure (red when over) against its credit limit (a tick)."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    rows = list(rows)[::-1]  # largest at the top
    figure, axis = plt.subplots(figsize=(10, 0.38 * max(len(rows), 3) + 1.2))
    names = [f"{row['customer_id']} {str(row.get('name') or '')[:22]}" for row in rows]
    exposures = [row["exposure"] / MINOR_PER_MAJOR for row in rows]
    limits = [row["credit_limit"] / MINOR_PER_MAJOR for row in rows]
    colours = ["#c8372d" if row["exposure"] > row["credit_limit"] else "#4c78a8" for row in rows]
    axis.barh(names, exposures, color=colours, height=0.6, label="exposure")
    axis.scatter(limits, names, marker="|", s=400, color="black", linewidths=2, label="credit limit", zorder=3)
    axis.xaxis.set_major_formatter(FuncFormatter(_thousands))
    axis.set_xlabel(currency)
    axis.set_title(f"Exposure vs credit limit, largest exposures ({currency}; red = over the limit)", fontsize=10)
    axis.legend(fontsize=8, loc="lower right")
    axis.grid(axis="x", alpha=0.3)
    axis.tick_params(axis="y", labelsize=8)
    figure.tight_layout()
    return _png(figure)


def _gaps(values: Sequence[float | None]) -> list[float]:
    """None (a ratio with a zero denominator) becomes a gap in the line."""
    return [float("nan") if value is None else value for value in values]


# -- HTML -------------------------------------------------------------------------------------


def html_report(title: str, intro: str, sections: Sequence[tuple[str, str]]) -> str:
    """One self-contained page (inline CSS, images as data: URIs); `sections` = (heading, inner HTML)."""
    body = "\n".join(f"<section><h2>{html.escape(heading)}</h2>\n{inner}</section>" for heading, inner in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.6rem; }} h2 {{ font-size: 1.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }}
table {{ border-collapse: collapse; font-size: .85rem; margin: .5rem 0 1rem; }}
th, td {{ padding: .2rem .6rem; border-bottom: 1px solid #eee; }}
th {{ background: #f4f4f4; text-align: left; }} td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
tr.total td {{ font-weight: bold; }} img {{ max-width: 100%; }} .note {{ color: #666; font-size: .85rem; }}
code {{ background: #f4f4f4; padding: 0 .2rem; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{intro}</p>
{body}
</body></html>
"""


def html_image(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def html_table(rows: Sequence[Mapping[str, Any]], money_columns: set[str] = frozenset(),
               total_rows: Sequence[Mapping[str, Any]] = ()) -> str:
    """An HTML table of flat rows; money columns in major units with thousands separators."""
    from arledger.output import money

    if not rows and not total_rows:
        return '<p class="note">(none)</p>'
    columns = list((rows or total_rows)[0])
    head = "".join(f"<th>{html.escape(column)}</th>" for column in columns)
    lines = []
    for row, css in [*((row, "") for row in rows), *((row, "total") for row in total_rows)]:
        cells = []
        for column in columns:
            value = row.get(column)
            if column in money_columns:
                cells.append(f'<td class="num">{html.escape(money(value))}</td>')
            elif isinstance(value, float):
                cells.append(f'<td class="num">{value:,.1f}</td>')
            elif isinstance(value, int) and not isinstance(value, bool):
                cells.append(f'<td class="num">{value:,}</td>')
            else:
                cells.append(f"<td>{html.escape('' if value is None else str(value))}</td>")
        lines.append(f'<tr class="{css}">{"".join(cells)}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"
