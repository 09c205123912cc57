"""Configuration: TOML loading (``load``), conversion to dataclasses (``convert``), checks."""
