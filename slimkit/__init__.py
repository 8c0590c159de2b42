"""slimkit: make large language models small and fast, and serve them."""

__version__ = "0.1.0"
