"""Offline path: data generation, loading, features, training and registration."""
