"""Stage 2, training: the loop every family shares (loop), fused packs of trials (packs), where a
trial's time goes (phases), the device (devices), and the pictures of a trained model (pictures, latent)."""
