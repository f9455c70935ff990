"""A read-only SQL endpoint speaking the PostgreSQL wire protocol (v3) over the published read model.

`psql`, BI tools and PostgreSQL drivers connect to it; every statement runs in
DuckDB on the latest published snapshot (opened per statement, read-only, with
external access disabled and the configuration locked), so:

- read-only is enforced by DuckDB itself (a read-only database: INSERT, UPDATE,
  DELETE, CREATE, ATTACH and COPY ... TO fail), not by inspecting the SQL;
- no file outside the snapshot can be read or written (enable_external_access
  = false, lock_configuration = true);
- a session never pins a snapshot generation: each statement sees the latest one.

Authentication: one user (default `arledger`) and a password read from a file,
MD5 challenge (the password never crosses the wire in clear). Protocol: the
simple query protocol (psql) and the extended one (Parse/Bind/Describe/Execute/
Sync, text format), enough for drivers; SSL is declined (bind to localhost, or
put a TLS proxy in front). Results are sent in text format with PostgreSQL type
OIDs for DuckDB's types. SQL dialect: DuckDB's (it has pg_catalog views).
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import hmac
import os
import re
import secrets
import socketserver
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import structlog

log = structlog.get_logger("arledger.pgwire")

PROTOCOL_V3 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
MESSAGE_BYTES_MAX = 64 * 1024 * 1024

# DuckDB type name → PostgreSQL type OID; lists, structs, maps and anything else are sent as text.
TYPE_OIDS = {"BOOLEAN": 16, "BIGINT": 20, "UBIGINT": 1700, "HUGEINT": 1700, "UHUGEINT": 1700, "INTEGER": 23,
             "UINTEGER": 20, "SMALLINT": 21, "USMALLINT": 23, "TINYINT": 21, "UTINYINT": 21, "DOUBLE": 701,
             "FLOAT": 700, "DECIMAL": 1700, "DATE": 1082, "TIMESTAMP WITH TIME ZONE": 1184, "TIMESTAMP": 1114,
             "TIME": 1083, "INTERVAL": 1186, "UUID": 2950, "JSON": 114, "BLOB": 17, "VARCHAR": 25}
TEXT_OID = 25


def type_oid(duckdb_type: str) -> int:
    name = str(duckdb_type).upper()
    if name.endswith("]") or "(" in name and not name.startswith("DECIMAL("):
        return TEXT_OID
    return TYPE_OIDS.get(name.split("(")[0], TEXT_OID)


def text_value(value: Any) -> bytes | None:
    """A value in PostgreSQL's text format."""
    if value is None:
        return None
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, dt.datetime):
        text = value.isoformat(sep=" ")
        return (text[:-6] + text[-6:].replace(":00", "") if value.tzinfo else text).encode()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat().encode()
    if isinstance(value, bytes):
        return b"\\x" + value.hex().encode()
    if isinstance(value, float):
        return repr(value).encode()
    if isinstance(value, decimal.Decimal):
        return format(value, "f").encode()
    return str(value).encode()


def md5_password(password: str, user: str, salt: bytes) -> str:
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


def _message(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(payload) + 4) + payload


def _cstring(text: str) -> bytes:
    return text.encode() + b"\0"


class ProtocolError(Exception):
    pass


class Session(socketserver.BaseRequestHandler):
    """One client connection."""

    server: "PgServer"

    def handle(self) -> None:
        self.sock = self.request
        self.out: list[bytes] = []
        self.statements: dict[str, str] = {}
        self.portals: dict[str, tuple[str, list[Any], Any]] = {}
        self.failed_until_sync = False
        try:
            if not self._startup():
                return
            while True:
                kind = self._read_exactly(1)
                (length,) = struct.unpack("!i", self._read_exactly(4))
                if length < 4 or length > MESSAGE_BYTES_MAX:
                    raise ProtocolError(f"bad message length {length}")
                body = self._read_exactly(length - 4)
                if kind == b"X":
                    return
                self._dispatch(kind, body)
        except (ConnectionError, ProtocolError, OSError) as error:
            log.debug("pgwire_session_closed", reason=str(error))

    # -- I/O ------------------------------------------------------------------------------------

    def _read_exactly(self, count: int) -> bytes:
        chunks, remaining = [], count
        while remaining:
            chunk = self.sock.recv(remaining)
            if not chunk:
                raise ConnectionError("client went away")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _send(self, kind: bytes, payload: bytes = b"") -> None:
        self.out.append(_message(kind, payload))

    def _flush(self) -> None:
        if self.out:
            self.sock.sendall(b"".join(self.out))
            self.out = []

    def _error(self, message: str, code: str = "XX000", severity: str = "ERROR") -> None:
        fields = b"S" + _cstring(severity) + b"V" + _cstring(severity) + b"C" + _cstring(code) + \
            b"M" + _cstring(message) + b"\0"
        self._send(b"E", fields)

    def _ready(self) -> None:
        self._send(b"Z", b"I")
        self._flush()

    # -- start-up and authentication -------------------------------------------------------------

    def _startup(self) -> bool:
        while True:
            (length,) = struct.unpack("!i", self._read_exactly(4))
            if length < 8 or length > 10_000:
                raise ProtocolError("bad start-up length")
            body = self._read_exactly(length - 4)
            (code,) = struct.unpack("!i", body[:4])
            if code in (SSL_REQUEST, GSSENC_REQUEST):
                self.sock.sendall(b"N")  # no TLS here: the client may continue in clear or give up
                continue
            if code == CANCEL_REQUEST:
                return False
            if code != PROTOCOL_V3:
                self._error(f"unsupported protocol version {code >> 16}.{code & 0xFFFF}", "0A000", "FATAL")
                self._flush()
                return False
            break
        parts = body[4:].split(b"\0")
        params = {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts) - 1, 2) if parts[i]}
        user = params.get("user", "")
        salt = secrets.token_bytes(4)
        self._send(b"R", struct.pack("!i", 5) + salt)  # AuthenticationMD5Password
        self._flush()
        kind = self._read_exactly(1)
        (length,) = struct.unpack("!i", self._read_exactly(4))
        answer = self._read_exactly(length - 4).rstrip(b"\0").decode(errors="replace")
        expected = md5_password(self.server.password, self.server.user, salt)
        if kind != b"p" or user != self.server.user or not hmac.compare_digest(answer, expected):
            log.warning("pgwire_authentication_failed", user=user, client=self.client_address[0])
            self._error(f'password authentication failed for user "{user}"', "28P01", "FATAL")
            self._flush()
            return False
        self._send(b"R", struct.pack("!i", 0))  # AuthenticationOk
        for name, value in (("server_version", "15.0 (arledger, DuckDB " + duckdb.__version__ + ")"),
                            ("server_encoding", "UTF8"), ("client_encoding", "UTF8"), ("DateStyle", "ISO, YMD"),
                            ("TimeZone", "UTC"), ("integer_datetimes", "on"),
                            ("standard_conforming_strings", "on"), ("default_transaction_read_only", "on")):
            self._send(b"S", _cstring(name) + _cstring(value))
        self._send(b"K", struct.pack("!ii", os.getpid() & 0x7FFFFFFF, secrets.randbits(31)))
        self._ready()
        log.info("pgwire_session", user=user, client=self.client_address[0])
        return True

    # -- queries --------------------------------------------------------------------------------

    def _dispatch(self, kind: bytes, body: bytes) -> None:
        if kind == b"Q":
            self._simple_query(body.rstrip(b"\0").decode())
            return
        if kind == b"S":  # Sync
            self.failed_until_sync = False
            self._ready()
            return
        if kind == b"H":  # Flush
            self._flush()
            return
        if self.failed_until_sync:
            return
        try:
            if kind == b"P":
                self._parse(body)
            elif kind == b"B":
                self._bind(body)
            elif kind == b"D":
                self._describe(body)
            elif kind == b"E":
                self._execute(body)
            elif kind == b"C":
                target, name = body[:1], body[1:].rstrip(b"\0").decode()
                (self.statements if target == b"S" else self.portals).pop(name, None)
                self._send(b"3")  # CloseComplete
            else:
                raise ProtocolError(f"unsupported message {kind!r}")
        except duckdb.Error as error:
            self._error(str(error), _sqlstate(error))
            self.failed_until_sync = True

    def _simple_query(self, sql: str) -> None:
        if not sql.strip().strip(";").strip():
            self._send(b"I")  # EmptyQueryResponse
            self._ready()
            return
        try:
            columns, rows = self.server.run(sql, [])
            self._send_result(columns, rows, describe=True)
        except duckdb.Error as error:
            self._error(str(error), _sqlstate(error))
        self._ready()

    def _parse(self, body: bytes) -> None:
        name, _, rest = body.partition(b"\0")
        query, _, _ = rest.partition(b"\0")
        self.statements[name.decode()] = query.decode()
        self._send(b"1")  # ParseComplete

    def _bind(self, body: bytes) -> None:
        portal, _, rest = body.partition(b"\0")
        statement, _, rest = rest.partition(b"\0")
        (format_count,) = struct.unpack("!h", rest[:2])
        formats = struct.unpack(f"!{format_count}h", rest[2:2 + 2 * format_count])
        rest = rest[2 + 2 * format_count:]
        (param_count,) = struct.unpack("!h", rest[:2])
        rest = rest[2:]
        params: list[Any] = []
        for index in range(param_count):
            (length,) = struct.unpack("!i", rest[:4])
            rest = rest[4:]
            if length < 0:
                params.append(None)
                continue
            raw, rest = rest[:length], rest[length:]
            binary = formats[index if len(formats) > 1 else 0] == 1 if formats else False
            if binary:
                raise duckdb.InvalidInputException("binary parameters are not supported: use the text format")
            params.append(raw.decode())
        sql = self.statements.get(statement.decode())
        if sql is None:
            raise duckdb.InvalidInputException(f"unknown prepared statement {statement.decode()!r}")
        self.portals[portal.decode()] = (sql, params, None)
        self._send(b"2")  # BindComplete

    def _portal_result(self, name: str) -> tuple[list[tuple[str, str]], list[tuple]]:
        sql, params, result = self.portals[name]
        if result is None:
            result = self.server.run(sql, params) if sql.strip() else ([], [])
            self.portals[name] = (sql, params, result)
        return result

    def _describe(self, body: bytes) -> None:
        target, name = body[:1], body[1:].rstrip(b"\0").decode()
        if target == b"S":
            sql = self.statements.get(name, "")
            count = len(set(re.findall(r"\$(\d+)", sql)))
            self._send(b"t", struct.pack("!h", count) + struct.pack("!i", TEXT_OID) * count)
            columns = self.server.describe(sql) if sql.strip() else []
            self._send_row_description(columns) if columns else self._send(b"n")
            return
        columns, _ = self._portal_result(name)
        self._send_row_description(columns) if columns else self._send(b"n")

    def _execute(self, body: bytes) -> None:
        name = body.partition(b"\0")[0].decode()
        sql = self.portals[name][0]
        if not sql.strip():
            self._send(b"I")
            return
        columns, rows = self._portal_result(name)
        self._send_result(columns, rows, describe=False)

    def _send_row_description(self, columns: list[tuple[str, str]]) -> None:
        payload = struct.pack("!h", len(columns))
        for name, duckdb_type in columns:
            payload += _cstring(name) + struct.pack("!ihihih", 0, 0, type_oid(duckdb_type), -1, -1, 0)
        self._send(b"T", payload)

    def _send_result(self, columns: list[tuple[str, str]], rows: list[tuple], *, describe: bool) -> None:
        if columns:
            if describe:
                self._send_row_description(columns)
            for row in rows:
                payload = struct.pack("!h", len(row))
                for value in row:
                    text = text_value(value)
                    payload += struct.pack("!i", -1) if text is None else struct.pack("!i", len(text)) + text
                self._send(b"D", payload)
                if len(self.out) >= 1000:
                    self._flush()
        self._send(b"C", _cstring(f"SELECT {len(rows)}" if columns else "OK"))


def _sqlstate(error: duckdb.Error) -> str:
    text = str(error)
    if "read-only" in text or "read only" in text or "external access" in text.lower():
        return "25006"  # read_only_sql_transaction
    if isinstance(error, (duckdb.ParserException, duckdb.SyntaxException)):
        return "42601"
    if isinstance(error, duckdb.CatalogException):
        return "42P01"
    return "XX000"


class PgServer(socketserver.ThreadingTCPServer):
    """Serves `open_snapshot()` connections (one per statement) to PostgreSQL clients."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], user: str, password: str,
                 open_snapshot: Callable[[], duckdb.DuckDBPyConnection]) -> None:
        super().__init__(address, Session)
        self.user, self.password = user, password
        self.open_snapshot = open_snapshot
        self.lock = threading.Lock()

    def _connection(self) -> duckdb.DuckDBPyConnection:
        try:
            connection = self.open_snapshot()
        except SystemExit as error:  # no read model published yet
            raise duckdb.IOException(str(error)) from None
        connection.execute("SET enable_external_access = false")
        connection.execute("SET lock_configuration = true")
        return connection

    def run(self, sql: str, params: list[Any]) -> tuple[list[tuple[str, str]], list[tuple]]:
        connection = self._connection()
        try:
            cursor = connection.execute(sql, params) if params else connection.execute(sql)
            if cursor.description is None:
                return [], []
            columns = [(column[0], str(column[1])) for column in cursor.description]
            return columns, cursor.fetchall()
        finally:
            connection.close()

    def describe(self, sql: str) -> list[tuple[str, str]]:
        connection = self._connection()
        try:
            count = len(set(re.findall(r"\$(\d+)", sql)))
            relation = connection.execute(f"SELECT * FROM ({sql.rstrip().rstrip(';')}) LIMIT 0",
                                          [None] * count) if count else \
                connection.execute(f"SELECT * FROM ({sql.rstrip().rstrip(';')}) LIMIT 0")
            return [(column[0], str(column[1])) for column in relation.description or []]
        except duckdb.Error:
            return []
        finally:
            connection.close()


def read_password(path: Path) -> str:
    """The password: the first line of `path`, which must not be readable by others."""
    mode = path.stat().st_mode
    if mode & 0o077:
        raise PermissionError(f"{path} is readable by group or others (chmod 600 it)")
    password = path.read_text().splitlines()[0].strip() if path.read_text().strip() else ""
    if not password:
        raise ValueError(f"{path} holds no password")
    return password
