"""Method registry: each way of making a delta registers a :class:`Method` with its options.

A method's options are a frozen dataclass (:class:`NoOptions` when it takes none) declared on its
entry; :func:`method_options` builds them from what a user set and names any option that belongs
to another method, so no caller routes options by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from rws.errors import UsageError
from rws.io.checkpoint import Checkpoint
from rws.patching.format import register_kind
from rws.registry import Registry, summary_of

DeltaFn = Callable[[str], torch.Tensor]
Prepare = Callable[[Checkpoint, Checkpoint, Any], tuple[DeltaFn, dict[str, Any]]]


@dataclass(frozen=True)
class NoOptions:
    """The options of a method that takes none.

    Options dataclasses may declare two class variables: ``labels`` (field → how a user names it,
    default ``--field-name``) and ``required`` (fields a user must set; the library defaults stay
    usable from Python).
    """

    labels: ClassVar[Mapping[str, str]] = {}
    required: ClassVar[tuple[str, ...]] = ()

    @property
    def scale(self) -> float:
        """The scale α the patch is made with (1 unless the options set it)."""
        return 1.0


def option_names(options: type) -> tuple[str, ...]:
    """The fields of an options dataclass, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(options))


def _label(options: type, name: str) -> str:
    labels: Mapping[str, str] = getattr(options, "labels", {})
    return labels.get(name, "--" + name.replace("_", "-"))


@dataclass(frozen=True)
class Method:
    """A way of making a delta.

    Attributes:
        name: the registered name (``extract(method=…)``).
        kind: the patch kind it makes (registered with the patch format).
        prepare: ``prepare(base, tuned, options)`` checks the inputs and returns
            ``(delta_of, facts)``: the float delta of one tensor name, and method facts for the
            provenance. A ``fixed`` fact (tensor names) is taken out of the provenance by
            :func:`rws.extract`, which adds those tensors to any selection as fixed tensors
            (applied at full weight whatever α; :mod:`rws.patching.tensor`).
        options: the frozen options dataclass ``prepare`` takes.
    """

    name: str
    kind: str
    prepare: Prepare
    options: type = NoOptions

    def make_options(self, **given: Any) -> Any:
        """The options from keywords (``extract(..., origin=…)``); validated by the dataclass.

        Raises:
            UsageError: a keyword the method does not take, or a bad value.
        """
        known = option_names(self.options)
        unknown = sorted(set(given) - set(known))
        if unknown:
            takes = "no options" if not known else ", ".join(known[:-1]) + " and " + known[-1]
            if len(known) == 1:
                takes = known[0]
            raise UsageError(f"method {self.name!r} takes {takes} (got {', '.join(unknown)})")
        return self.options(**given)

    def resolve_options(self, options: Any, given: Mapping[str, Any]) -> Any:
        """``options`` if given (checked to be this method's), else built from ``given``."""
        if options is None:
            return self.make_options(**given)
        if given:
            raise UsageError("give method options either as options= or as keywords, not both")
        if not isinstance(options, self.options):
            raise UsageError(
                f"method {self.name!r} takes {self.options.__name__}, not {type(options).__name__}"
            )
        return options


METHODS: Registry[Method] = Registry("method")


def register_method(
    name: str, *, kind: str, options: type = NoOptions, summary: str = "", url: str = ""
) -> Callable[[Prepare], Method]:
    """Register ``prepare(base: Checkpoint, tuned: Checkpoint, options)`` as a method.

    The method's patch ``kind`` is registered with the patch format too (several methods may
    share one kind).

    Example:
        >>> @register_method("negated", kind="delta", summary="base − tuned")  # doctest: +SKIP
        ... def prepare_negated(base, tuned, options):
        ...     return (lambda n: base.get(n) - tuned.get(n)), {}
    """

    def deco(prepare: Prepare) -> Method:
        doc = summary or summary_of(prepare)
        register_kind(kind, doc, url=url, exist_ok=True)
        return METHODS.add(name, Method(name, kind, prepare, options), summary=doc, url=url)

    return deco


def get_method(name: str) -> Method:
    """The method registered under ``name``.

    Raises:
        UnknownNameError: no method of that name (the message lists the choices).

    Example:
        >>> get_method("delta").kind
        'delta'
    """
    return METHODS.get(name)


def list_methods(pattern: str = "*") -> list[str]:
    """Names of the registered methods matching a glob, in registration order.

    Example:
        >>> list_methods("d*")
        ['delta']
    """
    return METHODS.names(pattern)


def _is_set(value: Any) -> bool:
    return value is not None and not (isinstance(value, list | tuple) and not value)


def method_options(method: str, given: Mapping[str, Any]) -> Any:
    """The options of ``method`` from raw values a user set (the CLI's one call for routing).

    Args:
        method: a registered method name.
        given: option name → value; None and empty sequences mean "not set".

    Returns:
        The method's options dataclass, validated.

    Raises:
        UnknownNameError: no such method.
        UsageError: an option set that ``method`` does not take (naming it and the methods that
            do), an option it requires left unset, or a bad value.

    Example:
        >>> method_options("rws", {"origin": None, "robust": (), "bn": "skip"}).bn
        'skip'
    """
    m = get_method(method)
    known = option_names(m.options)
    chosen = {k: v for k, v in given.items() if _is_set(v)}
    for key in chosen:
        if key not in known:
            owners = [e.obj for e in METHODS if key in option_names(e.obj.options)]
            label = _label(owners[0].options, key) if owners else key
            where = " or ".join(f"--method {o.name}" for o in owners) or "another method"
            raise UsageError(f"{label} needs {where} (not --method {method})")
    for key in getattr(m.options, "required", ()):
        if key not in chosen:
            raise UsageError(f"--method {method} needs {_label(m.options, key)}")
    return m.options(**chosen)


__all__ = [
    "METHODS",
    "Checkpoint",
    "DeltaFn",
    "Method",
    "NoOptions",
    "get_method",
    "list_methods",
    "method_options",
    "option_names",
    "register_method",
]
