"""The stages: one module per `mtlrec` command, each a function from artifacts to artifacts."""
