"""``python -m longnet_cli``: the same as the ``longnet`` console script."""

from longnet_cli.cli import main

if __name__ == "__main__":
    main()
