"""PolyMaX (Yang et al., WACV 2024): importing this package registers the model "polymax"."""

from densepred.models.polymax.model import PolyMaX, cluster_maps, create_polymax

__all__ = ["PolyMaX", "cluster_maps", "create_polymax"]
