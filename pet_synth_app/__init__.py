"""PetSynth: pseudo-normal FDG PET synthesis from T1w MRI, as a BIDS-App."""

__version__ = "0.1.0"
__all__ = ["__version__"]
