"""`arledger serve` (the web workspace and HTTP API), `arledger user ...` and `arledger token ...`."""

from __future__ import annotations

import argparse
import getpass
import sys

from arledger.settings import Settings

SERVE_HELP = """\
Serves the workspace (overview, worklist, calendar, customer pages, credit
queue, downloads) and the HTTP API (/api/openapi.json describes it) beside
'arledger run'. It reads the read model the projector publishes and writes
only by publishing envelopes to ar.inbound, as an upstream system would.
Nobody reads or writes without signing in: create users and tokens first.

examples:
  arledger user add alice --role collector          # asks for the password
  arledger serve                                    # http://127.0.0.1:8080/
  arledger serve --host 0.0.0.0 --port 8443 --ssl-certfile cert.pem --ssl-keyfile key.pem
"""

USER_HELP = """\
Roles: viewer (reads), collector (+ collection actions and promises),
controller (+ limits, holds, terms, grades, order releases), admin (+ any
envelope type through the API). The password is read from the terminal, or
from the first line of --password-file (use - for standard input); never
from the command line. Users live in $ARLEDGER_HOME/web-users.sqlite,
passwords hashed with scrypt.

examples:
  arledger user add alice --role collector
  printf '%s\\n' "$PASSWORD" | arledger user add bob --role controller --password-file -
  arledger user list
  arledger user remove alice
"""

TOKEN_HELP = """\
API tokens for systems that call the HTTP API (Authorization: Bearer TOKEN).
The token is printed once; only its hash is kept. A token has a role like a
user: an order system that sends sales and payments needs admin; one that
only reads reports, viewer.

examples:
  arledger token create erp-eu --role admin
  arledger token list
  arledger token revoke 3f9a1c2b7d4e
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from arledger.web.auth import ROLES

    serve = subparsers.add_parser("serve", help="the web workspace and HTTP API (reads the read model, writes to "
                                                "ar.inbound)", description="Serve the web workspace and the HTTP API.",
                                  epilog=SERVE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    serve.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM)")
    serve.add_argument("--ssl-keyfile", help="and this private key (PEM)")
    serve.add_argument("--no-kafka", action="store_true",
                       help="read-only: do not connect to Kafka (sending envelopes answers 503)")
    serve.set_defaults(handler=run_serve)

    user = subparsers.add_parser("user", help="add, list or remove workspace users",
                                 description="Workspace users and their roles.", epilog=USER_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = user.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = _leaf(actions, "add", "add a user (or --replace an existing one's role and password)",
                "arledger user add alice --role collector\n  arledger user add bob --role controller --password-file pw.txt")
    add.add_argument("username")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument("--password-file", metavar="PATH",
                     help="read the password from the first line of PATH ('-' = standard input)")
    add.add_argument("--replace", action="store_true", help="replace an existing user's role and password")
    add.set_defaults(handler=run_user_add)
    listing = _leaf(actions, "list", "list users and roles", "arledger user list")
    listing.set_defaults(handler=run_user_list)
    remove = _leaf(actions, "remove", "remove a user", "arledger user remove alice")
    remove.add_argument("username")
    remove.set_defaults(handler=run_user_remove)

    token = subparsers.add_parser("token", help="create, list or revoke API tokens",
                                  description="API tokens for systems.", epilog=TOKEN_HELP,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = token.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = _leaf(verbs, "create", "create a token (printed once)", "arledger token create erp-eu --role admin")
    create.add_argument("name", help="the system that will use it")
    create.add_argument("--role", choices=ROLES, required=True)
    create.set_defaults(handler=run_token_create)
    tokens = _leaf(verbs, "list", "list tokens (never their secrets)", "arledger token list")
    tokens.set_defaults(handler=run_token_list)
    revoke = _leaf(verbs, "revoke", "revoke a token by its id", "arledger token revoke 3f9a1c2b7d4e")
    revoke.add_argument("token_id")
    revoke.set_defaults(handler=run_token_revoke)


def _leaf(actions: argparse._SubParsersAction, name: str, help_text: str, example: str) -> argparse.ArgumentParser:
    return actions.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".",
                              epilog=f"example:\n  {example}\n", formatter_class=argparse.RawDescriptionHelpFormatter)


def _store(settings: Settings):
    from arledger.web.auth import UserStore

    return UserStore(settings.home / "web-users.sqlite")


def read_password(path: str | None) -> str:
    """From the file's first line, standard input ('-') or the terminal (asked twice); never argv."""
    if path == "-":
        return sys.stdin.readline().rstrip("\r\n")
    if path:
        try:
            with open(path, encoding="utf-8") as stream:
                return stream.readline().rstrip("\r\n")
        except OSError as error:
            sys.exit(f"arledger user: cannot read {path}: {error.strerror}")
    if not sys.stdin.isatty():
        sys.exit("arledger user: no terminal to ask the password on: give --password-file PATH (or - for stdin)")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        sys.exit("arledger user: the passwords differ")
    return first


def run_user_add(args: argparse.Namespace) -> int:
    from arledger.web.auth import AuthError

    password = read_password(args.password_file)
    try:
        _store(Settings.from_env()).add_user(args.username, args.role, password, replace=args.replace)
    except AuthError as error:
        sys.exit(f"arledger user: {error}")
    print(f"user {args.username} ({args.role}) {'replaced' if args.replace else 'added'}")
    return 0


def run_user_list(args: argparse.Namespace) -> int:
    for user in _store(Settings.from_env()).users():
        print(f"{user['username']}\t{user['role']}\t{user['created_at']}")
    return 0


def run_user_remove(args: argparse.Namespace) -> int:
    if not _store(Settings.from_env()).remove_user(args.username):
        sys.exit(f"arledger user: no user {args.username!r}")
    print(f"user {args.username} removed")
    return 0


def run_token_create(args: argparse.Namespace) -> int:
    from arledger.web.auth import AuthError

    try:
        token = _store(Settings.from_env()).create_token(args.name, args.role)
    except AuthError as error:
        sys.exit(f"arledger token: {error}")
    print(token)
    print(f"token for {args.name} ({args.role}); shown once, keep it in the system's secret store", file=sys.stderr)
    return 0


def run_token_list(args: argparse.Namespace) -> int:
    for token in _store(Settings.from_env()).tokens():
        state = f"revoked {token['revoked_at']}" if token["revoked_at"] else "active"
        print(f"{token['token_id']}\t{token['name']}\t{token['role']}\t{token['created_at']}\t{state}")
    return 0


def run_token_revoke(args: argparse.Namespace) -> int:
    if not _store(Settings.from_env()).revoke_token(args.token_id):
        sys.exit(f"arledger token: no active token {args.token_id!r}")
    print(f"token {args.token_id} revoked")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from arledger.logs import configure
    from arledger.web.app import create_app

    settings = Settings.from_env()
    configure()
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        sys.exit("arledger serve: give both --ssl-certfile and --ssl-keyfile, or neither")
    if not _store(settings).users():
        print("arledger serve: no user yet: add one with 'arledger user add NAME --role admin'", file=sys.stderr)
    app = create_app(settings, kafka=not args.no_kafka)
    scheme = "https" if args.ssl_certfile else "http"
    print(f"arledger serve: {scheme}://{args.host}:{args.port}/  (API: /api/openapi.json)", file=sys.stderr,
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                log_level="warning", access_log=False)
    return 0
