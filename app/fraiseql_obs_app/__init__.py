"""The application layer: the ``fraiseql-cli`` entry point and the demo.

The only layer that imports several stages; the stages import only the core
(:mod:`fraiseql_observability`), and the core imports nothing of this project above it.
"""
