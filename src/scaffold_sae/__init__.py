"""scaffold-sae: sparse autoencoders with a rank-r computational scaffold."""

__version__ = "0.1.0"
