from cct.models.cct import CCT, CCTSettings
from cct.models.registry import VARIANTS, create_model, resolve_settings, variant_names

__all__ = [
    "CCT",
    "CCTSettings",
    "VARIANTS",
    "create_model",
    "resolve_settings",
    "variant_names",
]
