"""Loggers. Imported by the CLI so short class names resolve in YAML; backends are imported when used."""
