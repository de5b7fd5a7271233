"""One module per ``longnet`` subcommand; ``cli.py`` registers them."""
