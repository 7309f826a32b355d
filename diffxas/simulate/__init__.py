"""Simulated datasets built on physics/: presets and the randomized sample family."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: name -> submodule that defines it. Resolved on first access (PEP 562), so that importing one
#: submodule does not import the others (the CLI's light commands must not import JAX).
_API = {
    "DOMAIN_TYPES": "presets",
    "FAMILY_PRESETS": "presets",
    "FamilyPhantom": "family",
    "GEOMETRIES": "family",
    "PRESETS": "presets",
    "Phantom": "presets",
    "RANGES": "family",
    "SEED_ENERGIES": "presets",
    "SURFACE_PROBABILITY": "family",
    "SURFACE_TYPE": "presets",
    "SimConfig": "presets",
    "Simulation": "presets",
    "TEXTURES": "family",
    "background_profile": "presets",
    "domain_name": "family",
    "draw_conditions": "family",
    "draw_family": "family",
    "edge_shift": "presets",
    "make_family_phantom": "family",
    "make_phantom": "presets",
    "make_truth": "presets",
    "membrane": "presets",
    "phantom_fields": "presets",
    "preset": "presets",
    "raster_positions": "presets",
    "simulate": "presets",
    "xanes_from_properties": "presets",
}

if TYPE_CHECKING:
    from .family import GEOMETRIES as GEOMETRIES
    from .family import RANGES as RANGES
    from .family import SURFACE_PROBABILITY as SURFACE_PROBABILITY
    from .family import TEXTURES as TEXTURES
    from .family import FamilyPhantom as FamilyPhantom
    from .family import domain_name as domain_name
    from .family import draw_conditions as draw_conditions
    from .family import draw_family as draw_family
    from .family import make_family_phantom as make_family_phantom
    from .presets import DOMAIN_TYPES as DOMAIN_TYPES
    from .presets import FAMILY_PRESETS as FAMILY_PRESETS
    from .presets import PRESETS as PRESETS
    from .presets import SEED_ENERGIES as SEED_ENERGIES
    from .presets import SURFACE_TYPE as SURFACE_TYPE
    from .presets import Phantom as Phantom
    from .presets import SimConfig as SimConfig
    from .presets import Simulation as Simulation
    from .presets import background_profile as background_profile
    from .presets import edge_shift as edge_shift
    from .presets import make_phantom as make_phantom
    from .presets import make_truth as make_truth
    from .presets import membrane as membrane
    from .presets import phantom_fields as phantom_fields
    from .presets import preset as preset
    from .presets import raster_positions as raster_positions
    from .presets import simulate as simulate
    from .presets import xanes_from_properties as xanes_from_properties


def __getattr__(name: str):
    mod = _API.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
