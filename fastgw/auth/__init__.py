"""Compiling consumers and the auth and IP policies (fastgw.config.auth) into core objects."""
