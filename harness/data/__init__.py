"""Stage 1, data: datasets by name (datasets), the file formats users have (formats: .mat, .npz,
CelebA, MNIST, folders), the built-in synthetic faces (synthfaces) and `make data-check` (check)."""
