"""Errors shared across the stack, in a module that imports nothing, so any layer may raise them."""


class ConfigError(ValueError):
    """A configuration value a user must change; the message names the key, the value and the fix."""
