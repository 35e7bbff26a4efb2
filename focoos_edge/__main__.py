from focoos_edge.cli import main

raise SystemExit(main())
