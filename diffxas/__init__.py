"""diffxas: differentiable X-ray spectroscopic ptychography.

Joint (autodiff) and two-step (ePIE + per-pixel XANES fit) reconstruction of
chemical-state maps from multi-energy ptychography data.
"""

__version__ = "0.1.0"
