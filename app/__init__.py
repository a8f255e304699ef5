"""feedback-tokens: presigned feedback tokens on Redis."""

__version__ = "0.1.0"
