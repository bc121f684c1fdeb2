"""The rule loader's stages, one module each; `worker.rules.loader` runs them in order."""
