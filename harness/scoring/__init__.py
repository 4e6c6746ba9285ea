"""Stage 3, scoring: sample-quality scores from features (scores), feature extractors (extractors,
inception, detail), the real images scored against (real_images), scoring a trial (evaluation),
pixel MMD (pixel_mmd), trials that must not be ranked (flags), and the validation panel with its
commands, `make validate-scores` and `make score` (panel, commands)."""
