import sys

from cvvae.cli import main

sys.exit(main())
