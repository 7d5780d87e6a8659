"""Authentication and authorisation in the gateway: keys, token verification, permissions, revocations."""
