from jailshell.cli import main

raise SystemExit(main())
