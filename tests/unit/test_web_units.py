"""The web workspace's pure parts: users, tokens and roles; API bodies and CloudEvents; money input; SVG charts."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from arledger.web import auth, envelopes, svg
from arledger.web.app import parse_money
from arledger.web.data import BadParameter


def test_passwords_are_stored_as_salted_scrypt_hashes(tmp_path: Path) -> None:
    store = auth.UserStore(tmp_path / "users.sqlite")
    store.add_user("alice", "collector", "long enough secret")
    store.add_user("bob", "viewer", "long enough secret")
    assert store.authenticate("alice", "long enough secret") == auth.Principal("alice", "collector", "user")
    assert store.authenticate("alice", "wrong password") is None
    assert store.authenticate("nobody", "long enough secret") is None
    raw = (tmp_path / "users.sqlite").read_bytes()
    assert b"long enough secret" not in raw
    hashes = [line for line in raw.split(b"scrypt$")[1:]]
    assert len(hashes) == 2 and hashes[0][:60] != hashes[1][:60]  # salted: the same password hashes differently
    assert oct((tmp_path / "users.sqlite").stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("name, role, password, message", [
    ("alice", "king", "long enough", "unknown role"),
    ("alice", "viewer", "short", "at least 8"),
    ("bad name!", "viewer", "long enough", "bad user name"),
])
def test_bad_users_are_refused_with_the_reason(tmp_path: Path, name: str, role: str, password: str,
                                               message: str) -> None:
    with pytest.raises(auth.AuthError, match=message):
        auth.UserStore(tmp_path / "users.sqlite").add_user(name, role, password)


def test_a_user_exists_once_unless_replaced(tmp_path: Path) -> None:
    store = auth.UserStore(tmp_path / "users.sqlite")
    store.add_user("alice", "viewer", "long enough secret")
    with pytest.raises(auth.AuthError, match="exists"):
        store.add_user("alice", "admin", "another secret")
    store.add_user("alice", "admin", "another secret", replace=True)
    assert store.user("alice").role == "admin"
    assert store.remove_user("alice") and store.user("alice") is None


def test_tokens_are_shown_once_stored_hashed_and_revocable(tmp_path: Path) -> None:
    store = auth.UserStore(tmp_path / "users.sqlite")
    token = store.create_token("erp", "admin")
    assert store.token(token) == auth.Principal("token:erp", "admin", "token")
    assert token.encode() not in (tmp_path / "users.sqlite").read_bytes()
    assert store.token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.token("arl_") is None and store.token("nonsense") is None
    token_id = store.tokens()[0]["token_id"]
    assert store.revoke_token(token_id) and store.token(token) is None
    assert not store.revoke_token(token_id)


def test_roles_are_ordered_and_each_type_needs_its_right() -> None:
    viewer, collector, controller, admin = (auth.Principal("x", role, "user") for role in auth.ROLES)
    assert [viewer.can(r) for r in auth.RIGHTS] == [True, False, False, False]
    assert [collector.can(r) for r in auth.RIGHTS] == [True, True, False, False]
    assert [controller.can(r) for r in auth.RIGHTS] == [True, True, True, False]
    assert all(admin.can(r) for r in auth.RIGHTS)
    assert auth.right_for_type("promise.made") == "collect"
    assert auth.right_for_type("order.released") == "control"
    assert auth.right_for_type("sale.recorded") == "admin"


def test_demo_users_get_fresh_passwords_saved_for_the_reader(tmp_path: Path) -> None:
    first = auth.seed_demo_users(tmp_path)
    second = auth.seed_demo_users(tmp_path)
    assert {name: role for name, (role, _) in first.items()} == dict(auth.DEMO_USERS)
    assert first["demo-admin"][1] != second["demo-admin"][1]
    store = auth.UserStore(tmp_path / "web-users.sqlite")
    assert store.authenticate("demo-collector", second["demo-collector"][1]).role == "collector"
    assert second["demo-viewer"][1] in (tmp_path / "demo" / "web-users.txt").read_text()


def test_a_cloudevent_maps_onto_the_envelope() -> None:
    event = {"specversion": "1.0", "id": "e1", "type": "collection.action", "source": "crm", "subject": "C1",
             "time": "2026-06-01T10:00:00Z", "data": {"action": "call"}, "datacontenttype": "application/json"}
    items, batch = envelopes.parse_body(json.dumps(event).encode(), "application/cloudevents+json")
    assert not batch
    assert items == [{"id": "e1", "type": "collection.action", "source": "crm", "time": "2026-06-01T10:00:00Z",
                      "customer_id": "C1", "data": {"action": "call"}}]
    assert envelopes.check(0, items[0]).reason is None
    with pytest.raises(envelopes.BadBody, match="datacontenttype"):
        envelopes.parse_body(json.dumps({**event, "datacontenttype": "text/xml"}).encode(), "application/json")


def test_the_ledgers_contract_names_what_is_wrong() -> None:
    good = {"id": "x", "type": "promise.made", "time": "2026-01-01T00:00:00Z", "customer_id": "C1",
            "data": {"promise_id": "P", "amount": 100, "promised_on": "2026-02-01"}}
    assert envelopes.check(0, good).line is not None
    wrong = envelopes.check(3, {**good, "data": {**good["data"], "amount": 1.5}})
    assert (wrong.index, wrong.reason) == (3, "invalid_field")
    assert envelopes.check(0, {**good, "data": {**good["data"], "amount": -1}}).reason == "invalid_amount"
    assert envelopes.check(0, {**good, "type": "nope"}).reason == "unknown_type"
    assert envelopes.check(0, {k: v for k, v in good.items() if k != "time"}).reason == "invalid_envelope"


@pytest.mark.parametrize("text, minor", [("1234.56", 123456), ("1,234.5", 123450), ("7", 700), ("0.01", 1)])
def test_money_typed_in_a_form_becomes_minor_units(text: str, minor: int) -> None:
    assert parse_money(text, "amount") == minor


@pytest.mark.parametrize("text", ["12.345", "abc", "", "NaN", "Infinity", "1e400"])
def test_money_that_is_not_an_amount_is_refused(text: str) -> None:
    with pytest.raises(BadParameter):
        parse_money(text, "amount")


def test_charts_are_well_formed_svg_with_escaped_labels() -> None:
    for chart in (svg.bars(["current", "<1-30>"], [100, 250], "AR & more"),
                  svg.lines(["2026-01", "2026-02", "2026-03"], {"DSO": [30.0, None, 42.5], "CEI": [None, None, None]},
                            "trend"),
                  svg.usage_bars([("C1", 900, 1000), ("C2", 1500, 1000)], "exposure"),
                  svg.bars([], [], "empty"), svg.lines([], {}, "empty")):
        root = ET.fromstring(chart)
        assert root.tag.endswith("svg")
