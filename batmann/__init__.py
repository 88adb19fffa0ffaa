"""BATMANN: binarized memory-augmented neural networks for few-shot learning.

The data pipeline lives in :mod:`batmann.data`, controllers in :mod:`batmann.models`, the key
memory and similarity search in :mod:`batmann.memory`, and the command line in
:mod:`batmann.cli`. Crossbar simulation is in the sibling packages ``crossbar`` and
``device_models``.
"""

__version__ = "0.1.0"
