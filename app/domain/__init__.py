"""The domain: tokens, feedback rules, use policies, issuance, and the service that ties them."""
