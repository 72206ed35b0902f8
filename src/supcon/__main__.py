from supcon.cli import main

raise SystemExit(main())
