from xmodel2.cli import main

raise SystemExit(main())
