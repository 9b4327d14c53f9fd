"""``python -m marketstore.cli``: the ``marketstore`` command."""
from . import main

main()
