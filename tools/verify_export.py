#!/usr/bin/env python3
"""Check an `arledger export` file without arledger: Python 3.9+ standard library only.

    python3 tools/verify_export.py FILE.jsonl [--anchor HASH] [--head HASH]

What it checks (the rules are docs/contract.md §4 and docs/decisions.md, restated here so
this file stands alone):

- canonical JSON = keys sorted, no whitespace, UTF-8, non-ASCII unescaped;
  chain_hash(prev, body) = sha256(prev_hex_ascii + canonical_json(body)), in hex;
- each record's customer hash: chain_hash(prev_hash_customer, {kind,
  customer_id, envelope_id, version, recorded_at, schema_version, data});
- each record's global hash: chain_hash(prev_hash_global, the record without
  prev_hash_global and hash_global);
- positions are consecutive, each prev_hash_global is the previous record's
  hash_global; the first record's prev_hash_global is the anchor (trusted, or
  compared with --anchor: a head you noted or a verify checkpoint);
- customer chains: where versions v and v+1 of a customer are both in the
  file, v+1's prev_hash_customer is v's hash_customer; version 1 links to 64 zeros.

A Parquet export is read with duckdb or pyarrow when one is installed; export
as JSONL for a check with nothing but the standard library.
Exit status: 0 verified, 1 a check failed, 2 the file could not be read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys

GENESIS_HASH = "0" * 64
GLOBAL_HASH_FIELDS = ("prev_hash_global", "hash_global")
_SCIENTIFIC = re.compile(r"^(-?)(\d)(?:\.(\d+))?e([+-])(\d+)$")


def _float_text(value: float) -> str:
    """A float as the ledger's encoder writes it: Python's shortest repr, exponent without '+' or leading
    zeros, and plain decimals for exponent -5 (as msgspec does)."""
    text = repr(value)
    match = _SCIENTIFIC.match(text)
    if not match:
        return text
    sign, first, rest, exponent_sign, exponent = match.groups()
    exponent_value = int(exponent)
    if exponent_sign == "-" and exponent_value == 5:
        return f"{sign}0.0000{first}{rest or ''}"
    return f"{sign}{first}{'.' + rest if rest else ''}e{'-' if exponent_sign == '-' else ''}{exponent_value}"


def _encode(value: object) -> str:
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ",".join(json.dumps(key, ensure_ascii=False) + ":" + _encode(item) for key, item in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_encode(item) for item in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def canonical_json(value: object) -> bytes:
    return _encode(value).encode("utf-8")


def chain_hash(prev_hash: str, body: object) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_json(body)).hexdigest()


def customer_hash(record: dict) -> str:
    body = {name: record[name] for name in ("kind", "customer_id", "envelope_id", "version", "recorded_at",
                                            "schema_version", "data")}
    return chain_hash(record["prev_hash_customer"], body)


def global_hash(record: dict) -> str:
    body = {name: value for name, value in record.items() if name not in GLOBAL_HASH_FIELDS}
    return chain_hash(record["prev_hash_global"], body)


def read_records(path: str) -> list[dict]:
    if path.endswith(".parquet"):
        return _read_parquet(path)
    records = []
    with open(path, "rb") as file:
        for line_number, line in enumerate(file, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as error:
                    raise ValueError(f"line {line_number} is not JSON: {error}") from None
    return records


def _read_parquet(path: str) -> list[dict]:
    try:
        import duckdb  # type: ignore[import-not-found]

        connection = duckdb.connect()
        cursor = connection.execute("SELECT * FROM read_parquet(?) ORDER BY position", [path])
        names = [column[0] for column in cursor.description]
        rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    except ImportError:
        try:
            import pyarrow.parquet as pq  # type: ignore[import-not-found]
        except ImportError:
            raise ValueError("reading Parquet needs duckdb or pyarrow; export as JSONL to check with the "
                             "standard library alone") from None
        rows = pq.read_table(path).to_pylist()
    for row in rows:
        if isinstance(row.get("data"), str):
            row["data"] = json.loads(row["data"])
    return rows


def verify(records: list[dict], anchor: str | None = None, head: str | None = None) -> list[str]:
    """Every problem found, first bad record first (empty: verified)."""
    problems: list[str] = []
    if not records:
        return ["the export holds no record"]
    records = sorted(records, key=lambda record: record.get("position", 0))
    first = records[0]
    if anchor is not None and first.get("prev_hash_global") != anchor:
        problems.append(f"position {first.get('position')}: prev_hash_global {first.get('prev_hash_global')} is "
                        f"not the trusted anchor {anchor}")
    previous: dict | None = None
    heads: dict[str, tuple[int, str]] = {}
    for record in records:
        where = f"position {record.get('position')} (customer {record.get('customer_id')} version " \
                f"{record.get('version')})"
        try:
            if previous is not None:
                if record["position"] != previous["position"] + 1:
                    problems.append(f"{where}: follows position {previous['position']}: "
                                    f"{'a gap' if record['position'] > previous['position'] else 'a repeat'}")
                elif record["prev_hash_global"] != previous["hash_global"]:
                    problems.append(f"{where}: prev_hash_global does not link to position {previous['position']}")
            if global_hash(record) != record["hash_global"]:
                problems.append(f"{where}: the record does not match its hash_global (altered)")
            if customer_hash(record) != record["hash_customer"]:
                problems.append(f"{where}: the event does not match its hash_customer (altered)")
            customer, version = record["customer_id"], record["version"]
            if version == 1 and record["prev_hash_customer"] != GENESIS_HASH:
                problems.append(f"{where}: version 1 must link to the genesis hash")
            known = heads.get(customer)
            if known is not None and known[0] + 1 == version and record["prev_hash_customer"] != known[1]:
                problems.append(f"{where}: prev_hash_customer does not link to version {known[0]}")
            heads[customer] = (version, record["hash_customer"])
        except (KeyError, TypeError) as error:
            problems.append(f"{where}: not a ledger record ({type(error).__name__}: {error})")
        previous = record
    if head is not None and records[-1].get("hash_global") != head:
        problems.append(f"position {records[-1].get('position')}: hash_global {records[-1].get('hash_global')} is "
                        f"not the expected head {head}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check the hash chains of an arledger export (stdlib only).")
    parser.add_argument("file", help="an 'arledger export' file (.jsonl, or .parquet with duckdb/pyarrow)")
    parser.add_argument("--anchor", help="trusted prev_hash_global of the first record (64 hex digits)")
    parser.add_argument("--head", help="expected hash_global of the last record (64 hex digits)")
    parser.add_argument("--quiet", action="store_true", help="print only problems")
    args = parser.parse_args(argv)
    try:
        records = read_records(args.file)
    except (OSError, ValueError) as error:
        print(f"verify_export: cannot read {args.file}: {error}", file=sys.stderr)
        return 2
    problems = verify(records, args.anchor, args.head)
    if problems:
        print(f"FAILED: {len(problems)} problem(s); first: {problems[0]}")
        for problem in problems[1:20]:
            print(f"  {problem}")
        return 1
    if not args.quiet:
        ordered = sorted(records, key=lambda record: record["position"])
        customers = len({record["customer_id"] for record in records})
        print(f"VERIFIED: {len(records)} records, positions {ordered[0]['position']}..{ordered[-1]['position']}, "
              f"{customers} customers")
        print(f"anchor {ordered[0]['prev_hash_global']}")
        print(f"head   {ordered[-1]['hash_global']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
