import sys

from labgate.cli.main import main

sys.exit(main())
