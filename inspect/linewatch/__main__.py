import sys

if sys.argv[1:2] == ["child"]:
    # how the supervisor starts each process of the line: straight to it, without building the whole
    # command line (it imports every subcommand's module: 0.3 s of each child's start)
    from linewatch.line.child import child_cli

    raise SystemExit(child_cli(sys.argv[2:]))

from linewatch.cli import main

raise SystemExit(main())
