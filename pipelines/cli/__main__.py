"""``python -m pipelines.cli``: the ``layerwise`` command."""
from pipelines.cli import main

main()
