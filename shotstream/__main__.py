import sys

from shotstream.cli import main

sys.exit(main())
