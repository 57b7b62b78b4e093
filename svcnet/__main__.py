from svcnet.cli import main

raise SystemExit(main())
