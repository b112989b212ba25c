"""Configuration: the typed reading of config.toml, section by section, and the checks made at load."""
