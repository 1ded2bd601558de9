"""CLI subcommands: one module per stage, each exposing `register(subparsers)`."""
