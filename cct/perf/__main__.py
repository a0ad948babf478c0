import sys

from cct.perf.suite.rows import main

sys.exit(main())
