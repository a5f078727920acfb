"""Method name -> factory, resolvable in any process.

The ServerApp and every ClientApp build their own ``FederatedMethod`` object, and in a Ray
simulation or a deployment they live in different processes that never saw the caller's
``register_method`` calls. So the server turns the method name into an *importable reference*
(``"package.module:factory"``) and sends that in the message config; a client imports it. A
factory registered as a module-level callable therefore works everywhere, as does a reference
string. ``fedvpa.methods`` is imported on the first unknown name so the built-in methods can
register themselves there.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from fedvpa.errors import ConfigError
from fedvpa.methods.base import FederatedMethod

MethodFactory = Callable[..., FederatedMethod]

_REGISTRY: dict[str, MethodFactory | str] = {}
_BUILTINS_MODULE = "fedvpa.methods"


def register_method(name: str, factory: MethodFactory | str, *, replace: bool = False) -> None:
    """Make ``name`` usable as ``method`` in the run config.

    ``factory(**method_kwargs) -> FederatedMethod``; give either a module-level callable (a class
    or a function) or its reference ``"module:qualname"``. Closures and lambdas cannot be
    re-imported by a client process and are refused.
    """
    if not name or ":" in name:
        raise ConfigError(f"method name must be non-empty and contain no ':', got {name!r}")
    if isinstance(factory, str):
        _split_reference(factory)
    else:
        factory_reference(factory)
    if name in _REGISTRY and not replace and _REGISTRY[name] != factory:
        raise ConfigError(f"method {name!r} is already registered", field="method")
    _REGISTRY[name] = factory


def available_methods() -> list[str]:
    _import_builtins()
    return sorted(_REGISTRY)


def factory_reference(factory: MethodFactory) -> str:
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise ConfigError(
            f"method factory {factory!r} is not importable by name (define it at module level "
            "in an importable module, not in __main__ or a closure)",
            field="method",
        )
    return f"{module}:{qualname}"


def method_reference(name_or_reference: str) -> str:
    """The ``"module:qualname"`` a client process imports to build the same method."""
    if ":" in name_or_reference:
        _split_reference(name_or_reference)
        return name_or_reference
    if name_or_reference not in _REGISTRY:
        _import_builtins()
    if name_or_reference not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none registered"
        raise ConfigError(
            f"unknown method {name_or_reference!r} (known: {known}; or give 'module:factory')",
            field="method",
        )
    factory = _REGISTRY[name_or_reference]
    return factory if isinstance(factory, str) else factory_reference(factory)


def resolve_factory(name_or_reference: str) -> MethodFactory:
    module_name, qualname = _split_reference(method_reference(name_or_reference))
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import method module {module_name!r}: {exc}", field="method"
        ) from exc
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{module_name!r} has no attribute {qualname!r}", field="method")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{module_name}:{qualname} is not callable", field="method")
    return obj


def create_method(
    name_or_reference: str, kwargs: Mapping[str, Any] | None = None
) -> FederatedMethod:
    method = resolve_factory(name_or_reference)(**dict(kwargs or {}))
    if not isinstance(method, FederatedMethod):
        raise ConfigError(
            f"method {name_or_reference!r} built a {type(method).__name__}, not a FederatedMethod",
            field="method",
        )
    return method


def _split_reference(reference: str) -> tuple[str, str]:
    module_name, sep, qualname = reference.partition(":")
    if not sep or not module_name or not qualname:
        raise ConfigError(f"method reference must be 'module:qualname', got {reference!r}")
    return module_name, qualname


def _import_builtins() -> None:
    """Register the built-in methods. A broken methods package is an error of its own, not an
    "unknown method" (which is what swallowing the ImportError here used to report)."""
    try:
        module = importlib.import_module(_BUILTINS_MODULE)
    except ImportError as exc:
        raise ConfigError(
            f"the built-in methods ({_BUILTINS_MODULE}) cannot be imported: {exc}", field="method"
        ) from exc
    for name, reference in getattr(module, "BUILTIN_METHODS", {}).items():
        _REGISTRY.setdefault(name, reference)
