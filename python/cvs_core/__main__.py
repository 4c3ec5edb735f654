from cvs_core.cli import main

raise SystemExit(main())
