from linewatch.cli import main

raise SystemExit(main())
