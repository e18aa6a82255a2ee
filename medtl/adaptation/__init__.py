"""Domain-adaptation methods, selected with ``adaptation=<name>``.

Only ``none`` (source-only training) exists so far: the training loop adds no adaptation term.
"""
from __future__ import annotations

from medtl.adaptation.registry import AdaptationMethod, NoAdaptation, create_adaptation, list_adaptations, register_adaptation

__all__ = ["AdaptationMethod", "NoAdaptation", "create_adaptation", "list_adaptations", "register_adaptation"]
