"""The Python plugin SDK: write the servicers, point at the manifest, `await Plugin(...).run()`.

    from plugins.sdk import Plugin, run_plugin
    servicers = [(add_EchoServicer_to_server, EchoService())]
    raise SystemExit(run_plugin(lambda: Plugin("manifest.yaml", servicers, registry="127.0.0.1:50052")))

`run_plugin` exits 1 with file:line:column for each problem of an invalid manifest.

See plugins/sdk/plugin.py for the lifecycle, lease.py for registration and resolve.py for dependencies.
"""

from __future__ import annotations

from plugins.sdk.lease import Backoff, LeaseKeeper, RegistrationRejected
from plugins.sdk.plugin import Plugin, ServicerSpec, Timings, load_manifest_text, run_plugin
from plugins.sdk.resolve import DependencyUnavailable, Resolver
from plugins.sdk.user import User, user_of

__all__ = [
    "Backoff",
    "DependencyUnavailable",
    "LeaseKeeper",
    "Plugin",
    "RegistrationRejected",
    "Resolver",
    "ServicerSpec",
    "Timings",
    "User",
    "load_manifest_text",
    "run_plugin",
    "user_of",
]
