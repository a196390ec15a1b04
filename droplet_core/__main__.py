import sys

from droplet_core.cli import main

sys.exit(main())
