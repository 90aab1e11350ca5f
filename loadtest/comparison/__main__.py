from loadtest.comparison.cli import main

raise SystemExit(main())
