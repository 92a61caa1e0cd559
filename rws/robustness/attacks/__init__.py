"""Adversarial attacks for robustness evaluation: FGSM, PGD, APGD, PMA, an AutoAttack-lite ensemble.

Use :func:`attack` (also ``rws.robustness.attacks.attack``); each family lives in its own module and
registers itself in :data:`ATTACKS`.
"""

from rws.robustness.attacks import apgd, ensemble, fgsm, pgd, pma  # noqa: F401  (register built-ins)
from rws.robustness.attacks.api import attack, parse_eps
from rws.robustness.attacks.checks import check_gradient_masking
from rws.robustness.attacks.registry import ATTACKS, get_attack, list_attacks, register_attack

__all__ = [
    "ATTACKS",
    "attack",
    "check_gradient_masking",
    "get_attack",
    "list_attacks",
    "parse_eps",
    "register_attack",
]
