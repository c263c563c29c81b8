"""Ray Tune hyper-parameter search for the fraud bundle, MLflow parent/child runs, and promotion."""
