"""One module per `xmodel2` subcommand (see `xmodel2.cli`)."""
