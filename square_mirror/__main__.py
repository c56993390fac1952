from square_mirror.cli import main

raise SystemExit(main())
