from emo_model.cli import main

raise SystemExit(main())
