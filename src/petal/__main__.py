from petal.cli import main

raise SystemExit(main())
