"""genbench: Optuna searches over generative image models, tracked in MLflow."""
