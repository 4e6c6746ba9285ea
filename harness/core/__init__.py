"""What every stage shares: user errors (errors), the names of everything recorded (keys), RUNS_DIR's
paths and URIs (storage), load-or-build caches (cache), what a running study prints (progress) and
off-screen figures (canvas). Nothing here imports torch or another harness package."""
