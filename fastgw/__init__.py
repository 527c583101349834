"""fastgw: an API gateway with a Cython request path."""

__version__ = "0.1.0"
