from zcron.cli import main

raise SystemExit(main())
