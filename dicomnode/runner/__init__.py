"""The pipeline runtime: registry, model manifests, volume loading, workers."""
