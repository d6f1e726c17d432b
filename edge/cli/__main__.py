"""``python -m edge.cli``: the same as the ``storelens`` command."""

from edge.cli.main import main

raise SystemExit(main())
