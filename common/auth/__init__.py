"""The auth pieces the gateway and the auth plugin share: claims, permissions, revocations, JWKS, discovery."""
