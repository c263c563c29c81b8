"""Online path of the fraud scorer: the Ray Serve graph, its schemas and the feature contract."""
