"""The OpenAPI 3.1 document of the HTTP API, served at /api/openapi.json."""

from __future__ import annotations

from typing import Any

from arledger.web import data, envelopes

PROBLEM = {"type": "object", "properties": {"error": {"type": "string", "description": "machine-readable reason"},
                                            "message": {"type": "string"}}, "required": ["error", "message"]}
OUTCOME = {"type": "object", "properties": {
    "id": {"type": "string"}, "customer_id": {"type": "string"}, "type": {"type": "string"},
    "status": {"enum": ["pending", "accepted", "rejected", "duplicate"]},
    "reason": {"type": ["string", "null"], "description": "the ar.rejected reason code when rejected"},
    "message": {"type": ["string", "null"]}, "partition": {"type": "integer"}, "offset": {"type": "integer"},
    "ledger_events": {"type": "array", "items": {"type": "string"}},
    "visible": {"type": ["boolean", "null"], "description": "accepted and shown by the published read model"}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "bad parameter or body", 401: "no or bad credentials", 403: "the role lacks the right",
            404: "unknown customer, report or envelope", 413: "body or batch too large",
            415: "unsupported content type", 422: "envelopes refused by the inbound contract (nothing sent)",
            503: "no read model published yet, or Kafka unreachable"}
    return {str(code): {"description": text[code],
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            for code in codes}


def _query(name: str, description: str, *, required: bool = False, schema: dict | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema or {"type": "string"}}


def document() -> dict[str, Any]:
    from ledger.contract import json_schema

    report_names = list(data.REPORT_PARAMETERS)
    parameters = sorted({p for params in data.REPORT_PARAMETERS.values() for p in params})
    return {
        "openapi": "3.1.0",
        "info": {"title": "arledger HTTP API", "version": "1",
                 "description": "Publish inbound envelopes to ar.inbound (also CloudEvents 1.0 JSON), check credit, "
                                "read every report. Amounts are integers in minor units. Authenticate with "
                                "`Authorization: Bearer <token>` (`arledger token create`)."},
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Problem": PROBLEM, "Outcome": OUTCOME, "Envelope": json_schema()},
        },
        "paths": {
            "/api/envelopes": {"post": {
                "summary": "Publish one envelope or a batch to ar.inbound; optionally wait for each outcome",
                "description": f"A JSON object, or an array of at most {envelopes.BATCH_ENVELOPES_MAX}. CloudEvents "
                               "1.0 JSON (specversion 1.0) is mapped onto the envelope: id, type, source, time, "
                               "subject = customer_id, data. Each envelope is checked against the inbound contract "
                               "first; if any fails, nothing is sent (422 lists them). The role must hold the "
                               "right for every type: collector (collection.action, promise.made), controller "
                               "(limits, holds, terms, grades, order.released), admin (everything else).",
                "parameters": [_query("wait", "true: answer when every envelope has an outcome (or at the timeout)",
                                      schema={"type": "boolean"}),
                               _query("timeout", "seconds to wait at most (default 30, max 120)",
                                      schema={"type": "number"})],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"oneOf": [{"$ref": "#/components/schemas/Envelope"},
                                                              {"type": "array", "items": {
                                                                  "$ref": "#/components/schemas/Envelope"}}]}},
                    "application/cloudevents+json": {"schema": {"type": "object"}},
                    "application/cloudevents-batch+json": {"schema": {"type": "array"}}}},
                "responses": {
                    "200": {"description": "every outcome known (wait=true)", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Outcome"}}}},
                    "202": {"description": "sent; outcomes pending", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Outcome"}}}},
                    **_errors(400, 401, 403, 413, 415, 422, 503)}}},
            "/api/envelopes/{id}": {"get": {
                "summary": "The outcome of an envelope this server sent",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "its outcome", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Outcome"}}}}, **_errors(401, 404, 503)}}},
            "/api/credit-check": {"get": {
                "summary": "The decision an order of `amount` would get (from the read model; the authoritative "
                           "decision is the one on ar.decisions)",
                "parameters": [_query("customer", "customer id", required=True),
                               _query("amount", "minor units, > 0", required=True, schema={"type": "integer"}),
                               _query("as_of", "business date (default today)"),
                               _query("known_at", "ISO-8601 instant or date")],
                "responses": {"200": {"description": "decision with its figures"}, **_errors(400, 401, 404, 503)}}},
            "/api/reports": {"get": {"summary": "The reports and their parameters",
                                     "responses": {"200": {"description": "list"}, **_errors(401)}}},
            "/api/reports/{name}": {"get": {
                "summary": "A report, as `arledger report NAME` gives it (JSON), or its rows as CSV or Parquet",
                "parameters": [{"name": "name", "in": "path", "required": True,
                                "schema": {"enum": report_names}},
                               _query("format", "json (default), csv or parquet",
                                      schema={"enum": ["json", "csv", "parquet"]}),
                               _query("as_of", "business date YYYY-MM-DD (default today, UTC)"),
                               _query("known_at", "what the ledger had recorded by this instant"),
                               *[_query(p, "as the CLI option of the same name") for p in parameters]],
                "responses": {"200": {"description": "the report"}, **_errors(400, 401, 404, 503)}}},
            "/api/me": {"get": {"summary": "Who the credentials belong to and their rights",
                                "responses": {"200": {"description": "principal"}, **_errors(401)}}},
            "/api/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}},
        },
    }
