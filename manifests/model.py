"""The plugin manifest: what a plugin is, which interfaces it provides and requires, and its UI.

The shape follows the seed's `manifest.yaml` (keys in camelCase, as plugins in any language write them):

    id: orders-plugin
    version: 1.2.0
    name: Orders Management
    type: business
    provides:
      - name: IOrderService
        version: 1.0.0
        protoFile: ./proto/orders.proto
        grpcServices: [shop.orders.v1.OrderService]
        methods: [CreateOrder, GetOrder]
        policies:
          CreateOrder: {requiredPermission: "orders:write", timeout: 10}
    requires:
      - {interface: IStorage, version: ">=1.0.0"}
      - {interface: ICache, version: "^1", optional: true}
    ui:
      enabled: true
      remoteEntry: /static/remoteEntry.js
      exposedModules: [{name: ./OrderDashboard, type: page}]
      navigation: [{path: /orders, title: Orders, icon: shopping-cart, module: ./OrderDashboard}]

Two additions to the seed: `grpcServices` (the gateway routes by fully qualified gRPC service, so a
provider must say which ones it serves; a manifest file may leave it to its protoFile, see
manifests/infer.py) and `policies` (per-method permission, rate limit, timeout and idempotency,
declared here and enforced by the gateway). An enabled `ui` without `remoteEntry` means
/static/remoteEntry.js, the value of the seed's own UI example.

Validation is strict: unknown keys are errors (a misspelt key would otherwise be silently ignored), and
values are not coerced (`version: 1.0` is a YAML number, not the text "1.0"). Checks that relate several
fields (unique names, policies that name declared methods, ...) run after the fields are valid; they are
raised as one pydantic error of type `manifest_consistency` whose context lists each problem with its
own location, so `manifests.load` can point at each one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from common.names import SERVICE
from manifests.semver import VERSION_PATTERN, SemverError, parse_range, parse_version

__all__ = [
    "CONSISTENCY_ERROR",
    "DEFAULT_REMOTE_ENTRY",
    "GRANT_ACCESS",
    "CacheGrant",
    "ExposedModule",
    "FilesGrant",
    "Grants",
    "Location",
    "MethodPolicy",
    "NavigationEntry",
    "PluginManifest",
    "ProvidedInterface",
    "RateLimit",
    "RequiredInterface",
    "SharedState",
    "StorageGrant",
    "UiConfig",
    "UiEvent",
    "consistency_problems",
    "dotted_path",
    "is_exposed",
]

#: The pydantic error type that carries the cross-field problems; its ctx["problems"] is a list of
#: (location, message) pairs.
CONSISTENCY_ERROR = "manifest_consistency"

#: Where a problem is: keys and list indexes from the top of the manifest, as in pydantic's error `loc`.
Location = tuple[str | int, ...]

ALL_METHODS = "*"  # the policies key that applies to every method of an interface
#: Where an enabled UI's remote entry is when the manifest does not say (the seed's UI example's value).
DEFAULT_REMOTE_ENTRY = "/static/remoteEntry.js"

_ID = r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
_SERVICE = SERVICE.pattern
_MODULE = r"^\./\S+$"
_NAVIGATION_PATH = r"^/\S*$"
_REMOTE_ENTRY = r"^(https?://\S+|/\S*)$"
_PROTO_FILE = r"^\S+\.proto$"
_STATE_NAME = r"^[A-Za-z][A-Za-z0-9_.-]*$"
_PERMISSION = r"^\S+$"
_BASE_URL = r"^https?://[^\s/?#]+(/\S*)?$"
_EVENT_NAME = r"^[A-Za-z][A-Za-z0-9_.:-]*$"
_COLLECTION = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"  # as IStorage accepts them (plugins/storage/documents.py)
_KEY_PREFIX = r"^[^*?\[\]\\]{1,512}$"  # literal text: a prefix that a key pattern can start with
_PATH_PREFIX = r"^[^/\\][^\\]{0,1023}$"  # relative to the owner's files, like the paths IFiles takes


def _fail(message: str) -> PydanticCustomError:
    # A custom error keeps the message exactly as written (a ValueError would gain "Value error, ").
    return PydanticCustomError("manifest_value", message)


def _matches(pattern: str, what: str, advice: str) -> Callable[[str], str]:
    """A check that `value` matches `pattern`, with an error that says how to write it."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise _fail(f"{_show(value)} is not {what}: {advice}")
        return value

    return check


def _parses(parse: Callable[[str], object]) -> Callable[[str], str]:
    def check(value: str) -> str:
        try:
            parse(value)
        except SemverError as exc:
            raise _fail(str(exc)) from None
        return value

    return check


def _show(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _pattern(pattern: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "pattern": pattern})


PluginId = Annotated[
    str,
    AfterValidator(
        _matches(
            _ID, "a plugin id", "use lowercase letters, digits and hyphens, starting with a letter (orders-plugin)"
        )
    ),
    _pattern(_ID),
]
InterfaceName = Annotated[
    str,
    AfterValidator(_matches(_IDENTIFIER, "an interface name", "use letters, digits and underscores (IStorage)")),
    _pattern(_IDENTIFIER),
]
ServiceName = Annotated[
    str,
    AfterValidator(
        _matches(_SERVICE, "a fully qualified gRPC service", "write package.Service, e.g. upf.demo.v1.Echo")
    ),
    _pattern(_SERVICE),
]
MethodName = Annotated[
    str,
    AfterValidator(
        _matches(_IDENTIFIER, "a gRPC method name", "write the rpc's name as in the .proto, e.g. CreateOrder")
    ),
    _pattern(_IDENTIFIER),
]
ModuleName = Annotated[
    str,
    AfterValidator(
        _matches(_MODULE, "an exposed module name", 'Module Federation names start with "./", e.g. ./OrderDashboard')
    ),
    _pattern(_MODULE),
]
NavigationPath = Annotated[
    str,
    AfterValidator(
        _matches(_NAVIGATION_PATH, "a navigation path", 'a path starts with "/", e.g. /orders or /orders/:id')
    ),
    _pattern(_NAVIGATION_PATH),
]
RemoteEntry = Annotated[
    str,
    AfterValidator(
        _matches(
            _REMOTE_ENTRY,
            "a remote entry URL",
            "use a path on the gateway such as /static/remoteEntry.js or an http(s) URL",
        )
    ),
    _pattern(_REMOTE_ENTRY),
]
ProtoFile = Annotated[
    str,
    AfterValidator(_matches(_PROTO_FILE, "a .proto file", "give the path of the file, e.g. ./proto/orders.proto")),
    _pattern(_PROTO_FILE),
]
StateName = Annotated[
    str,
    AfterValidator(
        _matches(_STATE_NAME, "a shared state name", "use letters, digits, '_', '.' and '-', starting with a letter")
    ),
    _pattern(_STATE_NAME),
]
Permission = Annotated[
    str,
    AfterValidator(_matches(_PERMISSION, "a permission", 'write it without spaces, e.g. "orders:write"')),
    _pattern(_PERMISSION),
]
Identifier = Annotated[
    str,
    AfterValidator(_matches(_IDENTIFIER, "an identifier", "use letters, digits and underscores (orders_plugin)")),
    _pattern(_IDENTIFIER),
]
BaseUrl = Annotated[
    str,
    AfterValidator(
        _matches(
            _BASE_URL,
            "a base URL",
            "give the http(s) URL the plugin serves its UI files from, e.g. http://127.0.0.1:7001/",
        )
    ),
    _pattern(_BASE_URL),
]
EventName = Annotated[
    str,
    AfterValidator(
        _matches(_EVENT_NAME, "an event name", "use letters, digits, '_', '.', ':' and '-', e.g. order.created")
    ),
    _pattern(_EVENT_NAME),
]
CollectionName = Annotated[
    str,
    AfterValidator(
        _matches(
            _COLLECTION,
            "a collection name",
            "a letter, then up to 63 letters, digits, '_', '.' or '-', e.g. orders",
        )
    ),
    _pattern(_COLLECTION),
]
KeyPrefix = Annotated[
    str,
    AfterValidator(
        _matches(
            _KEY_PREFIX,
            "a key prefix",
            "1-512 characters of literal key text without the pattern characters * ? [ ] \\, e.g. orders:",
        )
    ),
    _pattern(_KEY_PREFIX),
]
PathPrefix = Annotated[
    str,
    AfterValidator(
        _matches(
            _PATH_PREFIX,
            "a path prefix",
            'a path relative to the plugin\'s files (no leading "/", no "\\"), e.g. exports/',
        )
    ),
    _pattern(_PATH_PREFIX),
]
SemverText = Annotated[str, AfterValidator(_parses(parse_version)), _pattern(VERSION_PATTERN)]
RangeText = Annotated[
    str,
    AfterValidator(_parses(parse_range)),
    WithJsonSchema({"type": "string", "examples": [">=1.0.0", "^1.2", "~1.2.3", "1.x", ">=1 <3 || ^4"]}),
]


class _Section(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, extra="forbid", frozen=True, strict=True)


class RateLimit(_Section):
    """A token bucket for one method."""

    requests_per_second: float = Field(gt=0, description="Calls per second allowed on average (the refill rate).")
    burst_size: int | None = Field(
        default=None,
        ge=1,
        description="Calls allowed at once after a quiet period (the bucket's size); "
        "defaults to requestsPerSecond rounded up.",
    )


class MethodPolicy(_Section):
    """How the gateway treats calls to one method; every key is optional."""

    required_permission: Permission | None = Field(
        default=None, description='Permission the caller must hold, e.g. "orders:write"; none: any caller.'
    )
    rate_limit: RateLimit | None = Field(default=None, description="Rate limit for calls to this method.")
    timeout: float | None = Field(
        default=None, gt=0, description="Longest the gateway waits for an answer, in seconds (a deadline cap)."
    )
    idempotent: bool = Field(
        default=False, description="Calling twice has the same effect as calling once, so a failed call may be retried."
    )


class ProvidedInterface(_Section):
    """An interface this plugin serves to others."""

    name: InterfaceName = Field(description="Interface name that other plugins require, e.g. IOrderService.")
    version: SemverText = Field(description="Version of the interface this plugin implements (semver, e.g. 1.0.0).")
    proto_file: ProtoFile = Field(
        description="The .proto file that defines the interface's services, relative to the plugin's root."
    )
    grpc_services: list[ServiceName] = Field(
        min_length=1,
        description="Fully qualified gRPC services that implement the interface (package.Service, "
        "e.g. upf.demo.v1.Echo); the gateway routes calls for them to this plugin. When left out of a "
        "manifest file, the services protoFile declares (found from the manifest's folder upwards).",
    )
    methods: list[MethodName] = Field(
        default_factory=list, description="RPCs of those services that are part of the interface, e.g. CreateOrder."
    )
    capabilities: list[str] = Field(
        default_factory=list,
        description="Optional features of the interface this provider supports (e.g. transactional, ttl).",
    )
    exposed: bool | None = Field(
        default=None,
        description="Whether the gateway routes calls from outside (browsers, curl, native gRPC clients) to these "
        "services. Unset: true for a business plugin, false for an infrastructure plugin, whose services only "
        "other plugins call, directly.",
    )
    policies: dict[str, MethodPolicy] = Field(
        default_factory=dict,
        description=f'Per-method policy, keyed by a name from methods, or "{ALL_METHODS}" for the default '
        "of every method (a method's own keys override it).",
    )


class RequiredInterface(_Section):
    """An interface this plugin needs from another plugin."""

    interface: InterfaceName = Field(description="Name of the required interface, e.g. IStorage.")
    version: RangeText = Field(
        description='npm-style semver range the provider\'s interface version must satisfy, e.g. ">=1.0.0", '
        '"^1.2", "~1.2.3", "1.x", ">=1 <3 || ^4".'
    )
    optional: bool = Field(
        default=False,
        description="The plugin works without it (DEGRADED when no provider is healthy) instead of not starting.",
    )


class ExposedModule(_Section):
    """A module of the plugin's UI that the shell can load."""

    name: ModuleName = Field(description='Name under which Module Federation exposes it, e.g. "./OrderDashboard".')
    path: str | None = Field(default=None, description="Source file in the plugin's UI project (informative).")
    type: Literal["page", "widget", "hook"] | None = Field(
        default=None, description="page: a screen with a route; widget: embedded in other screens; hook: logic only."
    )


class NavigationEntry(_Section):
    """An entry the shell adds to its navigation and router."""

    path: NavigationPath = Field(description="Route in the shell, e.g. /orders or /orders/:id.")
    title: str = Field(min_length=1, description="Label shown in the navigation.")
    icon: str | None = Field(default=None, description="Icon name, e.g. shopping-cart.")
    module: ModuleName | None = Field(
        default=None, description="Exposed module rendered at this path (one of exposedModules' names)."
    )
    order: int | None = Field(
        default=None, description="Position in the navigation: lower first (none counts as 0), then by title."
    )
    required_permission: Permission | None = Field(
        default=None, description="The shell hides the entry (and refuses its route) from users without it."
    )


class SharedState(_Section):
    """A piece of UI state the plugin shares with other plugins through the shell."""

    name: StateName = Field(description="Key of the state, e.g. orders.")
    state_schema: dict[str, Any] = Field(
        default_factory=dict, alias="schema", description="JSON Schema of the state's value."
    )
    readonly: bool = Field(
        default=False, description="Only this plugin writes it (writers must then be empty); others read it."
    )
    writers: list[PluginId] = Field(
        default_factory=list,
        description="Other plugins allowed to change the value; the shell refuses a write from any plugin that "
        "is neither this one nor listed here.",
    )


class UiEvent(_Section):
    """An event the plugin's UI emits on the shell's event bus (any plugin may listen)."""

    name: EventName = Field(description="Event name, e.g. order.created.")
    description: str = Field(default="", description="When it is emitted, in a sentence.")
    event_schema: dict[str, Any] = Field(
        default_factory=dict, alias="schema", description="JSON Schema of the event's payload."
    )


class UiConfig(_Section):
    """The plugin's federated UI."""

    enabled: bool = Field(default=True, description="Whether the shell loads this UI.")
    remote_entry: RemoteEntry | None = Field(
        default=None,
        description="URL of the Module Federation remote entry: a path under baseUrl (e.g. "
        "/static/remoteEntry.js, served by the gateway under /plugins/<id>/ui/), or an http(s) URL. When the UI "
        f"is enabled and this is left out: {DEFAULT_REMOTE_ENTRY}, the value of the seed's UI example.",
    )
    base_url: BaseUrl | None = Field(
        default=None,
        description="Where the plugin serves its UI files over HTTP (e.g. http://127.0.0.1:7001/). The gateway "
        "fetches them from there and serves them as /plugins/<id>/ui/...; remoteEntry is then a path under it. "
        "Without it, remoteEntry must be an http(s) URL the browser can reach (e.g. a CDN).",
    )
    remote_name: Identifier | None = Field(
        default=None,
        description="The Module Federation name the remote was built with; defaults to the plugin id with "
        "'-' as '_' (orders-plugin: orders_plugin).",
    )
    exposed_modules: list[ExposedModule] = Field(default_factory=list, description="Modules the shell may load.")
    navigation: list[NavigationEntry] = Field(default_factory=list, description="Entries for the shell's navigation.")
    shared_state: list[SharedState] = Field(default_factory=list, description="State shared with other plugins.")
    events: list[UiEvent] = Field(
        default_factory=list, description="Events this UI emits on the shell's event bus; it may emit no others."
    )

    @model_validator(mode="before")
    @classmethod
    def _default_remote_entry(cls, data: Any) -> Any:
        # The seed's full orders manifest enables its UI without a remoteEntry, and its UI example writes
        # /static/remoteEntry.js: an enabled UI that leaves it out means that conventional place, so
        # both seed examples mean the same and load as written. With a baseUrl it is the plugin's own
        # /static/remoteEntry.js, through the gateway; without one there is nowhere to fetch it from,
        # and the shell shows that plugin's fallback (as it would for an explicit path that is wrong).
        # Explicit values are kept as they are.
        if isinstance(data, dict) and data.get("enabled", True) is True and "remoteEntry" not in data:
            return {**data, "remoteEntry": DEFAULT_REMOTE_ENTRY}
        return data


#: What a grant lets the named plugins do with the owner's data.
GRANT_ACCESS = ("read", "read-write")
GrantAccess = Literal["read", "read-write"]
_GRANTEES = "Plugin ids that get this access (never this plugin's own id: it has full access to its own data)."
_ACCESS = (
    "read: calls that only look (Get, Query, MGet, Keys, Download, ...); read-write: also calls that change "
    "or lock (Set, Delete, Increment, AcquireLock, Upload, ...)."
)


class StorageGrant(_Section):
    """Other plugins' access to one IStorage collection of this plugin."""

    collection: CollectionName = Field(description="The collection, in this plugin's namespace, e.g. orders.")
    plugins: list[PluginId] = Field(min_length=1, description=_GRANTEES)
    access: GrantAccess = Field(description=_ACCESS)


class CacheGrant(_Section):
    """Other plugins' access to the ICache keys (and lock names) of this plugin that start with a prefix."""

    key_prefix: KeyPrefix = Field(
        description="Keys and lock names starting with this text, e.g. orders: (a Keys, Invalidate or "
        "WatchInvalidations pattern must start with it too)."
    )
    plugins: list[PluginId] = Field(min_length=1, description=_GRANTEES)
    access: GrantAccess = Field(description=_ACCESS)


class FilesGrant(_Section):
    """Other plugins' access to the IFiles paths of this plugin that start with a prefix."""

    path_prefix: PathPrefix = Field(
        description="Paths starting with this text, relative to this plugin's files, e.g. exports/ (a List "
        "prefix must start with it too)."
    )
    plugins: list[PluginId] = Field(min_length=1, description=_GRANTEES)
    access: GrantAccess = Field(description=_ACCESS)


class Grants(_Section):
    """Data of this plugin that other plugins may use. Each plugin's data lives in its own namespace of an
    infrastructure plugin; another plugin reaches it only through a grant here, which the infrastructure
    plugin reads from the registry (a changed manifest takes effect about a second after it is registered)."""

    storage: list[StorageGrant] = Field(default_factory=list, description="Grants on IStorage collections.")
    cache: list[CacheGrant] = Field(default_factory=list, description="Grants on ICache key prefixes.")
    files: list[FilesGrant] = Field(default_factory=list, description="Grants on IFiles path prefixes.")


class PluginManifest(_Section):
    """A plugin's declaration (manifest.yaml): identity, provided and required interfaces, UI."""

    schema_uri: str | None = Field(
        default=None, alias="$schema", description="JSON Schema of this file, for editors; ignored by UPF."
    )
    id: PluginId = Field(description="Unique plugin id: lowercase letters, digits and hyphens, e.g. orders-plugin.")
    version: SemverText = Field(description="Version of the plugin (semver, e.g. 1.2.0).")
    name: str = Field(min_length=1, description="Human-readable name, e.g. Orders Management.")
    description: str = Field(default="", description="What the plugin does, in a sentence.")
    type: Literal["business", "infrastructure"] = Field(
        description="business: domain features (orders, payments); infrastructure: platform services "
        "(storage, cache, files, message bus)."
    )
    provides: list[ProvidedInterface] = Field(default_factory=list, description="Interfaces this plugin serves.")
    requires: list[RequiredInterface] = Field(
        default_factory=list, description="Interfaces this plugin needs from other plugins."
    )
    ui: UiConfig | None = Field(default=None, description="The plugin's UI, if it has one.")
    grants: Grants | None = Field(
        default=None,
        description="Other plugins' access to this plugin's data in IStorage, ICache and IFiles; without a "
        "grant, no other plugin can read or change it.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> PluginManifest:
        problems = consistency_problems(self)
        if problems:
            summary = "; ".join(f"{dotted_path(loc)}: {message}" for loc, message in problems)
            raise PydanticCustomError(
                CONSISTENCY_ERROR, "{summary}", {"summary": summary, "problems": [list(p) for p in problems]}
            )
        return self

    def policy(self, interface: str, method: str) -> MethodPolicy | None:
        """The policy for `method` of `interface`: its own keys over the interface's "*" defaults."""
        provided = next((p for p in self.provides if p.name == interface), None)
        if provided is None:
            return None
        default, own = provided.policies.get(ALL_METHODS), provided.policies.get(method)
        if default is None or own is None:
            return own or default
        return default.model_copy(update={k: getattr(own, k) for k in own.model_fields_set})


def is_exposed(plugin_type: object, exposed: object) -> bool:
    """Whether the gateway routes outside calls to a provided interface: its `exposed` when set, else
    true for business plugins only. Takes the manifest's JSON values, as the gateway reads them."""
    if isinstance(exposed, bool):
        return exposed
    return plugin_type != "infrastructure"


def dotted_path(loc: Location) -> str:
    """A location as a person writes it: `provides[0].grpcServices[1]`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _duplicates(values: list[str], prefix: Location, suffix: Location, what: str) -> list[tuple[Location, str]]:
    """A problem at each repeated value (at prefix[i]suffix), naming where it first appeared."""
    problems: list[tuple[Location, str]] = []
    first: dict[str, int] = {}
    for index, value in enumerate(values):
        if value in first:
            where = dotted_path((*prefix, first[value], *suffix))
            problems.append(((*prefix, index, *suffix), f'{what} "{value}" is listed twice (first at {where})'))
        else:
            first[value] = index
    return problems


def _grant_problems(owner: str, grants: Grants) -> list[tuple[Location, str]]:
    problems: list[tuple[Location, str]] = []
    sections: list[tuple[str, list[Any]]] = [
        ("storage", grants.storage),
        ("cache", grants.cache),
        ("files", grants.files),
    ]
    for section, entries in sections:
        for i, grant in enumerate(entries):
            where: Location = ("grants", section, i, "plugins")
            problems += _duplicates(grant.plugins, where, (), "plugin")
            if owner in grant.plugins:
                index = grant.plugins.index(owner)
                problems.append(
                    ((*where, index), f'"{owner}" is this plugin: it always has full access to its own data')
                )
    return problems


def consistency_problems(manifest: PluginManifest) -> list[tuple[Location, str]]:
    """Problems that involve more than one field, each with the location of the field to fix."""
    problems = _duplicates([p.name for p in manifest.provides], ("provides",), ("name",), "interface")
    served: dict[str, Location] = {}
    for i, provided in enumerate(manifest.provides):
        problems += _duplicates(provided.methods, ("provides", i, "methods"), (), "method")
        for j, service in enumerate(provided.grpc_services):
            if service in served:
                problems.append(
                    (
                        ("provides", i, "grpcServices", j),
                        f'gRPC service "{service}" is listed twice (first at {dotted_path(served[service])})',
                    )
                )
            else:
                served[service] = ("provides", i, "grpcServices", j)
        declared = ", ".join(dict.fromkeys(provided.methods)) or "none"
        for method in provided.policies:
            if method != ALL_METHODS and method not in provided.methods:
                problems.append(
                    (
                        ("provides", i, "policies", method),
                        f'"{method}" is not one of this interface\'s methods ({declared}); '
                        f'add it to methods, or use "{ALL_METHODS}" for all of them',
                    )
                )
    problems += _duplicates([r.interface for r in manifest.requires], ("requires",), ("interface",), "interface")
    if manifest.grants is not None:
        problems += _grant_problems(manifest.id, manifest.grants)
    ui = manifest.ui
    if ui is not None:
        modules = [m.name for m in ui.exposed_modules]
        declared_modules = ", ".join(dict.fromkeys(modules)) or "none"
        problems += _duplicates(modules, ("ui", "exposedModules"), ("name",), "module")
        problems += _duplicates([n.path for n in ui.navigation], ("ui", "navigation"), ("path",), "path")
        for i, entry in enumerate(ui.navigation):
            if entry.module is not None and entry.module not in modules:
                problems.append(
                    (
                        ("ui", "navigation", i, "module"),
                        f'"{entry.module}" is not one of ui.exposedModules ({declared_modules})',
                    )
                )
        problems += _duplicates([s.name for s in ui.shared_state], ("ui", "sharedState"), ("name",), "shared state")
        problems += _duplicates([e.name for e in ui.events], ("ui", "events"), ("name",), "event")
        for i, state in enumerate(ui.shared_state):
            if state.readonly and state.writers:
                problems.append((("ui", "sharedState", i, "writers"), "a readonly state has no other writers"))
    return problems
