"""uniws benchmark suite: `python -m bench --help`."""
