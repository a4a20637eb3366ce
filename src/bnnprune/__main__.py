import sys

from bnnprune.cli import main

sys.exit(main())
