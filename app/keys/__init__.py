"""Signing keys: the key model and its crypto (key), JWK import/export (jwk), the keyring on
disk and its lifecycle (keyring), and where a running node gets its keys (source)."""
