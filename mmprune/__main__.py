"""``python -m mmprune <command> ...``, the same as the ``mmprune`` console script."""
import sys

from mmprune.cli import main

if __name__ == '__main__':
    sys.exit(main())
