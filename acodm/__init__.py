"""acodm: online data mixing for language-model pretraining.

Statistics in, domain weights out. This package imports only torch and numpy (and safetensors for
actor export) and never imports ``neox``, so other training loops can use the mixers directly.
"""

__version__ = "0.1.0"
