import sys

from tfrs_linear.cli import main

sys.exit(main())
