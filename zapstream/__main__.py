import sys

from zapstream.cli import main

sys.exit(main())
