"""hardneg.models: encoders (small CNN, MLP) and the SimCLR projection head."""

from hardneg.models.encoders import MLP, ContrastiveModel, ProjectionHead, SmallCNN, build_model

__all__ = ["MLP", "ContrastiveModel", "ProjectionHead", "SmallCNN", "build_model"]
