"""Evaluation settings: :class:`EvalConfig`, validated once, serialised in every report."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rws.data.severity import check_severity
from rws.errors import UsageError
from rws.robustness.attacks import ATTACKS, parse_eps
from rws.robustness.attacks.api import NORMS
from rws.robustness.corruptions import CORRUPTIONS, get_corruption
from rws.robustness.corruptions.params import TABLES
from rws.runtime.checks import check_positive
from rws.runtime.device import DEVICE_PATTERN
from rws.runtime.precision import Precision, check_precision
from rws.runtime.seed import GeneratorPlace, generator_device

__all__ = ["AUTO_SEED_BATCH", "EvalConfig"]

_FLAGS = ("amp", "channels_last", "compile", "check_masking", "checks", "strict", "force",
          "clamp_var")  # fmt: skip
AUTO_SEED_BATCH = 256  # the seeding batch of ``batch_size="auto"`` (the default batch size)
_PARAMS = ("auto", *TABLES)


def _names(value: object, *, all_of: Sequence[str] = ()) -> tuple[str, ...]:
    """None / ``"none"`` → ``()``; ``"all"`` → ``all_of``; a name → ``(name,)``; duplicates dropped."""
    if value is None or value == "none":
        return ()
    if value == "all" and all_of:
        return tuple(all_of)
    items = [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    return tuple(dict.fromkeys(str(v) for v in items))


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate a model and its patched variants (every setting of :func:`evaluate`).

    Attributes:
        corruptions: corruption names; ``"all"`` (the 15 benchmark corruptions), a single name,
            None or ``"none"`` are accepted and stored as a tuple.
        severities: severities 1–5 to evaluate (a single one is accepted).
        attack: attack names (``"pgd"``, ``"apgd"``, ``"pma"``, ``"autoattack-lite"`` …); a name,
            None or ``"none"`` are accepted. Examples are attacked per variant, seeded per batch.
        eps: the attack radius (``"8/255"`` is accepted and stored as a float).
        steps: attack iterations; None uses each attack's default.
        norm: ``"linf"`` or ``"l2"``.
        n_examples: evaluate the first ``n`` test examples (all when None).
        batch_size: images per forward pass, also the unit of sharding and of seeding; ``"auto"``
            seeds and shards in batches of 256 (the inputs of ``batch_size=256``) and forwards as
            many of them at once as fit the device's memory (probed on CUDA; 256 on the CPU).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:n]"``.
        amp: (older switch) autocast clean and corruption forwards on CUDA, bf16 where supported
            else fp16, when ``precision`` is fp32; attacks stay fp32.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``: autocast of every forward (clean,
            corrupted, attacked) on any device; attack losses and input gradients stay fp32, and
            the attacked images are scored in fp32.
        channels_last: channels-last memory for the model and the batches (same predictions).
        compile: ``torch.compile`` the model for the run (the original is left as it was).
        generator: where the random draws of corruptions and attacks are made: ``"device"`` (the
            default: on a GPU a seeded CUDA generator, reproducible on the same device type and
            seed; on the CPU the CPU generator) or ``"cpu"`` (the same images on every device).
        seed: root of every seed (corruptions, attacks, masking checks, bootstrap intervals).
        params: the corruption severity table: ``"cifar"``, ``"imagenet"``, ``"imagecorruptions"``
            (the package most detection/segmentation -C sets were made with) or ``"auto"``
            (CIFAR up to 64 pixels a side, else ImageNet); reports record the one that ran.
        corruption_source: a folder of released CIFAR-10-C-style arrays to use instead of the
            kernels (a dataset spec ``"cifar10c:DIR"`` sets it too).
        check_masking: run the gradient-masking checks on each variant when attacking.
        masking_examples: examples used by those checks.
        checks: also run the convergence checks on those examples
            (:func:`rws.robustness.attacks.checks.convergence_checks`: the first attack with 4×
            its steps, at ε, 2ε and 4ε, and with a second seed); their numbers go to
            ``settings["checks"]``, their flags to the warnings (``strict`` refuses on them).
        strict: raise ``EvaluationError`` when a check warns.
        force: apply patches whose base fingerprints differ from the model's.
        clamp_var: clamp BatchNorm running variances a patch drives below 0 (else refused).
        extra: unknown keys met by :meth:`from_dict`, kept and written back by :meth:`to_dict`.

    Raises:
        UsageError, UnknownNameError: a bad setting (raised on construction).

    Example:
        >>> cfg = EvalConfig(corruptions="fog", severities=(1, 3), attack="pgd", eps="8/255")
        >>> cfg.corruptions, cfg.attack, round(cfg.eps * 255)
        (('fog',), ('pgd',), 8)
        >>> EvalConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    corruptions: tuple[str, ...] = CORRUPTIONS
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    attack: tuple[str, ...] = ()
    eps: float = 8 / 255
    steps: int | None = None
    norm: Literal["linf", "l2"] = "linf"
    n_examples: int | None = None
    batch_size: int | Literal["auto"] = 256
    device: str = "auto"
    amp: bool = False
    precision: Precision = "fp32"
    channels_last: bool = False
    compile: bool = False
    generator: GeneratorPlace = "device"
    seed: int = 0
    params: Literal["auto", "cifar", "imagenet", "imagecorruptions"] = "auto"
    corruption_source: str | None = None
    check_masking: bool = True
    masking_examples: int = 128
    checks: bool = False
    strict: bool = False
    force: bool = False
    clamp_var: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        put("corruptions", _names(self.corruptions, all_of=CORRUPTIONS))
        for c in self.corruptions:
            get_corruption(c)  # UnknownNameError lists the choices
        sevs = (self.severities,) if isinstance(self.severities, int) else self.severities
        put("severities", tuple(dict.fromkeys(check_severity(s) for s in sevs)))
        put("attack", _names(self.attack))
        for a in self.attack:
            ATTACKS.entry(a)
        put("eps", parse_eps(self.eps))
        if self.batch_size != "auto":
            check_positive("batch_size", self.batch_size)
        check_precision(self.precision)
        generator_device(self.generator, "cpu")  # UsageError for anything else
        check_positive("steps", self.steps, optional=True)
        check_positive("n_examples", self.n_examples, optional=True)
        check_positive("masking_examples", self.masking_examples)
        if self.checks is True and not (self.attack and self.check_masking):
            raise UsageError("checks measure the attack: give an attack and keep check_masking")
        if self.norm not in NORMS:
            raise UsageError(f"unknown norm {self.norm!r}; choose one of: {', '.join(NORMS)}")
        if self.norm == "linf" and self.eps > 1:  # images lie in [0, 1]
            raise UsageError(f"eps {self.eps:g}: an L∞ radius must be in (0, 1], e.g. 8/255")
        if not isinstance(self.device, str) or not DEVICE_PATTERN.match(self.device):
            raise UsageError(f"unknown device {self.device!r}; choose cpu, cuda[:n] or auto")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise UsageError(f"seed must be an integer, got {self.seed!r}")
        if self.params not in _PARAMS:
            raise UsageError(
                f"params must be 'cifar', 'imagenet', 'imagecorruptions' or 'auto', "
                f"not {self.params!r}"
            )
        if self.corruption_source is not None:
            put("corruption_source", os.fspath(self.corruption_source))
        for flag in _FLAGS:
            if not isinstance(getattr(self, flag), bool):
                raise UsageError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        put("extra", dict(self.extra))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (tuples as lists), unknown keys from :meth:`from_dict` included."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for key in ("corruptions", "severities", "attack"):
            out[key] = list(out[key])
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalConfig:
        """Inverse of :meth:`to_dict`; unknown keys go to ``extra``.

        Raises:
            UsageError, UnknownNameError: a bad setting.
        """
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        return cls(**known, extra={k: v for k, v in d.items() if k not in names})

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> EvalConfig:
        """The config of a report's ``settings``: its ``"config"`` when recorded, else (reports
        written before :class:`EvalConfig`) rebuilt from the flat settings they hold; settings
        such a report did not record (``steps``, ``strict`` …) take their defaults."""
        if "config" in settings:
            return cls.from_dict(settings["config"])
        flat = ("corruptions", "severities", "attack", "eps", "norm", "n_examples", "batch_size",
                "amp", "seed", "params", "device")  # fmt: skip
        known = {k: settings[k] for k in flat if k in settings}
        source = settings.get("corruption_source")
        if source and source != "rws kernels":
            known["corruption_source"] = source
        return cls(**known)

    @property
    def seed_batch(self) -> int:
        """Images per global batch: the unit of seeding and sharding."""
        return AUTO_SEED_BATCH if self.batch_size == "auto" else int(self.batch_size)
