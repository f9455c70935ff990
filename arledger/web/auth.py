"""Users, roles and API tokens of the web workspace, in a small SQLite file in $ARLEDGER_HOME.

Passwords are hashed with scrypt (stdlib, salted, memory-hard); API tokens are
random 256-bit secrets, so one SHA-256 of the secret is enough to store them
(nothing to brute-force) and lets a request find its token in one indexed read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

ROLES = ("viewer", "collector", "controller", "admin")
# Each right and the lowest role that holds it: the roles are ordered, each one holds the rights of those before it.
RIGHTS = {"read": "viewer", "collect": "collector", "control": "controller", "admin": "admin"}
# Which right an envelope type needs when a person or a system sends it through the workspace or the API.
COLLECT_TYPES = frozenset({"collection.action", "promise.made"})
CONTROL_TYPES = frozenset({"credit_limit.changed", "credit_hold.placed", "credit_hold.released", "order.released",
                           "payment_terms.changed", "credit_grade.assigned"})
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
PASSWORD_LENGTH_MIN = 8
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # ~16 MiB, ~50 ms a check: slow for a guesser, fine for a sign-in
TOKEN_PREFIX = "arl_"

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, secret_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL, revoked_at TEXT);
"""


class AuthError(ValueError):
    """Bad input to a user or token command (unknown role, short password, duplicate name...)."""


@dataclass(frozen=True)
class Principal:
    """Who is asking: a signed-in user or an API token, with its role."""

    name: str
    role: str
    kind: str  # "user" or "token"

    def can(self, right: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(RIGHTS[right])


def right_for_type(envelope_type: str) -> str:
    """The right needed to send an envelope of this type (anything not collecting or controlling: admin)."""
    if envelope_type in COLLECT_TYPES:
        return "collect"
    if envelope_type in CONTROL_TYPES:
        return "control"
    return "admin"


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                               dklen=len(digest) // 2)
    return hmac.compare_digest(candidate.hex(), digest)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise AuthError(f"unknown role {role!r}; choose from {', '.join(ROLES)}")


# A password hash that no password matches: a sign-in with an unknown user costs the same scrypt as a known one.
_DUMMY_HASH = "scrypt$16384$8$00000000000000000000000000000000$" + "00" * 32


class UserStore:
    """The users and tokens file; one short connection per call (safe from any thread or process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as connection:
            connection.executescript(SCHEMA)
        path.chmod(0o600)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    # -- users ---------------------------------------------------------------------------------------

    def add_user(self, username: str, role: str, password: str, *, replace: bool = False) -> None:
        if not USERNAME.match(username):
            raise AuthError(f"bad user name {username!r}: letters, digits and . _ @ - (at most 64)")
        _check_role(role)
        if len(password) < PASSWORD_LENGTH_MIN:
            raise AuthError(f"the password must have at least {PASSWORD_LENGTH_MIN} characters")
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        try:
            with self._connect() as connection:
                connection.execute(f"{verb} INTO users VALUES (?, ?, ?, ?)",
                                   (username, role, hash_password(password), _now()))
        except sqlite3.IntegrityError:
            raise AuthError(f"user {username!r} exists (use --replace to set a new role or password)") from None

    def remove_user(self, username: str) -> bool:
        with self._connect() as connection:
            return connection.execute("DELETE FROM users WHERE username = ?", (username,)).rowcount > 0

    def users(self) -> list[dict[str, str]]:
        with self._connect() as connection:
            rows = connection.execute("SELECT username, role, created_at FROM users ORDER BY username").fetchall()
        return [{"username": u, "role": r, "created_at": c} for u, r, c in rows]

    def user(self, username: str) -> Principal | None:
        with self._connect() as connection:
            row = connection.execute("SELECT role FROM users WHERE username = ?", (username,)).fetchone()
        return Principal(username, row[0], "user") if row else None

    def authenticate(self, username: str, password: str) -> Principal | None:
        with self._connect() as connection:
            row = connection.execute("SELECT role, password_hash FROM users WHERE username = ?",
                                     (username,)).fetchone()
        if row is None:
            verify_password(password, _DUMMY_HASH)
            return None
        return Principal(username, row[0], "user") if verify_password(password, row[1]) else None

    # -- tokens --------------------------------------------------------------------------------------

    def create_token(self, name: str, role: str) -> str:
        """A new token; the secret is returned once and only its hash is kept."""
        _check_role(role)
        if not name.strip():
            raise AuthError("a token needs a name (the system that will use it)")
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        with self._connect() as connection:
            connection.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, NULL)",
                               (token_id, name, role, hashlib.sha256(secret.encode()).hexdigest(), _now()))
        return f"{TOKEN_PREFIX}{token_id}_{secret}"

    def revoke_token(self, token_id: str) -> bool:
        with self._connect() as connection:
            return connection.execute("UPDATE tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL",
                                      (_now(), token_id)).rowcount > 0

    def tokens(self) -> list[dict[str, str | None]]:
        with self._connect() as connection:
            rows = connection.execute("SELECT token_id, name, role, created_at, revoked_at FROM tokens "
                                      "ORDER BY created_at, token_id").fetchall()
        return [dict(zip(("token_id", "name", "role", "created_at", "revoked_at"), row)) for row in rows]

    def token(self, presented: str) -> Principal | None:
        if not presented.startswith(TOKEN_PREFIX):
            return None
        token_id, _, secret = presented[len(TOKEN_PREFIX):].partition("_")
        if not token_id or not secret:
            return None
        with self._connect() as connection:
            row = connection.execute("SELECT name, role, secret_sha256 FROM tokens "
                                     "WHERE token_id = ? AND revoked_at IS NULL", (token_id,)).fetchone()
        if row is None or not hmac.compare_digest(hashlib.sha256(secret.encode()).hexdigest(), row[2]):
            return None
        return Principal(f"token:{row[0]}", row[1], "token")


DEMO_USERS = (("demo-viewer", "viewer"), ("demo-collector", "collector"), ("demo-controller", "controller"),
              ("demo-admin", "admin"))


def seed_demo_users(home: Path) -> dict[str, tuple[str, str]]:
    """One user per role with a fresh random password each demo run: {name: (role, password)}; also written to
    $ARLEDGER_HOME/demo/web-users.txt (mode 600) so the demo's reader can sign in later."""
    store = UserStore(home / "web-users.sqlite")
    users = {}
    for name, role in DEMO_USERS:
        password = secrets.token_urlsafe(9)
        store.add_user(name, role, password, replace=True)
        users[name] = (role, password)
    path = home / "demo" / "web-users.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text("".join(f"{name}\t{role}\t{password}\n" for name, (role, password) in users.items()))
    return users


def secret_key(home: Path) -> str:
    """The key that signs session cookies: $ARLEDGER_HOME/web-secret, made (mode 600) on first use."""
    path = home / "web-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()
