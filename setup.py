# All metadata lives in setup.cfg; this shim only serves tools that still call setup.py.
from setuptools import setup

setup()
