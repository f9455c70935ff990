"""`arledger sql-server`: the read model over the PostgreSQL wire protocol, read-only (psql, BI tools)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from arledger.settings import Settings

HELP = """\
Serves SQL over the PostgreSQL protocol so that psql, BI tools (Metabase,
Superset, Tableau, Excel via ODBC ...) and PostgreSQL drivers read the live
tables. Each statement runs in DuckDB on the latest published snapshot (so
it is at most a few seconds behind `arledger run`; see docs/analysts.md), in
DuckDB's SQL dialect. Read-only is enforced by the server: the snapshot is
opened read-only with external file access disabled, so INSERT, UPDATE,
DELETE, CREATE, ATTACH and COPY ... TO fail whatever the client sends.

The password is read from a file (first line; the file must not be readable
by group or others), never from the command line; the client authenticates
with MD5. No TLS: keep the default 127.0.0.1 or put a TLS proxy in front.

examples:
  umask 077; openssl rand -hex 16 > ~/.arledger/sql-password
  arledger sql-server --password-file ~/.arledger/sql-password &
  PGPASSWORD=$(cat ~/.arledger/sql-password) psql -h 127.0.0.1 -p 5433 -U arledger arledger \\
      -c "SELECT customer_id, balance FROM customer_balances ORDER BY balance DESC LIMIT 5"
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sql-server", help="serve the read models read-only over the PostgreSQL protocol",
                                   description="A read-only PostgreSQL-protocol endpoint on the read models.",
                                   epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5433, help="port (default: 5433; 0 picks a free one)")
    parser.add_argument("--user", default="arledger", help="the user name clients log in with (default: arledger)")
    parser.add_argument("--password-file", type=Path,
                        default=os.environ.get("ARLEDGER_SQL_PASSWORD_FILE"),
                        help="file whose first line is the password (or $ARLEDGER_SQL_PASSWORD_FILE)")
    parser.set_defaults(handler=run)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from arledger import pgwire
    from arledger.readmodel import open_read_model

    if args.password_file is None:
        sys.exit("arledger sql-server: --password-file (or ARLEDGER_SQL_PASSWORD_FILE) is required")
    try:
        password = pgwire.read_password(Path(args.password_file))
    except (OSError, ValueError) as error:
        sys.exit(f"arledger sql-server: {error}")
    settings = Settings.from_env()
    server = pgwire.PgServer((args.host, args.port), args.user, password, lambda: open_read_model(settings))
    host, port = server.server_address[:2]
    print(f"arledger sql-server: listening on {host}:{port} (user {args.user}); "
          f"e.g. psql -h {host} -p {port} -U {args.user} arledger", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
