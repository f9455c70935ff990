"""One module per `arledger` command group; each exposes `register(subparsers)`."""
