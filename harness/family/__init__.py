"""What `models/` is written against: the family registry (registry), hyperparameter spaces
(space), the adversarial pair (adversarial), fused steps (fused), the training fast path (fast_path)
and images from a fixed z (generate)."""
