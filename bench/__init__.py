"""Benchmarks of marketstore against raw psycopg2 and the original SQLAlchemy design.

A program, not tests: ``python -m bench --help``. Results and what bounds each
gap are in ``bench/RESULTS.md``; tests/test_bench_smoke.py keeps it working.
"""
