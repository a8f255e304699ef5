"""Signing keys: the keyring on disk and where a running node gets its keys."""
