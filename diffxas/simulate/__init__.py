"""Simulated datasets built on physics/: presets and the randomized sample family."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: name -> submodule that defines it. Resolved on first access (PEP 562), so that importing one
#: submodule does not import the others (the CLI's light commands must not import JAX).
_API = {
    "DOMAIN_TYPES": "materials",
    "FAMILY_PRESETS": "config",
    "FamilyPhantom": "family",
    "GEOMETRIES": "family",
    "PRESETS": "config",
    "Phantom": "phantom",
    "RANGES": "family",
    "SEED_ENERGIES": "config",
    "SURFACE_PROBABILITY": "family",
    "SURFACE_TYPE": "materials",
    "SimConfig": "config",
    "Simulation": "presets",
    "TEXTURES": "family",
    "background_profile": "presets",
    "domain_name": "family",
    "draw_conditions": "family",
    "draw_family": "family",
    "edge_shift": "materials",
    "make_family_phantom": "family",
    "make_phantom": "phantom",
    "make_truth": "presets",
    "membrane": "materials",
    "phantom_fields": "phantom",
    "preset": "config",
    "raster_positions": "presets",
    "simulate": "presets",
    "xanes_from_properties": "materials",
}

if TYPE_CHECKING:
    from .config import FAMILY_PRESETS as FAMILY_PRESETS
    from .config import PRESETS as PRESETS
    from .config import SEED_ENERGIES as SEED_ENERGIES
    from .config import SimConfig as SimConfig
    from .config import preset as preset
    from .family import GEOMETRIES as GEOMETRIES
    from .family import RANGES as RANGES
    from .family import SURFACE_PROBABILITY as SURFACE_PROBABILITY
    from .family import TEXTURES as TEXTURES
    from .family import FamilyPhantom as FamilyPhantom
    from .family import domain_name as domain_name
    from .family import draw_conditions as draw_conditions
    from .family import draw_family as draw_family
    from .family import make_family_phantom as make_family_phantom
    from .materials import DOMAIN_TYPES as DOMAIN_TYPES
    from .materials import SURFACE_TYPE as SURFACE_TYPE
    from .materials import edge_shift as edge_shift
    from .materials import membrane as membrane
    from .materials import xanes_from_properties as xanes_from_properties
    from .phantom import Phantom as Phantom
    from .phantom import make_phantom as make_phantom
    from .phantom import phantom_fields as phantom_fields
    from .presets import Simulation as Simulation
    from .presets import background_profile as background_profile
    from .presets import make_truth as make_truth
    from .presets import raster_positions as raster_positions
    from .presets import simulate as simulate


def __getattr__(name: str):
    mod = _API.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
