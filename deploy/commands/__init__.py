"""The ``pedstream`` subcommands, one module per command group. Each module's ``register(sub, flags)``
adds its subparsers with their handlers; ``deploy.cli`` assembles the parser from them.

Handlers import what they need when they run: the edge commands start where torch and ray are absent.
"""
