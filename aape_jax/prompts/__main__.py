"""`python -m aape_jax.prompts {check,generate} ...`; see `aape_jax.prompts.cli`."""

import sys

from aape_jax.prompts.cli import main

if __name__ == "__main__":
    sys.exit(main())
