from kubermesh.cli import main

raise SystemExit(main())
