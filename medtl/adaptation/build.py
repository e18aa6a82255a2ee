"""Build the adaptation method that ``conf/adaptation/<name>.yaml`` describes."""
from __future__ import annotations

from medtl.adaptation.entropy import Combined, EntropyMinimisation
from medtl.adaptation.registry import AdaptationMethod, _METHODS, create_adaptation
from medtl.errors import MedtlError
from medtl.registries import checked_options

__all__ = ["build_adaptation"]


def build_adaptation(method: str, num_features: int, weight: float = 1.0, entropy_weight: float = 0.0,
                     options: dict | None = None) -> AdaptationMethod:
    """The registered ``method`` (``options`` are its own arguments), plus entropy minimisation on the
    target predictions when ``entropy_weight > 0``. ``num_features`` is the encoder's pooled size."""
    if method not in _METHODS:
        create_adaptation(method)  # raises the one-line error listing the methods
    options = checked_options(_METHODS[method], "adaptation", method, dict(options or {}),
                              {"num_features": num_features}, reserved=["weight"])
    chosen = create_adaptation(method, weight=weight, **options)
    if entropy_weight < 0:
        raise MedtlError(f"adaptation.entropy_weight={entropy_weight} must be >= 0")
    if entropy_weight > 0 and chosen.trains_on_target_labels:
        raise MedtlError(f"adaptation.entropy_weight={entropy_weight} cannot stack on '{method}', which trains on "
                         "target labels; set adaptation.entropy_weight=0")
    if entropy_weight > 0 and method != "entropy":
        return Combined(chosen, EntropyMinimisation(weight=entropy_weight))
    return chosen
