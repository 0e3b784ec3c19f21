import sys

from mscg_lightning.cli import main

sys.exit(main())
