"""The ``storelens`` command line: ``main`` wires one module per subcommand."""
