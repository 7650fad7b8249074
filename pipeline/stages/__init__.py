"""The stages: one module per `mtlrec` command, each a function from artifacts to artifacts;
beam_runner.py picks the Beam runner the preprocess stage runs on."""
