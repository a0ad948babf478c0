import sys

from cct.perf.suite import main

sys.exit(main())
