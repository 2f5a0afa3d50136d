"""`python -m aape_jax.bench NAME [flags]`: see `aape_jax.bench`."""

from aape_jax.bench import main

if __name__ == "__main__":
    main()
