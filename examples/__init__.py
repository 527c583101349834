"""Examples shipped with fastgw: configs (quickstart.yaml) and example plugins (plugins/)."""
