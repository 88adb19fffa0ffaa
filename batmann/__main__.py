import sys

from batmann.cli import main

sys.exit(main())
