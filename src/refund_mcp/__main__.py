from refund_mcp.cli import main

raise SystemExit(main())
