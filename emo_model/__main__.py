"""``python -m emo_model``: the command line (emo_model/app/cli.py)."""

from .app.cli import main

raise SystemExit(main())
