import sys

from surge.clients.loadgen.cli import main

sys.exit(main())
