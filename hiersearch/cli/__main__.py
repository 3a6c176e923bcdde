"""`python -m hiersearch.cli ...`, and the script `ray submit` copies to a cluster's head."""

import sys

from hiersearch.cli import main

if __name__ == "__main__":
    sys.exit(main())
