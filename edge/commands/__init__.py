"""One module per ``storelens`` subcommand, each with ``register(sub)``."""
