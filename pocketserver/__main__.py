from pocketserver.cli import main

raise SystemExit(main())
