"""Physical constants (SI), each with its source.

Photon energies are carried in eV everywhere in diffxas (the natural unit of the
seed's eq. 1 parameters and of the scattering tables); lengths in m. The CXI files
store energies in J; the conversion happens only in :mod:`diffxas.data`.
"""

# CODATA 2018 (exact since the 2019 SI redefinition): h, c, e.
PLANCK_H = 6.62607015e-34  # J s
SPEED_OF_LIGHT = 299792458.0  # m / s
ELEMENTARY_CHARGE = 1.602176634e-19  # C (J per eV)

#: h c / e in eV m (derived from the exact CODATA 2018 values above): 1.239841984e-6.
HC_EV_M = PLANCK_H * SPEED_OF_LIGHT / ELEMENTARY_CHARGE

#: Classical electron radius r_e, m (CODATA 2018, 2.8179403262(13)e-15 m).
R_E = 2.8179403262e-15

#: Avogadro constant, 1/mol (CODATA 2018, exact).
AVOGADRO = 6.02214076e23

#: Atomic numbers of the elements diffxas's presets use.
Z = {"H": 1, "Li": 3, "C": 6, "N": 7, "O": 8, "Si": 14, "V": 23, "Mn": 25, "Fe": 26, "Co": 27, "Ni": 28}
