"""`make bench` and `make workload`: measured speeds (speeds) and counted arithmetic (workload)."""
