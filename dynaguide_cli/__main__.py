"""``python -m dynaguide_cli ...`` = ``dynaguide ...``."""

import sys

from dynaguide_cli.main import main

sys.exit(main())
