"""``python -m panda_lab.pilot``: the same as ``panda-lab pilot``."""

import sys

from panda_lab.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["pilot", *sys.argv[1:]]))
