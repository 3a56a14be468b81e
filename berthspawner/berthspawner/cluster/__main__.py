"""`python -m berthspawner.cluster`: the cluster page's service, as the hub starts it."""

import sys

from .web import main

sys.exit(main())
