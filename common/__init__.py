"""What every part of the platform shares, below all of them: it imports none of the others.

`gateway`, `registry`, `plugins` and `manifests` each import from here and never from one another (the
`cli` package above them composes them); `make check` enforces that order with import-linter contracts
(pyproject.toml). What lives here is what more than one of them needs to agree on, so that a rule is
written once and cannot drift between copies:

- `common.config`: the settings base class, YAML + `UPF_*` loading, `${VAR}` placeholders, `ConfigError`,
  and the value types config files share (Redis URLs, host:port, networks, http URLs);
- `common.names`: the grammar of gRPC service names and host:port;
- `common.clock`: the one `Clock` type that time-dependent objects take, so tests can drive time;
- `common.logs`: the logging set-up of every process;
- `common.auth`: token claims, permission matching, revocations, JWKS and OpenID discovery, which the
  gateway (verifying tokens) and the auth plugin (issuing and checking them) both use.

The name is `common` because `upf`, the natural one, is the namespace of the generated protobuf code
(`upf.orders.v1`), and because it says what the package is for: shared, and owned by no one component.
"""
