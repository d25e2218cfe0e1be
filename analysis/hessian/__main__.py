"""``python -m analysis.hessian``: see ``cli.py``."""
import sys

from .cli import main

sys.exit(main())
