"""fastgw's macro benchmark harness: `python bench/run.py --help` (or `make bench`, `make bench-quick`)."""
