"""amole: the framework-free core of FedAMoLE (layer, injector, assignment, aggregation, data, training).

``amole.load_personalized(path)`` loads a site's kept or exported model; it is imported on first use so that
``import amole`` stays light.
"""

from typing import Any

__all__ = ["load_personalized"]


def __getattr__(name: str) -> Any:
    if name == "load_personalized":
        from amole.personal import load_personalized

        return load_personalized
    raise AttributeError(f"module 'amole' has no attribute {name!r}")
