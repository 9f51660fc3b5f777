"""`python -m vlm.cli` (what torchrun launches: `torchrun ... -m vlm.cli train CONFIG`)."""

import sys

from vlm.cli import main

sys.exit(main())
