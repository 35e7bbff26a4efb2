"""Stage 0, the YAML config: typed models that reject unknown keys, loading with ${VAR} and *_file
secrets, camera source parsing. Errors name the YAML path (exit 78)."""
