import sys

from droplet_core.service.cli import main

# Guarded: Dask and multiprocessing workers import this module again when they start.
if __name__ == "__main__":
    sys.exit(main())
