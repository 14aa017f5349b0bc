"""`python -m execution_operator.runner`: the sandbox container's entrypoint."""

import sys

from execution_operator.runner.supervisor import main

sys.exit(main())
