"""medfail: failure analysis for medical imaging AI."""

__version__ = "0.1.0"
