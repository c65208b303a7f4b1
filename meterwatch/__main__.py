import sys

from meterwatch.cli import main

sys.exit(main())
