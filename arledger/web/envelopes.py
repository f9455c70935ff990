"""Inbound bodies of the HTTP API: one envelope, a batch, or CloudEvents 1.0 JSON mapped onto the envelope.

Each envelope is checked here with the ledger's own inbound contract
(`ledger.contract.decode`), so a malformed one is answered at once with a 4xx
and the ledger's reason code instead of travelling to ar.rejected; what only
the ledger's state can tell (unknown customer, unknown invoice...) is its
outcome after ingest.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

from ledger import contract
from ledger.errors import Rejection

BATCH_ENVELOPES_MAX = 1_000  # one request is one produce batch; a bigger feed is several requests (or Kafka)
BODY_BYTES_MAX = 4 * 1024 * 1024  # 1,000 envelopes of ~4 KiB each
CLOUDEVENTS_SPEC = "1.0"
_encoder = msgspec.json.Encoder()


class BadBody(ValueError):
    """The request body as a whole is unusable (not JSON, wrong shape, too big): answered with a 4xx."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass(frozen=True)
class Checked:
    """One envelope of a request: its bytes ready for ar.inbound, or why it was refused at the door."""

    index: int
    envelope: dict[str, Any] | None
    line: bytes | None
    reason: str | None = None
    message: str | None = None


def from_cloudevent(event: dict[str, Any]) -> dict[str, Any]:
    """CloudEvents 1.0 (JSON format) → envelope: id, type, source, time, subject = customer id, data."""
    if event.get("specversion") != CLOUDEVENTS_SPEC:
        raise ValueError(f"specversion must be {CLOUDEVENTS_SPEC!r}, got {event.get('specversion')!r}")
    content_type = event.get("datacontenttype")
    if content_type is not None and not str(content_type).startswith("application/json"):
        raise ValueError(f"datacontenttype must be application/json, got {content_type!r}")
    envelope = {"id": event.get("id"), "type": event.get("type"), "source": event.get("source"),
                "time": event.get("time"), "customer_id": event.get("subject"), "data": event.get("data")}
    return envelope


def parse_body(body: bytes, content_type: str) -> tuple[list[dict[str, Any]], bool]:
    """The envelopes of a request body (objects not yet checked) and whether it was a batch."""
    if len(body) > BODY_BYTES_MAX:
        raise BadBody(413, "body_too_large", f"the body has {len(body)} bytes; at most {BODY_BYTES_MAX}")
    try:
        value = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        raise BadBody(400, "invalid_json", f"the body is not JSON: {error}") from None
    batch = isinstance(value, list)
    items = value if batch else [value]
    if batch and not items:
        raise BadBody(422, "empty_batch", "the batch is empty")
    if len(items) > BATCH_ENVELOPES_MAX:
        raise BadBody(413, "batch_too_large",
                      f"the batch has {len(items)} envelopes; at most {BATCH_ENVELOPES_MAX} per request")
    if not all(isinstance(item, dict) for item in items):
        raise BadBody(422, "invalid_envelope", "each envelope must be a JSON object")
    cloud = content_type.startswith("application/cloudevents") or any("specversion" in item for item in items)
    if cloud:
        try:
            items = [from_cloudevent(item) for item in items]
        except ValueError as error:
            raise BadBody(422, "invalid_envelope", f"CloudEvents: {error}") from None
    return items, batch


def check(index: int, envelope: dict[str, Any]) -> Checked:
    """The ledger's own shape and data checks (§8); the reason code is the one ar.rejected would carry."""
    line = _encoder.encode(envelope)
    try:
        contract.decode(line)
    except Rejection as rejection:
        return Checked(index, envelope, None, rejection.code, str(rejection))
    return Checked(index, envelope, line)


def new_envelope(type_: str, customer_id: str, data: dict[str, Any], *, source: str,
                 business_date: dt.date | None = None) -> dict[str, Any]:
    """An envelope for a workspace action: a fresh id, now (or noon of `business_date`) as its time."""
    now = dt.datetime.now(dt.UTC)
    if business_date is not None and business_date != now.date():
        now = dt.datetime.combine(business_date, dt.time(12), dt.UTC)
    return {"id": f"web-{uuid.uuid4().hex}", "type": type_, "source": source,
            "time": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "customer_id": customer_id,
            "data": {key: value for key, value in data.items() if value is not None}}
