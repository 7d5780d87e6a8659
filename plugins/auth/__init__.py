"""The auth plugin: IAuth (proto/upf/auth/v1/auth.proto) with a `custom`, `keycloak` or `auth0` provider."""
